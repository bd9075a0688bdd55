"""Reward-gradient-free one-step baselines (dpo, grpo, pso): registration, suites, the shared
loop on the toy world, and each loss on hand-made tensors."""

from __future__ import annotations

import inspect
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from worlds import LatentBlueness, LatentRedness, ShiftGenerator, redness_gain
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file

from baselines.dpo import one_step_dpo_loss, pair_distances
from baselines.grpo import clipped_surrogate, gaussian_log_probs, group_advantages, neighbor_log_probs
from baselines.pso import pairwise_sample_loss, standardize_per_sample
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS, REWARDS
from drpo_bench.suite.planning import plan_cells
from drpo_bench.run.runner import run_suite
from drpo_bench.toy import ToyGenerator, ToyRedness, ToyRednessBlackBox

SUITES = Path(__file__).resolve().parents[1] / "suites" / "toy"
NEW = ("dpo", "grpo", "pso")
PHASES = {"sample", "reference", "decode", "reward_forward", "loss", "generator_backward"}

# (row id, method, args): every policy / option that changes the computation
VARIANTS = [
    ("dpo", "dpo", {}),
    ("dpo-free-l1", "dpo",
     {"reference_free": True, "distance": "l1", "ref_l2_weight": 0.1, "n_winners": 2, "n_losers": 2}),
    ("grpo", "grpo", {}),
    ("grpo-kl", "grpo", {"kl_weight": 0.1, "advantage_p": 2.0}),
    ("grpo-gaussian", "grpo", {"policy": "gaussian", "kl_weight": 0.01}),
    ("pso", "pso", {}),
    ("pso-fresh", "pso", {"action_noise": "fresh", "ref_l2_weight": 0.1}),
]


# ---- registration and suites ---------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_registered_with_paper_docstring_and_reasoned_config(name):
    entry = METHODS.get(name)
    cls = entry.cls
    assert cls.trains and not cls.needs_differentiable_reward, "gradient-free: any black-box reward"
    assert cls.paper.startswith("https://arxiv.org/abs/")
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    assert cls.paper in module_doc and "one-step" in module_doc.lower()
    entry.parse_config({})  # defaults validate
    with pytest.raises(ValidationError):
        entry.parse_config({"no_such_option": 1})
    source = inspect.getsource(cls.Config)
    for field in cls.Config.model_fields:
        line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{field}:"))
        assert "#" in line, f"{name}.Config.{field} needs a one-line reason for its default"


def test_baselines_suite_validates_and_plans_every_method():
    suite = load_suite(SUITES / "baselines.yaml")
    ids = [m.id for m in suite.methods]
    assert {"base", "drpo", "dpo", "grpo"} <= set(ids)
    cells = plan_cells(suite)
    assert {c.method.id for c in cells} == set(ids)
    # gradient-free methods train on the black-box reward: validation must accept that
    trained = [c for c in cells if c.reward_alias]
    assert trained and all(not REWARDS.get(suite.rewards[c.reward_alias].name).cls.differentiable for c in trained)


def test_bad_method_args_are_config_errors():
    with pytest.raises(UserError, match="policy"):
        load_suite(SUITES / "harness.yaml", ["methods=[{id: g, method: grpo, args: {policy: beta}}]"])
    with pytest.raises(UserError, match="beta"):
        load_suite(SUITES / "harness.yaml", ["methods=[{id: d, method: dpo, args: {beta: -1}}]"])


# ---- the shared loop on the toy world ------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    rows = ", ".join(
        f"{{id: {rid}, method: {m}, reward: redness-bb, args: {json.dumps(a)}}}" for rid, m, a in VARIANTS
    )
    suite = load_suite(SUITES / "harness.yaml", ["seeds=[0]", "budget.steps=2", f"methods=[{rows}]"])
    summary = run_suite(suite, out, quiet=True)
    return out, summary


@pytest.mark.parametrize("rid", [v[0] for v in VARIANTS])
def test_runs_in_the_shared_loop(toy_run, rid):
    out, summary = toy_run
    cell = f"toy--{rid}--redness-bb--s0"
    assert summary.statuses[cell] == "done", summary.failures.get(cell)
    entries = [json.loads(line) for line in (out / cell / "train.jsonl").read_text().splitlines()]
    assert len(entries) == 2
    for e in entries:
        assert math.isfinite(e["loss"]) and math.isfinite(e["grad_norm"]) and e["grad_norm"] > 0
        assert all(math.isfinite(v) for v in e.values() if isinstance(v, float))
    ledger = json.loads((out / cell / "ledger.json").read_text())
    assert PHASES <= set(ledger["updates"][0]["phase_seconds"])
    adapter = load_file(str(out / cell / "adapter.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(bool((v != 0).any()) for v in lora_b), "LoRA B starts at zero: training moved it"


# ---- one step by hand: gradients, ledger, loss_scale -----------------------------------------


def _context(loss_scale: float = 1.0, seed: int = 0, reward=None) -> TrainContext:
    ledger = Ledger("cpu")
    ledger.begin_update()
    return TrainContext(
        generator=ToyGenerator(ToyGenerator.Config()),
        reward=reward or ToyRednessBlackBox(ToyRednessBlackBox.Config()),
        ledger=ledger,
        candidates_per_prompt=8,
        noise_rng=torch.Generator().manual_seed(seed),
        loss_scale=loss_scale,
    )


def _step(name, args, loss_scale=1.0, reward=None):
    ctx = _context(loss_scale, reward=reward)
    method = METHODS.get(name).cls(METHODS.get(name).parse_config(args))
    method.setup(ctx)
    out = method.step(["toy prompt 0", "toy prompt 1"], ctx)
    record = ctx.ledger.end_update()
    grads = {n: p.grad.clone() for n, p in ctx.generator.net.named_parameters() if p.requires_grad}
    return out, record, grads, ctx


@pytest.mark.parametrize("rid,name,args", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_step_gives_finite_loss_lora_grads_phases_and_honours_loss_scale(rid, name, args):
    out, record, grads, _ = _step(name, args)
    assert math.isfinite(out.loss) and all(math.isfinite(v) for v in out.logs.values())
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    lora_b = [g for n, g in grads.items() if "lora_B" in n]
    assert lora_b and all(g.abs().sum() > 0 for g in lora_b), "non-zero LoRA gradient"
    assert PHASES <= set(record.phase_seconds), set(record.phase_seconds)
    _, _, half, _ = _step(name, args, loss_scale=0.5)  # same seed, same noise: half the gradient
    for n, g in grads.items():
        torch.testing.assert_close(half[n], 0.5 * g, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name,args,log", [
    ("grpo", {"kl_weight": 1.0}, "kl_ref"),
    ("grpo", {"kl_weight": 1.0}, "ref_l2"),
    ("grpo", {"policy": "gaussian", "kl_weight": 1.0}, "kl_ref"),
    ("dpo", {}, "dpo_logit"),
    ("pso", {}, "log_ratio_abs"),
])
def test_reference_terms_vanish_at_the_base_and_not_away_from_it(name, args, log):
    ctx = _context()
    method = METHODS.get(name).cls(METHODS.get(name).parse_config(args))
    method.setup(ctx)
    out = method.step(["toy prompt 0", "toy prompt 1"], ctx)
    assert out.logs[log] == pytest.approx(0.0, abs=1e-6), "at init the generator is the base"
    with torch.no_grad():  # move the adapter away from the base: reference() must still answer as the base
        for n, p in ctx.generator.net.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    out = method.step(["toy prompt 0", "toy prompt 1"], ctx)
    assert abs(out.logs[log]) > 1e-4


@pytest.mark.parametrize("name,args,match", [
    ("dpo", {"n_winners": 5, "n_losers": 4}, "disjoint"),
    ("grpo", {"anchors": 9}, "anchors"),
])
def test_setup_rejects_settings_the_budget_cannot_hold(name, args, match):
    method = METHODS.get(name).cls(METHODS.get(name).parse_config(args))
    with pytest.raises(ValueError, match=match):
        method.setup(_context())


def test_pso_setup_needs_an_even_group():
    ctx = _context()
    ctx.candidates_per_prompt = 7
    method = METHODS.get("pso").cls(METHODS.get("pso").parse_config({}))
    with pytest.raises(ValueError, match="even"):
        method.setup(ctx)


def test_lower_is_better_rewards_flip_the_ranking():
    # -redness, lower is better: the same preference as redness, so the same gradient
    up, _, g_up, _ = _step("dpo", {}, reward=ToyRedness(ToyRedness.Config()))

    class NegRed(ToyRedness):
        higher_is_better = False

        def score(self, images, prompts):
            return -super().score(images, prompts)

    down, _, g_down, _ = _step("dpo", {}, reward=NegRed(NegRed.Config()))
    for n in g_up:
        torch.testing.assert_close(g_up[n], g_down[n])


# ---- direction: one update raises the reward (a world where that is provable) ----------------








@pytest.mark.parametrize("reward_cls", [LatentRedness, LatentBlueness])
@pytest.mark.parametrize("name,args,noise_scale", [
    ("dpo", {}, 1.0),
    ("dpo", {"n_winners": 3, "n_losers": 3}, 1.0),
    ("grpo", {}, 1.0),
    ("grpo", {"policy": "gaussian"}, 0.0),  # constant means: the reward ranks the action noise alone
    ("pso", {}, 1.0),
])
def test_one_update_moves_toward_higher_reward(name, args, noise_scale, reward_cls):
    gen = ShiftGenerator(noise_scale)
    reward = reward_cls(reward_cls.Config())
    ctx = TrainContext(generator=gen, reward=reward, ledger=Ledger("cpu", enabled=False), candidates_per_prompt=8,
                       noise_rng=torch.Generator().manual_seed(3))
    method = METHODS.get(name).cls(METHODS.get(name).parse_config(args))
    method.setup(ctx)
    method.step(["toy prompt 0", "toy prompt 1", "toy prompt 2"], ctx)
    step = gen.theta.grad
    assert step.abs().sum() > 0
    assert redness_gain(gen, step) > 0  # the reward is linear in theta: a small step's effect is exact


# ---- DPO loss on hand-made tensors ----------------------------------------------------------


def test_dpo_loss_hand_computed():
    policy, ref = torch.tensor([[[0.5]]]), torch.tensor([[[0.0]]])
    win, lose = torch.tensor([[[1.0]]]), torch.tensor([[[-1.0]]])
    loss, stats = one_step_dpo_loss(policy, ref, win, lose, beta=1.0)
    # gap = d(x, l) - d(x, w) = 2.25 - 0.25 = 2; reference gap = 1 - 1 = 0
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-2.0)).item())
    loss3, _ = one_step_dpo_loss(policy, ref, win, lose, beta=3.0)
    assert loss3.item() == pytest.approx(F.softplus(torch.tensor(-6.0)).item())
    free, _ = one_step_dpo_loss(torch.tensor([[[0.0]]]), None, win, lose, beta=1.0)
    assert free.item() == pytest.approx(math.log(2))  # reference-free: gap 0 at the midpoint


def _dpo_world(seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(3, 4, 6, generator=g)  # (P, K, F)
    win = torch.randn(3, 1, 6, generator=g)
    lose = 2 * ref.mean(dim=1, keepdim=True) - win  # the winner mirrored about the reference's mean
    return ref, win, lose


def test_dpo_loss_is_log2_at_the_reference_and_falls_toward_the_winner():
    ref, win, lose = _dpo_world()
    at_ref, _ = one_step_dpo_loss(ref.clone(), ref, win, lose, beta=1.0)
    torch.testing.assert_close(at_ref, torch.full((3,), math.log(2)))
    steps = (0.0, 0.25, 0.5, 0.75)
    toward_win = [one_step_dpo_loss(ref + t * (win - ref), ref, win, lose, beta=1.0)[0] for t in steps]
    toward_lose = [one_step_dpo_loss(ref + t * (lose - ref), ref, win, lose, beta=1.0)[0] for t in steps]
    for a, b in zip(toward_win, toward_win[1:]):
        assert (b < a).all()
    for a, b in zip(toward_lose, toward_lose[1:]):
        assert (b > a).all()


def test_dpo_gradient_points_from_loser_to_winner():
    ref, win, lose = _dpo_world(1)
    policy = ref.clone().requires_grad_(True)
    loss, _ = one_step_dpo_loss(policy, ref, win, lose, beta=1.0)
    loss.sum().backward()
    descent = -policy.grad  # (P, K, F): every candidate moves along (winner - loser) for l2
    cos = F.cosine_similarity(descent, (win - lose).expand_as(descent), dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_pair_distances():
    x = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0]]])
    torch.testing.assert_close(pair_distances(x, t, "l2"), torch.tensor([[[0.5], [0.5]]]))
    torch.testing.assert_close(pair_distances(x, t, "l1"), torch.tensor([[[0.5], [0.5]]]))
    torch.testing.assert_close(pair_distances(x[:, 1:], t, "cosine"), torch.tensor([[[1 - 0.5**0.5]]]))


# ---- GRPO on hand-made tensors --------------------------------------------------------------


def test_grpo_advantages_are_group_normalized():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 8, generator=g) * torch.arange(1, 6)[:, None] + torch.arange(5)[:, None]
    adv = group_advantages(rewards, p=2.0)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv.std(dim=1, unbiased=False), torch.ones(5))
    expected = (rewards - rewards.mean(1, keepdim=True)) / rewards.std(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(group_advantages(3 * rewards + 7, p=2.0), adv, rtol=1e-5, atol=1e-5)  # affine invariant
    assert (group_advantages(torch.ones(2, 4)) == 0).all(), "a tied group carries no signal"
    quasi = group_advantages(rewards, p=0.8)  # the public code's default
    c = rewards - rewards.mean(1, keepdim=True)
    torch.testing.assert_close(quasi, 8**0.5 * c / c.abs().pow(0.8).sum(1, keepdim=True).pow(1 / 0.8))
    torch.testing.assert_close(quasi.mean(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    assert group_advantages(torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 100]]), p=2.0, clip=2.0).max() == 2.0


def test_surrogate_gradient_raises_log_prob_of_positive_advantage_actions():
    # Gaussian policy: two actions symmetric about the mean, one good, one bad
    mu = torch.zeros(1, 4, requires_grad=True)
    u = torch.tensor([[0.1, -0.05, 0.02, 0.08]])
    actions = torch.cat([u, -u])  # (2, 4)
    adv = torch.tensor([1.0, -1.0])
    before = gaussian_log_probs(actions, mu.detach().expand(2, -1), 0.05)
    logp = gaussian_log_probs(actions, mu.expand(2, -1), 0.05)
    loss, stats = clipped_surrogate(logp, logp.detach(), adv, clip_range=0.2)
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clipfrac"] == 0
    loss.backward()
    after = gaussian_log_probs(actions, (mu - 1e-3 * mu.grad).expand(2, -1), 0.05)
    assert after[0] > before[0] and after[1] < before[1]

    # neighbour policy: the anchor moves toward the positive-advantage candidate
    cands = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])  # (P=1, G=3, F=2)
    anchor = torch.zeros(1, 1, 2, requires_grad=True)
    adv = group_advantages(torch.tensor([[2.0, 0.0, 1.0]]), p=2.0)
    logp = neighbor_log_probs(cands, anchor)  # (1, 1, 3)
    loss, _ = clipped_surrogate(logp, logp.detach(), adv[:, None, :], clip_range=0.2)
    loss.backward()
    moved = neighbor_log_probs(cands, anchor.detach() - 0.1 * anchor.grad)
    assert moved[0, 0, 0] > logp[0, 0, 0] and moved[0, 0, 1] < logp[0, 0, 1]


@pytest.mark.parametrize("log_ratio,adv,clipped", [
    (math.log(1.5), 1.0, True),  # above 1 + eps with A > 0: no further push
    (math.log(1.5), -1.0, False),  # above with A < 0: the pessimistic min keeps the gradient
    (math.log(0.5), 1.0, False),
    (math.log(0.5), -1.0, True),
    (0.0, 1.0, False),
])
def test_surrogate_clips_like_ppo(log_ratio, adv, clipped):
    logp = torch.tensor([log_ratio], requires_grad=True)
    loss, stats = clipped_surrogate(logp, torch.zeros(1), torch.tensor([adv]), clip_range=0.2)
    loss.backward()
    if clipped:
        assert logp.grad.item() == 0.0
    else:
        assert logp.grad.item() == pytest.approx(-adv * math.exp(log_ratio))


def test_neighbor_log_probs_are_a_softmax_over_distances():
    cands = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    anchor = torch.tensor([[[0.0, 0.0]]])
    logp = neighbor_log_probs(cands, anchor, temperature=0.5)  # d = [0, 2] -> logits [0, -4]
    torch.testing.assert_close(logp, torch.log_softmax(torch.tensor([[[0.0, -4.0]]]), dim=-1))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(1, 1))


# ---- PSO on hand-made tensors ---------------------------------------------------------------


def test_pso_loss_hand_computed_and_ties_dropped():
    logp = torch.tensor([[0.05, -0.02, 0.01, 0.03]])
    ref = torch.zeros(1, 4)
    rewards = torch.tensor([[1.0, 0.0, 2.0, 2.0]])  # pair (0, 1): first wins; pair (2, 3): tie
    loss, stats = pairwise_sample_loss(logp, ref, rewards, beta=50.0, clip_range=0.1)
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-50 * 0.07)).item(), rel=1e-5)
    assert stats["tie_fraction"] == pytest.approx(0.5) and stats["pair_accuracy"] == 1.0
    flipped, _ = pairwise_sample_loss(logp, ref, torch.tensor([[0.0, 1.0, 2.0, 2.0]]), beta=50.0, clip_range=0.1)
    assert flipped.item() == pytest.approx(F.softplus(torch.tensor(50 * 0.07)).item(), rel=1e-5)
    x = logp.clone().requires_grad_(True)
    tied, _ = pairwise_sample_loss(x, ref, torch.full((1, 4), 3.0), beta=50.0, clip_range=0.1)
    tied.sum().backward()
    assert tied.item() == 0.0 and (x.grad == 0).all()
    with pytest.raises(ValueError, match="even"):
        pairwise_sample_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), beta=1.0, clip_range=0.1)


def test_pso_gradient_favours_the_winner_inside_the_trust_region_only():
    logp = torch.tensor([[0.0, 0.0, 0.2, 0.0]], requires_grad=True)  # candidate 2 is outside [log .9, log 1.1]
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss, _ = pairwise_sample_loss(logp, torch.zeros(1, 4), rewards, beta=50.0, clip_range=0.1)
    loss.sum().backward()
    g = logp.grad[0]
    assert g[0] < 0 and g[1] > 0, "descent raises the winner's log-ratio and lowers the loser's"
    assert g[2] == 0 and g[3] > 0, "a clipped winner gets no gradient; its loser still does"
    unclipped = logp.detach().clone().requires_grad_(True)
    loss, _ = pairwise_sample_loss(unclipped, torch.zeros(1, 4), rewards, beta=50.0, clip_range=0.0)
    loss.sum().backward()
    assert unclipped.grad[0, 2] < 0


def test_standardized_input_noise_offsets():
    x = torch.randn(3, 4, 5) * 3 + 1
    z = standardize_per_sample(x)
    torch.testing.assert_close(z.flatten(1).mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.flatten(1).std(1, unbiased=False), torch.ones(3))


# ---- DRaFT's reference L2 (public SDXL-Turbo DRaFT) --------------------------------------------


def test_draft_ref_l2_is_zero_at_the_base_and_its_gradient_pulls_toward_the_reference():
    def run(weight, ctx):
        method = METHODS.get("draft").cls(METHODS.get("draft").parse_config({"ref_l2_weight": weight}))
        method.setup(ctx)
        for p in ctx.generator.net.parameters():
            p.grad = None
        ctx.noise_rng.manual_seed(0)
        ctx.ledger.begin_update()
        out = method.step(["toy prompt 0", "toy prompt 1"], ctx)
        record = ctx.ledger.end_update()
        grads = {n: p.grad.clone() for n, p in ctx.generator.net.named_parameters() if p.requires_grad}
        return out, record, grads

    ctx = _context(reward=ToyRedness(ToyRedness.Config()))
    ctx.ledger = Ledger("cpu")
    out, record, _ = run(1.0, ctx)
    assert out.logs["ref_l2"] == pytest.approx(0.0, abs=1e-10), "at init the generator is the base"
    assert "reference" in record.phase_seconds
    _, plain_record, _ = run(0.0, ctx)
    assert "reference" not in plain_record.phase_seconds  # no reference pass when the term is off
    with torch.no_grad():
        for n, p in ctx.generator.net.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    out_w, _, g_w = run(1.0, ctx)
    out_0, _, g_0 = run(0.0, ctx)
    assert out_w.logs["ref_l2"] > 1e-4
    assert out_w.loss == pytest.approx(out_0.loss + out_w.logs["ref_l2"], rel=1e-5)
    with torch.no_grad():  # step along the ref term's own gradient: the distance to the base shrinks
        for n, p in ctx.generator.net.named_parameters():
            if n in g_w:
                p -= 0.5 * (g_w[n] - g_0[n]) / max(float((g_w[n] - g_0[n]).abs().max()), 1e-12) * 1e-2
    after, _, _ = run(1.0, ctx)
    assert after.logs["ref_l2"] < out_w.logs["ref_l2"]


def test_dpo_defaults_are_the_public_trainer_defaults_and_the_paper_suites_set_the_launch_values():
    """Defaults = baselines/dpo/train_lora.py's argument defaults (beta 1, top-1 / bottom-1), as the
    docstring says; the paper suites set scripts/train/dpo.sh's beta 30 and 8 / 8 explicitly."""
    cfg = METHODS.get("dpo").parse_config({})
    assert (cfg.beta, cfg.n_winners, cfg.n_losers, cfg.distance, cfg.ref_l2_weight) == (1.0, 1, 1, "l2", 0.0)
    doc = sys.modules[METHODS.get("dpo").cls.__module__].__doc__
    assert "beta = 30" in doc and "8 winners / 8 losers" in doc
    paper = Path(__file__).resolve().parents[1] / "suites" / "paper"
    for name in ("sd-turbo-pickscore.yaml", "sdxl-turbo-pickscore.yaml"):
        suite = load_suite(paper / name)
        (row,) = [m for m in suite.methods if m.method == "dpo"]
        assert (row.args["beta"], row.args["n_winners"], row.args["n_losers"]) == (30.0, 8, 8), name


# ---- RAFT on a one-step generator (docs/raft.md) -------------------------------------------------


def test_raft_self_denoise_regresses_kept_samples_from_their_own_renoised_noise():
    """The loss is the regression onto the kept samples; it shrinks to nothing as the re-noising does
    (a deterministic generator is a fixed point of finetuning on its own outputs), and mean_of_top,
    the collapsing first adaptation, stays reachable as an option."""
    def loss(args: dict) -> float:
        ctx = _context(reward=ToyRedness(ToyRedness.Config()))
        ctx.ledger = Ledger("cpu")
        with torch.no_grad():  # away from the base, so the generator depends on its noise
            for n, p in ctx.generator.net.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.5)
        method = METHODS.get("raft").cls(METHODS.get("raft").parse_config(args))
        method.setup(ctx)
        ctx.noise_rng.manual_seed(0)
        ctx.ledger.begin_update()
        out = method.step(["toy prompt 0", "toy prompt 1"], ctx)
        ctx.ledger.end_update()
        grads = [p.grad for p in ctx.generator.trainable_parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        return out.loss

    wide, narrow = loss({"top_n": 2, "noise_sigma": 0.5}), loss({"top_n": 2, "noise_sigma": 1e-4})
    assert wide > 1e-4 and narrow < wide * 1e-3
    assert loss({"top_n": 2, "loss": "mean_of_top"}) > 0
    with pytest.raises(ValueError):
        METHODS.get("raft").parse_config({"loss": "paired"})

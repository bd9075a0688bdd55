"""Every baseline at its paper-suite settings, value by value, against plain computations in the test.

The paper suites (suites/paper/*.yaml) run DPO at beta 30 with 8 winners / 8 losers of K = 24,
PSO at beta 50 with a 0.1 trust region, Neighbor-GRPO with clip range 0.2 and advantage clip 5,
VGG-Flow with reward scale 1000 and an 0.8-quantile clip threshold. Each loss is recomputed here
from its paper formula with explicit loops (float64), on a small world where the reference's
gap, the clipping and the threshold all matter.
"""

from __future__ import annotations

import math

import pytest
import torch
from worlds import ShiftGenerator

from baselines.dpo import one_step_dpo_loss
from baselines.grpo import clipped_surrogate, group_advantages
from baselines.pso import pairwise_sample_loss
from baselines.vggflow import clip_by_norm
from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS
from drpo_bench.toy import ToyRedness

BETA_PAPER = 30.0  # scripts/train/dpo.sh, suites/paper/*: dpo beta


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z > -30 else z


def plain_dpo(policy, reference, winners, losers, beta):
    """Per prompt: -log sigmoid(beta * (gap_theta - gap_ref)), gap = mean_{k,l} mse(x_k, l) - mean_{k,w} mse(x_k, w)."""
    def mse(a, b):
        return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)) / len(a)

    def gap(x, i):
        to_l = sum(mse(x[i, k], l) for k in range(x.shape[1]) for l in losers[i]) / (x.shape[1] * len(losers[i]))
        to_w = sum(mse(x[i, k], w) for k in range(x.shape[1]) for w in winners[i]) / (x.shape[1] * len(winners[i]))
        return to_l - to_w

    out = []
    for i in range(policy.shape[0]):
        ref_gap = 0.0 if reference is None else gap(reference, i)
        out.append(-log_sigmoid(beta * (gap(policy, i) - ref_gap)))
    return out


def _dpo_world(seed=0, p=2, k=24, f=5):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(p, k, f, generator=g)
    policy = ref + 0.02 * torch.randn(p, k, f, generator=g)  # near the base: the logit is not saturated at beta 30
    order = torch.randperm(k, generator=g)
    n = min(8, k // 3)  # 8 / 8 of K = 24, as the paper suites; disjoint thirds of a smaller K
    winners, losers = policy[:, order[:n]], policy[:, order[-n:]]
    return policy, ref, winners, losers


def test_dpo_at_paper_beta_with_a_reference_gap_equals_the_paper_formula():
    """beta multiplies the gap *relative to the reference*: beta * (gap - ref_gap), not beta * gap - ref_gap."""
    policy, ref, winners, losers = _dpo_world()
    loss, stats = one_step_dpo_loss(policy, ref, winners, losers, beta=BETA_PAPER)
    want = plain_dpo(policy, ref, winners, losers, BETA_PAPER)
    ref_gap = float(stats["reference_gap"])
    assert abs(ref_gap) > 1e-2, "the world must give the reference a non-zero gap, else beta's place is invisible"
    for i, (got, expected) in enumerate(zip(loss.tolist(), want)):
        if abs(got - expected) > 1e-5 * max(1.0, abs(expected)):
            gap_p = float(stats["policy_gap"])
            raise AssertionError(
                f"prompt {i}: DPO loss {got:.6f} != -log sigmoid(beta (gap - ref_gap)) = {expected:.6f} at beta "
                f"{BETA_PAPER}; (mean policy gap {gap_p:.4f}, reference gap {ref_gap:.4f}): is beta applied to "
                "the policy gap only (beta gap - ref_gap)?")
    # and the logit the logs show
    assert float(stats["dpo_logit"]) == pytest.approx(BETA_PAPER * (float(stats["policy_gap"]) - ref_gap), rel=1e-4)


def test_dpo_reference_free_drops_the_reference_gap():
    policy, ref, winners, losers = _dpo_world(1)
    loss, _ = one_step_dpo_loss(policy, None, winners, losers, beta=BETA_PAPER)
    torch.testing.assert_close(loss, torch.tensor(plain_dpo(policy, None, winners, losers, BETA_PAPER)), rtol=1e-5, atol=1e-6)


def _dpo_step(args, seed=3):
    """One DPO step on the shift world, away from the base; returns theta.grad and the step's latents."""
    torch.manual_seed(0)
    gen = ShiftGenerator(noise_scale=1.0)
    with torch.no_grad():
        gen.theta.copy_(0.05 * torch.randn(gen.theta.shape, generator=torch.Generator().manual_seed(seed)))
    seen = []
    sample = gen.sample

    def spy(noise, cond):
        out = sample(noise, cond)
        seen.append(out.detach().clone())
        return out

    gen.sample = spy
    ctx = TrainContext(generator=gen, reward=ToyRedness(ToyRedness.Config()), ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=24, noise_rng=torch.Generator().manual_seed(seed))
    entry = METHODS.get("dpo")
    method = entry.cls(entry.parse_config(args))
    method.setup(ctx)
    out = method.step(["toy prompt 0", "toy prompt 1"], ctx)
    return gen.theta.grad.clone(), seen, out


def _reference_dpo_grad(x, x_ref, beta, n_w, n_l, attached=()):
    """d loss / d theta on the shift world (every candidate's Jacobian is the identity), float64."""
    p = 2
    x = x.double().view(p, 24, -1).requires_grad_(True)
    x_ref = x_ref.double().view(p, 24, -1)
    images = torch.sigmoid(x.detach()).view(p * 24, 3, 8, 8)
    score = (images[:, 0] - (images[:, 1] + images[:, 2]) / 2).flatten(1).mean(1).view(p, 24)
    total = x.new_zeros(())
    for i in range(p):
        order = sorted(range(24), key=lambda c: -float(score[i, c]))
        w = (x if "winners" in attached else x.detach())[i, order[:n_w]]
        l = (x if "losers" in attached else x.detach())[i, order[24 - n_l:]]

        def gap(y):
            return ((y[:, None] - l[None]).pow(2).mean(-1).mean() - (y[:, None] - w[None]).pow(2).mean(-1).mean())

        total = total + torch.nn.functional.softplus(-beta * (gap(x[i]) - gap(x_ref[i]).detach()))
    (total / p).backward()
    return x.grad.sum(dim=(0, 1))  # d/d theta: summed over every candidate


def test_dpo_step_gradient_at_paper_settings_treats_winners_and_losers_as_constants():
    """The chosen winners and losers are targets (stopgrad): the gradient reaches theta only through x."""
    grad, seen, _ = _dpo_step({"beta": BETA_PAPER, "n_winners": 8, "n_losers": 8})
    x, x_ref = seen[0], seen[1]
    want = _reference_dpo_grad(x, x_ref, BETA_PAPER, 8, 8)
    cos = float(torch.nn.functional.cosine_similarity(grad.double(), want, dim=0))
    ratio = float(grad.double().norm() / want.norm())
    if cos < 0.9999 or abs(ratio - 1) > 1e-3:
        for attached in (("winners",), ("losers",), ("winners", "losers")):
            through = _reference_dpo_grad(x, x_ref, BETA_PAPER, 8, 8, attached=attached)
            if torch.allclose(grad.double(), through, rtol=1e-3, atol=1e-7):
                raise AssertionError(f"DPO's gradient flows through the {' and '.join(attached)} (they must be "
                                     f"detached targets): cosine to the right gradient {cos:.4f}, norm ratio {ratio:.4f}")
        raise AssertionError(f"DPO's step gradient is off the paper formula's: cosine {cos:.5f}, norm ratio {ratio:.4f}")


# ---- PSO (scripts/train/spo.sh: beta 50, clip range 0.1, max log ratio 10) --------------------------


def test_pso_at_paper_settings_equals_the_pairwise_formula_with_its_trust_region():
    g = torch.Generator().manual_seed(4)
    logp = torch.randn(2, 8, generator=g) * 0.2
    ref = logp + torch.randn(2, 8, generator=g) * 0.2  # |log ratio| around 0.2: some inside 0.1's region, some not
    rewards = torch.randn(2, 8, generator=g)
    rewards[0, 2] = rewards[0, 3]  # a tie, dropped
    for clip, max_log in ((0.1, 10.0), (0.0, 0.15)):  # the paper's trust region; none, with max_log_ratio binding
        loss, stats = pairwise_sample_loss(logp, ref, rewards, beta=50.0, clip_range=clip, max_log_ratio=max_log)
        want, logits, rhos = [], [], []
        for i in range(2):
            terms = []
            rho = [min(max(float(logp[i, c] - ref[i, c]), -max_log), max_log) for c in range(8)]
            if clip > 0:
                rho = [math.log(min(max(math.exp(r), 1 - clip), 1 + clip)) for r in rho]
            rhos += rho
            for j in range(0, 8, 2):
                if rewards[i, j] == rewards[i, j + 1]:
                    continue
                sign = 1.0 if rewards[i, j] > rewards[i, j + 1] else -1.0
                logits.append(50.0 * sign * (rho[j] - rho[j + 1]))
                terms.append(-log_sigmoid(logits[-1]))
            want.append(sum(terms) / max(len(terms), 1))
        torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.double), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"PSO at beta 50 / clip {clip} differs from the pairwise formula: {m}")
        plain_stats = {"pso_logit": sum(logits) / len(logits), "pair_accuracy": sum(z > 0 for z in logits) / len(logits),
                       "tie_fraction": 1 / 8, "log_ratio_abs": sum(abs(r) for r in rhos) / 16}
        for key, value in plain_stats.items():  # one tie among 8 pairs: it counts in no statistic but its fraction
            assert float(stats[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), (clip, key)


# ---- Neighbor-GRPO (scripts/train/grpo.sh: clip range 0.2, advantage p 0.8, advantage clip 5) -------


def test_grpo_advantages_at_paper_settings_equal_the_p_norm_formula_with_the_clip():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 10.0], [1.0, 2.0, 3.0, 4.0]])
    adv = group_advantages(rewards, p=0.8, clip=5.0)
    for i in range(2):
        r = [float(v) for v in rewards[i]]
        mean = sum(r) / 4
        norm = sum(abs(v - mean) ** 0.8 for v in r) ** (1 / 0.8)
        want = [max(-5.0, min(5.0, 2.0 * (v - mean) / norm)) for v in r]
        torch.testing.assert_close(adv[i].double(), torch.tensor(want, dtype=torch.double), rtol=1e-5, atol=1e-6)
    assert float(adv[0, 3]) == 5.0 or abs(float(adv[0, 3])) <= 5.0


def test_grpo_surrogate_at_paper_clip_range_equals_the_ppo_formula():
    g = torch.Generator().manual_seed(5)
    logp = torch.randn(12, generator=g) * 0.3
    old = logp + torch.randn(12, generator=g) * 0.3  # ratios on both sides of [0.8, 1.2]
    adv = torch.randn(12, generator=g)
    loss, stats = clipped_surrogate(logp, old, adv, clip_range=0.2, max_log_ratio=10.0)
    terms, clipped = [], 0
    for lp, lo, a in zip(logp.tolist(), old.tolist(), adv.tolist()):
        ratio = math.exp(max(-10.0, min(10.0, lp - lo)))
        c = min(max(ratio, 0.8), 1.2)
        clipped += c != ratio
        terms.append(min(ratio * a, c * a))
    assert float(loss) == pytest.approx(-sum(terms) / len(terms), rel=1e-5)
    assert float(stats["clipfrac"]) == pytest.approx(clipped / 12)
    assert 0 < clipped < 12, "the world must put ratios inside and outside the clip range"


# ---- VGG-Flow (scripts/train/vggflow.sh: quantile 0.8, initial threshold 1, reward scale 1000) -------


def test_vggflow_clip_by_norm_at_the_threshold():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])  # norms 5, 0.5, 0
    clipped, norms = clip_by_norm(g, 1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5, 0.0]))
    torch.testing.assert_close(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_vggflow_threshold_becomes_the_paper_quantile_of_the_updates_norms():
    """After an update tau is the 0.8 quantile (linear interpolation) of that update's unclipped norms."""
    entry = METHODS.get("vggflow")
    method = entry.cls(entry.parse_config({"reward_scale": 1000.0, "clip_quantile": 0.8, "initial_clip_threshold": 1.0}))
    assert method.clip_threshold == 1.0
    norms = [0.5, 4.0, 1.0, 2.0, 3.0]  # sorted: 0.5 1 2 3 4; 0.8 quantile at position 3.2 -> 3.2
    method._end_of_micro_batch(torch.tensor(norms[:2]), 0.5)
    assert method.clip_threshold == 1.0, "tau changes only once a whole update's micro-batches ran"
    method._end_of_micro_batch(torch.tensor(norms[2:]), 0.5)
    s = sorted(norms)
    pos = 0.8 * (len(s) - 1)
    want = s[int(pos)] + (pos - int(pos)) * (s[int(pos) + 1] - s[int(pos)])
    assert method.clip_threshold == pytest.approx(want), f"tau {method.clip_threshold} != 0.8 quantile {want}"


# ---- DPO: the objective's logs, distances, ref_l2 term, budget, step logs ---------------------------


def test_dpo_objective_logs_and_ref_l2_term_equal_plain_computations():
    from baselines.dpo import dpo_objective

    policy, ref, winners, losers = _dpo_world(2, p=3, k=6, f=4)
    policy[2] = ref[2]  # prompt 2 at the base: logit exactly 0, not a won pair
    cfg = METHODS.get("dpo").parse_config({"beta": BETA_PAPER, "n_winners": 2, "n_losers": 2, "ref_l2_weight": 0.5})
    winners, losers = winners[:, :2], losers[:, :2]
    loss, logs = dpo_objective(cfg, policy, ref, winners, losers)
    per_prompt = plain_dpo(policy, ref, winners, losers, BETA_PAPER)
    assert min(abs(logs["policy_gap"]), abs(logs["reference_gap"])) > 1e-2, "the world must give both gaps a value"
    assert len({round(v, 6) for v in per_prompt}) == 3, "each prompt must have its own loss"
    mse = float(((policy.double() - ref.double()) ** 2).mean())
    assert float(loss) == pytest.approx(sum(per_prompt) / 3 + 0.5 * mse, rel=1e-5)
    assert logs["loss_dpo"] == pytest.approx(sum(per_prompt) / 3, rel=1e-5)
    assert logs["ref_l2"] == pytest.approx(mse, rel=1e-5)
    logits = [math.log(math.expm1(v)) if v > 1e-12 else float("inf") for v in per_prompt]  # softplus^-1(loss) = -logit
    logits = [-z for z in logits]
    assert logs["dpo_logit"] == pytest.approx(sum(logits) / 3, rel=1e-4, abs=1e-6)
    assert logs["pair_accuracy"] == pytest.approx(sum(z > 0 for z in logits) / 3)
    assert logs["policy_gap"] - logs["reference_gap"] == pytest.approx(logs["dpo_logit"] / BETA_PAPER, rel=1e-4, abs=1e-7)
    assert set(logs) == {"loss_dpo", "ref_l2", "dpo_logit", "policy_gap", "reference_gap", "pair_accuracy"}
    free = METHODS.get("dpo").parse_config({"beta": 2.0, "reference_free": True})
    loss, logs = dpo_objective(free, policy, ref, winners, losers)
    assert logs["reference_gap"] == 0.0 and logs["ref_l2"] == 0.0
    assert float(loss) == pytest.approx(sum(plain_dpo(policy, None, winners, losers, 2.0)) / 3, rel=1e-5)
    l1 = METHODS.get("dpo").parse_config({"beta": BETA_PAPER, "distance": "l1"})  # the config's distance is used
    loss, _ = dpo_objective(l1, policy, ref, winners, losers)
    want = one_step_dpo_loss(policy, ref, winners, losers, beta=BETA_PAPER, distance="l1")[0].mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert float(loss) != pytest.approx(sum(per_prompt) / 3, rel=1e-3), "l1 and l2 must differ in this world"


def test_dpo_pair_accuracy_counts_positive_logits_only():
    ref = torch.zeros(3, 1, 1)
    win, lose = torch.ones(3, 1, 1), -torch.ones(3, 1, 1)
    policy = torch.tensor([0.0, 0.01, -0.3]).view(3, 1, 1)  # logits 0, 0.04 (inside (0, 1)), -1.2
    _, stats = one_step_dpo_loss(policy, ref, win, lose, beta=1.0)
    assert float(stats["pair_accuracy"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("distance", ["l1", "cosine"])
def test_dpo_distances_equal_plain_formulas(distance):
    policy, ref, winners, losers = _dpo_world(3, p=2, k=4, f=3)

    def d(a, b):
        a, b = [float(v) for v in a], [float(v) for v in b]
        if distance == "l1":
            return sum(abs(x - y) for x, y in zip(a, b)) / len(a)
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
        return 1 - sum(x * y for x, y in zip(a, b)) / (na * nb)

    def gap(x, i):
        to_l = sum(d(x[i, k], l) for k in range(x.shape[1]) for l in losers[i]) / (x.shape[1] * losers.shape[1])
        return to_l - sum(d(x[i, k], w) for k in range(x.shape[1]) for w in winners[i]) / (x.shape[1] * winners.shape[1])

    loss, _ = one_step_dpo_loss(policy, ref, winners, losers, beta=BETA_PAPER, distance=distance)
    want = [-log_sigmoid(BETA_PAPER * (gap(policy, i) - gap(ref, i))) for i in range(2)]
    assert min(abs(gap(policy, i)) for i in range(2)) > 1e-3, "winners and losers must differ in this world"
    torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.double), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="^unknown distance 'l3'; use l2, l1 or cosine$"):
        one_step_dpo_loss(policy, ref, winners, losers, beta=1.0, distance="l3")


def test_dpo_budget_and_reference_needs():
    cls = METHODS.get("dpo").cls
    cfg = METHODS.get("dpo").parse_config({"n_winners": 8, "n_losers": 8})
    cls.check_budget(cfg, 16)  # 8 + 8 of 16: disjoint, allowed
    with pytest.raises(ValueError, match=r"^dpo: n_winners \+ n_losers = 16 exceeds the 15 candidates per prompt; "
                                         r"winners and losers must be disjoint\. Lower them or raise "
                                         r"budget\.candidates_per_prompt\.$"):
        cls.check_budget(cfg, 15)
    needs = {args: cls(METHODS.get("dpo").parse_config(dict(args))).needs_reference()
             for args in ((), (("reference_free", True),), (("reference_free", True), ("ref_l2_weight", 0.1)))}
    assert list(needs.values()) == [True, False, True]
    assert "reference" not in cls(METHODS.get("dpo").parse_config({"reference_free": True})).phases()


def test_dpo_step_logs_the_reward_gap_between_its_winners_and_losers():
    _, seen, out = _dpo_step({"beta": BETA_PAPER, "n_winners": 8, "n_losers": 8})
    images = torch.sigmoid(seen[0]).view(-1, 3, 8, 8)
    score = (images[:, 0] - (images[:, 1] + images[:, 2]) / 2).flatten(1).mean(1).view(2, 24)
    ordered = score.sort(dim=1, descending=True).values
    want = float(ordered[:, :8].mean() - ordered[:, -8:].mean())
    assert out.logs["reward_winner_minus_loser"] == pytest.approx(want, rel=1e-5)
    assert out.loss == pytest.approx(out.logs["loss_dpo"], rel=1e-6), "ref_l2_weight 0: the loss is DPO's"


def test_pair_distances_default_to_the_per_element_squared_error():
    from baselines.dpo import pair_distances

    g = torch.Generator().manual_seed(6)
    x, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    want = [[[sum((float(a) - float(b)) ** 2 for a, b in zip(x[p, k], t[p, n])) / 4 for n in range(5)] for k in range(3)]
            for p in range(2)]
    torch.testing.assert_close(pair_distances(x, t).double(), torch.tensor(want, dtype=torch.double), rtol=1e-5, atol=1e-6)

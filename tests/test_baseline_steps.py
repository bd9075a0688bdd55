"""One whole training step of each gradient-free and reward-backprop baseline, value by value.

On the shift world (x = eps + theta, so theta.grad is the loss gradient summed over candidates)
each step's loss, every log line and theta's gradient are recomputed here in float64 from the
papers' formulas with explicit loops, drawing the noises from the same seed in the order the
formula names them. The settings are the paper suites' (GRPO p 0.8 / advantage clip 5 / clip
range 0.2, PSO beta 50 / trust region 0.1, VGG-Flow reward scale 1000 with a binding norm clip;
RAFT at the toy and smoke suites' defaults and the options beside them),
with every optional term switched on, a micro-batch share (loss_scale) below one and a stand-in
mixed-precision scale, so that a misplaced factor shows.
"""

from __future__ import annotations

import math

import pytest
import torch
from worlds import ShiftGenerator

from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS
from drpo_bench.toy import ToyRedness

D = 3 * 8 * 8  # the shift world's latent size
PROMPTS = ["toy prompt 0", "toy prompt 1"]


class ToyBlueness(ToyRedness):
    """Minus the redness, declared lower-is-better: it prefers the same images."""

    higher_is_better = False

    def score(self, images, prompts):
        return -super().score(images, prompts)


def _theta0(seed: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(D, generator=torch.Generator().manual_seed(100 + seed))


def _step(name, args, *, k=8, seed=3, theta_scale=0.05, reward=None, loss_scale=0.5, mp_scale=4.0, prompts=PROMPTS):
    """Run one step; returns (method, StepOutput, theta.grad)."""
    gen = ShiftGenerator(noise_scale=1.0)
    with torch.no_grad():
        gen.theta.copy_(_theta0(seed, theta_scale))
    ctx = TrainContext(generator=gen, reward=reward or ToyRedness(ToyRedness.Config()),
                       ledger=Ledger("cpu", enabled=False), candidates_per_prompt=k,
                       noise_rng=torch.Generator().manual_seed(seed), loss_scale=loss_scale,
                       scaled=lambda t: t * mp_scale)
    entry = METHODS.get(name)
    method = entry.cls(entry.parse_config(args))
    method.setup(ctx)
    out = method.step(prompts, ctx)
    return method, out, gen.theta.grad.clone()


def _redness(x: torch.Tensor) -> torch.Tensor:
    """(N, D) latents -> (N,) toy redness of sigmoid(x): mean over pixels of R - (G + B) / 2."""
    out = []
    for row in x:
        img = torch.sigmoid(row).view(3, 8, 8)
        out.append((img[0] - (img[1] + img[2]) / 2).mean())
    return torch.stack(out)


def _advantages(r: list[float], p: float, clip: float) -> list[float]:
    mean = sum(r) / len(r)
    norm = sum(abs(v - mean) ** p for v in r) ** (1 / p)
    adv = [math.sqrt(len(r)) * (v - mean) / norm if norm > 1e-6 else 0.0 for v in r]
    return [max(-clip, min(clip, a)) for a in adv] if clip > 0 else adv


def _close(got: float, want: float, what: str, rel: float = 1e-4, abs_: float = 1e-7):
    assert got == pytest.approx(want, rel=rel, abs=abs_), f"{what}: step gives {got!r}, the formula {want!r}"


def _grad_close(got: torch.Tensor, want: torch.Tensor, what: str):
    cos = float(torch.nn.functional.cosine_similarity(got.double(), want, dim=0))
    ratio = float(got.double().norm() / want.norm())
    assert cos > 0.9999 and abs(ratio - 1) < 1e-3, f"{what}: gradient cosine {cos:.5f}, norm ratio {ratio:.5f}"


def _std(v: list[float], unbiased: bool) -> float:
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - (1 if unbiased else 0)))


# ---- Neighbor-GRPO -----------------------------------------------------------------------------------

GRPO_NEIGHBOR = {"policy": "neighbor", "neighbor_sigma": 0.3, "anchors": 3, "temperature": 0.05, "advantage_p": 0.8,
                 "advantage_clip": 0.4, "clip_range": 0.2, "kl_weight": 2.0, "ref_l2_weight": 0.02}


def _plain_neighbor_grpo(cfg: dict, k: int, seed: int, theta_scale: float):
    g = torch.Generator().manual_seed(seed)
    p, a, s, t = len(PROMPTS), cfg["anchors"], cfg["neighbor_sigma"], cfg["temperature"]
    base = torch.randn((p, D), generator=g).double()  # one centre per prompt, then K neighbour offsets
    deltas = torch.randn((p * k, D), generator=g).double()
    theta = _theta0(seed, theta_scale).double().requires_grad_(True)
    noise = [[math.sqrt(1 - s * s) * base[i] + s * deltas[i * k + j] for j in range(k)] for i in range(p)]
    rollout = [[(n + theta).detach() for n in row] for row in noise]  # old policy, no grad
    scores = [[float(v) for v in _redness(torch.stack(row))] for row in rollout]
    adv = [_advantages(r, cfg["advantage_p"], cfg["advantage_clip"]) for r in scores]

    def log_softmax_over_group(i, anchor):
        d = torch.stack([((x - anchor) ** 2).mean() for x in rollout[i]])  # (K,)
        return torch.log_softmax(-d / t, dim=0)

    terms, kls, ref_l2s, ratios = [], [], [], []
    for i in range(p):
        for j in range(a):
            anchor = noise[i][j] + theta  # trainable: grad through theta
            logp = log_softmax_over_group(i, anchor)
            old = log_softmax_over_group(i, rollout[i][j])
            ref = log_softmax_over_group(i, noise[i][j])  # the frozen base's anchor (theta = 0)
            for c in range(k):
                ratio = torch.exp((logp[c] - old[c].detach()).clamp(-10, 10))
                ratios.append(float(ratio.detach()))
                clipped = ratio.clamp(1 - cfg["clip_range"], 1 + cfg["clip_range"])
                terms.append(torch.minimum(ratio * adv[i][c], clipped * adv[i][c]))
            kls.append((logp.exp() * (logp - ref)).sum())
            ref_l2s.append(((anchor - noise[i][j]) ** 2).mean())
    policy = -torch.stack(terms).mean()
    kl, ref_l2 = torch.stack(kls).mean(), torch.stack(ref_l2s).mean()
    loss = policy + cfg["kl_weight"] * kl + cfg["ref_l2_weight"] * ref_l2
    loss.backward()
    logs = {"reward_std_within_prompt": sum(_std(r, True) for r in scores) / p,
            "advantage_abs": sum(abs(v) for row in adv for v in row) / (p * k),
            "loss_policy": float(policy.detach()), "kl_ref": float(kl.detach()), "ref_l2": float(ref_l2.detach()),
            "ratio_mean": sum(ratios) / len(ratios), "clipfrac": 0.0, "approx_kl_old": 0.0}
    return float(loss.detach()), logs, theta.grad


def test_neighbor_grpo_step_equals_the_formula_at_paper_settings_with_kl_and_ref_l2():
    k, seed, scale = 8, 3, 0.05
    _, out, grad = _step("grpo", GRPO_NEIGHBOR, k=k, seed=seed, theta_scale=scale)
    loss, logs, want_grad = _plain_neighbor_grpo(GRPO_NEIGHBOR, k, seed, scale)
    _close(out.loss, loss, "loss")
    assert set(out.logs) == set(logs)
    for key, value in logs.items():
        _close(out.logs[key], value, key, abs_=1e-6)
    assert logs["kl_ref"] > 1e-4 and logs["ref_l2"] > 1e-4, "the world must make both reference terms count"
    _grad_close(grad, 0.5 * 4.0 * want_grad, "neighbor GRPO (times loss_scale 0.5 and the precision scale 4)")


def test_neighbor_grpo_advantage_clip_binds_in_this_world():
    """The world check for the test above: some advantage sits at the clip, so the clip's place is seen."""
    k, seed = 8, 3
    g = torch.Generator().manual_seed(seed)
    base, deltas = torch.randn((2, D), generator=g), torch.randn((2 * k, D), generator=g)
    theta = _theta0(seed, 0.05)
    noise = math.sqrt(1 - 0.09) * base.repeat_interleave(k, 0) + 0.3 * deltas
    scores = _redness((noise + theta).double()).view(2, k)
    raw = [_advantages([float(v) for v in row], 0.8, 0.0) for row in scores]
    assert any(abs(v) > 0.4 for row in raw for v in row) and any(abs(v) < 0.4 for row in raw for v in row)


def test_neighbor_grpo_without_reference_terms_logs_zeros_and_skips_the_reference():
    args = {**GRPO_NEIGHBOR, "kl_weight": 0.0, "ref_l2_weight": 0.0}
    method, out, grad = _step("grpo", args)
    loss, logs, want_grad = _plain_neighbor_grpo({**args}, 8, 3, 0.05)
    assert out.logs["kl_ref"] == 0.0 and out.logs["ref_l2"] == 0.0
    _close(out.loss, logs["loss_policy"], "loss without reference terms")
    _grad_close(grad, 0.5 * 4.0 * want_grad, "neighbor GRPO without reference terms")
    assert "reference" not in method.phases()
    assert "reference" in METHODS.get("grpo").cls(METHODS.get("grpo").parse_config({"ref_l2_weight": 0.0,
                                                                                     "kl_weight": 0.1})).phases()
    # the gaussian policy, too, runs the reference only for a reference term (kl_weight defaults to 0)
    assert "reference" not in METHODS.get("grpo").cls(METHODS.get("grpo").parse_config({"ref_l2_weight": 0.0,
                                                                                         "policy": "gaussian"})).phases()


# ---- Gaussian GRPO -----------------------------------------------------------------------------------

GRPO_GAUSSIAN = {"policy": "gaussian", "action_std": 0.05, "advantage_p": 2.0, "advantage_clip": 0.0,
                 "clip_range": 0.2, "kl_weight": 0.1, "ref_l2_weight": 0.02}


@pytest.mark.parametrize("extra", [{}, {"advantage_p": 0.8, "advantage_clip": 0.5, "ref_l2_weight": 0.0},
                                   {"kl_weight": 0.0}, {"kl_weight": 0.0, "ref_l2_weight": 0.0}],
                         ids=["kl-and-ref_l2", "p0.8-clip-kl-only", "ref_l2-only", "no-reference"])
def test_gaussian_grpo_step_equals_the_formula_with_its_exact_kl(extra):
    cfg = {**GRPO_GAUSSIAN, **extra}
    k, seed, scale = 6, 5, 0.05
    _, out, grad = _step("grpo", cfg, k=k, seed=seed, theta_scale=scale)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((2 * k, D), generator=g).double()  # the candidates' noises, then the action noise
    xi = torch.randn((2 * k, D), generator=g).double()
    theta = _theta0(seed, scale).double().requires_grad_(True)
    std, ap, ac = cfg["action_std"], cfg["advantage_p"], cfg["advantage_clip"]
    terms, scores = [], []
    for i in range(2):
        rows = range(i * k, (i + 1) * k)
        actions = [(noise[r] + theta).detach() + std * xi[r] for r in rows]
        r = [float(v) for v in _redness(torch.stack(actions))]
        scores.append(r)
        adv = _advantages(r, ap, ac)
        for c, row in enumerate(rows):
            mu = noise[row] + theta
            logp = -0.5 * (((actions[c] - mu) / std) ** 2).mean()
            ratio = torch.exp(logp - logp.detach())
            terms.append(torch.minimum(ratio * adv[c], ratio.clamp(0.8, 1.2) * adv[c]))
    policy = -torch.stack(terms).mean()
    need_ref = cfg["kl_weight"] > 0 or cfg["ref_l2_weight"] > 0
    ref_l2 = (theta**2).mean() if need_ref else theta.sum() * 0  # mu - mu_ref = theta for every candidate
    kl = ref_l2 / (2 * std**2)
    total = policy + cfg["kl_weight"] * kl + cfg["ref_l2_weight"] * ref_l2
    total.backward()
    _close(out.loss, float(total.detach()), "loss")
    _close(out.logs["kl_ref"], float(kl.detach()), "kl_ref")
    _close(out.logs["ref_l2"], float(ref_l2.detach()), "ref_l2")
    _close(out.logs["loss_policy"], float(policy.detach()), "loss_policy", abs_=1e-6)
    _close(out.logs["reward_std_within_prompt"], sum(_std(r, True) for r in scores) / 2, "reward_std_within_prompt")
    _close(out.logs["advantage_abs"], sum(abs(a) for r in scores for a in _advantages(r, ap, ac)) / (2 * k),
           "advantage_abs")
    _grad_close(grad, 0.5 * 4.0 * theta.grad, "gaussian GRPO")


@pytest.mark.parametrize("weights", [(0.3, 0.0), (0.0, 0.02)], ids=["kl-only", "ref_l2-only"])
def test_neighbor_grpo_with_one_reference_term(weights):
    args = {**GRPO_NEIGHBOR, "kl_weight": weights[0], "ref_l2_weight": weights[1]}
    _, out, grad = _step("grpo", args)
    loss, logs, want_grad = _plain_neighbor_grpo(args, 8, 3, 0.05)
    if not weights[0]:
        logs["kl_ref"] = 0.0  # KL not computed without its weight
    _close(out.loss, loss, "loss")
    for key, value in logs.items():
        _close(out.logs[key], value, key, abs_=1e-6)
    _grad_close(grad, 0.5 * 4.0 * want_grad, f"neighbor GRPO with weights {weights}")


def test_grpo_surrogate_clamps_the_log_ratio_and_logs_the_old_kl():
    from baselines.grpo import clipped_surrogate, group_advantages

    logp, old, adv = torch.tensor([0.5, -0.5, 0.05]), torch.zeros(3), torch.tensor([1.0, -1.0, 2.0])
    loss, stats = clipped_surrogate(logp, old, adv, clip_range=0.2, max_log_ratio=0.3)
    lr = [0.3, -0.3, 0.05]  # clamped at +-0.3
    ratio = [math.exp(v) for v in lr]
    terms = [min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(ratio, [1.0, -1.0, 2.0])]
    assert float(loss) == pytest.approx(-sum(terms) / 3, rel=1e-5)
    assert float(stats["approx_kl_old"]) == pytest.approx(sum(r - 1 - v for r, v in zip(ratio, lr)) / 3, rel=1e-5)
    adv2 = group_advantages(torch.tensor([[1.0, 3.0]]))  # a group of two is allowed: (r - mean) / std
    torch.testing.assert_close(adv2, torch.tensor([[-1.0, 1.0]]))
    for bad in (torch.zeros(4), torch.zeros(2, 1)):
        with pytest.raises(ValueError, match=r"^rewards must be \(prompts, group >= 2\), got \(" ):
            group_advantages(bad)


def test_grpo_budget_check_names_the_anchors():
    entry = METHODS.get("grpo")
    entry.cls.check_budget(entry.parse_config({"anchors": 4}), 4)
    entry.cls.check_budget(entry.parse_config({"anchors": 9, "policy": "gaussian"}), 4)  # no anchors there
    with pytest.raises(ValueError, match=r"^grpo: anchors 5 exceeds the 4 candidates per prompt; lower anchors$"):
        entry.cls.check_budget(entry.parse_config({"anchors": 5}), 4)


# ---- PSO ---------------------------------------------------------------------------------------------

PSO_PAPER = {"beta": 50.0, "action_std": 0.05, "clip_range": 0.1, "max_log_ratio": 10.0, "ref_l2_weight": 5.0}


def _plain_pso(cfg: dict, k: int, seed: int, scale: float, fresh: bool, reward_sign: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((2 * k, D), generator=g).double()
    if fresh:
        offset = torch.randn((2 * k, D), generator=g).double()
    else:  # the input noise, standardized per sample (population std)
        offset = torch.stack([(n - n.mean()) / n.std(unbiased=False) for n in noise])
    theta = _theta0(seed, scale).double().requires_grad_(True)
    std, beta, clip = cfg["action_std"], cfg["beta"], cfg["clip_range"]
    per_prompt, logits, wins, valid, inside, lr_abs = [], [], 0, 0, 0, []
    for i in range(2):
        rows = list(range(i * k, (i + 1) * k))
        mus = [noise[r] + theta for r in rows]
        actions = [mu.detach() + std * offset[r] for mu, r in zip(mus, rows)]
        ranked = [reward_sign * float(v) for v in _redness(torch.stack(actions))]
        rho = []
        for mu, a, r in zip(mus, actions, rows):
            log_ratio = -0.5 * (((a - mu) / std) ** 2).mean() + 0.5 * (((a - noise[r]) / std) ** 2).mean()
            log_ratio = log_ratio.clamp(-cfg["max_log_ratio"], cfg["max_log_ratio"])
            inside += math.log(1 - clip) < float(log_ratio.detach()) < math.log(1 + clip)
            rho.append(torch.log(torch.exp(log_ratio).clamp(1 - clip, 1 + clip)) if clip > 0 else log_ratio)
            lr_abs.append(abs(float(rho[-1].detach())))
        terms = []
        for j in range(0, k, 2):
            if ranked[j] == ranked[j + 1]:
                continue
            sign = 1.0 if ranked[j] > ranked[j + 1] else -1.0
            z = beta * sign * (rho[j] - rho[j + 1])
            terms.append(-torch.nn.functional.logsigmoid(z))
            logits.append(float(z.detach()))
            wins += float(z.detach()) > 0
            valid += 1
        per_prompt.append(torch.stack(terms).mean() if terms else theta.sum() * 0)
    pso = torch.stack(per_prompt).mean()
    ref_l2 = (theta**2).mean()
    loss = pso + cfg["ref_l2_weight"] * ref_l2
    loss.backward()
    logs = {"loss_pso": float(pso.detach()), "ref_l2": float(ref_l2.detach()), "pso_logit": sum(logits) / valid,
            "pair_accuracy": wins / valid, "tie_fraction": 1 - valid / k, "log_ratio_abs": sum(lr_abs) / len(lr_abs)}
    return float(loss.detach()), logs, theta.grad, inside


@pytest.mark.parametrize("noise_kind", ["input", "fresh"])
def test_pso_step_equals_the_pairwise_formula_at_paper_settings(noise_kind):
    k, seed, scale = 8, 7, 0.02  # theta / action_std ~ 0.4: log-ratios ~ 0.1, around the trust region's edge
    args = {**PSO_PAPER, "action_noise": noise_kind}
    _, out, grad = _step("pso", args, k=k, seed=seed, theta_scale=scale)
    loss, logs, want_grad, inside = _plain_pso(args, k, seed, scale, fresh=noise_kind == "fresh")
    assert 0 < inside < 2 * k, f"{inside} of {2 * k} log-ratios inside the trust region: the world must straddle it"
    _close(out.loss, loss, "loss")
    assert set(out.logs) == set(logs)
    for key, value in logs.items():
        _close(out.logs[key], value, key, abs_=1e-6)
    _grad_close(grad, 0.5 * 4.0 * want_grad, f"PSO ({noise_kind} action noise)")


def test_pso_step_without_trust_region_clamps_the_log_ratio_at_max_log_ratio():
    """clip_range 0 turns the trust region off; then max_log_ratio (here below the world's log-ratios) binds."""
    k, seed, scale = 8, 7, 0.02
    args = {**PSO_PAPER, "clip_range": 0.0, "max_log_ratio": 0.08}
    _, out, grad = _step("pso", args, k=k, seed=seed, theta_scale=scale)
    loss, logs, want_grad, _ = _plain_pso(args, k, seed, scale, fresh=False)
    assert 0 < logs["log_ratio_abs"] < 0.08, "some log-ratios must be clamped at 0.08 and some not"
    _close(out.loss, loss, "loss")
    for key, value in logs.items():
        _close(out.logs[key], value, key, abs_=1e-6)
    _grad_close(grad, 0.5 * 4.0 * want_grad, "PSO without trust region")


def test_pso_step_reads_a_lower_is_better_reward_by_its_direction():
    k, seed, scale = 8, 7, 0.02
    _, out, grad = _step("pso", PSO_PAPER, k=k, seed=seed, theta_scale=scale, reward=ToyBlueness(ToyBlueness.Config()))
    loss, logs, want_grad, _ = _plain_pso(PSO_PAPER, k, seed, scale, fresh=False)  # the same preferences
    _close(out.loss, loss, "loss under a lower-is-better reward")
    _grad_close(grad, 0.5 * 4.0 * want_grad, "PSO under a lower-is-better reward")


def test_pso_without_ref_l2_logs_zero_and_its_loss_is_the_pairwise_loss():
    args = {**PSO_PAPER, "ref_l2_weight": 0.0}
    _, out, _ = _step("pso", args, k=8, seed=7, theta_scale=0.02)
    assert out.logs["ref_l2"] == 0.0 and out.loss == pytest.approx(out.logs["loss_pso"], rel=1e-6)


def test_pso_budget_check_message():
    cls = METHODS.get("pso").cls
    cls.check_budget(None, 4)
    with pytest.raises(ValueError, match=r"^pso pairs adjacent candidates: budget\.candidates_per_prompt must be "
                                         r"even, got 5$"):
        cls.check_budget(None, 5)


# ---- DRaFT -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_cls", [ToyRedness, ToyBlueness])
@pytest.mark.parametrize("ref_l2_weight", [0.0, 0.3])
def test_draft_step_equals_minus_the_scaled_reward_plus_ref_l2(reward_cls, ref_l2_weight):
    k, seed, scale, reward_scale = 4, 11, 0.1, 2.5
    method, out, grad = _step("draft", {"reward_scale": reward_scale, "ref_l2_weight": ref_l2_weight}, k=k, seed=seed,
                              theta_scale=scale, reward=reward_cls(reward_cls.Config()))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((2 * k, D), generator=g).double()
    theta = _theta0(seed, scale).double().requires_grad_(True)
    redness = _redness(noise + theta)  # the preferred direction for both rewards
    ref_l2 = (theta**2).mean()
    loss = -reward_scale * redness.mean() + ref_l2_weight * ref_l2
    loss.backward()
    _close(out.loss, float(loss.detach()), "loss")
    _close(out.logs["reward_std"], _std([float(v) for v in redness.detach()], True), "reward_std")
    _close(out.logs["ref_l2"], float(ref_l2.detach()) if ref_l2_weight else 0.0, "ref_l2")
    _grad_close(grad, 0.5 * 4.0 * theta.grad, f"DRaFT ({reward_cls.__name__}, ref_l2_weight {ref_l2_weight})")
    assert ("reference" in method.phases()) == (ref_l2_weight > 0)


# ---- VGG-Flow ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_cls", [ToyRedness, ToyBlueness])
def test_vggflow_step_equals_the_value_gradient_regression_with_a_binding_clip(reward_cls):
    k, seed, scale, s, tau = 4, 13, 0.05, 1000.0, 0.0322
    args = {"reward_scale": s, "clip_quantile": 0.8, "initial_clip_threshold": tau, "ref_l2_weight": 0.9}
    method, out, grad = _step("vggflow", args, k=k, seed=seed, theta_scale=scale, loss_scale=1.0,
                              reward=reward_cls(reward_cls.Config()))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((2 * k, D), generator=g).double()
    theta = _theta0(seed, scale).double().requires_grad_(True)
    rows, norms, targets, scores = [], [], [], []
    for n in noise:
        z = (n + theta).detach().requires_grad_(True)
        red = _redness(z[None])[0]
        (gz,) = torch.autograd.grad(red, z)  # the preferred direction: the redness's gradient
        norm = float(gz.norm())
        norms.append(norm)
        target = n + s * gz * min(1.0, tau / norm)
        targets.append(target)
        scores.append(float(red.detach()))
        rows.append(((n + theta - target) ** 2).mean())
    vgg = torch.stack(rows).mean()
    ref_l2 = (theta**2).mean()
    (vgg + 0.9 * ref_l2).backward()
    clipped = sum(v > tau for v in norms) / len(norms)
    assert 0 < clipped < 1, f"clipped fraction {clipped}: the world must clip some reward gradients, not all"
    _close(out.loss, float((vgg + 0.9 * ref_l2).detach()), "loss")
    want = {"reward_std": _std(scores, False), "loss_vgg": float(vgg.detach()), "ref_l2": float(ref_l2.detach()),
            "rgrad_norm": sum(norms) / len(norms), "clip_threshold": tau, "clipped_fraction": clipped,
            "target_shift": float(torch.stack([((t - n) ** 2).mean() for t, n in zip(targets, noise)]).mean())}
    assert set(out.logs) == set(want)
    for key, value in want.items():
        _close(out.logs[key], value, key)
    _grad_close(grad, 4.0 * theta.grad, f"VGG-Flow ({reward_cls.__name__})")
    ordered = sorted(norms)  # a whole update ran (loss_scale 1): tau is now the 0.8 quantile of its norms
    pos = 0.8 * (len(ordered) - 1)
    lo = int(pos)
    assert method.clip_threshold == pytest.approx(ordered[lo] + (pos - lo) * (ordered[lo + 1] - ordered[lo]), rel=1e-5)
    assert method.state_dict() == {"clip_threshold": method.clip_threshold}


def test_vggflow_without_clipping_or_ref_l2():
    k, seed, scale, s = 4, 13, 0.05, 1000.0
    method, out, grad = _step("vggflow", {"reward_scale": s, "clip_gradient": False, "initial_clip_threshold": 0.01},
                              k=k, seed=seed, theta_scale=scale, loss_scale=1.0)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((2 * k, D), generator=g).double()
    theta = _theta0(seed, scale).double().requires_grad_(True)
    rows = []
    for n in noise:
        z = (n + theta).detach().requires_grad_(True)
        (gz,) = torch.autograd.grad(_redness(z[None])[0], z)
        rows.append(((n + theta - (n + s * gz)) ** 2).mean())
    vgg = torch.stack(rows).mean()
    vgg.backward()
    _close(out.loss, float(vgg.detach()), "loss without clip or ref_l2")
    _close(out.logs["ref_l2"], float((theta**2).mean().detach()), "ref_l2 is logged even with weight 0")
    assert out.logs["clipped_fraction"] == 0.0
    _grad_close(grad, 4.0 * theta.grad, "VGG-Flow unclipped")
    assert method.clip_threshold == 0.01, "tau stays put when clipping is off"
    method.load_state_dict({"clip_threshold": 0.5})
    assert method.clip_threshold == 0.5 and method._norms == [] and method._share == 0.0
    method.load_state_dict({})
    assert method.clip_threshold == 0.01, "a checkpoint without tau restarts from initial_clip_threshold"


# ---- RAFT (suites/toy/harness.yaml K 8 and suites/smoke.yaml K 4 at the defaults: top 1, self_denoise, -----
# ---- noise_sigma 0.3; the mean_of_top option) --------------------------------------------------------

PROMPTS_3 = ["toy prompt 0", "toy prompt 1", "toy prompt 2"]  # three: a wrong prompt offset cannot wrap onto the right rows


def _plain_raft(cfg: dict, k: int, seed: int, scale: float, p: int = 3):
    """RAFT's step restated: K candidates per prompt from the seed, ranked by redness (own sort), the top n
    kept; self_denoise regresses ceil(K / n) re-noised copies of each kept sample's noise (fresh noise drawn
    after the candidates' from the same seed) onto the kept sample; mean_of_top regresses every candidate
    onto its prompt's top-n mean. Returns (loss, logs, d loss / d theta times loss_scale 0.5, mp scale 4)."""
    n, s = cfg.get("top_n", 1), cfg.get("noise_sigma", 0.3)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((p * k, D), generator=g).double()  # (P*K, D) the candidates' noises, prompt-major
    theta = _theta0(seed, scale).double().requires_grad_(True)
    scores = [[float(v) for v in _redness(z[i * k:(i + 1) * k] + theta.detach())] for i in range(p)]
    kept = [sorted(range(k), key=lambda c, i=i: -scores[i][c])[:n] for i in range(p)]
    terms = []
    if cfg.get("loss", "self_denoise") == "self_denoise":
        copies = math.ceil(k / n)
        fresh = torch.randn((p * n * copies, D), generator=g).double()
        r = 0
        for i in range(p):
            for c in kept[i]:
                target = (z[i * k + c] + theta).detach()
                for _ in range(copies):
                    noise_in = math.sqrt(1 - s * s) * z[i * k + c] + s * fresh[r]
                    r += 1
                    terms.append(((noise_in + theta - target) ** 2).mean())
        assert r == fresh.shape[0]
    else:
        for i in range(p):
            mean_top = sum((z[i * k + c] + theta).detach() for c in kept[i]) / n
            terms += [((z[i * k + c] + theta - mean_top) ** 2).mean() for c in range(k)]
    loss = torch.stack(terms).mean()
    (loss * 0.5 * 4.0).backward()
    best = sum(scores[i][kept[i][0]] for i in range(p)) / p
    return float(loss.detach()), {"reward_best": best}, theta.grad


@pytest.mark.parametrize("k,args", [
    (8, {}),  # the toy harness suite: defaults at K 8
    (4, {}),  # the smoke suite: defaults at K 4
    (8, {"top_n": 3, "noise_sigma": 0.5}),  # ceil(8 / 3) = 3 copies: n does not divide K
    (8, {"top_n": 8}),  # every candidate kept: top_n = K is allowed
    (8, {"loss": "mean_of_top", "top_n": 2}),
], ids=lambda v: v if isinstance(v, int) else "-".join(f"{k}={v[k]}" for k in sorted(v)) or "defaults")
def test_raft_step_equals_the_regression_onto_the_best_of_k(k, args):
    seed, scale = 5, 0.3
    _, out, grad = _step("raft", args, k=k, seed=seed, theta_scale=scale, prompts=PROMPTS_3)
    loss, logs, want_grad = _plain_raft(args, k, seed, scale)
    _close(out.loss, loss, f"RAFT {args} loss")
    assert set(out.logs) == set(logs)
    _close(out.logs["reward_best"], logs["reward_best"], "reward_best (the mean over prompts of the best candidate's reward)")
    _grad_close(grad, want_grad, f"RAFT {args}")


def test_raft_refuses_more_kept_samples_than_candidates():
    with pytest.raises(ValueError, match=r"^raft: top_n 9 exceeds the 8 candidates per prompt$"):
        _step("raft", {"top_n": 9}, k=8)


# ---- every configuration records exactly the phases it declares ---------------------------------------


@pytest.mark.parametrize("name,args", [
    ("dpo", {}), ("dpo", {"reference_free": True}), ("dpo", {"reference_free": True, "ref_l2_weight": 0.1}),
    ("grpo", GRPO_NEIGHBOR), ("grpo", {**GRPO_NEIGHBOR, "kl_weight": 0.0, "ref_l2_weight": 0.0}),
    ("grpo", {**GRPO_NEIGHBOR, "kl_weight": 0.0}), ("grpo", {**GRPO_NEIGHBOR, "ref_l2_weight": 0.0}),
    ("grpo", GRPO_GAUSSIAN),
    # a found bug: phases() declared "reference" for the gaussian policy whatever the weights
    ("grpo", {**GRPO_GAUSSIAN, "kl_weight": 0.0, "ref_l2_weight": 0.0}),
    ("pso", PSO_PAPER), ("draft", {}), ("draft", {"ref_l2_weight": 0.1}), ("vggflow", {}),
    ("raft", {}), ("raft", {"loss": "mean_of_top", "top_n": 2}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in sorted(v)) or "defaults")
def test_a_step_records_exactly_the_phases_its_config_declares(name, args):
    from drpo_bench.compute.ledger import PHASES

    gen = ShiftGenerator(noise_scale=1.0)
    ledger = Ledger("cpu")
    ctx = TrainContext(generator=gen, reward=ToyRedness(ToyRedness.Config()), ledger=ledger, candidates_per_prompt=6,
                       noise_rng=torch.Generator().manual_seed(0))
    entry = METHODS.get(name)
    method = entry.cls(entry.parse_config(args))
    method.setup(ctx)
    ledger.begin_update()
    out = method.step(PROMPTS, ctx)
    record = ledger.end_update()
    assert math.isfinite(out.loss)
    declared = method.phases()
    assert list(declared) == [p for p in PHASES if p in declared], f"{declared}: canonical names in canonical order"
    recorded = {p for p in record.phase_seconds if p != "other"}
    assert recorded == set(declared), f"recorded {sorted(recorded)}, declared {declared}"


# ---- VGG-Flow's running threshold across micro-batches, updates and processes -----------------------


def _vggflow(**args):
    entry = METHODS.get("vggflow")
    return entry.cls(entry.parse_config({"initial_clip_threshold": 1.0, "clip_quantile": 0.5, **args}))


def test_vggflow_threshold_waits_for_each_whole_update():
    method = _vggflow()
    method._end_of_micro_batch(torch.tensor([1.0, 3.0]), 0.5)
    method._end_of_micro_batch(torch.tensor([5.0, 7.0]), 0.5)
    assert method.clip_threshold == pytest.approx(4.0), "the median of the first update's four norms"
    method._end_of_micro_batch(torch.tensor([10.0, 12.0]), 0.5)  # the next update's first half: tau stays
    assert method.clip_threshold == pytest.approx(4.0), "tau changed after half an update"
    method._end_of_micro_batch(torch.tensor([14.0, 16.0]), 0.5)
    assert method.clip_threshold == pytest.approx(13.0)


def test_vggflow_threshold_from_one_finite_norm_and_kept_when_none_is_finite():
    method = _vggflow()
    method._end_of_micro_batch(torch.tensor([2.5]), 1.0)
    assert method.clip_threshold == 2.5, "one sample's norm is its own quantile"
    method._end_of_micro_batch(torch.tensor([float("inf"), float("nan")]), 1.0)  # an fp16 overflow
    assert method.clip_threshold == 2.5, "no finite norm: tau is kept"


def test_vggflow_threshold_gathers_every_process_in_a_data_parallel_update(monkeypatch):
    """Two processes: each runs half the update (loss_scale 1/2 in total); tau is the quantile over both."""
    import baselines.vggflow as vggflow

    class TwoProcesses:
        world_size = 2

        def gather(self, tensor):
            return [tensor, tensor + 10.0]  # the other process's norms

    monkeypatch.setattr(vggflow, "data_parallel", lambda: TwoProcesses())
    method = _vggflow()
    method._end_of_micro_batch(torch.tensor([1.0, 3.0]), 0.5)
    assert method.clip_threshold == pytest.approx(7.0), "median of 1, 3, 11, 13 once this process's half ran"

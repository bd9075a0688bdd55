"""DrPO's loss, value by value, under every option a shipped suite sets, against a plain restatement.

One DrPO step runs on a small world (tests/worlds.py's ShiftGenerator, the toy redness reward and
a spying patch encoder); the test recomputes the step's loss from what the encoder saw, with its
own ranking and tests/reference_drift.py's one-set-at-a-time field (float64, no code shared
with drpo_bench), and compares loss_preference, loss_reference and the total. Settings: each
DrPO row of suites/paper/*.yaml and suites/quickstart*.yaml (weights, lambda_ref, key_reduction,
anchor_features, masks, feature_keys), plus lambda_ref 0 and 0.7 and a single radius.
"""

from __future__ import annotations

import pytest
import torch
from reference_drift import drift_loss_one_set
from worlds import ShiftGenerator

from drpo_bench.drpo.features_base import FeatureEncoder
from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS, StrictConfig
from drpo_bench.toy import ToyRedness

PROMPTS = ["toy prompt 0", "toy prompt 1", "toy prompt 2"]  # three: a row offset error cannot wrap around


class SpyPatches(FeatureEncoder):
    """2x2 patches and the channel means of 8x8 images; remembers every forward's input and output.

    ``fresh``: each forward adds its own offset (call number x a fixed direction), standing in for
    an encoder with a fresh random mask per forward (vit-mae ``mask: fresh``, the teacher's noise):
    then "recompute" anchors differ from the detached generated features, as in the SDXL suite.
    """

    input_space = "images"

    def __init__(self, fresh: bool = False) -> None:
        self.fresh = fresh
        self.calls: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.with_grad: dict[str, torch.Tensor] = {}  # the generated features, whose .grad the step fills

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(b, 16, 12)  # (B, 16, 12)
        out = {"patches": patches, "mean": x.mean(dim=(2, 3))[:, None, :]}  # and (B, 1, 3)
        if self.fresh:
            g = torch.Generator().manual_seed(100 + len(self.calls))
            out = {k: v + 0.05 * torch.randn(v.shape[1:], generator=g) for k, v in out.items()}
        self.calls.append((x.detach().clone(), {k: v.detach().clone() for k, v in out.items()}))
        if x.requires_grad:
            for v in out.values():
                v.retain_grad()
            self.with_grad = out
        return out


class SpyLatentPatches(SpyPatches):
    """The same features read from the generator's latents (viewed as 3x8x8), as latent-mae does."""

    input_space = "latents"

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().features(x.view(-1, 3, 8, 8))


class SpyConditioned(SpyPatches):
    """Features that also read the prompt's conditioning (as the UNet teacher does): an offset per
    prompt id. Remembers the conditioning of each forward, to check the anchors get their own rows."""

    uses_conditioning = True

    def __init__(self, fresh: bool = False) -> None:
        super().__init__(fresh)
        self.conds: list[torch.Tensor] = []

    def features(self, x: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        self.conds.append(cond.clone())
        out = super().features(x)
        shifted = {k: v + 0.01 * cond.float()[:, None, None] / 64 for k, v in out.items()}
        self.calls[-1] = (self.calls[-1][0], {k: v.detach().clone() for k, v in shifted.items()})
        if x.requires_grad:
            for v in shifted.values():
                v.retain_grad()
            self.with_grad = shifted
        return shifted


class SpySelectingKeys(SpyPatches):
    """An encoder that computes only the sets it is asked for (as shapes-multiscale does): remembers
    the ``keys`` of each forward."""

    selects_keys = True

    def __init__(self, fresh: bool = False) -> None:
        super().__init__(fresh)
        self.asked: list[list[str] | None] = []

    def features(self, x: torch.Tensor, keys=None) -> dict[str, torch.Tensor]:
        self.asked.append(None if keys is None else list(keys))
        out = super().features(x)
        return out if keys is None else {k: v for k, v in out.items() if k in keys}


SPIES = {"images": SpyPatches, "latents": SpyLatentPatches, "conditioned": SpyConditioned,
         "selecting": SpySelectingKeys}


def run_step(args: dict, k: int, fresh: bool = False, spy_kind: str = "images"):
    """One DrPO step away from the base (theta != 0): the output and the spy's record."""
    torch.manual_seed(0)
    gen = ShiftGenerator(noise_scale=1.0)
    with torch.no_grad():
        gen.theta.copy_(0.4 * torch.randn(gen.theta.shape, generator=torch.Generator().manual_seed(1)))
    ctx = TrainContext(generator=gen, reward=ToyRedness(ToyRedness.Config()), ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=k, noise_rng=torch.Generator().manual_seed(2))
    entry = METHODS.get("drpo")
    method = entry.cls(entry.parse_config({"features": "toy-pixels", **args}))
    method.setup(ctx)
    spy = SPIES[spy_kind](fresh)
    method.encoder = spy
    out = method.step(PROMPTS, ctx)
    if spy_kind == "selecting":
        assert spy.asked == [method.config.feature_keys] * 2, (
            f"an encoder that selects keys computed {spy.asked}, not only feature_keys={method.config.feature_keys} "
            "in the generated and reference forwards (sets the loss never reads cost FLOPs the ledger counts)")
    grads = {key: v.grad for key, v in spy.with_grad.items()}  # d loss / d generated features (P*K, L, D)
    if spy_kind == "latents":  # the reference ranks by the images: decode the latents it saw
        spy.calls = [(torch.sigmoid(x).view(-1, 3, 8, 8), out_) for x, out_ in spy.calls]
    if spy_kind == "conditioned":
        ids = gen.encode(PROMPTS)  # (P,) one id per prompt
        want = ids.repeat_interleave(k)  # (P*K,) rows prompt-major
        assert torch.equal(spy.conds[0], want) and torch.equal(spy.conds[1], want), "generated/reference conditioning"
        for (inputs, _), cond in zip(spy.calls[2:], spy.conds[2:]):
            n = inputs.shape[0] // len(PROMPTS)
            assert torch.equal(cond, ids.repeat_interleave(n)), (
                f"an anchor forward read conditioning {cond.tolist()}, not its candidates' prompts' {ids.repeat_interleave(n).tolist()}")
    return method.config, out, spy.calls, grads


def redness(images: torch.Tensor) -> torch.Tensor:
    """ToyRedness written out: mean over pixels of R - (G + B) / 2."""
    return (images[:, 0] - (images[:, 1] + images[:, 2]) / 2).flatten(1).mean(1)


def reference_losses(cfg, calls, k: int, swap: bool = False) -> tuple[float, float, dict[str, torch.Tensor]]:
    """(preference term, reference term, d loss / d generated features per key) of DrPO's loss from
    what the encoder saw, computed plainly.

    ``swap`` exchanges positives and negatives (what a bug would do), to name that bug if seen."""
    (images, feats), (_, ref_feats) = calls[0], calls[1]
    p = len(PROMPTS)
    scores = redness(images).view(p, k)
    keys = cfg.feature_keys or list(feats)
    w_neg = cfg.anchor_weight if cfg.negative_weight is None else cfg.negative_weight
    w_ref_neg = cfg.reference_weight if cfg.reference_negative_weight is None else cfg.reference_negative_weight
    pref_total = ref_total = 0.0
    key_share = 1 / len(keys) if cfg.key_reduction == "mean" else 1.0
    grads = {key: torch.zeros_like(feats[key], dtype=torch.double) for key in feats}
    for key in keys:
        pref_sum = ref_sum = 0.0
        for i in range(p):
            order = sorted(range(k), key=lambda c: -float(scores[i, c]))  # best first
            top, bottom = order[: cfg.n_pos], order[k - cfg.n_neg :]
            if swap:
                top, bottom = bottom, top
            z = feats[key][i * k : (i + 1) * k]  # (K, L, D)
            n_loc, dim = z.shape[1], z.shape[2]
            anchors = {"pos": z[top], "neg": z[bottom]}
            if cfg.anchor_features == "recompute":  # the anchors' own forwards, found by the images they read
                for which, chosen in (("pos", top), ("neg", bottom)):
                    anchors[which] = anchor_forward(calls[2:], images, [c + i * k for c in chosen], key, k, i, p)
            cand = [c for c in range(k) for _ in range(n_loc)]  # candidate of each generated vector
            loc = [l for _ in range(k) for l in range(n_loc)]
            anchor_ids = [(c, l) for c in bottom for l in range(n_loc)] + [(c, l) for c in top for l in range(n_loc)]
            masked = torch.zeros(k * n_loc, k * n_loc + len(anchor_ids), dtype=torch.bool)
            if cfg.mask_anchor_self:
                for g_row in range(k * n_loc):
                    for a_col, (c, l) in enumerate(anchor_ids):
                        masked[g_row, k * n_loc + a_col] = (c, l) == (cand[g_row], loc[g_row])
            pref, pref_grad = drift_loss_one_set(
                z.reshape(-1, dim), anchors["pos"].reshape(-1, dim), anchors["neg"].reshape(-1, dim),
                w_pos=cfg.anchor_weight, w_neg=w_neg, radii=tuple(cfg.radii), masked=masked)
            n = k * n_loc
            ref_masked = torch.zeros(n, 3 * n, dtype=torch.bool)
            ref_masked[:, n : 2 * n] = torch.eye(n, dtype=torch.bool)  # the negatives are the generated set itself
            if cfg.mask_reference_pairs:
                ref_masked[:, 2 * n :] = torch.eye(n, dtype=torch.bool)  # each vector's own reference counterpart
            ref, ref_grad = drift_loss_one_set(
                z.reshape(-1, dim), ref_feats[key][i * k : (i + 1) * k].reshape(-1, dim), z.reshape(-1, dim),
                w_pos=cfg.reference_weight, w_neg=w_ref_neg, radii=tuple(cfg.radii), masked=ref_masked)
            pref_sum, ref_sum = pref_sum + float(pref), ref_sum + float(ref)
            # the step's loss: per key, the mean over prompts of pref + lambda_ref x ref (x 1/keys for "mean")
            grads[key][i * k : (i + 1) * k] = (key_share / p * (pref_grad + cfg.lambda_ref * ref_grad)).view(k, n_loc, dim)
        pref_total += pref_sum / p
        ref_total += ref_sum / p
    if cfg.key_reduction == "mean":
        pref_total, ref_total = pref_total / len(keys), ref_total / len(keys)
    return pref_total, ref_total, grads


def anchor_forward(anchor_calls, images, rows, key, k, prompt, prompts):
    """The features of candidates ``rows`` from the anchor forward that encoded exactly them."""
    n = len(rows)
    for inputs, out in anchor_calls:
        block = inputs.view(prompts, -1, *inputs.shape[1:])[prompt] if inputs.shape[0] == n * prompts else None
        if block is not None and block.shape[0] == n and all(
                any(torch.equal(block[j], images[r]) for j in range(n)) for r in rows):
            order = [next(j for j in range(n) if torch.equal(block[j], images[r])) for r in rows]
            return out[key].view(prompts, n, *out[key].shape[1:])[prompt][order]
    raise AssertionError(f"no anchor forward encoded the candidates {rows}: anchor_features=recompute must encode "
                         "the chosen positives and negatives in their own forwards")


def close(a: float, b: float, rtol: float = 2e-3) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-6)


#: (id, DrPO args, K, fresh encoder): the DrPO rows of the shipped suites, and options around them
CASES = [
    ("sd-turbo-paper", {"n_pos": 8, "n_neg": 8, "anchor_weight": 3000.0, "negative_weight": 3000.0,
                        "reference_weight": 3000.0, "reference_negative_weight": 3000.0, "lambda_ref": 0.2,
                        "radii": [0.02, 0.05, 0.2], "key_reduction": "sum", "anchor_features": "reuse"}, 24, False),
    ("sdxl-vit-mae-paper", {"n_pos": 8, "n_neg": 8, "anchor_weight": 3000.0, "negative_weight": 3000.0,
                            "reference_weight": 3000.0, "reference_negative_weight": 3000.0, "lambda_ref": 0.2,
                            "key_reduction": "mean", "anchor_features": "recompute"}, 24, True),
    ("sdxl-teacher-paper", {"n_pos": 8, "n_neg": 8, "anchor_weight": 3000.0, "negative_weight": 2000.0,
                            "reference_weight": 3500.0, "reference_negative_weight": 5000.0, "lambda_ref": 0.25,
                            "key_reduction": "mean", "anchor_features": "recompute"}, 24, True),
    ("recompute-deterministic-encoder", {"n_pos": 3, "n_neg": 3, "anchor_features": "recompute"}, 8, False),
    ("quickstart-masks-and-keys", {"n_pos": 3, "n_neg": 3, "mask_anchor_self": True, "mask_reference_pairs": True,
                                   "feature_keys": ["patches"]}, 8, False),
    ("lambda-ref-0", {"n_pos": 3, "n_neg": 3, "lambda_ref": 0.0}, 8, False),
    ("lambda-ref-0.7-one-radius", {"n_pos": 2, "n_neg": 3, "lambda_ref": 0.7, "radii": [0.05],
                                   "anchor_weight": 500.0}, 8, False),
]


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    x = torch.cat([a[k].double().flatten() for k in sorted(a)])
    y = torch.cat([b[k].double().flatten() for k in sorted(a)])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def norm_ratio(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.cat([a[k].double().flatten() for k in sorted(a)]).norm()
                 / torch.cat([b[k].double().flatten() for k in sorted(a)]).norm())


#: the same check with latent-space features and with features that read the prompts' conditioning
ENCODER_CASES = [("latent-features-recompute", {"n_pos": 3, "n_neg": 3, "anchor_features": "recompute"}, 8, True, "latents"),
                 ("latent-features-reuse", {"n_pos": 3, "n_neg": 2, "lambda_ref": 0.5}, 8, False, "latents"),
                 ("conditioned-features-recompute", {"n_pos": 2, "n_neg": 3, "anchor_features": "recompute",
                                                     "key_reduction": "mean"}, 8, True, "conditioned"),
                 ("selected-keys-masks", {"n_pos": 3, "n_neg": 2, "feature_keys": ["patches"], "mask_anchor_self": True},
                  8, False, "selecting")]


@pytest.mark.parametrize("case", CASES + ENCODER_CASES, ids=[c[0] for c in CASES + ENCODER_CASES])
def test_drpo_loss_and_its_gradient_equal_the_plain_reference_under_each_option(case):
    """The values a user reads (loss_preference, loss_reference, loss) and the gradient that trains:
    the loss's value alone cannot tell positives from negatives (swapping them flips the field, and
    the loss is its squared norm), so the gradient on the generated features is compared too."""
    _, args, k, fresh, *spy_kind = case
    cfg, out, calls, got_grads = run_step(args, k, fresh, *spy_kind)
    pref, ref, grads = reference_losses(cfg, calls, k)
    unused = set(got_grads) - set(cfg.feature_keys or got_grads)
    assert all(got_grads[key] is None or not got_grads[key].any() for key in unused), f"keys {unused} must not train"
    got_grads = {key: g for key, g in got_grads.items() if key not in unused}
    got_pref, got_ref = out.logs["loss_preference"], out.logs["loss_reference"]
    assert close(got_pref, pref), f"DrPO's preference term {got_pref:.6g} != plain reference {pref:.6g} (options {args})"
    assert close(got_ref, ref), (f"DrPO's reference-drift term {got_ref:.6g} != plain reference {ref:.6g}: the "
                                 f"reference weights {cfg.reference_weight}/{cfg.reference_negative_weight}, "
                                 f"mask_reference_pairs or key_reduction={cfg.key_reduction} not applied")
    want = pref + cfg.lambda_ref * ref
    assert close(out.loss, want), (
        f"DrPO's loss {out.loss:.6g} != preference + lambda_ref x reference = {pref:.6g} + {cfg.lambda_ref} x "
        f"{ref:.6g} = {want:.6g}: lambda_ref={cfg.lambda_ref} is not applied as configured "
        f"(preference + reference would be {pref + ref:.6g}, preference + 0.2 x reference {pref + 0.2 * ref:.6g})")
    cos = cosine(got_grads, grads)
    if cos < 0.999:
        _, _, swapped = reference_losses(cfg, calls, k, swap=True)
        assert cosine(got_grads, swapped) < 0.99, (
            f"DrPO's gradient on the generated features matches the reference with positives and negatives "
            f"SWAPPED (cosine {cosine(got_grads, swapped):.4f}; with the right ones {cos:.4f}; "
            f"anchor_features={cfg.anchor_features}): training pushes away from the preferred candidates")
        raise AssertionError(f"DrPO's gradient on the generated features is off the plain reference's: cosine "
                             f"{cos:.4f} (options {args})")
    assert abs(norm_ratio(got_grads, grads) - 1) < 2e-3, (
        f"DrPO's gradient has {norm_ratio(got_grads, grads):.4f} x the reference's norm: lambda_ref, key_reduction or "
        f"a weight scales it wrongly (options {args})")


def test_recompute_encodes_the_top_ranked_as_positives_in_their_own_forwards():
    """anchor_features=recompute: two extra forwards, one over exactly the top n+ candidates of each
    prompt and one over the bottom n-, without grad; their outputs are the anchors (checked above)."""
    cfg, _, calls, _ = run_step({"n_pos": 3, "n_neg": 2, "anchor_features": "recompute"}, 8, fresh=True)
    assert len(calls) == 4, "generated, reference, positives and negatives: one forward each"
    images = calls[0][0]
    scores = redness(images).view(len(PROMPTS), 8)
    for i in range(len(PROMPTS)):
        order = sorted(range(8), key=lambda c: -float(scores[i, c]))
        encoded = []
        for inputs, _ in calls[2:]:
            block = inputs.view(len(PROMPTS), -1, 3, 8, 8)[i]
            encoded.append(sorted(next(c for c in range(8) if torch.equal(images[i * 8 + c], row)) for row in block))
        assert sorted(encoded) == sorted([sorted(order[:3]), sorted(order[-2:])]), (
            f"prompt {i}: the anchor forwards encoded {encoded}; want the top 3 {sorted(order[:3])} and the bottom 2 "
            f"{sorted(order[-2:])}")


def test_drpo_step_logs_the_rankings_spread():
    cfg, out, calls, _ = run_step({"n_pos": 3, "n_neg": 2}, 8)
    scores = redness(calls[0][0]).view(len(PROMPTS), 8).double()
    ordered = scores.sort(dim=1, descending=True).values
    assert out.logs["reward_std_within_prompt"] == pytest.approx(float(scores.std(dim=1).mean()), rel=1e-5)
    assert out.logs["reward_top_minus_bottom"] == pytest.approx(float(ordered[:, :3].mean() - ordered[:, -2:].mean()), rel=1e-5)


def test_drpo_step_logs_the_spread_at_two_candidates_per_prompt():
    """K 2 (one positive, one negative: the smallest budget DrPO accepts) still logs the reward's
    spread within each prompt, not a placeholder."""
    _, out, calls, _ = run_step({"n_pos": 1, "n_neg": 1}, 2)
    scores = redness(calls[0][0]).view(len(PROMPTS), 2).double()
    assert float(scores.std(dim=1).mean()) > 0
    assert out.logs["reward_std_within_prompt"] == pytest.approx(float(scores.std(dim=1).mean()), rel=1e-5)
    assert out.logs["reward_top_minus_bottom"] == pytest.approx(float((scores.max(1).values - scores.min(1).values).mean()), rel=1e-5)


@pytest.mark.parametrize("autocast_features", [False, True])
def test_features_run_in_float32_under_the_loops_autocast_unless_the_encoder_is_an_autocast_forward(autocast_features):
    """Inside the loop's autocast (bf16 on this CPU), DrPO's feature phase switches autocast off, so an
    encoder's matmuls run in float32; an encoder that declares ``autocast_features`` (the UNet
    teacher: the public code autocasts it) keeps the loop's precision."""
    entry = METHODS.get("drpo")
    method = entry.cls(entry.parse_config({"features": "toy-pixels"}))
    method.encoder = type("Spy", (SpyPatches,), {"autocast_features": autocast_features})()
    x, w = torch.randn(2, 4), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ w).dtype == torch.bfloat16, "the loop's autocast is on"
        with method.feature_precision(x):
            want = torch.bfloat16 if autocast_features else torch.float32
            assert (x @ w).dtype == want, f"autocast_features={autocast_features}: features must run in {want}"


class ConfiguredEncoder(FeatureEncoder):
    """Remembers the config, generator and device it was built with (named as test_drpo_options:ConfiguredEncoder)."""

    input_space = "images"

    class Config(StrictConfig):
        width: int = 1

    def __init__(self, config: Config, generator=None) -> None:
        self.config, self.generator, self.device = config, generator, None

    def to(self, device):
        self.device = device
        return self

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": x.mean(dim=(2, 3))[:, None, :]}


class ConfiguredEncoderWithoutGenerator(ConfiguredEncoder):
    """An encoder whose constructor takes only its config, as most registered encoders' do."""

    def __init__(self, config: ConfiguredEncoder.Config) -> None:
        super().__init__(config)


@pytest.mark.parametrize("name", ["ConfiguredEncoder", "ConfiguredEncoderWithoutGenerator"])
def test_setup_builds_the_named_encoder_with_its_feature_args_on_the_generators_device(name):
    """The features a suite names are built with the suite's feature_args (not the defaults), get the
    generator when their constructor takes it, and are moved to the generator's device."""
    gen = ShiftGenerator(noise_scale=1.0)
    ctx = TrainContext(generator=gen, reward=ToyRedness(ToyRedness.Config()), ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=8, noise_rng=torch.Generator().manual_seed(2))
    entry = METHODS.get("drpo")
    method = entry.cls(entry.parse_config({"n_pos": 3, "n_neg": 3, "features": f"test_drpo_options:{name}",
                                          "feature_args": {"width": 3}}))
    method.setup(ctx)
    encoder = method.encoder
    assert type(encoder).__name__ == name
    assert encoder.config.width == 3, "feature_args must reach the encoder's config (the default width is 1)"
    assert encoder.generator is (gen if name == "ConfiguredEncoder" else None), "an encoder that reads the generator gets it"
    assert encoder.device == gen.device == torch.device("cpu"), f"moved to {encoder.device}, not the generator's device"


def test_drpo_budget_and_missing_feature_keys_are_named():
    cls = METHODS.get("drpo").cls
    cls.check_budget(METHODS.get("drpo").parse_config({"n_pos": 4, "n_neg": 4}), 8)  # 4 + 4 of 8: allowed
    with pytest.raises(ValueError, match=r"^drpo: n_pos \+ n_neg = 9 exceeds the 8 candidates per prompt; positives and "
                                         r"negatives must be disjoint\. Lower n_pos/n_neg or raise budget\.candidates_per_prompt\.$"):
        cls.check_budget(METHODS.get("drpo").parse_config({"n_pos": 6, "n_neg": 3}), 8)
    with pytest.raises(ValueError, match=r"^drpo: feature keys \['nope'\] not produced by toy-pixels; available: "
                                         r"\['mean', 'patches'\]$"):
        run_step({"n_pos": 2, "n_neg": 2, "feature_keys": ["patches", "nope"]}, 8)

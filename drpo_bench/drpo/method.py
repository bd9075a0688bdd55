"""DrPO's training step (docs/drpo.md, "One update, per prompt").

Per prompt: K candidates from the current generator and the same K noises through the frozen
base; the reward only ranks them (no reward gradient); features of the top n+ are the
positives, of the bottom n- the negatives; the loss regresses the candidates' features onto a
detached target: a dipole field (toward positives, away from negatives) plus lambda_ref times
the drift between the base's and the current distribution.

Precision, as the public code: the model forwards (sample, reference, decode, reward) run under
the loop's autocast; the feature encoder (unless it declares ``autocast_features``) and the
drift field run in float32 with autocast off. The field's anchor weights push its affinities
past float16's range, and bf16 features lose the small differences between a prompt's
candidates that the field is built from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from drpo_bench.drpo.features_base import FeatureEncoder
from drpo_bench.drpo.field import drift_loss
from drpo_bench.generators.base import select_conditioning
from drpo_bench.methods import Candidates, Method, StepOutput, TrainContext, sample_candidates
from drpo_bench.registry import FEATURES, METHODS, StrictConfig


def build_feature_encoder(name: str, args: dict[str, Any], generator: Any) -> FeatureEncoder:
    """Instantiate a registered feature encoder; encoders that read the generator get it."""
    entry = FEATURES.get(name)
    config = entry.parse_config(args)
    try:
        encoder = entry.cls(config, generator=generator)
    except TypeError:
        encoder = entry.cls(config)
    return encoder.to(generator.device)


def own_copy_mask(anchor_idx: torch.Tensor, k: int, l: int) -> torch.Tensor:
    """anchor_idx (P, n) -> (P, K*L, n*L) bool: True where a generated vector meets its own copy."""
    device = anchor_idx.device
    cand_gen = torch.arange(k, device=device).repeat_interleave(l)  # (K*L,)
    loc_gen = torch.arange(l, device=device).repeat(k)  # (K*L,)
    cand_anchor = anchor_idx.repeat_interleave(l, dim=1)  # (P, n*L)
    loc_anchor = torch.arange(l, device=device).repeat(anchor_idx.shape[1])  # (n*L,)
    same_cand = cand_gen[None, :, None] == cand_anchor[:, None, :]
    return same_cand & (loc_gen[:, None] == loc_anchor[None, :])[None]


def gather_candidates(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """z (P, K, L, D), index (P, n) -> (P, n * L, D): the chosen candidates' vectors pooled."""
    p, _, l, d = z.shape
    picked = torch.gather(z, 1, index[:, :, None, None].expand(-1, -1, l, d))  # (P, n, L, D)
    return picked.reshape(p, -1, d)


@METHODS.register("drpo")
class DrPO(Method):
    """Drifting Preference Optimization: rank K candidates, drift features toward the best."""

    paper = "https://arxiv.org/abs/2606.02521"

    class Config(StrictConfig):
        n_pos: int = Field(8, ge=1)  # top candidates per prompt as positives (paper: 8 of 24)
        n_neg: int = Field(8, ge=1)  # bottom candidates as negatives (paper: 8)
        anchor_weight: float = Field(3000.0, gt=0)  # w+ (and w- unless set): the paper's velocity scale eta
        negative_weight: float | None = Field(None, gt=0)  # w- if not w+ (public code: separate flags, both 3000)
        reference_weight: float = Field(3000.0, gt=0)  # w+ of the reference drift (the base's samples)
        # w- of the reference drift (the current samples); None = reference_weight (SD-Turbo code: one
        # flag for both; SDXL teacher runs: 3500 / 5000)
        reference_negative_weight: float | None = Field(None, gt=0)
        lambda_ref: float = Field(0.2, ge=0)  # reference drift strength (paper: 0.2)
        radii: tuple[float, ...] = Field((0.02, 0.05, 0.2), min_length=1)  # kernel radii, summed
        features: str = "shapes-multiscale"  # registered feature encoder; the space of the field
        feature_args: dict[str, Any] = Field(default_factory=dict)  # its config
        feature_keys: list[str] | None = None  # subset of the encoder's keys; None = all
        key_reduction: Literal["sum", "mean"] = "sum"  # SD-Turbo code sums over keys, SDXL means
        mask_reference_pairs: bool = False  # published code: False (see field.drift_loss)
        # a positive (negative) candidate's own copy among the anchors pins it in place at small
        # radii; masking it lets the anchors themselves drift too (published code: False)
        mask_anchor_self: bool = False
        # "reuse": positives/negatives are the generated features, detached (SD-Turbo code);
        # "recompute": they go through their own encoder forward without grad, as the public SDXL
        # ViT-MAE code does (with a random-masking encoder they then see a fresh mask)
        anchor_features: Literal["reuse", "recompute"] = "reuse"

        @model_validator(mode="after")
        def _radii_positive(self) -> DrPO.Config:
            if any(r <= 0 for r in self.radii):
                raise ValueError(f"radii must be > 0, got {self.radii}")
            return self

    config: Config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:
        if config.n_pos + config.n_neg > candidates_per_prompt:
            raise ValueError(
                f"drpo: n_pos + n_neg = {config.n_pos + config.n_neg} exceeds the "
                f"{candidates_per_prompt} candidates per prompt; positives and negatives must be disjoint. Lower "
                "n_pos/n_neg or raise budget.candidates_per_prompt."
            )

    def setup(self, ctx: TrainContext) -> None:
        self.check_budget(self.config, ctx.candidates_per_prompt)
        self.encoder = build_feature_encoder(self.config.features, self.config.feature_args, ctx.generator)

    def phases(self) -> tuple[str, ...]:
        return ("sample", "reference", "decode", "reward_forward", "features", "loss", "generator_backward")

    def feature_precision(self, x: torch.Tensor) -> Any:
        """float32 features (autocast off) unless the encoder is a forward the public code autocasts."""
        return nullcontext() if self.encoder.autocast_features else torch.autocast(x.device.type, enabled=False)

    def _anchor_features(self, x: torch.Tensor, cond: Any, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of the chosen candidates in their own forward: x (P*K, ...), index (P, n) -> {key: (P*n, L, D)}."""
        k = x.shape[0] // index.shape[0]
        rows = (index + k * torch.arange(index.shape[0], device=index.device)[:, None]).flatten()  # (P*n,) prompt-major
        extra = {"cond": select_conditioning(cond, rows)} if self.encoder.uses_conditioning else {}
        return _float32(self.encoder.features(x[rows], **extra))

    def generate(self, prompts: Sequence[str], ctx: TrainContext) -> Generated:
        """K candidates per prompt (grad through LoRA) and the same noises through the frozen base,
        decoded as the feature encoder needs (phases sample, reference, decode)."""
        gen, ledger = ctx.generator, ctx.ledger
        cand = sample_candidates(prompts, ctx)  # (P*K, *latent), grad through LoRA
        with ledger.phase("reference"), torch.no_grad(), gen.reference():
            ref_latents = gen.sample(cand.noise, cand.cond)  # same noises, frozen base
        with ledger.phase("decode"):
            if self.encoder.input_space == "images":  # features read pixels: decode with grad, score the detached copy
                images = gen.decode(cand.latents)
                with torch.no_grad():
                    ref_images = gen.decode(ref_latents)
                return Generated(cand, images.detach(), images, ref_images)
            with torch.no_grad():
                images = gen.decode(cand.latents.detach())
        return Generated(cand, images, cand.latents, ref_latents)

    def features(self, generated: Generated) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
        """The candidates' features (grad) and the reference's (no grad), {key: (P*K, L, D)} in float32,
        and the keys the loss uses. Call inside the "features" phase and ``feature_precision``."""
        extra: dict[str, Any] = {"cond": generated.candidates.cond} if self.encoder.uses_conditioning else {}
        if self.encoder.selects_keys and self.config.feature_keys:
            extra["keys"] = self.config.feature_keys  # the sets the loss reads, no others
        feats = _float32(self.encoder.features(generated.encoder_input, **extra))
        with torch.no_grad():
            ref_feats = _float32(self.encoder.features(generated.reference_input, **extra))
        keys = self.config.feature_keys or list(feats)
        missing = [key for key in keys if key not in feats]
        if missing:
            raise ValueError(f"drpo: feature keys {missing} not produced by {self.config.features}; available: {sorted(feats)}")
        return feats, ref_feats, keys

    def field_loss(self, feats: dict[str, torch.Tensor], ref_feats: dict[str, torch.Tensor], keys: Sequence[str],
                   p: int, anchors: Anchors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dipole field toward / away from ``anchors(key, z)`` plus lambda_ref x the reference drift,
        summed (or averaged) over keys: returns (loss, preference term, reference term)."""
        cfg = self.config
        pref_total = ref_total = None
        for key in keys:
            z = feats[key]
            _, l, d = z.shape
            z = z.view(p, -1, l, d)  # (P, K, L, D)
            z_gen = z.reshape(p, -1, d)  # all locations of all K candidates: one set per prompt
            z_pos, z_neg, anchor_mask = anchors(key, z)  # (P, n+ * L, D), (P, n- * L, D), mask or None
            z_ref = ref_feats[key].reshape(p, -1, d)
            pref = drift_loss(
                z_gen, z_pos, z_neg,
                positive_weight=cfg.anchor_weight, radii=cfg.radii,
                negative_weight=cfg.anchor_weight if cfg.negative_weight is None else cfg.negative_weight,
                anchor_mask=anchor_mask,
            )
            ref = drift_loss(
                z_gen, z_ref, z_gen.detach(),
                positive_weight=cfg.reference_weight, radii=cfg.radii,
                negative_weight=cfg.reference_weight if cfg.reference_negative_weight is None else cfg.reference_negative_weight,
                mask_negative_self=True, mask_positive_pairs=cfg.mask_reference_pairs,
            )
            pref_total = pref.loss.mean() if pref_total is None else pref_total + pref.loss.mean()
            ref_total = ref.loss.mean() if ref_total is None else ref_total + ref.loss.mean()
        assert pref_total is not None and ref_total is not None
        if cfg.key_reduction == "mean":
            pref_total, ref_total = pref_total / len(keys), ref_total / len(keys)
        return pref_total + cfg.lambda_ref * ref_total, pref_total, ref_total

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, ledger, k = self.config, ctx.ledger, ctx.candidates_per_prompt
        p = len(prompts)
        assert ctx.reward is not None
        generated = self.generate(prompts, ctx)
        cand = generated.candidates
        ranking = ctx.rank(generated.images, cand.prompts)  # the reward only ranks: (P, K), best first
        scores, ranked = ranking.scores, ranking.ranked
        pos_idx, neg_idx = ranking.top(cfg.n_pos), ranking.bottom(cfg.n_neg)  # (P, n+), (P, n-)

        encoder_input = generated.encoder_input  # (P*K, ...) with grad
        with ledger.phase("features"), self.feature_precision(encoder_input):
            feats, ref_feats, keys = self.features(generated)
            anchor_feats = None
            if cfg.anchor_features == "recompute":  # the anchors' own forwards (a fresh mask/noise)
                with torch.no_grad():
                    anchor_feats = {
                        which: self._anchor_features(encoder_input.detach(), cand.cond, idx)
                        for which, idx in (("pos", pos_idx), ("neg", neg_idx))
                    }

        def anchors(key: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            _, _, l, d = z.shape
            if anchor_feats is None:
                z_pos = gather_candidates(z.detach(), pos_idx)  # (P, n+ * L, D)
                z_neg = gather_candidates(z.detach(), neg_idx)  # (P, n- * L, D)
            else:
                z_pos = anchor_feats["pos"][key].reshape(p, -1, d)  # (P, n+ * L, D)
                z_neg = anchor_feats["neg"][key].reshape(p, -1, d)  # (P, n- * L, D)
            mask = None
            if cfg.mask_anchor_self:
                mask = torch.cat([own_copy_mask(neg_idx, k, l), own_copy_mask(pos_idx, k, l)], dim=-1)
            return z_pos, z_neg, mask

        with ledger.phase("loss"):
            loss, pref_total, ref_total = self.field_loss(feats, ref_feats, keys, p, anchors)
        with ledger.phase("generator_backward"):
            ctx.backward(loss)

        top = ranked.gather(1, pos_idx).mean()
        bottom = ranked.gather(1, neg_idx).mean()
        return StepOutput(
            loss=float(loss.detach()),
            logs={
                "reward_std_within_prompt": float(scores.std(dim=1).mean()) if k > 1 else 0.0,
                "reward_top_minus_bottom": float(top - bottom),
                "loss_preference": float(pref_total.detach()),
                "loss_reference": float(ref_total.detach()),
            },
        )


@dataclass
class Generated:
    """One micro-batch's candidates, prompt-major (row p*K + k), as DrPO's field reads them."""

    candidates: Candidates
    images: torch.Tensor  # (P*K, 3, H, W) detached: what a reward scores
    encoder_input: torch.Tensor  # (P*K, ...) images or latents, with grad through LoRA
    reference_input: torch.Tensor  # (P*K, ...) the same noises through the frozen base, no grad


#: (key, candidate features (P, K, L, D)) -> positives (P, n+ * L, D), negatives (P, n- * L, D),
#: and an optional (P, K*L, (n- + n+) * L) mask of (generated, anchor) pairs, laid out [neg | pos]
Anchors = Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


def _float32(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.float() for key, value in features.items()}

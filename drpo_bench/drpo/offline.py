"""Offline DrPO: DrPO's dipole field with positives and negatives from a fixed dataset.

Online DrPO (``drpo.method``) ranks K fresh candidates of each prompt by the reward and takes
the top n+ / bottom n- of them as anchors. Offline DrPO never calls the reward: each prompt's
anchors are its images in an offline dataset (``drpo_bench.methods.offline_data``), the top n+ and
bottom n- by the dataset's scores (or, for a pairs file, by win rate: the preferred and the
rejected images). Per prompt c of a micro-batch:

    x_k, x_k^ref = G_theta(eps_k, c), G_ref(eps_k, c)      K fresh noises, as online
    z = phi(decode x) (grad), z_ref = phi(decode x^ref), z+ = phi(dataset top n+ of c),
    z- = phi(dataset bottom n- of c)                        all but z detached
    L = D(z; pos z+, neg z-) + lambda_ref * D(z; pos z_ref, neg z, self-masked)

the same field, reference drift and loss code as online DrPO (``DrPO.field_loss``). The
anchors are not copies of generated candidates, so ``mask_anchor_self`` has nothing to mask
and is refused; the dataset images go through their own (no-grad) encoder forward, computed once
per image and cached (the encoder is frozen; a randomly masking encoder would keep one draw).
The feature encoder must read images: the dataset has no latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import model_validator

from drpo_bench.drpo.method import DrPO
from drpo_bench.errors import UserError
from drpo_bench.methods import StepOutput, TrainContext
from drpo_bench.methods.offline_data import OfflineDataConfig, OfflineMethod, OfflineSource
from drpo_bench.registry import METHODS


@METHODS.register("drpo-offline")
class OfflineDrPO(OfflineMethod, DrPO):
    """DrPO from a fixed dataset: dataset top/bottom images anchor the field, no reward calls."""

    class Config(DrPO.Config, OfflineDataConfig):
        @model_validator(mode="after")
        def _offline_anchors(self) -> OfflineDrPO.Config:
            if self.mask_anchor_self:
                raise ValueError("mask_anchor_self: offline anchors are dataset images, not copies of the candidates; "
                                 "there is nothing to mask (remove it)")
            if self.anchor_features != "reuse":
                raise ValueError("anchor_features: offline anchors always go through their own encoder forward; "
                                 "leave it at its default")
            return self

    config: Config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:
        """The anchors come from the dataset (checked against it at setup), not from the K candidates."""

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        if self.encoder.input_space != "images" or self.encoder.uses_conditioning:
            raise UserError(f"drpo-offline: feature encoder {self.config.features!r} must read images alone (the "
                            "dataset has images, no latents or conditioning); use e.g. shapes-multiscale")
        self.source = OfflineSource(self.config, self.config.n_pos, self.config.n_neg, "drpo-offline", ctx.reward)
        self._cache: dict[int, dict[str, torch.Tensor]] = {}  # dataset row -> {key: (L, D)} float32

    def phases(self) -> tuple[str, ...]:
        return ("sample", "reference", "decode", "features", "loss", "generator_backward")

    def _dataset_features(self, rows: torch.Tensor, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        """(P, n) dataset rows -> {key: (P*n, L, D)}, each image's features computed once."""
        flat = rows.flatten().tolist()
        missing = sorted(set(flat) - set(self._cache))
        if missing:
            with torch.no_grad():  # inside the step's feature precision
                feats = self.encoder.features(self.source.pixels(torch.tensor(missing), device))
            for i, row in enumerate(missing):
                self._cache[row] = {key: value[i].float() for key, value in feats.items()}
        return {key: torch.stack([self._cache[row][key] for row in flat]) for key in keys}

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        p, ledger = len(prompts), ctx.ledger
        generated = self.generate(prompts, ctx)
        pos_rows, neg_rows = self.source.anchors(list(prompts), generated.images)  # (P, n+), (P, n-)
        with ledger.phase("features"), self.feature_precision(generated.encoder_input):
            feats, ref_feats, keys = self.features(generated)
            device = generated.encoder_input.device
            pos, neg = self._dataset_features(pos_rows, keys, device), self._dataset_features(neg_rows, keys, device)

        def anchors(key: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
            d = z.shape[-1]
            return pos[key].reshape(p, -1, d), neg[key].reshape(p, -1, d), None  # (P, n+ * L, D), (P, n- * L, D)

        with ledger.phase("loss"):
            loss, pref_total, ref_total = self.field_loss(feats, ref_feats, keys, p, anchors)
        with ledger.phase("generator_backward"):
            ctx.backward(loss)
        return StepOutput(
            loss=float(loss.detach()),
            logs={
                "dataset_top_minus_bottom": self.source.score_gap(list(prompts)),
                "loss_preference": float(pref_total.detach()),
                "loss_reference": float(ref_total.detach()),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {}  # the feature cache is recomputed from the dataset after a resume

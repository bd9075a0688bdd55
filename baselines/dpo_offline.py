"""Offline Diffusion-DPO for a one-step generator: winners and losers from a fixed dataset.

Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", CVPR 2024
(https://arxiv.org/abs/2311.12908) trains on Pick-a-Pic's fixed preference pairs. This is that
setting with the one-step loss of ``baselines/dpo.py`` (``one_step_dpo_loss``, unchanged): per
prompt c of a micro-batch,

    x_k     = decode G_theta(eps_k, c)      K fresh noises, with grad (LoRA)
    x_k^ref = decode G_ref(eps_k, c)        same noises, frozen base, no grad
    W, L    = the dataset's top n_w / bottom n_l images of c (by score, or the preferred and
              rejected images of its pairs; ties dropped), the same choice as drpo-offline's
    loss(c) = -log sigmoid(beta * (gap_theta - gap_ref))

with ``gap`` the mean distance to the losers minus the mean distance to the winners. The
distances are in pixel space (flattened images in [0, 1]): the dataset holds images, not the
generator's latents (online ``dpo`` compares latents). The reward is never called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from baselines.dpo import OneStepDPO, dpo_objective
from drpo_bench.methods import StepOutput, TrainContext
from drpo_bench.methods.offline_data import OfflineDataConfig, OfflineMethod, OfflineSource
from drpo_bench.registry import METHODS


@METHODS.register("dpo-offline")
class OfflineDPO(OfflineMethod, OneStepDPO):
    """Diffusion-DPO on a fixed dataset's winners and losers (one-step, pixel-space log-ratios)."""

    paper = "https://arxiv.org/abs/2311.12908"

    class Config(OneStepDPO.Config, OfflineDataConfig):
        pass

    config: Config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:
        """Winners and losers come from the dataset (checked against it at setup), not from the K candidates."""

    def setup(self, ctx: TrainContext) -> None:
        self.source = OfflineSource(self.config, self.config.n_winners, self.config.n_losers, "dpo-offline", ctx.reward)

    def phases(self) -> tuple[str, ...]:
        return tuple(phase for phase in super().phases() if phase != "reward_forward")

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, gen, ledger, k = self.config, ctx.generator, ctx.ledger, ctx.candidates_per_prompt
        p = len(prompts)
        cand, ref_latents = self.sample_with_reference(prompts, ctx)  # (P*K, *latent); the base's or None
        with ledger.phase("decode"):
            images = gen.decode(cand.latents)  # (P*K, 3, H, W) with grad
            ref_images = None
            if ref_latents is not None:
                with torch.no_grad():
                    ref_images = gen.decode(ref_latents)
        win_rows, lose_rows = self.source.anchors(list(prompts), images.detach())  # (P, W), (P, L)
        with ledger.phase("loss"):
            x = images.reshape(p, k, -1)  # (P, K, F) pixels
            x_ref = ref_images.reshape(p, k, -1) if ref_images is not None else None
            winners = self.source.pixels(win_rows, images.device).reshape(p, win_rows.shape[1], -1)  # (P, W, F)
            losers = self.source.pixels(lose_rows, images.device).reshape(p, lose_rows.shape[1], -1)  # (P, L, F)
            loss, logs = dpo_objective(cfg, x, x_ref, winners, losers)
        with ledger.phase("generator_backward"):
            ctx.backward(loss)
        return StepOutput(loss=float(loss.detach()),
                          logs={"dataset_winner_minus_loser": self.source.score_gap(list(prompts)), **logs})

"""RAFT for one-step generators: finetune on the best of K with the generator's own regression loss.

Dong, Xiong, Goyal, Pan, Diao, Zhang, Shum, Zhang. "RAFT: Reward rAnked FineTuning for
Generative Foundation Model Alignment." TMLR 2023. https://arxiv.org/abs/2304.06767

RAFT samples K candidates per prompt, keeps the best n by reward (a black box: no reward
gradient) and finetunes on them with the model's own training loss; for Stable Diffusion that is
the denoising loss on the kept images: the image mixed with fresh noise in, the image back out.

A one-step generator's own training loss is a regression from its input noise to the image (the
shapes generator is distilled so, SD-Turbo maps noise to an image in one step). Two readings:

- ``loss: self_denoise`` (default): each kept candidate, made from noise z, is regressed on from
  re-noised copies of its own noise, sqrt(1 - s^2) z + s e (s = ``noise_sigma``, fresh e per
  copy), K/n copies each, so an update regresses as many samples as there are candidates. The
  one-step version of the denoising loss: the corrupted input is the kept sample's own code.
  At s = 0 the loss is exactly 0 with a zero gradient (a deterministic generator already maps z
  to its own sample: finetuning on its own outputs from their own noises cannot move it); at s
  = 1 the inputs are independent noises.
- ``loss: mean_of_top`` (the first adaptation, kept as an option): every candidate's noise is
  regressed onto the mean of its prompt's top n. Independent noises regressed onto a set of
  targets learn the set's mean, so the generator collapses to one blurred sample per prompt:
  the quickstart's RAFT row at every grid point (checker -0.216 against base). docs/raft.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from drpo_bench.generators.base import repeat_conditioning
from drpo_bench.methods import Method, StepOutput, TrainContext, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig


@METHODS.register("raft")
class RAFT(Method):
    """Reward-ranked finetuning: regress onto the best of K (gradient-free)."""

    paper = "https://arxiv.org/abs/2304.06767"

    class Config(StrictConfig):
        top_n: int = Field(1, ge=1)  # best candidates kept per prompt; 1 = best-of-K as published
        # self_denoise: the kept samples' own training loss (module docstring); mean_of_top: every
        # candidate onto the top n's mean, which collapses a one-step generator (docs/raft.md)
        loss: Literal["self_denoise", "mean_of_top"] = "self_denoise"
        # share of fresh noise in a kept sample's re-noised input; 0.3 as Neighbor-GRPO's public
        # neighbor_sigma: near enough that the sample is still recognizable in its noise
        noise_sigma: float = Field(0.3, gt=0, le=1)

    config: Config

    def phases(self) -> tuple[str, ...]:
        return ("sample", "decode", "reward_forward", "loss", "generator_backward")

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        assert ctx.reward is not None
        k, p = ctx.candidates_per_prompt, len(prompts)
        cfg = self.config
        if cfg.top_n > k:
            raise ValueError(f"raft: top_n {cfg.top_n} exceeds the {k} candidates per prompt")
        if cfg.loss == "mean_of_top":
            return self._mean_of_top(prompts, ctx)
        gen = ctx.generator
        with torch.no_grad():  # the candidates only get ranked: no graph
            cand = sample_candidates(prompts, ctx)
        with ctx.ledger.phase("decode"), torch.no_grad():
            images = gen.decode(cand.latents)
        ranking = ctx.rank(images, cand.prompts)  # (P, K), best first
        best = ranking.top(cfg.top_n)  # (P, n)
        copies = math.ceil(k / cfg.top_n)  # re-noised inputs per kept sample: about K per prompt in all
        with ctx.ledger.phase("sample"):
            rows = (best + k * torch.arange(p, device=best.device)[:, None]).flatten()  # (P*n,) prompt-major
            rows = rows.to(cand.noise.device).repeat_interleave(copies)  # (P*n*c,)
            fresh = gen.noise(rows.shape[0], ctx.noise_rng)
            s = cfg.noise_sigma
            inputs = math.sqrt(1.0 - s * s) * cand.noise[rows] + s * fresh  # still N(0, I) per row
            cond = repeat_conditioning(gen.encode(list(prompts)), cfg.top_n * copies)
            out = gen.sample(inputs, cond)  # (P*n*c, *latent), grad through LoRA
        with ctx.ledger.phase("loss"):
            loss = (out.float() - cand.latents[rows].float()).pow(2).mean()
        with ctx.ledger.phase("generator_backward"):
            ctx.backward(loss)
        best_score = ranking.ranked.gather(1, ranking.top(1)).mean()  # on the higher-is-better scale
        return StepOutput(loss=float(loss.detach()), logs={"reward_best": float(best_score)})

    def _mean_of_top(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        k, p = ctx.candidates_per_prompt, len(prompts)
        cand = sample_candidates(prompts, ctx)
        with ctx.ledger.phase("decode"), torch.no_grad():
            images = ctx.generator.decode(cand.latents.detach())
        ranking = ctx.rank(images, cand.prompts)  # (P, K), best first
        with ctx.ledger.phase("loss"):
            latents = cand.latents.view(p, k, -1)  # (P, K, F)
            best = ranking.top(self.config.top_n)  # (P, n)
            targets = torch.gather(latents.detach(), 1, best[:, :, None].expand(-1, -1, latents.shape[-1]))
            # every candidate regresses onto the mean of its prompt's top-n: (P, K, F) vs (P, 1, F)
            loss = (latents - targets.mean(dim=1, keepdim=True)).pow(2).mean()
        with ctx.ledger.phase("generator_backward"):
            ctx.backward(loss)
        best_score = ranking.ranked.gather(1, ranking.top(1)).mean()  # on the higher-is-better scale
        return StepOutput(loss=float(loss.detach()), logs={"reward_best": float(best_score)})

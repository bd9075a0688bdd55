"""RAFT for one-step generators: regress every candidate onto the best of its K.

Dong, Xiong, Goyal, Pan, Diao, Zhang, Shum, Zhang. "RAFT: Reward rAnked FineTuning for
Generative Foundation Model Alignment." TMLR 2023. https://arxiv.org/abs/2304.06767

RAFT samples K candidates, keeps the best by reward (a black box: no reward gradient) and
finetunes on them. A one-step generator has no denoising loss to finetune with, so the
regression target is the top candidate's latents for every noise of that prompt: an honest
"best-of-K distillation" that, unlike DrPO, has no force keeping candidates apart — expect
diversity to fall (the eval's diversity metric shows it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from drpo_bench.methods import Method, StepOutput, TrainContext, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig


@METHODS.register("raft")
class RAFT(Method):
    """Reward-ranked finetuning: regress onto the best of K (gradient-free)."""

    paper = "https://arxiv.org/abs/2304.06767"

    class Config(StrictConfig):
        top_n: int = Field(1, ge=1)  # best candidates kept per prompt; 1 = best-of-K as published

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        assert ctx.reward is not None
        k, p = ctx.candidates_per_prompt, len(prompts)
        if self.config.top_n > k:
            raise ValueError(f"raft: top_n {self.config.top_n} exceeds the {k} candidates per prompt")
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

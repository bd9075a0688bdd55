"""DRaFT for one-step generators: backpropagate the reward through the generator's output.

Clark, Vertes, Swersky, Fleet. "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards." ICLR 2024. https://arxiv.org/abs/2309.17400

With a one-step generator DRaFT-1 is the whole chain: loss = -reward(decode(G(eps, c))). It
needs a differentiable reward; the reward's backward (to the images) and the generator's
backward (images to LoRA) are timed as separate ledger phases.

``ref_l2_weight`` adds the public SDXL-Turbo DRaFT regulariser (github UGVly/DrPO,
src/drpo/methods/sdxl_draft/trainer.py: ``F.mse_loss`` of the trained against the frozen
reference latents for the same noises, a mean over every latent element):

    loss = -reward_scale * mean_k R(decode(G(eps_k, c))) + ref_l2_weight * mean (G(eps, c) - G_ref(eps, c))^2

When it is > 0 a "reference" phase runs the frozen base (LoRA off) on the same noises, no grad.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from drpo_bench.methods import Method, StepOutput, TrainContext, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig


@METHODS.register("draft")
class DRaFT(Method):
    """Reward backprop through the one-step output (DRaFT-1)."""

    paper = "https://arxiv.org/abs/2309.17400"
    needs_differentiable_reward = True

    class Config(StrictConfig):
        reward_scale: float = Field(1.0, gt=0)  # multiplies the reward in the loss; 1 = as published
        ref_l2_weight: float = Field(0.0, ge=0)  # mean latent MSE to the frozen base; 0 = plain DRaFT (public SD-Turbo), SDXL public: 0.02

    def phases(self) -> tuple[str, ...]:
        reference = ("reference",) if self.config.ref_l2_weight > 0 else ()
        return ("sample", *reference, "decode", "reward_forward", "reward_backward", "generator_backward")

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        assert ctx.reward is not None
        cand = sample_candidates(prompts, ctx)
        gen, weight = ctx.generator, self.config.ref_l2_weight
        ref_latents = None
        if weight > 0:
            with ctx.ledger.phase("reference"), torch.no_grad(), gen.reference():
                ref_latents = gen.sample(cand.noise, cand.cond)  # (P*K, *latent) same noises, frozen base
        with ctx.ledger.phase("decode"):
            images = ctx.generator.decode(cand.latents)  # (P*K, 3, H, W), grad
        leaf = images.detach().requires_grad_(True)  # cut here so the two backwards time apart
        scores = ctx.score(leaf, cand.prompts, grad=True)  # (P*K,) with the reward's graph
        sign = 1.0 if ctx.reward.higher_is_better else -1.0
        loss = -sign * self.config.reward_scale * scores.mean()
        with ctx.ledger.phase("reward_backward"):
            # backward (not autograd.grad) into the cut leaf only: module hooks such as the
            # ledger's FLOP counter do not support autograd.grad on a hooked leaf
            ctx.backward(loss, inputs=[leaf])
        with ctx.ledger.phase("generator_backward"):
            if ref_latents is None:
                images.backward(leaf.grad)
                ref_l2 = torch.zeros(())
            else:
                ref_l2 = ref_l2_loss(cand.latents, ref_latents)
                ref_term = ctx.scaled(weight * ref_l2 * ctx.loss_scale)  # the same scaling ctx.backward applies
                torch.autograd.backward([images, ref_term], [leaf.grad, None])
                loss = loss + weight * ref_l2
        return StepOutput(
            loss=float(loss.detach()),
            logs={"reward_std": float(scores.detach().std()), "ref_l2": float(ref_l2.detach())},
        )


def ref_l2_loss(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over every element, in fp32: (N, *latent) x2 -> ()."""
    return (latents.float() - reference.float()).pow(2).mean()

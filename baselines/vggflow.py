"""VGG-Flow adapted to a one-step generator: regress the output onto reference + reward gradient.

Liu, Xiao, Domingo-Enrich, Liu, Zhang. "Value Gradient Guidance for Flow Matching Alignment."
NeurIPS 2025. https://arxiv.org/abs/2512.05116

The paper fine-tunes a flow v_theta = v_base + v~ under the control objective
``E[lambda/2 * int ||v~(x_t, t)||^2 dt - r(x_1)]``. Its HJB condition gives the optimal residual
``v~*(x, t) = -grad V(x, t) / lambda`` (V the cost-to-go), so training *matches* the residual
velocity to a value-gradient model, parameterised as a stop-gradient reward gradient at a
one-step look-ahead plus a learnt correction, ``g(x, t) = -eta_t * sg(grad r(x^_1(x, t))) + nu(x, t)``,
with nu trained by the HJB consistency equation and the boundary condition ``g(x, 1) = -grad r(x)``.

A one-step generator G(eps, c) makes a single transition, noise -> clean latent, so this file
follows the one-step form of the public DrPO code (github UGVly/DrPO, baselines/vggflow) and
states it exactly. The one transition's velocity is ``G(eps, c) - eps``, so the residual is
``x_theta - x_ref`` (same noise, frozen base); its end point is the sample itself, where the value
gradient is known exactly from the boundary condition, so there is no intermediate time at which
to learn nu and the consistency loss and the value network are dropped (as in the public code);
the public eta modes (constant, 1 - sigma, (1 - sigma)^2) at SD-Turbo's t = 999 only rescale the
reward gradient by 1, 1e-3 or 1e-6, so eta is folded into ``reward_scale`` (eta = 1, the public
default "constant"). Per prompt c and its K candidates:

    x_k      = G_theta(eps_k, c)                          with grad (LoRA)
    x_k^ref  = G_ref(eps_k, c)                            same noise, frozen base, no grad
    g_k      = grad_x R(decode(x), c) at x = sg(x_k)      reward's gradient in latent space (sign
                                                          flipped for lower-is-better rewards)
    g~_k     = g_k * min(1, tau / ||g_k||)                per-sample norm clip to the running tau
    loss     = mean_k mean_elements (x_k - (x_k^ref + s * g~_k))^2  [+ ref_l2_weight * mse(x, x^ref)]

with s = ``reward_scale`` (the paper's 1/lambda). tau starts at ``initial_clip_threshold`` and,
after each optimizer update, becomes the ``clip_quantile`` quantile of that update's unclipped
norms ||g_k|| (the public code takes the quantile over the last micro-batch of each of its
processes; here it is every sample of the update, which does not depend on how the update is cut
into micro-batches). At theta = ref the loss gradient is ``-2 s g~ / n_elements`` per sample: a
DRaFT step with a clipped, rescaled reward gradient; away from it the target stays anchored at the
reference, and the fixed point ``x = x_ref + s * g~(x)`` is the stationary point of
``r(x) - ||x - x_ref||^2 / (2 s)`` (unclipped), a reward bounded by a quadratic control cost
instead of DRaFT's unbounded ascent. The reward's backward runs through the decoder into the
latents only (timed as reward_backward); the generator's backward is the regression's. Public
options off by default (reward jitter smoothing, reward masking) are not ported. Public settings
(suite-level, not this config): SD-Turbo lr 1e-4, K = 8, 32 prompts per update, 1000 updates,
LoRA r 16 on to_q/k/v/out.0; the public notes name an SDXL-Turbo run with lr 1e-5, K = 24 and
reward_scale 3000 (that trainer is not public).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from drpo_bench.run.distributed import current as data_parallel
from drpo_bench.methods import Method, StepOutput, TrainContext, reference_l2, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig


def clip_by_norm(grad: torch.Tensor, threshold: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """grad (N, *) -> (clipped (N, *), unclipped per-sample L2 norms (N,)).

    A threshold of None or <= 0 disables clipping (the public code's rule for a zero threshold).
    """
    norms = grad.float().flatten(1).norm(dim=1)  # (N,)
    if threshold is None or threshold <= 0:
        return grad, norms
    safe = norms.clamp_min(1e-12)
    factor = safe.clamp(max=threshold) / safe  # (N,) min(1, tau / ||g||)
    return grad * factor.view(-1, *[1] * (grad.ndim - 1)).to(grad.dtype), norms


def one_step_vggflow_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    reward_grad: torch.Tensor,
    *,
    reward_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample value-gradient matching loss (N,) and the detached target (N, *).

    policy (N, *) with grad; reference (N, *) and reward_grad (N, *, already clipped) are detached.
    ``loss_n = mean_elements (x_n - (x_n^ref + reward_scale * g_n))^2``.
    """
    target = reference.detach().float() + reward_scale * reward_grad.detach().float()
    loss = (policy.float() - target).pow(2).flatten(1).mean(dim=1)  # (N,)
    return loss, target


@METHODS.register("vggflow")
class OneStepVGGFlow(Method):
    """VGG-Flow for one-step generators: match x - x_ref to the scaled, clipped reward gradient."""

    paper = "https://arxiv.org/abs/2512.05116"
    needs_differentiable_reward = True

    class Config(StrictConfig):
        reward_scale: float = Field(1000.0, gt=0)  # public one-step SD-Turbo reward_scale (1/lambda, eta = 1)
        clip_gradient: bool = True  # public quantile_clipping: per-sample norm clip of the reward gradient
        clip_quantile: float = Field(0.8, gt=0, le=1)  # public rgrad_quantile: tau = this quantile of norms
        initial_clip_threshold: float = Field(1.0, gt=0)  # public rgrad_clip_threshold, used until one update ran
        ref_l2_weight: float = Field(0.0, ge=0)  # extra mse(x, x_ref) term (public unet_reg_scale); public 0

    config: Config

    def __init__(self, config: StrictConfig) -> None:
        super().__init__(config)
        self.clip_threshold = float(self.config.initial_clip_threshold)  # running tau
        self._norms: list[torch.Tensor] = []  # unclipped norms of the update in progress
        self._share = 0.0  # sum of loss_scale seen in the update in progress

    def phases(self) -> tuple[str, ...]:
        return ("sample", "reference", "decode", "reward_forward", "reward_backward", "loss", "generator_backward")

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, gen, ledger = self.config, ctx.generator, ctx.ledger
        assert ctx.reward is not None
        cand = sample_candidates(prompts, ctx)  # (P*K, *latent), grad through LoRA
        with ledger.phase("reference"), torch.no_grad(), gen.reference():
            ref_latents = gen.sample(cand.noise, cand.cond)  # (P*K, *latent), frozen base
        with ledger.phase("decode"):
            leaf = cand.latents.detach().float().requires_grad_(True)  # gradient wanted in latent space
            images = gen.decode(leaf)  # (P*K, 3, H, W), grad to the leaf only
        scores = ctx.score(images, cand.prompts, grad=True)  # (P*K,) with the reward's graph
        sign = 1.0 if ctx.reward.higher_is_better else -1.0
        with ledger.phase("reward_backward"):
            # per-sample gradients at once: score n depends on latent n only. The mixed-precision
            # scale keeps fp16 activation gradients from underflowing; it is divided out below
            # (an overflow gives a non-finite loss, and the fp16 scaler then skips the update)
            factor = float(ctx.scaled(torch.ones((), device=leaf.device)))
            torch.autograd.backward(ctx.scaled(sign * scores.sum()), inputs=[leaf])
            assert leaf.grad is not None
            grad = leaf.grad / factor  # (P*K, *latent) grad of the reward, ascent direction
        with ledger.phase("loss"):
            clipped, norms = clip_by_norm(grad, self.clip_threshold if cfg.clip_gradient else None)
            per_sample, target = one_step_vggflow_loss(
                cand.latents, ref_latents, clipped, reward_scale=cfg.reward_scale
            )
            loss = per_sample.mean()
            vgg = loss.detach()
            ref_l2 = reference_l2(cand.latents, ref_latents)
            if cfg.ref_l2_weight > 0:
                loss = loss + cfg.ref_l2_weight * ref_l2
        with ledger.phase("generator_backward"):
            ctx.backward(loss)
        logs = {
            "reward_std": float(scores.detach().std(unbiased=False)),
            "loss_vgg": float(vgg),
            "ref_l2": float(ref_l2.detach()),
            "rgrad_norm": float(norms.mean()),
            "clip_threshold": self.clip_threshold,
            "clipped_fraction": float((norms > self.clip_threshold).float().mean()) if cfg.clip_gradient else 0.0,
            "target_shift": float((target - ref_latents.float()).pow(2).mean()),  # mse(target, x_ref)
        }
        self._end_of_micro_batch(norms.detach(), ctx.loss_scale)
        return StepOutput(loss=float(loss.detach()), logs=logs)

    def _end_of_micro_batch(self, norms: torch.Tensor, loss_scale: float) -> None:
        """Collect norms; once the micro-batches' shares sum to one update, set tau from them."""
        dp = data_parallel()  # a data-parallel launch: this process runs 1/world_size of the update
        self._norms.append(norms.float().cpu())
        self._share += loss_scale
        if self._share < 1.0 / dp.world_size - 1e-6:
            return
        every = torch.cat(dp.gather(torch.cat(self._norms)))  # the whole update's norms, in 1-process order
        every = every[torch.isfinite(every)]  # an fp16 overflow must not poison tau
        if self.config.clip_gradient and every.numel() > 0:
            self.clip_threshold = float(torch.quantile(every, self.config.clip_quantile))
        self._norms, self._share = [], 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"clip_threshold": self.clip_threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_threshold = float(state.get("clip_threshold", self.config.initial_clip_threshold))
        self._norms, self._share = [], 0.0

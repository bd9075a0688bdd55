"""GRPO for a one-step generator: group-relative advantages and a clipped policy gradient.

Shao, Wang, Zhu, Xu, Song, Bi, Zhang, Li, Wu, Guo. "DeepSeekMath: Pushing the Limits of
Mathematical Reasoning in Open Language Models" (introduces GRPO), 2024.
https://arxiv.org/abs/2402.03300 -- for images: Liu et al. "Flow-GRPO" (arXiv 2505.05470) and
Xue et al. "DanceGRPO" (arXiv 2505.07818), which make each sampler step a Gaussian policy.

GRPO needs a log-likelihood of the sampled action; a deterministic one-step generator has none.
Two stated definitions, chosen by ``policy``:

``neighbor`` (default; the public DrPO code's GRPO baseline, github UGVly/DrPO, baselines/grpo,
"Neighbor GRPO"). Per prompt c with group size G = K:

    eps_g   = sqrt(1 - sigma^2) * eps_0 + sigma * delta_g      correlated "neighbour" noises
    x_g     = stopgrad G_theta(eps_g, c)                       rollout, no grad
    r_g     = R(decode(x_g), c)                                reward: forward only
    A_g     = sqrt(G) * (r_g - mean r) / ||r - mean r||_p      quasi-norm (p = 2: (r - mean) / std)
              clamped to +-advantage_clip
    a_j     = G_theta(eps_j, c), j = first ``anchors`` rows    trainable anchors (exchangeable rows)
    log pi(g | a_j) = log_softmax_g(-d(x_g, a_j) / T)          d = per-element mean squared error

i.e. the policy is a categorical distribution over the group's own samples, given by their
distance to an anchor output; "old" anchors are the rollout rows x_j themselves. Its gradient
moves each anchor toward the advantage-weighted mean of the group (sum_g A_g x_g).

``gaussian`` (the Flow-GRPO/DanceGRPO reading, and the one-step policy the public code uses for
its PSO baseline): the action is a_k = stopgrad G_theta(eps_k, c) + action_std * xi_k with fresh
xi_k ~ N(0, I); the reward scores decode(a_k);
``log pi(a | eps, c) = -0.5 * mean_d ((a - G_theta(eps, c)) / action_std)^2`` (per-element mean,
as the public code: the summed log-density over 16k latent dims would make every ratio overflow).

Both then use GRPO's clipped surrogate and optional KL to the frozen base:

    ratio = exp(clamp(log pi_theta - log pi_old, +-max_log_ratio))
    loss  = -mean min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)
            + kl_weight * KL(pi_theta || pi_ref) + ref_l2_weight * mse(G_theta(eps), G_ref(eps))

KL to the reference: exact, per element for ``gaussian`` (``mean_d (mu_theta - mu_ref)^2 /
(2 action_std^2)``); for ``neighbor`` the categorical KL over the group between the anchor's and
the reference anchor's (G_ref on the same noise) distributions. The public code has no KL to
the reference (its ``policy_kl_weight`` is a KL to the *old* policy, which is identically zero
with one update per rollout, so it is not ported) and regularises with ref_l2 instead.

Note: the shared loop takes one optimizer update per rollout, so pi_old = pi_theta in value,
the ratio is 1 and the clip never binds: the update is exactly the group-normalized policy
gradient A * grad log pi. The clip is kept so the objective is GRPO's, and is unit-tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from drpo_bench.generators.base import repeat_conditioning
from drpo_bench.methods import Method, StepOutput, TrainContext, reference_l2, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig


def group_advantages(rewards: torch.Tensor, p: float = 2.0, clip: float = 0.0, eps: float = 1e-6) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G): centered per group, divided by the group's p-norm / sqrt(G).

    p = 2 is GRPO's (r - mean) / std (population std); the public code's default is p = 0.8.
    A group with (near) equal rewards gets zero advantages. ``clip`` > 0 clamps to [-clip, clip].
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group >= 2), got {tuple(rewards.shape)}")
    r = rewards.float()
    centered = r - r.mean(dim=1, keepdim=True)
    norm = centered.abs().pow(p).sum(dim=1, keepdim=True).pow(1.0 / p)  # (P, 1)
    adv = math.sqrt(r.shape[1]) * centered / norm.clamp_min(eps)
    adv = torch.where(norm > eps, adv, torch.zeros_like(adv))
    return adv.clamp(-clip, clip) if clip > 0 else adv


def neighbor_log_probs(candidates: torch.Tensor, anchors: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """candidates (P, G, F), anchors (P, A, F) -> (P, A, G): log softmax over the group of -d / T."""
    d = (candidates.float()[:, None, :, :] - anchors.float()[:, :, None, :]).pow(2).mean(dim=-1)  # (P, A, G)
    return torch.log_softmax(-d / temperature, dim=-1)


def gaussian_log_probs(actions: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """(N, ...) actions and means -> (N,) per-element-mean Gaussian log-density (constants dropped)."""
    return -0.5 * ((actions.float() - means.float()) / std).pow(2).flatten(1).mean(dim=1)


def clipped_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    max_log_ratio: float = 10.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO/PPO clipped surrogate, negated to a loss (mean over all actions); advantages broadcast."""
    log_ratio = (log_probs - old_log_probs.detach()).clamp(-max_log_ratio, max_log_ratio)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    adv = advantages.detach().float()
    loss = -torch.minimum(ratio * adv, clipped * adv).mean()
    stats = {
        "ratio_mean": ratio.detach().mean(),
        "clipfrac": (ratio.detach() != clipped.detach()).float().mean(),
        "approx_kl_old": (ratio.detach() - 1.0 - log_ratio.detach()).mean(),
    }
    return loss, stats


@METHODS.register("grpo")
class OneStepGRPO(Method):
    """GRPO for one-step generators: group-normalized advantages, clipped surrogate (gradient-free)."""

    paper = "https://arxiv.org/abs/2402.03300"

    class Config(StrictConfig):
        policy: Literal["neighbor", "gaussian"] = "neighbor"  # public DrPO code's GRPO baseline is Neighbor-GRPO
        neighbor_sigma: float = Field(0.3, gt=0, le=1)  # public default; 1 = independent noises
        anchors: int = Field(4, ge=1)  # trainable anchor outputs per prompt (neighbor); public default 4
        temperature: float = Field(1.0, gt=0)  # softmax temperature over distances (neighbor); public default
        action_std: float = Field(0.05, gt=0)  # Gaussian policy sigma in latent units (gaussian); public PSO default
        advantage_p: float = Field(0.8, gt=0, le=2)  # public quasi-norm p; 2 = GRPO's (r - mean) / std
        advantage_clip: float = Field(5.0, ge=0)  # public clamp on |A|; 0 = off
        clip_range: float = Field(0.2, gt=0, lt=1)  # GRPO/PPO epsilon (Shao et al. and public code: 0.2)
        max_log_ratio: float = Field(10.0, gt=0)  # public guard against exp overflow
        kl_weight: float = Field(0.0, ge=0)  # KL(pi_theta || pi_ref); 0 as in the public code (DeepSeekMath used 0.04)
        ref_l2_weight: float = Field(0.02, ge=0)  # public default: mse between trainable and reference outputs

    config: Config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:
        if config.policy == "neighbor" and config.anchors > candidates_per_prompt:
            raise ValueError(f"grpo: anchors {config.anchors} exceeds the {candidates_per_prompt} candidates per prompt; "
                             "lower anchors")

    def setup(self, ctx: TrainContext) -> None:
        self.check_budget(self.config, ctx.candidates_per_prompt)

    def phases(self) -> tuple[str, ...]:
        cfg = self.config
        need_ref = cfg.kl_weight > 0 or cfg.ref_l2_weight > 0  # as each step decides, either policy
        return ("sample", *(("reference",) if need_ref else ()), "decode", "reward_forward", "loss", "generator_backward")

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        assert ctx.reward is not None
        if self.config.policy == "neighbor":
            return self._neighbor_step(prompts, ctx)
        return self._gaussian_step(prompts, ctx)

    # ---- shared pieces ------------------------------------------------------------------------
    def _score(
        self, ctx: TrainContext, latents: torch.Tensor, prompts: list[str], p: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and score without grad: raw scores and higher-is-better ranks, both (P, K)."""
        assert ctx.reward is not None
        with ctx.ledger.phase("decode"), torch.no_grad():
            images = ctx.generator.decode(latents.detach())
        ranking = ctx.rank(images, prompts)  # (P, K)
        return ranking.scores, ranking.ranked

    def _finish(self, ctx: TrainContext, policy_loss: torch.Tensor, kl: torch.Tensor, ref_l2: torch.Tensor,
                stats: dict[str, torch.Tensor], scores: torch.Tensor, adv: torch.Tensor) -> StepOutput:
        cfg = self.config
        with ctx.ledger.phase("loss"):
            loss = policy_loss + cfg.kl_weight * kl + cfg.ref_l2_weight * ref_l2
        with ctx.ledger.phase("generator_backward"):
            ctx.backward(loss)
        return StepOutput(
            loss=float(loss.detach()),
            logs={
                "reward_std_within_prompt": float(scores.std(dim=1).mean()),
                "advantage_abs": float(adv.abs().mean()),
                "loss_policy": float(policy_loss.detach()),
                "kl_ref": float(kl.detach()),
                "ref_l2": float(ref_l2.detach()),
                **{key: float(v) for key, v in stats.items()},
            },
        )

    # ---- neighbor policy (public code) --------------------------------------------------------
    def _neighbor_step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, gen, ledger, k = self.config, ctx.generator, ctx.ledger, ctx.candidates_per_prompt
        p, a = len(prompts), cfg.anchors
        repeated = [text for text in prompts for _ in range(k)]
        with ledger.phase("sample"):
            cond_one = gen.encode(prompts)
            base = gen.noise(p, ctx.noise_rng)  # (P, *latent): one centre per prompt
            deltas = gen.noise(p * k, ctx.noise_rng)  # (P*K, *latent)
            centre = math.sqrt(1.0 - cfg.neighbor_sigma**2) * base.repeat_interleave(k, dim=0)
            noise = centre + cfg.neighbor_sigma * deltas  # (P*K, *latent), still N(0, I) per row
            with torch.no_grad():
                rollout = gen.sample(noise, repeat_conditioning(cond_one, k))  # (P*K, *latent), old policy
            rows = (torch.arange(p)[:, None] * k + torch.arange(a)[None, :]).reshape(-1).to(noise.device)
            anchor_noise, anchor_cond = noise[rows], repeat_conditioning(cond_one, a)
            current = gen.sample(anchor_noise, anchor_cond)  # (P*A, *latent), grad through LoRA
        need_ref = cfg.kl_weight > 0 or cfg.ref_l2_weight > 0
        if need_ref:
            with ledger.phase("reference"), torch.no_grad(), gen.reference():
                ref_anchor = gen.sample(anchor_noise, anchor_cond)  # (P*A, *latent)
        scores, ranked = self._score(ctx, rollout, repeated, p)
        with ledger.phase("loss"):
            adv = group_advantages(ranked, p=cfg.advantage_p, clip=cfg.advantage_clip)  # (P, K)
            cand = rollout.reshape(p, k, -1)  # (P, K, F), detached
            anchors = current.reshape(p, a, -1)  # (P, A, F)
            logp = neighbor_log_probs(cand, anchors, cfg.temperature)  # (P, A, K)
            old = neighbor_log_probs(cand, cand[:, :a], cfg.temperature)  # rollout rows are the old anchors
            policy_loss, stats = clipped_surrogate(
                logp, old, adv[:, None, :], clip_range=cfg.clip_range, max_log_ratio=cfg.max_log_ratio
            )
            kl = ref_l2 = policy_loss.new_zeros(())
            if need_ref:
                ref_anchors = ref_anchor.reshape(p, a, -1)
                if cfg.kl_weight > 0:
                    ref_logp = neighbor_log_probs(cand, ref_anchors, cfg.temperature)
                    kl = (logp.exp() * (logp - ref_logp)).sum(dim=-1).mean()
                ref_l2 = reference_l2(anchors, ref_anchors)
        return self._finish(ctx, policy_loss, kl, ref_l2, stats, scores, adv)

    # ---- Gaussian policy (Flow-GRPO / DanceGRPO reading) ---------------------------------------
    def _gaussian_step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, gen, ledger = self.config, ctx.generator, ctx.ledger
        p = len(prompts)
        cand = sample_candidates(prompts, ctx)  # means mu_theta (P*K, *latent), grad
        with ledger.phase("sample"):
            xi = gen.noise(cand.latents.shape[0], ctx.noise_rng)  # fresh action noise
            actions = cand.latents.detach() + cfg.action_std * xi
        need_ref = cfg.kl_weight > 0 or cfg.ref_l2_weight > 0
        if need_ref:
            with ledger.phase("reference"), torch.no_grad(), gen.reference():
                ref_means = gen.sample(cand.noise, cand.cond)
        scores, ranked = self._score(ctx, actions, cand.prompts, p)
        with ledger.phase("loss"):
            adv = group_advantages(ranked, p=cfg.advantage_p, clip=cfg.advantage_clip)  # (P, K)
            logp = gaussian_log_probs(actions, cand.latents, cfg.action_std)  # (P*K,)
            old = gaussian_log_probs(actions, cand.latents.detach(), cfg.action_std)
            policy_loss, stats = clipped_surrogate(
                logp, old, adv.reshape(-1), clip_range=cfg.clip_range, max_log_ratio=cfg.max_log_ratio
            )
            kl = ref_l2 = policy_loss.new_zeros(())
            if need_ref:
                ref_l2 = reference_l2(cand.latents, ref_means)
                kl = ref_l2 / (2 * cfg.action_std**2)  # exact per-element KL of two sigma-isotropic Gaussians
        return self._finish(ctx, policy_loss, kl, ref_l2, stats, scores, adv)

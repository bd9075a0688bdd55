"""PSO (Pairwise Sample Optimization) for a one-step generator.

Miao, Yang, Zhu, Luo, Zhou, Xie, Zhang, Liu, Zhang. "Tuning Timestep-Distilled Diffusion Model
Using Pairwise Sample Optimization." 2024. https://arxiv.org/abs/2410.16215

PSO trains a few-step (timestep-distilled) generator with a DPO-style logistic loss on pairs of
its *own* samples: it raises the likelihood ratio to the reference of the preferred sample of
each pair and lowers that of the other, where the likelihood is the product of the sampler's
Gaussian transitions along the few-step trajectory. With one step the trajectory is a single
transition, so this file uses the one-step form of the public DrPO code (github UGVly/DrPO,
baselines/spo, "SPO/PSO"), stated exactly. Per prompt c with K (even) candidates:

    mu_k     = G_theta(eps_k, c)                        with grad (LoRA)
    mu_k^ref = G_ref(eps_k, c)                          same noises, frozen base, no grad
    a_k      = stopgrad mu_k + action_std * o_k         the action (a clean latent)
    o_k      = standardize(eps_k)                       public code: the input noise itself,
                                                        zero-mean/unit-std per sample ("input");
               or fresh N(0, I) noise                   ("fresh": an independent Gaussian policy)
    s_k      = R(decode(a_k), c)                        reward: forward only
    log pi(a | mu) = -0.5 * mean_d ((a - mu) / action_std)^2        per-element mean
    rho_k    = clamp(log pi_theta(a_k) - log pi_ref(a_k), +-max_log_ratio)
               then, if clip_range > 0, rho_k = log clamp(exp rho_k, 1 - clip_range, 1 + clip_range)
    pairs    = adjacent candidates (0, 1), (2, 3), ...  (i.i.d. noises: a random pairing)
    loss(c)  = mean over non-tied pairs of -log sigmoid(beta * (rho_win - rho_lose))
               [+ ref_l2_weight * mse(mu, mu^ref)]

The ratio is to the *reference*, so the clamp is a trust region around the base: a candidate
whose log-ratio has left [log(1 - clip), log(1 + clip)] gets no gradient (faithful to the public
code; with action_std 0.05 and clip 0.1 the region is narrow, which is consistent with the
paper's PSO row being close to the base). Tied pairs are dropped; a prompt whose pairs all tie
contributes zero loss. One trainable generator pass per candidate (the public code re-runs the
generator with grad after a no-grad rollout; the values are identical, so one pass is used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from drpo_bench.methods import Method, StepOutput, TrainContext, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig


def standardize_per_sample(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> zero mean, unit (population) std over each sample's elements."""
    flat = x.float().flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-6)
    return ((flat - mean) / std).view_as(x).to(x.dtype)


def gaussian_log_probs(actions: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """(N, ...) actions and means -> (N,) per-element-mean Gaussian log-density (constants dropped)."""
    return -0.5 * ((actions.float() - means.float()) / std).pow(2).flatten(1).mean(dim=1)


def pairwise_sample_loss(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    clip_range: float,
    max_log_ratio: float = 10.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-prompt PSO loss (P,) for log-probs and higher-is-better rewards (P, K), K even.

    Pairs are adjacent columns (0, 1), (2, 3), ...; the winner of a pair has the higher reward;
    ties are dropped. A prompt without a non-tied pair has loss 0 (still connected to the graph).
    """
    p, k = log_probs.shape
    if k % 2:
        raise ValueError(f"PSO pairs adjacent candidates: K must be even, got {k}")
    log_ratio = (log_probs.float() - ref_log_probs.detach().float()).clamp(-max_log_ratio, max_log_ratio)
    if clip_range > 0:
        log_ratio = torch.log(torch.exp(log_ratio).clamp(1.0 - clip_range, 1.0 + clip_range))
    lr_pairs = log_ratio.view(p, k // 2, 2)  # (P, K/2, 2)
    r_pairs = rewards.float().view(p, k // 2, 2)
    sign = torch.sign(r_pairs[..., 0] - r_pairs[..., 1])  # (P, K/2): +1 first wins, -1 second, 0 tie
    valid = sign != 0
    logits = beta * sign * (lr_pairs[..., 0] - lr_pairs[..., 1])  # (P, K/2)
    per_pair = -F.logsigmoid(logits) * valid
    count = valid.sum(dim=1)
    loss = per_pair.sum(dim=1) / count.clamp_min(1)  # (P,)
    n = valid.sum().clamp_min(1)
    stats = {
        "pso_logit": (logits.detach() * valid).sum() / n,
        "pair_accuracy": ((logits.detach() > 0) & valid).sum() / n,
        "tie_fraction": 1.0 - valid.float().mean(),
        "log_ratio_abs": log_ratio.detach().abs().mean(),
    }
    return loss, stats


@METHODS.register("pso")
class OneStepPSO(Method):
    """Pairwise Sample Optimization for one-step generators: DPO on own-sample pairs (gradient-free)."""

    paper = "https://arxiv.org/abs/2410.16215"

    class Config(StrictConfig):
        beta: float = Field(50.0, gt=0)  # public one-step code's spo_beta (per-element log-ratios are small)
        action_std: float = Field(0.05, gt=0)  # Gaussian policy sigma in latent units; public rollout_action_std
        action_noise: Literal["input", "fresh"] = "input"  # public code offsets by the standardized input noise
        clip_range: float = Field(0.1, ge=0, lt=1)  # public trust region on the ratio to the reference; 0 = off
        max_log_ratio: float = Field(10.0, gt=0)  # public guard against exp overflow
        ref_l2_weight: float = Field(0.0, ge=0)  # extra mse(mu, mu_ref); public default 0

    config: Config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:
        if candidates_per_prompt % 2:
            raise ValueError(f"pso pairs adjacent candidates: budget.candidates_per_prompt must be even, got {candidates_per_prompt}")

    def setup(self, ctx: TrainContext) -> None:
        self.check_budget(self.config, ctx.candidates_per_prompt)

    def phases(self) -> tuple[str, ...]:
        return ("sample", "reference", "decode", "reward_forward", "loss", "generator_backward")

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, gen, ledger, k = self.config, ctx.generator, ctx.ledger, ctx.candidates_per_prompt
        p = len(prompts)
        assert ctx.reward is not None
        cand = sample_candidates(prompts, ctx)  # mu_theta (P*K, *latent), grad through LoRA
        with ledger.phase("sample"):
            if cfg.action_noise == "input":
                offset = standardize_per_sample(cand.noise)
            else:
                offset = gen.noise(cand.noise.shape[0], ctx.noise_rng)
            actions = cand.latents.detach() + cfg.action_std * offset  # (P*K, *latent)
        with ledger.phase("reference"), torch.no_grad(), gen.reference():
            ref_means = gen.sample(cand.noise, cand.cond)  # same noises, frozen base
        with ledger.phase("decode"), torch.no_grad():
            images = gen.decode(actions)
        ranked = ctx.rank(images, cand.prompts).ranked  # (P, K), larger is better
        with ledger.phase("loss"):
            logp = gaussian_log_probs(actions, cand.latents, cfg.action_std).view(p, k)
            ref_logp = gaussian_log_probs(actions, ref_means, cfg.action_std).view(p, k)
            pso, stats = pairwise_sample_loss(
                logp, ref_logp, ranked, beta=cfg.beta, clip_range=cfg.clip_range, max_log_ratio=cfg.max_log_ratio
            )
            loss = pso.mean()
            ref_l2 = loss.new_zeros(())
            if cfg.ref_l2_weight > 0:
                ref_l2 = (cand.latents.float() - ref_means.float()).pow(2).mean()
                loss = loss + cfg.ref_l2_weight * ref_l2
        with ledger.phase("generator_backward"):
            ctx.backward(loss)
        return StepOutput(
            loss=float(loss.detach()),
            logs={
                "loss_pso": float(pso.detach().mean()),
                "ref_l2": float(ref_l2.detach()),
                **{key: float(v) for key, v in stats.items()},
            },
        )

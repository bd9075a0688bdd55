"""Diffusion-DPO adapted to a one-step generator (online, reward-ranked pairs).

Wallace, Dang, Rafailov, Zhou, Lou, Purushwalkam, Ermon, Xiong, Joty, Naik. "Diffusion Model
Alignment Using Direct Preference Optimization." CVPR 2024. https://arxiv.org/abs/2311.12908

Diffusion-DPO replaces the intractable log-likelihood ratio log pi_theta(x)/pi_ref(x) of DPO's
implicit reward with the *denoising-error* improvement over the reference at a re-noised
timestep. A one-step generator G(eps, c) has no denoising chain to re-noise, so this file
follows the one-step form of the public DrPO code (github UGVly/DrPO, baselines/dpo, "online"
mode, raw-latent preference space) and states it exactly:

Per prompt c (K candidates):

    x_k     = G_theta(eps_k, c)                         k = 1..K, with grad (LoRA)
    x_k^ref = G_ref(eps_k, c)                           same noises, frozen base, no grad
    s_k     = R(decode(stopgrad x_k), c)                reward: forward only, any black box
    W, L    = stopgrad x of the top n_w / bottom n_l    winners / losers (disjoint)

The pseudo log-likelihood of a target y under a generator is minus its mean regression error
from the generator's outputs under the K noises, ``log p(y) := -mean_{k, y in Y} d(x_k, y)``
(d = per-element mean squared error by default), so DPO's log-ratio becomes "how much closer
than the reference the generator's outputs are to y":

    gap_theta = -mean_{k,w} d(x_k, w)   + mean_{k,l} d(x_k, l)
    gap_ref   = -mean_{k,w} d(x^ref_k, w) + mean_{k,l} d(x^ref_k, l)
    loss(c)   = -log sigmoid(beta * (gap_theta - gap_ref))   [+ ref_l2_weight * mse(x, x^ref)]

One logit per prompt (all K outputs against all chosen winners and losers, as the public code
does), averaged over the micro-batch's prompts. At theta = ref the logit is 0 and the loss is
log 2; its gradient pulls every candidate toward the winners and away from the losers, weighted
by sigmoid(-logit), with the reference as the DPO anchor that stops the pull once the margin is
won. Choices kept from the public code: online pairs from the current generator's own
candidates (not an offline preference dataset), raw-latent space, per-element MSE. The
defaults (beta = 1, top-1 vs bottom-1) are the public trainer's argument defaults
(baselines/dpo/train_lora.py), which suit any K >= 2; the public SD-Turbo launch
(scripts/train/dpo.sh) overrides them with beta = 30 and 8 winners / 8 losers of K = 24, and the
paper suites (suites/paper/) set those values explicitly (its feature-space variants are not ported: use DrPO's encoders via a new
option if needed). Costs one trainable and one frozen generator pass per candidate; the reward
only ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from drpo_bench.methods import Candidates, Method, StepOutput, TrainContext, reference_l2, sample_candidates
from drpo_bench.registry import METHODS, StrictConfig

Distance = Literal["l2", "l1", "cosine"]


def pair_distances(x: torch.Tensor, targets: torch.Tensor, distance: Distance = "l2") -> torch.Tensor:
    """x (P, K, F), targets (P, N, F) -> (P, K, N) per-pair distances (per-element mean for l1/l2)."""
    x, targets = x.float(), targets.float()
    if distance == "l2":
        return (x[:, :, None, :] - targets[:, None, :, :]).pow(2).mean(dim=-1)
    if distance == "l1":
        return (x[:, :, None, :] - targets[:, None, :, :]).abs().mean(dim=-1)
    if distance == "cosine":  # a distance: 1 - cosine similarity
        return 1.0 - F.normalize(x, dim=-1) @ F.normalize(targets, dim=-1).transpose(1, 2)
    raise ValueError(f"unknown distance {distance!r}; use l2, l1 or cosine")


def one_step_dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor | None,
    winners: torch.Tensor,
    losers: torch.Tensor,
    *,
    beta: float,
    distance: Distance = "l2",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-prompt one-step DPO loss (P,) and detached statistics.

    policy (P, K, F) with grad; reference (P, K, F) or None (reference-free DPO); winners (P, W, F)
    and losers (P, L, F) detached. The implicit reward margin is
    ``gap = mean d(x, losers) - mean d(x, winners)``, taken relative to the reference's gap.
    """

    def margin(x: torch.Tensor) -> torch.Tensor:  # (P,): mean error to losers minus to winners
        to_losers = pair_distances(x, losers, distance).mean(dim=(1, 2))
        return to_losers - pair_distances(x, winners, distance).mean(dim=(1, 2))

    gap = margin(policy)
    if reference is None:
        ref_gap = torch.zeros_like(gap)
    else:
        with torch.no_grad():
            ref_gap = margin(reference)
    logit = beta * (gap - ref_gap)  # (P,)
    loss = -F.logsigmoid(logit)  # (P,)
    stats = {
        "dpo_logit": logit.detach().mean(),
        "policy_gap": gap.detach().mean(),
        "reference_gap": ref_gap.detach().mean(),
        "pair_accuracy": (logit.detach() > 0).float().mean(),
    }
    return loss, stats


@METHODS.register("dpo")
class OneStepDPO(Method):
    """Diffusion-DPO for one-step generators: top vs bottom of K, regression-error log-ratios."""

    paper = "https://arxiv.org/abs/2311.12908"

    class Config(StrictConfig):
        beta: float = Field(1.0, gt=0)  # public trainer's argument default; its SD-Turbo launch uses 30
        n_winners: int = Field(1, ge=1)  # top-1: public trainer's default, fits any K; its launch uses 8
        n_losers: int = Field(1, ge=1)  # bottom-1: public trainer's default; its launch uses 8
        distance: Distance = "l2"  # regression error defining the pseudo log-likelihood; public default l2
        reference_free: bool = False  # True drops the reference gap (an ablation); DPO keeps it
        ref_l2_weight: float = Field(0.0, ge=0)  # extra mse(x, x_ref) term; public default 0

    config: Config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:
        if config.n_winners + config.n_losers > candidates_per_prompt:
            raise ValueError(
                f"dpo: n_winners + n_losers = {config.n_winners + config.n_losers} exceeds the {candidates_per_prompt} "
                "candidates per prompt; winners and losers must be disjoint. Lower them or raise "
                "budget.candidates_per_prompt."
            )

    def setup(self, ctx: TrainContext) -> None:
        self.check_budget(self.config, ctx.candidates_per_prompt)

    def needs_reference(self) -> bool:
        """The frozen base's outputs are needed: for the DPO anchor, or for the extra mse term."""
        return not self.config.reference_free or self.config.ref_l2_weight > 0

    def phases(self) -> tuple[str, ...]:
        need_ref = self.needs_reference()
        return ("sample", *(("reference",) if need_ref else ()), "decode", "reward_forward", "loss", "generator_backward")

    def sample_with_reference(self, prompts: Sequence[str], ctx: TrainContext) -> tuple[Candidates, torch.Tensor | None]:
        """K candidates per prompt (grad through LoRA) and, if needed, the same noises through the frozen base."""
        cand = sample_candidates(prompts, ctx)  # (P*K, *latent), grad through LoRA
        ref_latents = None
        if self.needs_reference():
            with ctx.ledger.phase("reference"), torch.no_grad(), ctx.generator.reference():
                ref_latents = ctx.generator.sample(cand.noise, cand.cond)  # same noises, frozen base
        return cand, ref_latents

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        cfg, gen, ledger, k = self.config, ctx.generator, ctx.ledger, ctx.candidates_per_prompt
        p = len(prompts)
        assert ctx.reward is not None
        cand, ref_latents = self.sample_with_reference(prompts, ctx)
        with ledger.phase("decode"), torch.no_grad():
            images = gen.decode(cand.latents.detach())
        ranking = ctx.rank(images, cand.prompts)  # (P, K), best first
        ranked = ranking.ranked
        with ledger.phase("loss"):
            win_idx, lose_idx = ranking.top(cfg.n_winners), ranking.bottom(cfg.n_losers)
            x = cand.latents.reshape(p, k, -1)  # (P, K, F)
            x_ref = ref_latents.reshape(p, k, -1) if ref_latents is not None else None
            f = x.shape[-1]
            winners = torch.gather(x.detach(), 1, win_idx[:, :, None].expand(-1, -1, f))  # (P, W, F)
            losers = torch.gather(x.detach(), 1, lose_idx[:, :, None].expand(-1, -1, f))  # (P, L, F)
            loss, logs = dpo_objective(cfg, x, x_ref, winners, losers)
        with ledger.phase("generator_backward"):
            ctx.backward(loss)
        return StepOutput(
            loss=float(loss.detach()),
            logs={
                "reward_winner_minus_loser": float(ranked.gather(1, win_idx).mean()
                                                   - ranked.gather(1, lose_idx).mean()),
                **logs,
            },
        )


def dpo_objective(cfg: Any, x: torch.Tensor, x_ref: torch.Tensor | None, winners: torch.Tensor,
                  losers: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's DPO loss (plus ``ref_l2_weight`` x mse to the reference) and its log lines, for
    a config with OneStepDPO's fields: x, x_ref (P, K, F); winners (P, W, F), losers (P, L, F) detached."""
    dpo, stats = one_step_dpo_loss(x, None if cfg.reference_free else x_ref, winners, losers, beta=cfg.beta,
                                   distance=cfg.distance)
    loss = dpo.mean()
    ref_l2 = x.new_zeros(())
    if cfg.ref_l2_weight > 0:
        assert x_ref is not None
        ref_l2 = reference_l2(x, x_ref)
        loss = loss + cfg.ref_l2_weight * ref_l2
    logs = {"loss_dpo": float(dpo.detach().mean()), "ref_l2": float(ref_l2.detach()),
            **{key: float(v) for key, v in stats.items()}}
    return loss, logs

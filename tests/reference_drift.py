"""A slow, plain restatement of DrPO's drift loss (docs/drpo.md), independent of drpo_bench.

One set (one prompt) at a time, with the masked pairs given as an explicit (N, T) matrix over the
targets [generated | negatives | positives], as the spec reads. Used by the value-level tests of
DrPO's options (tests/test_drpo_options.py); nothing here imports the code under test.
"""

from __future__ import annotations

import torch

SELF_PENALTY = 100.0  # docs/drpo.md: a masked pair's logit is lowered by 100 / tau


def drift_loss_one_set(gen: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *, w_pos: float, w_neg: float,
                       radii: tuple[float, ...], masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gen (N, D), pos (P, D), neg (M, D); masked (N, N + M + P) bool, True where a (generated, target)
    pair is masked (the generated set's own diagonal is added here).

    Returns (loss, d loss / d gen (N, D)): the loss regresses gen onto the detached goal gen + V."""
    n, d = gen.shape
    gen = gen.detach().double().requires_grad_(True)
    pos, neg = pos.detach().double(), neg.detach().double()
    targets = torch.cat([gen.detach(), neg, pos])  # (T, D)
    w = torch.cat([torch.ones(n), torch.full((len(neg),), w_neg), torch.full((len(pos),), w_pos)]).double()
    dist = (gen.detach()[:, None, :] - targets[None, :, :]).norm(dim=-1)  # (N, T): differences, not |x|^2 + |y|^2 - 2xy
    dist = dist.clamp_min(1e-4)  # the code's clamp of squared distances at 1e-8
    s = max(float((dist * w).mean() / w.mean()), 1e-3)
    unit = max(s / d**0.5, 1e-3)
    x, t = gen.detach() / unit, targets / unit
    penalty = masked.double().clone()
    penalty[:, :n] += torch.eye(n, dtype=torch.double)
    split = n + len(neg)
    force = torch.zeros_like(x)
    for tau in radii:
        logits = -(dist / s) / tau - SELF_PENALTY / tau * penalty
        a = (logits.softmax(-1) * logits.softmax(-2)).clamp_min(1e-6).sqrt() * w
        a_neg, a_pos = a[:, :split], a[:, split:]
        f = (a_pos * a_neg.sum(-1, keepdim=True)) @ t[split:] - (a_neg * a_pos.sum(-1, keepdim=True)) @ t[:split]
        force = force + f / f.pow(2).mean().sqrt()
    goal = x + force
    loss = (gen / unit - goal).pow(2).mean()  # regression onto the detached goal
    loss.backward()
    return loss.detach(), gen.grad

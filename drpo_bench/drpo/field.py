"""The drift field of Drifting Models, as DrPO uses it.

For generated vectors x, positives y+ and negatives y- (all in one feature space)::

    V(x) = sum k(x, y+)(y+ - x) / Z+  -  sum k(x, y-)(y- - x) / Z-,   k(x, y) = exp(-|x - y| / tau)

and the loss regresses x onto the detached goal x + V. The batched form below follows the
DrPO paper (arXiv 2606.02521) and its public code (github UGVly/DrPO), restated in
``docs/drpo.md``: the generated set itself joins the negatives (weight 1), distances are
normalized by their weighted mean, several radii are summed after RMS normalization, and the
affinity is the geometric mean of the softmax over targets and over generated vectors.

Shapes: ``generated`` (B, N, D), ``positive`` (B, P, D), ``negative`` (B, M, D) — B independent
sets (e.g. one per prompt), each of N generated vectors. Every reduction (the distance scale,
the force RMS, the loss) is taken per set, so one call over B sets gives exactly what B calls
over one set each give: the public code calls the field once per prompt.

Precision: the field always runs in float32 with autocast switched off inside. The anchor
weights (3000) make the affinities reach ~1e5, beyond float16's range (65504).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: logit penalty (times 1/tau) that removes a vector's attraction to its own copy
_SELF_PENALTY = 100.0


@dataclass(frozen=True)
class DriftResult:
    loss: torch.Tensor  # (B,) per-set loss, differentiable w.r.t. generated
    goal: torch.Tensor  # (B, N, D) detached target, in the scaled space
    scale: torch.Tensor  # (B,) per-set weighted mean distance used to normalize
    force_rms: dict[float, float]  # per radius, before normalization, averaged over sets (diagnostics)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain (not squared) L2 distances (B, N, D) x (B, M, D) -> (B, N, M), in float32."""
    with torch.autocast(x.device.type, enabled=False):
        return _pairwise_distance(x.float(), y.float())


def _pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sq = x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :] - 2.0 * torch.einsum("bnd,bmd->bnm", x, y)
    return sq.clamp_min(1e-8).sqrt()


def _weights(value: float | torch.Tensor, batch: int, count: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (count,) or (batch, count) anchor weight -> (batch, count)."""
    if not torch.is_tensor(value):
        return like.new_full((batch, count), float(value))
    value = value.to(like)
    if value.ndim == 1:
        value = value[None].expand(batch, -1)
    if value.shape != (batch, count):
        raise ValueError(f"anchor weights must be scalar, ({count},) or ({batch}, {count}); got {tuple(value.shape)}")
    return value


def drift_loss(
    generated: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    **kwargs: object,
) -> DriftResult:
    """Drift-field regression loss, always in float32 (autocast is switched off inside).

    See :func:`_drift_loss` for the arguments.
    """
    with torch.autocast(generated.device.type, enabled=False):
        return _drift_loss(generated, positive, negative, **kwargs)  # type: ignore[arg-type]


def _drift_loss(
    generated: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    positive_weight: float | torch.Tensor = 3000.0,
    negative_weight: float | torch.Tensor = 3000.0,
    radii: Sequence[float] = (0.02, 0.05, 0.2),
    mask_negative_self: bool = False,
    mask_positive_pairs: bool = False,
    anchor_mask: torch.Tensor | None = None,
) -> DriftResult:
    """Drift-field regression loss: attract ``generated`` to ``positive``, repel from ``negative``.

    ``mask_negative_self``: the negatives are the generated set itself (row i of ``negative`` is
    a copy of row i of ``generated``), as in DrPO's reference drift; that diagonal is masked too.

    ``mask_positive_pairs``: row i of ``positive`` is generated row i's own counterpart (same
    noise through the reference model); mask that pairing so the field compares distributions
    only. With both masks the field is exactly zero when ``positive`` equals ``generated``. The
    published DrPO code leaves the pairs unmasked (the default here): then, when policy and
    reference agree, each vector's own copy dominates its positive affinities and what remains
    is a repulsion from the other candidates.

    ``anchor_mask`` (B, N, M + P) bool, optional: extra (generated, anchor) pairs to mask, laid
    out as [negatives | positives]; e.g. a candidate's own copy among the anchors.
    """
    for name, t in (("generated", generated), ("positive", positive), ("negative", negative)):
        if t.ndim != 3:
            raise ValueError(f"{name} must be (B, N, D); got {tuple(t.shape)}")
    batch, n_gen, dim = generated.shape
    n_pos, n_neg = positive.shape[1], negative.shape[1]
    if positive.shape[0] != batch or negative.shape[0] != batch:
        raise ValueError("generated, positive and negative must have the same number of sets B")
    if positive.shape[2] != dim or negative.shape[2] != dim:
        raise ValueError("generated, positive and negative must have the same feature dimension D")
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the drift field needs at least one positive and one negative vector")
    if mask_negative_self and n_neg != n_gen:
        raise ValueError("mask_negative_self needs as many negatives as generated vectors")
    if mask_positive_pairs and n_pos != n_gen:
        raise ValueError("mask_positive_pairs needs as many positives as generated vectors")
    if not radii:
        raise ValueError("radii must not be empty")

    gen_detached = generated.detach().float()
    # targets: [generated (w=1) | negatives (w-) | positives (w+)]           (B, T, D), T = N+M+P
    targets = torch.cat([gen_detached, negative.detach().float(), positive.detach().float()], dim=1)
    target_w = torch.cat(
        [
            gen_detached.new_ones(batch, n_gen),
            _weights(negative_weight, batch, n_neg, gen_detached),
            _weights(positive_weight, batch, n_pos, gen_detached),
        ],
        dim=1,
    )  # (B, T)

    dist = _pairwise_distance(gen_detached, targets)  # (B, N, T)
    # per set: the weighted mean distance over that set's (generated, target) pairs
    weighted = (dist * target_w[:, None, :]).mean(dim=(1, 2)) / target_w.mean(dim=1).clamp_min(1e-8)  # (B,)
    scale = weighted.clamp_min(1e-3)  # (B,)
    per_dim = _per_dim(scale, dim)[:, None, None]  # (B, 1, 1)
    dist = dist / scale[:, None, None]  # kernel distances in units of the set's mean distance: scale invariant

    # the self-copy of each generated vector (and its copy among the negatives, if any)
    mask = torch.zeros(n_gen, targets.shape[1], device=dist.device)
    eye = torch.eye(n_gen, device=dist.device)
    mask[:, :n_gen] = eye
    if mask_negative_self:
        mask[:, n_gen : 2 * n_gen] += eye
    if mask_positive_pairs:
        mask[:, n_gen + n_neg :] += eye
    if anchor_mask is not None:
        if anchor_mask.shape != (batch, n_gen, n_neg + n_pos):
            raise ValueError(f"anchor_mask must be ({batch}, {n_gen}, {n_neg + n_pos}); got {tuple(anchor_mask.shape)}")
        extra = torch.cat([anchor_mask.new_zeros(batch, n_gen, n_gen), anchor_mask], dim=-1).to(mask.dtype)
        mask = mask[None] + extra  # (B, N, T)

    gen_scaled = gen_detached / per_dim  # (B, N, D)
    targets_scaled = targets / per_dim  # (B, T, D)
    pos_start = n_gen + n_neg
    masked_dist = dist + _SELF_PENALTY * mask  # (B, N, T): the penalty is folded in once, scaled by 1/tau below
    force = torch.zeros_like(gen_scaled)
    force_rms: dict[float, float] = {}
    for tau in radii:
        logits = masked_dist * (-1.0 / tau)  # (B, N, T)
        # sqrt(softmax over targets * softmax over generated): fused softmaxes beat log-domain forms on CPU
        affinity = (logits.softmax(dim=-1) * logits.softmax(dim=-2)).clamp_min_(1e-6).sqrt_() * target_w[:, None, :]
        a_neg, a_pos = affinity[..., :pos_start], affinity[..., pos_start:]  # negatives include generated
        neg_mass, pos_mass = a_neg.sum(-1, keepdim=True), a_pos.sum(-1, keepdim=True)  # (B, N, 1)
        # c+ = A+ * sum A-, c- = -A- * sum A+; sum(c) = pos_mass*neg_mass - neg_mass*pos_mass = 0, so
        # the spec's "- (sum c) * gen" term vanishes identically and is left out
        f = torch.bmm(a_pos * neg_mass, targets_scaled[:, pos_start:]) - torch.bmm(a_neg * pos_mass, targets_scaled[:, :pos_start])
        rms = f.pow(2).mean(dim=(1, 2), keepdim=True).clamp_min(1e-8).sqrt()  # (B, 1, 1) per set
        force_rms[float(tau)] = float(rms.mean())
        force = force + f / rms

    goal = (gen_scaled + force).detach()
    loss = (generated.float() / per_dim - goal).pow(2).mean(dim=(-1, -2))  # (B,)
    return DriftResult(loss=loss, goal=goal, scale=scale.detach(), force_rms=force_rms)


def drift_vector(
    generated: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    **kwargs: object,
) -> torch.Tensor:
    """The (normalized, radius-summed) drift V at each generated vector, in scaled units (B, N, D)."""
    result = drift_loss(generated.detach(), positive, negative, **kwargs)  # type: ignore[arg-type]
    per_dim = _per_dim(result.scale, generated.shape[-1])[:, None, None]  # (B, 1, 1)
    return result.goal - generated.detach().float() / per_dim


def _per_dim(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-set distance scale (B,) -> per-coordinate scale (B,): s / sqrt(D), clamped."""
    return (scale / math.sqrt(dim)).clamp_min(1e-3)

"""Unit tests of the drift field itself (drpo_bench/drpo/field.py)."""

import pytest
import torch

from drpo_bench.drpo.field import drift_loss, drift_vector, pairwise_distance


def _sets(seed=0, b=2, n=32, d=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g), g


def raw_force(result):
    """Mean of the per-radius force RMS before normalization."""
    return sum(result.force_rms.values()) / len(result.force_rms)


def test_pairwise_distance_matches_cdist():
    x, _ = _sets()
    y, _ = _sets(1)
    torch.testing.assert_close(pairwise_distance(x, y), torch.cdist(x, y), atol=1e-4, rtol=1e-4)


def test_field_vanishes_when_positives_and_negatives_are_alike():
    gen, g = _sets()
    anchors = torch.randn(2, 16, 8, generator=g)
    alike = drift_loss(gen, anchors, anchors.clone())
    different = drift_loss(gen, anchors + 2.0, anchors - 2.0)
    # identical anchor sets cancel up to the generated set's own weight-1 repulsion (1/3000)
    assert raw_force(alike) < 1e-2 * raw_force(different)


def test_field_points_toward_positives():
    gen, _ = _sets(b=1, n=64)
    pos = gen + torch.tensor([3.0] + [0.0] * 7)
    neg = gen - torch.tensor([3.0] + [0.0] * 7)
    v = drift_vector(gen, pos, neg)  # (1, 64, 8)
    assert (v[..., 0] > 0).float().mean() > 0.95
    assert v[..., 0].mean() > 5 * v[..., 1:].abs().mean()


def test_gradient_descent_moves_generated_toward_positives():
    gen, g = _sets(b=1, n=32)
    pos = torch.randn(1, 16, 8, generator=g) + 4.0
    neg = torch.randn(1, 16, 8, generator=g) - 4.0
    x = gen.clone().requires_grad_(True)
    before = (x.detach().mean(1) - pos.mean(1)).norm()
    opt = torch.optim.Adam([x], lr=0.1)  # the loss is a mean over N*D entries: Adam undoes that scale
    for _ in range(60):
        opt.zero_grad()
        drift_loss(x, pos, neg).loss.sum().backward()
        opt.step()
    after = (x.detach().mean(1) - pos.mean(1)).norm()
    assert after < 0.5 * before


def test_self_masking_removes_attraction_to_own_copy():
    gen, _ = _sets(b=1, n=16)
    far = gen + 10.0
    unmasked = drift_vector(gen, far, gen.clone())
    masked = drift_vector(gen, far, gen.clone(), mask_negative_self=True)
    # without the mask the negatives include each vector's own copy at distance 0, which pins it
    assert not torch.allclose(unmasked, masked)
    with pytest.raises(ValueError, match="as many negatives"):
        drift_loss(gen, far, gen[:, :8], mask_negative_self=True)


def test_invariant_to_feature_scale():
    gen, g = _sets()
    pos, neg = torch.randn(2, 8, 8, generator=g) + 1, torch.randn(2, 8, 8, generator=g) - 1
    a = drift_loss(gen, pos, neg)
    b = drift_loss(gen * 37.0, pos * 37.0, neg * 37.0)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(a.goal, b.goal, rtol=1e-3, atol=1e-3)


def test_reference_drift_vanishes_when_policy_equals_reference():
    """With the pairing masked, the reference drift is exactly zero when both agree."""
    gen, _ = _sets(b=1, n=48)
    agree = drift_loss(gen, gen.clone(), gen, mask_negative_self=True, mask_positive_pairs=True)
    differ = drift_loss(gen, gen + 0.3, gen, mask_negative_self=True, mask_positive_pairs=True)
    assert raw_force(agree) < 1e-4 * raw_force(differ)


def test_reference_drift_unmasked_pairs_is_a_repulsion_when_equal():
    """Published default (pairs unmasked): when equal, what remains pushes candidates apart."""
    gen, _ = _sets(b=1, n=48)
    v = drift_vector(gen, gen.clone(), gen, mask_negative_self=True)
    centred = gen - gen.mean(dim=1, keepdim=True)
    outward = (v * centred).sum(-1)  # > 0: pointing away from the set's centre
    assert (outward > 0).float().mean() > 0.7


def test_loss_gradient_only_through_generated():
    gen, g = _sets()
    pos = torch.randn(2, 8, 8, generator=g).requires_grad_(True)
    neg = torch.randn(2, 8, 8, generator=g).requires_grad_(True)
    x = gen.clone().requires_grad_(True)
    drift_loss(x, pos, neg).loss.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert pos.grad is None and neg.grad is None


@pytest.mark.parametrize("bad", ["rank", "empty", "dim"])
def test_bad_shapes_are_clear_errors(bad):
    gen, _ = _sets()
    pos = {"rank": gen[0], "empty": gen[:, :0], "dim": gen[..., :4]}[bad]
    with pytest.raises(ValueError):
        drift_loss(gen, pos, gen)


def test_anchor_mask_lets_the_middle_candidates_feel_the_field():
    """DrPO's anchors are copies of generated candidates. Unmasked, each anchor's column softmax
    (over generated vectors) goes to its own original, so the middle candidates, which are
    neither positive nor negative, feel almost nothing; masking the copies hands them the field."""
    g = torch.Generator().manual_seed(3)
    gen = torch.randn(1, 12, 8, generator=g)
    gen[0, :4] += torch.tensor([4.0] + [0.0] * 7)  # candidates 0-3 (the positives) sit apart
    pos, neg = gen[:, :4].clone(), gen[:, 8:].clone()  # 4-7 are the middle candidates
    mask = torch.zeros(1, 12, 8, dtype=torch.bool)  # [negatives | positives]
    mask[0, torch.arange(8, 12), torch.arange(0, 4)] = True  # candidate 8+i is negative i
    mask[0, torch.arange(0, 4), torch.arange(4, 8)] = True  # candidate i is positive i
    anchors = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])

    def middle_share(v):
        norms = v[0].norm(dim=-1)
        return norms[4:8].mean() / norms[anchors].mean()

    pinned = drift_vector(gen, pos, neg, radii=(0.05,))
    freed = drift_vector(gen, pos, neg, radii=(0.05,), anchor_mask=mask)
    assert middle_share(pinned) < 0.05
    assert middle_share(freed) > 0.2
    assert (freed[0, 4:8, 0] > 0).all()  # and what they feel points toward the positives (+x)
    with pytest.raises(ValueError, match="anchor_mask"):
        drift_loss(gen, pos, neg, anchor_mask=mask[:, :, :5])


def test_own_copy_mask_marks_each_candidate_location_once():
    from drpo_bench.drpo.method import own_copy_mask

    k, l = 3, 2
    anchor_idx = torch.tensor([[2], [0]])  # prompt 0: candidate 2; prompt 1: candidate 0
    mask = own_copy_mask(anchor_idx, k, l)  # (P, K*L, n*L)
    assert mask.shape == (2, 6, 2)
    assert mask.sum() == 4  # one (generated, anchor) pair per location per prompt
    assert mask[0, 4, 0] and mask[0, 5, 1] and not mask[0, 4, 1]
    assert mask[1, 0, 0] and mask[1, 1, 1]


def _spec_drift_loss(gen, pos, neg, w_pos, w_neg, radii, mask_negative_self=False, mask_positive_pairs=False):
    """The spec's computation (docs/drpo.md) written out step by step, one set (prompt) at a time,
    as the public code calls it once per prompt (slow, for reference)."""
    losses, goals = zip(*(_spec_one_set(gen[i : i + 1], pos[i : i + 1], neg[i : i + 1], w_pos, w_neg, radii,
                                        mask_negative_self, mask_positive_pairs) for i in range(gen.shape[0])))
    return torch.cat(losses), torch.cat(goals)


def _spec_one_set(gen, pos, neg, w_pos, w_neg, radii, mask_negative_self, mask_positive_pairs):
    b, n, d = gen.shape
    assert b == 1
    targets = torch.cat([gen, neg, pos], dim=1)
    w = torch.cat([torch.ones(n), torch.full((neg.shape[1],), w_neg), torch.full((pos.shape[1],), w_pos)])
    dist = torch.cdist(gen, targets).clamp_min(1e-4)  # distances below 1e-4 (squared 1e-8) are clamped
    s = ((dist * w).mean() / w.mean()).clamp_min(1e-3)
    unit = s / d**0.5
    x, t = gen / unit, targets / unit
    penalty = torch.zeros(n, targets.shape[1])
    penalty[:, :n] += torch.eye(n)
    if mask_negative_self:
        penalty[:, n : 2 * n] += torch.eye(n)
    if mask_positive_pairs:
        penalty[:, n + neg.shape[1] :] += torch.eye(n)
    force = torch.zeros_like(x)
    for tau in radii:
        logits = -(dist / s) / tau - 100.0 / tau * penalty
        a = (logits.softmax(-1) * logits.softmax(-2)).clamp_min(1e-6).sqrt() * w
        a_neg, a_pos = a[..., : n + neg.shape[1]], a[..., n + neg.shape[1] :]
        c = torch.cat([-a_neg * a_pos.sum(-1, keepdim=True), a_pos * a_neg.sum(-1, keepdim=True)], dim=-1)
        f = c @ t - c.sum(-1, keepdim=True) * x
        force = force + f / f.pow(2).mean().sqrt()
    goal = x + force
    return ((x - goal) ** 2).mean(dim=(-1, -2)), goal


@pytest.mark.parametrize("masks", [(False, False), (True, False), (True, True)])
def test_batched_field_equals_the_spec_written_out(masks):
    gen, g = _sets(seed=4, b=3, n=20, d=6)
    pos = torch.randn(3, 20, 6, generator=g) + 0.5
    neg = gen.clone() if masks[0] else torch.randn(3, 7, 6, generator=g) - 0.5
    if masks[1]:
        pos = gen + 0.3 * torch.randn(3, 20, 6, generator=g)
    loss, goal = _spec_drift_loss(gen, pos, neg, 3000.0, 200.0, (0.02, 0.05, 0.2), *masks)
    result = drift_loss(gen, pos, neg, positive_weight=3000.0, negative_weight=200.0,
                        mask_negative_self=masks[0], mask_positive_pairs=masks[1])
    torch.testing.assert_close(result.goal, goal, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.loss, loss, rtol=1e-4, atol=1e-5)


def test_one_call_over_sets_of_very_different_spreads_equals_separate_calls():
    """Prompts must not scale each other: the distance scale and force RMS are per set."""
    g = torch.Generator().manual_seed(11)
    spreads = (1.0, 0.2, 3.0)
    gen = torch.cat([s * torch.randn(1, 24, 16, generator=g) for s in spreads])  # (3, 24, 16)
    pos = torch.cat([s * (torch.randn(1, 8, 16, generator=g) + 0.5) for s in spreads])
    neg = torch.cat([s * (torch.randn(1, 8, 16, generator=g) - 0.5) for s in spreads])

    def grad_of(call):
        x = gen.clone().requires_grad_(True)
        call(x).backward()
        return x.grad.flatten()

    batched = grad_of(lambda x: drift_loss(x, pos, neg).loss.sum())
    separate = grad_of(lambda x: sum(drift_loss(x[i : i + 1], pos[i : i + 1], neg[i : i + 1]).loss.sum() for i in range(3)))
    cosine = torch.nn.functional.cosine_similarity(batched, separate, dim=0)
    assert cosine >= 0.999
    assert abs(batched.norm() / separate.norm() - 1) < 1e-3
    for i in range(3):  # and set by set, not only overall
        rows = slice(i * 24 * 16, (i + 1) * 24 * 16)
        assert abs(batched[rows].norm() / separate[rows].norm() - 1) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_field_is_float32_under_autocast(dtype):
    """Anchor weights of 3000 push the affinities past float16's range: the field must not autocast."""
    gen, g = _sets(seed=5, b=2, n=24, d=32)
    pos, neg = gen[:, :8].clone() + 0.1, gen[:, 16:].clone() - 0.1
    reference = drift_loss(gen, pos, neg)
    with torch.autocast("cpu", dtype=dtype):
        mixed = drift_loss(gen, pos, neg)
    assert mixed.loss.dtype == torch.float32 and torch.isfinite(mixed.loss).all()
    torch.testing.assert_close(mixed.loss, reference.loss)


# ---- the arguments' edges: per-set weights, small scales, one negative, defaults, errors ----------


def test_defaults_are_the_papers_weights_and_radii():
    import inspect

    params = inspect.signature(__import__("drpo_bench.drpo.field", fromlist=["_drift_loss"])._drift_loss).parameters
    assert params["positive_weight"].default == 3000.0 and params["negative_weight"].default == 3000.0
    assert tuple(params["radii"].default) == (0.02, 0.05, 0.2)
    gen, g = _sets(seed=6, b=2, n=10, d=4)
    pos, neg = torch.randn(2, 5, 4, generator=g) + 1, torch.randn(2, 5, 4, generator=g) - 1
    torch.testing.assert_close(drift_loss(gen, pos, neg).loss, drift_loss(
        gen, pos, neg, positive_weight=3000.0, negative_weight=3000.0, radii=(0.02, 0.05, 0.2)).loss)


def test_per_set_and_per_anchor_weights_equal_separate_calls_with_scalar_weights():
    """Weights as (B, count) tensors: each set uses its own row (its distance scale included)."""
    gen, g = _sets(seed=7, b=2, n=12, d=5)
    pos, neg = torch.randn(2, 6, 5, generator=g) + 0.5, torch.randn(2, 4, 5, generator=g) - 0.5
    w_pos, w_neg = torch.tensor([[0.3] * 6, [2000.0] * 6]), torch.tensor([[0.2] * 4, [50.0] * 4])
    batched = drift_loss(gen, pos, neg, positive_weight=w_pos, negative_weight=w_neg)
    for i in range(2):
        alone = drift_loss(gen[i : i + 1], pos[i : i + 1], neg[i : i + 1], positive_weight=float(w_pos[i, 0]),
                           negative_weight=float(w_neg[i, 0]))
        torch.testing.assert_close(batched.loss[i : i + 1], alone.loss, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(batched.goal[i : i + 1], alone.goal, rtol=1e-5, atol=1e-6)
    per_anchor = drift_loss(gen, pos, neg, positive_weight=torch.full((6,), 7.0), negative_weight=torch.full((4,), 0.5))
    torch.testing.assert_close(per_anchor.loss, drift_loss(gen, pos, neg, positive_weight=7.0, negative_weight=0.5).loss)
    as_double = drift_loss(gen, pos, neg, positive_weight=torch.full((6,), 7.0, dtype=torch.float64), negative_weight=0.5)
    assert as_double.loss.dtype == torch.float32, "weights are cast to the features' float32"
    with pytest.raises(ValueError, match=r"anchor weights must be scalar, \(6,\) or \(2, 6\); got \(2, 3\)"):
        drift_loss(gen, pos, neg, positive_weight=torch.ones(3))


@pytest.mark.parametrize("scale", [0.01, 1.0])
def test_small_weights_and_small_scales_match_the_spec(scale):
    """Weights below 1 and features far below unit scale, where no clamp may bite: the spec written out."""
    gen, g = _sets(seed=8, b=2, n=10, d=4)
    gen = gen * scale
    pos, neg = scale * (torch.randn(2, 6, 4, generator=g) + 0.5), scale * (torch.randn(2, 1, 4, generator=g) - 0.5)
    loss, goal = _spec_drift_loss(gen, pos, neg, 0.4, 0.2, (0.05, 0.2))
    result = drift_loss(gen, pos, neg, positive_weight=0.4, negative_weight=0.2, radii=(0.05, 0.2))
    torch.testing.assert_close(result.loss, loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.goal, goal, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    ("rank", r"generated must be \(B, N, D\); got \(8, 8\)"),
    ("rank_pos", r"positive must be \(B, N, D\); got \(4, 8\)"),
    ("rank_neg", r"negative must be \(B, N, D\); got \(3, 8\)"),
    ("sets", "generated, positive and negative must have the same number of sets B"),
    ("dim", "generated, positive and negative must have the same feature dimension D"),
    ("empty", "the drift field needs at least one positive and one negative vector"),
    ("radii", "radii must not be empty"),
    ("pairs", "mask_positive_pairs needs as many positives as generated vectors"),
    ("self", "mask_negative_self needs as many negatives as generated vectors"),
    ("anchor_mask", r"anchor_mask must be \(1, 8, 7\); got \(1, 8, 5\)"),
])
def test_each_bad_argument_is_named(bad, match):
    gen, g = _sets(seed=9, b=1, n=8, d=8)
    pos, neg = torch.randn(1, 4, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    call = {
        "rank": lambda: drift_loss(gen[0], pos, neg),
        "rank_pos": lambda: drift_loss(gen, pos[0], neg),
        "rank_neg": lambda: drift_loss(gen, pos, neg[0]),
        "sets": lambda: drift_loss(gen, pos, torch.cat([neg, neg])),
        "dim": lambda: drift_loss(gen, pos, neg[..., :4]),
        "empty": lambda: drift_loss(gen, pos, neg[:, :0]),
        "radii": lambda: drift_loss(gen, pos, neg, radii=()),
        "pairs": lambda: drift_loss(gen, pos, neg, mask_positive_pairs=True),
        "self": lambda: drift_loss(gen, pos, neg, mask_negative_self=True),
        "anchor_mask": lambda: drift_loss(gen, pos, neg, anchor_mask=torch.zeros(1, 8, 5, dtype=torch.bool)),
    }[bad]
    with pytest.raises(ValueError, match=f"^{match}$"):  # the whole message, as the user reads it
        call()

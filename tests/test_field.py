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

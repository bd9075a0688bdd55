"""The statistics inside scripts/feature_neighborhoods.py (the DrPO feature-space diagnostic)."""

import importlib.util
from pathlib import Path

import torch
from scipy.stats import spearmanr

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "feature_neighborhoods.py"


def _script():
    spec = importlib.util.spec_from_file_location("feature_neighborhoods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rank_correlation_matches_scipy_with_ties():
    fn = _script().rank_correlation
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 8), generator=g).float()  # many ties, as checker scores have
    b = torch.randn(5, 8, generator=g)
    ours = fn(a, b)
    for i in range(5):
        assert abs(float(ours[i]) - spearmanr(a[i].numpy(), b[i].numpy()).statistic) < 1e-5


def test_neighbourhood_signal_is_high_when_features_encode_the_reward_and_low_when_not():
    signal = _script().neighbourhood_signal
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(64, 16, generator=g)
    informative = scores[..., None]  # a 1-D feature equal to the reward
    noise = torch.randn(64, 16, 8, generator=g)
    assert signal(informative, scores) > 0.8
    assert abs(signal(noise, scores)) < 0.1

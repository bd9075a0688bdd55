"""The shapes world's learned reward (shapes-clip): shipped weights, gradients, agreement, training."""

from __future__ import annotations

import pytest
import torch

from drpo_bench.errors import MissingWeightsError
from drpo_bench.registry import REWARDS
from drpo_bench.shapes.grammar import prompt_split
from drpo_bench.shapes.render import render_batch
from drpo_bench.shapes.reward_eval import hard_negative_accuracy, rankdata, spearman
from drpo_bench.shapes.reward_model import SIZES, ShapesCLIP, default_weights, measure_flops, tokenize


def _reward(**args):
    entry = REWARDS.get("shapes-clip")
    return entry.cls(entry.parse_config(args))


@pytest.fixture(scope="module")
def small():
    return _reward(size="small")


def test_shipped_weights_load_through_the_registry_with_their_provenance(small):
    assert default_weights("small").is_file() and default_weights("large").is_file()
    for key in ("seed", "steps", "script", "final_loss", "size"):
        assert key in small.metadata
    assert small.metadata["size"] == "small" and small.differentiable and small.higher_is_better


def test_gradients_reach_the_images(small):
    images = render_batch(["a red circle", "two blue squares"], seed=0).requires_grad_(True)
    scores = small(images, ["a red circle", "two blue squares"])
    assert scores.shape == (2,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_prefers_the_true_prompt_over_hard_negatives_on_held_out_prompts(small):
    result = hard_negative_accuracy(small, prompt_split("eval"), renders=1, seed=5)
    assert result["accuracy"] >= 0.75, result


def test_large_model_loads_and_scores(small):
    large = _reward(size="large")
    images = render_batch(["a square and a circle"] * 2, seed=1)
    assert large(images, ["a square and a circle", "a triangle and a circle"]).shape == (2,)


def test_large_costs_about_twenty_times_the_flops_of_small():
    ratio = measure_flops(ShapesCLIP(SIZES["large"]), 32)["flops_per_pair"] / measure_flops(ShapesCLIP(SIZES["small"]), 32)["flops_per_pair"]
    assert 15 <= ratio <= 25


def test_missing_weights_and_bad_prompts_fail_clearly(tmp_path):
    with pytest.raises(MissingWeightsError, match="train_reward"):
        _reward(weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="vocabulary"):
        tokenize(["a purple dog"])


def test_spearman_handles_ties_like_scipy():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [1, 3, 3, 10]) == pytest.approx(0.9486833, abs=1e-6)


@pytest.fixture
def one_thread():
    """Tiny ops: one thread is faster, and on a busy 2-core box 2 threads can be 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_short_training_run_starts_and_its_loss_falls(tmp_path, one_thread):
    from drpo_bench.shapes.reward_model import load_model
    from drpo_bench.shapes.train_reward import TrainConfig, train

    out = tmp_path / "clip.safetensors"
    summary = train(TrainConfig(size="small", steps=30, batch=64, seed=0), out, quiet=True)
    assert summary["final_loss"] < summary["initial_loss"]
    model, metadata = load_model(out)
    assert metadata["steps"] == "30" and metadata["seed"] == "0"

"""The expensive-reward suite (suites/shapes-large-reward.yaml) and its cost premise.

The suite exists to put the shapes world in the paper's regime, where one reward forward costs at
least as much as the generator's sample + decode (HPSv3 ~7B next to SD-Turbo ~0.9B). The premise is
checked with the ledger's own counter (``torch.utils.flop_counter.FlopCounterMode`` with the CPU
attention formulas registered), on the suite's own training reward, so swapping the small reward
back in fails here. See docs/large-reward.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from drpo_bench.commands.main import main as cli_main
from drpo_bench.suite.config import ComponentSpec, load_suite
from drpo_bench.compute.flops import register_cpu_attention_formulas
from drpo_bench.registry import GENERATORS, REWARDS, load_builtins
from drpo_bench.run.cell_runner import build

SUITE = Path(__file__).resolve().parents[1] / "suites" / "shapes-large-reward.yaml"
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", "three purple circles"]


def _flops(fn) -> float:  # noqa: ANN001
    register_cpu_attention_formulas()  # as the ledger does before counting
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def _generator_and_images(spec: ComponentSpec) -> tuple[float, torch.Tensor]:
    """Per-image FLOPs of the generator's sample + decode (the ledger's two phases) and its images."""
    gen = build(GENERATORS, ComponentSpec(name=spec.name, args={**spec.args, "device": "cpu"}))
    noise = gen.noise(len(PROMPTS), torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = gen.encode(PROMPTS)  # the text encoder runs outside sample/decode (cached per prompt)
    out: dict[str, torch.Tensor] = {}

    def run() -> None:
        out["images"] = gen.decode(gen.sample(noise, cond))  # (B, 3, 32, 32)

    return _flops(run) / len(PROMPTS), out["images"]


def _reward_flops(spec: ComponentSpec, images: torch.Tensor) -> float:
    """Per-image FLOPs of one reward forward (text embeddings cached first, as in training)."""
    reward = build(REWARDS, spec)
    with torch.no_grad():
        reward.score(images, PROMPTS)  # warms the per-prompt text cache
    return _flops(lambda: reward.score(images, PROMPTS)) / len(PROMPTS)


def test_suite_validates() -> None:
    assert cli_main(["validate", str(SUITE)]) == 0


def test_reward_forward_costs_at_least_the_generator() -> None:
    load_builtins()
    suite = load_suite(SUITE)
    assert len(suite.train_rewards) == 1 and len(suite.generators) == 1
    train_reward = suite.rewards[suite.train_rewards[0]]
    generator_flops, images = _generator_and_images(suite.generators[0])
    reward_flops = _reward_flops(train_reward, images)
    assert generator_flops > 0 and reward_flops > 0
    assert reward_flops >= generator_flops, (
        f"{train_reward.name} {train_reward.args}: {reward_flops / 1e6:.1f} MFLOP per image forward < the generator's "
        f"{generator_flops / 1e6:.1f} MFLOP per image sample + decode; this suite needs the expensive reward"
    )
    # the check discriminates: the quickstart's small reward sits far below the generator
    small = ComponentSpec(name="shapes-clip", args={"size": "small"})
    assert _reward_flops(small, images) < generator_flops


def test_views_multiply_the_forward_cost() -> None:
    """`views: V` scores V 1-px-shifted copies: V x the forward FLOPs; views 1 is the plain score."""
    images = torch.rand(len(PROMPTS), 3, 32, 32)  # (B, 3, 32, 32)
    one = ComponentSpec(name="shapes-clip", args={"size": "large"})
    two = ComponentSpec(name="shapes-clip", args={"size": "large", "views": 2})
    f1, f2 = _reward_flops(one, images), _reward_flops(two, images)
    assert f2 == pytest.approx(2 * f1, rel=0.01)
    reward = build(REWARDS, one)
    model = reward.model
    with torch.no_grad():
        plain = model.scale() * (model.embed_images(images) * reward._texts(PROMPTS)).sum(-1)
        assert torch.allclose(reward.score(images, PROMPTS), plain)

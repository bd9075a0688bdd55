"""The shapes checker as a reward: a black-box program, GenEval-style (not differentiable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.shapes.checker import check_batch


@REWARDS.register("shapes-checker")
class ShapesChecker(Reward):
    """Fraction of a shapes prompt's constraints that the image satisfies (pixels only)."""

    differentiable: ClassVar[bool] = False
    scale: ClassVar[str] = "fraction of the prompt's constraints satisfied, 0..1"
    definition: ClassVar[dict[str, str]] = {
        "model": "shapes checker (program reading pixels: drpo_bench.shapes.checker)",
        "version": "shapes world",
        "formula": "(constraints of the prompt the image satisfies) / (constraints of the prompt)",
    }

    class Config(StrictConfig):
        pass

    def __init__(self, config: StrictConfig | None = None) -> None:
        self.config = config or self.Config()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        # (B, 3, H, W) -> (B,), on the images' device
        return check_batch(images, prompts).to(images.device)

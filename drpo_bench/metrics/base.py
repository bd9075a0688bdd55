"""The Metric seam: scores a set of evaluation samples."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from drpo_bench.registry import StrictConfig


@dataclass
class EvalSamples:
    """Held-out samples of one cell: ``images_per_prompt`` images for each prompt, grouped.

    Row i of images/latents belongs to prompt ``prompts[i]`` and group ``groups[i]`` (the
    index of its prompt in the eval split); ``tasks[i]`` is that prompt's task tag or None.
    """

    images: torch.Tensor  # (N, 3, H, W) in [0, 1], CPU
    latents: torch.Tensor  # (N, *latent_shape), CPU
    prompts: Sequence[str]
    groups: torch.Tensor  # (N,) long
    tasks: Sequence[str | None]


@dataclass
class MetricValue:
    """One reported number: overall mean, per-image values for CIs, optional breakdown."""

    mean: float
    higher_is_better: bool
    per_task: dict[str, float] | None = None


class Metric(abc.ABC):
    registry_name: str = "metric"
    Config: ClassVar[type[StrictConfig]] = StrictConfig
    higher_is_better: ClassVar[bool] = True

    def __init__(self, config: StrictConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def compute(self, samples: EvalSamples) -> dict[str, MetricValue]:
        """Named values; the usual case is one entry named after the metric."""

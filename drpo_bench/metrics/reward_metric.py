"""Any Reward as an eval metric: the mean reported score, and per task when prompts carry tasks.

Reported score = ``reward.report_scale`` x ``reward(images, prompts)``: the scale of the DrPO
paper's tables (PickScore, CLIP and HPSv2 cosines x100, ImageReward x10, aesthetics as is), while
training keeps the reward's raw score. The value carries ``reward.describe()`` as its definition.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from drpo_bench.metrics.base import EvalSamples, Metric, MetricValue
from drpo_bench.registry import StrictConfig
from drpo_bench.rewards.base import Reward


class RewardMetric(Metric):
    """Scores every eval image with a reward (built from a suite's reward alias), on the paper's scale."""

    def __init__(self, reward: Reward, label: str, batch_size: int = 64) -> None:
        super().__init__(StrictConfig())
        self.reward, self.label, self.batch_size = reward, label, batch_size
        self.higher_is_better = reward.higher_is_better  # type: ignore[misc]

    def definitions(self) -> dict[str, dict[str, Any]]:
        return {self.label: {**self.reward.describe(), "reward": self.reward.registry_name}}

    @torch.no_grad()
    def compute(self, samples: EvalSamples) -> dict[str, MetricValue]:
        def score() -> torch.Tensor:
            scores = []
            for start in range(0, len(samples.prompts), self.batch_size):
                end = start + self.batch_size
                scores.append(self.reward(samples.images[start:end], list(samples.prompts[start:end])).float().cpu())
            return float(self.reward.report_scale) * torch.cat(scores)  # (N,) on the reporting scale

        # each image scored alone: the head of a final evaluation reads its rows of the same scores
        values = samples.per_row(("reward", self.label, id(self.reward)), score)
        per_task: dict[str, list[float]] = defaultdict(list)
        for task, value in zip(samples.tasks, values.tolist()):
            if task is not None:
                per_task[task].append(value)
        return {
            self.label: MetricValue(
                mean=float(values.mean()),
                higher_is_better=self.reward.higher_is_better,
                per_task={t: sum(v) / len(v) for t, v in sorted(per_task.items())} or None,
                definition=self.definitions()[self.label],
                per_image=values.tolist(),
            )
        }

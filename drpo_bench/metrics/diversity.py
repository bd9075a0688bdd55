"""Diversity: mean pairwise feature distance among the samples of one prompt."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from drpo_bench.drpo.field import pairwise_distance
from drpo_bench.metrics.base import EvalSamples, Metric, MetricValue
from drpo_bench.registry import FEATURES, METRICS, StrictConfig


@METRICS.register("diversity")
class Diversity(Metric):
    """Mean pairwise L2 distance between pooled features of same-prompt samples (higher = more diverse)."""

    higher_is_better = True
    definition: ClassVar[dict[str, Any]] = {
        "model": "image features of the `features` encoder (default shapes-multiscale)",
        "version": "drpo-bench",
        "formula": "mean over prompts of the mean pairwise L2 distance between same-prompt images, each image "
                   "one vector: every feature key mean-pooled over locations, unit-normalized, concatenated",
        "scale": 1.0,
    }

    class Config(StrictConfig):
        features: str = "shapes-multiscale"  # a registered image feature encoder
        feature_args: dict[str, Any] = Field(default_factory=dict)  # its config
        # images per encoder forward: one forward over all 1,568 quickstart eval images took 2.3x as
        # long on a CPU as 25 of 64 (cache); the vectors do not depend on it beyond float rounding
        batch_size: int = Field(64, ge=1)

    def definitions(self) -> dict[str, dict[str, Any]]:
        args = f" {self.config.feature_args}" if self.config.feature_args else ""
        return {"diversity": {**self.definition, "model": f"image features of {self.config.features}{args}"}}

    @torch.no_grad()
    def compute(self, samples: EvalSamples) -> dict[str, MetricValue]:
        def pool() -> torch.Tensor:
            entry = FEATURES.get(self.config.features)
            encoder = entry.cls(entry.parse_config(self.config.feature_args))
            if encoder.input_space != "images":
                raise ValueError(f"diversity needs an image feature encoder; {self.config.features} reads "
                                 f"{encoder.input_space}")
            vectors = []
            for start in range(0, samples.images.shape[0], self.config.batch_size):
                pooled = encoder.pooled(samples.images[start : start + self.config.batch_size])  # {key: (b, D)}
                # one vector per image: each key pooled over locations and unit-normalized, then joined
                vectors.append(torch.cat(
                    [torch.nn.functional.normalize(f.float(), dim=-1) for _, f in sorted(pooled.items())], dim=-1))
            return torch.cat(vectors)  # (N, sum D)

        # one image's vector does not depend on the others: the head of a final evaluation reads its rows
        pooled = samples.per_row(("diversity", self.config.features, repr(sorted(self.config.feature_args.items()))), pool)
        distances = []
        for group in samples.groups.unique():
            members = pooled[samples.groups == group]  # (n, F)
            n = members.shape[0]
            if n < 2:
                continue
            d = pairwise_distance(members[None], members[None])[0]  # (n, n)
            distances.append(d[~torch.eye(n, dtype=torch.bool)].mean())
        if not distances:
            raise ValueError("diversity needs at least 2 images per prompt: raise eval.images_per_prompt")
        return {"diversity": MetricValue(mean=float(torch.stack(distances).mean()), higher_is_better=True,
                                         definition=self.definitions()["diversity"])}

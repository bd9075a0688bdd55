"""The Metric seam: scores a set of evaluation samples."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from drpo_bench.registry import StrictConfig


@dataclass
class EvalSamples:
    """Held-out samples of one cell: ``images_per_prompt`` images for each prompt, grouped.

    Row i of images/latents belongs to prompt ``prompts[i]`` and group ``groups[i]`` (the
    index of its prompt in the eval split); ``tasks[i]`` is that prompt's task tag or None.

    ``per_row(key, compute)``: a metric's per-image intermediate (a reward's scores, an image's
    features), a tensor or a dict of tensors with one row per sample, computed once for these
    samples; ``head(rows)`` hands its first rows to the head, so the metrics of the first prompts
    come from the same per-image numbers instead of a second pass over those images.
    """

    images: torch.Tensor  # (N, 3, H, W) in [0, 1], CPU
    latents: torch.Tensor  # (N, *latent_shape), CPU
    prompts: Sequence[str]
    groups: torch.Tensor  # (N,) long
    tasks: Sequence[str | None]
    _per_row: dict[Any, Any] = field(default_factory=dict, repr=False)

    def per_row(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (a (N, ...) tensor or {name: (N, ...) tensor}) once per ``key`` for these samples."""
        if key not in self._per_row:
            value = compute()
            for tensor in value.values() if isinstance(value, dict) else (value,):
                if tensor.shape[0] != self.images.shape[0]:
                    raise ValueError(f"per_row {key!r}: {tensor.shape[0]} rows for {self.images.shape[0]} samples")
            self._per_row[key] = value
        return self._per_row[key]

    def head(self, rows: int) -> EvalSamples:
        """The first ``rows`` samples (whole prompts when ``rows`` is a multiple of images per prompt),
        with the first ``rows`` of every per-row intermediate computed so far."""
        sliced = {key: ({name: t[:rows] for name, t in value.items()} if isinstance(value, dict) else value[:rows])
                  for key, value in self._per_row.items()}
        return EvalSamples(images=self.images[:rows], latents=self.latents[:rows], prompts=self.prompts[:rows],
                           groups=self.groups[:rows], tasks=self.tasks[:rows], _per_row=sliced)


@dataclass
class MetricValue:
    """One reported number: overall mean, optional per-task breakdown, and what the number is.

    ``definition``: {"model", "version", "formula", "scale", ...} of this value (see
    ``Metric.definitions``), for ``cell.json`` and the report's footnotes.
    """

    mean: float
    higher_is_better: bool
    per_task: dict[str, float] | None = None
    definition: dict[str, Any] | None = None
    #: one value per eval image (row order of EvalSamples), for metrics that score images one by one
    per_image: list[float] | None = None


class Metric(abc.ABC):
    """Scores a cell's eval samples. Every metric states what its numbers are: ``definition``
    ({"model": what computes it, "version", "formula": the reported number, "scale": the factor
    already applied}) for its one output named ``registry_name``; metrics with other or several
    outputs override ``definitions()``. ``compute`` attaches each output's definition to its
    ``MetricValue``.
    """

    registry_name: str = "metric"
    Config: ClassVar[type[StrictConfig]] = StrictConfig
    higher_is_better: ClassVar[bool] = True
    #: model / version / formula / scale of the reported number; never empty for a registered metric
    definition: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: StrictConfig) -> None:
        self.config = config

    def definitions(self) -> dict[str, dict[str, Any]]:
        """Output name -> definition, for every name ``compute`` returns (its config taken into account)."""
        return {self.registry_name: dict(self.definition)}

    @abc.abstractmethod
    def compute(self, samples: EvalSamples) -> dict[str, MetricValue]:
        """Named values; the usual case is one entry named after the metric."""

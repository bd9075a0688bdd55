"""The Reward seam: images and prompts in, one float per image out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch

from drpo_bench.errors import NonFiniteError
from drpo_bench.registry import StrictConfig


class Reward(abc.ABC):
    """A reward model or program.

    ``differentiable``: whether ``score`` propagates gradients to ``images``. Only such rewards
    may train reward-backprop methods (DRaFT, ...); pairing one with a non-differentiable
    reward is a config error caught by ``validate``. A reward may be a black box: a program,
    a detector, a remote process.

    What the number is, stated by every reward (written into each ``cell.json`` and the report):

    - ``scale``: one line on the range of what ``score`` returns, the raw number training sees,
      e.g. "cosine; ~0.27-0.30 for SD images" (also what ``serve-reward`` sends in ``/info``);
    - ``report_scale``: reported number = ``report_scale`` x score, the factor that puts the
      score on the DrPO paper's tables (CLIP and HPSv2 cosines x100, ImageReward x10, aesthetics
      x1; PickScore's logit_scale x cosine is already there: 100 / logit_scale). Only eval metrics
      apply it (``RewardMetric``); training always sees the unscaled score;
    - ``definition``: {"model": weights or program, "version": ..., "formula": the reported
      number, "score": what ``score`` returns when that differs}; ``describe()`` adds
      "scale" (= report_scale) and "range" (= ``scale``). Rewards whose definition depends on
      their config set ``self.definition`` / ``self.report_scale`` in ``__init__``.
    """

    registry_name: str = "reward"
    differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    #: one line on the range of the raw score, e.g. "logit_scale * cosine, ~20-24 for SD images"
    scale: ClassVar[str] = ""
    #: reported = report_scale * score: the paper tables' factor (CLIP/HPSv2 cosine x100, ImageReward x10)
    report_scale: ClassVar[float] = 1.0
    #: model / version / formula of the reported number (see the class docstring); never empty for a registered reward
    definition: ClassVar[dict[str, str]] = {}
    #: serve-reward may score several clients' waiting requests in one call (same image size): True for
    #: a per-image score; False when an image's score depends on the rest of its batch
    merge_requests: ClassVar[bool] = True

    @classmethod
    def class_definition(cls) -> dict[str, Any]:
        """The definition with the class defaults (no weights loaded): what a suite gets unless its args change it."""
        return definition_record(cls.definition, cls.report_scale, cls.scale)

    def describe(self) -> dict[str, Any]:
        """This instance's definition (its config and loaded weights taken into account)."""
        return definition_record(self.definition, self.report_scale, self.scale)

    @abc.abstractmethod
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] and B prompts -> (B,) float32 scores."""

    def to(self, device: torch.device | str) -> Reward:  # noqa: B027 - optional hook
        """Move any weights to ``device``; returns self."""
        return self

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.registry_name}: expected images (B, 3, H, W), got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.registry_name}: {images.shape[0]} images but {len(prompts)} prompts")
        if self.differentiable and torch.is_grad_enabled():
            scores = self.score(images, prompts)
        else:
            with torch.no_grad():
                scores = self.score(images, prompts)
        check_finite_scores(scores, self.registry_name)
        return scores


def check_finite_scores(scores: torch.Tensor, reward: str) -> None:
    """A NaN or infinite score would rank first or last by accident: stop with a diagnosis instead."""
    bad = ~torch.isfinite(scores.detach())
    if bool(bad.any()):
        values = scores.detach()[bad].flatten()[:3].tolist()
        raise NonFiniteError(f"reward from `{reward}`",
                             f"{int(bad.sum())} of {scores.numel()} scores are not finite (e.g. {values}); "
                             "check the reward model and its inputs")


#: the dtype a reward model's weights run in
RewardDType = Literal["auto", "fp32", "fp16", "bf16"]


class DeviceConfig(StrictConfig):
    """Where a reward runs: the field every reward with a model shares."""

    device: str = "auto"  # "auto" = cuda if available, else cpu


class ModelConfig(DeviceConfig):
    """Device and dtype of a reward model's weights."""

    dtype: RewardDType = "auto"  # fp16 on CUDA, fp32 on CPU


def definition_record(definition: dict[str, str], report_scale: float, scale: str) -> dict[str, Any]:
    """{"model", "version", "formula", ...} + "scale" (reported / score) + "range" (of the raw score)."""
    return {**definition, "scale": float(report_scale), "range": scale}

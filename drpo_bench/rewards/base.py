"""The Reward seam: images and prompts in, one float per image out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch


class Reward(abc.ABC):
    """A reward model or program.

    ``differentiable``: whether ``score`` propagates gradients to ``images``. Only such rewards
    may train reward-backprop methods (DRaFT, ...); pairing one with a non-differentiable
    reward is a config error caught by ``validate``. A reward may be a black box: a program,
    a detector, a remote process.
    """

    registry_name: str = "reward"
    differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    #: one line on the score's scale, e.g. "logit_scale * cosine, ~20-24 for SD images"
    scale: ClassVar[str] = ""

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
            return self.score(images, prompts)
        with torch.no_grad():
            return self.score(images, prompts)

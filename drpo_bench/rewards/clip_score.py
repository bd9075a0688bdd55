"""CLIP score (Hessel et al., 2021, "CLIPScore"): 100 · max(cos(image, text), 0).

The torchmetrics / CLIPScore-paper convention (w = 1, scaled by 100, negatives clipped to 0),
with OpenAI CLIP ViT-L/14 by default. Differentiable where the cosine is positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.rewards.clip_common import CLIPEmbedder, RewardDType
from drpo_bench.weights import resolve_folder


class CLIPScoreConfig(StrictConfig):
    pretrained: str = "openai/clip-vit-large-patch14"  # CLIP with tokenizer and processor config in one folder
    revision: str | None = None  # hub revision; None = what the cache has
    dtype: RewardDType = "auto"  # fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # "auto" = cuda if available, else cpu


@REWARDS.register("clip-score")
class CLIPScore(Reward):
    """CLIP score: 100 · max(cos(image, text), 0) with CLIP ViT-L/14."""

    Config: ClassVar[type[StrictConfig]] = CLIPScoreConfig
    differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "100 x max(cosine, 0); ~25-35 for prompt-faithful images"

    def __init__(self, config: CLIPScoreConfig) -> None:
        self.config = config
        folder = self.folder()
        self.clip = CLIPEmbedder(folder, folder, what="CLIP score", hub_hint="openai/clip-vit-large-patch14",
                                 device=config.device, dtype=config.dtype)

    def folder(self) -> Path:
        return resolve_folder(self.config.pretrained, what="CLIP weights", revision=self.config.revision,
                              must_contain=("config.json",), hub_id="openai/clip-vit-large-patch14")

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cos = (self.clip.image_embeds(images) * self.clip.text_embeds(list(prompts))).sum(-1)  # (B,)
        return (100.0 * cos.clamp(min=0)).to(images.device)

    def to(self, device: torch.device | str) -> CLIPScore:
        self.clip.to(device)
        return self


class TinyConfig(StrictConfig):
    device: str = "cpu"  # tests and CPU smoke runs
    dtype: RewardDType = "fp32"  # exact CPU math for tests


@REWARDS.register("clip-score-tiny")
class CLIPScoreTiny(CLIPScore):
    """CLIP score with a tiny random-init CLIPModel (built offline, cached): for tests."""

    Config: ClassVar[type[StrictConfig]] = TinyConfig

    def folder(self) -> Path:
        from drpo_bench.testing import make_tiny_clip

        return make_tiny_clip()

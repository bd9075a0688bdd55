"""CLIP score with OpenAI CLIP ViT-L/14: the public DrPO eval's definition by default.

``formula: cosine`` (default): score = cos(image, text) of the L2-normalized CLIP embeddings, no
logit scale, no clipping, exactly what the public DrPO eval computes for its "clip" column
(UGVly/DrPO ``src/inference/metric_components/reward_models.py``, ``score_clip_aes``; the same in
``src/drpo/rewards.py``, ``CLIPSelector.score``, which its trainers use as the "clip" reward). The
paper's tables print it x100 (``report_scale`` = 100: e.g. 25.88 for a cosine of 0.2588).

``formula: clipscore``: 100 · max(cos, 0), the CLIPScore convention (Hessel et al., 2021,
arXiv:2104.08718, with w = 1; torchmetrics' ``CLIPScore``), reported as is. It differs from the
default only where the cosine is negative (clipped to 0) and in scale.

Differentiable (where the cosine is positive, for ``clipscore``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch

from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.rewards.clip_common import CLIPEmbedder, RewardDType
from drpo_bench.weights import resolve_folder


class CLIPScoreConfig(StrictConfig):
    pretrained: str = "openai/clip-vit-large-patch14"  # CLIP with tokenizer and processor config in one folder
    revision: str | None = None  # hub revision; None = what the cache has
    formula: Literal["cosine", "clipscore"] = "cosine"  # cosine: the public DrPO eval's; clipscore: 100*max(cos, 0)
    dtype: RewardDType = "auto"  # fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # "auto" = cuda if available, else cpu


@REWARDS.register("clip-score")
class CLIPScore(Reward):
    """CLIP score with CLIP ViT-L/14: cos(image, text) (reported x100), or 100 · max(cos, 0) with ``formula: clipscore``."""

    Config: ClassVar[type[StrictConfig]] = CLIPScoreConfig
    differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "cosine, ~0.25-0.35 for prompt-faithful images (clipscore: 100 x max(cosine, 0))"
    report_scale: ClassVar[float] = 100.0  # the paper's CLIP column is the cosine x100; 1 for formula clipscore
    definition: ClassVar[dict[str, str]] = {
        "model": "openai/clip-vit-large-patch14",
        "version": "ViT-L/14",
        "formula": "100 * cos(image_embeds, text_embeds) (public DrPO eval: raw cosine; paper tables: x100)",
        "score": "cos(image_embeds, text_embeds)",
    }
    #: the definition for ``formula: clipscore``
    clipscore_definition: ClassVar[dict[str, str]] = {
        "model": "openai/clip-vit-large-patch14",
        "version": "ViT-L/14",
        "formula": "100 * max(cos(image_embeds, text_embeds), 0) (CLIPScore, Hessel et al. 2021, w = 1)",
        "score": "100 * max(cos(image_embeds, text_embeds), 0)",
    }

    def __init__(self, config: CLIPScoreConfig) -> None:
        self.config = config
        folder = self.folder()
        self.clip = CLIPEmbedder(folder, folder, what="CLIP score", hub_hint="openai/clip-vit-large-patch14",
                                 device=config.device, dtype=config.dtype)
        self.formula = config.formula
        if self.formula == "clipscore":
            self.definition = dict(self.clipscore_definition)  # type: ignore[misc]
            self.report_scale = 1.0  # type: ignore[misc]
        self.definition = {**self.definition, "model": config.pretrained}  # type: ignore[misc]

    def folder(self) -> Path:
        return resolve_folder(self.config.pretrained, what="CLIP weights", revision=self.config.revision,
                              must_contain=("config.json",), hub_id="openai/clip-vit-large-patch14")

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cos = (self.clip.image_embeds(images) * self.clip.text_embeds(list(prompts))).sum(-1)  # (B,)
        if self.formula == "clipscore":
            return (100.0 * cos.clamp(min=0)).to(images.device)
        return cos.to(images.device)

    def to(self, device: torch.device | str) -> CLIPScore:
        self.clip.to(device)
        return self


REWARDS.preset(
    "clip-score-tiny", CLIPScore, {"pretrained": "tiny:clip", "device": "cpu", "dtype": "fp32"},
    "CLIP score's classes and loader on tiny random weights (tiny:clip): tests and CPU smoke runs",
)

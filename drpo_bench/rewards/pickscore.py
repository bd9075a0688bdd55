"""PickScore (Kirstain et al., 2023, "Pick-a-Pic"): a CLIP ViT-H/14 finetuned on human picks.

Score (what training sees) = logit_scale · cos(image, text), as the authors' reference code and
the public DrPO trainers (UGVly/DrPO ``src/drpo/pickscore.py``). Reported number = 100 · cos:
the public DrPO eval scores the raw cosine (``src/drpo/rewards.py``, ``PickScoreSelector.score``)
and the paper's tables print "PS = PickScore × 100" (SD-Turbo base 21.88). The two agree when
the checkpoint's logit_scale is 100; ``report_scale`` = 100 / logit_scale makes the reported
number exactly 100 · cos whatever the checkpoint holds (eval only: training keeps logit_scale · cos).

Differentiable: preprocessing runs in torch (``clip_common``), so DRaFT can backpropagate through
it. Model weights: ``yuvalkirstain/PickScore_v1``; tokenizer and preprocessing config:
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the processor PickScore uses).
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


class PickScoreConfig(StrictConfig):
    pretrained: str = "yuvalkirstain/PickScore_v1"  # the PickScore weights (hub id in the HF cache, or a folder)
    processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # tokenizer + preprocessing PickScore was trained with
    revision: str | None = None  # hub revision of `pretrained`; None = what the cache has
    dtype: RewardDType = "auto"  # fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # "auto" = cuda if available, else cpu


@REWARDS.register("pickscore")
class PickScore(Reward):
    """PickScore v1: logit_scale · cos(CLIP-H image, text), differentiable."""

    Config: ClassVar[type[StrictConfig]] = PickScoreConfig
    differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "logit_scale (~100) x cosine; SD-Turbo images ~21-24"
    report_scale: ClassVar[float] = 1.0  # per instance: 100 / logit_scale, so reported = 100 * cosine exactly
    definition: ClassVar[dict[str, str]] = {
        "model": "yuvalkirstain/PickScore_v1 (processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
        "version": "v1",
        "formula": "100 * cos(image_embeds, text_embeds) (public DrPO eval: raw cosine; paper tables: x100)",
        "score": "logit_scale.exp() * cos(image_embeds, text_embeds) (the PickScore reference code)",
    }

    def __init__(self, config: PickScoreConfig) -> None:
        self.config = config
        model_folder, processor_folder = self.folders()
        self.clip = CLIPEmbedder(
            model_folder, processor_folder, what="PickScore", hub_hint="yuvalkirstain/PickScore_v1",
            device=config.device, dtype=config.dtype,
        )
        self.logit_scale = float(self.clip.model.logit_scale.exp())
        self.report_scale = 100.0 / self.logit_scale  # type: ignore[misc]
        self.definition = {**self.definition, "model": f"{config.pretrained} (processor {config.processor})"}  # type: ignore[misc]

    def describe(self) -> dict:
        return {**super().describe(), "logit_scale": self.logit_scale}

    def folders(self) -> tuple[Path, Path]:
        cfg = self.config
        model = resolve_folder(
            cfg.pretrained, what="PickScore weights", revision=cfg.revision,
            must_contain=("config.json",), hub_id="yuvalkirstain/PickScore_v1",
        )
        processor = resolve_folder(
            cfg.processor, what="PickScore processor (tokenizer)", allow_patterns=["*.json", "*.txt"],
            must_contain=("tokenizer_config.json",), hub_id="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        )
        return model, processor

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        image = self.clip.image_embeds(images)  # (B, P)
        text = self.clip.text_embeds(list(prompts))  # (B, P)
        logit_scale = self.clip.model.logit_scale.exp().float()
        return (logit_scale * (image * text).sum(-1)).to(images.device)  # (B,)

    def to(self, device: torch.device | str) -> PickScore:
        self.clip.to(device)
        return self


REWARDS.preset(
    "pickscore-tiny", PickScore,
    {"pretrained": "tiny:clip", "processor": "tiny:clip", "device": "cpu", "dtype": "fp32"},
    "PickScore's classes and loader on tiny random weights (tiny:clip): tests and CPU smoke runs",
)

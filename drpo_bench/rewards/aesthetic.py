"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor", C. Schuhmann, 2022).

An MLP head (``sac+logos+ava1-l14-linearMSE.pth``: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, trained
with MSE on SAC + LOGOS + AVA ratings) on the L2-normalized OpenAI CLIP ViT-L/14 image
embedding. Scores are on the 1-10 rating scale (SD images ≈ 5-7; the DrPO paper's "AES" column).
Prompt-free and differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from drpo_bench.errors import UserError
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.aesthetic_head import AestheticMLP
from drpo_bench.rewards.base import Reward
from drpo_bench.rewards.clip_common import CLIPEmbedder, RewardDType
from drpo_bench.weights import resolve_file, resolve_folder

HEAD_HINT = (
    "Get it from the improved-aesthetic-predictor repository (christophschuhmann/improved-aesthetic-predictor on "
    "GitHub, file sac+logos+ava1-l14-linearMSE.pth) and set `head:` to its path."
)


class AestheticConfig(StrictConfig):
    clip: str = "openai/clip-vit-large-patch14"  # the CLIP the head was trained on (ViT-L/14, OpenAI weights)
    head: str = "models/Aesthetic/sac+logos+ava1-l14-linearMSE.pth"  # the MLP head file (DrPO's asset layout)
    dtype: RewardDType = "auto"  # CLIP in fp16 on CUDA, fp32 on CPU; the head always runs in fp32
    device: str = "auto"  # "auto" = cuda if available, else cpu


@REWARDS.register("aesthetic")
class Aesthetic(Reward):
    """LAION aesthetic predictor v2: MLP on normalized CLIP ViT-L/14 image embeddings, 1-10 scale."""

    Config: ClassVar[type[StrictConfig]] = AestheticConfig
    differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "predicted 1-10 rating; SD-Turbo images ~6"
    report_scale: ClassVar[float] = 1.0  # the public DrPO eval and the paper's AES column print the head's output as is
    definition: ClassVar[dict[str, str]] = {
        "model": "improved-aesthetic-predictor sac+logos+ava1-l14-linearMSE.pth on openai/clip-vit-large-patch14",
        "version": "v2 (linear MSE head)",
        "formula": "mlp(normalize(clip_image_embeds)) (public DrPO eval: raw head output; paper tables: x1)",
    }

    def __init__(self, config: AestheticConfig) -> None:
        self.config = config
        self.definition = {**self.definition, "model": f"{config.head} on {config.clip}"}  # type: ignore[misc]
        clip_folder, head_file = self.locations()
        self.clip = CLIPEmbedder(clip_folder, clip_folder, what="aesthetic CLIP", hub_hint="openai/clip-vit-large-patch14",
                                 device=config.device, dtype=config.dtype)
        self.head = AestheticMLP(int(self.clip.model.config.projection_dim))
        state = torch.load(head_file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            self.head.load_state_dict(state)
        except (RuntimeError, AttributeError) as exc:
            raise UserError(
                f"aesthetic head {head_file} does not fit CLIP projection {self.clip.model.config.projection_dim}: "
                f"{str(exc).splitlines()[0]}. {HEAD_HINT}"
            ) from exc
        self.head.requires_grad_(False).eval().to(self.clip.device)

    def locations(self) -> tuple[Path, Path]:
        clip = resolve_folder(self.config.clip, what="aesthetic predictor CLIP", must_contain=("config.json",),
                              hub_id="openai/clip-vit-large-patch14")
        return clip, resolve_file(self.config.head, what="aesthetic predictor head", how=HEAD_HINT)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        emb = self.clip.image_embeds(images)  # (B, 768) unit norm, fp32
        return self.head(emb).squeeze(-1).to(images.device)  # (B,)

    def to(self, device: torch.device | str) -> Aesthetic:
        self.clip.to(device)
        self.head.to(device)
        return self


REWARDS.preset(
    "aesthetic-tiny", Aesthetic,
    {"clip": "tiny:aesthetic/clip", "head": "tiny:aesthetic/sac+logos+ava1-l14-linearMSE.pth", "device": "cpu", "dtype": "fp32"},
    "the aesthetic predictor's classes and loader on tiny random weights (tiny:aesthetic): tests and CPU smoke runs",
)

"""JPEG compressibility (Black et al., 2023, "DDPO"): a black-box, non-differentiable reward.

Score = −(size of the image saved as JPEG, in kB) for ``compressibility`` (simpler images win), or
+size for ``incompressibility``. Images are quantized to 8 bits and encoded with Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from PIL import Image

from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward


def to_uint8_hwc(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> B numpy uint8 (H, W, 3) arrays (round to nearest)."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return list(arrays.permute(0, 2, 3, 1).cpu().numpy())


class JPEGConfig(StrictConfig):
    quality: int = 95  # DDPO's setting
    mode: Literal["compressibility", "incompressibility"] = "compressibility"  # DDPO's two tasks


@REWARDS.register("jpeg")
class JPEGCompressibility(Reward):
    """JPEG compressibility: −kB of the image as JPEG (quality 95); a non-differentiable program."""

    Config: ClassVar[type[StrictConfig]] = JPEGConfig
    differentiable: ClassVar[bool] = False
    scale: ClassVar[str] = "-kB at JPEG quality 95 (sign flipped for incompressibility)"
    definition: ClassVar[dict[str, str]] = {
        "model": "Pillow JPEG encoder (program)",
        "version": "DDPO compressibility",
        "formula": "-(bytes of the 8-bit image saved as JPEG at `quality`) / 1000; +kB for incompressibility",
    }

    def __init__(self, config: JPEGConfig | None = None) -> None:
        self.config = config or JPEGConfig()
        sign = "-" if self.config.mode == "compressibility" else "+"
        self.definition = {  # type: ignore[misc]
            **self.definition, "version": f"DDPO {self.config.mode}",
            "formula": f"{sign}(bytes of the 8-bit image saved as JPEG at quality {self.config.quality}) / 1000",
        }

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        sizes = []
        for array in to_uint8_hwc(images):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=self.config.quality)
            sizes.append(buffer.tell() / 1000.0)
        sign = -1.0 if self.config.mode == "compressibility" else 1.0
        return sign * torch.tensor(sizes, dtype=torch.float32)

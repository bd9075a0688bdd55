"""shapes-clip: the shapes world's learned reward, a tiny CLIP trained on rendered pairs.

Score = logit_scale * cos(image, text), differentiable in the images (like PickScore/HPS), so
reward-backprop baselines can train on it. ``size: large`` costs ~20x the FLOPs per image
(see ``drpo_bench.shapes.reward_model``), the way HPSv3 is expensive next to PickScore.
Weights ship in ``drpo_bench/assets/shapes_clip_{size}.safetensors``; reproduce them with
``python -m drpo_bench.shapes.train_reward`` (the command is in each file's metadata).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from drpo_bench.errors import ConfigError, MissingWeightsError
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.shapes.reward_model import default_weights, load_model



#: (dy, dx) pixel shifts of the views, zero-filled (the shapes background is black)
_SHIFTS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) translated by (dy, dx) pixels, zero-filled, differentiable."""
    if dy == dx == 0:
        return images
    h, w = images.shape[-2:]
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


class ShapesCLIPConfig(StrictConfig):
    size: Literal["small", "large"] = "small"  # small: cheap reward; large: ~20x FLOPs, for expensive-backprop studies
    # score = mean over this many 1-px-shifted views (identity first): a knob that multiplies the
    # forward cost by `views` without retraining; shifts keep counts, colors and relative positions
    views: int = Field(1, ge=1, le=len(_SHIFTS))
    weights: str | None = None  # safetensors from train_reward; None = the shipped asset for `size`
    device: str = "cpu"  # tiny model: CPU is fine; move with .to()


@REWARDS.register("shapes-clip")
class ShapesCLIPReward(Reward):
    """Tiny CLIP for the shapes world: logit_scale * cos(image, text), differentiable."""

    Config: ClassVar[type[StrictConfig]] = ShapesCLIPConfig
    differentiable: ClassVar[bool] = True
    scale: ClassVar[str] = "logit_scale x cosine; ground truth ~35 (small) or ~19 (large), hard negatives about half"
    definition: ClassVar[dict[str, str]] = {
        "model": "shapes-clip small (drpo_bench/assets/shapes_clip_small.safetensors)",
        "version": "small",
        "formula": "logit_scale * cos(image_embeds, text_embeds) (tiny CLIP trained on rendered shapes pairs)",
    }

    @classmethod
    def weight_files(cls, config: ShapesCLIPConfig) -> list[Path]:
        """The file this config loads (part of a cell's code hash, drpo_bench.suite.code_hash)."""
        return [Path(config.weights) if config.weights else default_weights(config.size)]

    def __init__(self, config: ShapesCLIPConfig | None = None) -> None:
        self.config = config = config or ShapesCLIPConfig()
        path = self.weight_files(config)[0]
        if not path.is_file():
            raise MissingWeightsError(
                f"shapes-clip weights not found at {path}. Train them with: python -m drpo_bench.shapes.train_reward "
                f"--size {config.size} --out {path} --seed 0"
            )
        self.model, self.metadata = load_model(path)
        if self.metadata.get("size", config.size) != config.size:
            raise ConfigError(
                f"shapes-clip: {path} holds a {self.metadata['size']!r} model but size is {config.size!r}; "
                f"set size: {self.metadata['size']} or point weights at a {config.size} file"
            )
        self.model.to(config.device)
        shown = f"drpo_bench/assets/{path.name}" if config.weights is None else str(path)  # no machine path for the shipped file
        self.definition = {**self.definition, "model": f"shapes-clip {config.size} ({shown})", "version": config.size}  # type: ignore[misc]
        if config.views > 1:  # views=1 keeps the definition (and cell fingerprints) unchanged
            self.definition["formula"] += f", mean over {config.views} 1-px-shifted views"  # type: ignore[index]
        self._text_cache: dict[str, torch.Tensor] = {}  # prompt -> (D,) unit text embedding (frozen model)

    def _texts(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                for p, e in zip(missing, self.model.embed_texts(missing)):
                    self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts])  # (B, D)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        x = images.to(device, torch.float32)  # (B, 3, H, W)
        text = self._texts(prompts)  # (B, D)
        views = _SHIFTS[: self.config.views]
        score = sum((self.model.embed_images(shift(x, dy, dx)) * text).sum(-1) for dy, dx in views) / len(views)  # (B,)
        return (self.model.scale() * score).to(images.device)  # (B,), grad to images

    def to(self, device: torch.device | str) -> ShapesCLIPReward:
        self.model.to(device)
        self._text_cache.clear()
        return self

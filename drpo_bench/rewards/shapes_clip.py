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

from drpo_bench.errors import ConfigError, MissingWeightsError
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.shapes.reward_model import default_weights, load_model



class ShapesCLIPConfig(StrictConfig):
    size: Literal["small", "large"] = "small"  # small: cheap reward; large: ~20x FLOPs, for expensive-backprop studies
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

    def __init__(self, config: ShapesCLIPConfig | None = None) -> None:
        self.config = config = config or ShapesCLIPConfig()
        path = Path(config.weights) if config.weights else default_weights(config.size)
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
        self.definition = {**self.definition, "model": f"shapes-clip {config.size} ({path})", "version": config.size}  # type: ignore[misc]
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
        image = self.model.embed_images(images.to(device, torch.float32))  # (B, D), grad to images
        text = self._texts(prompts)  # (B, D)
        return (self.model.scale() * (image * text).sum(-1)).to(images.device)  # (B,)

    def to(self, device: torch.device | str) -> ShapesCLIPReward:
        self.model.to(device)
        self._text_cache.clear()
        return self

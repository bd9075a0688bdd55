"""Exploration only: the shapes-clip image tower as a DrPO feature space (docs/quickstart-sweep.md).

Not registered in the package; a suite names it by module path with this folder on PYTHONPATH:

    PYTHONPATH=scripts/explore drpo-bench run suites/quickstart.yaml --output /tmp/fclip \
        "methods=[{id: dclip, method: drpo, args: {n_pos: 4, n_neg: 4, mask_anchor_self: true,
                   mask_reference_pairs: true, features: 'clip_features:ClipImageFeatures'}}]"

With ``size: large`` (the default here) the features come from a different network than the
quickstart's training reward (small), but backpropagating through it costs ~21x the small
tower's FLOPs, which is why it is not the quickstart's choice.
"""

from __future__ import annotations

from typing import Any

import torch

from drpo_bench.drpo.features_base import FeatureEncoder
from drpo_bench.registry import StrictConfig
from drpo_bench.shapes.reward_model import default_weights, load_model


class ClipImageFeatures(FeatureEncoder):
    """Images (B, 3, 32, 32) -> {"clip.embed": (B, 1, D)}: the frozen image tower's embedding."""

    input_space = "images"

    class Config(StrictConfig):
        size: str = "large"  # which shipped shapes-clip image tower

    def __init__(self, config: Config | None = None, generator: Any = None) -> None:
        self.config = config or self.Config()
        self.model, _ = load_model(default_weights(self.config.size))
        self.model.requires_grad_(False).eval()

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"clip.embed": self.model.embed_images(x.float())[:, None, :]}

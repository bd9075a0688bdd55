"""The LAION improved-aesthetic-predictor head (a small MLP on CLIP ViT-L/14 image embeddings).

Its own module so that the tiny-twin builder (drpo_bench.weights.tiny) can write its state dict without
importing the reward (which resolves weights through drpo_bench.weights.tiny): no import cycle.
"""

from __future__ import annotations

import torch
from torch import nn


class AestheticMLP(nn.Module):
    """The predictor's head; layer indices match the released state dict (``layers.{0,2,4,6,7}``)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, 1)
        return self.layers(x)

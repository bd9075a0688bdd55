"""Feature spaces for DrPO in the embedded shapes world.

``shapes-multiscale`` (images): the frozen shapes encoder (``drpo_bench.shapes.encoder_model``,
trained by ``python -m drpo_bench.shapes.train_encoder`` as a masked, denoising autoencoder on
rendered images, in the spirit of the paper's latent-MAE) pooled at three stages:

    s{1,2,3}.mean_std  (B, 1, 2*C_s)   global channel mean and std       C = (24, 48, 96)
    s{1,2,3}.patch2    (B, 4, C_s)     2x2 grid cell means
    s{1,2,3}.patch4    (B, 16, C_s)    4x4 grid cell means
    s3.layout          (B, 1, 16*C_3)  the whole 4x4 stage-3 map (only with ``layout: true``)

``shapes-latent`` (latents): the paper's "raw latent" ablation: the generator's latents
(B, 4, 8, 8) themselves, whole and as grid cells.

Gradients flow to the input; encoder weights are frozen (requires_grad False).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from drpo_bench.drpo.features_base import FeatureEncoder
from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.registry import FEATURES, StrictConfig
from drpo_bench.shapes.encoder_model import channel_mean_std, multiscale_features

SHIPPED_ENCODER = Path(__file__).resolve().parents[1] / "assets" / "shapes_encoder.safetensors"


@FEATURES.register("shapes-multiscale")
class ShapesMultiscaleFeatures(FeatureEncoder):
    """Frozen shapes image encoder: per-stage mean/std and 2x2 / 4x4 patch means (B, L, D)."""

    input_space = "images"
    selects_keys = True

    class Config(StrictConfig):
        weights: str = ""  # "" = the shipped drpo_bench/assets/shapes_encoder.safetensors
        stages: tuple[int, ...] = (1, 2, 3)  # all three scales, as the paper's multi-scale MAE features
        # pooled patch sets forget where each patch sits; one whole-map vector keeps the layout
        # that position and counting prompts are about (off = the paper's pooling only)
        layout: bool = True

    @classmethod
    def weight_files(cls, config: Config) -> list[Path]:
        """The file this config loads (part of a cell's code hash, drpo_bench.suite.code_hash)."""
        return [Path(config.weights).expanduser() if config.weights else SHIPPED_ENCODER]

    def __init__(self, config: Config | None = None, generator: Any = None) -> None:
        from drpo_bench.shapes.encoder_model import load_encoder

        self.config = config or self.Config()
        bad = [s for s in self.config.stages if s not in (1, 2, 3)]
        if bad or not self.config.stages:
            raise UserError(f"shapes-multiscale: stages must be a non-empty subset of (1, 2, 3), got {self.config.stages}")
        path = self.weight_files(self.config)[0]
        if not path.is_file():
            raise MissingWeightsError(
                f"shapes-multiscale: no encoder weights at {path}. Rebuild them with "
                f"`python -m drpo_bench.shapes.train_encoder --out {path}`."
            )
        try:
            self.net = load_encoder(path).requires_grad_(False).eval()
        except (ValueError, RuntimeError, OSError) as exc:
            raise UserError(f"shapes-multiscale: cannot load {path}: {exc}") from exc

    def to(self, device: torch.device | str) -> ShapesMultiscaleFeatures:
        self.net.to(device)
        return self

    def features(self, x: torch.Tensor, keys: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Images (B, 3, 32, 32) in [0, 1] -> {name: (B, L, D)}; see the module docstring. ``keys``:
        compute only these sets (DrPO's ``feature_keys``); the others are not pooled at all."""
        maps = self._maps(x)
        feats = multiscale_features(maps, keys)
        out = {k: v for k, v in feats.items() if int(k[1]) in self.config.stages}
        if self.config.layout and (keys is None or "s3.layout" in keys):
            out["s3.layout"] = maps[2].flatten(1)[:, None, :]  # (B, 1, 96*16)
        return out

    def pooled(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``features(x)`` averaged over locations, {name: (B, D)}, without pooling the grid cells:
        a 2x2 or 4x4 grid's cells tile the map equally, so their mean is the map's channel mean
        (the first half of ``mean_std``); equal to the generic average up to float rounding
        (tests/test_fidelity.py). A third of the cost of the generic path on 32-px images."""
        maps = self._maps(x)
        out: dict[str, torch.Tensor] = {}
        for s, m in enumerate(maps, start=1):
            if s not in self.config.stages:
                continue
            mean_std = channel_mean_std(m)  # (B, 2C)
            out[f"s{s}.mean_std"] = mean_std
            for grid in (2, 4):
                out[f"s{s}.patch{grid}"] = mean_std[:, : m.shape[1]]  # (B, C): the channel mean
        if self.config.layout:
            out["s3.layout"] = maps[2].flatten(1)  # (B, 96*16): one location, its own average
        return out

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, 32, 32) -> the encoder's stage maps [(B, 24, 16, 16), (B, 48, 8, 8), (B, 96, 4, 4)]."""
        device = next(self.net.parameters()).device
        return self.net(x.to(device=device, dtype=torch.float32))


@FEATURES.register("shapes-latent")
class ShapesLatentFeatures(FeatureEncoder):
    """The generator's raw latents (B, C, 8, 8): whole (B, 1, 64C), 2x2 cells (B, 4, 16C), 4x4 cells (B, 16, 4C)."""

    input_space = "latents"

    class Config(StrictConfig):
        pass

    def __init__(self, config: Config | None = None, generator: Any = None) -> None:
        self.config = config or self.Config()

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return latent_features(x)


def latent_features(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Latents (B, C, H, W) -> whole (B, 1, C*H*W), 2x2 cells (B, 4, C*H*W/4), 4x4 cells (B, 16, C*H*W/16)."""
    if x.ndim != 4 or x.shape[-1] % 4 or x.shape[-2] != x.shape[-1]:
        raise ValueError(f"shapes-latent: expected square latents (B, C, H, H) with H a multiple of 4, got {tuple(x.shape)}")
    x = x.float()
    out = {"latent.whole": x.flatten(1)[:, None, :]}  # (B, 1, C*H*W)
    for grid in (2, 4):
        side = x.shape[-1] // grid
        cells = F.unfold(x, kernel_size=side, stride=side)  # (B, C*side*side, grid^2)
        out[f"latent.cells{grid}"] = cells.transpose(1, 2)  # (B, grid^2, C*side*side)
    return out

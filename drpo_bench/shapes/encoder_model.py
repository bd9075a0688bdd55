"""The shapes feature encoder's network: a 3-stage conv net over 32x32 images, and its pooling.

``ShapesEncoderNet`` maps images (B, 3, 32, 32) in [0, 1] to three feature maps: stage 1
(c1, 16, 16), stage 2 (c2, 8, 8), stage 3 (c3, 4, 4). It is trained (``train_encoder``) as a
masked, denoising autoencoder: a small decoder must rebuild the clean image from stage 3 alone,
so the deepest stage has to carry every object's color, shape and place, in the spirit of the
latent-MAE features of the DrPO paper. ``multiscale_features`` pools the maps into the named
feature sets DrPO's drift field uses.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderArch:
    """Encoder widths; stored in the weights file's metadata."""

    widths: tuple[int, int, int] = (24, 48, 96)  # stage 1 (16x16), 2 (8x8), 3 (4x4) channels

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}


class _Stage(nn.Module):
    """Strided conv (halves the side), then a residual 3x3 conv; GroupNorm + SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(cin, cout, kernel, stride=2, padding=(kernel - 1) // 2)
        self.norm = nn.GroupNorm(8, cout)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.down(x))
        return h + self.conv(F.silu(self.norm(h)))


class ShapesEncoderNet(nn.Module):
    """Images (B, 3, 32, 32) in [0, 1] -> [(B, c1, 16, 16), (B, c2, 8, 8), (B, c3, 4, 4)]."""

    def __init__(self, arch: EncoderArch | None = None) -> None:
        super().__init__()
        self.arch = arch or EncoderArch()
        c1, c2, c3 = self.arch.widths
        self.stage1 = _Stage(3, c1, 4)
        self.stage2 = _Stage(c1, c2, 3)
        self.stage3 = _Stage(c2, c3, 3)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"shapes encoder: expected images (B, 3, 32, 32), got {tuple(images.shape)}")
        h1 = self.stage1(images * 2 - 1)  # (B, c1, 16, 16)
        h2 = self.stage2(h1)  # (B, c2, 8, 8)
        h3 = self.stage3(h2)  # (B, c3, 4, 4)
        return [h1, h2, h3]


class ReconstructionHead(nn.Module):
    """Training-only decoder: stage 3 (c3, 4, 4) -> image (3, 32, 32), by three pixel shuffles."""

    def __init__(self, arch: EncoderArch) -> None:
        super().__init__()
        c3 = arch.widths[2]
        self.to_8 = nn.Conv2d(c3, 4 * 48, 3, padding=1)  # -> (48, 8, 8)
        self.to_16 = nn.Conv2d(48, 4 * 24, 3, padding=1)  # -> (24, 16, 16)
        self.to_32 = nn.Conv2d(24, 4 * 3, 3, padding=1)  # -> (3, 32, 32)

    def forward(self, h3: torch.Tensor) -> torch.Tensor:
        h = F.silu(F.pixel_shuffle(self.to_8(h3), 2))
        h = F.silu(F.pixel_shuffle(self.to_16(h), 2))
        return torch.sigmoid(F.pixel_shuffle(self.to_32(h), 2))


def channel_mean_std(m: torch.Tensor) -> torch.Tensor:
    """A stage map (B, C, H, W) -> its channels' mean and std over locations, concatenated (B, 2C)."""
    flat = m.flatten(2)  # (B, C, H*W)
    mean = flat.mean(-1)  # (B, C)
    # the population variance as the mean squared deviation: torch's var kernel took 2x as long here
    std = ((flat - mean[..., None]).pow(2).mean(-1) + 1e-6).sqrt()  # (B, C)
    return torch.cat([mean, std], dim=-1)


def multiscale_features(maps: list[torch.Tensor], keys: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Stage maps -> named feature sets, each (B, L, D); ``keys``: only these (None = all).

    Per stage s (1..3), with C_s channels:
      ``s{s}.mean_std``  (B, 1, 2*C_s)  global channel mean and std
      ``s{s}.patch2``    (B, 4, C_s)    mean over each cell of a 2x2 grid
      ``s{s}.patch4``    (B, 16, C_s)   mean over each cell of a 4x4 grid
    """
    out: dict[str, torch.Tensor] = {}
    for s, m in enumerate(maps, start=1):
        if keys is None or f"s{s}.mean_std" in keys:
            out[f"s{s}.mean_std"] = channel_mean_std(m)[:, None, :]  # (B, 1, 2C)
        for grid in (2, 4):
            if keys is None or f"s{s}.patch{grid}" in keys:
                pooled = F.adaptive_avg_pool2d(m, grid)  # (B, C, grid, grid)
                out[f"s{s}.patch{grid}"] = pooled.flatten(2).transpose(1, 2)  # (B, grid*grid, C)
    return out


#: the ``format`` metadata of a shapes encoder weights file
FORMAT = "drpo-bench shapes encoder v1"


def load_encoder(path: str | Path) -> ShapesEncoderNet:
    """A ShapesEncoderNet rebuilt from its safetensors file (widths from the metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no shapes encoder at {path}; train one: python -m drpo_bench.shapes.train_encoder --out {path}"
        )
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a shapes encoder file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    arch = EncoderArch(**{k: tuple(v) for k, v in json.loads(metadata["arch"]).items()})
    encoder = ShapesEncoderNet(arch)
    encoder.load_state_dict(load_file(str(path)))
    return encoder

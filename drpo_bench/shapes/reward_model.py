"""ShapesCLIP: a tiny CLIP-like image-text model for the shapes world (the learned reward).

Image tower: 4x4 patches (an 8x8 grid), a 3x3 conv at 8x8, a strided 3x3 conv to 4x4 (plus
same-resolution residual convs in the large variant), then an MLP over the flattened 4x4 grid,
so the layout survives and objects' features meet (relations and counts need both).
Text tower: word embeddings over the grammar's VOCABULARY plus learned positions, a small
pre-norm transformer, then an MLP over the words in their slots (position-aware pooling: word
order carries relations and color binding). Score = logit_scale * cos(image, text).

Cost (measured with torch.utils.flop_counter.FlopCounterMode, forward, 256 images and 256
distinct prompts; reproduce with ``python -m drpo_bench.shapes.reward_model``):

    small: image tower  2.24 MFLOP per image,   328 K parameters in all
    large: image tower 47.91 MFLOP per image, 3.51 M parameters in all
    large / small per image: 21.3x  (with a distinct prompt per image, text towers included: 15.3x)

The per-image ratio is what reward backprop pays: the text embedding is computed once per
prompt, without gradient, and cached by the reward. So backpropagating through the large one
is expensive the way HPSv3 is next to PickScore.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from drpo_bench.shapes.grammar import VOCABULARY

MAX_WORDS = 10  # longest grammar prompt has 9 words ("a purple diamond right of a yellow triangle" = 8)
_WORD_ID = {w: i + 1 for i, w in enumerate(VOCABULARY)}  # 0 = padding


@dataclass(frozen=True)
class ShapesCLIPConfig:
    widths: tuple[int, int, int] = (32, 32, 64)  # channels of the 8x8 patch grid, 8x8 mixing, 4x4: tiny and fast
    extra_convs: int = 0  # residual 3x3 convs per stage: the large variant's extra depth
    text_dim: int = 64  # word embedding and transformer width
    text_layers: int = 2  # attention layers: bind colors to shapes, read word order
    text_heads: int = 4  # 16-dim heads
    head_dim: int = 128  # hidden width of the MLP heads (image grid, text slots)
    embed_dim: int = 64  # joint embedding width
    init_logit_scale: float = 10.0  # CLIP's 1/0.07 ~ 14; lower starts training gentler


SIZES: dict[str, ShapesCLIPConfig] = {
    "small": ShapesCLIPConfig(),
    "large": ShapesCLIPConfig(
        widths=(64, 112, 192), extra_convs=1, text_dim=128, text_layers=3, text_heads=4, head_dim=512, embed_dim=128
    ),
}


def tokenize(prompts: Sequence[str]) -> torch.Tensor:
    """B prompts -> (B, MAX_WORDS) int64 word ids (0 = padding); ValueError outside the vocabulary."""
    return torch.stack([_tokens(p) for p in prompts]) if prompts else torch.zeros(0, MAX_WORDS, dtype=torch.long)


@functools.lru_cache(maxsize=65536)
def _tokens(prompt: str) -> torch.Tensor:
    words = prompt.strip().lower().split()
    unknown = [w for w in words if w not in _WORD_ID]
    if unknown:
        raise ValueError(f"shapes-clip: prompt {prompt!r} has words {unknown} outside the shapes vocabulary {list(VOCABULARY)}")
    if len(words) > MAX_WORDS:
        raise ValueError(f"shapes-clip: prompt {prompt!r} has {len(words)} words; at most {MAX_WORDS}")
    ids = torch.zeros(MAX_WORDS, dtype=torch.long)
    ids[: len(words)] = torch.tensor([_WORD_ID[w] for w in words], dtype=torch.long)
    return ids


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.conv(x))


class ImageTower(nn.Module):
    def __init__(self, cfg: ShapesCLIPConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.widths
        # 4x4 patches -> 8x8 grid; 3x3 mixing at 8x8; 3x3 stride 2 -> 4x4
        stages = ((nn.Conv2d(3, c1, 4, stride=4), c1), (nn.Conv2d(c1, c2, 3, padding=1), c2),
                  (nn.Conv2d(c2, c3, 3, stride=2, padding=1), c3))
        layers: list[nn.Module] = []
        for conv, c_out in stages:
            layers += [conv, nn.GELU()]
            layers += [_Residual(c_out) for _ in range(cfg.extra_convs)]
        self.convs = nn.Sequential(*layers)
        # an MLP over the whole 4x4 grid: relations need objects' features to meet nonlinearly
        self.head = nn.Sequential(nn.Linear(c3 * 4 * 4, cfg.head_dim), nn.GELU(), nn.Linear(cfg.head_dim, cfg.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images * 2.0 - 1.0)  # (B, c3, 4, 4)
        return self.head(x.flatten(1))  # (B, embed_dim)


class TextTower(nn.Module):
    def __init__(self, cfg: ShapesCLIPConfig) -> None:
        super().__init__()
        self.words = nn.Embedding(len(VOCABULARY) + 1, cfg.text_dim, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(MAX_WORDS, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_dim, cfg.text_heads, dim_feedforward=2 * cfg.text_dim, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)
        # position-aware pooling: an MLP over the words in their slots, so "a red square and a
        # green circle" and "a green square and a red circle" cannot pool to the same vector
        self.head = nn.Sequential(
            nn.Linear(MAX_WORDS * cfg.text_dim, cfg.head_dim), nn.GELU(), nn.Linear(cfg.head_dim, cfg.embed_dim)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0  # (T, L)
        x = self.words(ids) + self.positions  # (T, L, text_dim)
        x = self.norm(self.encoder(x, src_key_padding_mask=pad))
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # (T, L, text_dim)
        return self.head(x.flatten(1))  # (T, embed_dim)


class ShapesCLIP(nn.Module):
    def __init__(self, cfg: ShapesCLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [0, 1] -> (B, D) unit vectors."""
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.image(images), dim=-1)

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """T prompts -> (T, D) unit vectors."""
        return F.normalize(self.text(tokenize(prompts).to(self.logit_scale.device)), dim=-1)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B, 3, H, W) images and B prompts -> (B,) logit_scale * cos, differentiable in images."""
        where = {p: i for i, p in enumerate(dict.fromkeys(prompts))}  # each distinct prompt encoded once
        text = self.embed_texts(list(where))  # (T, D)
        index = torch.tensor([where[p] for p in prompts], device=text.device)  # (B,)
        return self.scale() * (self.embed_images(images) * text[index]).sum(-1)


# --- weights on disk ------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def default_weights(size: str) -> Path:
    return ASSETS / f"shapes_clip_{size}.safetensors"


def save_model(model: ShapesCLIP, path: str | Path, metadata: dict[str, str]) -> None:
    from drpo_bench.store import save_safetensors

    meta = {**metadata, "config": json.dumps(asdict(model.cfg)), "stored_dtype": "float16"}
    # float16 on disk halves the asset (the large one: 7 MB); scores move by < 1e-3
    tensors = {
        k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()
    }
    save_safetensors(tensors, path, meta)


def load_model(path: str | Path) -> tuple[ShapesCLIP, dict[str, str]]:
    """A ShapesCLIP and its metadata from a safetensors file written by ``save_model``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if "config" not in metadata:
        raise ValueError(f"{path}: no 'config' in the safetensors metadata; not written by shapes train_reward")
    raw = json.loads(metadata["config"])
    cfg = ShapesCLIPConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = ShapesCLIP(cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return model.eval().requires_grad_(False), metadata


def measure_flops(model: ShapesCLIP, batch: int = 256) -> dict[str, float]:
    """Forward FLOPs per image-prompt pair of ``score`` (and of the image tower alone)."""
    import random

    from torch.utils.flop_counter import FlopCounterMode

    from drpo_bench.shapes.grammar import random_prompt

    rng = random.Random(0)
    prompts: list[str] = []
    while len(prompts) < batch:  # distinct prompts: the text tower runs once per prompt
        p = random_prompt(rng, allow_eval=True).text
        if p not in prompts:
            prompts.append(p)
    images = torch.rand(batch, 3, 32, 32)
    with torch.no_grad():
        with FlopCounterMode(display=False) as total:
            model.score(images, prompts)
        with FlopCounterMode(display=False) as image_only:
            model.embed_images(images)
    return {
        "flops_per_pair": total.get_total_flops() / batch,
        "image_flops_per_image": image_only.get_total_flops() / batch,
        "parameters": float(sum(p.numel() for p in model.parameters())),
    }


if __name__ == "__main__":
    stats = {size: measure_flops(ShapesCLIP(cfg)) for size, cfg in SIZES.items()}
    for size, s in stats.items():
        print(f"{size:6s} {s['flops_per_pair'] / 1e6:8.2f} MFLOP/pair  image tower {s['image_flops_per_image'] / 1e6:8.2f} MFLOP  "
              f"{s['parameters'] / 1e3:8.1f} K params")
    print(f"large/small: {stats['large']['flops_per_pair'] / stats['small']['flops_per_pair']:.1f}x "
          f"(image tower {stats['large']['image_flops_per_image'] / stats['small']['image_flops_per_image']:.1f}x)")

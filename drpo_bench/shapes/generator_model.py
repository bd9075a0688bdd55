"""The shapes generator's networks: tokenizer, text encoder, denoiser, latent autoencoder.

An SD-like split at toy scale, sized to train on a 2-core CPU:

- ``WordTokenizer`` maps a prompt to word ids over the grammar's vocabulary (0 = padding);
- ``TextEncoder`` (word + position embeddings, a small transformer) gives per-token states and
  a pooled vector: word order matters ("a red circle left of a blue square");
- ``Denoiser`` maps noise (C, 8, 8) + text to clean latents (C, 8, 8) in ONE forward: a
  two-level UNet (8x8 and 4x4) with FiLM from the pooled text in every ResBlock, and self- and
  cross-attention (to the tokens) at 4x4; the only module that gets LoRA adapters;
- ``LatentDecoder`` maps latents (C, 8, 8) to images (3, 32, 32) in [0, 1]; ``LatentEncoder``
  is its inverse (used only to put rendered ground truth into latent space for pretraining).
  Both are trained as an autoencoder on rendered images and then frozen, like SD's VAE.

Compute is kept at 8x8 and below, and 32x32 pixels are produced by pixel shuffle: a 3x3
convolution at 32x32 costs about as much as the whole denoiser on 2 CPU cores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_WORD = re.compile(r"[a-z]+")
#: the ``format`` metadata of a shapes generator weights file
FORMAT = "drpo-bench shapes generator v1"


@dataclass(frozen=True)
class Arch:
    """Network sizes; stored in the weights file's metadata so a file rebuilds its own network."""

    latent_channels: int = 8  # 8x8x8 = 512 dims; 4 channels blurred small shapes (AE checker 0.70 vs 0.94)
    text_dim: int = 64  # token state width; the vocabulary has a few dozen words
    text_layers: int = 2  # enough to bind colors and counts to nouns, and read "left of"
    max_words: int = 12  # longest grammar prompt has 8 words; a little slack
    width: int = 32  # denoiser channels at 8x8 (the cost driver: 256 samples per update)
    width_low: int = 64  # denoiser channels at 4x4, where global layout is decided
    heads: int = 4  # attention heads in every attention layer
    decoder_width: int = 64  # decoder channels at 8x8; 48 lost corners (diamond vs square)
    decoder_width_16: int = 24  # decoder channels at 16x16 (3x3 convs there cost 4x per channel)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class WordTokenizer:
    """Prompt text -> word ids (1..V) padded with 0 to ``max_words``, and a validity mask."""

    def __init__(self, vocabulary: Sequence[str], max_words: int) -> None:
        self.vocabulary = tuple(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.max_words = max_words

    def __len__(self) -> int:
        return len(self.vocabulary) + 1  # + padding id 0

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), self.max_words, dtype=torch.long)  # (B, T)
        for row, text in enumerate(prompts):
            words = self.words(text)
            if not words:
                raise ValueError(f"empty prompt {text!r}: the shapes generator needs at least one word")
            if len(words) > self.max_words:
                raise ValueError(f"prompt {text!r} has {len(words)} words; the shapes generator reads at most {self.max_words}")
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(
                    f"prompt {text!r} uses words outside the shapes vocabulary: {unknown}. "
                    f"Known words: {', '.join(self.vocabulary)}"
                )
            ids[row, : len(words)] = torch.tensor([self.index[w] for w in words])
        return ids, ids > 0


class Attention(nn.Module):
    """Multi-head attention with diffusers-style names (to_q, to_k, to_v, to_out) for LoRA targets."""

    def __init__(self, dim: int, context_dim: int | None, heads: int) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, N, dim), context (B, T, context_dim), mask (B, T) True = attend
        context = x if context is None else context
        b, n, d = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        k = self.to_k(context).view(b, -1, h, d // h).transpose(1, 2)  # (B, h, T, d/h)
        v = self.to_v(context).view(b, -1, h, d // h).transpose(1, 2)
        # explicit softmax: with head widths of 8-16, CPU flash attention is several times slower
        logits = torch.einsum("bhnd,bhtd->bhnt", q, k) * (d // h) ** -0.5  # (B, h, N, T)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = torch.einsum("bhnt,bhtd->bhnd", logits.softmax(-1), v)  # (B, h, N, d/h)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 2) -> None:
        super().__init__()
        self.ff_in = nn.Linear(dim, dim * mult)
        self.ff_out = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(F.gelu(self.ff_in(x)))


class TextEncoder(nn.Module):
    """Word ids (B, T) -> token states (B, T, D) and a pooled vector (B, D)."""

    def __init__(self, vocab_size: int, arch: Arch) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, arch.text_dim)
        self.position = nn.Parameter(torch.randn(arch.max_words, arch.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            arch.text_dim, arch.heads, 2 * arch.text_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, arch.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(arch.text_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.word(ids) + self.position[: ids.shape[1]]  # (B, T, D)
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        x = x * mask[..., None]
        pooled = x.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (B, D)
        return {"tokens": x, "mask": mask, "pooled": pooled}


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with FiLM (scale, shift) from the pooled text after the first conv."""

    def __init__(self, channels: int, cond_dim: int, out_channels: int | None = None) -> None:
        super().__init__()
        out = out_channels or channels
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, out, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * out)
        self.norm2 = nn.GroupNorm(8, out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.skip = nn.Conv2d(channels, out, 1) if out != channels else nn.Identity()

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.film(pooled)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class SpatialTransformer(nn.Module):
    """Optional self-attention, cross-attention to the prompt tokens, feed-forward; on a feature map."""

    def __init__(self, channels: int, context_dim: int, heads: int, self_attention: bool) -> None:
        super().__init__()
        self.self_attention = self_attention
        if self_attention:
            self.norm_self = nn.LayerNorm(channels)
            self.attn_self = Attention(channels, None, heads)
        self.norm_cross = nn.LayerNorm(channels)
        self.attn_cross = Attention(channels, context_dim, heads)
        self.norm_ff = nn.LayerNorm(channels)
        self.ff = FeedForward(channels)

    def forward(self, x: torch.Tensor, cond: dict[str, torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        t = x.flatten(2).transpose(1, 2) + pos  # (B, H*W, C); pos (H*W, C) says where a token sits
        if self.self_attention:
            t = t + self.attn_self(self.norm_self(t))
        t = t + self.attn_cross(self.norm_cross(t), cond["tokens"], cond["mask"])
        t = t + self.ff(self.norm_ff(t))
        return (t - pos).transpose(1, 2).reshape(b, c, hh, ww)


class Denoiser(nn.Module):
    """One step: noise (B, C, 8, 8) + text -> clean latents (B, C, 8, 8).

    Text enters everywhere through FiLM (pooled prompt), and through attention at 4x4, where
    16 tokens attend to each other (layout, counting, "left of") and to the prompt's words
    (which color goes with which shape). Attention at 8x8 would cost 4x more for little gain.
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        w, wl, c, d = arch.width, arch.width_low, arch.latent_channels, arch.text_dim
        self.conv_in = nn.Conv2d(c, w, 3, padding=1)
        self.pos_lo = nn.Parameter(torch.randn(16, wl) * 0.02)  # 4x4 positions
        self.down_res = ResBlock(w, d)
        self.downsample = nn.Conv2d(w, wl, 3, stride=2, padding=1)
        self.mid_res = ResBlock(wl, d)
        self.mid_attn = SpatialTransformer(wl, d, arch.heads, self_attention=True)
        self.mid_res2 = ResBlock(wl, d)
        self.mid_attn2 = SpatialTransformer(wl, d, arch.heads, self_attention=True)
        self.upsample = nn.Conv2d(wl, 4 * w, 1)  # then pixel shuffle x2: (B, w, 8, 8)
        self.up_res = ResBlock(2 * w, d, out_channels=w)
        self.norm_out = nn.GroupNorm(8, w)
        self.conv_out = nn.Conv2d(w, c, 3, padding=1)

    def forward(self, noise: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = cond["pooled"]
        h = self.down_res(self.conv_in(noise), pooled)  # (B, w, 8, 8)
        m = self.downsample(h)  # (B, wl, 4, 4)
        m = self.mid_attn(self.mid_res(m, pooled), cond, self.pos_lo)
        m = self.mid_attn2(self.mid_res2(m, pooled), cond, self.pos_lo)
        u = F.pixel_shuffle(self.upsample(m), 2)  # (B, w, 8, 8)
        u = self.up_res(torch.cat([u, h], dim=1), pooled)
        return self.conv_out(F.silu(self.norm_out(u)))  # (B, C, 8, 8)


class LatentDecoder(nn.Module):
    """Latents (B, C, 8, 8) -> images (B, 3, 32, 32) in [0, 1]; all 3x3 convs at 8x8 or 16x16."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        w = arch.decoder_width
        self.conv_in = nn.Conv2d(arch.latent_channels, w, 3, padding=1)
        self.conv_mid = nn.Conv2d(w, w, 3, padding=1)
        w16 = arch.decoder_width_16
        self.to_16 = nn.Conv2d(w, 4 * w16, 1)  # pixel shuffle -> (B, w16, 16, 16); 1x1: a 3x3 here cost 40% of the decoder for no gain
        self.conv_16 = nn.Conv2d(w16, w16, 3, padding=1)
        self.to_32 = nn.Conv2d(w16, 4 * 3, 3, padding=1)  # pixel shuffle -> (B, 3, 32, 32)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(z))
        h = h + F.silu(self.conv_mid(h))  # (B, w, 8, 8)
        h = F.silu(F.pixel_shuffle(self.to_16(h), 2))  # (B, w16, 16, 16)
        h = h + F.silu(self.conv_16(h))
        return torch.sigmoid(F.pixel_shuffle(self.to_32(h), 2))  # (B, 3, 32, 32)


class LatentEncoder(nn.Module):
    """Images (B, 3, 32, 32) in [0, 1] -> latents (B, C, 8, 8) (pixel unshuffle, then convs)."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        w = arch.decoder_width
        self.conv_16 = nn.Conv2d(12, 32, 3, padding=1)  # pixel unshuffle (3, 32, 32) -> (12, 16, 16)
        self.conv_8 = nn.Conv2d(4 * 32, w, 3, padding=1)  # pixel unshuffle -> (128, 8, 8)
        self.conv_mid = nn.Conv2d(w, w, 3, padding=1)
        self.conv_out = nn.Conv2d(w, arch.latent_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_16(F.pixel_unshuffle(images * 2 - 1, 2)))  # (B, 32, 16, 16)
        h = F.silu(self.conv_8(F.pixel_unshuffle(h, 2)))  # (B, w, 8, 8)
        h = h + F.silu(self.conv_mid(h))
        return self.conv_out(h)  # (B, C, 8, 8)


class ShapesGeneratorNet(nn.Module):
    """All the generator's weights in one module (one safetensors file, prefixes text./denoiser./...)."""

    def __init__(self, vocabulary: Sequence[str], arch: Arch | None = None) -> None:
        super().__init__()
        self.arch = arch or Arch()
        self.tokenizer = WordTokenizer(vocabulary, self.arch.max_words)
        self.text = TextEncoder(len(self.tokenizer), self.arch)
        self.denoiser = Denoiser(self.arch)
        self.decoder = LatentDecoder(self.arch)
        self.encoder = LatentEncoder(self.arch)
        # per-channel statistics of the autoencoder's latents (set after it is trained): the
        # generator works in normalized latents, roughly unit variance like its noise
        self.register_buffer("latent_mean", torch.zeros(self.arch.latent_channels))
        self.register_buffer("latent_std", torch.ones(self.arch.latent_channels))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B, C, 8, 8) -> images (B, 3, 32, 32) in [0, 1]."""
        return self.decoder(latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 32, 32) in [0, 1] -> normalized latents (B, C, 8, 8)."""
        return (self.encoder(images) - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.arch.latent_channels, 8, 8)

    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        device = self.text.position.device
        ids, mask = self.tokenizer(prompts)
        return self.text(ids.to(device), mask.to(device))


def load_net(path: str | Path) -> tuple[ShapesGeneratorNet, dict[str, str]]:
    """A ShapesGeneratorNet rebuilt from its safetensors file (architecture and vocabulary from the metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a shapes generator file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    net = ShapesGeneratorNet(json.loads(metadata["vocabulary"]), Arch(**json.loads(metadata["arch"])))
    net.load_state_dict(load_file(str(path)))
    return net, metadata

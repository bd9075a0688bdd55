"""Shared pieces of the CLIP-based rewards: differentiable preprocessing, model loading, dtypes.

``CLIPImageProcessor`` works on PIL/uint8 images and cuts the graph; ``clip_preprocess`` does the
same steps in torch on (B, 3, H, W) floats in [0, 1]: resize the shorter side to ``size``
(bicubic, antialiased, like PIL), center-crop, normalize with the model's mean/std. Scores then
differ from the processor's only by 8-bit quantization and PIL-vs-torch bicubic rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from drpo_bench.errors import MissingWeightsError
from drpo_bench.generators.diffusers_common import resolve_device

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

from drpo_bench.rewards.base import RewardDType  # noqa: E402 - re-exported for the reward modules


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": fp16 on CUDA (how the reward models are usually run), fp32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


@dataclass(frozen=True)
class ImagePrep:
    """What the image side of a CLIP needs: shorter-side size, crop, mean and std."""

    size: int = 224
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD

    @classmethod
    def from_processor_folder(cls, folder: Path) -> ImagePrep:
        """Read ``preprocessor_config.json`` (CLIPImageProcessor); the OpenAI defaults if absent."""
        if not (folder / "preprocessor_config.json").is_file():
            return cls()
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
        size = proc.size.get("shortest_edge") or proc.size.get("height")
        crop = (proc.crop_size["height"], proc.crop_size["width"]) if proc.do_center_crop else (size, size)
        return cls(int(size), (int(crop[0]), int(crop[1])), tuple(proc.image_mean), tuple(proc.image_std))


def clip_preprocess(images: torch.Tensor, prep: ImagePrep) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, crop_h, crop_w) normalized pixel values, differentiable."""
    h, w = images.shape[-2:]
    short = min(h, w)
    new_h, new_w = (prep.size, round(w * prep.size / h)) if h == short else (round(h * prep.size / w), prep.size)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        images = images.clamp(0, 1)  # bicubic overshoots; PIL clips to 8 bits
    ch, cw = prep.crop
    top, left = max((new_h - ch) // 2, 0), max((new_w - cw) // 2, 0)
    images = images[..., top : top + ch, left : left + cw]
    mean = torch.tensor(prep.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


def load_hf(cls: Any, folder: Path, what: str, hub_hint: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)`` offline, with load failures turned into one clear message."""
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"{what}: cannot load {cls.__name__} from {folder} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Re-fetch it: `huggingface-cli download {hub_hint} --local-dir {folder}`."
        ) from exc


class CLIPEmbedder:
    """A transformers CLIPModel with its tokenizer and image preprocessing, frozen, on one device."""

    def __init__(self, model_folder: Path, processor_folder: Path, *, what: str, hub_hint: str, device: str, dtype: str):
        from transformers import CLIPModel, CLIPTokenizer

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = load_hf(CLIPModel, model_folder, what, hub_hint, dtype=self.dtype)
        self.model.requires_grad_(False).eval().to(self.device)
        self.tokenizer = load_hf(CLIPTokenizer, processor_folder, what, hub_hint)
        self.prep = ImagePrep.from_processor_folder(processor_folder)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, P) unit-norm image embeddings (fp32), differentiable."""
        pixels = clip_preprocess(images.to(self.device), self.prep).to(self.dtype)
        out = self.model.get_image_features(pixel_values=pixels)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5: output object
        return F.normalize(emb.float(), dim=-1)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> (B, P) unit-norm text embeddings (fp32); no grad (the text side is fixed)."""
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(emb.float(), dim=-1)

    def to(self, device: torch.device | str) -> CLIPEmbedder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

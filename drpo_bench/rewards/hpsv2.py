"""HPSv2 / HPSv2.1 (Wu et al., 2023, "Human Preference Score v2"): an OpenCLIP ViT-H/14 finetuned
on HPD v2 human choices.

Built as the ``hpsv2`` package builds it, without that package: ``open_clip.create_model("ViT-H-14")``
(random init, no download) + the HPS checkpoint's ``state_dict`` (keys identical to open_clip's
model) loaded with ``torch.load(weights_only=True)``; open_clip's own tokenizer.

Score = cos(image, text) of the normalized features, exactly what ``hpsv2.score`` returns (its
diagonal of ``image_features @ text_features.T``). v2.0 and v2.1 scores are not comparable with
each other.

Default ``version: v2.0``, as the public DrPO eval: it loads ``models/HPSv2/HPS_v2_compressed.pt``
(the v2.0 checkpoint; v2.1 is ``HPS_v2.1_compressed.pt``) and reports the raw cosine
(UGVly/DrPO ``src/drpo/rewards.py``, ``HPSSelector``; ``src/utils/hps_utils.py``). The paper's
HPSv2 column prints it x100 (e.g. 34.85), so ``report_scale`` = 100.

How scores compare with the ``hpsv2`` package: it preprocesses PIL images (bicubic resize of the
shorter side to 224 with PIL, center crop, OpenAI CLIP mean/std) and runs under fp16 autocast;
here the same steps run in torch on float images so the score stays differentiable. Expect
agreement to about 1e-3 in cosine (8-bit quantization and PIL-vs-torch bicubic rounding); this
could not be measured where this was written (no weights), so check once with real weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from drpo_bench.errors import UserError
from drpo_bench.generators.diffusers_common import resolve_device
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.rewards.clip_common import ImagePrep, RewardDType, clip_preprocess, resolve_dtype
from drpo_bench.weights import resolve_file, resolve_weight_file

CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


class HPSv2Config(StrictConfig):
    version: Literal["v2.0", "v2.1"] = "v2.0"  # the public DrPO eval's checkpoint (HPS_v2_compressed.pt); v2.1 selectable
    checkpoint: str = ""  # local .pt file; "" = the HF cache's xswu/HPSv2/<file for `version`>
    model_name: str = "ViT-H-14"  # open_clip architecture the checkpoint was trained from
    architecture_json: str | None = None  # open_clip JSON for a custom architecture (registered before building)
    dtype: RewardDType = "auto"  # fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # "auto" = cuda if available, else cpu


def load_open_clip_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load an HPS-format checkpoint (``{"state_dict": ...}`` or a bare state dict) strictly."""
    try:
        ckpt: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with non-tensor objects
        raise UserError(f"cannot read {path} with torch.load(weights_only=True): {str(exc).splitlines()[0]}") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise UserError(f"{path} holds {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{path} does not match the open_clip architecture: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}. Is `model_name` right?"
        )


@REWARDS.register("hpsv2")
class HPSv2(Reward):
    """HPSv2/v2.1: cos(image, text) of an OpenCLIP ViT-H/14 finetuned on human preferences."""

    Config: ClassVar[type[StrictConfig]] = HPSv2Config
    differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "cosine (~0.27-0.35 for SD images)"
    report_scale: ClassVar[float] = 100.0  # the paper's HPSv2 column is the cosine x100
    definition: ClassVar[dict[str, str]] = {
        "model": "xswu/HPSv2 HPS_v2_compressed.pt on open_clip ViT-H-14",
        "version": "v2.0",
        "formula": "100 * cos(image_features, text_features) (public DrPO eval: raw cosine; paper tables: x100)",
        "score": "cos(image_features, text_features)",
    }

    def __init__(self, config: HPSv2Config) -> None:
        import open_clip

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        checkpoint = self.checkpoint_path()
        self.definition = {  # type: ignore[misc]
            **self.definition, "version": config.version,
            "model": f"{config.checkpoint or 'xswu/HPSv2 ' + CHECKPOINTS[config.version]} on open_clip {config.model_name}",
        }
        if config.architecture_json:
            open_clip.add_model_config(resolve_file(config.architecture_json, what="open_clip model config", how=""))
        self.model = open_clip.create_model(config.model_name, pretrained=None)
        load_open_clip_checkpoint(self.model, checkpoint)
        self.model.requires_grad_(False).eval().to(self.device, self.dtype)
        self.tokenizer = open_clip.get_tokenizer(config.model_name)
        size = self.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.prep = ImagePrep(size, (size, size))  # open_clip's validation transform: OpenAI mean/std

    def checkpoint_path(self) -> Path:
        name = CHECKPOINTS[self.config.version]
        return resolve_weight_file(self.config.checkpoint, what=f"HPS{self.config.version} checkpoint",
                                   hub_repo="xswu/HPSv2", filename=name)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pixels = clip_preprocess(images.to(self.device), self.prep).to(self.dtype)  # (B, 3, 224, 224)
        image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)  # (B, 1024)
        with torch.no_grad():
            text = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float(), dim=-1)
        return (image * text).sum(-1).to(images.device)  # (B,)

    def to(self, device: torch.device | str) -> HPSv2:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self


REWARDS.preset(
    "hpsv2-tiny", HPSv2,
    {"checkpoint": "tiny:open-clip/HPS_tiny_compressed.pt", "model_name": "drpo-tiny-ViT",
     "architecture_json": "tiny:open-clip/drpo-tiny-ViT.json", "device": "cpu", "dtype": "fp32"},
    "HPSv2's loading path with a tiny random open_clip model and checkpoint (tiny:open-clip): tests",
)

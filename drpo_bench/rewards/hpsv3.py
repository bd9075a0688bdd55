"""HPSv3 (Ma et al., 2025, "HPSv3: Towards Wide-Spectrum Human Preference Score",
https://arxiv.org/abs/2508.03789): Qwen2-VL-7B-Instruct with a reward head; ≈ 8.3 B parameters,
448 x 448 images (256 image tokens) and a ≈ 600-token instruction prompt.

Three names:

* ``hpsv3`` — in process and **differentiable** (DRaFT can backpropagate through it):
  transformers' Qwen2-VL classes + HPSv3's head, preprocessing in torch
  (``drpo_bench/rewards/hpsv3_model.py`` says how each step was checked against the package).
  Needs ``HPSv3.safetensors`` (hub ``MizzenAI/HPSv3``) and the *config and tokenizer* of
  ``Qwen/Qwen2-VL-7B-Instruct`` (its 16 GB of weights are not read: the checkpoint holds them)::

      huggingface-cli download MizzenAI/HPSv3 HPSv3.safetensors --local-dir models/
      huggingface-cli download Qwen/Qwen2-VL-7B-Instruct --include '*.json' '*.txt' \
          --local-dir models/Qwen2-VL-7B-Instruct

* ``hpsv3-package`` — the ``hpsv3`` package's own inferencer (``pip install hpsv3``, which pins
  its own transformers), for users who prefer the authors' code; non-differentiable. Serve it
  from that environment and score here through ``remote``::

      drpo-bench serve-reward hpsv3-package --port 8765 [--arg checkpoint=/path/HPSv3.safetensors]
      # suite: reward: {name: remote, args: {url: "http://127.0.0.1:8765"}}

* ``hpsv3-tiny`` — ``hpsv3``'s code on tiny random weights in the same layout (tests, CPU smoke runs).

Why a separate name rather than a flag: ``differentiable`` is a class attribute that ``validate``
reads before anything is built, so each name states one truth about gradients.
Score: HPSv3's ``mu`` (the first of its two outputs, mean and sigma).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.generators.diffusers_common import resolve_device
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import DeviceConfig, ModelConfig, Reward
from drpo_bench.rewards.clip_common import RewardDType, resolve_dtype
from drpo_bench.rewards.hpsv3_model import HPSV3_IMAGE_TOKENS, LoadedHPSv3, load_hpsv3, score_hpsv3
from drpo_bench.weights import resolve_folder, resolve_weight_file

SERVE_HOW = (
    "Or run the hpsv3 package in its own environment: there, `pip install hpsv3` and drpo-bench, then "
    "`drpo-bench serve-reward hpsv3-package --port 8765`; here, use reward `remote` with url http://127.0.0.1:8765 "
    "(not differentiable)."
)
SCALE = "HPSv3 mu (~5-15 for SD-class images)"


class HPSv3Config(ModelConfig):
    checkpoint: str = ""  # HPSv3.safetensors; "" = MizzenAI/HPSv3 from the HF cache
    base: str = "Qwen/Qwen2-VL-7B-Instruct"  # config + tokenizer + chat template (hub id or folder); no weights read
    revision: str | None = None  # hub revision of `base`; None = what the cache has
    dtype: RewardDType = "auto"  # "auto" = bf16 on CUDA (HPSv3's own dtype; Qwen2 overflows in fp16), fp32 on CPU
    image_tokens: int = Field(HPSV3_IMAGE_TOKENS, gt=0)  # HPSv3 fixes min = max pixels = 256 x 28^2 (448 x 448)
    resample: Literal["bicubic", "bilinear"] = "bicubic"  # bicubic+antialias = the package's resize (PIL); bilinear matches nothing
    gradient_checkpointing: bool = False  # recompute Qwen2-VL layers in backward: DRaFT memory for time


@REWARDS.register("hpsv3")
class HPSv3(Reward):
    """HPSv3 in process: Qwen2-VL-7B + reward head, mu at <|Reward|>, differentiable w.r.t. the pixels."""

    Config: ClassVar[type[StrictConfig]] = HPSv3Config
    differentiable: ClassVar[bool] = True
    scale: ClassVar[str] = SCALE
    report_scale: ClassVar[float] = 1.0  # the paper shows HPSv3 only as training curves, on its own scale
    definition: ClassVar[dict[str, str]] = {
        "model": "MizzenAI/HPSv3 (Qwen2-VL-7B + reward head), in process",
        "version": "v3",
        "formula": "mu of HPSv3's (mu, sigma) output, read at the <|Reward|> token, for (image, prompt)",
    }

    def __init__(self, config: HPSv3Config) -> None:
        self.config = config
        self.definition = {**self.definition, "model": f"{config.checkpoint or 'MizzenAI/HPSv3'} on {config.base} "  # type: ignore[misc]
                                                       "(Qwen2-VL + reward head), in process"}
        device = resolve_device(config.device)
        auto_bf16 = config.dtype == "auto" and device.type == "cuda"
        dtype = torch.bfloat16 if auto_bf16 else resolve_dtype(config.dtype, device)
        try:
            checkpoint, base = self.locate()
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{exc} {SERVE_HOW}") from exc
        self.model: LoadedHPSv3 = load_hpsv3(
            checkpoint, base, device=device, dtype=dtype, image_tokens=config.image_tokens, resample=config.resample
        )
        if config.gradient_checkpointing:
            qwen = self.model.network.model
            # transformers >= 5: activation_checkpointing_enable; older: gradient_checkpointing_enable
            enable = getattr(qwen, "activation_checkpointing_enable", None) or qwen.gradient_checkpointing_enable
            enable({"use_reentrant": False})
            qwen.train()  # transformers checkpoints only in training mode (Qwen2-VL: no dropout; head stays eval)

    def locate(self) -> tuple[Path, Path]:
        """(HPSv3.safetensors, the Qwen2-VL-7B-Instruct config/tokenizer folder)."""
        cfg = self.config
        checkpoint = resolve_weight_file(cfg.checkpoint, what="HPSv3 checkpoint", hub_repo="MizzenAI/HPSv3",
                                         filename="HPSv3.safetensors")
        base = resolve_folder(
            cfg.base, what="HPSv3 base (Qwen2-VL-7B-Instruct config + tokenizer)", revision=cfg.revision,
            allow_patterns=["*.json", "*.txt", "*.jinja"], must_contain=("config.json", "tokenizer_config.json"),
            hub_id="Qwen/Qwen2-VL-7B-Instruct",
        )
        return checkpoint, base

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return score_hpsv3(self.model, images, prompts)[:, 0].to(images.device)  # (B,) mu

    def to(self, device: torch.device | str) -> HPSv3:
        self.model.network.to(device)
        return self



REWARDS.preset(
    "hpsv3-tiny", HPSv3,
    {"checkpoint": "tiny:hpsv3/HPSv3.safetensors", "base": "tiny:hpsv3/base", "device": "cpu", "dtype": "fp32",
     "image_tokens": 16},  # the tiny twin's 32 x 32 px (patch 4, merge 2); real 256 at 448 px
    "HPSv3's loader and code on tiny random weights in the public layout (tiny:hpsv3): tests and CPU smoke runs",
)


HOW = (
    "hpsv3-package runs the hpsv3 package in its own environment: there, `pip install hpsv3` and drpo-bench, then "
    "`drpo-bench serve-reward hpsv3-package --port 8765`; here, use reward `remote` with url http://127.0.0.1:8765. "
    "For a differentiable HPSv3 in this environment use reward `hpsv3`."
)


class HPSv3PackageConfig(DeviceConfig):
    checkpoint: str = ""  # HPSv3.safetensors; "" = the package's default (MizzenAI/HPSv3 from the HF cache)


@REWARDS.register("hpsv3-package")
class HPSv3Package(Reward):
    """HPSv3 through the authors' hpsv3 package (its own environment): serve it and use `remote`."""

    Config: ClassVar[type[StrictConfig]] = HPSv3PackageConfig
    differentiable: ClassVar[bool] = False
    scale: ClassVar[str] = SCALE
    report_scale: ClassVar[float] = 1.0  # as the in-process hpsv3
    definition: ClassVar[dict[str, str]] = {
        **HPSv3.definition, "model": "MizzenAI/HPSv3 through the authors' hpsv3 package (served)",
    }

    def __init__(self, config: HPSv3PackageConfig) -> None:
        try:
            from drpo_bench.rewards.servers.hpsv3_adapter import HPSv3Adapter
        except ImportError as exc:
            raise UserError(f"reward hpsv3-package: cannot import the hpsv3 package ({exc}). {HOW}") from exc
        self.config = config
        self.adapter = HPSv3Adapter(config.checkpoint, str(resolve_device(config.device)))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.adapter.score(images, prompts)

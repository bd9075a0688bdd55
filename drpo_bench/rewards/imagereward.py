"""ImageReward (Xu et al., 2023, https://arxiv.org/abs/2304.05977): BLIP ViT-L/16 + a BERT text encoder
cross-attending to the image + an MLP head, trained on 137k expert comparisons; scores standardized
with the published mean/std (the DrPO paper prints them x10).

Three names:

* ``imagereward`` — in process and **differentiable** (ReFL's and DRaFT's reward): transformers' BLIP
  classes loading the official ``ImageReward.pt`` by a key map (``drpo_bench/rewards/imagereward_model.py``
  says how each step follows the package; ``tests/test_imagereward_official.py`` checks it against the
  package on shared random weights). Needs ``ImageReward.pt`` + ``med_config.json`` (hub
  ``THUDM/ImageReward``) and ``bert-base-uncased``'s tokenizer files::

      huggingface-cli download THUDM/ImageReward ImageReward.pt med_config.json --local-dir models/ImageReward
      huggingface-cli download bert-base-uncased vocab.txt tokenizer_config.json --local-dir models/bert-base-uncased

* ``imagereward-package`` — the authors' ``image-reward`` package (its own environment:
  ``bash scripts/make_imagereward_env.sh``), non-differentiable; serve it there and score here::

      drpo-bench serve-reward imagereward-package --port 8766 [--arg checkpoint=/path/ImageReward.pt]
      # suite: reward: {name: remote, args: {url: "http://127.0.0.1:8766"}}

* ``imagereward-tiny`` — ``imagereward``'s code on tiny random weights in the official layout (tests, CPU runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.generators.diffusers_common import resolve_device
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import DeviceConfig, ModelConfig, Reward
from drpo_bench.rewards.clip_common import RewardDType, resolve_dtype
from drpo_bench.rewards.imagereward_model import LoadedImageReward, load_imagereward, score_imagereward
from drpo_bench.weights import resolve_folder, resolve_weight_file

SCALE = "standardized score (mean 0, std 1 on the authors' data), ~0.5-1.3 for SD-Turbo images"
DEFINITION: dict[str, str] = {
    "model": "THUDM/ImageReward ImageReward-v1.0 (BLIP ViT-L + BERT-base, MLP head)",
    "version": "v1.0",
    "formula": "10 * (mlp(text_encoder(prompt, image)[CLS]) - mean) / std (ImageReward.score; paper tables: x10)",
    "score": "(mlp(text_encoder(prompt, image)[CLS]) - mean) / std",
}
SERVE_HOW = (
    "Or run the authors' image-reward package in its own environment (`bash scripts/make_imagereward_env.sh`): "
    "there, `drpo-bench serve-reward imagereward-package --port 8766`; here, reward `remote` with url "
    "http://127.0.0.1:8766 (not differentiable)."
)


class ImageRewardConfig(ModelConfig):
    checkpoint: str = ""  # ImageReward.pt; "" = THUDM/ImageReward from the HF cache
    med_config: str = ""  # med_config.json; "" = the one beside `checkpoint`, else THUDM/ImageReward's
    tokenizer: str = "bert-base-uncased"  # BLIP's WordPiece vocabulary (hub id or folder); [DEC]/[ENC] added at load
    dtype: RewardDType = "auto"  # fp16 on CUDA, fp32 on CPU (the MLP head always fp32)


@REWARDS.register("imagereward")
class ImageReward(Reward):
    """ImageReward v1.0 in process: BLIP (transformers) + MLP head, differentiable w.r.t. the pixels."""

    Config: ClassVar[type[StrictConfig]] = ImageRewardConfig
    differentiable: ClassVar[bool] = True
    scale: ClassVar[str] = SCALE
    report_scale: ClassVar[float] = 10.0  # the paper's tables print "IR = ImageReward x 10" (SD-Turbo base 5.75)
    definition: ClassVar[dict[str, str]] = DEFINITION

    def __init__(self, config: ImageRewardConfig) -> None:
        self.config = config
        device = resolve_device(config.device)
        try:
            checkpoint, med_config, tokenizer = self.locate()
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{exc} {SERVE_HOW}") from exc
        self.model: LoadedImageReward = load_imagereward(
            checkpoint, med_config, tokenizer, device=device, dtype=resolve_dtype(config.dtype, device)
        )

    def locate(self) -> tuple[Path, Path, Path]:
        """(ImageReward.pt, med_config.json, the bert-base-uncased tokenizer folder)."""
        cfg = self.config
        checkpoint = resolve_weight_file(cfg.checkpoint, what="ImageReward checkpoint", hub_repo="THUDM/ImageReward",
                                         filename="ImageReward.pt")
        beside = checkpoint.parent / "med_config.json"
        med = cfg.med_config or (str(beside) if beside.is_file() else "")
        med_config = resolve_weight_file(med, what="ImageReward med_config.json", hub_repo="THUDM/ImageReward",
                                         filename="med_config.json")
        tokenizer = resolve_folder(cfg.tokenizer, what="ImageReward tokenizer (bert-base-uncased)",
                                   allow_patterns=["vocab.txt", "*.json"], must_contain=("vocab.txt",),
                                   hub_id="bert-base-uncased")
        return checkpoint, med_config, tokenizer

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return score_imagereward(self.model, images, prompts).to(images.device)  # (B,)

    def to(self, device: torch.device | str) -> ImageReward:
        self.model.network.to(device)
        return self


REWARDS.preset(
    "imagereward-tiny", ImageReward,
    {"checkpoint": "tiny:imagereward/ImageReward.pt", "tokenizer": "tiny:imagereward/bert-base-uncased",
     "device": "cpu", "dtype": "fp32"},
    "ImageReward's loader and code on tiny random weights in the official layout (tiny:imagereward): tests, CPU runs",
)


HOW = (
    "imagereward-package runs the authors' image-reward package in its own environment: build it with "
    "`bash scripts/make_imagereward_env.sh`, then there `drpo-bench serve-reward imagereward-package --port 8766`; "
    "here, use reward `remote` with url http://127.0.0.1:8766. For a differentiable ImageReward in this "
    "environment use reward `imagereward`."
)


class ImageRewardPackageConfig(DeviceConfig):
    checkpoint: str = "ImageReward-v1.0"  # package model name (downloads THUDM/ImageReward) or a local ImageReward.pt
    med_config: str | None = None  # med_config.json beside a local checkpoint; None = the package's


@REWARDS.register("imagereward-package")
class ImageRewardPackage(Reward):
    """ImageReward v1.0 through the authors' image-reward package (its own environment): serve it, use `remote`."""

    Config: ClassVar[type[StrictConfig]] = ImageRewardPackageConfig
    differentiable: ClassVar[bool] = False
    scale: ClassVar[str] = SCALE
    report_scale: ClassVar[float] = 10.0  # as the in-process imagereward
    definition: ClassVar[dict[str, str]] = {**DEFINITION, "model": DEFINITION["model"] + " through the image-reward package"}

    def __init__(self, config: ImageRewardPackageConfig) -> None:
        try:
            from drpo_bench.rewards.servers.imagereward_adapter import ImageRewardAdapter
        except ImportError as exc:
            raise UserError(f"reward imagereward-package: cannot import the ImageReward package ({exc}). {HOW}") from exc
        self.config = config
        self.adapter = ImageRewardAdapter(config.checkpoint, config.med_config, str(resolve_device(config.device)))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.adapter.score(images, prompts)

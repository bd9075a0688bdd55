"""ImageReward (Xu et al., 2023): BLIP ViT-L/16 + BERT-base cross-attention + MLP head, trained
on 137k expert comparisons; scores standardized with the published mean/std (DrPO prints ×10).

Decision: a separate environment behind the remote reward, not a compatibility layer. The
official package loads ``ImageReward.pt`` into its own BLIP/BERT code (``med.py``) and pins an
older transformers, timm and fairscale; re-mapping that checkpoint onto transformers' BLIP
classes would be a second implementation that cannot be checked against the real weights here
(none can be downloaded), and ImageReward is only an evaluation metric in the paper, where a
non-differentiable remote score is enough. So:

    # in an environment with drpo-bench and `pip install image-reward`:
    drpo-bench serve-reward imagereward --port 8766 --arg checkpoint=ImageReward-v1.0
    # in the suite:  metric/reward {name: remote, args: {url: "http://127.0.0.1:8766"}}

Constructing ``imagereward`` succeeds only where the package is installed (the server side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from drpo_bench.errors import UserError
from drpo_bench.generators.diffusers_common import resolve_device
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import DeviceConfig, Reward

HOW = (
    "ImageReward runs in its own environment: there, `pip install image-reward` and drpo-bench, then run "
    "`drpo-bench serve-reward imagereward --port 8766`; here, use reward `remote` with url http://127.0.0.1:8766."
)


class ImageRewardConfig(DeviceConfig):
    checkpoint: str = "ImageReward-v1.0"  # package model name (downloads THUDM/ImageReward) or a local ImageReward.pt
    med_config: str | None = None  # med_config.json beside a local checkpoint; None = the package's


@REWARDS.register("imagereward")
class ImageReward(Reward):
    """ImageReward v1.0 (BLIP-based); needs the image-reward package: serve it and use `remote`."""

    Config: ClassVar[type[StrictConfig]] = ImageRewardConfig
    differentiable: ClassVar[bool] = False
    scale: ClassVar[str] = "standardized score (mean 0, std 1 on the authors' data), ~0.5-1.3 for SD-Turbo images"
    report_scale: ClassVar[float] = 10.0  # the paper's tables print "IR = ImageReward x 10" (SD-Turbo base 5.75)
    definition: ClassVar[dict[str, str]] = {
        "model": "THUDM/ImageReward ImageReward-v1.0 (BLIP ViT-L + BERT-base, MLP head)",
        "version": "v1.0",
        "formula": "10 * (mlp(text_encoder(prompt, image)[CLS]) - mean) / std (ImageReward.score; paper tables: x10)",
        "score": "(mlp(text_encoder(prompt, image)[CLS]) - mean) / std",
    }

    def __init__(self, config: ImageRewardConfig) -> None:
        try:
            from drpo_bench.rewards.servers.imagereward_adapter import ImageRewardAdapter
        except ImportError as exc:
            raise UserError(f"reward imagereward: cannot import the ImageReward package ({exc}). {HOW}") from exc
        self.config = config
        self.adapter = ImageRewardAdapter(config.checkpoint, config.med_config, str(resolve_device(config.device)))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.adapter.score(images, prompts)

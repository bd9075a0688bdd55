"""HPSv3 (Ma et al., 2025, "HPSv3: Towards Wide-Spectrum Human Preference Score"): Qwen2-VL-7B
with a reward head; ≈ 8.3 B parameters, 448 px images.

It runs in its own environment (the ``hpsv3`` package pins its own transformers and
qwen-vl-utils), behind the remote reward:

    # in an environment with drpo-bench and `pip install hpsv3`:
    drpo-bench serve-reward hpsv3 --port 8765 [--arg checkpoint=/path/HPSv3.safetensors]
    # in the training environment's suite:
    reward: {name: remote, args: {url: "http://127.0.0.1:8765"}}

Constructing ``hpsv3`` here succeeds only where that package is installed (the server side);
elsewhere it stops with the instructions above. Score: the mean of HPSv3's (mean, sigma) output.
Non-differentiable as served (the DRaFT comparison in the paper backpropagates through HPSv3
in-process; that needs the package's differentiable mode and is not wired here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from drpo_bench.errors import UserError
from drpo_bench.generators.diffusers_common import resolve_device
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward

HOW = (
    "HPSv3 runs in its own environment: there, `pip install hpsv3` and drpo-bench, then run "
    "`drpo-bench serve-reward hpsv3 --port 8765`; here, use reward `remote` with url http://127.0.0.1:8765."
)


class HPSv3Config(StrictConfig):
    checkpoint: str = ""  # HPSv3.safetensors; "" = the package's default (MizzenAI/HPSv3 from the HF cache)
    device: str = "auto"  # "auto" = cuda if available, else cpu


@REWARDS.register("hpsv3")
class HPSv3(Reward):
    """HPSv3 (Qwen2-VL-7B reward model); needs the hpsv3 package: serve it and use `remote`."""

    Config: ClassVar[type[StrictConfig]] = HPSv3Config
    differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "HPSv3 mean score (~5-15 for SD-class images)"
    report_scale: ClassVar[float] = 1.0  # the paper shows HPSv3 only as training curves, on its own scale
    definition: ClassVar[dict[str, str]] = {
        "model": "MizzenAI/HPSv3 (Qwen2-VL-7B + reward head)",
        "version": "v3",
        "formula": "mu of HPSv3's (mu, sigma) output for (image, prompt)",
    }

    def __init__(self, config: HPSv3Config) -> None:
        try:
            from drpo_bench.rewards.servers.hpsv3_adapter import HPSv3Adapter
        except ImportError as exc:
            raise UserError(f"reward hpsv3: cannot import the hpsv3 package ({exc}). {HOW}") from exc
        self.config = config
        self.adapter = HPSv3Adapter(config.checkpoint, str(resolve_device(config.device)))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.adapter.score(images, prompts)

"""HPSv3 through its own package (``pip install hpsv3``, MizzenAI/HPSv3): importable only there.

Wraps ``hpsv3.HPSv3RewardInferencer``: Qwen2-VL-7B-Instruct with HPSv3's reward head; images are
resized by its processor to 448 x 448 (256 LLM tokens). Its ``reward`` returns (B, 2): a mean and
a sigma per image; the score is the mean, as the HPSv3 authors use it.

Used by the reward ``hpsv3-package`` (serve it with ``drpo-bench serve-reward hpsv3-package``);
the in-process, differentiable ``hpsv3`` does not need this package. Not exercised by this
project's tests (no 7B weights, and ``hpsv3`` pins its own transformers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hpsv3 import HPSv3RewardInferencer  # noqa: F401 - the import is the environment check
from PIL import Image

from drpo_bench.rewards.jpeg import to_uint8_hwc


class HPSv3Adapter:
    def __init__(self, checkpoint: str | None, device: str) -> None:
        self.inferencer = HPSv3RewardInferencer(checkpoint_path=checkpoint or None, device=device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pil = [Image.fromarray(array) for array in to_uint8_hwc(images)]
        rewards = self.inferencer.reward(prompts=list(prompts), image_paths=pil)  # (B, 2): mu, sigma
        return rewards[:, 0].float().cpu()

"""SD-Turbo (stabilityai/sd-turbo): SD 2.1 architecture distilled for one step, 512 px.

Conditioning: the OpenCLIP ViT-H/14 text tower (penultimate layer kept, as shipped in
``text_encoder/``), last hidden state (B, 77, 1024); tokenizer pads with "!" (that token then
maps to id 0, as in the diffusers pipeline). One step: see ``diffusers_common``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch

from drpo_bench.generators.base import Conditioning
from drpo_bench.generators.diffusers_common import DiffusersOneStepGenerator, OneStepConfig, PretrainedMixin
from drpo_bench.registry import GENERATORS


class SDTurboConfig(OneStepConfig, PretrainedMixin):
    pretrained: str = "stabilityai/sd-turbo"  # hub id in the local HF cache, or a local diffusers folder
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # public SD-Turbo DrPO trainer loads every part in fp32 (fp16 autocast)


@GENERATORS.register("sd-turbo")
class SDTurboGenerator(DiffusersOneStepGenerator):
    """SD-Turbo, one step at t = 999, LoRA on the UNet attention projections."""

    Config: ClassVar[type[OneStepConfig]] = SDTurboConfig
    family: ClassVar[str] = "SD-Turbo"
    hub_id: ClassVar[str] = "stabilityai/sd-turbo"
    parts: ClassVar[tuple[str, ...]] = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")
    scheduler_class: ClassVar[str] = "EulerDiscreteScheduler"

    def _load_text(self, folder: Path) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = self._from_pretrained(CLIPTokenizer, folder, "tokenizer")
        self.text_encoder = self._from_pretrained(CLIPTextModel, folder, "text_encoder", dtype=self.dtype)
        self.text_encoders = (self.text_encoder,)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        ids = self._tokenize(self.tokenizer, prompts)  # (B, 77)
        return {"prompt_embeds": self.text_encoder(ids, return_dict=False)[0]}  # (B, 77, 1024)


GENERATORS.preset(
    "sd-turbo-tiny", SDTurboGenerator,
    # tiny VAE downsamples 4x: 64 px gives 16x16 latents, which keep CPU tests fast
    {"pretrained": "tiny:sd-turbo", "resolution": 64, "device": "cpu", "dtype": "fp32"},
    "SD-Turbo's classes and loader on tiny random weights (tiny:sd-turbo): tests and CPU smoke runs",
)

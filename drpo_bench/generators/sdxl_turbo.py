"""SDXL-Turbo (stabilityai/sdxl-turbo): SDXL architecture distilled for one step, used at 512 px.

Conditioning, as ``StableDiffusionXLPipeline.encode_prompt``: both text encoders' penultimate
hidden states concatenated, (B, 77, 768 + 1280); the second encoder's projected pooled output
(B, 1280); added time ids (B, 6) = (H, W, crop top, crop left, H, W). The VAE runs in fp32 (it
overflows in fp16; diffusers upcasts it too). One step: see ``diffusers_common``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from drpo_bench.generators.base import Conditioning
from drpo_bench.generators.diffusers_common import DiffusersOneStepGenerator, OneStepConfig, PretrainedMixin
from drpo_bench.registry import GENERATORS


class SDXLTurboConfig(OneStepConfig, PretrainedMixin):
    pretrained: str = "stabilityai/sdxl-turbo"  # hub id in the local HF cache, or a local diffusers folder
    dtype: Literal["fp32", "fp16", "bf16"] = "bf16"  # public SDXL-Turbo trainers load the pipeline in the bf16 run dtype (VAE kept fp32 here)


@GENERATORS.register("sdxl-turbo")
class SDXLTurboGenerator(DiffusersOneStepGenerator):
    """SDXL-Turbo, one step at t = 999, two text encoders, LoRA on the UNet attention projections."""

    Config: ClassVar[type[OneStepConfig]] = SDXLTurboConfig
    family: ClassVar[str] = "SDXL-Turbo"
    hub_id: ClassVar[str] = "stabilityai/sdxl-turbo"
    parts: ClassVar[tuple[str, ...]] = (
        "unet", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
    )
    scheduler_class: ClassVar[str] = "EulerAncestralDiscreteScheduler"
    vae_fp32: ClassVar[bool] = True

    def _load_text(self, folder: Path) -> None:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.tokenizer = self._from_pretrained(CLIPTokenizer, folder, "tokenizer")
        self.tokenizer_2 = self._from_pretrained(CLIPTokenizer, folder, "tokenizer_2")
        self.text_encoder = self._from_pretrained(CLIPTextModel, folder, "text_encoder", dtype=self.dtype)
        self.text_encoder_2 = self._from_pretrained(
            CLIPTextModelWithProjection, folder, "text_encoder_2", dtype=self.dtype
        )
        self.text_encoders = (self.text_encoder, self.text_encoder_2)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = encoder(self._tokenize(tokenizer, prompts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # (B, 77, D_i) penultimate layer, as the pipeline
        pooled = out.text_embeds  # (B, 1280) projected pooled output of the second encoder
        side = self.config.resolution
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=self.device, dtype=pooled.dtype)
        return {
            "prompt_embeds": torch.cat(hidden, dim=-1),  # (B, 77, 2048)
            "pooled_prompt_embeds": pooled,
            "time_ids": time_ids.repeat(len(prompts), 1),  # (B, 6)
        }

    def _unet_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        dtype = self.unet.dtype
        return {
            "added_cond_kwargs": {
                "text_embeds": cond["pooled_prompt_embeds"].to(dtype),
                "time_ids": cond["time_ids"].to(dtype),
            }
        }


GENERATORS.preset(
    "sdxl-turbo-tiny", SDXLTurboGenerator,
    # tiny VAE downsamples 4x: 64 px gives 16x16 latents, which keep CPU tests fast
    {"pretrained": "tiny:sdxl-turbo", "resolution": 64, "device": "cpu", "dtype": "fp32"},
    "SDXL-Turbo's classes and loader on tiny random weights (tiny:sdxl-turbo): tests and CPU smoke runs",
)

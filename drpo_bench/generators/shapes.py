"""The embedded shapes world's one-step generator (CPU-sized, shipped weights, LoRA via peft).

noise (8, 8, 8) + prompt -> denoiser (one forward) -> latents (8, 8, 8) -> frozen decoder ->
image (3, 32, 32) in [0, 1]. The networks are in ``drpo_bench.shapes.generator_model``; the
shipped weights come from ``python -m drpo_bench.shapes.pretrain_generator`` (see that module).
Why a learned latent autoencoder rather than a fixed map (sigmoid of a 3x32x32 "latent"): the
frozen decoder only draws flat-colored shapes on black, so even an imperfect denoiser yields
clean, checkable images; the denoiser works in 512 dims instead of 3072; and the latents /
decode split is the one SD-Turbo has, so DrPO's latent- and image-feature paths both run.

Only the denoiser gets LoRA; the text encoder and decoder stay frozen, as in SD LoRA finetuning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import Field

from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.generators.base import Conditioning, Generator
from drpo_bench.registry import GENERATORS, Seed, StrictConfig

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "shapes_generator.safetensors"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@GENERATORS.register("shapes")
class ShapesGenerator(Generator):
    """Embedded shapes generator: ~0.5M-parameter one-step text-to-image model, 32x32, CPU-fast."""

    class Config(StrictConfig):
        weights: str = ""  # "" = the shipped drpo_bench/assets/shapes_generator.safetensors
        lora_rank: int = Field(8, ge=1)  # r 8 covers the 64-wide attention/FiLM layers (r 16 is the paper's, for 320+ widths)
        lora_alpha: float = Field(8.0, gt=0)  # alpha = r: LoRA scale 1, as in the DrPO public code
        # attention q/k/v/out and feed-forward (the paper's targets) plus FiLM, which carries the
        # prompt into every ResBlock: attention-only would leave the convolutional half untouched
        lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out", "ff_in", "ff_out", "film")
        lora_seed: Seed = 0  # LoRA A matrices start random: a fixed seed keeps cells comparable
        device: str = "auto"  # "auto" = cuda if available, else cpu

    @classmethod
    def weight_files(cls, config: Config) -> list[Path]:
        """The file this config loads (part of a cell's code hash, drpo_bench.suite.code_hash)."""
        return [Path(config.weights).expanduser() if config.weights else SHIPPED_WEIGHTS]

    def __init__(self, config: Config | None = None) -> None:
        from peft import LoraConfig, get_peft_model

        from drpo_bench.shapes.generator_model import load_net

        self.config = config or self.Config()
        self._device = resolve_device(self.config.device)
        path = self.weight_files(self.config)[0]
        if not path.is_file():
            raise MissingWeightsError(
                f"shapes generator: no weights file at {path}. Rebuild it with "
                f"`python -m drpo_bench.shapes.pretrain_generator --out {path}`, or set `weights` to an existing file."
            )
        try:
            net, self.metadata = load_net(path)
        except (ValueError, RuntimeError, OSError) as exc:
            raise UserError(f"shapes generator: cannot load {path}: {exc}") from exc
        net.requires_grad_(False).eval()
        lora = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            target_modules=list(self.config.lora_targets),
            lora_dropout=0.0,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.lora_seed)
            try:
                self.denoiser = get_peft_model(net.denoiser, lora)  # B = 0: starts exactly at the base
            except ValueError as exc:
                raise UserError(f"shapes generator: lora_targets {list(self.config.lora_targets)}: {exc}") from exc
        # the base weights and the adapter are both float32, so PEFT's cast of a LoRA layer's input to the
        # adapter's dtype only ever undoes autocast (bf16 -> float32, then back to bf16 for the matmul):
        # the same numbers, two copies of the activation per layer (tests/test_precision.py)
        for module in self.denoiser.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
        self.net = net.to(self._device)
        self.denoiser.to(self._device)
        self._reference_depth = 0

    # ---- the Generator protocol ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.net.latent_shape  # (8, 8, 8)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """{"tokens": (B, T, D), "mask": (B, T) bool, "pooled": (B, D)} from the frozen text encoder."""
        try:
            return self.net.encode_text(list(prompts))
        except ValueError as exc:
            raise UserError(f"shapes generator: {exc}") from exc

    def sample(self, noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """(B, 8, 8, 8) noise -> (B, 8, 8, 8) latents in one forward, with grad through LoRA."""
        if tuple(noise.shape[1:]) != self.latent_shape:
            raise ValueError(f"shapes generator: noise must be (B, {self.latent_shape}), got {tuple(noise.shape)}")
        if noise.shape[0] != cond["pooled"].shape[0]:
            raise ValueError(
                f"shapes generator: {noise.shape[0]} noises for {cond['pooled'].shape[0]} conditionings; "
                "repeat the conditioning (repeat_conditioning) to match"
            )
        return self.denoiser(noise.float(), cond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 8, 8, 8) latents -> (B, 3, 32, 32) images in [0, 1], differentiable (frozen decoder)."""
        return self.net.decode(latents.float())

    @contextmanager
    def reference(self) -> Iterator[None]:
        """LoRA off (peft ``disable_adapter``): the frozen base answers. Re-entrant."""
        if self._reference_depth:
            self._reference_depth += 1
            try:
                yield
            finally:
                self._reference_depth -= 1
            return
        with self.denoiser.disable_adapter():
            self._reference_depth = 1
            try:
                yield
            finally:
                self._reference_depth = 0

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.denoiser)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        expected = self.adapter_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
        if missing or unexpected or wrong:
            raise UserError(
                f"shapes generator: adapter does not match this generator's LoRA (rank {self.config.lora_rank}, "
                f"targets {list(self.config.lora_targets)}): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"wrong shape {wrong[:3]}"
            )
        set_peft_model_state_dict(self.denoiser, {k: v.to(self._device) for k, v in state.items()})

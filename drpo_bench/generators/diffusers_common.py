"""Shared machinery for diffusers one-step generators (SD-Turbo, SDXL-Turbo).

One step, exactly as the diffusers pipelines run these models with ``num_inference_steps=1``:
the scheduler's trailing spacing gives t = 999; the pipeline draws ``latents = ε · init_noise_sigma``
and feeds the UNet ``scale_model_input(latents) = latents / √(σ²+1)``, which is the VP noisy latent
x_t; the Euler step to σ = 0 is then exactly

    x0 = (x_t − √(1−ᾱ)·ε̂) / √ᾱ,        ᾱ = ᾱ_999 = 1 / (1 + σ²).

With ``timestep_spacing="trailing"``, diffusers' ``init_noise_sigma`` is σ_max (not √(σ²+1)), so
x_t = √(1−ᾱ)·ε ≈ 0.9977·ε. This is ``convention="diffusers"`` (the default).

``convention="drpo"`` reproduces the authors' public SD-Turbo code (``src/drpo/sdturbo.py``):
x_t = ε (unit noise straight into the UNet) and the clean latent re-projected to timestep 0,
√ᾱ₀·x0 + √(1−ᾱ₀)·ε̂ (their constants 0.9977, 0.0683, 0.9996, 0.0292 are these square roots).
The two differ by 0.23 % in the UNet input and by ≈0.03·ε̂ in the output; the published
SD-Turbo numbers were produced with "drpo", the SDXL-Turbo ones with the diffusers pipeline path.

LoRA comes from peft through diffusers' ``add_adapter``; ``reference()`` switches the adapters off
(``disable_adapters``) so the frozen base answers from the same weights. ``save_adapter`` writes
diffusers' LoRA format (``save_lora_weights``: keys ``unet.…lora.down/up.weight``, the peft
LoRA config as ``lora_adapter_metadata``), so a cell's ``adapter.safetensors`` loads with
``StableDiffusionPipeline.load_lora_weights`` (``StableDiffusionXLPipeline`` for SDXL-Turbo);
``load_adapter`` reads that, peft's own layout (drpo-bench before this format, checkpoints) and
peft ``save_pretrained`` folders.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.generators.base import Conditioning, Generator, read_adapter, resolve_adapter_file
from drpo_bench.registry import Seed, StrictConfig
from drpo_bench.weights import resolve_folder

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class OneStepConfig(StrictConfig):
    """Options shared by every diffusers one-step generator (weights location is per class)."""

    lora_rank: int = 16  # DrPO public code: r 16 on the UNet attention projections
    lora_alpha: int = 16  # DrPO public code: α 16 (LoRA scale α/r = 1)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # DrPO public code's target modules
    lora_seed: Seed = 0  # LoRA A matrices start random: a fixed seed keeps cells comparable
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # frozen weights' dtype; LoRA weights always stay fp32
    gradient_checkpointing: bool = False  # trade compute for memory in UNet and VAE decoder backward
    vae_slicing: bool = True  # decode one image at a time: VAE activations dominate peak memory at 512 px
    resolution: int = 512  # SD-Turbo and SDXL-Turbo are both used at 512 px in the paper
    device: str = "auto"  # "auto" = cuda if available, else cpu
    convention: Literal["diffusers", "drpo"] = "diffusers"  # one-step math: see the module docstring


class PretrainedMixin(StrictConfig):
    pretrained: str = ""  # hub id (looked up in the local HF cache) or a local folder in diffusers layout
    revision: str | None = None  # hub revision (commit, branch or tag); None = what the cache has
    variant: str | None = None  # "fp16" loads the half-size weight files the hub repos also ship


class DiffusersOneStepGenerator(Generator):
    """A diffusers UNet + VAE + CLIP text encoder(s) run for one Euler step at t = 999, with LoRA."""

    Config: ClassVar[type[OneStepConfig]] = OneStepConfig
    #: human name in error messages, and the hub repo the download hint names
    family: ClassVar[str] = ""
    hub_id: ClassVar[str] = ""
    #: subfolders a complete pipeline folder has
    parts: ClassVar[tuple[str, ...]] = ("unet", "vae", "scheduler")
    #: scheduler class (diffusers name) the model ships with
    scheduler_class: ClassVar[str] = "EulerDiscreteScheduler"
    #: cast the VAE to fp32 whatever ``dtype`` says (SDXL's VAE overflows in fp16)
    vae_fp32: ClassVar[bool] = False

    def __init__(self, config: OneStepConfig) -> None:
        self.config = config
        self._device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self._reference_depth = 0
        self._checkpointing_paused = False
        self.folder = self.weights_folder()
        self._load(self.folder)
        self._add_lora()
        self._coefficients = one_step_coefficients(self.scheduler, config.convention)

    # ---- loading --------------------------------------------------------------------------------
    def weights_folder(self) -> Path:
        cfg = self.config
        patterns = ["model_index.json", *(f"{part}/*" for part in self.parts)]
        return resolve_folder(
            cfg.pretrained,  # type: ignore[attr-defined]
            what=f"{self.family} weights",
            revision=cfg.revision,  # type: ignore[attr-defined]
            allow_patterns=patterns,
            must_contain=self.parts,
            hub_id=self.hub_id,
        )

    def _from_pretrained(self, cls: Any, folder: Path, subfolder: str, **kwargs: Any) -> Any:
        """``cls.from_pretrained(folder, subfolder=...)`` with every failure turned into one clear message."""
        variant = getattr(self.config, "variant", None)
        if variant is not None and subfolder not in ("tokenizer", "tokenizer_2", "scheduler"):
            kwargs["variant"] = variant
        try:
            return cls.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise MissingWeightsError(
                f"{self.family}: cannot load {subfolder}/ from {folder} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
                f"Re-fetch the folder: `huggingface-cli download {self.hub_id} --local-dir {folder}`"
                + (f" (variant {variant!r} needs the *.{variant}.safetensors files)" if variant else "")
            ) from exc

    def _load(self, folder: Path) -> None:
        import diffusers
        from diffusers import AutoencoderKL, UNet2DConditionModel

        scheduler_cls = getattr(diffusers, self.scheduler_class)
        self.scheduler = self._from_pretrained(scheduler_cls, folder, "scheduler")
        self.unet = self._from_pretrained(UNet2DConditionModel, folder, "unet", torch_dtype=self.dtype)
        vae_dtype = torch.float32 if self.vae_fp32 else self.dtype
        self.vae = self._from_pretrained(AutoencoderKL, folder, "vae", torch_dtype=vae_dtype)
        self._load_text(folder)
        for module in (self.unet, self.vae, *self.text_encoders):
            module.requires_grad_(False)
            module.eval()
            module.to(self._device)
        if self.config.vae_slicing:
            self.vae.enable_slicing()
        if self.config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.config.resolution % self.vae_scale_factor:
            raise UserError(
                f"{self.family}: resolution {self.config.resolution} is not a multiple of the VAE's "
                f"downsampling factor {self.vae_scale_factor}"
            )

    def _load_text(self, folder: Path) -> None:
        """Load tokenizer(s) and text encoder(s) into ``self.text_encoders`` (subclass)."""
        raise NotImplementedError

    def _add_lora(self) -> None:
        from peft import LoraConfig

        cfg = self.config
        # peft's default init: A kaiming-uniform, B zero, so training starts exactly at the base model
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.lora_seed)
            self.unet.add_adapter(lora)
        for param in self.unet.parameters():  # diffusers' cast_training_params: train LoRA in fp32
            if param.requires_grad:
                param.data = param.data.float()
        if not self.trainable_parameters():
            raise UserError(f"{self.family}: lora_targets {list(cfg.lora_targets)} matched no UNet module")

    # ---- the Generator protocol ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = self.config.resolution // self.vae_scale_factor
        return (int(self.unet.config.in_channels), side, side)

    def _tokenize(self, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
        ids = tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids  # (B, 77)
        return ids.to(self._device)

    def _unet_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        """Extra UNet keyword arguments taken from the conditioning (SDXL's added cond)."""
        return {}

    def sample(self, noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """(B, 4, h, w) noise -> (B, 4, h, w) clean latents in fp32, with grad through LoRA."""
        c = self._coefficients
        x_t = noise.float() * c["c_in"]  # (B, 4, h, w) the VP noisy latent at t = 999
        timestep = torch.full((noise.shape[0],), c["timestep"], device=noise.device)
        eps = self.unet(
            x_t.to(self.unet.dtype),
            timestep,
            encoder_hidden_states=cond["prompt_embeds"].to(self.unet.dtype),
            **self._unet_kwargs(cond),
            return_dict=False,
        )[0].float()  # (B, 4, h, w) ε̂
        x0 = (x_t - c["sqrt_one_minus_alpha"] * eps) / c["sqrt_alpha"]
        if c["target_sqrt_alpha"] is not None:  # "drpo": re-project to timestep 0
            x0 = c["target_sqrt_alpha"] * x0 + c["target_sqrt_one_minus_alpha"] * eps
        return x0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, 3, H, W) images in [0, 1] (fp32), differentiable."""
        vae_cfg = self.vae.config
        z = latents / vae_cfg.scaling_factor
        if getattr(vae_cfg, "shift_factor", None) is not None:
            z = z + vae_cfg.shift_factor
        images = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float()  # (B, 3, H, W) in [-1, 1]
        return (images / 2 + 0.5).clamp(0, 1)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """LoRA off: the frozen base answers. Gradient checkpointing is paused inside, so a backward
        through activations computed here never recomputes them with the adapters back on; call
        ``backward`` outside this context."""
        self._reference_depth += 1
        if self._reference_depth == 1:
            self.unet.disable_adapters()
            self._checkpointing_paused = self.unet.is_gradient_checkpointing
            if self._checkpointing_paused:
                self.unet.disable_gradient_checkpointing()
        try:
            yield
        finally:
            self._reference_depth -= 1
            if self._reference_depth == 0:
                self.unet.enable_adapters()
                if self._checkpointing_paused:
                    self.unet.enable_gradient_checkpointing()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.unet)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        expected = set(self.adapter_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise UserError(
                f"{self.family}: adapter does not match this generator's LoRA (lora_targets "
                f"{list(self.config.lora_targets)}): missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        try:
            set_peft_model_state_dict(self.unet, state)
        except RuntimeError as exc:  # size mismatch
            raise UserError(
                f"{self.family}: adapter shapes differ from lora_rank {self.config.lora_rank}: {str(exc).splitlines()[0]}"
            ) from exc

    # ---- adapter files (diffusers' LoRA format) -----------------------------------------------------
    def _lora_loader(self) -> Any:
        """diffusers' LoRA loader mixin of this model's pipeline (SD or SDXL)."""
        from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

        return StableDiffusionXLLoraLoaderMixin if "text_encoder_2" in self.parts else StableDiffusionLoraLoaderMixin

    def save_adapter(self, path: str | Path) -> None:
        """Write the UNet LoRA with diffusers' ``save_lora_weights`` (atomically: a temporary folder
        beside ``path``, then a rename), its peft config (rank, alpha, targets) as metadata."""
        from diffusers.utils import convert_state_dict_to_diffusers

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.adapter_state_dict().items()}
        metadata = self.unet.peft_config["default"].to_dict()  # what diffusers' own training scripts save
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.lora-tmp"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".lora-tmp"))
        try:
            self._lora_loader().save_lora_weights(
                str(tmp), unet_lora_layers=convert_state_dict_to_diffusers(state), weight_name=path.name,
                unet_lora_adapter_metadata=metadata, safe_serialization=True,
            )
            os.replace(tmp / path.name, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_adapter(self, path: str | Path) -> None:
        """Load a UNet LoRA: diffusers' format (``unet.`` keys, from ``save_adapter`` or any diffusers
        LoRA), peft's (``…lora_A.weight``; older drpo-bench adapters and checkpoints) or a peft
        ``save_pretrained`` folder. A file that says its rank, alpha or targets must match this
        generator's ``lora_*`` args; the error names the args to set."""
        from diffusers.utils import convert_unet_state_dict_to_peft

        file = resolve_adapter_file(path)
        state, metadata = read_adapter(file)
        if any(k.startswith("unet.") for k in state):  # diffusers pipeline format
            others = sorted({k.split(".")[0] for k in state if not k.startswith("unet.")})
            if others:
                raise UserError(f"{self.family}: adapter {file} also adapts {others}; only UNet LoRAs are supported")
            state = {k.removeprefix("unet."): v for k, v in state.items()}
            if metadata is not None:
                metadata = {k.removeprefix("unet."): v for k, v in metadata.items() if k.startswith("unet.")} or None
        state = {k.removeprefix("base_model.model."): v for k, v in state.items()}  # peft save_pretrained
        if any(".lora.down." in k or ".lora.up." in k for k in state):
            state = convert_unet_state_dict_to_peft(state)
        self._check_lora_config(file, state, metadata)
        self.load_adapter_state_dict(state)

    def _check_lora_config(self, file: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any] | None) -> None:
        """The file's rank / alpha / targets against this generator's; the error says what to set."""
        cfg = self.config
        ranks = {int(v.shape[0]) for k, v in state.items() if k.endswith("lora_A.weight")}
        found: dict[str, Any] = {"lora_rank": max(ranks) if ranks else None}
        if metadata:
            found["lora_rank"] = int(metadata.get("r", found["lora_rank"]))
            if "lora_alpha" in metadata:
                found["lora_alpha"] = metadata["lora_alpha"]
            if isinstance(metadata.get("target_modules"), (list, tuple, set)):
                found["lora_targets"] = sorted(metadata["target_modules"])
        ours = {"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_targets": sorted(cfg.lora_targets)}
        wrong = {k: v for k, v in found.items() if v is not None and v != ours[k]}
        if len(ranks) > 1 or (metadata or {}).get("rank_pattern") or (metadata or {}).get("alpha_pattern"):
            raise UserError(f"{self.family}: adapter {file} has per-layer ranks or alphas; only a uniform LoRA loads")
        if wrong:
            args = ", ".join(f"{k}: {list(v) if isinstance(v, list) else v}" for k, v in wrong.items())
            raise UserError(
                f"{self.family}: adapter {file} was made with {args}, this generator has "
                + ", ".join(f"{k}: {ours[k]}" for k in wrong)
                + f". Set the generator's args to match ({args})."
            )

    def train(self, mode: bool = True) -> None:
        self.unet.train(mode)


def one_step_coefficients(scheduler: Any, convention: str) -> dict[str, Any]:
    """Python floats for the one-step map, read from the scheduler (trailing spacing: t = 999).

    ``c_in``: x_t = c_in · ε.  ``sqrt_alpha``/``sqrt_one_minus_alpha``: √ᾱ_t, √(1−ᾱ_t).
    ``target_*``: √ᾱ₀, √(1−ᾱ₀) for the "drpo" re-projection, else None.
    """
    scheduler.set_timesteps(1)
    timestep = float(scheduler.timesteps[0])
    sigma = float(scheduler.sigmas[0])
    alpha_bar = 1.0 / (1.0 + sigma**2)  # = alphas_cumprod[t] at an integer t
    if convention == "diffusers":
        # pipeline: latents = ε·init_noise_sigma; UNet input = latents / √(σ²+1)
        c_in = float(scheduler.init_noise_sigma) / math.sqrt(sigma**2 + 1.0)
    elif convention == "drpo":
        c_in = 1.0
    else:
        raise UserError(f"unknown one-step convention {convention!r}: use 'diffusers' or 'drpo'")
    target_alpha = float(scheduler.alphas_cumprod[0]) if convention == "drpo" else None
    return {
        "timestep": timestep,
        "c_in": c_in,
        "sqrt_alpha": math.sqrt(alpha_bar),
        "sqrt_one_minus_alpha": math.sqrt(1.0 - alpha_bar),
        "target_sqrt_alpha": None if target_alpha is None else math.sqrt(target_alpha),
        "target_sqrt_one_minus_alpha": None if target_alpha is None else math.sqrt(1.0 - target_alpha),
    }

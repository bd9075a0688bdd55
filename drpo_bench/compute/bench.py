"""One definition of each update: FLOPs and timings come from the ``Method.step`` that trains.

A *stack* is the real generator, reward and feature classes a cell trains with, built from the
public configurations in ``drpo_bench/compute/architectures.py`` instead of checkpoints:

- the generators are the real ``SDTurboGenerator`` / ``SDXLTurboGenerator`` (one-step math, LoRA
  through peft, gradient checkpointing, ``reference()``); only their module loading is replaced
  (:class:`_ArchitectureModules`): the UNet, VAE and text encoders are the full-size (or tiny)
  architectures; prompts become CLIP's 77 token ids (:class:`FixedTokenizer`);
- the reward is :class:`ArchitectureReward`: a ``Reward`` around the architecture's network and
  canonical forward (HPSv3: Qwen2-VL-7B at 448 px, 77 caption tokens; CLIP-type rewards at 224),
  differentiable with respect to the pixels;
- DrPO's features are the real ``LatentMAEFeatures`` / ``ViTMAEFeatures`` classes, registered
  here as ``arch-latent-mae-resnet`` / ``arch-vit-mae-base`` with weights of the architectures'
  widths.

:func:`count_update` runs one update of any registered method (``method.setup`` then
``method.step``) on the ``meta`` device, so an 8 B-parameter reward needs no memory, and lets
the ledger count its FLOPs phase by phase (``Ledger(count_flops=True)``). The step's
value-dependent bits (``float(loss)`` for the logs) are answered by :class:`_MetaScalars`: a
``.item()`` of a meta tensor returns 0 (False for a bool), which changes no shape, so no FLOP.
:func:`time_updates` runs N real updates of the same step with random weights on whatever device
is present, with micro-batching and the optimizer as ``training.train_cell`` runs them.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from drpo_bench.compute import architectures as arch
from drpo_bench.drpo.features_real import LatentMAEFeatures, LatentResNetEncoder, ViTMAEFeatures
from drpo_bench.drpo.mae_latent_layout import random_mae_latent_params
from drpo_bench.errors import UserError, nearest
from drpo_bench.generators.sd_turbo import SDTurboGenerator
from drpo_bench.generators.sdxl_turbo import SDXLTurboGenerator
from drpo_bench.compute.ledger import PHASES, Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import FEATURES, METHODS, StrictConfig
from drpo_bench.rewards.base import Reward

#: every registered method that trains, in the order tables show them
ALL_METHODS = ("drpo", "draft", "vggflow", "dpo", "grpo", "pso", "raft")
#: dense bf16 peak of known accelerators (vendor datasheets), FLOP/s
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "RTX 4090": 165e12}

# ---------------------------------------------------------------------------------------------
# Generators: the real classes, modules from the architectures
# ---------------------------------------------------------------------------------------------

_SCHEDULER: dict[str, Any] = dict(  # SD-Turbo's and SDXL-Turbo's shipped scheduler_config.json
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1,
)


class FixedTokenizer:
    """Stands in for CLIP's tokenizer: every prompt becomes <start> ... <end> padded to 77 ids.

    Token values cost no FLOPs; the sequence length (CLIP's 77) is what counts, and it is real.
    """

    model_max_length = 77  # CLIP's context length, padding="max_length" as the real pipelines
    bos, eos = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|> ids (the vocabulary has 49 408)

    def __call__(self, prompts: list[str], **_: Any) -> Any:
        from types import SimpleNamespace

        ids = torch.full((len(prompts), self.model_max_length), self.eos, dtype=torch.long)  # (B, 77)
        ids[:, 0] = self.bos
        ids[:, 1:9] = torch.arange(320, 328)  # a few ordinary word ids
        return SimpleNamespace(input_ids=ids)


class _ArchitectureModules:
    """Mixin for a diffusers one-step generator: build each part from ``PARTS`` instead of loading it."""

    PARTS: ClassVar[dict[str, str]] = {}  # pipeline subfolder -> architecture name
    PADS: ClassVar[dict[str, str]] = {}  # tokenizer subfolders (pad token of the real one, for the record)
    tiny: bool = False

    def weights_folder(self) -> Path:
        return Path("<architectures>")

    def _from_pretrained(self, cls: Any, folder: Path, subfolder: str, **kwargs: Any) -> Any:
        if subfolder == "scheduler":
            return cls(**_SCHEDULER)
        if subfolder in self.PADS:
            return FixedTokenizer()
        dtype = kwargs.get("torch_dtype", kwargs.get("dtype", torch.float32))
        return arch.build(self.PARTS[subfolder], device=self.config.device, dtype=dtype, tiny=self.tiny)  # type: ignore[attr-defined]


class ArchSDTurbo(_ArchitectureModules, SDTurboGenerator):
    PARTS: ClassVar[dict[str, str]] = {"unet": "sd-turbo-unet", "vae": "sd-vae-decoder", "text_encoder": "sd-turbo-text-encoder"}
    PADS: ClassVar[dict[str, str]] = {"tokenizer": "!"}


class ArchSDXLTurbo(_ArchitectureModules, SDXLTurboGenerator):
    PARTS: ClassVar[dict[str, str]] = {
        "unet": "sdxl-turbo-unet", "vae": "sdxl-vae-decoder",
        "text_encoder": "sdxl-text-encoder-1", "text_encoder_2": "sdxl-text-encoder-2",
    }
    PADS: ClassVar[dict[str, str]] = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}


# ---------------------------------------------------------------------------------------------
# Rewards and features
# ---------------------------------------------------------------------------------------------


class ArchitectureReward(Reward):
    """A reward network from the architectures, scored through its canonical forward.

    Images (B, 3, H, W) in [0, 1] are resized (bilinear, differentiable) to the network's input;
    HPSv3's are cut into Qwen2-VL patches as the in-process ``hpsv3`` reward does, ImageReward's
    resized, cropped and normalized as the in-process ``imagereward`` does (its network is that reward's). Text tokens are
    fixed ids of the architecture's caption length (their values cost no FLOPs).
    """

    differentiable: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "random weights (compute only)"
    definition: ClassVar[dict[str, str]] = {"model": "architecture, random weights", "version": "-", "formula": "-"}

    def __init__(self, component: str, *, device: torch.device | str, dtype: torch.dtype, tiny: bool = False,
                 shape: dict[str, int] | None = None, gradient_checkpointing: bool = False) -> None:
        self.component, self.spec = component, arch.get(component)
        if self.spec.grad_input is None or "reward" not in self.spec.tags:
            raise UserError(f"{component} is not a reward architecture; use one tagged 'reward' in architectures.py")
        self.registry_name = component
        self.network = arch.build(component, device=device, dtype=dtype, tiny=tiny)
        self.shape = self.spec.shape(shape, tiny=tiny)
        if gradient_checkpointing:
            if self.spec.enable_checkpointing is None:
                raise UserError(f"{component} has no gradient checkpointing here; leave it off for this reward")
            self.spec.enable_checkpointing(self.network)
            self.network.train()  # transformers checkpoint only in training mode (no dropout in these)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        net, spec = self.network, self.spec
        param = next(net.parameters())
        b = images.shape[0]
        inputs = spec.make_inputs(net, b, param.device, param.dtype, self.shape)
        if self.component == "hpsv3":
            from drpo_bench.rewards.hpsv3_model import QwenImagePrep, qwen2vl_pixel_values

            vc = net.config.vision_config
            side = self.shape["image_size"] // (vc.patch_size * vc.spatial_merge_size)
            prep = QwenImagePrep(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size,
                                 temporal_patch_size=vc.temporal_patch_size, image_tokens=side * side, resample="bilinear")
            patches, _grid = qwen2vl_pixel_values(images, prep)  # (B·N, 1176)
            inputs["pixel_patches"] = patches.to(param.dtype)
        elif self.component == "imagereward":  # the in-process reward's resize, crop and normalization
            from drpo_bench.rewards.imagereward_model import imagereward_pixels

            inputs["pixel_values"] = imagereward_pixels(images, self.shape["image_size"]).to(param.dtype)
        else:
            size = self.shape["image_size"]
            inputs[spec.grad_input] = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).to(param.dtype)
        return spec.run(net, inputs).float().reshape(b)  # (B,)

    def to(self, device: torch.device | str) -> ArchitectureReward:
        self.network.to(device)
        return self


class _ArchFeatureConfig(StrictConfig):
    tiny: bool = False  # the architectures' tiny twin (tests)


@FEATURES.register("arch-latent-mae-resnet", "DrPO's latent-MAE ResNet at the architectures' widths, random weights (compute)")
class ArchLatentMAE(LatentMAEFeatures):
    """The real latent-MAE feature code on a random checkpoint of ``latent-mae-resnet``'s widths."""

    Config = _ArchFeatureConfig  # type: ignore[assignment]

    def __init__(self, config: _ArchFeatureConfig | None = None, generator: Any = None) -> None:
        config = config or _ArchFeatureConfig()
        spec = arch.LATENT_MAE_RESNET_TINY if config.tiny else arch.LATENT_MAE_RESNET
        self.config = LatentMAEFeatures.Config(keys=None if config.tiny else LatentMAEFeatures.Config().keys)
        device = generator.device if generator is not None else torch.device("cpu")
        with torch.device(device):
            params = random_mae_latent_params(spec["width"], tuple(spec["layers"]), spec["in_channels"])
        self.in_channels = spec["in_channels"]
        self.net = LatentResNetEncoder(params, tuple(spec["layers"]))
        if config.tiny:  # tiny latents leave stage 4 at 1x1: keep the whole-map statistics only
            self.config = LatentMAEFeatures.Config(keys=("layer4_mean", "layer4_std"), patch_sizes=())


@FEATURES.register("arch-vit-mae-base", "ViT-MAE base at the architectures' sizes, random weights (compute)")
class ArchViTMAE(ViTMAEFeatures):
    """The real pixel ViT-MAE feature code on ``vit-mae-base`` with random weights."""

    Config = _ArchFeatureConfig  # type: ignore[assignment]

    def __init__(self, config: _ArchFeatureConfig | None = None, generator: Any = None) -> None:
        from drpo_bench.rewards.clip_common import ImagePrep

        config = config or _ArchFeatureConfig()
        device = generator.device if generator is not None else torch.device("cpu")
        self.config = ViTMAEFeatures.Config()
        self.model = arch.build("vit-mae-base", device=device, tiny=config.tiny)
        size = self.model.config.image_size
        self.prep = ImagePrep(size, (size, size), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        self.layers = (self.model.config.num_hidden_layers,)


# ---------------------------------------------------------------------------------------------
# A setting: generator x reward x method options
# ---------------------------------------------------------------------------------------------

GENERATOR_CLASSES: dict[str, type] = {"sd-turbo": ArchSDTurbo, "sdxl-turbo": ArchSDXLTurbo}
#: DrPO's feature space per generator in the public code
DEFAULT_FEATURES = {"sd-turbo": "arch-latent-mae-resnet", "sdxl-turbo": "arch-vit-mae-base"}
#: candidates per prompt in the public code
DEFAULT_K = {"sd-turbo": 24, "sdxl-turbo": 16}
#: reward name -> (architecture, shape overrides, note)
REWARDS: dict[str, tuple[str, dict[str, int], str]] = {
    "pickscore": ("pickscore", {}, "CLIP-H/14 at 224, 77 text tokens"),
    "hpsv2": ("hpsv2", {}, "open_clip ViT-H-14 at 224, 77 text tokens"),
    "imagereward": ("imagereward", {}, "BLIP ViT-L/16 + BERT, 35 text tokens"),
    "hpsv3": ("hpsv3", {"text_tokens": 77}, "Qwen2-VL-7B at 448 px, 77 caption tokens"),
    "hpsv3-instruct": ("hpsv3", {"text_tokens": 600}, "Qwen2-VL-7B at 448 px, ≈600-token instruction prompt"),
}
#: which networks gradient checkpointing can cover
CHECKPOINT_ROLES = ("generator", "reward")


def _lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    if name in table:
        return table[name]
    raise UserError(f"unknown {kind} {name!r}. Nearest valid names: {', '.join(nearest(name, table))}")


@dataclass(frozen=True)
class Setting:
    """One compute setting: matched effective batch (candidates per update) across methods."""

    generator: str = "sd-turbo"
    reward: str = "hpsv3"
    k: int = 24  # candidates per prompt
    effective_batch: int = 192  # candidates per optimizer update
    checkpointing: frozenset[str] = frozenset()  # roles from CHECKPOINT_ROLES
    lora_rank: int = 16  # the paper's LoRA rank on every attention projection
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)  # per-method config overrides
    features: str | None = None  # DrPO feature space (registered name); None: the generator's public default
    tiny: bool = False  # the architectures' tiny twins (CPU tests)

    @property
    def prompts(self) -> int:
        return self.effective_batch // self.k

    def describe(self) -> dict[str, Any]:
        return {
            "generator": self.generator, "reward": self.reward, "reward_note": REWARDS[self.reward][2],
            "features": self.features or DEFAULT_FEATURES[self.generator], "K": self.k,
            "effective_batch": self.effective_batch, "prompts_per_update": self.prompts,
            "grad_checkpointing": sorted(self.checkpointing), "lora_rank": self.lora_rank, "tiny": self.tiny,
            "method_args": self.method_args,
        }


def reward_can_checkpoint(reward: str) -> bool:
    return arch.get(REWARDS[reward][0]).enable_checkpointing is not None


def make_setting(generator: str = "sd-turbo", reward: str = "hpsv3", *, k: int | None = None,
                 effective_batch: int | None = None, checkpointing: Sequence[str] = (), lora_rank: int = 16,
                 features: str | None = None, method_args: dict[str, dict[str, Any]] | None = None,
                 tiny: bool = False) -> Setting:
    """Resolve names and defaults (K from the generator; effective batch 8·K), failing early."""
    _lookup(GENERATOR_CLASSES, generator, "generator")
    _lookup(REWARDS, reward, "reward")
    k = k or DEFAULT_K[generator]
    effective_batch = effective_batch or 8 * k
    if k <= 0 or effective_batch <= 0:
        raise UserError(f"K and the effective batch must be positive (got K={k}, effective batch={effective_batch})")
    if effective_batch % k:
        raise UserError(f"the effective batch ({effective_batch}) must be a multiple of K ({k}): whole prompts per update")
    bad = set(checkpointing) - set(CHECKPOINT_ROLES)
    if bad:
        raise UserError(f"cannot checkpoint {sorted(bad)}; valid roles: {', '.join(CHECKPOINT_ROLES)}")
    if "reward" in checkpointing and not reward_can_checkpoint(reward):
        raise UserError(f"reward {reward} has no gradient checkpointing here; checkpoint only the generator "
                        "(--grad-checkpointing generator)")
    return Setting(generator, reward, k, effective_batch, frozenset(checkpointing), lora_rank,
                   dict(method_args or {}), features, tiny)


@dataclass
class Stack:
    generator: Any
    reward: ArchitectureReward


def build_stack(setting: Setting, device: torch.device | str, dtype: torch.dtype = torch.float32, *,
                reward_dtype: torch.dtype | None = None, generator_args: dict[str, Any] | None = None) -> Stack:
    """The setting's generator and reward with random weights on ``device`` (``meta``: shapes only).

    ``reward_dtype``: the reward's weights when they differ from the generator's (e.g. HPSv3 in bf16);
    ``generator_args``: the generator's config fields as a suite sets them (e.g. ``vae_slicing``), over
    this function's compute defaults."""
    cls = GENERATOR_CLASSES[setting.generator]
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    config = cls.Config.model_validate(dict(
        device=str(device), dtype=names[dtype], lora_rank=setting.lora_rank, lora_alpha=setting.lora_rank,
        gradient_checkpointing="generator" in setting.checkpointing, resolution=64 if setting.tiny else 512,
        vae_slicing=False,  # slicing splits the decode into per-image calls: same FLOPs, slower
    ) | ({"pretrained": "-"} if "pretrained" in cls.Config.model_fields else {}) | dict(generator_args or {}))
    gen_cls = type(cls.__name__ + ("Tiny" if setting.tiny else ""), (cls,), {"tiny": setting.tiny})
    generator = gen_cls(config)
    component, shape, _ = REWARDS[setting.reward]
    reward = ArchitectureReward(component, device=device, dtype=reward_dtype or dtype, tiny=setting.tiny,
                                shape=None if setting.tiny else shape,
                                gradient_checkpointing="reward" in setting.checkpointing)
    return Stack(generator, reward)


def build_method(name: str, setting: Setting) -> Any:
    """A registered method with its defaults, DrPO reading the setting's feature space."""
    entry = METHODS.get(name)
    args = dict(setting.method_args.get(name, {}))
    if name == "drpo":
        args.setdefault("features", setting.features or DEFAULT_FEATURES[setting.generator])
        if args["features"].startswith("arch-"):
            args.setdefault("feature_args", {"tiny": setting.tiny})
    return entry.cls(entry.parse_config(args))


def _prompts(n: int) -> list[str]:
    words = ["a red cat on a sofa", "two dogs on a beach at sunset", "an astronaut riding a horse", "a bowl of fruit"]
    return [words[i % len(words)] + f", picture {i}" for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


class _MetaScalars(TorchDispatchMode):
    """Answer ``.item()`` of a meta tensor (logs, sanity checks) with 0, 0.0 or False, and a copy off the meta
    device (a method's CPU bookkeeping) with zeros: values only, no shape changes, so no FLOP changes."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            dtype = args[0].dtype
            return False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "meta":
            target = kwargs.get("device")
            if target is not None and torch.device(target).type != "meta":  # e.g. a method's .cpu() bookkeeping
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=target)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _meta_autocast() -> Iterator[None]:
    """``torch.autocast("meta", ...)`` does not exist; on meta no autocast is active, so the steps'
    "autocast off here" contexts (DrPO's features and drift field) become no-ops: same ops, same FLOPs."""
    original = torch.autocast

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext() if device_type == "meta" else original(device_type, *args, **kwargs)

    torch.autocast = autocast  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


@contextlib.contextmanager
def _fused_attention_on_meta() -> Iterator[None]:
    """On meta, ``scaled_dot_product_attention`` falls back to its math decomposition, whose backward
    counts 2x the forward's attention FLOPs; the fused kernels a real run uses (CUDA flash/efficient,
    CPU flash) recompute the scores in backward: 2.5x. Route meta attention through the fused CPU
    kernel's op, which has meta shapes and the same FLOP formula, so both paths count alike."""
    original = F.scaled_dot_product_attention
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default

    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
        if query.device.type != "meta":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(rep, dim=-3), value.repeat_interleave(rep, dim=-3)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        return fused(query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa  # type: ignore[assignment]
    torch.nn.functional.scaled_dot_product_attention = sdpa  # type: ignore[assignment]
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original  # type: ignore[assignment]


@contextlib.contextmanager
def meta_step() -> Iterator[None]:
    """What a step needs to run on the meta device: scalar answers, no-op autocast, fused attention."""
    with _MetaScalars(), _meta_autocast(), _fused_attention_on_meta():
        yield


@dataclass
class StepCount:
    """FLOPs of one update of ``method``, by ledger phase (the optimizer is not counted)."""

    method: str
    phase_flops: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.phase_flops.values())

    @property
    def backward(self) -> float:
        return sum(v for k, v in self.phase_flops.items() if k in ("reward_backward", "generator_backward"))


@dataclass
class Prepared:
    """A method after ``setup``, with the TrainContext its steps get."""

    method: Any
    ctx: TrainContext


def run_update(prepared: Prepared, setting: Setting, ledger: Ledger, *, micro: int | None = None,
               optimizer: torch.optim.Optimizer | None = None, seed: int = 0) -> Any:
    """One optimizer update as ``training.train_cell`` runs it: micro-batches of prompts, then the optimizer."""
    prompts = _prompts(setting.prompts)
    micro = micro or setting.prompts
    if setting.prompts % micro:
        raise UserError(f"micro-batch {micro} prompts must divide the {setting.prompts} prompts of an update")
    method, ctx = prepared.method, prepared.ctx
    ctx.loss_scale = micro / setting.prompts
    ctx.noise_rng.manual_seed(seed)
    ledger.begin_update()
    try:
        for i in range(0, len(prompts), micro):
            method.step(prompts[i : i + micro], ctx)
        if optimizer is not None:
            with ledger.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        record = ledger.end_update()
    return record


def prepare(method_name: str, setting: Setting, stack: Stack, ledger: Ledger) -> Prepared:
    """Build a registered method and run its ``setup`` on the stack, as the runner does for a cell."""
    method = build_method(method_name, setting)
    ctx = TrainContext(generator=stack.generator, reward=stack.reward, ledger=ledger,
                       candidates_per_prompt=setting.k, noise_rng=torch.Generator())
    try:
        method.check_budget(method.config, setting.k)
    except ValueError as exc:  # a setting the command line chose: say which flag changes it
        raise UserError(f"{exc} Here: --K {setting.k}; change the method's settings with --method-arg, e.g. "
                        f"`--method-arg {method_name}.n_pos=2 --method-arg {method_name}.n_neg=2`, or raise --K.") from None
    method.setup(ctx)
    stack.generator.train(True)
    return Prepared(method, ctx)


def count_update(method_name: str, setting: Setting, stack: Stack | None = None) -> StepCount:
    """FLOPs of one update of a registered method's real step, counted by the ledger (meta device unless
    ``stack`` lives elsewhere: then the tensors are real and the count is what a training run records)."""
    stack = stack or build_stack(setting, "meta")
    ledger = Ledger("cpu", count_flops=True)
    prepared = prepare(method_name, setting, stack, ledger)
    on_meta = stack.generator.device.type == "meta"
    with meta_step() if on_meta else contextlib.nullcontext():
        record = run_update(prepared, setting, ledger)
    for p in stack.generator.trainable_parameters():
        p.grad = None
    flops = {k: v for k, v in record.phase_flops.items() if v}
    order = [p for p in PHASES if p in flops] + sorted(set(flops) - set(PHASES))
    return StepCount(method_name, {p: flops[p] for p in order})


def count_methods(setting: Setting, methods: Sequence[str]) -> dict[str, StepCount]:
    """Every method's update on one meta stack (built once: the methods share it, as cells do)."""
    for m in methods:
        METHODS.get(m)  # unknown names fail before any building
    stack = build_stack(setting, "meta")
    return {m: count_update(m, setting, stack) for m in methods}


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def device_peak_flops(device: torch.device) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s where known)."""
    if device.type != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK.items():
        if key in name:
            return name, peak
    return name, None


def time_updates(method_name: str, setting: Setting, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, updates: int = 3, micro: int | None = None,
                 stack: Stack | None = None, lr: float = 1e-4) -> dict[str, Any]:
    """``updates`` timed updates (after one counted warm-up) of a method's real step with random weights.

    Returns the ledger's summary (per-phase seconds, FLOPs, peak memory) plus achieved TFLOP/s and the
    share of the device's dense bf16 peak where known.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(0)
    stack = stack or build_stack(setting, device, dtype)
    ledger = Ledger(device, count_flops=True)
    prepared = prepare(method_name, setting, stack, ledger)
    optimizer = torch.optim.AdamW(stack.generator.trainable_parameters(), lr=lr)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for i in range(updates + 1):  # the first update is warm-up and counts FLOPs (the ledger skips it in means)
        with autocast:
            run_update(prepared, setting, ledger, micro=micro, optimizer=optimizer, seed=i)
    summary = ledger.summary()
    name, peak = device_peak_flops(device)
    achieved = summary.get("achieved_flops_per_second")
    return {
        "method": method_name,
        "micro_prompts": micro or setting.prompts,
        "dtype": str(dtype).replace("torch.", ""),
        "device_name": name,
        "device_bf16_peak_flops": peak,
        "achieved_tflops": achieved / 1e12 if achieved else None,
        "share_of_peak": (achieved / peak) if achieved and peak else None,
        "summary": summary,
    }


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    import drpo_bench

    return {"drpo_bench": drpo_bench.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "cuda": str(torch.version.cuda)}


def bench_json(setting: Setting, runs: list[dict[str, Any]], command: str) -> dict[str, Any]:
    return {"setting": setting.describe(), "device": runs[0]["device_name"] if runs else None, "runs": runs,
            "versions": versions(), "command": command,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


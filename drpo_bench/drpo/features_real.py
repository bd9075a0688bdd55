"""Feature spaces for DrPO on real generators (the paper's and its ablations').

- ``latent-raw``: the latents themselves (spatial vectors, mean/std, patch mean/std);
- ``latent-mae``: the frozen latent ResNet-MAE encoder of the public DrPO code
  (``mae_latent_256_torch.pth``), SD-Turbo's default: stage-4 mean/std and 2x2/4x4 patch mean/std;
- ``vit-mae``: a pixel ViT-MAE (``facebook/vit-mae-base``), SDXL-Turbo's option; by default no
  masking; ``mask_ratio`` 0.75 with ``mask: fresh`` is the public SDXL-Turbo code (the model's own
  random masking, a new mask on every forward), ``mask: fixed`` a seeded mask, the same every call;
- ``unet-teacher``: the generator's own frozen UNet (LoRA off) at t = 100, forward-hooked at
  down_blocks.2 / mid_block / up_blocks.0 and 4x4 average pooled, SDXL-Turbo's other option; its
  input noise is seeded (``noise_mode: fixed``) or drawn anew per call (``fresh``, as the public code).

Every encoder returns ``{name: (B, L, D)}``; gradients flow to the input, weights stay frozen.
Names and statistics follow the public code (``layer4_mean_2`` = stage-4 mean over 2x2 patches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from drpo_bench.drpo.features_base import FeatureEncoder
from drpo_bench.errors import UserError
from drpo_bench.registry import FEATURES, Seed, StrictConfig
from drpo_bench.weights import resolve_file, resolve_folder


def safe_std(x: torch.Tensor, dim: int | tuple[int, ...], eps: float = 1e-6) -> torch.Tensor:
    """Population std with an epsilon inside the root (finite gradient at zero spread), in fp32."""
    x32 = x.float()
    var = (x32 - x32.mean(dim=dim, keepdim=True)).square().mean(dim=dim)
    return (var + eps).sqrt()


def map_statistics(name: str, fmap: torch.Tensor, patch_sizes: tuple[int, ...], spatial: bool) -> dict[str, torch.Tensor]:
    """(B, C, H, W) -> {name: (B, H*W, C)?, name_mean/std: (B, 1, C), name_mean_p/std_p: (B, H*W/p², C)}."""
    b, c, h, w = fmap.shape
    out: dict[str, torch.Tensor] = {}
    if spatial:
        out[name] = fmap.flatten(2).transpose(1, 2)
    out[f"{name}_mean"] = fmap.float().mean(dim=(2, 3)).unsqueeze(1)
    out[f"{name}_std"] = safe_std(fmap, dim=(2, 3)).unsqueeze(1)
    for p in patch_sizes:
        if h % p or w % p:
            continue  # as the public code: sizes that do not tile the map are skipped
        patches = fmap.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p, c)
        out[f"{name}_mean_{p}"] = patches.float().mean(dim=2)  # (B, H*W/p², C)
        out[f"{name}_std_{p}"] = safe_std(patches, dim=2)
    return out


def select(features: dict[str, torch.Tensor], keys: tuple[str, ...] | None, encoder: str) -> dict[str, torch.Tensor]:
    if keys is None:
        return features
    missing = [k for k in keys if k not in features]
    if missing:
        raise UserError(f"{encoder}: feature keys {missing} not available; choose from {sorted(features)}")
    return {k: features[k] for k in keys}


# ---- raw latents ---------------------------------------------------------------------------------


@FEATURES.register("latent-raw")
class RawLatentFeatures(FeatureEncoder):
    """Generator latents as features: per-location vectors, mean/std and patch mean/std."""

    input_space: ClassVar[Literal["latents", "images"]] = "latents"

    class Config(StrictConfig):
        patch_sizes: tuple[int, ...] = (2, 4)  # public code's DirectLatentFeatureExtractor default
        spatial: bool = True  # include every latent location as a vector (key "latent")
        keys: tuple[str, ...] | None = None  # subset of keys; None = all produced

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x (B, C, h, w)
        cfg = self.config
        return select(map_statistics("latent", x, cfg.patch_sizes, cfg.spatial), cfg.keys, "latent-raw")


# ---- latent ResNet-MAE (public checkpoint format) -----------------------------------------------


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= 32 dividing ``channels`` (the exporter's GroupNorm rule)."""
    groups = min(max_groups, channels)
    while channels % groups:
        groups -= 1
    return groups


class LatentResNetEncoder(nn.Module):
    """The MAE's ResNet encoder run functionally from the exported parameters.

    Stem: 3x3 conv -> GN -> ReLU. Stage s has ``layers[s]`` basic blocks (3x3 conv-GN-ReLU,
    3x3 conv-GN, projection 1x1 conv-GN when the shape changes, add, ReLU); the first block
    of stages 2-4 has stride 2; each stage ends with a GN (``layer{s+1}_norm``). Convolutions
    carry no bias; kernels may be JAX (kh, kw, in, out) or torch (out, in, kh, kw) layout.
    """

    def __init__(self, params: dict[str, torch.Tensor], layers: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = layers
        self._names: dict[str, str] = {}
        for key, value in params.items():
            safe = key.replace(".", "__")
            self._names[key] = safe
            # frozen parameters, not buffers: counted by parameter counts and FLOP tools like any module's
            self.register_parameter(safe, nn.Parameter(value.float(), requires_grad=False))
        self.requires_grad_(False)

    def param(self, key: str) -> torch.Tensor | None:
        name = self._names.get(key)
        return None if name is None else getattr(self, name)

    def _conv(self, x: torch.Tensor, prefix: str, stride: int = 1, padding: int = 1) -> torch.Tensor:
        kernel = self.param(f"{prefix}.kernel")
        if kernel is None:
            kernel = self.param(f"{prefix}.weight")
        if kernel is None:
            raise UserError(f"latent-mae checkpoint lacks {prefix}.kernel")
        if kernel.shape[2] == x.shape[1] and kernel.shape[0] == kernel.shape[1]:  # JAX (kh, kw, in, out)
            kernel = kernel.permute(3, 2, 0, 1)
        return F.conv2d(x, kernel.to(x.dtype), stride=stride, padding=padding)

    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        scale = self.param(f"{prefix}.scale")
        if scale is None:
            scale = self.param(f"{prefix}.weight")
        bias = self.param(f"{prefix}.bias")
        if scale is None or bias is None:
            raise UserError(f"latent-mae checkpoint lacks {prefix}.scale/bias")
        return F.group_norm(x, gn_groups(x.shape[1]), scale.to(x.dtype), bias.to(x.dtype), eps=1e-5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 4, h, w) latents -> {"conv1": ..., "layer1".."layer4": (B, C_s, h_s, w_s)}."""
        x = F.relu(self._norm(self._conv(x, "encoder.conv1"), "encoder.gn1"))
        maps = {"conv1": x}
        for s, blocks in enumerate(self.layers):
            for b in range(blocks):
                prefix, stride = f"encoder.stages_{s}.layers_{b}", (2 if s > 0 and b == 0 else 1)
                y = F.relu(self._norm(self._conv(x, f"{prefix}.conv1", stride), f"{prefix}.gn1"))
                y = self._norm(self._conv(y, f"{prefix}.conv2"), f"{prefix}.gn2")
                if y.shape != x.shape:
                    x = self._norm(self._conv(x, f"{prefix}.proj_conv", stride, padding=0), f"{prefix}.proj_gn")
                x = F.relu(x + y)
            x = self._norm(x, f"encoder.layer{s + 1}_norm")
            maps[f"layer{s + 1}"] = x
        return maps


def load_mae_latent_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], tuple[int, ...], int]:
    """Read ``mae_latent_256_torch.pth``: (params, stage depths, input channels)."""
    try:
        ckpt: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path} with torch.load(weights_only=True): {str(exc).splitlines()[0]}") from exc
    meta: dict[str, Any] = {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state, meta = ckpt["state_dict"], ckpt.get("metadata") or {}
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("model_state_dict"), dict):
        state, meta = ckpt["model_state_dict"], ckpt.get("metadata") or {}
    elif isinstance(ckpt, dict) and all(torch.is_tensor(v) for v in ckpt.values()):
        state = ckpt
    else:
        raise UserError(f"{path}: not a latent-MAE checkpoint (expected a state_dict with encoder.* keys)")
    params = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        if key.startswith("encoder.") and torch.is_tensor(value):
            params[key] = value
    if "encoder.conv1.kernel" not in params and "encoder.conv1.weight" not in params:
        raise UserError(f"{path}: no encoder.conv1 weights; is this the latent MAE checkpoint?")
    model_cfg = meta.get("model_config", {}) if isinstance(meta, dict) else {}
    layers = tuple(int(n) for n in model_cfg.get("layers", (3, 4, 6, 3)))
    conv1 = params.get("encoder.conv1.kernel", params.get("encoder.conv1.weight"))
    in_channels = int(model_cfg.get("in_channels", conv1.shape[2] if "encoder.conv1.kernel" in params else conv1.shape[1]))
    return params, layers, in_channels


@FEATURES.register("latent-mae")
class LatentMAEFeatures(FeatureEncoder):
    """The public DrPO latent ResNet-MAE encoder on generator latents (SD-Turbo's default space)."""

    input_space: ClassVar[Literal["latents", "images"]] = "latents"
    HOW: ClassVar[str] = (
        "Fetch it: `huggingface-cli download jiangzhou130v1/drpo-mae-latent-256 mae_latent_256_torch.pth "
        "--local-dir models` (the public DrPO release)."
    )

    class Config(StrictConfig):
        checkpoint: str = "models/mae_latent_256_torch.pth"  # the public DrPO asset layout
        keys: tuple[str, ...] | None = (  # paper (SD-Turbo): stage-4 mean/std, 2x2 and 4x4 patch mean/std
            "layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2", "layer4_mean_4", "layer4_std_4",
        )
        patch_sizes: tuple[int, ...] = (2, 4)  # public code's patch_pool_sizes
        spatial: bool = False  # also expose every location of every stage (large sets)

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        params, layers, self.in_channels = load_mae_latent_checkpoint(self.checkpoint_path())
        self.net = LatentResNetEncoder(params, layers)

    def checkpoint_path(self) -> Path:
        return resolve_file(self.config.checkpoint, what="latent-MAE feature checkpoint", how=self.HOW)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x (B, 4, h, w)
        if x.shape[1] != self.in_channels:
            raise UserError(f"latent-mae: checkpoint expects {self.in_channels} latent channels, got {x.shape[1]}")
        cfg = self.config
        out: dict[str, torch.Tensor] = {}
        for name, fmap in self.net(x.float()).items():
            out.update(map_statistics(name, fmap, cfg.patch_sizes, cfg.spatial))
        return select(out, cfg.keys, "latent-mae")

    def to(self, device: torch.device | str) -> LatentMAEFeatures:
        self.net.to(device)
        return self


FEATURES.preset(
    "latent-mae-tiny", LatentMAEFeatures,
    {"checkpoint": "tiny:mae-latent/mae_latent_256_torch.pth",
     # tiny generators' 16x16 latents leave stage 4 at 2x2: no 4x4 patches
     "keys": ("layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2")},
    "latent-mae's loader and network with a tiny random checkpoint in the public format (tiny:mae-latent)",
)


# ---- pixel ViT-MAE ---------------------------------------------------------------------------------


@FEATURES.register("vit-mae")
class ViTMAEFeatures(FeatureEncoder):
    """A frozen pixel ViT-MAE encoder: per-layer patch mean/std and CLS token over the kept patches.

    ``mask_ratio`` r drops int(N * r) of the N patches before the encoder (transformers'
    ``random_masking``, driven through its ``noise=`` argument): ``fresh`` draws a new random
    mask per image on every call (the public SDXL-Turbo code, which keeps facebook/vit-mae-base's
    0.75), ``fixed`` uses one mask drawn from ``mask_seed`` for every image and call (the same
    image always gives the same features). r = 0 keeps every patch in order.
    """

    input_space: ClassVar[Literal["latents", "images"]] = "images"

    class Config(StrictConfig):
        pretrained: str = "facebook/vit-mae-base"  # the public SDXL-Turbo MAE features' model
        layers: tuple[int, ...] | None = None  # hidden layers to read (1-based); None = the last
        stats: tuple[Literal["patch", "patch_mean", "patch_std", "cls"], ...] = (  # public SDXL-Turbo keys
            "patch_mean", "patch_std", "cls",
        )
        mask_ratio: float = Field(0.0, ge=0.0, lt=1.0)  # 0 = deterministic, every patch; public SDXL code: 0.75
        mask: Literal["fresh", "fixed"] = "fresh"  # with mask_ratio > 0: public code draws a new mask each forward
        mask_seed: Seed = 0  # the "fixed" mask's seed

    def __init__(self, config: Config | None = None) -> None:
        from transformers import ViTMAEModel

        from drpo_bench.rewards.clip_common import ImagePrep, load_hf

        self.config = config or self.Config()
        folder = self.folder()
        self.model = load_hf(ViTMAEModel, folder, "ViT-MAE features", "facebook/vit-mae-base",
                             mask_ratio=self.config.mask_ratio)
        self.model.requires_grad_(False).eval()
        size = self.model.config.image_size
        self.prep = ImagePrep(size, (size, size), *self._mean_std(folder))
        n = self.model.config.num_hidden_layers
        self.layers = self.config.layers or (n,)
        if any(not 1 <= layer <= n for layer in self.layers):
            raise UserError(f"vit-mae: layers {self.layers} outside 1..{n}")

    def folder(self) -> Path:
        return resolve_folder(self.config.pretrained, what="ViT-MAE weights", must_contain=("config.json",),
                              hub_id="facebook/vit-mae-base")

    @staticmethod
    def _mean_std(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
        import json

        cfg_file = folder / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        return tuple(cfg.get("image_mean", (0.485, 0.456, 0.406))), tuple(cfg.get("image_std", (0.229, 0.224, 0.225)))

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x (B, 3, H, W) in [0, 1]
        from drpo_bench.rewards.clip_common import clip_preprocess

        device = next(self.model.parameters()).device
        pixels = clip_preprocess(x.to(device), self.prep)  # resize + normalize (square inputs: no crop)
        b = pixels.shape[0]
        n_patches = (self.prep.size // self.model.config.patch_size) ** 2
        hidden = self.model(pixel_values=pixels, noise=self._mask_noise(b, n_patches, device),
                            output_hidden_states=True).hidden_states
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            h = hidden[layer].float()  # (B, 1 + N, D)
            cls, patches = h[:, :1], h[:, 1:]
            for stat in self.config.stats:
                key = f"layer{layer}_{stat}"
                if stat == "patch":
                    out[key] = patches
                elif stat == "patch_mean":
                    out[key] = patches.mean(dim=1, keepdim=True)
                elif stat == "patch_std":
                    out[key] = safe_std(patches, dim=1).unsqueeze(1)
                else:
                    out[key] = cls
        return out

    def _mask_noise(self, b: int, n_patches: int, device: torch.device) -> torch.Tensor:
        """(B, N) scores whose argsort keeps the first (1 - ratio) N patches (transformers' convention)."""
        cfg = self.config
        if cfg.mask_ratio == 0:
            return torch.arange(n_patches, device=device, dtype=torch.float32).expand(b, -1)  # keep patch order
        if cfg.mask == "fresh":
            return torch.rand(b, n_patches, device=device)  # a new mask per image and call
        g = torch.Generator(device="cpu").manual_seed(cfg.mask_seed)
        return torch.rand(1, n_patches, generator=g).to(device).expand(b, -1)  # one seeded mask

    def to(self, device: torch.device | str) -> ViTMAEFeatures:
        self.model.to(device)
        return self


FEATURES.preset(
    "vit-mae-tiny", ViTMAEFeatures, {"pretrained": "tiny:vit-mae"},
    "vit-mae with a tiny random-init ViTMAEModel (tiny:vit-mae): tests",
)


# ---- frozen UNet activations -----------------------------------------------------------------------


@FEATURES.register("unet-teacher")
class UNetTeacherFeatures(FeatureEncoder):
    """The generator's frozen UNet (LoRA off) at t = 100: hooked block outputs, 4x4 average pooled.

    Needs the generator (a diffusers one-step generator); built as ``cls(config, generator=g)``.
    DrPO passes each candidate's own conditioning (``cond``), as the public code does; without it
    (e.g. the diversity metric) the UNet is conditioned on one fixed prompt (``prompt``).
    """

    input_space: ClassVar[Literal["latents", "images"]] = "latents"
    uses_conditioning: ClassVar[bool] = True
    autocast_features: ClassVar[bool] = True  # a UNet forward: the public code autocasts it

    class Config(StrictConfig):
        layers: tuple[str, ...] = ("down_blocks.2", "mid_block", "up_blocks.0")  # public SDXL-Turbo teacher layers
        timestep: int = 100  # public code: features read at t = 100
        noise: float = 0.1  # public code adds 0.1 * N(0, I) to the latents before the UNet
        noise_mode: Literal["fixed", "fresh"] = "fixed"  # fixed: same latents, same features; public code: fresh per call
        noise_seed: Seed = 0  # the "fixed" noise's seed
        pool: int = 4  # average-pool kernel = stride; maps smaller than this pool to 1x1
        layout: Literal["vector", "locations"] = "vector"  # public: one flattened vector per sample
        prompt: str = ""  # conditioning when the caller passes none (the diversity metric)

    def __init__(self, config: Config | None = None, generator: Any = None) -> None:
        if generator is None or not hasattr(generator, "unet"):
            raise UserError("unet-teacher needs a diffusers generator (sd-turbo, sdxl-turbo); it reads the generator's UNet")
        self.config = config or self.Config()
        self.generator = generator
        unet = generator.unet
        self.modules = {name: unet.get_submodule(name) for name in self.config.layers}
        self._cond: Any = None

    def _conditioning(self, n: int) -> Any:
        from drpo_bench.generators.base import repeat_conditioning

        if self._cond is None:
            self._cond = self.generator.encode([self.config.prompt])
        return repeat_conditioning(self._cond, n)

    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        p = self.config.pool
        if fmap.shape[-1] >= p and fmap.shape[-2] >= p:
            fmap = F.avg_pool2d(fmap, kernel_size=p, stride=p)
        else:
            fmap = F.adaptive_avg_pool2d(fmap, 1)
        if self.config.layout == "vector":
            return fmap.flatten(1).unsqueeze(1)  # (B, 1, C*h*w)
        return fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)

    def features(self, x: torch.Tensor, cond: Any = None) -> dict[str, torch.Tensor]:  # x (B, 4, h, w)
        gen, cfg = self.generator, self.config
        if cfg.noise_mode == "fresh":
            noise = torch.randn(x.shape, device=x.device)  # (B, 4, h, w) new every call, as the public code
        else:
            g = torch.Generator(device="cpu").manual_seed(cfg.noise_seed)
            noise = torch.randn(x.shape, generator=g).to(x.device)
        captured: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
                captured[name] = output[0] if isinstance(output, (tuple, list)) else output
            return fn

        handles = [m.register_forward_hook(hook(name)) for name, m in self.modules.items()]
        if cond is None:
            cond = self._conditioning(x.shape[0])
        try:
            with gen.reference():  # LoRA off, checkpointing paused: the frozen teacher
                gen.unet(
                    (x.float() + cfg.noise * noise).to(gen.unet.dtype),
                    torch.full((x.shape[0],), cfg.timestep, device=x.device),
                    encoder_hidden_states=cond["prompt_embeds"].to(gen.unet.dtype),
                    **gen._unet_kwargs(cond),
                    return_dict=False,
                )
        finally:
            for handle in handles:
                handle.remove()
        return {name: self._pool(captured[name].float()) for name in cfg.layers}

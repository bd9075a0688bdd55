"""The paper's real architectures as configurations and builders, without weights.

Every entry of ``ARCHITECTURES`` names one network of the paper's setups (generators, VAE,
text encoders, reward models, feature encoders, FID's Inception) with

- ``config``: the public hub configuration values (docs/architectures-reference.md), full size;
- ``tiny_config``: the same classes at toy sizes (CPU tests, ``drpo-bench flops|bench --tiny``);
- ``build(name, device=..., dtype=..., tiny=...)``: the module with random weights. On the
  ``meta`` device nothing is allocated, so an 8.3 B-parameter model builds in milliseconds and
  serves FLOP counting (drpo_bench/compute/flops.py);
- ``make_inputs`` / ``run``: one canonical forward (what a training step calls), so FLOPs,
  benchmarks and the real generators exercise the same call.

Real weights are never loaded here: other modules load checkpoints into these skeletons (check
the real ``config.json`` against ``config`` when it is present). Approximations are flagged in
``Architecture.approximate``:

- ImageReward: not an approximation since the reward runs in process: the ``imagereward`` reward's
  own network (``drpo_bench/rewards/imagereward_model.py``, transformers' BLIP classes, checked
  equal to the authors' package), built from the configs below instead of a checkpoint.
- HPSv3: Qwen2-VL-7B backbone; the reward head (a special token's hidden state to mean and
  sigma) is one Linear here (the real head is a small MLP: negligible FLOPs).
- latent-MAE ResNet (DrPO's SD-Turbo features): the authors' checkpoint fixes the widths; we
  assume base width 256 ("mae_latent_256"), ResNet-34 layout (3, 4, 6, 3) of basic blocks with
  GroupNorm, stride 1 stem on 64×64 latents.
- InceptionV3: torchvision's layout (FID's ``pt_inception`` differs in pooling details only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from drpo_bench.weights import tiny

from drpo_bench.errors import UserError, nearest

ShapeDict = dict[str, int]

#: LoRA targets of the paper's generators (every attention projection of the UNet)
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

# ---------------------------------------------------------------------------------------------
# Configurations (public hub values; see docs/architectures-reference.md)
# ---------------------------------------------------------------------------------------------

SD_TURBO_UNET: dict[str, Any] = dict(
    sample_size=64,  # latent 64×64 = 512 px
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),  # diffusers' name; SD 2.x means heads per block
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)
SD_TURBO_UNET_TINY: dict[str, Any] = dict(tiny.TINY_SD_UNET)  # the tiny twins' table (drpo_bench/weights/tiny.py)

SDXL_TURBO_UNET: dict[str, Any] = dict(
    sample_size=64,  # SDXL-Turbo is trained and used at 512 px
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 time ids × 256
    act_fn="silu",
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)
SDXL_TURBO_UNET_TINY: dict[str, Any] = dict(tiny.TINY_SDXL_UNET)

SD_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SDXL_VAE: dict[str, Any] = dict(SD_VAE, scaling_factor=0.13025)  # same layout; upcast to fp32 advised
SD_VAE_TINY: dict[str, Any] = dict(tiny.TINY_VAE, scaling_factor=0.18215)
SDXL_VAE_TINY: dict[str, Any] = dict(SD_VAE_TINY, scaling_factor=0.13025)

SD_TURBO_TEXT_ENCODER: dict[str, Any] = dict(  # OpenCLIP ViT-H/14 text tower, penultimate layer kept
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
SDXL_TEXT_ENCODER_1: dict[str, Any] = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SDXL_TEXT_ENCODER_2: dict[str, Any] = dict(  # OpenCLIP bigG/14 text tower, with projection
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
TEXT_ENCODER_TINY: dict[str, Any] = tiny.tiny_text_config(projection_dim=32)

PICKSCORE_CLIP: dict[str, Any] = dict(  # yuvalkirstain/PickScore_v1: CLIP-H/14, transformers CLIPModel
    projection_dim=1024,
    text_config=dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024,
    ),
    vision_config=dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="gelu", projection_dim=1024,
    ),
)
PICKSCORE_CLIP_TINY: dict[str, Any] = dict(
    projection_dim=32,
    text_config=dict(TEXT_ENCODER_TINY),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, hidden_act="gelu", projection_dim=32),
)

HPSV2_OPEN_CLIP: dict[str, Any] = dict(  # open_clip "ViT-H-14" (HPS v2 / v2.1 checkpoints load into it)
    embed_dim=1024,
    vision_cfg=dict(image_size=224, layers=32, width=1280, head_width=80, patch_size=14),
    text_cfg=dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24),
)
HPSV2_OPEN_CLIP_TINY: dict[str, Any] = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
)

IMAGEREWARD: dict[str, Any] = dict(  # THUDM/ImageReward: BLIP ViT-L/16 at 224 + BERT-base with cross-attn
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=16, layer_norm_eps=1e-6),
    text=dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
              num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512),
    head=(768, 1024, 128, 64, 16, 1),  # ImageReward's MLP (five Linears, no activations)
)
IMAGEREWARD_TINY: dict[str, Any] = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, layer_norm_eps=1e-6),
    text=dict(vocab_size=30524, hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64),
    head=(32, 16, 16, 8, 8, 1),
)

QWEN2_VL_7B: dict[str, Any] = dict(  # Qwen/Qwen2-VL-7B-Instruct (HPSv3's backbone)
    text_config=dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
    tie_word_embeddings=False,
)
QWEN2_VL_TINY: dict[str, Any] = dict(
    text_config=dict(
        vocab_size=152064, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1_000_000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
    tie_word_embeddings=False,
)

LATENT_MAE_RESNET: dict[str, Any] = dict(
    in_channels=4,  # SD latents
    width=256,  # assumed from the public checkpoint name "mae_latent_256" (not verifiable offline)
    layers=(3, 4, 6, 3),  # the public code's default layout
)
LATENT_MAE_RESNET_TINY: dict[str, Any] = dict(tiny.TINY_MAE_LATENT)

VIT_MAE_BASE: dict[str, Any] = dict(  # facebook/vit-mae-base encoder, no masking for features
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    image_size=224, patch_size=16, mask_ratio=0.0,
)
VIT_MAE_TINY: dict[str, Any] = dict(tiny.TINY_VIT_MAE, mask_ratio=0.0)

INCEPTION_V3: dict[str, Any] = dict(num_classes=1008)  # FID's Inception has 1008 logits


# ---------------------------------------------------------------------------------------------
# Modules that are not a single library class
# ---------------------------------------------------------------------------------------------


def latent_mae_resnet(in_channels: int = 4, width: int = 256, layers: tuple[int, ...] = (3, 4, 6, 3)) -> nn.Module:
    """DrPO's latent-MAE ResNet feature encoder: the feature code's own module (drpo_bench.drpo.features_real)
    on random parameters in the public checkpoint layout, so FLOPs are counted on the code that runs."""
    from drpo_bench.drpo.features_real import LatentResNetEncoder
    from drpo_bench.drpo.mae_latent_layout import random_mae_latent_params

    return LatentResNetEncoder(random_mae_latent_params(width, tuple(layers), in_channels), tuple(layers))



def imagereward_network(vision: Mapping[str, Any], text: Mapping[str, Any], head: tuple[int, ...]) -> nn.Module:
    """The in-process ``imagereward`` reward's network (BLIP ViT-L/16 → BERT cross-attending to it → MLP
    on [CLS]), built from configs: the class that scores and backpropagates in training."""
    from drpo_bench.rewards.imagereward_model import build_network

    return build_network(dict(vision), dict(text, is_decoder=True), head)  # is_decoder: cross-attention layers


class HPSv3Model(nn.Module):
    """Qwen2-VL backbone (vision tower + LLM, no LM head) and a reward head on the last token.

    Input sequence per image: <vision_start> 256 image tokens <vision_end> prompt tokens; the
    head reads the last token's hidden state and returns (mean, log sigma).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        from transformers import Qwen2VLConfig, Qwen2VLModel

        self.config = Qwen2VLConfig(**config)
        self.backbone = Qwen2VLModel(self.config)
        self.head = nn.Linear(self.config.text_config.hidden_size, 2)

    def forward(self, pixel_patches: torch.Tensor, grid_thw: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        from transformers.vision_utils import get_vision_position_ids

        visual = self.backbone.visual
        # Index bookkeeping stays on the CPU (it reads values); the tensors live on the device.
        grid_cpu = grid_thw.cpu()
        vision_pos = get_vision_position_ids(grid_cpu, visual.spatial_merge_size).to(pixel_patches.device)
        merged = visual(pixel_patches, grid_thw=grid_cpu, position_ids=vision_pos).pooler_output  # (B·N, hidden)
        batch = input_ids.shape[0]
        image_tokens = merged.reshape(batch, -1, merged.shape[-1])  # (B, N, hidden)
        embed = self.backbone.language_model.embed_tokens
        text = embed(input_ids)  # (B, T, hidden); ids 0 and 1 stand for vision_start/end below
        start = embed(torch.zeros(batch, 1, dtype=torch.long, device=input_ids.device))
        end = embed(torch.ones(batch, 1, dtype=torch.long, device=input_ids.device))
        seq = torch.cat([start, image_tokens, end, text], dim=1)  # (B, S, hidden)
        length = seq.shape[1]
        positions = torch.arange(length, device=seq.device).view(1, 1, -1).expand(3, batch, -1)  # mrope (3, B, S)
        hidden = self.backbone.language_model(inputs_embeds=seq, position_ids=positions).last_hidden_state
        return self.head(hidden[:, -1])  # (B, 2): mean, log sigma


# ---------------------------------------------------------------------------------------------
# Builders, inputs and the canonical forward of each architecture
# ---------------------------------------------------------------------------------------------


def _unet(cfg: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg)


def _vae(cfg: Mapping[str, Any]) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg)


def _clip_text(cfg: Mapping[str, Any]) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**cfg))


def _clip_text_proj(cfg: Mapping[str, Any]) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(**cfg))


def _clip(cfg: Mapping[str, Any]) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(**cfg))


def _open_clip(cfg: Mapping[str, Any]) -> nn.Module:
    import open_clip

    return open_clip.CLIP(**cfg)


def _qwen2_vl(cfg: Mapping[str, Any]) -> nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(**cfg))


def _vit_mae(cfg: Mapping[str, Any]) -> nn.Module:
    from transformers import ViTMAEConfig, ViTMAEModel

    return ViTMAEModel(ViTMAEConfig(**cfg))


def _inception(cfg: Mapping[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, **cfg)


def _empty(device: torch.device, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype) if device.type != "meta" else torch.empty(shape, device=device, dtype=dtype)


def _ids(device: torch.device, batch: int, tokens: int, vocab: int = 1000) -> torch.Tensor:
    if device.type == "meta":
        return torch.zeros(batch, tokens, dtype=torch.long, device=device)
    return torch.randint(2, vocab, (batch, tokens), device=device)


def _unet_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    cfg = m.config
    lat = s["resolution"] // s.get("vae_factor", 8)  # the paired VAE's downsampling (tiny twins: 4)
    inputs: dict[str, Any] = dict(
        sample=_empty(dev, dt, b, cfg.in_channels, lat, lat),  # (B, 4, H/8, W/8)
        timestep=torch.full((b,), 999, device=dev, dtype=torch.long),  # one step: t = 999
        encoder_hidden_states=_empty(dev, dt, b, s["text_tokens"], cfg.cross_attention_dim),  # (B, 77, D)
    )
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = dict(
            text_embeds=_empty(dev, dt, b, pooled),  # (B, 1280) pooled text
            time_ids=_empty(dev, dt, b, 6),  # (B, 6) original size, crop, target size
        )
    return inputs


def _unet_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    return m(**x).sample


def _vae_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    factor = 2 ** (len(m.config.block_out_channels) - 1)
    lat = s["resolution"] // factor
    return dict(latents=_empty(dev, dt, b, m.config.latent_channels, lat, lat))  # (B, 4, 64, 64) at 512 px


def _vae_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    return m.decode(x["latents"] / m.config.scaling_factor).sample  # (B, 3, 512, 512)


def _text_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    return dict(input_ids=_ids(dev, b, s["text_tokens"], m.config.vocab_size))


def _text_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    out = m(input_ids=x["input_ids"], output_hidden_states=True)
    return out.hidden_states[-2]  # penultimate layer, as SD 2.x / SDXL use it


def _image_text_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    r = s["image_size"]
    return dict(pixel_values=_empty(dev, dt, b, 3, r, r), input_ids=_ids(dev, b, s["text_tokens"]))


def _clip_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    img = m.get_image_features(pixel_values=x["pixel_values"]).pooler_output  # (B, 1024)
    txt = m.get_text_features(input_ids=x["input_ids"]).pooler_output
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return m.logit_scale.exp() * (img * txt).sum(-1)  # (B,) PickScore


def _open_clip_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    img = m.encode_image(x["pixel_values"], normalize=True)
    txt = m.encode_text(x["input_ids"], normalize=True)
    return (img * txt).sum(-1)  # (B,) HPSv2: cosine


def _imagereward_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    return m(x["pixel_values"], x["input_ids"])


def _hpsv3_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    vc = m.config.vision_config
    side = s["image_size"] // vc.patch_size  # 448 / 14 = 32 patches per side
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2  # 3·2·14·14 = 1176
    return dict(
        pixel_patches=_empty(dev, dt, b * side * side, patch_dim),  # (B·1024, 1176) flattened patches
        grid_thw=torch.tensor([[1, side, side]] * b),  # (B, 3) on CPU
        input_ids=_ids(dev, b, s["text_tokens"], m.config.text_config.vocab_size),
    )


def _hpsv3_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    return m(x["pixel_patches"], x["grid_thw"], x["input_ids"])[:, 0]  # (B,) the mean


def _qwen2_vl_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    raise UserError("qwen2-vl-7b is listed for its parameter count; count FLOPs on 'hpsv3'")


def _image_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    r = s["image_size"]
    return dict(pixel_values=_empty(dev, dt, b, 3, r, r))


def _vit_mae_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    return m(pixel_values=x["pixel_values"]).last_hidden_state  # (B, 197, 768) with mask_ratio 0


def _inception_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    return m.eval()(x["pixel_values"])


def _latent_inputs(m: nn.Module, b: int, dev: torch.device, dt: torch.dtype, s: ShapeDict) -> dict[str, Any]:
    lat = s["resolution"] // s.get("vae_factor", 8)
    in_channels = m.param("encoder.conv1.kernel").shape[2]  # JAX layout (kh, kw, in, out)
    return dict(latents=_empty(dev, dt, b, in_channels, lat, lat))


def _latent_resnet_run(m: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    feats = m(x["latents"])
    return feats[f"layer{len(m.layers)}"]  # DrPO's SD-Turbo keys are all stage-4 statistics


def hf_checkpointing(m: nn.Module, on: bool = True) -> None:
    """Activation checkpointing of a transformers model (active in train mode only)."""
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(m, "activation_checkpointing_enable"):  # transformers ≥ 5
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(m, "activation_checkpointing_disable"):
        m.activation_checkpointing_disable()
    else:
        m.gradient_checkpointing_disable()


def _hf_checkpointing(m: nn.Module) -> None:
    hf_checkpointing(m, True)


def _diffusers_checkpointing(m: nn.Module) -> None:
    m.enable_gradient_checkpointing()


def _open_clip_checkpointing(m: nn.Module) -> None:
    m.set_grad_checkpointing(True)


@dataclass(frozen=True)
class Architecture:
    """One network: its configurations, builder and canonical forward."""

    name: str
    summary: str
    config: Mapping[str, Any]
    tiny_config: Mapping[str, Any]
    builder: Callable[[Mapping[str, Any]], nn.Module]
    make_inputs: Callable[[nn.Module, int, torch.device, torch.dtype, ShapeDict], dict[str, Any]]
    run: Callable[[nn.Module, dict[str, Any]], torch.Tensor]
    default_shape: ShapeDict
    tiny_shape: ShapeDict
    #: the input that gets requires_grad for a backward to the input (a reward used as a loss)
    grad_input: str | None = None
    #: module names LoRA attaches to (generators); empty: LoRA is not used on it
    lora_targets: tuple[str, ...] = ()
    #: published parameter count, for tests
    published_params: float | None = None
    #: how this build differs from the real model, if it does
    approximate: str = ""
    enable_checkpointing: Callable[[nn.Module], None] | None = None
    tags: tuple[str, ...] = field(default=())

    def shape(self, overrides: Mapping[str, int] | None = None, tiny: bool = False) -> ShapeDict:
        base = dict(self.tiny_shape if tiny else self.default_shape)
        for key, value in (overrides or {}).items():
            if key not in base:
                hint = ", ".join(nearest(key, base))
                raise UserError(f"{self.name}: unknown shape key {key!r}. Valid keys: {hint}")
            base[key] = int(value)
        return base


_UNET_SHAPE = {"resolution": 512, "text_tokens": 77}
_UNET_TINY_SHAPE = {"resolution": 64, "text_tokens": 8, "vae_factor": 4}  # the tiny twins' VAE downsamples 4x

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "sd-turbo-unet", "SD-Turbo UNet (SD 2.1 layout), one step at t=999", SD_TURBO_UNET, SD_TURBO_UNET_TINY,
            _unet, _unet_inputs, _unet_run, _UNET_SHAPE, _UNET_TINY_SHAPE, grad_input="sample",
            lora_targets=UNET_LORA_TARGETS, published_params=865.9e6,
            enable_checkpointing=_diffusers_checkpointing, tags=("generator",),
        ),
        Architecture(
            "sdxl-turbo-unet", "SDXL-Turbo UNet with text_time added conditioning", SDXL_TURBO_UNET,
            SDXL_TURBO_UNET_TINY, _unet, _unet_inputs, _unet_run, _UNET_SHAPE, _UNET_TINY_SHAPE,
            grad_input="sample", lora_targets=UNET_LORA_TARGETS, published_params=2567.5e6,
            enable_checkpointing=_diffusers_checkpointing, tags=("generator",),
        ),
        Architecture(
            "sd-vae-decoder", "SD/SD-Turbo AutoencoderKL (decode is what runs)", SD_VAE, SD_VAE_TINY, _vae,
            _vae_inputs, _vae_run, {"resolution": 512}, {"resolution": 64}, grad_input="latents",
            published_params=83.65e6, enable_checkpointing=_diffusers_checkpointing, tags=("vae",),
        ),
        Architecture(
            "sdxl-vae-decoder", "SDXL AutoencoderKL (same layout, scaling 0.13025)", SDXL_VAE, SDXL_VAE_TINY, _vae,
            _vae_inputs, _vae_run, {"resolution": 512}, {"resolution": 64}, grad_input="latents",
            published_params=83.65e6, enable_checkpointing=_diffusers_checkpointing, tags=("vae",),
        ),
        Architecture(
            "sd-turbo-text-encoder", "SD-Turbo text encoder (OpenCLIP-H text tower, 23 layers)",
            SD_TURBO_TEXT_ENCODER, TEXT_ENCODER_TINY, _clip_text, _text_inputs, _text_run,
            {"text_tokens": 77}, {"text_tokens": 8}, published_params=340.4e6, tags=("text",),
        ),
        Architecture(
            "sdxl-text-encoder-1", "SDXL text encoder 1 (CLIP ViT-L/14 text)", SDXL_TEXT_ENCODER_1,
            tiny.tiny_text_config(16, act="quick_gelu"),  # the tiny SDXL twin's: 16 + 16 = the tiny UNet's 32
            _clip_text, _text_inputs, _text_run, {"text_tokens": 77}, {"text_tokens": 8},
            published_params=123.1e6, tags=("text",),
        ),
        Architecture(
            "sdxl-text-encoder-2", "SDXL text encoder 2 (OpenCLIP bigG/14 text, projected)", SDXL_TEXT_ENCODER_2,
            tiny.tiny_text_config(16, projection_dim=16), _clip_text_proj, _text_inputs, _text_run, {"text_tokens": 77}, {"text_tokens": 8},
            published_params=694.7e6, tags=("text",),
        ),
        Architecture(
            "pickscore", "PickScore v1: CLIP ViT-H/14 (transformers CLIPModel), image + text", PICKSCORE_CLIP,
            PICKSCORE_CLIP_TINY, _clip, _image_text_inputs, _clip_run, {"image_size": 224, "text_tokens": 77},
            {"image_size": 32, "text_tokens": 8}, grad_input="pixel_values", published_params=986.1e6,
            enable_checkpointing=_hf_checkpointing, tags=("reward",),
        ),
        Architecture(
            "hpsv2", "HPSv2/v2.1: open_clip ViT-H-14, image + text", HPSV2_OPEN_CLIP, HPSV2_OPEN_CLIP_TINY, _open_clip,
            _image_text_inputs, _open_clip_run, {"image_size": 224, "text_tokens": 77},
            {"image_size": 32, "text_tokens": 77},  # open_clip's text tower takes exactly 77
            grad_input="pixel_values", published_params=986.1e6,
            enable_checkpointing=_open_clip_checkpointing, tags=("reward",),
        ),
        Architecture(
            "imagereward", "ImageReward: BLIP ViT-L/16 + BERT-base cross-attention + MLP", IMAGEREWARD,
            IMAGEREWARD_TINY, lambda c: imagereward_network(**c), _image_text_inputs, _imagereward_run,
            {"image_size": 224, "text_tokens": 35}, {"image_size": 32, "text_tokens": 8}, grad_input="pixel_values",
            enable_checkpointing=None, tags=("reward",),
        ),
        Architecture(
            "hpsv3", "HPSv3: Qwen2-VL-7B at 448 px + reward head on the last token", QWEN2_VL_7B, QWEN2_VL_TINY,
            HPSv3Model, _hpsv3_inputs, _hpsv3_run, {"image_size": 448, "text_tokens": 77},
            {"image_size": 56, "text_tokens": 8}, grad_input="pixel_patches",
            approximate="reward head is one Linear (real: small MLP; negligible FLOPs); no LM head",
            enable_checkpointing=lambda m: _hf_checkpointing(m.backbone), tags=("reward",),
        ),
        Architecture(
            "qwen2-vl-7b", "Qwen2-VL-7B-Instruct with its LM head (parameter count reference)", QWEN2_VL_7B,
            QWEN2_VL_TINY, _qwen2_vl, _hpsv3_inputs, _qwen2_vl_run, {"image_size": 448, "text_tokens": 77},
            {"image_size": 56, "text_tokens": 8}, published_params=8.29e9, tags=("reference",),
        ),
        Architecture(
            "latent-mae-resnet", "DrPO's latent-MAE ResNet feature encoder on SD latents", LATENT_MAE_RESNET,
            LATENT_MAE_RESNET_TINY, lambda c: latent_mae_resnet(**c), _latent_inputs, _latent_resnet_run,
            {"resolution": 512}, {"resolution": 64, "vae_factor": 4}, grad_input="latents",
            approximate="widths assumed (base 256); the authors' checkpoint fixes them",
            tags=("features",),
        ),
        Architecture(
            "vit-mae-base", "ViT-MAE base encoder on decoded images at 224 (SDXL-Turbo pixel features)",
            VIT_MAE_BASE, VIT_MAE_TINY, _vit_mae, _image_inputs, _vit_mae_run, {"image_size": 224},
            {"image_size": 32}, grad_input="pixel_values", published_params=85.8e6,
            enable_checkpointing=_hf_checkpointing, tags=("features",),
        ),
        Architecture(
            "inception-v3", "InceptionV3 at 299 px (FID features)", INCEPTION_V3, INCEPTION_V3, _inception,
            _image_inputs, _inception_run, {"image_size": 299}, {"image_size": 75}, grad_input="pixel_values",
            approximate="torchvision layout (FID's pt_inception differs in pooling details)", tags=("metric",),
        ),
    )
}


def get(name: str) -> Architecture:
    """The architecture called ``name``; unknown names list the nearest valid ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        hint = ", ".join(nearest(name, ARCHITECTURES))
        raise UserError(f"unknown architecture {name!r}. Nearest valid names: {hint}") from None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(
    name: str,
    *,
    device: torch.device | str = "meta",
    dtype: torch.dtype = torch.float32,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Random-init ``name`` on ``device`` (``meta``: no memory, shapes only), frozen, eval mode.

    Constructed directly on the device in ``dtype``, so a full-size model never sits on the CPU.
    """
    arch = get(name)
    cfg = dict(arch.tiny_config if tiny else arch.config)
    cfg.update(overrides or {})
    with torch.device(device), _default_dtype(dtype if dtype.is_floating_point else torch.float32):
        module = arch.builder(cfg)
    module.requires_grad_(False)
    return module.eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def example_inputs(
    name: str,
    module: nn.Module,
    batch: int = 1,
    *,
    shape: Mapping[str, int] | None = None,
    tiny: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Inputs for ``run`` on the module's device: random there, empty on meta."""
    arch = get(name)
    p = next(module.parameters())
    return arch.make_inputs(module, batch, p.device, dtype or p.dtype, arch.shape(shape, tiny=tiny))


def run(name: str, module: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The canonical forward of ``name``: a tensor to sum and backpropagate from."""
    return get(name).run(module, inputs)

"""Tiny twins: a weight source of random-init models in the real classes and on-disk layouts.

A weights location ``tiny:<twin>`` (``tiny:sd-turbo``, ``tiny:clip``, ``tiny:open-clip/HPS_tiny_compressed.pt``,
...; see ``TWINS``) resolves here, so the real loaders run unchanged on CPU in tests and smoke runs;
the registry's ``*-tiny`` names are presets of the real classes with such locations.

Every builder uses the *real* classes (diffusers ``UNet2DConditionModel``/``AutoencoderKL``,
transformers ``CLIPTextModel``/``CLIPModel``/``Owlv2ForObjectDetection``/``ViTMAEModel``,
open_clip models) with small sizes, and writes them with the libraries' own ``save_pretrained``
(or the checkpoint format the real weights ship in), so tests load them back through exactly
the code path a user's real weights take.

Folders are cached under ``$DRPO_BENCH_CACHE`` (default ``~/.cache/drpo-bench``) as
``tiny/<name>-v<TINY_VERSION>`` and created atomically (built in a temp folder, then renamed),
so concurrent test processes never see half-written folders. Bump ``TINY_VERSION`` whenever a
config below changes.

The CLIP tokenizer is built from the BPE vocabulary open_clip ships
(``open_clip/bpe_simple_vocab_16e6.txt.gz``): the same 49 408 ids as the hub's CLIP tokenizers.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TINY_VERSION = 1
CLIP_VOCAB_SIZE = 49408

# ---- real configuration values, kept small ------------------------------------------------------
# Each dict keeps the real model's *structure* (block types, conditioning, prediction type) and
# shrinks only widths and depths. Comments give the real value where it differs.

SD_TURBO_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="trailing",
    steps_offset=1,
)

TINY_SD_UNET: dict[str, Any] = dict(
    sample_size=16,  # real 64 (512 px / 8)
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 16, 32, 32),  # real (320, 640, 1280, 1280)
    layers_per_block=1,  # real 2
    cross_attention_dim=32,  # real 1024 (text hidden size)
    attention_head_dim=(2, 2, 4, 4),  # real (5, 10, 20, 20)
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=8,  # real 32
    flip_sin_to_cos=True,
    freq_shift=0,
)

TINY_SDXL_UNET: dict[str, Any] = dict(
    sample_size=16,  # real 128 (64 for 512 px use)
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32, 32),  # real (320, 640, 1280)
    layers_per_block=1,  # real 2
    transformer_layers_per_block=(1, 1, 2),  # real (1, 2, 10)
    attention_head_dim=(2, 4, 4),  # real (5, 10, 20)
    cross_attention_dim=32,  # real 2048 = 768 + 1280 (both text encoders concatenated)
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=4,  # real 256
    act_fn="silu",
    projection_class_embeddings_input_dim=6 * 4 + 16,  # real 2816 = 6 * 256 + 1280 (pooled text)
    norm_num_groups=8,
    flip_sin_to_cos=True,
    freq_shift=0,
)

TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # real 4 blocks: 8x downsampling; here 4x
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16),  # real (128, 256, 512, 512)
    layers_per_block=1,  # real 2
    latent_channels=4,
    norm_num_groups=4,  # real 32
    sample_size=64,
)


def tiny_text_config(hidden: int = 32, *, projection_dim: int | None = None, act: str = "gelu") -> dict[str, Any]:
    """CLIP text tower: real vocabulary and 77 positions, tiny widths (real SD-Turbo: 1024 x 23)."""
    cfg: dict[str, Any] = dict(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        # SD 2.x / SDXL configs carry the legacy ids (eos 2): transformers then pools at argmax(ids).
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    if projection_dim is not None:
        cfg["projection_dim"] = projection_dim
    return cfg


# ---- cache ---------------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("DRPO_BENCH_CACHE", Path.home() / ".cache" / "drpo-bench"))


def cached_build(name: str, build: Callable[[Path], None], root: Path | None = None) -> Path:
    """``root/tiny/<name>-v<TINY_VERSION>``, built once by ``build(tmp_folder)`` and renamed in place."""
    root = Path(root) if root is not None else cache_root()
    final = root / "tiny" / f"{name}-v{TINY_VERSION}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # lost a race to another process: theirs is as good as ours
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- tokenizer -----------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP BPE vocabulary (49 408 ids) and merges, from open_clip's bundled vocabulary file."""
    import open_clip

    gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the 48 894 merges CLIP uses
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, *, pad_token: str = "!", model_max_length: int = 77) -> Path:
    """A CLIP tokenizer folder in the hub's layout: vocab.json, merges.txt, tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {
        **special,
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


# ---- generators ------------------------------------------------------------------------------------


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def build_tiny_sd_turbo(folder: Path, seed: int = 0) -> None:
    """SD-Turbo-shaped pipeline folder: unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _seeded(seed)
    unet = UNet2DConditionModel(**TINY_SD_UNET)
    vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(32)))
    tok_dir = write_clip_tokenizer(folder / "_tok", pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scheduler = EulerDiscreteScheduler(**SD_TURBO_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    # The hub's tokenizer folder holds vocab.json + merges.txt (no tokenizer.json): keep that layout.
    shutil.rmtree(folder / "tokenizer")
    (folder / "_tok").rename(folder / "tokenizer")


def build_tiny_sdxl_turbo(folder: Path, seed: int = 0) -> None:
    """SDXL-Turbo-shaped pipeline folder: two text encoders and tokenizers, text_time added conditioning."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    _seeded(seed)
    unet = UNet2DConditionModel(**TINY_SDXL_UNET)
    vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.13025, force_upcast=True)
    # encoder 1: CLIP ViT-L/14 text tower (quick_gelu); encoder 2: OpenCLIP bigG/14 with projection.
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(16, act="quick_gelu")))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_text_config(16, projection_dim=16)))
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tok", pad_token="<|endoftext|>"))
    tokenizer_2 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tok2", pad_token="!"))
    scheduler = EulerAncestralDiscreteScheduler(**SD_TURBO_SCHEDULER)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    for saved, written in (("tokenizer", "_tok"), ("tokenizer_2", "_tok2")):
        shutil.rmtree(folder / saved)
        (folder / written).rename(folder / saved)


def make_tiny_sd_turbo(root: Path | None = None) -> Path:
    return cached_build("sd-turbo", build_tiny_sd_turbo, root)


def make_tiny_sdxl_turbo(root: Path | None = None) -> Path:
    return cached_build("sdxl-turbo", build_tiny_sdxl_turbo, root)


# ---- reward models ---------------------------------------------------------------------------------


def build_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32, projection_dim: int = 16) -> None:
    """A transformers CLIPModel folder (PickScore / CLIP / aesthetic layout) with tokenizer and processor.

    Real PickScore: projection 1024, text 24 x 1024, vision 32 x 1280, 224 px, patch 14.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    _seeded(seed)
    text = tiny_text_config(32)
    text.update(bos_token_id=49406, eos_token_id=49407)  # modern configs: pool at the first eos id
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=8, hidden_act="gelu",
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    model.save_pretrained(folder)
    write_clip_tokenizer(folder, pad_token="!")
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)


def make_tiny_clip(root: Path | None = None) -> Path:
    return cached_build("clip", build_tiny_clip, root)


TINY_OPEN_CLIP_NAME = "drpo-tiny-ViT"
TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    # real HPSv2 (ViT-H-14): embed 1024; vision 32 layers x 1280, patch 14, 224 px; text 24 x 1024
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": 32, "heads": 4, "layers": 2},
}


def build_tiny_open_clip(folder: Path, seed: int = 0) -> None:
    """An open_clip model config (``<name>.json``) and an HPS-format checkpoint (``{"state_dict": ...}``)."""
    import open_clip

    config_path = folder / f"{TINY_OPEN_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    open_clip.add_model_config(config_path)
    _seeded(seed)
    model = open_clip.create_model(TINY_OPEN_CLIP_NAME, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, folder / "HPS_tiny_compressed.pt")


def make_tiny_open_clip(root: Path | None = None) -> Path:
    """Folder with ``drpo-tiny-ViT.json`` (open_clip config) and ``HPS_tiny_compressed.pt``."""
    return cached_build("open-clip", build_tiny_open_clip, root)


def build_tiny_aesthetic_head(folder: Path, seed: int = 0, input_size: int = 16) -> None:
    """The LAION improved-aesthetic-predictor MLP state dict (real input 768, CLIP ViT-L/14)."""
    from drpo_bench.rewards.aesthetic_head import AestheticMLP

    _seeded(seed)
    torch.save(AestheticMLP(input_size).state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")


def make_tiny_aesthetic(root: Path | None = None) -> Path:
    """Folder with a tiny CLIP (``clip/``) and the aesthetic head file, as a user lays them out."""

    def build(folder: Path) -> None:
        build_tiny_clip(folder / "clip")
        build_tiny_aesthetic_head(folder)

    return cached_build("aesthetic", build, root)


def build_tiny_owlv2(folder: Path, seed: int = 0) -> None:
    """Owlv2ForObjectDetection + Owlv2Processor (real: ViT-B/16 at 960 px, 16 text tokens)."""
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    _seeded(seed)
    text = tiny_text_config(32)
    text.update(max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))  # = text width, as real
    model.save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tok", pad_token="!", model_max_length=16))
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer).save_pretrained(folder)
    shutil.rmtree(folder / "_tok")


def make_tiny_owlv2(root: Path | None = None) -> Path:
    return cached_build("owlv2", build_tiny_owlv2, root)


# ---- feature encoders -------------------------------------------------------------------------------


#: ViTMAEModel encoder (real facebook/vit-mae-base: 12 x 768, 224 px, patch 16)
TINY_VIT_MAE: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
)
#: the latent-MAE ResNet (real: width 256 assumed from "mae_latent_256", layers (3, 4, 6, 3))
TINY_MAE_LATENT: dict[str, Any] = dict(in_channels=4, width=8, layers=(1, 1, 1, 1))


def build_tiny_vit_mae(folder: Path, seed: int = 0) -> None:
    """transformers ViTMAEModel + ViTImageProcessor (real facebook/vit-mae-base: 12 x 768, 224 px, patch 16)."""
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEModel

    _seeded(seed)
    config = ViTMAEConfig(
        **TINY_VIT_MAE, decoder_hidden_size=16, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )
    ViTMAEModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def make_tiny_vit_mae(root: Path | None = None) -> Path:
    return cached_build("vit-mae", build_tiny_vit_mae, root)


def tiny_mae_latent_state(seed: int = 0, width: int = 8, layers: tuple[int, ...] = (1, 1, 1, 1), in_channels: int = 4) -> dict[str, Any]:
    """A checkpoint in the public ``mae_latent_256_torch.pth`` format (JAX-exported ResNet encoder):
    the layout of ``drpo_bench.drpo.mae_latent_layout``, seeded, with noisy GroupNorm affines;
    metadata.model_config gives ``layers`` and ``in_channels``. Real: layers (3, 4, 6, 3)."""
    from drpo_bench.drpo.mae_latent_layout import random_mae_latent_params

    state = random_mae_latent_params(width, layers, in_channels, generator=torch.Generator().manual_seed(seed), norm_noise=0.1)
    return {"state_dict": state, "metadata": {"model_config": {"layers": list(layers), "in_channels": in_channels}}}


def make_tiny_mae_latent(root: Path | None = None) -> Path:
    """Folder with ``mae_latent_256_torch.pth`` in the public format (tiny widths)."""
    return cached_build(
        "mae-latent", lambda folder: torch.save(tiny_mae_latent_state(), folder / "mae_latent_256_torch.pth"), root
    )


# ---- HPSv3 (Qwen2-VL + reward head) ------------------------------------------------------------------

#: The special tokens the HPSv3 chat needs, in Qwen2's order (real ids 151643-151656); ``<|Reward|>``
#: is *not* here: like the real tokenizer, it is added at load time by the HPSv3 loader.
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

#: A minimal Jinja template that renders what Qwen2-VL-7B-Instruct's ``chat_template.json`` renders for
#: text and image parts (default system turn when none is given; ``add_generation_prompt``).
QWEN2_VL_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen2-VL-7B-Instruct's config.json layout (flat text fields + vision_config), tiny sizes.
#: Real: hidden 3584, 28 layers, 28 heads / 4 kv heads, intermediate 18944, vocab 152064,
#: mrope_section [16, 24, 24]; vision depth 32, embed 1280, 16 heads, patch 14.
TINY_QWEN2_VL_CONFIG: dict[str, Any] = dict(
    architectures=["Qwen2VLForConditionalGeneration"],
    model_type="qwen2_vl",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # head_dim 16: 8 rotary pairs
    use_sliding_window=False,
    tie_word_embeddings=False,
    attention_dropout=0.0,
    vision_config=dict(
        depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, in_chans=3,
        patch_size=4, spatial_patch_size=4, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu",
    ),
)
TINY_HPSV3_IMAGE_TOKENS = 16  # real 256: 16 tokens x (patch 4 x merge 2)^2 = 32 x 32 px (real 448 x 448)


def build_tiny_qwen2_tokenizer(folder: Path) -> Any:
    """A byte-level BPE (the kind Qwen2 uses) trained here on HPSv3's instruction, with Qwen2-VL's
    special tokens, saved as a transformers fast tokenizer: Qwen2's own files are a download away."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from drpo_bench.rewards.hpsv3_model import INSTRUCTION, REWARD_SUFFIX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,  # more than the corpus can merge: every word of the instruction becomes one token
        special_tokens=list(QWEN2_VL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [INSTRUCTION.replace("{text_prompt}", ""), REWARD_SUFFIX.replace("<|Reward|>", ""),
              "a photo of a red cat, two dogs on a beach, an astronaut riding a horse"]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        padding_side="right", model_max_length=32768,
    )
    fast.save_pretrained(str(folder))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_TINY_CHAT_TEMPLATE}))
    return fast


def build_tiny_hpsv3(folder: Path, seed: int = 0) -> None:
    """HPSv3's public layout, tiny: ``base/`` (a Qwen2-VL-7B-Instruct-style folder: config.json, tokenizer,
    chat_template.json, preprocessor_config.json, no weights) and ``HPSv3.safetensors`` (the whole reward
    model's state dict in the checkpoint's key layout: ``visual.*``, ``model.*``, ``lm_head.weight``,
    ``rm_head.{0,3,5}.*``; the LM embeddings and head resized to ``len(tokenizer)`` after ``<|Reward|>``)."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLModel

    from drpo_bench.rewards.hpsv3_model import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, REWARD_TOKEN

    base = folder / "base"
    base.mkdir(parents=True)
    tokenizer = build_tiny_qwen2_tokenizer(base)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}
    flat = dict(
        TINY_QWEN2_VL_CONFIG,
        vocab_size=len(tokenizer) + 8,  # padded past the tokenizer, as the real 152064 > 151657
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    )
    (base / "config.json").write_text(json.dumps(flat, indent=2))
    vision = TINY_QWEN2_VL_CONFIG["vision_config"]
    pixels = TINY_HPSV3_IMAGE_TOKENS * (vision["patch_size"] * vision["spatial_merge_size"]) ** 2
    (base / "preprocessor_config.json").write_text(json.dumps(dict(
        image_processor_type="Qwen2VLImageProcessor", min_pixels=pixels, max_pixels=pixels,
        patch_size=vision["patch_size"], temporal_patch_size=vision["temporal_patch_size"],
        merge_size=vision["spatial_merge_size"], image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
        do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True, resample=3,
    ), indent=2))

    _seeded(seed)
    config = Qwen2VLConfig.from_pretrained(str(base))
    rows = len(tokenizer) + 1  # + <|Reward|>: the package resizes to len(tokenizer) after adding it
    config.text_config.vocab_size = rows
    model = Qwen2VLModel(config)
    hidden = config.text_config.hidden_size
    rm_head = torch.nn.Sequential(  # HPSv3's "ranknet" head, real widths
        torch.nn.Linear(hidden, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.05),
        torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2),
    )
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():  # transformers < 4.52 names, as HPSv3.safetensors
        if key.startswith("visual."):
            state[key] = value
        elif key.startswith("language_model."):
            state["model." + key[len("language_model."):]] = value
    state["lm_head.weight"] = torch.randn(rows, hidden) * 0.02
    state.update({f"rm_head.{k}": v for k, v in rm_head.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "HPSv3.safetensors"))
    assert REWARD_TOKEN not in tokenizer.get_vocab()


def make_tiny_hpsv3(root: Path | None = None) -> Path:
    """Folder with ``base/`` (tiny Qwen2-VL-Instruct config + tokenizer) and ``HPSv3.safetensors``."""
    return cached_build("hpsv3", build_tiny_hpsv3, root)


# ---- ImageReward --------------------------------------------------------------------------------

#: BERT WordPiece specials first, then single characters and their "##" continuations (every lower-case
#: word tokenizes, many into several pieces: prompts reach the 35-token truncation), then whole words
TINY_BERT_WORDS = (
    "a an the of on in with and at to is photo painting picture portrait cat cats dog dogs red blue green "
    "yellow black white two three big small beach city street house tree forest mountain sky sunset car "
    "man woman person child bird horse flower flowers table chair apple banana cake pizza water river "
    "snow night day light dark old new happy style detailed high quality art oil digital cinematic"
).split()
TINY_IMAGEREWARD_VISION: dict[str, int] = dict(  # real ViT-L/16: 1024 wide, 24 blocks, 4096 MLP, 224 px
    hidden_size=128, num_hidden_layers=2, intermediate_size=256, patch_size=16, image_size=48,
)
TINY_IMAGEREWARD_TEXT: dict[str, Any] = dict(  # med_config.json's BERT keys; real: 768 wide, 12 layers, 12 heads
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
    architectures=["BertModel"], model_type="bert", type_vocab_size=2, initializer_range=0.02,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, add_cross_attention=True,
)
TINY_IMAGEREWARD_HEAD = (32, 64, 16, 16, 8, 1)  # real (768, 1024, 128, 64, 16, 1)


def write_tiny_bert_tokenizer(folder: Path) -> int:
    """``vocab.txt`` + ``tokenizer_config.json`` of an uncased BERT WordPiece tokenizer; returns the vocab size."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()&/")
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars[:36]), *TINY_BERT_WORDS]
    vocab = list(dict.fromkeys(pieces))  # once each ("a" is a character and a word)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}, indent=2))
    return len(vocab)


def build_tiny_imagereward(folder: Path, seed: int = 0) -> None:
    """ImageReward's public layout, tiny: ``ImageReward.pt`` (``ImageReward.state_dict()``'s keys:
    ``blip.visual_encoder.*`` in timm's names, ``blip.text_encoder.*``, ``blip.vision_proj``/``text_proj``,
    ``mlp.layers.*``), ``med_config.json`` (BERT keys, ``add_cross_attention``) and ``bert-base-uncased/``
    (a tiny uncased WordPiece vocabulary standing in for bert-base-uncased's)."""
    from drpo_bench.rewards.imagereward_model import build_network, official_key, text_config

    vocab = write_tiny_bert_tokenizer(folder / "bert-base-uncased")
    med = dict(TINY_IMAGEREWARD_TEXT, vocab_size=vocab + 2, encoder_width=768)  # + [DEC], [ENC]; encoder_width
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))  # is overwritten at load, as BLIP does
    v = TINY_IMAGEREWARD_VISION
    vision = dict(v, num_attention_heads=v["hidden_size"] // 64, hidden_act="gelu", layer_norm_eps=1e-6)
    _seeded(seed)
    network = build_network(vision, text_config(med, v["hidden_size"]), TINY_IMAGEREWARD_HEAD)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, value in network.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if "norm" in key.lower():  # LayerNorms: weight 1, bias 0 as initialized
            fresh = value.clone()
        elif key.startswith("mlp."):  # the head: unit-variance through five Linears
            fresh = torch.randn(value.shape, generator=gen) / (value.shape[-1] ** 0.5 if value.ndim == 2 else 10)
        else:  # BERT/ViT's own 0.02 init (BLIP's vision config default would be 1e-10)
            fresh = torch.randn(value.shape, generator=gen) * 0.02
        state[official_key(key)] = fresh.contiguous()
    width, text_width = v["hidden_size"], med["hidden_size"]
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(med["max_position_embeddings"]).expand((1, -1))
    for name, d in (("vision_proj", width), ("text_proj", text_width)):  # in the file, unused by the score
        state[f"blip.{name}.weight"] = torch.randn(256, d, generator=gen) * 0.02
        state[f"blip.{name}.bias"] = torch.zeros(256)
    torch.save(state, folder / "ImageReward.pt")


def make_tiny_imagereward(root: Path | None = None) -> Path:
    """Folder with ``ImageReward.pt``, ``med_config.json`` and ``bert-base-uncased/`` (tiny, official layout)."""
    return cached_build("imagereward", build_tiny_imagereward, root)


#: every tiny twin by name: the one table ``tiny:<twin>`` locations resolve through
TWINS: dict[str, Callable[..., Path]] = {
    "sd-turbo": make_tiny_sd_turbo,
    "sdxl-turbo": make_tiny_sdxl_turbo,
    "clip": make_tiny_clip,
    "open-clip": make_tiny_open_clip,
    "aesthetic": make_tiny_aesthetic,
    "owlv2": make_tiny_owlv2,
    "vit-mae": make_tiny_vit_mae,
    "mae-latent": make_tiny_mae_latent,
    "hpsv3": make_tiny_hpsv3,
    "imagereward": make_tiny_imagereward,
}


def folder(twin: str) -> Path:
    """The folder of tiny twin ``twin`` (built on first use, then cached)."""
    from drpo_bench.errors import UserError, nearest

    if twin not in TWINS:
        raise UserError(f"no tiny twin {twin!r}; available: {', '.join(nearest(twin, TWINS))} (all: {', '.join(TWINS)})")
    return TWINS[twin]()

"""ImageReward in process and differentiable: transformers' BLIP classes + ImageReward's MLP head.

ImageReward (Xu et al., 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation", https://arxiv.org/abs/2304.05977; code: github THUDM/ImageReward, PyPI
``image-reward`` 1.5; weights: hub THUDM/ImageReward ``ImageReward.pt`` + ``med_config.json``).
What each step reproduces, by the package's file and function:

* **Model** (``ImageReward/ImageReward.py``, ``ImageReward.__init__``; ``models/BLIP/blip_pretrain.py``,
  ``BLIP_Pretrain``; ``models/BLIP/blip.py``, ``create_vit``): BLIP's ViT (``vit='large'``: 1024 wide,
  24 blocks, 16 heads, patch 16, 224 px, LayerNorm eps 1e-6, exact GELU, qkv bias) and a BERT text
  encoder built from ``med_config.json`` whose every layer cross-attends to all image tokens
  (``med.py``, ``BertLayer`` in ``mode='multimodal'``). Here: transformers' ``BlipVisionModel`` (the
  same block: pre-norm attention with a fused ``qkv``, pre-norm MLP, final LayerNorm) and
  ``BlipTextModel`` (a port of the same ``med.py``; built with ``is_decoder=True`` only so that its
  layers get the cross-attention, then called bidirectionally, ``is_decoder=False``).
* **Checkpoint** (``utils.py``, ``load``): ``ImageReward.pt`` is ``ImageReward.state_dict()``:
  ``blip.visual_encoder.*`` (timm names), ``blip.text_encoder.*`` (the BERT; the same names as
  transformers' BLIP text model), ``blip.vision_proj``/``blip.text_proj`` (unused by the score) and
  ``mlp.layers.*``. :func:`checkpoint_key` maps it at load time; the vision tower's depth, width,
  patch, image size and MLP width come from the tensors' shapes, its heads from width / 64 (what
  ``create_vit`` gives both of BLIP's towers: base 768/12, large 1024/16). The text config is
  ``med_config.json`` with ``encoder_width`` = the vision width (as ``BLIP_Pretrain`` sets it).
* **Head** (``ImageReward.py``, ``MLP``): ``Linear(768, 1024) - Dropout - Linear(1024, 128) -
  Dropout - Linear(128, 64) - Dropout - Linear(64, 16) - Linear(16, 1)``, no activations (the
  ReLUs are commented out in the package), on the text encoder's [CLS] state in fp32.
* **Score** (``ImageReward.score`` / ``score_gard``): ``(mlp(text[:, 0]) - mean) / std`` with the
  published ``mean = 0.16717362830052426``, ``std = 1.0333394966054072``.
* **Text** (``ImageReward.score``; ``blip.py``, ``init_tokenizer``): ``bert-base-uncased``'s
  WordPiece tokenizer plus ``[DEC]`` (bos) and ``[ENC]`` (so 30 524 rows), ``padding="max_length",
  truncation=True, max_length=35``: [CLS] + up to 33 word pieces + [SEP], padded with [PAD] (masked).
* **Image** (``ImageReward.py``, ``_transform``): torchvision ``Resize(224, BICUBIC)`` (the shorter
  side to 224, the longer to ``int(224 * long / short)``), ``CenterCrop(224)`` (offsets
  ``int(round((h - 224) / 2))``), ``ToTensor``, ``Normalize`` with the OpenAI-CLIP mean/std. Here the
  same in torch on float pixels: ``F.interpolate(mode="bicubic", antialias=True)`` computes PIL's
  bicubic filter (a = -0.5, support scaled when downsizing); the package's PIL path then rounds to
  8 bits and clips to [0, 255]. We do not clamp: the package's own differentiable path (``ReFL.py``,
  torchvision transforms on tensors) does not either, and a clamp would zero the gradient of every
  overshooting pixel. ``tests/test_imagereward_official.py`` measures what remains against the package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from drpo_bench.errors import MissingWeightsError

#: ImageReward.py ``_transform``'s Normalize (OpenAI CLIP's); kept here: tiny.py imports this module
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: ImageReward.__init__'s published standardization of the MLP output
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
TEXT_TOKENS = 35  # ImageReward.score: padding="max_length", truncation=True, max_length=35
HEAD_DIM = 64  # create_vit: ViT-B 768 / 12 heads, ViT-L 1024 / 16 heads
VISION_LN_EPS = 1e-6  # vit.py: partial(nn.LayerNorm, eps=1e-6)
VISION_PREFIX = "blip.visual_encoder."
TEXT_PREFIX = "blip.text_encoder."


# ---- checkpoint layout -------------------------------------------------------------------------------

_VISION_TOP = {
    "cls_token": "vision.embeddings.class_embedding",
    "pos_embed": "vision.embeddings.position_embedding",
    "patch_embed.proj.weight": "vision.embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "vision.embeddings.patch_embedding.bias",
    "norm.weight": "vision.post_layernorm.weight",
    "norm.bias": "vision.post_layernorm.bias",
}
_VISION_BLOCK = {  # timm block part -> transformers BlipEncoderLayer part
    "norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}


def checkpoint_key(key: str) -> str | None:
    """An ``ImageReward.pt`` key -> our network's key; None for tensors the score does not use."""
    if key.startswith(VISION_PREFIX):
        rest = key[len(VISION_PREFIX):]
        if rest in _VISION_TOP:
            return _VISION_TOP[rest]
        if rest.startswith("blocks."):
            _, index, tail = rest.split(".", 2)
            part, _, leaf = tail.rpartition(".")
            if part in _VISION_BLOCK:
                return f"vision.encoder.layers.{index}.{_VISION_BLOCK[part]}.{leaf}"
        return "vision." + rest  # unknown: reported by the strict check
    if key.startswith(TEXT_PREFIX):
        rest = key[len(TEXT_PREFIX):]
        return None if rest == "embeddings.position_ids" else "text." + rest
    if key.startswith("mlp."):
        return key
    if key.startswith(("blip.vision_proj.", "blip.text_proj.")):
        return None  # BLIP's contrastive projections: in the file, not in the score
    return key


def official_key(key: str) -> str:
    """Our network's key -> the ``ImageReward.pt`` key (the inverse of :func:`checkpoint_key`)."""
    if key.startswith("vision."):
        rest = key[len("vision."):]
        for official, ours in _VISION_TOP.items():
            if key == ours:
                return VISION_PREFIX + official
        if rest.startswith("encoder.layers."):
            _, _, index, tail = rest.split(".", 3)
            part, _, leaf = tail.rpartition(".")
            inverse = {v: k for k, v in _VISION_BLOCK.items()}
            return f"{VISION_PREFIX}blocks.{index}.{inverse[part]}.{leaf}"
        raise KeyError(key)
    if key.startswith("text."):
        return TEXT_PREFIX + key[len("text."):]
    return key


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``ImageReward.pt`` (a torch-saved state dict, optionally under ``model``/``state_dict``)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle errors, truncated files
        raise MissingWeightsError(
            f"ImageReward: cannot read {path} as a torch checkpoint ({type(exc).__name__}: {str(exc)[:200]}). "
            "Expected ImageReward.pt from THUDM/ImageReward."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


# ---- the network -------------------------------------------------------------------------------------


def head_from_widths(widths: Sequence[int]) -> nn.Module:
    """ImageReward's MLP (``mlp.layers.{0,2,4,6,7}``): five Linears, dropouts between the first four,
    no activations. ``widths``: (768, 1024, 128, 64, 16, 1) for the real model."""
    if len(widths) != 6:
        raise ValueError(f"ImageReward's head has 5 Linear layers (6 widths), got {tuple(widths)}")
    a, b, c, d, e, f = widths
    head = nn.Module()
    head.layers = nn.Sequential(
        nn.Linear(a, b), nn.Dropout(0.2), nn.Linear(b, c), nn.Dropout(0.2), nn.Linear(c, d), nn.Dropout(0.1),
        nn.Linear(d, e), nn.Linear(e, f),
    )
    return head


def head_widths(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The head's widths read from ``mlp.layers.{0,2,4,6,7}.weight``."""
    try:
        shapes = [tuple(state[f"mlp.layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)]
    except KeyError as exc:
        raise MissingWeightsError(
            f"ImageReward: the checkpoint has no {exc.args[0]}: it is not an ImageReward model file "
            "(expected ImageReward.pt from THUDM/ImageReward)."
        ) from exc
    return (shapes[0][1], *(s[0] for s in shapes))


class ImageRewardNetwork(nn.Module):
    """BLIP vision tower -> BERT cross-attending to all image tokens -> MLP on [CLS] (raw, unstandardized)."""

    def __init__(self, vision: nn.Module, text: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.vision = vision  # transformers BlipVisionModel
        self.text = text  # transformers BlipTextModel (cross-attention layers), no pooler
        self.mlp = mlp

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalized pixels (B, 3, S, S), ids (B, T) and their mask -> (B,) ``mlp(text[:, 0])`` in fp32.

        Every image token is attended to (the package passes an all-ones image mask: none here)."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        image = self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state  # (B, 1 + N, Dv)
        text = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image
        ).last_hidden_state  # (B, T, Dt)
        return self.mlp.layers(text[:, 0].float()).squeeze(-1)  # (B,)


def vision_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``BlipVisionConfig`` fields read from the checkpoint's vision tensors."""
    try:
        pos = state[VISION_PREFIX + "pos_embed"]  # (1, 1 + N, D)
        patch = state[VISION_PREFIX + "patch_embed.proj.weight"]  # (D, 3, p, p)
        fc1 = state[VISION_PREFIX + "blocks.0.mlp.fc1.weight"]  # (mlp, D)
    except KeyError as exc:
        raise MissingWeightsError(
            f"ImageReward: the checkpoint has no {exc.args[0]}: it is not an ImageReward model file "
            "(expected ImageReward.pt from THUDM/ImageReward)."
        ) from exc
    width, p = int(patch.shape[0]), int(patch.shape[-1])
    side = round((pos.shape[1] - 1) ** 0.5)
    depth = len({k.split(".")[3] for k in state if k.startswith(VISION_PREFIX + "blocks.")})
    return dict(hidden_size=width, intermediate_size=int(fc1.shape[0]), num_hidden_layers=depth,
                num_attention_heads=max(1, width // HEAD_DIM), image_size=side * p, patch_size=p,
                hidden_act="gelu", layer_norm_eps=VISION_LN_EPS, attention_dropout=0.0)


def text_config(med: dict[str, Any], encoder_width: int) -> dict[str, Any]:
    """``BlipTextConfig`` fields from ``med_config.json`` (BERT keys) with BLIP's ``encoder_width``."""
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "max_position_embeddings", "layer_norm_eps", "pad_token_id")
    missing = [k for k in keep[:5] if k not in med]
    if missing:
        raise MissingWeightsError(f"ImageReward: med_config.json lacks {missing}; it is not BLIP's med config")
    fields = {k: med[k] for k in keep if k in med}
    return dict(fields, encoder_hidden_size=encoder_width, is_decoder=True,  # is_decoder: build cross-attention
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                bos_token_id=int(med["vocab_size"]) - 2, sep_token_id=None, eos_token_id=None)  # [DEC]; unused here


def build_network(vision: dict[str, Any], text: dict[str, Any], widths: Sequence[int], *, empty: bool = False) -> ImageRewardNetwork:
    """The network from config dicts; ``empty``: parameters on the meta device, to be assigned."""
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vcfg, tcfg = BlipVisionConfig(**vision), BlipTextConfig(**text)  # eager attention (BLIP has no sdpa path)

    def make() -> ImageRewardNetwork:
        return ImageRewardNetwork(BlipVisionModel(vcfg), BlipTextModel(tcfg, add_pooling_layer=False),
                                  head_from_widths(widths))

    if not empty:
        return make()
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return make()


# ---- tokens and pixels ---------------------------------------------------------------------------------


def load_tokenizer(folder: Path) -> Any:
    """BLIP's tokenizer: BERT WordPiece from ``folder`` + ``[DEC]`` (bos) and ``[ENC]``, as ``init_tokenizer``."""
    from transformers import BertTokenizer

    try:
        tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"ImageReward: cannot read a BERT tokenizer in {folder} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Fetch it: "
            "`huggingface-cli download bert-base-uncased vocab.txt tokenizer_config.json --local-dir <folder>`."
        ) from exc
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` with an int: the shorter side to ``size``, the other ``int(size * long / short)``."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def imagereward_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalized pixels, differentiable (see the module doc)."""
    x = images.float()
    h, w = x.shape[-2:]
    new_h, new_w = resized_size(h, w, size)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]  # (B, 3, size, size)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


# ---- loading ---------------------------------------------------------------------------------------------


@dataclass
class LoadedImageReward:
    network: ImageRewardNetwork
    tokenizer: Any
    image_size: int  # 224 for the real model (from the checkpoint's position embeddings)

    def tokens(self, prompts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 35) ids and mask: [CLS] pieces [SEP], truncated and padded to 35 as ``ImageReward.score``."""
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=TEXT_TOKENS,
                             return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def load_imagereward(
    checkpoint: Path, med_config: Path, tokenizer_folder: Path, *, device: torch.device, dtype: torch.dtype
) -> LoadedImageReward:
    """ImageReward from its public files: ``ImageReward.pt``, ``med_config.json``, a bert-base-uncased tokenizer."""
    try:
        med = json.loads(Path(med_config).read_text())
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(f"ImageReward: cannot read {med_config} as JSON ({exc})") from exc
    tokenizer = load_tokenizer(tokenizer_folder)
    state = read_checkpoint(checkpoint)
    vision = vision_config(state)
    text = text_config(med, vision["hidden_size"])
    widths = head_widths(state)
    mapped: dict[str, torch.Tensor] = {}
    for key in list(state):
        value, new = state.pop(key), checkpoint_key(key)
        if new is not None:
            mapped[new] = value.to(torch.float32 if new.startswith("mlp.") else dtype)
    rows = mapped.get("text.embeddings.word_embeddings.weight")
    if rows is not None and len(tokenizer) > rows.shape[0]:
        raise MissingWeightsError(
            f"ImageReward: the tokenizer in {tokenizer_folder} has {len(tokenizer)} tokens with [DEC]/[ENC] but the "
            f"checkpoint embeds {rows.shape[0]}: use bert-base-uncased's tokenizer (30 522 + 2 = 30 524)."
        )
    network = build_network(vision, text, widths, empty=True)
    ours = set(network.state_dict())
    missing, unexpected = sorted(ours - set(mapped)), sorted(set(mapped) - ours)
    if missing or unexpected:
        raise MissingWeightsError(
            f"ImageReward: {checkpoint} does not fit BLIP as configured by {med_config}: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''}. Use ImageReward.pt with its med_config.json (THUDM/ImageReward)."
        )
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(network.state_dict()[k].shape)]
    if bad:
        raise MissingWeightsError(
            f"ImageReward: {checkpoint} and {med_config} disagree on shapes ({bad[:3]}): the med_config is not this "
            "checkpoint's."
        )
    network.load_state_dict(mapped, strict=True, assign=True)
    network.text.embeddings.position_ids = torch.arange(text.get("max_position_embeddings", 512)).expand((1, -1))
    network.to(device).eval().requires_grad_(False)
    return LoadedImageReward(network, tokenizer, int(vision["image_size"]))


def score_imagereward(loaded: LoadedImageReward, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] and B prompts -> (B,) standardized scores in fp32, differentiable w.r.t. ``images``."""
    device = next(loaded.network.parameters()).device
    pixels = imagereward_pixels(images.to(device), loaded.image_size)  # (B, 3, 224, 224)
    ids, mask = loaded.tokens(prompts, device)
    raw = loaded.network(pixels, ids, mask)  # (B,)
    return (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD

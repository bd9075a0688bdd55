"""HPSv3 in process and differentiable: Qwen2-VL (transformers' classes) + HPSv3's reward head.

HPSv3 (Ma et al., 2025, https://arxiv.org/abs/2508.03789; code and weights: github
MizzenAI/HPSv3, hub MizzenAI/HPSv3) is Qwen2-VL-7B-Instruct finetuned with an uncertainty-aware
ranking loss. Everything below was checked against the package's source (file, function):

* **Checkpoint** (``hpsv3/inference.py``, ``HPSv3RewardInferencer.__init__``; ``hpsv3/train.py``,
  ``create_model_and_processor``): one file, ``HPSv3.safetensors``, the full ``state_dict()`` of
  ``Qwen2VLRewardModelBT`` (a ``Qwen2VLForConditionalGeneration`` subclass), loaded with
  ``strict=True``: vision tower, language model, ``lm_head`` and ``rm_head``. The base config and
  tokenizer come from ``Qwen2-VL-7B-Instruct`` (``config/HPSv3_7B.yaml``: ``model_name_or_path``),
  its weights are not read. The package adds the special token ``<|Reward|>`` to the tokenizer and
  resizes the embeddings to ``len(tokenizer)``, so the checkpoint's ``embed_tokens`` / ``lm_head``
  have that many rows (151 658 for the Qwen2-VL tokenizer), not the config's padded 152 064; the
  loader takes the row count from the file. Key layout: transformers < 4.52 names (``visual.*``,
  ``model.*`` for the language model) or the newer ones (``model.visual.*``,
  ``model.language_model.*``); both are accepted (PyPI ``hpsv3`` 1.0.0's ``Qwen2VLRewardModelBT.forward``
  reads ``self.model.embed_tokens``: the older naming, under which the file was saved).
  ``lm_head`` is not used for the score and is not loaded.
* **Reward head** (``hpsv3/model/qwen2vl_trainer.py``, ``Qwen2VLRewardModelBT.__init__``,
  ``rm_head_type="ranknet"``, ``rm_head_kwargs=None``): ``Linear(hidden, 1024) - ReLU - Dropout -
  Linear(1024, 16) - ReLU - Linear(16, 2)`` (keys ``rm_head.0/3/5``), kept in fp32 and run on
  fp32 hidden states (the package's ``autocast(float32)``). Widths are read from the file.
* **Score** (``Qwen2VLRewardModelBT.forward``, ``reward_token="special"``; ``HPSv3_7B.yaml``:
  ``output_dim: 2``, ``use_special_tokens: true``): the head on the final-norm hidden state at the
  ``<|Reward|>`` token gives ``(mu, sigma)``; the score is ``mu`` (``inference.py`` ``__main__``:
  "miu and sigma. we select miu as the final output").
* **Positions** (same ``forward``): the package calls the decoder with ``inputs_embeds`` only and
  no ``position_ids``/``image_grid_thw``, so Qwen2-VL's 3-D M-RoPE indices are never built: every
  token, image tokens included, has its plain sequence index on all three rotary sections. The
  model was trained that way; we pass exactly those positions (``arange(L)`` expanded to 3).
* **Prompt** (``hpsv3/dataset/data_collator_qwen.py``: ``INSTRUCTION``,
  ``prompt_with_special_token``; ``inference.py``, ``prepare_batch``): one user message holding the
  image then the text ``INSTRUCTION.format(text_prompt=prompt) + prompt_with_special_token``,
  rendered by the base model's chat template with ``add_generation_prompt=True`` (Qwen2-VL's
  template adds the default system turn), ``<|image_pad|>`` expanded to one token per merged
  patch (transformers ``processing_qwen2_vl.py``, ``Qwen2VLProcessor.__call__``), right padding.
  The two strings are reproduced verbatim (MIT, HPSv3 authors): the model was trained on them.
* **Image** (``inference.py``, ``prepare_batch``: ``min_pixels = max_pixels = 256 * 28 * 28``;
  qwen-vl-utils ``fetch_image`` and ``differentiable_image_processor.py``, ``smart_resize`` /
  ``_preprocess_differentiable``): resize to ``smart_resize(h, w, factor=patch*merge, min=max=
  256*28*28)`` (448 x 448 for square images: 1024 patches, 256 LLM tokens), scale to [0, 1],
  normalize with the OpenAI-CLIP mean/std, patchify into ``(N, C * temporal * patch * patch)``
  with the image repeated ``temporal_patch_size`` times and patches ordered merge-window by
  merge-window (transformers ``image_processing_qwen2_vl.py``, ``Qwen2VLImageProcessor.patchify``).
  Resize kernel: bicubic with antialiasing. The package resizes with bicubic before its processor
  (qwen-vl-utils' ``fetch_image``, PIL), and torch's antialiased bicubic computes the same filter up
  to PIL's 8-bit rounding; ``resample="bilinear"`` (no antialias) is an option that does not match it. No clamp after the resize: the
  package's differentiable path does not clamp, and clamping would zero the gradient of every pixel
  that bicubic overshoots past [0, 1] (PIL's 8-bit path clips them; the score difference is of the
  order of that rounding). ``tests/test_hpsv3_inprocess.py`` checks ``pixel_values`` and
  ``image_grid_thw`` against transformers' own ``Qwen2VLImageProcessor``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from drpo_bench.errors import MissingWeightsError

REWARD_TOKEN = "<|Reward|>"
IMAGE_PAD = "<|image_pad|>"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HPSV3_IMAGE_TOKENS = 256  # min_pixels = max_pixels = 256 * 28 * 28: 256 LLM tokens per image

# hpsv3/dataset/data_collator_qwen.py, verbatim (trailing spaces and missing colons included).
INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
    "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the "
    "worst and 10 being the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
    "elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense "
    "of harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, "
    "or adult material. If such content is present, the image quality and satisfaction score should be the "
    "lowest possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) "
    "align with the textual description. The subject should match the description in terms of number, "
    "appearance, and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well "
    "the image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image "
    "logically fit the scenario described in the prompt. The environment should support and enhance the subject "
    "without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
    "acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the "
    "image. The generated content should not introduce elements that conflict with or distort the original "
    "description.\n"
    "Textual prompt - {text_prompt}\n"
    "\n"
    "\n"
)
REWARD_SUFFIX = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


def hpsv3_text(prompt: str) -> str:
    """The user-turn text HPSv3 scores an image with (the image comes before it in the turn)."""
    return INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX


def hpsv3_messages(prompt: str) -> list[dict[str, Any]]:
    """The chat the package renders: one user turn, the image then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": hpsv3_text(prompt)}]}]


# ---- image preprocessing (torch, differentiable) ---------------------------------------------------


@dataclass(frozen=True)
class QwenImagePrep:
    """What Qwen2-VL's image side needs; defaults are Qwen2-VL-7B's at HPSv3's fixed 256 tokens."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_tokens: int = HPSV3_IMAGE_TOKENS  # min_pixels = max_pixels = image_tokens * (patch * merge)^2
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: Literal["bicubic", "bilinear"] = "bicubic"

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def pixels(self) -> int:
        return self.image_tokens * self.factor**2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target size: sides multiples of ``factor``, area in [min, max], aspect kept.

    Same rule as transformers' ``models/qwen2_vl/image_processing_qwen2_vl.smart_resize`` and the
    HPSv3 package's ``differentiable_image_processor.smart_resize``.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"HPSv3: aspect ratio {max(height, width) / min(height, width):.0f} is above Qwen2-VL's 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen2vl_pixel_values(images: torch.Tensor, prep: QwenImagePrep) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> ``pixel_values`` (B * N, C * T * p * p) and ``image_grid_thw`` (B, 3).

    N = (H' / p) * (W' / p) patches per image at the resized H' x W'; rows are ordered image by
    image, then merge window by merge window, as Qwen2-VL's vision tower expects.
    """
    b, c, h, w = images.shape
    new_h, new_w = smart_resize(h, w, prep.factor, prep.pixels, prep.pixels)
    x = images.float()
    if (new_h, new_w) != (h, w):
        if prep.resample == "bicubic":
            # no clamp: overshoots keep their gradient, as in the package's differentiable path
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        else:
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    mean = torch.tensor(prep.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - mean) / std  # (B, C, H', W')
    p, m, t = prep.patch_size, prep.merge_size, prep.temporal_patch_size
    gh, gw = new_h // p, new_w // p
    x = x.reshape(b, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)  # one still image = t equal frames
    pixel_values = x.reshape(b * gh * gw, c * t * p * p)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=images.device)
    return pixel_values, grid


# ---- checkpoint layout -------------------------------------------------------------------------------


def checkpoint_key(key: str) -> str | None:
    """A checkpoint key -> our module's key (``model.visual.*``, ``model.language_model.*``, ``rm_head.*``).

    Accepts transformers < 4.52 names (``visual.*``, ``model.*``) and newer ones; ``lm_head`` -> None.
    """
    if key.startswith("lm_head."):
        return None
    if key.startswith(("rm_head.", "model.visual.", "model.language_model.")):
        return key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key  # unknown: reported by the strict load


def read_state(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (``.safetensors`` or a torch file, optionally under a ``model`` key)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(device))
    else:
        state = torch.load(path, map_location=device, weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def rm_head_from_shapes(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """HPSv3's ``ranknet`` head with the widths the checkpoint holds (real: hidden -> 1024 -> 16 -> 2)."""
    try:
        (h1, d), (h2, _), (out, _) = (tuple(state[f"rm_head.{i}.weight"].shape) for i in (0, 3, 5))
    except KeyError as exc:
        raise MissingWeightsError(
            f"HPSv3: the checkpoint has no {exc.args[0]}: it is not an HPSv3 reward-model file "
            "(expected HPSv3.safetensors from MizzenAI/HPSv3)."
        ) from exc
    return nn.Sequential(
        nn.Linear(d, h1), nn.ReLU(), nn.Dropout(0.05), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, out)
    )


class HPSv3Network(nn.Module):
    """Qwen2-VL (vision tower + language model, no LM head) and HPSv3's head read at ``<|Reward|>``."""

    def __init__(self, model: nn.Module, rm_head: nn.Module, image_token_id: int, reward_token_id: int) -> None:
        super().__init__()
        self.model = model  # transformers Qwen2VLModel: .visual, .language_model
        self.rm_head = rm_head
        self.image_token_id = image_token_id
        self.reward_token_id = reward_token_id

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
    ) -> torch.Tensor:
        """Token ids (B, L) with one ``<|Reward|>`` each, patches (B * N, D), grid (B, 3) -> (B, 2) (mu, sigma)."""
        visual, lm = self.model.visual, self.model.language_model
        embeds = lm.embed_tokens(input_ids)  # (B, L, hidden)
        image_embeds = visual(pixel_values.to(visual.dtype), grid_thw=image_grid_thw).pooler_output  # (B·N/m², hidden)
        image_mask = (input_ids == self.image_token_id).unsqueeze(-1)  # (B, L, 1)
        if int(image_mask.sum()) != image_embeds.shape[0]:
            raise ValueError(f"HPSv3: {int(image_mask.sum())} image tokens, {image_embeds.shape[0]} image embeddings")
        embeds = embeds.masked_scatter(image_mask, image_embeds.to(embeds.dtype))
        b, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).view(1, 1, length).expand(3, b, length)
        hidden = lm(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False
        ).last_hidden_state  # (B, L, hidden)
        at_reward = input_ids == self.reward_token_id  # (B, L)
        if not bool((at_reward.sum(-1) == 1).all()):
            raise ValueError(f"HPSv3: every sequence needs exactly one {REWARD_TOKEN} token")
        return self.rm_head(hidden[at_reward].float())  # (B, 2)


# ---- tokens ------------------------------------------------------------------------------------------


def read_chat_template(folder: Path, tokenizer: Any) -> str:
    """The base model's chat template: ``chat_template.jinja`` / ``chat_template.json`` (the processor's,
    what the package's ``processor.apply_chat_template`` uses), else the tokenizer's own."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise MissingWeightsError(
        f"HPSv3: {folder} has no chat template (chat_template.json or one in tokenizer_config.json); "
        "it is not a complete Qwen2-VL-7B-Instruct folder. Fetch it: "
        "`huggingface-cli download Qwen/Qwen2-VL-7B-Instruct --include '*.json' '*.txt' --local-dir <folder>`."
    )


class HPSv3Tokens:
    """Prompt -> token ids of HPSv3's chat (cached per prompt); the image pad expanded to N tokens."""

    def __init__(self, tokenizer: Any, chat_template: str) -> None:
        from tokenizers import AddedToken

        if REWARD_TOKEN not in tokenizer.get_vocab():  # the package adds it before resizing the embeddings
            tokenizer.add_tokens([AddedToken(REWARD_TOKEN, special=True, normalized=False)], special_tokens=True)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.reward_token_id = int(tokenizer.convert_tokens_to_ids(REWARD_TOKEN))
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self._cache: dict[tuple[str, int], list[int]] = {}

    def text(self, prompt: str) -> str:
        """The rendered chat, one ``<|image_pad|>`` (before expansion)."""
        return self.tokenizer.apply_chat_template(
            hpsv3_messages(prompt), chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def ids(self, prompt: str, image_tokens: int) -> list[int]:
        key = (prompt, image_tokens)
        if key not in self._cache:
            text = self.text(prompt)
            if text.count(IMAGE_PAD) != 1:
                raise ValueError(f"HPSv3: the chat template rendered {text.count(IMAGE_PAD)} {IMAGE_PAD}, expected 1")
            text = text.replace(IMAGE_PAD, IMAGE_PAD * image_tokens)
            self._cache[key] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._cache[key]

    def batch(
        self, prompts: Sequence[str], image_tokens: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids right-padded with the pad id, and the (B, L) attention mask."""
        rows = [self.ids(p, image_tokens) for p in prompts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids.to(device), mask.to(device)


# ---- loading -----------------------------------------------------------------------------------------


def build_qwen2vl(config: Any, *, empty: bool) -> nn.Module:
    """transformers' ``Qwen2VLModel`` (sdpa attention); ``empty``: parameters on the meta device
    (buffers such as rotary frequencies are still computed), to be filled by ``load_state_dict(assign=True)``."""
    from transformers import Qwen2VLModel

    config._attn_implementation = "sdpa"
    if not empty:
        return Qwen2VLModel(config)
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return Qwen2VLModel(config)


@dataclass
class LoadedHPSv3:
    network: HPSv3Network
    tokens: HPSv3Tokens
    prep: QwenImagePrep


def load_hpsv3(
    checkpoint: Path,
    base: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    image_tokens: int = HPSV3_IMAGE_TOKENS,
    resample: Literal["bicubic", "bilinear"] = "bicubic",
) -> LoadedHPSv3:
    """HPSv3 from the public layout: ``checkpoint`` (HPSv3.safetensors) + ``base`` (Qwen2-VL-7B-Instruct's
    config.json, tokenizer files, chat template, preprocessor_config.json; no weights needed)."""
    from transformers import AutoTokenizer, Qwen2VLConfig

    try:
        config = Qwen2VLConfig.from_pretrained(str(base), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True, padding_side="right")
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"HPSv3: cannot read the Qwen2-VL config/tokenizer in {base} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}). Fetch them: `huggingface-cli download Qwen/Qwen2-VL-7B-Instruct "
            "--include '*.json' '*.txt' --local-dir <folder>` and set `base` to that folder."
        ) from exc
    tokens = HPSv3Tokens(tokenizer, read_chat_template(base, tokenizer))
    if tokens.image_token_id != config.image_token_id:
        raise MissingWeightsError(
            f"HPSv3: the tokenizer in {base} maps {IMAGE_PAD} to {tokens.image_token_id} but config.json says "
            f"image_token_id {config.image_token_id}: the folder mixes two models."
        )

    state = read_state(checkpoint, device)
    rm_head = rm_head_from_shapes(state)
    mapped: dict[str, torch.Tensor] = {}
    for key in list(state):  # pop as we convert: one copy of 8 B weights at a time, not two
        value, new = state.pop(key), checkpoint_key(key)
        if new is not None:
            mapped[new] = value.to(torch.float32 if new.startswith("rm_head.") else dtype)
    embed = mapped.get("model.language_model.embed_tokens.weight")
    if embed is None:
        raise MissingWeightsError(f"HPSv3: {checkpoint} has no language-model embeddings: not an HPSv3 checkpoint")
    config.text_config.vocab_size = embed.shape[0]  # len(tokenizer) after <|Reward|>, as the package resized it
    if tokens.reward_token_id >= embed.shape[0]:
        raise MissingWeightsError(
            f"HPSv3: {REWARD_TOKEN} is token {tokens.reward_token_id} but the checkpoint has {embed.shape[0]} "
            f"embedding rows: the tokenizer in {base} is not the one HPSv3 was trained with (Qwen2-VL-7B-Instruct)."
        )
    model = build_qwen2vl(config, empty=True)
    network = HPSv3Network(model, rm_head, config.image_token_id, tokens.reward_token_id)
    ours = set(network.state_dict())
    missing, unexpected = sorted(ours - set(mapped)), sorted(set(mapped) - ours)
    if missing or unexpected:
        raise MissingWeightsError(
            f"HPSv3: {checkpoint} does not fit Qwen2-VL as configured in {base}/config.json: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''}. Use HPSv3.safetensors with Qwen2-VL-7B-Instruct's config."
        )
    network.load_state_dict(mapped, strict=True, assign=True)
    network.to(device).eval().requires_grad_(False)
    vision = config.vision_config
    prep = QwenImagePrep(
        patch_size=int(vision.patch_size),
        merge_size=int(vision.spatial_merge_size),
        temporal_patch_size=int(vision.temporal_patch_size),
        image_tokens=image_tokens,
        mean=tuple(_processor_value(base, "image_mean", OPENAI_CLIP_MEAN)),
        std=tuple(_processor_value(base, "image_std", OPENAI_CLIP_STD)),
        resample=resample,
    )
    return LoadedHPSv3(network, tokens, prep)


def _processor_value(base: Path, key: str, default: Sequence[float]) -> Sequence[float]:
    file = base / "preprocessor_config.json"
    if file.is_file():
        return json.loads(file.read_text()).get(key, default)
    return default


def score_hpsv3(loaded: LoadedHPSv3, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] and B prompts -> (B, 2) (mu, sigma) in fp32, differentiable w.r.t. ``images``."""
    device = next(loaded.network.parameters()).device
    pixel_values, grid = qwen2vl_pixel_values(images.to(device), loaded.prep)
    per_image = int(grid[0].prod()) // loaded.prep.merge_size**2
    ids, mask = loaded.tokens.batch(prompts, per_image, device)
    return loaded.network(ids, mask, pixel_values, grid)

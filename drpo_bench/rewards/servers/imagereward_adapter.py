"""ImageReward through its own package (``pip install image-reward``, THUDM/ImageReward).

The package's BLIP (ViT-L/16 at 224 + a BERT-base text encoder cross-attending to the image, 35
text tokens) and MLP head, called batched through the model's own parts: the score is
``(mlp(text_encoder(...)[:, 0]) - mean) / std`` with the published standardization, exactly
``ImageReward.score``. The DrPO paper prints it ×10.

Not exercised by this project's tests: the package pins an older transformers and timm and
fairscale, so it runs in its own environment behind ``drpo-bench serve-reward imagereward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ImageReward as RM  # noqa: N813 - the package's name
import torch
from PIL import Image

from drpo_bench.rewards.jpeg import to_uint8_hwc


class ImageRewardAdapter:
    def __init__(self, checkpoint: str, med_config: str | None, device: str) -> None:
        kwargs = {"device": device}
        if med_config:
            kwargs["med_config"] = med_config
        self.model = RM.load(checkpoint, **kwargs).eval()
        self.device = device

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        m = self.model
        pixels = torch.stack([m.preprocess(Image.fromarray(a)) for a in to_uint8_hwc(images)]).to(self.device)
        text = m.blip.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35,
                                return_tensors="pt").to(self.device)
        image_embeds = m.blip.visual_encoder(pixels)  # (B, 1 + 196, 1024)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = m.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                  encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                  return_dict=True)
        rewards = m.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)  # (B,)
        return ((rewards - m.mean) / m.std).float().cpu()

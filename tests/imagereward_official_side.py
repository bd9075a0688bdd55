"""The official side of tests/test_imagereward_official.py: runs in the image-reward environment
(scripts/make_imagereward_env.sh), never in the project's.

Given a work folder holding ``med_config.json`` (tiny BERT, 768 wide: the package's MLP is fixed at
768 inputs), ``bert-base-uncased/`` (a tiny WordPiece vocabulary), ``images/*.png``, ``prompts.json``
and ``pixels.pt`` (preprocessed pixels for the gradient check), it

1. builds the package's ``ImageReward`` (``vit='large'`` as the package fixes it: the real ViT-L/16)
   from that med_config with random weights, perturbs every tensor (so a swapped bias or LayerNorm in
   a key map cannot hide behind zeros and ones) and saves ``ImageReward.pt`` (its ``state_dict()``);
2. loads that file back with the package's own ``ImageReward.load(path, med_config=...)``;
3. scores each (PNG, prompt) pair with the package's public ``model.score(prompt, PIL image)``;
4. takes the gradient of the package's differentiable ``score_gard`` w.r.t. ``pixels.pt``;
5. scores the same images through drpo-bench's serve-side adapter
   (``drpo_bench/rewards/servers/imagereward_adapter.py``, batched);

and writes ``official.json`` and ``official_grad.pt``. The package loads ``bert-base-uncased`` by
that name: run with the work folder as the current directory so it finds the local folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image


def main(work: Path) -> None:
    import ImageReward as RM  # noqa: N813 - the package's name

    t0 = time.time()
    torch.manual_seed(0)
    med = str(work / "med_config.json")
    model = RM.ImageReward(med_config=med, device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("mlp.") and p.ndim == 2:  # unit variance through the five Linears
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif p.ndim == 1 and "norm" in name.lower():
                p.add_(torch.randn(p.shape, generator=gen) * (0.1 if name.endswith("weight") else 0.02))
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    torch.save(model.state_dict(), work / "ImageReward.pt")
    del model
    t_build = time.time() - t0

    model = RM.load(str(work / "ImageReward.pt"), device="cpu", med_config=med)  # the package's loader
    prompts = json.loads((work / "prompts.json").read_text())
    files = sorted((work / "images").glob("*.png"))
    scores = [[float(model.score(p, Image.open(f))) for p in prompts] for f in files]  # the public API

    pixels = torch.load(work / "pixels.pt")  # (B, 3, 224, 224) normalized, one prompt each
    text = model.blip.tokenizer(prompts[: len(pixels)], padding="max_length", truncation=True, max_length=35,
                                return_tensors="pt")
    x = pixels.clone().requires_grad_(True)
    out = model.score_gard(text.input_ids, text.attention_mask, x)  # (B, 1)
    out.sum().backward()
    torch.save({"scores": out.detach().squeeze(-1), "grad": x.grad}, work / "official_grad.pt")

    from drpo_bench.rewards.servers.imagereward_adapter import ImageRewardAdapter

    adapter = ImageRewardAdapter(str(work / "ImageReward.pt"), med, "cpu")
    tensors = [torch.from_numpy(__import__("numpy").asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1)
               .float().div(255) for f in files]
    adapted = [[float(s) for s in adapter.score(t[None].expand(len(prompts), -1, -1, -1), prompts)] for t in tensors]
    tokens = model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35)["input_ids"]
    (work / "official.json").write_text(json.dumps({
        "files": [f.name for f in files], "scores": scores, "adapter": adapted, "input_ids": tokens,
        "build_seconds": t_build, "seconds": time.time() - t0,
        "vision_blocks": len(model.blip.visual_encoder.blocks), "vision_width": model.blip.visual_encoder.embed_dim,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Train the shapes feature encoder as a masked, denoising autoencoder on rendered images.

    python -m drpo_bench.shapes.train_encoder --out drpo_bench/assets/shapes_encoder.safetensors \
        --seed 0 --steps 600

Each step renders a fresh batch of ground-truth images for random training prompts (never the
held-out eval prompts), hides random 4x4 pixel blocks and adds noise, and trains encoder +
reconstruction head to rebuild the clean image from the encoder's deepest stage alone. Only the
encoder is saved (the head is a training device). Loss is a foreground-weighted MSE: objects
cover a small part of the black background, and plain MSE would settle for dark blurs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drpo_bench.shapes.encoder_model import FORMAT, EncoderArch, ReconstructionHead, ShapesEncoderNet
from drpo_bench.shapes.pretrain_generator import warmup_cosine

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "shapes_encoder.safetensors"
SCRIPT = "python -m drpo_bench.shapes.train_encoder"


def rendered_batch(n: int, rng: random.Random, np_rng: np.random.Generator) -> torch.Tensor:
    """(n, 3, 32, 32) ground-truth images of random training prompts (all tasks)."""
    from drpo_bench.shapes.grammar import random_prompt
    from drpo_bench.shapes.render import render

    return torch.stack([render(random_prompt(rng).text, np_rng) for _ in range(n)])


def corrupt(images: torch.Tensor, gen: torch.Generator, mask_ratio: float = 0.3, noise: float = 0.1) -> torch.Tensor:
    """Hide a random ``mask_ratio`` of 4x4 blocks (filled with uniform noise) and add Gaussian noise."""
    b = images.shape[0]
    hidden = (torch.rand(b, 1, 8, 8, generator=gen) < mask_ratio).float()
    hidden = F.interpolate(hidden, scale_factor=4, mode="nearest")  # (B, 1, 32, 32)
    filler = torch.rand(images.shape, generator=gen)
    x = images * (1 - hidden) + filler * hidden
    return (x + noise * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE with foreground pixels weighted 5x (objects are a small share of the image)."""
    weight = 1.0 + 4.0 * (target.amax(dim=1, keepdim=True) > 0.05).float()  # (B, 1, H, W)
    return ((recon - target).pow(2) * weight).mean()


def train(out: Path, seed: int, steps: int, batch: int, lr: float, log_every: int = 50, command: str = "") -> dict[str, float]:
    torch.manual_seed(seed)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    arch = EncoderArch()
    encoder, head = ShapesEncoderNet(arch), ReconstructionHead(arch)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    start, history = time.perf_counter(), []
    for step in range(1, steps + 1):
        clean = rendered_batch(batch, rng, np_rng)  # (B, 3, 32, 32)
        recon = head(encoder(corrupt(clean, gen))[-1])
        loss = reconstruction_loss(recon, clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if step % log_every == 0 or step == 1 or step == steps:
            print(f"step {step:5d}  loss {np.mean(history[-log_every:]):.5f}  {time.perf_counter() - start:6.1f}s", flush=True)
    seconds = time.perf_counter() - start
    window = max(1, min(20, len(history) // 4))  # first and last quarter (at most 20 steps each)
    first, final = float(np.mean(history[:window])), float(np.mean(history[-window:]))
    facts = {"command": command} if command else {}
    save(encoder, out, seed=seed, steps=steps, batch=batch, lr=lr, first_loss=first, final_loss=final, seconds=seconds, **facts)
    return {"first_loss": first, "final_loss": final, "seconds": seconds}


def save(encoder: ShapesEncoderNet, out: Path, **facts: float | int | str) -> None:
    from drpo_bench.store import save_safetensors

    metadata = {
        "format": FORMAT,
        "arch": json.dumps(encoder.arch.to_dict()),
        "script": SCRIPT,
        "description": (
            "3-stage conv encoder (32->16->8->4) trained as a masked (30% of 4x4 blocks) and "
            "denoising (sigma 0.1) autoencoder on rendered shapes images of training prompts; "
            "reconstruction from stage 3 only; foreground-weighted MSE; AdamW, warm-up then cosine."
        ),
        **{k: str(v) for k, v in facts.items()},
    }
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    save_safetensors(state, out, metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the safetensors file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (600 take ~1-2 min on 2 cores)")
    parser.add_argument("--batch", type=int, default=64, help="rendered images per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warm-up, then cosine)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join([SCRIPT, *(argv if argv is not None else sys.argv[1:])])
    result = train(args.out, args.seed, args.steps, args.batch, args.lr, command=command)
    print(json.dumps({"out": str(args.out), **result}))


if __name__ == "__main__":
    main()

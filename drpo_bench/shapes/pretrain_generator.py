"""Pretrain the shapes generator: latent autoencoder, then distillation from a noise-driven teacher.

    python -m drpo_bench.shapes.pretrain_generator --out drpo_bench/assets/shapes_generator.safetensors --seed 0 --eval

Phase 1 (``--ae-steps``): the latent autoencoder (images (3, 32, 32) <-> latents (8, 8, 8)) on
rendered ground truth, like SD's VAE; its latents are then normalized per channel and it is
frozen.

Phase 2a (``--distill-steps``): text encoder + denoiser regress, for each (noise, prompt), the
image that the noise-driven teacher (``drpo_bench.shapes.teacher``) draws: the renderer with
object placement, sizes and free colors read off the noise. One-step generators are distilled
from a teacher sampler (SD-Turbo from SD); here the teacher is exact, so what the base gets
wrong is what the small network cannot yet reproduce of it (near-tied peaks: counts and
bindings; colors of two objects it mixes; exact positions). Training stops early on purpose,
at 1500 steps: the base must leave headroom for preference finetuning.

An earlier recipe trained the generator with the drifting objective of Drifting Models toward
rendered positives; alone it plateaued near a held-out checker of 0.33 with blurred blobs (a
one-step generator regressed onto noise-independent renders learns their average), which is why
the shipped recipe distills from the noise-driven teacher instead (docs/quickstart-sweep.md).

Prompts are drawn by ``grammar.random_prompt`` (uniform over tasks), which never yields a
held-out eval prompt; ``--eval`` scores the result with the checker on the eval split.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drpo_bench.shapes.generator_model import FORMAT, ShapesGeneratorNet, load_net

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "shapes_generator.safetensors"
SCRIPT = "python -m drpo_bench.shapes.pretrain_generator"


# ---- data --------------------------------------------------------------------------------------
def random_prompts(n: int, rng: random.Random) -> list[str]:
    from drpo_bench.shapes.grammar import random_prompt

    return [random_prompt(rng).text for _ in range(n)]


def render_many(texts: Sequence[str], np_rng: np.random.Generator) -> torch.Tensor:
    """(len(texts), 3, 32, 32) ground truth, a fresh random placement for each text."""
    from drpo_bench.shapes.render import render

    return torch.stack([render(t, np_rng) for t in texts])


def foreground_weighted_bce(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per channel, object pixels weighted 5x (objects cover a small part of
    the black background). BCE keeps edges sharper than MSE on these near-binary images."""
    weight = 1.0 + 4.0 * (target.amax(dim=1, keepdim=True) > 0.05).float()  # (B, 1, H, W)
    return (F.binary_cross_entropy(recon, target, reduction="none") * weight).mean()


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``warmup`` of the steps, then cosine decay to 0 (any step count)."""
    import math

    ramp = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, steps - ramp))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _log(step: int, total: int, name: str, values: dict[str, list[float]], start: float, every: int) -> None:
    if step % every == 0 or step == 1 or step == total:
        parts = "  ".join(f"{k} {np.mean(v[-every:]):.4f}" for k, v in values.items())
        print(f"[{name}] step {step:5d}/{total}  {parts}  {time.perf_counter() - start:6.1f}s", flush=True)


# ---- phase 1: latent autoencoder ---------------------------------------------------------------
def train_autoencoder(
    net: ShapesGeneratorNet, steps: int, batch: int, lr: float, rng: random.Random, np_rng: np.random.Generator,
    log_every: int = 50,
) -> dict[str, float]:
    """Encoder + decoder on rendered images; a small L2 on the latents keeps their scale tame."""
    params = [*net.encoder.parameters(), *net.decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    history: dict[str, list[float]] = {"recon": []}
    start = time.perf_counter()
    for step in range(1, steps + 1):
        images = render_many(random_prompts(batch, rng), np_rng)  # (B, 3, 32, 32)
        z = net.encoder(images)  # (B, C, 8, 8), unnormalized
        rec = foreground_weighted_bce(net.decoder(z), images)
        loss = rec + 1e-3 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history["recon"].append(float(rec.detach()))
        _log(step, steps, "autoencoder", history, start, log_every)
    return _summary(history["recon"], start, "ae")


@torch.no_grad()
def normalize_latents(net: ShapesGeneratorNet, rng: random.Random, np_rng: np.random.Generator, n: int = 1024) -> None:
    """Set per-channel latent mean/std from ``n`` rendered images (generator noise is unit normal)."""
    z = net.encoder(render_many(random_prompts(n, rng), np_rng))  # (n, C, 8, 8)
    net.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
    net.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-3))


# ---- phase 2a: distillation from the noise-driven teacher ---------------------------------------
def train_distill(
    net: ShapesGeneratorNet, steps: int, batch: int, lr: float, rng: random.Random, np_rng: np.random.Generator,
    seed: int, log_every: int = 50, eval_every: int = 0,
) -> dict[str, float]:
    """Text encoder + denoiser regress the teacher's image of each (noise, prompt) pair
    (``drpo_bench.shapes.teacher``): normalized-latent MSE plus foreground-weighted BCE of the
    decoded image, so what the frozen decoder draws is scored in pixels too."""
    from drpo_bench.shapes.teacher import teacher_images

    params = [*net.text.parameters(), *net.denoiser.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    history: dict[str, list[float]] = {"latent": [], "pixel": []}
    start, fallbacks = time.perf_counter(), 0
    for step in range(1, steps + 1):
        texts = random_prompts(batch, rng)
        noise = torch.randn(batch, *net.latent_shape, generator=gen)  # (B, C, 8, 8)
        target, fell_back = teacher_images(texts, noise, np_rng)  # (B, 3, 32, 32)
        fallbacks += fell_back
        with torch.no_grad():
            target_latents = net.encode_images(target)
        latents = net.denoiser(noise, net.encode_text(texts))
        latent_loss = (latents - target_latents).pow(2).mean()
        pixel_loss = foreground_weighted_bce(net.decode(latents).clamp(1e-4, 1 - 1e-4), target)
        loss = latent_loss + pixel_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history["latent"].append(float(latent_loss.detach()))
        history["pixel"].append(float(pixel_loss.detach()))
        _log(step, steps, "distill", history, start, log_every)
        if eval_every and step % eval_every == 0:
            _print_eval(step, "distill", evaluate(net, k=8))
    summary = _summary(history["latent"], start, "distill")
    if steps:
        summary["final_distill_pixel"] = float(np.mean(history["pixel"][-max(1, min(20, steps // 4)) :]))
        summary["distill_fallbacks"] = fallbacks / (steps * batch)
    return summary


def _print_eval(step: int, name: str, scores: dict[str, object]) -> None:
    per_task = scores["per_task"]
    assert isinstance(per_task, dict)
    print(
        f"[{name}] step {step:5d} checker {scores['checker_mean_over_tasks']:.3f} "
        f"(within-prompt std {scores['within_prompt_std']:.3f}) " + " ".join(f"{t} {v:.2f}" for t, v in per_task.items()),
        flush=True,
    )


def _summary(values: list[float], start: float, name: str) -> dict[str, float]:
    if not values:
        return {f"{name}_seconds": 0.0}
    window = max(1, min(20, len(values) // 4))  # first and last quarter (at most 20 steps each)
    return {
        f"first_{name}": float(np.mean(values[:window])),
        f"final_{name}": float(np.mean(values[-window:])),
        f"{name}_seconds": time.perf_counter() - start,
    }


# ---- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(net: ShapesGeneratorNet, k: int = 16, seed: int = 1234, split: str = "eval") -> dict[str, object]:
    """Checker scores of K samples per prompt of ``split``: per task, overall, within-prompt std."""
    from drpo_bench.shapes.checker import check_batch
    from drpo_bench.shapes.grammar import TASKS, prompt_split
    from drpo_bench.shapes.render import render_batch

    prompts = prompt_split(split)
    texts = [p.text for p in prompts for _ in range(k)]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(texts), *net.latent_shape, generator=gen)
    images = torch.cat([net.decode(net.denoiser(noise[i : i + 512], net.encode_text(texts[i : i + 512]))) for i in range(0, len(texts), 512)])
    scores = check_batch(images, texts).view(len(prompts), k)  # (prompts, K)
    truth = check_batch(render_batch(texts, seed), texts).view(len(prompts), k)
    per_task, per_task_truth, per_task_std = {}, {}, {}
    for task in TASKS:
        rows = [i for i, p in enumerate(prompts) if p.task == task]
        per_task[task] = float(scores[rows].mean())
        per_task_truth[task] = float(truth[rows].mean())
        per_task_std[task] = float(scores[rows].std(dim=1).mean())
    return {
        "checker_mean_over_tasks": float(np.mean(list(per_task.values()))),
        "checker_mean_over_images": float(scores.mean()),
        "ground_truth_mean_over_tasks": float(np.mean(list(per_task_truth.values()))),
        "within_prompt_std": float(scores.std(dim=1).mean()),
        "per_task": per_task,
        "per_task_ground_truth": per_task_truth,
        "per_task_within_prompt_std": per_task_std,
        "k": k,
        "prompts": len(prompts),
    }


# ---- files -------------------------------------------------------------------------------------
def save(net: ShapesGeneratorNet, out: Path, facts: dict[str, object]) -> None:
    from drpo_bench.store import save_safetensors

    metadata = {
        "format": FORMAT,
        "arch": json.dumps(net.arch.to_dict()),
        "vocabulary": json.dumps(list(net.tokenizer.vocabulary)),
        "script": SCRIPT,
        "description": (
            "Shapes one-step generator. Phase 1: latent autoencoder (3x32x32 <-> 8x8x8) on rendered "
            "ground truth, foreground-weighted BCE, then frozen with per-channel latent normalization. "
            "Phase 2a: text encoder + denoiser distilled from the noise-driven teacher (placement, sizes "
            "and free colors read off the noise), latent MSE + pixel BCE; stopped early to leave headroom."
        ),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in facts.items()},
    }
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_safetensors(state, out, metadata=metadata)


# ---- entry point -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the safetensors file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, default=1200, help="phase 1 steps (autoencoder)")
    parser.add_argument("--ae-batch", type=int, default=64, help="rendered images per autoencoder step")
    parser.add_argument("--distill-steps", type=int, default=1500, help="phase 2a steps (regression onto the noise-driven teacher)")
    parser.add_argument("--distill-batch", type=int, default=128, help="(noise, prompt, teacher image) triples per distillation step")
    parser.add_argument("--distill-lr", type=float, default=2e-3, help="distillation peak learning rate (warm-up, then cosine)")
    parser.add_argument("--ae-lr", type=float, default=3e-3, help="autoencoder peak learning rate (warm-up, then cosine)")
    parser.add_argument("--init", type=Path, default=None, help="start from this generator file (e.g. reuse its autoencoder with --ae-steps 0)")
    parser.add_argument("--eval", action="store_true", help="score the result on the held-out eval prompts")
    parser.add_argument("--eval-every", type=int, default=0, help="also score every N generator steps (K=8; 0 = never)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)

    from drpo_bench.shapes.grammar import VOCABULARY

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, np_rng = random.Random(args.seed), np.random.default_rng(args.seed)
    net = load_net(args.init)[0] if args.init else ShapesGeneratorNet(VOCABULARY)
    facts: dict[str, object] = {"command": " ".join([SCRIPT, *(argv if argv is not None else sys.argv[1:])])}
    facts.update({k: v for k, v in vars(args).items() if k not in ("out", "init", "eval", "eval_every")})
    if args.init:
        facts["init"] = str(args.init)
    if args.ae_steps:
        facts.update(train_autoencoder(net, args.ae_steps, args.ae_batch, args.ae_lr, rng, np_rng))
        normalize_latents(net, rng, np_rng)
    net.encoder.requires_grad_(False)
    net.decoder.requires_grad_(False)
    if args.distill_steps:
        facts.update(
            train_distill(net, args.distill_steps, args.distill_batch, args.distill_lr, rng, np_rng, args.seed,
                          eval_every=args.eval_every)
        )
    facts["final_loss"] = facts.get("final_distill", float("nan"))  # the last phase that ran
    if args.eval:
        facts["eval"] = evaluate(net)
    save(net, args.out, facts)
    print(json.dumps({"out": str(args.out), **facts}, indent=1))
    return facts


if __name__ == "__main__":
    main()

"""Train the ShapesCLIP learned reward contrastively on rendered pairs with hard negatives.

    python -m drpo_bench.shapes.train_reward --size small --out drpo_bench/assets/shapes_clip_small.safetensors --seed 0 --steps 2000
    python -m drpo_bench.shapes.train_reward --size large --out drpo_bench/assets/shapes_clip_large.safetensors --seed 0 --steps 1000

Each step draws ``batch / 2`` train-grammar prompts (never a held-out eval prompt) and a hard
negative of each (so minimally different images meet in one batch), renders them, degrades most images (blur, dimming, noise: what a small generator makes), and adds hard
negatives of each image's prompt (wrong count, color, shape, relation). The loss is CLIP's
symmetric cross-entropy over all texts of the step; a text that is fully true of another image
(e.g. "a circle" for the image of "a red circle") is masked out, not pushed away. A light
ranking hinge orders each prompt's scores over a few images by the checker's fraction of
satisfied constraints (computed from the renderer's layout), so partly right images score
between right and wrong ones.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drpo_bench.shapes.checker import Component, constraints
from drpo_bench.shapes.grammar import COLORS, eval_texts, parse, random_prompt
from drpo_bench.shapes.negatives import KINDS, hard_negative
from drpo_bench.shapes.render import SIZE, draw, layout
from drpo_bench.shapes.reward_model import SIZES, ShapesCLIP, save_model

_COLOR_NAMES = tuple(COLORS)
#: the shipped weights' recipe per size (steps, lr): the large one learns faster per step but costs ~4x per step
RECIPES: dict[str, tuple[int, float]] = {"small": (2000, 3e-3), "large": (1000, 2e-3)}
_RANK_MARGIN = 10.0  # logit gap wanted per unit of checker fraction (logit_scale reaches ~50)


@dataclass(frozen=True)
class TrainConfig:
    size: str = "small"  # "small" or "large" (reward_model.SIZES)
    steps: int = 2000  # ~3-4 minutes on one CPU core for the small model
    batch: int = 128  # images per step; every other image's prompt is a negative too
    negatives: int = 2  # hard negatives per image (random applicable kinds)
    lr: float = 3e-3  # AdamW, cosine decay to 5% after a short warmup
    warmup: int = 50  # steps of linear warmup
    weight_decay: float = 1e-4  # light: the model is small and the data endless
    clean_fraction: float = 0.25  # images left undegraded
    graded: int = 8  # images each prompt is ranked over by the checker's fraction (own, twin, random)
    rank_weight: float = 0.1  # weight of that ranking hinge: 0.1 lifts checker agreement, keeps hard-negative accuracy
    seed: int = 0


def scene_components(objects: list[tuple[str, int, int, int, int]]) -> list[Component]:
    """The objects a renderer layout holds, as the checker would see them."""
    return [Component(shape, _COLOR_NAMES[ci], y + s / 2, x + s / 2, s * s) for shape, ci, y, x, s in objects]


def _shape_signature(text: str) -> tuple[str, ...]:
    return tuple(sorted(o.shape for o in parse(text).objects for _ in range(o.count)))


def fully_true(text: str, scene: list[Component]) -> bool:
    """Whether every constraint of ``text`` holds in ``scene`` (cheap reject on the shapes first)."""
    if _shape_signature(text) != tuple(sorted(c.shape for c in scene)):
        return False
    return all(constraints(parse(text), scene).values())


def degrade(images: torch.Tensor, gen: torch.Generator, clean_fraction: float) -> torch.Tensor:
    """(B, 3, H, W) -> same, most images blurred, dimmed and noised (per-image strengths)."""
    b = images.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.2 + 0.05  # (B,)
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))  # (B, 7)
    kernel = kernel / kernel.sum(1, keepdim=True)
    k2d = (kernel[:, :, None] * kernel[:, None, :]).repeat_interleave(3, 0)[:, None]  # (B*3, 1, 7, 7)
    x = F.conv2d(F.pad(images.reshape(1, b * 3, *images.shape[-2:]), (radius,) * 4, mode="replicate"), k2d, groups=b * 3)
    x = x.reshape_as(images)
    x = x * (0.6 + 0.5 * torch.rand(b, 1, 1, 1, generator=gen))
    x = x + torch.randn(x.shape, generator=gen) * (0.06 * torch.rand(b, 1, 1, 1, generator=gen))
    keep = torch.rand(b, generator=gen) < clean_fraction
    return torch.where(keep[:, None, None, None], images, x.clamp(0.0, 1.0))


@dataclass
class Batch:
    prompts: list[str]  # B prompts, one per image
    images: torch.Tensor  # (B, 3, 32, 32) clean ground truth
    texts: list[str]  # T distinct texts: the prompts and their hard negatives
    positive: torch.Tensor  # (B,) index into texts of each image's prompt
    true: torch.Tensor  # (B, T) bool: text fully true of the image
    graded: torch.Tensor  # (B, K) image indices scored against each image's prompt
    fraction: torch.Tensor  # (B, K) the checker's fraction of constraints of that pair


def make_batch(cfg: TrainConfig, rng: random.Random, np_rng: np.random.Generator, held_out: frozenset[str]) -> Batch:
    base = [random_prompt(rng).text for _ in range(cfg.batch - cfg.batch // 2)]
    # the other half: hard negatives of the first, so minimally different images meet each text
    twins = [hard_negative(p, rng.choice(KINDS), rng, exclude=held_out) for p in base]
    prompts = base + [t or random_prompt(rng).text for t in twins][: cfg.batch // 2]
    images = np.zeros((cfg.batch, 3, SIZE, SIZE), dtype=np.float32)
    scenes = []
    for i, p in enumerate(prompts):
        objects = layout(parse(p), np_rng)
        draw(objects, images[i])
        scenes.append(scene_components(objects))
    texts = list(dict.fromkeys(prompts))
    for p in prompts:
        found = 0
        for kind in rng.sample(KINDS, len(KINDS)):
            neg = hard_negative(p, kind, rng, exclude=held_out)
            if neg is not None:
                texts.append(neg)
                found += 1
            if found == cfg.negatives:
                break
    texts = list(dict.fromkeys(texts))
    where = {t: j for j, t in enumerate(texts)}
    positive = torch.tensor([where[p] for p in prompts])
    true = F.one_hot(positive, len(texts)).bool()  # (B, T)
    by_signature: dict[tuple[str, ...], list[int]] = {}
    for j, t in enumerate(texts):
        by_signature.setdefault(_shape_signature(t), []).append(j)
    for i, scene in enumerate(scenes):  # only texts with the scene's shapes can be fully true
        for j in by_signature.get(tuple(sorted(c.shape for c in scene)), ()):
            if not true[i, j] and all(constraints(parse(texts[j]), scene).values()):
                true[i, j] = True
    # graded pairs: each prompt against its own image, its twin's and random others
    half = cfg.batch - cfg.batch // 2
    graded, fraction = [], []
    for i, p in enumerate(prompts):
        twin = i + half if i < half else i - half
        row = [i, twin % cfg.batch] + [rng.randrange(cfg.batch) for _ in range(cfg.graded - 2)]
        spec = parse(p)
        graded.append(row)
        fraction.append([_fraction(spec, scenes[j]) for j in row])
    return Batch(prompts, torch.from_numpy(images), texts, positive, true, torch.tensor(graded), torch.tensor(fraction))


def _fraction(spec, scene: list[Component]) -> float:
    result = constraints(spec, scene)
    return sum(result.values()) / len(result)


def contrastive_loss(model: ShapesCLIP, images: torch.Tensor, batch: Batch, rank_weight: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE (texts fully true of an image, other than its own, are masked out),
    plus ``rank_weight`` times a pairwise hinge that orders each prompt's scores over images by
    the checker's fraction of constraints (so partly right images score between)."""
    texts, positive, true = batch.texts, batch.positive, batch.true
    logits = model.scale() * model.embed_images(images) @ model.embed_texts(texts).T  # (B, T)
    b = images.shape[0]
    own = F.one_hot(positive, len(texts)).bool()  # (B, T)
    image_to_text = F.cross_entropy(logits.masked_fill(true & ~own, float("-inf")), positive)
    per_text = logits[:, positive].T  # (B texts, B images)
    text_true = true[:, positive].T & ~torch.eye(b, dtype=torch.bool)  # text i fully true of image j
    text_to_image = F.cross_entropy(per_text.masked_fill(text_true, float("-inf")), torch.arange(b))
    loss = (image_to_text + text_to_image) / 2
    if rank_weight > 0:
        s = per_text.gather(1, batch.graded)  # (B, K)
        f = batch.fraction  # (B, K)
        df = f[:, :, None] - f[:, None, :]  # (B, K, K): > 0 where image a should outscore image b
        ds = s[:, :, None] - s[:, None, :]
        ordered = df > 0.02
        hinge = F.relu(_RANK_MARGIN * df - ds)[ordered]
        loss = loss + rank_weight * (hinge.mean() if hinge.numel() else s.sum() * 0.0)
    return loss


def train(cfg: TrainConfig, out: str | Path | None = None, log_every: int = 100, quiet: bool = False) -> dict:
    """Train from scratch; returns losses and metadata, writes ``out`` (safetensors) if given."""
    torch.manual_seed(cfg.seed)
    rng, np_rng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    held_out = eval_texts()
    model = ShapesCLIP(SIZES[cfg.size])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    )
    losses: list[float] = []
    start = time.time()
    for step in range(cfg.steps):
        batch = make_batch(cfg, rng, np_rng, held_out)
        loss = contrastive_loss(model, degrade(batch.images, gen, cfg.clean_fraction), batch, cfg.rank_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if not quiet and (step % log_every == 0 or step == cfg.steps - 1):
            print(f"step {step:5d}  loss {np.mean(losses[-log_every:]):.4f}  scale {model.scale().item():.1f}  {time.time() - start:.0f}s", flush=True)
    seconds = time.time() - start
    tail = max(1, min(50, cfg.steps // 10))
    summary = {
        "initial_loss": float(np.mean(losses[:tail])),
        "final_loss": float(np.mean(losses[-tail:])),
        "losses": losses,
        "seconds": seconds,
    }
    if out is not None:
        metadata = {
            "script": "python -m drpo_bench.shapes.train_reward",
            "command": (
                f"python -m drpo_bench.shapes.train_reward --size {cfg.size} --out {Path(out).name} --seed {cfg.seed} "
                f"--steps {cfg.steps} --batch {cfg.batch} --lr {cfg.lr} --rank-weight {cfg.rank_weight}"
            ),
            "size": cfg.size,
            "seed": str(cfg.seed),
            "steps": str(cfg.steps),
            "batch": str(cfg.batch),
            "train_config": json.dumps(asdict(cfg)),
            "final_loss": f"{summary['final_loss']:.4f}",
            "train_seconds": f"{seconds:.0f}",
            "torch": torch.__version__,
        }
        save_model(model, out, metadata)
    summary["model"] = model.eval().requires_grad_(False)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the shipped recipe for --size")
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--lr", type=float, default=None, help="default: the shipped recipe for --size")
    parser.add_argument("--rank-weight", type=float, default=TrainConfig.rank_weight)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps, lr = RECIPES[args.size]
    cfg = TrainConfig(
        size=args.size, steps=args.steps or steps, batch=args.batch, lr=args.lr or lr, seed=args.seed, rank_weight=args.rank_weight
    )
    summary = train(cfg, args.out)
    print(f"wrote {args.out}: initial loss {summary['initial_loss']:.4f} -> final {summary['final_loss']:.4f} in {summary['seconds']:.0f}s")


if __name__ == "__main__":
    main()

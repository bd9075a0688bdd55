"""`drpo-bench make-dataset`: a fixed offline preference dataset from the base generator.

For each prompt of a prompt set's split (the suite's train prompts by default), K images from
the frozen base generator (noise from one fixed seed, prompt by prompt in order, so a dataset is
reproducible), scored by a named reward; written as an offline dataset folder
(``drpo_bench.methods.offline_data``): images/, scores.jsonl, dataset.json and, with ``--pairs``, a
Pick-a-Pic-style pairs.jsonl derived from the scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from drpo_bench.errors import UserError
from drpo_bench.methods.offline_data import FORMAT, META_FILE, PAIRS_FILE, SCORES_FILE, json_object, pairs_from_scores, write_image
from drpo_bench.store import write_json, write_text


def make_dataset(out: Path, *, generator: str = "shapes", generator_args: dict[str, Any] | None = None,
                 prompts: str = "shapes", prompt_args: dict[str, Any] | None = None, split: str = "train",
                 reward: str = "shapes-checker", reward_args: dict[str, Any] | None = None, images_per_prompt: int = 16,
                 seed: int = 0, pairs: bool = False, max_prompts: int | None = None, batch_prompts: int = 16,
                 progress: bool = True) -> dict[str, Any]:
    """Write the dataset folder ``out`` (which must not hold a dataset yet); returns its dataset.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from drpo_bench.generators.base import repeat_conditioning
    from drpo_bench.registry import GENERATORS, PROMPTS, REWARDS

    if images_per_prompt < 2:
        raise UserError(f"--images-per-prompt must be at least 2 (positives and negatives), got {images_per_prompt}")
    if batch_prompts < 1:
        raise UserError(f"--batch-prompts must be at least 1, got {batch_prompts}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --out or delete it first")
    gen = GENERATORS.build(generator, generator_args)
    scorer = REWARDS.build(reward, reward_args).to(gen.device)
    texts = [p.text for p in PROMPTS.build(prompts, prompt_args).split(split)]
    if max_prompts is not None:
        texts = texts[:max_prompts]
    if not texts:
        raise UserError(f"prompt set {prompts} has no prompts in split {split!r}")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    pair_rng = torch.Generator().manual_seed(seed + 1)
    score_lines, pair_lines = [], []
    k = images_per_prompt
    columns = (TextColumn("make-dataset"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar, torch.no_grad(), gen.reference():
        task = bar.add_task("prompts", total=len(texts))
        for start in range(0, len(texts), batch_prompts):
            chunk = texts[start : start + batch_prompts]
            repeated = [t for t in chunk for _ in range(k)]
            cond = repeat_conditioning(gen.encode(chunk), k)
            images = gen.decode(gen.sample(gen.noise(len(repeated), rng), cond)).float().cpu()  # (P*K, 3, H, W)
            scores = scorer(images.to(gen.device), repeated).float().cpu()  # (P*K,)
            for p, text in enumerate(chunk):
                files = []
                for j in range(k):
                    row = p * k + j
                    name = f"images/{start + p:05d}_{j:03d}.png"
                    write_image(out / name, images[row])
                    files.append(name)
                    score_lines.append(json.dumps({"prompt": text, "image": name, "score": float(scores[row])}))
                if pairs:
                    ranked = [float(s) if scorer.higher_is_better else -float(s) for s in scores[p * k : (p + 1) * k]]
                    pair_lines.extend(json.dumps(line) for line in pairs_from_scores(text, files, ranked, pair_rng))
            bar.update(task, advance=len(chunk))
    write_text(out / SCORES_FILE, "".join(line + "\n" for line in score_lines))
    if pairs:
        write_text(out / PAIRS_FILE, "".join(line + "\n" for line in pair_lines))
    meta = {
        "format": FORMAT,
        "made_by": "drpo-bench make-dataset",
        "generator": {"name": generator, "args": generator_args or {}},
        "prompts": {"name": prompts, "args": prompt_args or {}, "split": split, "count": len(texts)},
        "reward": {"name": reward, "args": reward_args or {}},
        "higher_is_better": bool(scorer.higher_is_better),
        "images_per_prompt": k,
        "seed": seed,
        "image_shape": list(images.shape[1:]),
        "files": [SCORES_FILE, *([PAIRS_FILE] if pairs else [])],
    }
    write_json(out / META_FILE, meta)
    return meta


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    return json_object(text, flag, "give a JSON object, e.g. '{\"size\": \"small\"}'")


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from rich.console import Console

    meta = make_dataset(
        Path(args.out), generator=args.generator, generator_args=_json_arg(args.generator_args, "--generator-args"),
        prompts=args.prompts, split=args.split, reward=args.reward,
        reward_args=_json_arg(args.reward_args, "--reward-args"), images_per_prompt=args.images_per_prompt,
        seed=args.seed, pairs=args.pairs, max_prompts=args.max_prompts, batch_prompts=args.batch_prompts,
        progress=not args.quiet,
    )
    n = meta["prompts"]["count"] * meta["images_per_prompt"]
    Console(stderr=True).print(f"[green]wrote[/] {args.out}: {n} images of {meta['prompts']['count']} prompts, "
                               f"{', '.join(meta['files'])} (reward {meta['reward']['name']})")
    return 0


def add_make_dataset_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "make-dataset", help="an offline preference dataset: K base-generator images per prompt, scored by a reward",
        description="Images from the frozen base generator for every prompt of a split, scored by a registered "
                    "reward, written as an offline dataset folder (images/, scores.jsonl, dataset.json, "
                    "optionally pairs.jsonl) for drpo-offline / dpo-offline. See docs/offline.md.",
    )
    parser.add_argument("--out", required=True, help="new dataset folder, e.g. runs/shapes-offline-data")
    parser.add_argument("--generator", default="shapes", help="registered generator (default: %(default)s)")
    parser.add_argument("--generator-args", default="{}", help="its config as JSON (default: %(default)s)")
    parser.add_argument("--prompts", default="shapes", help="registered prompt set (default: %(default)s)")
    parser.add_argument("--split", default="train", help="its split (default: %(default)s; never the eval split)")
    parser.add_argument("--reward", default="shapes-checker", help="registered reward that scores (default: %(default)s)")
    parser.add_argument("--reward-args", default="{}", help="its config as JSON, e.g. '{\"size\": \"small\"}'")
    parser.add_argument("--images-per-prompt", type=int, default=16, help="K images per prompt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--pairs", action="store_true", help="also write pairs.jsonl (Pick-a-Pic columns) from the scores")
    parser.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts (for a quick look)")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts per generator batch (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_make_dataset)

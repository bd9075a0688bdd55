"""How well a shapes reward agrees with the checker, on held-out eval prompts.

- ``hard_negative_accuracy``: on ground-truth renders of each eval prompt, how often the reward
  scores the true prompt above a hard negative (wrong count, color, shape, relation);
  chance is 0.5.
- ``checker_spearman``: Spearman correlation between the reward and the checker for each eval
  prompt over a mix of correct and incorrect renders (of the prompt, of its hard negatives, of
  another prompt; clean and degraded): the ranking a reward gives a generator's candidates;
- ``text_mix_spearman``: the same with the image fixed and the texts varied.

    python -m drpo_bench.shapes.reward_eval --size small
    python -m drpo_bench.shapes.reward_eval --checker      # the checker itself: ground truth vs not
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from drpo_bench.prompts.base import Prompt
from drpo_bench.shapes.checker import check_batch
from drpo_bench.shapes.grammar import prompt_split
from drpo_bench.shapes.negatives import hard_negatives
from drpo_bench.shapes.render import render_batch

ScoreFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]  # (B, 3, H, W), B prompts -> (B,)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties averaged (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1  # (n,) tie-group of each sorted element
    bounds = np.r_[np.flatnonzero(starts), len(x)]
    mean_rank = (bounds[:-1] + bounds[1:] - 1) / 2 + 1  # (groups,)
    ranks = np.empty(len(x))
    ranks[order] = mean_rank[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def _degrade(images: torch.Tensor, seed: int) -> torch.Tensor:
    from drpo_bench.shapes.train_reward import degrade

    return degrade(images, torch.Generator().manual_seed(seed), clean_fraction=0.0)


def _score(fn: ScoreFn, images: torch.Tensor, texts: Sequence[str], chunk: int = 512) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(images[i:i + chunk], texts[i:i + chunk]) for i in range(0, len(texts), chunk)]).float().numpy()


def hard_negative_accuracy(fn: ScoreFn, prompts: Sequence[Prompt], renders: int = 4, seed: int = 0) -> dict:
    """Share of (render, hard negative) pairs where the true prompt scores higher; per kind and task."""
    rng = random.Random(seed)
    texts = [p.text for p in prompts for _ in range(renders)]
    tasks = [p.task for p in prompts for _ in range(renders)]
    images = render_batch(texts, seed)
    idx, negs, kinds = [], [], []
    for i, t in enumerate(texts):
        for kind, neg in hard_negatives(t, rng).items():
            idx.append(i)
            negs.append(neg)
            kinds.append(kind)
    true_scores = _score(fn, images, texts)
    neg_scores = _score(fn, images[idx], negs)
    wins = true_scores[idx] > neg_scores
    by_kind, by_task = defaultdict(list), defaultdict(list)
    for w, k, i in zip(wins, kinds, idx):
        by_kind[k].append(w)
        by_task[tasks[i]].append(w)
    return {
        "accuracy": float(wins.mean()),
        "pairs": int(len(wins)),
        "by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()},
        "by_task": {k: float(np.mean(v)) for k, v in by_task.items()},
    }


def checker_spearman(fn: ScoreFn, prompts: Sequence[Prompt], renders: int = 2, seed: int = 0) -> dict:
    """Spearman(reward, checker) with the prompt fixed and the image varied, as a reward meets a
    generator's candidates: for each eval prompt, ground-truth renders of it and of each of its
    hard negatives and of another eval prompt, clean and degraded. ``pooled`` over all pairs,
    ``per_prompt`` the mean of the correlations within each prompt."""
    rng = random.Random(seed)
    all_texts = [p.text for p in prompts]
    pair_text, drawn = [], []
    for p in prompts:
        sources = [p.text, *hard_negatives(p.text, rng).values(), rng.choice(all_texts)]
        for source in sources:
            pair_text += [p.text] * renders
            drawn += [source] * renders
    clean = render_batch(drawn, seed)
    images = torch.cat([clean, _degrade(clean, seed)])  # (2N, 3, 32, 32)
    texts = pair_text + pair_text
    reward = _score(fn, images, texts)
    checker = check_batch(images, texts).numpy()
    within = []
    for t in all_texts:
        rows = [i for i, x in enumerate(texts) if x == t]
        if np.ptp(checker[rows]) > 0:
            within.append(spearman(reward[rows], checker[rows]))
    return {"pooled": spearman(reward, checker), "per_prompt": float(np.mean(within)), "pairs": len(texts)}


def text_mix_spearman(fn: ScoreFn, prompts: Sequence[Prompt], renders: int = 2, seed: int = 0) -> dict:
    """Spearman(reward, checker) with the image fixed and the text varied (true prompt, its hard
    negatives, another eval prompt): harder, since the score's offset differs between texts."""
    rng = random.Random(seed)
    all_texts = [p.text for p in prompts]
    base = [p.text for p in prompts for _ in range(renders)]
    images = render_batch(base, seed)
    pair_image, pair_text = [], []
    for i, t in enumerate(base):
        candidates = [t, *hard_negatives(t, rng).values(), rng.choice(all_texts)]
        pair_image += [i] * len(candidates)
        pair_text += candidates
    pair_images = images[pair_image]
    reward = _score(fn, pair_images, pair_text)
    checker = check_batch(pair_images, pair_text).numpy()
    return {"spearman": spearman(reward, checker), "pairs": len(pair_text)}


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of range(n) (n >= 2) that moves every element."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def checker_validity(renders: int = 10, seed: int = 0) -> dict:
    """The checker on ground truth of every eval prompt, on ground truth of another eval prompt
    (a derangement), on degraded ground truth, and on blank images; overall and per task."""
    prompts = prompt_split("eval")
    n = len(prompts)
    texts = [p.text for p in prompts] * renders
    tasks = [p.task for p in prompts] * renders
    images = render_batch(texts, seed)
    perm = derangement(n, seed)
    deranged = [prompts[int(perm[i % n])].text for i in range(len(texts))]
    cases = {
        "ground_truth": check_batch(images, texts),
        "other_prompt": check_batch(images, deranged),
        "degraded_ground_truth": check_batch(_degrade(images, seed), texts),
        "blank": check_batch(torch.zeros_like(images[:n]), texts[:n]),
    }
    out = {}
    for name, scores in cases.items():
        per_task = defaultdict(list)
        for task, v in zip(tasks, scores.tolist()):
            per_task[task].append(v)
        out[name] = {"mean": float(scores.mean()), "by_task": {k: float(np.mean(v)) for k, v in per_task.items()}}
    return out


def evaluate(fn: ScoreFn, split: str = "eval", renders: int = 4, seed: int = 0) -> dict:
    prompts = prompt_split(split)
    return {
        "hard_negatives": hard_negative_accuracy(fn, prompts, renders, seed),
        "checker_images_varied": checker_spearman(fn, prompts, max(1, renders // 2), seed),
        "checker_texts_varied": text_mix_spearman(fn, prompts, max(1, renders // 2), seed),
    }


def main(argv: list[str] | None = None) -> None:
    from drpo_bench.registry import REWARDS

    parser = argparse.ArgumentParser(description="shapes-clip vs the checker on held-out prompts")
    parser.add_argument("--size", choices=["small", "large"], default="small")
    parser.add_argument("--weights", default=None, help="safetensors file; default: the shipped asset")
    parser.add_argument("--renders", type=int, default=8, help="ground-truth renders per eval prompt")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checker", action="store_true", help="report the checker's validity instead")
    args = parser.parse_args(argv)
    if args.checker:
        print(json.dumps(checker_validity(args.renders, args.seed), indent=2))
        return
    entry = REWARDS.get("shapes-clip")
    reward = entry.cls(entry.parse_config({"size": args.size, "weights": args.weights}))
    print(json.dumps(evaluate(reward, "eval", args.renders, args.seed), indent=2))


if __name__ == "__main__":
    main()

"""Per-image scores (each cell's scores.jsonl): win rate against base with a bootstrap CI.

A method's image i at seed s and base's image i at seed s share the prompt and the eval noise
(eval seed = ``eval.seed + s``), so they are a pair; the win rate is the fraction of pairs where
the method scores better (ties count half). Its 95% interval resamples prompts (the unit the
held-out set was drawn in) with replacement, with a fixed seed so the report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from drpo_bench.report.results import CellResult
from drpo_bench.report.table import Table

BOOTSTRAP_DRAWS = 1000  # draws of the prompt bootstrap; the CI ends move by < 0.01 beyond this
BOOTSTRAP_SEED = 0  # fixed: the same results folder always gives the same interval
NOT_METRICS = {"image", "prompt_index", "prompt", "task"}


@dataclass
class WinRate:
    rate: float
    low: float
    high: float
    pairs: int
    prompts: int


def per_image_metrics(cells: list[CellResult]) -> list[str]:
    """Metric names that have a number per image in some cell's scores."""
    names: list[str] = []
    for c in cells:
        for row in c.scores[:1]:
            for k, v in row.items():
                if k not in NOT_METRICS and isinstance(v, (int, float)) and k not in names:
                    names.append(k)
    return names


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def win_rate(method: list[CellResult], base: list[CellResult], metric: str, higher_is_better: bool,
             draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> WinRate | None:
    """Win rate of ``method`` over ``base`` on ``metric``, paired by seed and image index."""
    base_by_seed = {b.info.seed: {row["image"]: row for row in b.scores} for b in base}
    wins: dict[Any, float] = {}
    counts: dict[Any, int] = {}
    for cell in method:
        reference = base_by_seed.get(cell.info.seed)
        if not reference:
            continue
        for row in cell.scores:
            other = reference.get(row["image"])
            if other is None or other.get("prompt_index") != row.get("prompt_index"):
                continue  # not the same prompt: not a pair
            m, b = _value(row, metric), _value(other, metric)
            if m is None or b is None:
                continue
            better = m > b if higher_is_better else m < b
            prompt = row.get("prompt_index")
            wins[prompt] = wins.get(prompt, 0.0) + (0.5 if m == b else float(better))
            counts[prompt] = counts.get(prompt, 0) + 1
    if not counts:
        return None
    prompts = list(counts)
    w = np.array([wins[p] for p in prompts])  # (P,)
    n = np.array([counts[p] for p in prompts], dtype=float)  # (P,)
    draw = np.random.default_rng(seed).integers(0, len(prompts), size=(draws, len(prompts)))  # (draws, P)
    rates = w[draw].sum(axis=1) / n[draw].sum(axis=1)  # (draws,)
    low, high = np.percentile(rates, [2.5, 97.5])
    return WinRate(float(w.sum() / n.sum()), float(low), float(high), int(n.sum()), len(prompts))


def win_rate_table(rows: dict[tuple[str, str, str], list[CellResult]], multi: bool) -> Table | None:
    """Each trained row against its generator's base row, per per-image metric."""
    bases = {k[0]: cells for k, cells in rows.items() if cells[0].info.method_name == "base"}
    others = {k: cells for k, cells in rows.items() if cells[0].info.method_name != "base" and k[0] in bases}
    metrics = per_image_metrics([c for cells in rows.values() for c in cells])
    if not others or not metrics:
        return None
    higher = {}
    for m in metrics:
        higher[m] = next((c.metrics[m].higher_is_better for cells in rows.values() for c in cells if m in c.metrics), True)
    headers = (["generator"] if multi else []) + ["method", "train reward", "pairs"] + [f"win rate {m}" for m in metrics]
    body, bold, raw = [], [], []
    for key, cells in others.items():
        results = [win_rate(cells, bases[key[0]], m, higher[m]) for m in metrics]
        if all(r is None for r in results):
            continue
        pairs = max(r.pairs for r in results if r is not None)
        label = ([key[0]] if multi else []) + [key[1], key[2], str(pairs)]
        body.append(label + [f"{r.rate:.3f} [{r.low:.3f}, {r.high:.3f}]" if r else "n/a" for r in results])
        bold.append([False] * len(label) + [bool(r and r.low > 0.5) for r in results])
        raw.append(label[:-1] + [pairs] + [{"win_rate": r.rate, "ci_low": r.low, "ci_high": r.high, "pairs": r.pairs,
                                            "prompts": r.prompts} if r else None for r in results])
    if not body:
        return None
    return Table("Win rate against base (per image, paired by seed and image; 95% bootstrap CI over prompts)",
                 headers, body, bold,
                 f"Fraction of (prompt, image) pairs where the method's image scores better than base's image with the "
                 f"same prompt and noise (same seed, same image index); ties count half; 0.5 = no change. Interval: "
                 f"{BOOTSTRAP_DRAWS} bootstrap draws over prompts (seed {BOOTSTRAP_SEED}), 2.5 and 97.5 percentiles. "
                 f"Bold: the interval lies above 0.5.", slug="win-rate", label_columns=3 if multi else 2, raw=raw)

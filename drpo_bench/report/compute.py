"""The "compute savings" table: what each method's update costs against reward backprop's.

Inputs are the cells' ledger summaries (``ledger.json``: seconds per update, FLOPs of the counted
update, peak memory), grouped by (generator, method, train reward). For each group with a
reward-backprop reference (DRaFT by default) under the same generator and reward, the table shows
**reference time ÷ method time**: above 1 the method is faster ("3.2× less time than DRaFT"),
below 1 slower, and the same ratio of the ledger's FLOPs per update. Where a paper-scale FLOP prediction for the same setting exists
(``drpo-bench flops --json`` files, see results/compute/), it is shown beside the measurement.

The lead wires :func:`compute_savings_table` into the report; it only reads what it is given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from drpo_bench.report.table import Table
from drpo_bench.report.results import CellResult

#: the methods that backpropagate the reward, in order of preference as the reference
REWARD_BACKPROP = ("draft",)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _cell_key(r: CellResult) -> tuple[str, str, str]:
    return r.row_key  # (generator label, method id, reward alias)


def _method_name(r: CellResult) -> str:
    return str(r.info.method.get("method") or r.info.method_id)


def summarize(results: Iterable[CellResult]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (generator, method, reward): mean s/update, FLOPs/update and max peak memory over seeds."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(lambda: {"seconds": [], "flops": [], "memory": []})
    for r in results:
        if not r.info.trains or not r.ledger or not r.ledger.get("updates"):
            continue
        g = groups[_cell_key(r)]
        g["method"] = _method_name(r)
        g["generator"] = r.info.generator.get("name", "")
        g["reward"] = (r.info.train_reward or {}).get("name", "")
        if r.ledger.get("seconds_per_update"):
            g["seconds"].append(float(r.ledger["seconds_per_update"]))
        if r.ledger.get("flops_per_update"):
            g["flops"].append(float(r.ledger["flops_per_update"]))
        if r.ledger.get("peak_memory_bytes"):
            g["memory"].append(int(r.ledger["peak_memory_bytes"]))
            g["memory_kind"] = r.ledger.get("peak_memory_kind", "")
    return {
        key: {**{k: v for k, v in g.items() if k not in ("seconds", "flops", "memory")},
              "seconds": _mean(g["seconds"]), "flops": _mean(g["flops"]),
              "memory": max(g["memory"]) if g["memory"] else None, "cells": max(len(g["seconds"]), 1)}
        for key, g in groups.items()
    }


def load_predictions(folder: Path | str) -> dict[tuple[str, str, str], float]:
    """(generator, reward, method) -> predicted FLOPs per update, from ``drpo-bench flops --json`` files.

    Files with gradient checkpointing (``_ckpt``) are skipped: cells record whether they
    checkpoint in their own settings, and the plain file is the like-for-like default.
    """
    from drpo_bench.store import read_json

    out: dict[tuple[str, str, str], float] = {}
    for path in sorted(Path(folder).glob("*.json")):
        if path.stem.endswith("_ckpt"):
            continue
        try:
            data = read_json(path)
            setting, methods = data["setting"], data["methods"]
        except (ValueError, KeyError, TypeError, OSError):
            continue
        for method, entry in methods.items():
            out[(setting["generator"], setting["reward"], method)] = float(entry["total_flops"])
    return out


def _times(x: float) -> str:
    return f"{x:.1f}× less" if x >= 1 else f"{1 / x:.1f}× more"


def compute_savings_table(
    results: Iterable[CellResult],
    *,
    reference: str | None = None,
    predictions: Mapping[tuple[str, str, str], float] | None = None,
) -> Table | None:
    """Measured s/update, FLOPs/update and peak memory per method, with the reward-backprop method's time
    ÷ this method's time ("DRaFT time ÷ method time: 3.2× less") and the paper-scale FLOP prediction.

    ``reference``: the method to divide by (default: the first of ``REWARD_BACKPROP`` present).
    ``predictions``: (generator name, reward name, method) -> FLOPs per update (:func:`load_predictions`).
    Returns None when no cell has ledger timings.
    """
    rows_by_key = summarize(results)
    if not rows_by_key:
        return None
    present = {g["method"] for g in rows_by_key.values()}
    ref = reference or next((m for m in REWARD_BACKPROP if m in present), None)
    ref_label = {"draft": "DRaFT"}.get(ref or "", ref or "reference")
    refs = {(k[0], k[2]): g for k, g in rows_by_key.items() if g["method"] == ref}
    headers = ["generator", "method", "reward", "s / update", f"{ref_label} time ÷ method time",
               "TFLOP / update (ledger)", f"{ref_label} FLOPs ÷ method FLOPs", "peak memory GiB", "TFLOP / update (paper-scale prediction)"]
    rows, bold = [], []
    for key in sorted(rows_by_key, key=lambda k: (k[0], k[2], k[1] != ref, k[1])):
        g = rows_by_key[key]
        base = refs.get((key[0], key[2]))
        if g["method"] == ref:
            ratio = flop_ratio = "reference"
        else:
            ratio = _times(base["seconds"] / g["seconds"]) if base and base["seconds"] and g["seconds"] else "n/a"
            flop_ratio = _times(base["flops"] / g["flops"]) if base and base["flops"] and g["flops"] else "n/a"
        predicted = (predictions or {}).get((g.get("generator", ""), g.get("reward", ""), g["method"]))
        rows.append([
            key[0], key[1], key[2],
            f"{g['seconds']:.3g}" if g["seconds"] else "n/a",
            ratio,
            f"{g['flops'] / 1e12:.3g}" if g["flops"] else "n/a",
            flop_ratio,
            f"{g['memory'] / 2**30:.2f}" if g["memory"] else "n/a",
            f"{predicted / 1e12:,.0f}" if predicted else "–",
        ])
        bold.append([False] * 4 + [ratio.endswith("less"), False, flop_ratio.endswith("less")] + [False] * 2)
    kinds = {g.get("memory_kind") for g in rows_by_key.values() if g.get("memory_kind")}
    note = (
        f"'{ref_label} time ÷ method time' divides the reward-backprop method's mean seconds per update by this "
        "method's, same generator and train reward: '3.2× less' means this method's update takes 3.2 times less "
        "time; the FLOPs column is the same ratio of ledger FLOPs. Seconds are means over updates after each process's first (warm-up, FLOP-counted) update; FLOPs are "
        "the ledger's count of that first update (2 × multiply-adds of matmuls, convolutions and attention). "
        f"Peak memory: {', '.join(sorted(kinds)) or 'n/a'} (cuda_max_allocated on GPU; process peak RSS on CPU). "
        "Predictions: drpo-bench flops at the paper's scale for the same generator and reward, without checkpointing."
    )
    if ref is None:
        note += " No reward-backprop method among these cells: no time ratio."
    if "process_peak_rss" in kinds:  # CPU timings
        note += (" Timed on a CPU, which may be shared with other work: seconds are noisy; the ratio within one run "
                 "is the figure to compare, and the committed compute results give paper-scale FLOPs.")
    return Table(title="Compute: time, FLOPs and memory per update", headers=headers, rows=rows, bold=bold, note=note)

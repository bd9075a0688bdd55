"""The "compute savings" table: what each method's update costs against reward backprop's.

Inputs are the cells' ledger summaries (``ledger.json``: seconds per update, FLOPs of the counted
update, peak memory), grouped by (generator, method, train reward). For each group with a
reward-backprop reference (DRaFT by default) under the same generator and reward, the table shows
**method time ÷ reference time** (the header says so, "time ÷ DRaFT's"): below 1 the method's update is
cheaper, and the same ratio of the ledger's FLOPs per update. Where a paper-scale FLOP prediction for
the same generator and reward exists (``drpo-bench flops --json`` files, see results/compute/), it is shown
beside the measurement; without any, the column is left out. Every row names its method (and its
generator when there are several), so a LaTeX table split into parts keeps the names.
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


def _ratio(method: float | None, reference: float | None) -> float | None:
    return method / reference if method and reference else None


def compute_savings_table(
    results: Iterable[CellResult],
    *,
    reference: str | None = None,
    predictions: Mapping[tuple[str, str, str], float] | None = None,
) -> Table | None:
    """Measured s/update, FLOPs/update and peak memory per method, each as a ratio to the reward-backprop
    method's ("time ÷ DRaFT's": 0.29 = this method's update takes 0.29 of DRaFT's time), and the
    paper-scale FLOP prediction where ``drpo-bench flops`` made one for the row's setting.

    ``reference``: the method to divide by (default: the first of ``REWARD_BACKPROP`` present).
    ``predictions``: (generator name, reward name, method) -> FLOPs per update (:func:`load_predictions`);
    the column is dropped when no row has one. Returns None when no cell has ledger timings.
    """
    rows_by_key = summarize(results)
    if not rows_by_key:
        return None
    present = {g["method"] for g in rows_by_key.values()}
    ref = reference or next((m for m in REWARD_BACKPROP if m in present), None)
    ref_label = {"draft": "DRaFT"}.get(ref or "", ref or "reference")
    refs = {(k[0], k[2]): g for k, g in rows_by_key.items() if g["method"] == ref}
    multi = len({k[0] for k in rows_by_key}) > 1
    predicted = {key: (predictions or {}).get((g.get("generator", ""), g.get("reward", ""), g["method"]))
                 for key, g in rows_by_key.items()}
    paper_scale = any(predicted.values())
    headers = (["generator"] if multi else []) + [
        "method", "train reward", "s / update", f"time ÷ {ref_label}'s", "TFLOP / update (ledger)",
        f"FLOPs ÷ {ref_label}'s", "peak memory GiB"]
    if paper_scale:
        headers.append("TFLOP / update at paper scale (drpo-bench flops)")
    rows, bold, raw = [], [], []
    for key in sorted(rows_by_key, key=lambda k: (k[0], k[2], k[1] != ref, k[1])):
        g = rows_by_key[key]
        base = refs.get((key[0], key[2])) or {}
        time_ratio = _ratio(g["seconds"], base.get("seconds"))
        flop_ratio = _ratio(g["flops"], base.get("flops"))
        reference_row = g["method"] == ref
        row = ([key[0]] if multi else []) + [
            key[1], key[2],
            f"{g['seconds']:.3g}" if g["seconds"] else "n/a",
            "1 (reference)" if reference_row else (f"{time_ratio:.2f}" if time_ratio else "n/a"),
            f"{g['flops'] / 1e12:.3g}" if g["flops"] else "n/a",
            "1 (reference)" if reference_row else (f"{flop_ratio:.2f}" if flop_ratio else "n/a"),
            f"{g['memory'] / 2**30:.2f}" if g["memory"] else "n/a",
        ]
        if paper_scale:
            row.append(f"{predicted[key] / 1e12:,.0f}" if predicted[key] else "not computed")
        rows.append(row)
        marks = [False] * len(row)
        marks[len(row) - (5 if paper_scale else 4)] = bool(time_ratio and time_ratio < 1 and not reference_row)
        marks[len(row) - (3 if paper_scale else 2)] = bool(flop_ratio and flop_ratio < 1 and not reference_row)
        bold.append(marks)
        raw.append(row[:-5 - paper_scale] + [g["seconds"], 1.0 if reference_row else time_ratio,
                                              g["flops"] / 1e12 if g["flops"] else None,
                                              1.0 if reference_row else flop_ratio,
                                              g["memory"] / 2**30 if g["memory"] else None]
                   + ([predicted[key] / 1e12 if predicted[key] else None] if paper_scale else []))
    kinds = {g.get("memory_kind") for g in rows_by_key.values() if g.get("memory_kind")}
    note = (
        f"'time ÷ {ref_label}'s' divides this method's mean seconds per update by the reward-backprop method's "
        f"({ref_label}), same generator and train reward: below 1 the method's update is cheaper (bold), 0.29 means "
        "it takes 0.29 of the time; 'FLOPs ÷' is the same ratio of ledger FLOPs. Seconds are means over updates after "
        "each process's first (warm-up, FLOP-counted) update; FLOPs are the ledger's count of that first update "
        "(2 × multiply-adds of matmuls, convolutions and attention). "
        f"Peak memory: {', '.join(sorted(kinds)) or 'n/a'} (cuda_max_allocated on GPU; process peak RSS on CPU)."
    )
    if paper_scale:
        note += (" Paper scale: `drpo-bench flops` for the same generator and reward at the paper's batch "
                 "(results/compute/), without gradient checkpointing; 'not computed' where it has no count.")
    if ref is None:
        note += " No reward-backprop method among these cells: no ratio."
    if "process_peak_rss" in kinds:  # CPU timings
        note += (" Timed on a CPU, which may be shared with other work: seconds are noisy; the ratio within one run "
                 "is the figure to compare.")
    return Table(title="Compute: time, FLOPs and memory per update, against reward backprop", headers=headers,
                 rows=rows, bold=bold, note=note, slug="compute-savings", label_columns=3 if multi else 2, raw=raw)

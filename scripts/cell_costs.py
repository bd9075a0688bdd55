"""Where a results folder's cell-seconds went: per row, training (the ledger's updates), held-out
evaluation (``cell.json``'s ``eval_seconds_this_run``) and the rest (building, checkpoints, storing).

    python scripts/cell_costs.py results/quickstart [--json out.json]

Reads only what the cells recorded; prints one line per row (method, training reward) and the
folder's total. Cells written before ``eval_seconds_this_run`` was recorded show "n/a" there.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def cell_costs(folder: Path) -> dict:
    rows: dict[str, list[dict]] = defaultdict(list)
    for record_path in sorted(folder.glob("*/cell.json")):
        record = json.loads(record_path.read_text())
        if record.get("status") != "complete":
            continue
        ledger_path = record_path.parent / "ledger.json"
        ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
        updates, summary = ledger.get("updates", []), ledger.get("summary", {})
        train = sum(u.get("seconds") or 0.0 for u in updates)
        row = f"{record['method']['id']} / {(record.get('train_reward') or {}).get('alias', '-')}"
        rows[row].append({"cell": record["cell_id"], "seconds": record.get("wall_seconds_this_run") or 0.0,
                          "train": train, "eval": record.get("eval_seconds_this_run"),
                          "per_update": summary.get("seconds_per_update")})
    out: dict = {"rows": {}, "total_seconds": 0.0}
    for row, cells in rows.items():
        seconds = sum(c["seconds"] for c in cells)
        evals = [c["eval"] for c in cells]
        known = None not in evals
        out["rows"][row] = {
            "cells": len(cells),
            "seconds": seconds,
            "train_seconds": sum(c["train"] for c in cells),
            "eval_seconds": sum(evals) if known else None,
            # per cell, then the largest share among the row's cells
            "eval_share_max": max(c["eval"] / c["seconds"] for c in cells) if known and all(c["seconds"] for c in cells) else None,
            "seconds_per_update_median": statistics.median([c["per_update"] for c in cells]) if all(
                c["per_update"] for c in cells) else None,
        }
        out["total_seconds"] += seconds
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    out = cell_costs(args.folder)
    print(f"{'row':28s} {'cells':>5s} {'cell-s':>8s} {'train-s':>8s} {'eval-s':>7s} {'eval %':>7s} {'max %':>6s} {'s/update':>8s}")
    for row, r in sorted(out["rows"].items()):
        ev = "n/a" if r["eval_seconds"] is None else f"{r['eval_seconds']:.1f}"
        share = "n/a" if r["eval_seconds"] is None else f"{100 * r['eval_seconds'] / r['seconds']:.1f}"
        worst = "n/a" if r["eval_share_max"] is None else f"{100 * r['eval_share_max']:.1f}"
        spu = "-" if r["seconds_per_update_median"] is None else f"{r['seconds_per_update_median']:.3f}"
        print(f"{row:28s} {r['cells']:5d} {r['seconds']:8.1f} {r['train_seconds']:8.1f} {ev:>7s} {share:>7s} {worst:>6s} {spu:>8s}")
    print(f"total cell-seconds {out['total_seconds']:.0f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

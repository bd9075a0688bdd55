"""Read a results folder and aggregate cells over seeds (mean and 95% t-interval)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from drpo_bench.errors import UserError
from drpo_bench.store import CellFolder, CellRecord, CorruptCellError, MetricRecord


@dataclass
class CellResult:
    cell_id: str
    info: CellRecord  # cell.json
    metrics: dict[str, MetricRecord]  # eval.json's metrics
    ledger: dict[str, Any]  # ledger.json's summary
    train_log: list[dict[str, Any]]
    folder: Path
    scores: list[dict[str, Any]] = field(default_factory=list)  # scores.jsonl: one row per eval image
    # eval_history.jsonl ({"step", <metric>: value} per evaluation during training), when the runner wrote it
    eval_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def row_key(self) -> tuple[str, str, str]:
        return (self.info.generator_label, self.info.method_id, self.info.reward_alias or "—")


@dataclass
class Estimate:
    """Mean over seeds with a 95% Student-t half-width (None with a single seed)."""

    mean: float
    half_width: float | None
    n: int
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, None, n, values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return cls(mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n, values)


def load_results(folder: str | Path) -> list[CellResult]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist; run a suite first (`drpo-bench run SUITE`)")
    results, _ = load_results_and_problems(folder)
    if not results:
        raise UserError(f"no complete cells in {folder}: is it a results folder written by `drpo-bench run`?")
    return results


def load_results_and_problems(folder: Path) -> tuple[list[CellResult], dict[str, str]]:
    """Complete cells, and {cell folder: why it is not in the tables} for failed or corrupt ones."""
    results, problems = [], {}
    for cell_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        cell = CellFolder(cell_dir)
        try:
            info = cell.read_cell()
            if info is None or info.status != "complete":
                error = cell.file(CellFolder.ERROR)
                if error.exists():
                    lines = error.read_text(errors="replace").strip().splitlines() or ["?"]
                    problems[cell_dir.name] = "failed: " + (lines[-1] if lines[0].startswith("Traceback") else lines[0])
                elif info is not None or cell.file(CellFolder.CHECKPOINT).exists():
                    problems[cell_dir.name] = "unfinished (rerun the suite to resume it)"
                continue
            results.append(CellResult(info.cell_id, info, cell.read_eval().metrics, cell.read_ledger_summary(),
                                      cell.read_train_log(), cell.path, cell.read_scores(), read_eval_history(cell)))
        except CorruptCellError as exc:
            problems[cell_dir.name] = f"corrupt: {exc}"
    return results, problems


def read_eval_history(cell: CellFolder) -> list[dict[str, Any]]:
    """Rows {"step": int, <metric>: value} sorted by step; [] when the cell has none."""
    return cell.read_eval_history()


def group_rows(results: list[CellResult], suite: dict[str, Any] | None = None) -> dict[tuple[str, str, str], list[CellResult]]:
    """Row key (generator, method id, train reward) -> that row's cells (one per seed).

    Rows follow the suite's order of generators and methods when the suite is known (the
    runner writes it as suite.json), else alphabetical order.
    """
    rows: dict[tuple[str, str, str], list[CellResult]] = defaultdict(list)
    for r in sorted(results, key=lambda r: r.info.seed):
        rows[r.row_key].append(r)
    gen_order: list[str] = []
    method_order: list[str] = []
    if suite:
        gen_order = [g.get("id") or g["name"] for g in suite.get("generators", [])]
        method_order = [m["id"] for m in suite.get("methods", [])]

    def rank(key: tuple[str, str, str]) -> tuple[Any, ...]:
        g, m, reward = key
        return (gen_order.index(g) if g in gen_order else len(gen_order), g,
                method_order.index(m) if m in method_order else len(method_order), m, reward)

    return {k: rows[k] for k in sorted(rows, key=rank)}


#: the runner's record of the cells planned into a folder (runner.SETTINGS_NAME; not imported: the
#: runner pulls in torch and the models)
PLAN_FILE = ".drpo-bench.settings.json"


def missing_cells(folder: str | Path, results: list[CellResult]) -> tuple[int, int] | None:
    """(missing, planned): planned cells of the last run(s) in ``folder`` without a complete
    cell.json; None when the folder does not say what was planned (written before this was recorded)."""
    try:
        planned = set(json.loads((Path(folder) / PLAN_FILE).read_text())["cells"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return len(planned - {r.info.cell_id for r in results}), len(planned)


def load_suite_snapshot(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / "suite.json"
    return json.loads(path.read_text()) if path.exists() else None

"""Run a suite: plan its cells, check the run into the output folder, hand the cells to an executor.

The flow, one module each: ``planning`` (resolved cells), ``cell_runner`` (build, train, evaluate
and store one cell; skip and resume), ``executors`` (where the cells run: here, a process pool,
Ray), ``training``, ``evaluation``, ``store``. This module owns what concerns the whole folder:
the reference guard, the gate that refuses other settings before anything is written, the
shared run lock, data-parallel checks, and whether the report is due.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from drpo_bench.cell_runner import REPO_ROOT, CellRunner, RunSummary, run_cells_here
from drpo_bench.config import Suite
from drpo_bench.distributed import check_divisible
from drpo_bench.distributed import current as data_parallel
from drpo_bench.errors import UserError
from drpo_bench.locks import GATE_NAME, LOCK_NAME, FileLock, describe, holder_info, is_free
from drpo_bench.planning import Cell, plan_cells, redact
from drpo_bench.registry import METHODS
from drpo_bench.shared_eval import CACHE_DIR as EVAL_CACHE
from drpo_bench.store import CellFolder, CorruptCellError, read_json, write_json

__all__ = ["Cell", "CellRunner", "RunSummary", "check_output_dir", "plan_cells", "run_suite"]


def check_output_dir(output: Path, allow_reference: bool) -> None:
    """The committed reference results under results/ are never clobbered by accident."""
    reference = (REPO_ROOT / "results").resolve()
    resolved = output.resolve()
    if not allow_reference and (resolved == reference or reference in resolved.parents):
        raise UserError(
            f"output {output} is inside the committed reference results ({reference}). Runs write to "
            "runs/<suite> by default; pass --output elsewhere, or --update-reference to regenerate the reference on purpose."
        )


# ---- the whole suite -----------------------------------------------------------------------


def run_suite(suite: Suite, output: Path | None = None, *, allow_reference: bool = False, quiet: bool = False,
              shard: tuple[int, int] = (0, 1), console: Console | None = None, wait: float = 0.0) -> RunSummary:
    """Run the suite's cells (those of ``shard``) into ``output``.

    Several runs may work in one folder at once (e.g. shards): each cell is trained once, by
    whichever run gets to it first. A run whose settings differ from a live run's, or from cells
    already in the folder, is refused before it writes anything (``wait``: seconds to wait for
    the folder's gate).
    """
    output = Path(output or suite.output_dir)
    check_output_dir(output, allow_reference)
    console = console or Console(stderr=True)
    from drpo_bench.tuning_records import apply_tuning

    suite = apply_tuning(suite, output)  # a tuned method runs its record's chosen setting (docs/tuning.md)
    planned = plan_cells(suite)
    cells = [c for i, c in enumerate(planned) if i % shard[1] == shard[0]]
    for cell in cells:  # files a method reads (an offline dataset) are there before any cell trains
        entry = METHODS.get(cell.method.method)
        entry.cls.preflight(entry.parse_config(cell.method.args))
    dp = data_parallel()
    if dp.enabled:
        check_data_parallel(suite, cells, dp.world_size)
        if not dp.is_main:  # rank 0 checks in and holds the locks; the others follow it cell by cell
            refused = dp.broadcast(None)
            if refused is not None:
                raise UserError(f"rank 0 refused the run: {refused}")
            summary = run_cells_here(suite, output, cells, True, console)
            summary.report_due, summary.rank = False, dp.rank
            return summary
    try:
        run_lock = _check_in(suite, output, planned, cells, wait)
    except BaseException as exc:
        dp.broadcast(str(exc))  # the other ranks stop too
        raise
    dp.broadcast(None)
    from drpo_bench.executors import run_cells

    try:
        summary = run_cells(suite, output, cells, quiet, console)
    finally:
        run_lock.release()
    summary.report_due = report_due(output, planned)
    if summary.report_due:  # every cell is finished: the step-0 evaluations shared between them are not needed
        shutil.rmtree(output / EVAL_CACHE, ignore_errors=True)
    return summary


def _check_in(suite: Suite, output: Path, planned: list[Cell], cells: list[Cell], wait: float) -> FileLock:
    """Refuse other settings, then hold the folder's shared run lock and record this run's settings."""
    output.mkdir(parents=True, exist_ok=True)
    # the gate is held only while a run checks in (well under a second): always wait for it a while
    with FileLock(output / GATE_NAME, wait=max(wait, GATE_WAIT_SECONDS), what="drpo-bench run", record=False):
        live = not is_free(output / LOCK_NAME)
        settings_file = output / SETTINGS_NAME
        settings = _read_settings(settings_file) if live else {"cells": {}, "holders": []}
        refuse_other_settings(output, cells, settings if live else None)
        run_lock = FileLock(output / LOCK_NAME, shared=True).acquire()
        settings["cells"].update({c.id: c.fingerprint for c in planned})
        settings["holders"].append(holder_info())
        write_json(settings_file, settings)
        write_json(output / "suite.json", redact(suite.record()))
    return run_lock


def check_data_parallel(suite: Suite, cells: list[Cell], world_size: int) -> None:
    """Under a multi-process launch every process runs the same cells in this process's order (each
    cell a collective): no pool of cell processes, and every update splits evenly over the processes."""
    execution = suite.execution
    if execution.executor == "ray" or execution.jobs not in (None, 1):  # what was asked, however many cells
        asked = "--executor ray" if execution.executor == "ray" else f"jobs: {execution.jobs}"
        raise UserError(
            f"this is a launch of {world_size} processes training each cell together (data parallel); it cannot also "
            f"run cells in parallel ({asked}). Pass --jobs 1 (and no --executor ray), or run without accelerate "
            "launch / torchrun to use --jobs."
        )
    for cell in cells:
        if cell.trains:
            check_divisible(cell.budget.prompts_per_update, cell.budget.micro, world_size, cell.id)


def report_due(output: Path, planned: list[Cell]) -> bool:
    """Whether the report is to be written now: no run works in ``output`` any more and every planned
    cell is complete or failed (error.txt), so shards and jobs write one report, the last of them."""
    if not is_free(output / LOCK_NAME):
        return False
    for cell in planned:
        folder = CellFolder(output / cell.id)
        if folder.file(CellFolder.ERROR).exists():
            continue
        try:
            record = folder.read_cell()
        except CorruptCellError:
            continue  # the report names it
        if record is None or record.status != "complete":
            return False
    return True


#: how long a run waits for another run's check-in at the folder's gate (seconds)
GATE_WAIT_SECONDS = 60.0

#: the settings (cell id -> fingerprint) and holders of the runs live in a folder
SETTINGS_NAME = ".drpo-bench.settings.json"


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
        if isinstance(data.get("cells"), dict) and isinstance(data.get("holders"), list):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"cells": {}, "holders": []}


def refuse_other_settings(output: Path, cells: list[Cell], live: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is written, a run whose cells clash with a live run's settings or
    with cells (finished or checkpointed) already in the folder."""
    if live:
        clashes = [c.id for c in cells if live["cells"].get(c.id, c.fingerprint) != c.fingerprint]
        if clashes:
            holders = "; ".join(describe(h) for h in live["holders"][-3:])
            raise UserError(
                f"{output} is in use by a run with other settings for {len(clashes)} cell(s) ({', '.join(clashes[:3])}"
                f"{', ...' if len(clashes) > 3 else ''}): {holders}. Nothing was written. Wait for it, or use another --output."
            )
    clashes = []
    for cell in cells:
        folder = CellFolder(output / cell.id)
        if not folder.path.is_dir():
            continue
        try:
            record = folder.read_cell()
        except CorruptCellError:
            continue  # reported when the cell runs
        recorded = record.fingerprint if record is not None else None
        pointer = folder.file(CellFolder.CHECKPOINT)
        if recorded is None and pointer.exists():
            try:
                recorded = read_json(pointer).get("fingerprint")
            except (ValueError, OSError, AttributeError):
                continue
        if recorded is not None and recorded != cell.fingerprint:
            clashes.append(cell.id)
    if clashes:
        raise UserError(
            f"{output} holds {len(clashes)} cell(s) run with other settings ({', '.join(clashes[:4])}"
            f"{', ...' if len(clashes) > 4 else ''}); nothing was written. Use another --output, or delete those "
            "cell folders to rerun them with these settings."
        )

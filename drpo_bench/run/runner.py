"""Run a suite: plan its cells, check the run into the output folder, hand the cells to an executor.

The flow, one module each: ``planning`` (resolved cells), ``cell_runner`` (build, train, evaluate
and store one cell; skip and resume), ``executors`` (where the cells run: here, a process pool,
Ray), ``training``, ``evaluation``, ``store``. This module owns what concerns the whole folder:
the reference guard, the gate that refuses other settings before anything is written, the
shared run lock, data-parallel checks, and whether the report is due.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from drpo_bench.run.cell_runner import REPO_ROOT, CellRunner, RunSummary, run_cells_here
from drpo_bench.suite.config import Suite
from drpo_bench.run.distributed import check_divisible
from drpo_bench.run.distributed import current as data_parallel
from drpo_bench.errors import UserError
from drpo_bench.run.locks import GATE_NAME, LOCK_NAME, FileLock, LockedError, describe, holder_info, is_free
from drpo_bench.suite.planning import Cell, plan_cells, redact
from drpo_bench.registry import METHODS
from drpo_bench.run.shared_eval import CACHE_DIR as EVAL_CACHE
from drpo_bench.store import CellFolder, CellRecord, CorruptCellError, read_json, write_json

#: what a run does with cells whose recorded code hash differs from this checkout's (run --rerun-stale / --keep-stale)
STALE_STOP, STALE_RERUN, STALE_KEEP = "stop", "rerun", "keep"
STALE_POLICIES = (STALE_STOP, STALE_RERUN, STALE_KEEP)

__all__ = ["Cell", "CellRunner", "RunSummary", "check_output_dir", "plan_cells", "run_suite"]


def check_output_dir(output: Path, allow_reference: bool, what: str = "Runs write to runs/<suite> by default") -> None:
    """The committed reference results under results/ are never clobbered by accident, and are
    regenerated only from a clean checkout (so that the commit they name rebuilds them)."""
    reference = (REPO_ROOT / "results").resolve()
    resolved = output.resolve()
    if not (resolved == reference or reference in resolved.parents):
        return
    if not allow_reference:
        raise UserError(
            f"output {output} is inside the committed reference results ({reference}). {what}; "
            "pass --output elsewhere, or --update-reference to regenerate the reference on purpose."
        )
    from drpo_bench.suite.code_hash import git_state

    state = git_state()
    if state.commit is None or state.dirty_files:
        why = ("this is not a git checkout" if state.commit is None else
               f"the checkout has uncommitted changes ({', '.join(state.dirty_files[:6])}"
               f"{', ...' if len(state.dirty_files) > 6 else ''})")
        raise UserError(
            f"--update-reference writes the committed reference results, which must name a commit that rebuilds "
            f"them, but {why}. Commit or stash those changes (untracked code under drpo_bench/ or baselines/ too), "
            "then rerun; modified files under results/ do not count."
        )


# ---- the whole suite -----------------------------------------------------------------------


def run_suite(suite: Suite, output: Path | None = None, *, allow_reference: bool = False, quiet: bool = False,
              shard: tuple[int, int] = (0, 1), console: Console | None = None, wait: float = 0.0,
              stale: str = STALE_STOP) -> RunSummary:
    """Run the suite's cells (those of ``shard``) into ``output``.

    Several runs may work in one folder at once (e.g. shards): each cell is trained once, by
    whichever run gets to it first. A run whose settings differ from a live run's, or from cells
    already in the folder, is refused before it writes anything (``wait``: seconds to wait for
    the folder's gate). Cells made by other code (``stale``): see ``check_stale``.
    """
    if stale not in STALE_POLICIES:
        raise ValueError(f"stale must be one of {STALE_POLICIES}, not {stale!r}")
    output = Path(output or suite.output_dir)
    from drpo_bench.suite.code_hash import refresh

    refresh()  # the code and git state as they are now, not as an earlier run in this process saw them
    check_output_dir(output, allow_reference)
    console = console or Console(stderr=True)
    from drpo_bench.suite.tuning_records import apply_tuning

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
        run_lock = _check_in(suite, output, planned, cells, wait, stale)
    except BaseException as exc:
        dp.broadcast(str(exc))  # the other ranks stop too
        raise
    dp.broadcast(None)
    from drpo_bench.run.executors import run_cells

    try:
        summary = run_cells(suite, output, cells, quiet, console)
    finally:
        run_lock.release()
    summary.report_due = report_due(output, planned)
    if summary.report_due:  # every cell is finished: the step-0 evaluations shared between them are not needed
        shutil.rmtree(output / EVAL_CACHE, ignore_errors=True)
    return summary


def _check_in(suite: Suite, output: Path, planned: list[Cell], cells: list[Cell], wait: float,
              stale: str = STALE_STOP) -> FileLock:
    """Refuse other settings and (unless told what to do) cells made by other code, then hold the
    folder's shared run lock and record this run's settings."""
    output.mkdir(parents=True, exist_ok=True)
    # the gate is held only while a run checks in (well under a second): always wait for it a while
    with FileLock(output / GATE_NAME, wait=max(wait, GATE_WAIT_SECONDS), what="drpo-bench run", record=False):
        live = not is_free(output / LOCK_NAME)
        settings_file = output / SETTINGS_NAME
        settings = _read_settings(settings_file) if live else {"cells": {}, "holders": []}
        recorded = read_recorded(output, cells)  # each cell's cell.json and checkpoint, read once for both checks
        refuse_other_settings(output, cells, settings if live else None, recorded)
        check_stale(output, cells, stale, recorded)
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


# ---- cells made by other code ----------------------------------------------------------------


@dataclass(frozen=True)
class StaleCell:
    cell: Cell
    recorded: str | None  # the code hash the cell (or its checkpoint) recorded; None: not recorded
    changed: list[str]  # the files whose digest differs
    checkpoint: bool  # an interrupted cell's checkpoint, not a finished cell


@dataclass(frozen=True)
class Recorded:
    """What a cell's folder holds before a run: its cell.json record (None if there is none) and, when
    that is not a complete one, its checkpoint pointer as parsed (any JSON value; None if absent or
    unreadable: reported when the cell resumes)."""

    record: CellRecord | None
    checkpoint: Any


def read_recorded(output: Path, cells: list[Cell]) -> dict[str, Recorded]:
    """Each cell's :class:`Recorded` state, read once for the gate's checks (settings, code). Cells
    without a folder, or whose cell.json does not parse (reported when the cell runs), are left out."""
    states: dict[str, Recorded] = {}
    for cell in cells:
        folder = CellFolder(output / cell.id)
        if not folder.path.is_dir():
            continue
        try:
            record = folder.read_cell()
        except CorruptCellError:
            continue
        checkpoint = None
        pointer = folder.file(CellFolder.CHECKPOINT)
        if (record is None or record.status != "complete") and pointer.exists():
            try:
                checkpoint = read_json(pointer)
            except (ValueError, OSError):
                checkpoint = None
        states[cell.id] = Recorded(record, checkpoint)
    return states


def find_stale(output: Path, cells: list[Cell], recorded: dict[str, Recorded] | None = None) -> list[StaleCell]:
    """Cells in ``output`` (finished, or interrupted with a checkpoint) made by other code than this
    checkout's: their recorded code hash (``code.hash`` in cell.json or checkpoint.json) differs, or
    none was recorded. ``recorded``: the folders' states, if already read (``read_recorded``)."""
    from drpo_bench.suite.code_hash import changed_files

    recorded = read_recorded(output, cells) if recorded is None else recorded
    found = []
    for cell in cells:
        state = recorded.get(cell.id)
        if state is None:
            continue
        if state.record is not None and state.record.status == "complete":
            code, from_checkpoint = state.record.code, False
        elif state.checkpoint is not None:
            code, from_checkpoint = state.checkpoint.get("code") if isinstance(state.checkpoint, dict) else None, True
        else:
            continue
        code = code if isinstance(code, dict) else None
        if code is None or code.get("hash") != cell.code.hash:
            found.append(StaleCell(cell, (code or {}).get("hash"), changed_files(code, cell.code), from_checkpoint))
    return found


def _names(items: list[str], limit: int) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def stale_paragraph(output: Path, stale: list[StaleCell]) -> str:
    """One paragraph: which cells, which files changed, and the two ways out."""
    files = sorted({f for s in stale for f in s.changed})
    interrupted = [s.cell.id for s in stale if s.checkpoint]
    text = (f"{output} holds {len(stale)} cell(s) made by other code than this checkout's "
            f"({_names([s.cell.id for s in stale], 6)}); changed since: {_names(files, 8)}. Nothing was trained. "
            "Rerun with --rerun-stale to retrain exactly these cells (every other cell is kept as it is), or with "
            "--keep-stale to keep them (the report marks them as made by other code).")
    if interrupted:
        text += (f" {len(interrupted)} of them ({_names(interrupted, 3)}) hold only a checkpoint, which is never "
                 "resumed with other code: --keep-stale cannot keep those.")
    return text


def check_stale(output: Path, cells: list[Cell], policy: str,
                recorded: dict[str, Recorded] | None = None) -> list[StaleCell]:
    """Stop before training when ``output`` holds cells made by other code (``stop``); else retrain
    exactly them (``rerun``: their files are removed) or keep them, marked (``keep``: the cell folder
    gets ``kept_stale.json``, which the report reads). A checkpoint from other code is never kept."""
    stale = find_stale(output, cells, recorded)
    stale_ids = {s.cell.id for s in stale}
    for cell in cells:  # a cell kept stale before, made by this code again (e.g. an edit reverted)
        if cell.id not in stale_ids:
            CellFolder(output / cell.id).file(CellFolder.KEPT_STALE).unlink(missing_ok=True)
    if not stale:
        return stale
    if policy == STALE_STOP or (policy == STALE_KEEP and any(s.checkpoint for s in stale)):
        raise UserError(stale_paragraph(output, stale))
    for item in stale:
        folder = CellFolder(output / item.cell.id)
        if policy == STALE_KEEP:
            write_json(folder.file(CellFolder.KEPT_STALE), {
                "code_hash": item.recorded, "this_code_hash": item.cell.code.hash, "changed": item.changed})
            continue
        try:
            lock = FileLock(folder.file(LOCK_NAME), wait=0.0, what="run training this cell").acquire()
        except LockedError:
            raise UserError(f"cell {item.cell.id} in {output} is made by other code and another run is on it; "
                            "wait for that run, then rerun with --rerun-stale. Nothing was removed.") from None
        try:
            for entry in folder.path.iterdir():
                if entry.name != LOCK_NAME:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        finally:
            lock.release()
    return stale


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


def refuse_other_settings(output: Path, cells: list[Cell], live: dict[str, Any] | None = None,
                          recorded: dict[str, Recorded] | None = None) -> None:
    """Refuse, before anything is written, a run whose cells clash with a live run's settings or
    with cells (finished or checkpointed) already in the folder. ``recorded``: the folders' states,
    if already read (``read_recorded``)."""
    if live:
        clashes = [c.id for c in cells if live["cells"].get(c.id, c.fingerprint) != c.fingerprint]
        if clashes:
            holders = "; ".join(describe(h) for h in live["holders"][-3:])
            raise UserError(
                f"{output} is in use by a run with other settings for {len(clashes)} cell(s) ({', '.join(clashes[:3])}"
                f"{', ...' if len(clashes) > 3 else ''}): {holders}. Nothing was written. Wait for it, or use another --output."
            )
    recorded = read_recorded(output, cells) if recorded is None else recorded
    clashes = []
    for cell in cells:
        state = recorded.get(cell.id)
        if state is None:
            continue
        if state.record is not None:
            fingerprint = state.record.fingerprint
        else:
            fingerprint = state.checkpoint.get("fingerprint") if isinstance(state.checkpoint, dict) else None
        if fingerprint is not None and fingerprint != cell.fingerprint:
            clashes.append(cell.id)
    if clashes:
        raise UserError(
            f"{output} holds {len(clashes)} cell(s) run with other settings ({', '.join(clashes[:4])}"
            f"{', ...' if len(clashes) > 4 else ''}); nothing was written. Use another --output, or delete those "
            "cell folders to rerun them with these settings."
        )

"""Run a suite: plan its cells, then for each cell build, train, evaluate and store; skip and resume.

The flow, one module each: ``planning`` (resolved cells), ``training`` (the shared loop with
checkpoint and resume), ``evaluation`` (held-out metrics), ``store`` (the cell folder's typed
records). This module orchestrates them and shares reward and metric models between cells.
A cell's ``cell.json`` is written last: its presence with status "complete" means done.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from drpo_bench import __version__
from drpo_bench.config import ComponentSpec, Suite
from drpo_bench.errors import NonFiniteError, UserError
from drpo_bench.evaluation import evaluate, history_row
from drpo_bench.ledger import Ledger
from drpo_bench.locks import GATE_NAME, LOCK_NAME, FileLock, LockedError, describe, holder_info, is_free
from drpo_bench.methods import Method
from drpo_bench.metrics.base import Metric
from drpo_bench.metrics.reward_metric import RewardMetric
from drpo_bench.planning import Cell, plan_cells, redact
from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import GENERATORS, METHODS, METRICS, PROMPTS, REWARDS
from drpo_bench.store import CellFolder, CellRecord, CorruptCellError, read_json, write_json, write_text
from drpo_bench.training import drop_checkpoints, train_cell
from drpo_bench.yaml_strict import ensure_inside

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Cell", "CellRunner", "RunSummary", "check_output_dir", "plan_cells", "run_suite"]


def environment_info() -> dict[str, Any]:
    """Library versions, hardware and git hash: results describe where they came from."""
    versions = {"drpo_bench": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("diffusers", "transformers", "peft", "accelerate", "open_clip"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional libraries
            versions[name] = None
    try:
        git = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        git_hash = git.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if git.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        git_hash = None
    return {
        "versions": versions,
        "git": git_hash,
        "hardware": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(registry: Any, spec: ComponentSpec) -> Any:
    entry = registry.get(spec.name)
    return entry.cls(entry.parse_config(spec.args))


def check_output_dir(output: Path, allow_reference: bool) -> None:
    """The committed reference results under results/ are never clobbered by accident."""
    reference = (REPO_ROOT / "results").resolve()
    resolved = output.resolve()
    if not allow_reference and (resolved == reference or reference in resolved.parents):
        raise UserError(
            f"output {output} is inside the committed reference results ({reference}). Runs write to "
            "runs/<suite> by default; pass --output elsewhere, or --update-reference to regenerate the reference on purpose."
        )


class CellRunner:
    """Runs the cells of one suite, sharing reward and metric models between cells."""

    def __init__(self, suite: Suite, output: Path, console: Console | None = None, quiet: bool = False) -> None:
        self.suite, self.output = suite, output
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._rewards: dict[str, Any] = {}
        self._prompt_set: PromptSet | None = None
        self._env = environment_info()
        self.cell_wait: float | None = 0.0  # a busy cell is deferred (0) or waited for (None)
        self.execution: dict[str, Any] = {"executor": "local", "jobs": 1}  # how the cell ran (executors.py sets it)

    # ---- shared components -----------------------------------------------------------------
    def reward(self, alias: str, device: torch.device) -> Any:
        if alias not in self._rewards:
            self._rewards[alias] = build(REWARDS, self.suite.rewards[alias])
        return self._rewards[alias].to(device)

    def prompts(self, split: str) -> list[Prompt]:
        if self._prompt_set is None:
            self._prompt_set = build(PROMPTS, self.suite.prompts)
        prompts = self._prompt_set.split(split)
        if not prompts:
            raise UserError(f"prompt set {self.suite.prompts.name} has no prompts in split {split!r}")
        return prompts

    def metrics(self, device: torch.device) -> list[Metric]:
        built: list[Metric] = []
        for spec in self.suite.eval.metrics:
            if spec.name in self.suite.rewards:
                built.append(RewardMetric(self.reward(spec.name, device), spec.label, self.suite.eval.batch_size))
            else:
                built.append(build(METRICS, spec))
        return built

    # ---- one cell --------------------------------------------------------------------------
    def run(self, cell: Cell, progress: Progress | None) -> str:
        """Returns "skipped", "done" or "resumed"."""
        folder = CellFolder(ensure_inside(self.output, Path(cell.id)))  # ids are safe names; belt and braces
        folder.path.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(folder.file(LOCK_NAME), wait=self.cell_wait, what="run training this cell").acquire()
        except LockedError:
            return "busy"
        try:
            return self._run_locked(cell, folder, progress)
        finally:
            lock.release()

    def _periodic_eval(self, cell: Cell, folder: CellFolder, generator: Any, ledger: Ledger) -> Any:
        """eval.every: held-out metrics during training, appended to eval_history.jsonl."""
        if not cell.eval.every:
            return None

        def evaluate_at(step: int) -> tuple[dict[str, float], torch.Tensor]:
            record, _, images = evaluate(cell, generator, self.prompts(cell.eval.split), self.metrics(generator.device),
                                         max_prompts=cell.eval.every_max_prompts, return_grid=True)
            folder.append_eval_history(history_row(step, record, ledger))
            return {name: m.mean for name, m in record.metrics.items()}, images

        return evaluate_at

    def _run_locked(self, cell: Cell, folder: CellFolder, progress: Progress | None) -> str:
        fingerprint = cell.fingerprint
        record = folder.read_cell()
        if record is not None and record.status == "complete":
            if record.fingerprint != fingerprint:
                raise UserError(
                    f"cell {cell.id} in {self.output} was run with other settings (fingerprint "
                    f"{record.fingerprint} != {fingerprint}). Use another --output, or delete that cell folder to rerun it."
                )
            folder.verify(record)
            drop_checkpoints(folder)  # left behind by a kill between cell.json and the clean-up
            folder.remove_leftovers()
            return "skipped"
        folder.remove_leftovers()
        folder.file(CellFolder.ERROR).unlink(missing_ok=True)  # a previous failure, being retried
        started = time.time()
        seed_everything(cell.seed)
        generator = build(GENERATORS, cell.generator)
        method_entry = METHODS.get(cell.method.method)
        method: Method = method_entry.cls(method_entry.parse_config(cell.method.args))
        method.prepare_generator(generator)
        ledger = Ledger(generator.device, count_flops=cell.train.count_flops)
        resumed_from, reward_identity = None, None
        if cell.trains:
            assert cell.reward_alias is not None
            reward = self.reward(cell.reward_alias, generator.device)
            # a served reward says which reward, config and weights answered (drpo_bench.serve /info)
            reward_identity = reward.identity() if callable(getattr(reward, "identity", None)) else None
            train_prompts = [p.text for p in self.prompts("train")]
            resumed_from = train_cell(cell, folder, generator, method, reward, train_prompts, ledger, progress,
                                      None if self.quiet else self.console, logging=self.suite.logging,
                                      evaluate_at=self._periodic_eval(cell, folder, generator, ledger))
            generator.save_adapter(folder.file(CellFolder.ADAPTER))
        result, scores = evaluate(cell, generator, self.prompts(cell.eval.split), self.metrics(generator.device),
                                  folder.file(CellFolder.SAMPLES), keep_images=folder if cell.eval.keep_images else None)
        folder.write_scores(scores)
        folder.write_eval(result)
        folder.write_ledger(ledger.to_json())
        budget = cell.budget.model_dump()
        folder.write_cell(CellRecord(
            status="complete",
            cell_id=cell.id,
            fingerprint=fingerprint,
            suite=cell.suite,
            generator=cell.generator.model_dump(),
            method=cell.method.model_dump(),
            method_paper=method_entry.cls.paper,
            trains=cell.trains,
            needs_differentiable_reward=method_entry.cls.needs_differentiable_reward,
            train_reward={"alias": cell.reward_alias, **redact(cell.reward.model_dump())} if cell.reward else None,
            train_reward_identity=reward_identity,
            seed=cell.seed,
            budget={**budget, "effective_batch": cell.budget.effective} if cell.trains else None,
            train=cell.train.model_dump() if cell.trains else None,
            eval=redact(cell.eval.model_dump()),
            overrides=cell.overrides,
            budget_matched=cell.budget_matched,
            higher_is_better={k: v.higher_is_better for k, v in result.metrics.items()},
            metric_definitions={k: v.definition for k, v in result.metrics.items()},
            checksums=folder.checksums(),
            resumed_from_step=resumed_from,
            wall_seconds_this_run=time.time() - started,
            execution={**self.execution, "torch_threads": torch.get_num_threads()},
            **{**self._env, "hardware": {**self._env["hardware"], "torch_threads": torch.get_num_threads()}},
        ))
        drop_checkpoints(folder)
        return "resumed" if resumed_from else "done"


# ---- the whole suite -----------------------------------------------------------------------


@dataclass
class RunSummary:
    output: Path
    statuses: dict[str, str]  # cell id -> skipped | done | resumed | failed
    failures: dict[str, str]
    report_due: bool = True  # every planned cell finished or failed, no other run (shard) still in the folder


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
        write_json(output / "suite.json", redact(suite.model_dump(mode="json")))
    from drpo_bench.executors import run_cells

    try:
        summary = run_cells(suite, output, cells, quiet, console)
    finally:
        run_lock.release()
    summary.report_due = report_due(output, planned)
    return summary


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


def _run_cells(suite: Suite, output: Path, cells: list[Cell], quiet: bool, console: Console) -> RunSummary:
    runner = CellRunner(suite, output, console, quiet)
    statuses: dict[str, str] = {}
    failures: dict[str, str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        overall = progress.add_task(f"[bold]{suite.name}[/]: cells", total=len(cells))
        queue, deferred = list(cells), []
        while queue or deferred:
            if not queue:  # only cells another run was on are left: now wait for each
                queue, deferred = deferred, []
                runner.cell_wait = None
            cell = queue.pop(0)
            status, failure = attempt(runner, cell, progress, console)
            if status == "busy":  # another run is on it: do the others first, then wait for it
                deferred.append(cell)
                continue
            statuses[cell.id] = status
            if failure is not None:
                failures[cell.id] = failure
            progress.update(overall, advance=1)
    return RunSummary(output, statuses, failures)


def attempt(runner: CellRunner, cell: Cell, progress: Progress | None, console: Console) -> tuple[str, str | None]:
    """Run one cell: (status, failure message or None). A failing cell writes its error.txt and
    is reported; a UserError (e.g. a cell run with other settings) propagates and stops the run."""
    error_file = runner.output / cell.id / CellFolder.ERROR
    try:
        return runner.run(cell, progress), None
    except CorruptCellError as exc:  # a clear message, no traceback; the other cells go on
        console.print(f"[red]cell {cell.id}: {exc}[/]")
        return "failed", str(exc)
    except UserError:
        raise
    except NonFiniteError as exc:  # a diagnosis, not a traceback: which update, phase, value
        write_text(error_file, f"{exc}\n\nThe cell stopped; the suite went on. Fix the cause and rerun: "
                               "the cell restarts from its last checkpoint.\n")
        console.print(f"[red]cell {cell.id} failed: {exc} (in {error_file})[/]")
        return "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others
        failure = f"{type(exc).__name__}: {exc}"
        write_text(error_file, traceback.format_exc())
        console.print(f"[red]cell {cell.id} failed: {failure} (traceback in {error_file})[/]")
        return "failed", failure

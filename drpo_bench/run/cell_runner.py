"""One suite's cells, one after another in this process: build each cell's generator, method,
reward and metrics (shared between cells), train, evaluate and store; skip a finished cell (its
checksums verified) and resume an interrupted one. ``runner.run_suite`` checks a run in and hands
the cells to ``executors``, which runs them here (``run_cells_here``) or in worker processes that
call ``CellRunner`` and ``attempt`` themselves.
A cell's ``cell.json`` is written last: its presence with status "complete" means done.
"""

from __future__ import annotations

import os
import platform
import random
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
from drpo_bench.suite.config import ComponentSpec, Suite
from drpo_bench.run.distributed import RankZeroFailed, combine_ledgers
from drpo_bench.run.distributed import current as data_parallel
from drpo_bench.errors import NonFiniteError, UserError
from drpo_bench.run.evaluation import HISTORY_FIELDS, evaluate, history_row
from drpo_bench.compute.ledger import Ledger
from drpo_bench.run.locks import LOCK_NAME, FileLock, LockedError
from drpo_bench.methods import Method
from drpo_bench.metrics.base import Metric
from drpo_bench.metrics.reward_metric import RewardMetric
from drpo_bench.suite.planning import Cell, redact
from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import GENERATORS, METHODS, METRICS, PROMPTS, REWARDS
from drpo_bench.run.shared_eval import shared_step0, step0_key
from drpo_bench.store import CellFolder, CellRecord, CorruptCellError, write_text
from drpo_bench.run.training import drop_checkpoints, train_cell
from drpo_bench.suite.yaml_strict import ensure_inside

REPO_ROOT = Path(__file__).resolve().parents[2]


def environment_info() -> dict[str, Any]:
    """Library versions, hardware and git hash: results describe where they came from."""
    versions = {"drpo_bench": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("diffusers", "transformers", "peft", "accelerate", "open_clip"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional libraries
            versions[name] = None
    from drpo_bench.suite.code_hash import git_state

    # <commit>[-dirty]: dirty = modified tracked files outside results/, or untracked code (code_hash.git_state)
    git_hash = git_state().describe()
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
        # cell id -> (eval record, per-image scores) of the final evaluation, when the last update's periodic
        # evaluation made it (the generator is the same then; the history row reads its first prompts)
        self._final_eval: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
        self._eval_seconds: dict[str, float] = {}  # cell id -> seconds in its held-out evaluations so far

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
        dp = data_parallel()
        if not dp.is_main:  # a data-parallel rank > 0 follows rank 0, which locks and decides
            decision = dp.broadcast(None)
            if isinstance(decision, tuple):
                raise RankZeroFailed(f"rank 0: {decision[1]}")
            return self._run_locked(cell, folder, progress) if decision == "train" else decision
        folder.path.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(folder.file(LOCK_NAME), wait=self.cell_wait, what="run training this cell").acquire()
        except LockedError:
            dp.broadcast("busy")
            return "busy"
        try:
            return self._run_locked(cell, folder, progress)
        finally:
            lock.release()

    def _periodic_eval(self, cell: Cell, folder: CellFolder, generator: Any, ledger: Ledger) -> Any:
        """eval.every: held-out metrics during training, appended to eval_history.jsonl."""
        if not cell.eval.every:
            return None

        def compute(step: int) -> tuple[dict[str, Any], torch.Tensor]:
            started = time.perf_counter()
            try:
                return compute_now(step)
            finally:
                self._eval_seconds[cell.id] = self._eval_seconds.get(cell.id, 0.0) + time.perf_counter() - started

        def compute_now(step: int) -> tuple[dict[str, Any], torch.Tensor]:
            if step == cell.budget.steps:  # the last one: the final evaluation, done now, with its first prompts
                record, scores, images, head = self._final_evaluation(cell, folder, generator, head=True)
                self._final_eval[cell.id] = (record, scores)  # _evaluate_and_store reuses it
                return history_row(step, head, ledger), images
            record, _, images = evaluate(cell, generator, self.prompts(cell.eval.split), self.metrics(generator.device),
                                         max_prompts=cell.eval.every_max_prompts, return_grid=True)
            return history_row(step, record, ledger), images

        def evaluate_at(step: int) -> tuple[dict[str, float], torch.Tensor]:
            if step == 0:  # the same generator for every trained cell of this seed: evaluated once (shared_eval.py)
                key = step0_key(cell, generator, self.suite.rewards)
                row, images = shared_step0(self.output, key, lambda: compute(0))
            else:
                row, images = compute(step)
            folder.append_eval_history(row)
            return {name: value for name, value in row.items() if name not in HISTORY_FIELDS}, images

        return evaluate_at

    def _final_evaluation(self, cell: Cell, folder: CellFolder, generator: Any, head: bool = False) -> tuple[Any, ...]:
        """The cell's evaluation on its whole eval split: writes the samples grid and keeps images
        where the suite asks; ``head``: also the grid and the metrics of the first
        ``every_max_prompts`` prompts, which are the step-N history row (``evaluate``'s 4-tuple)."""
        prompts = self.prompts(cell.eval.split)
        extra = {"return_grid": True, "head_prompts": cell.eval.every_max_prompts or len(prompts)} if head else {}
        return evaluate(cell, generator, prompts, self.metrics(generator.device), folder.file(CellFolder.SAMPLES),
                        keep_images=folder if cell.eval.keep_images else None, **extra)

    def _evaluate_and_offer_step0(self, cell: Cell, folder: CellFolder, generator: Any, ledger: Ledger
                                  ) -> tuple[Any, Any]:
        """A cell that does not train (the base row) holds the generator every trained cell of its
        seed evaluates at step 0, and its final evaluation's first ``every_max_prompts`` prompts are
        that evaluation (the same rows of the same eval noise): it leaves the step-0 entry for them
        (shared_eval.py), so no trained cell pays for it. Where the key differs (a method whose
        ``prepare_generator`` changes the generator), the trained cells compute their own as before."""
        record, scores, images, head = self._final_evaluation(cell, folder, generator, head=True)
        key = step0_key(cell, generator, self.suite.rewards)
        shared_step0(self.output, key, lambda: (history_row(0, head, ledger), images))
        return record, scores

    def _run_locked(self, cell: Cell, folder: CellFolder, progress: Progress | None) -> str:
        dp = data_parallel()
        if dp.is_main:
            try:
                decision = self._prepare(cell, folder)
            except BaseException as exc:
                dp.broadcast(("failed", f"{type(exc).__name__}: {exc}"))
                raise
            dp.broadcast(decision)
            if decision == "skipped":
                return decision
        elif not cell.trains:  # nothing to train: rank 0 evaluates alone
            dp.barrier()
            return "done"
        started = time.time()
        self._final_eval.pop(cell.id, None)  # never one left by an earlier, failed attempt
        self._eval_seconds.pop(cell.id, None)
        cell.code  # noqa: B018 - the code hash as the cell starts (what it records, checkpoints and resumes against)
        seed_everything(cell.seed)
        generator = build(GENERATORS, cell.generator)
        method_entry = METHODS.get(cell.method.method)
        method: Method = method_entry.cls(method_entry.parse_config(cell.method.args))
        method.prepare_generator(generator)
        ledger = Ledger(generator.device, count_flops=cell.train.count_flops)
        resumed_from, reward_identity, rank_ledgers = None, None, None
        if cell.trains:
            assert cell.reward_alias is not None
            reward = self.reward(cell.reward_alias, generator.device)
            # a served reward says which reward, config and weights answered (drpo_bench.commands.serve /info)
            reward_identity = reward.identity() if callable(getattr(reward, "identity", None)) else None
            train_prompts = [p.text for p in self.prompts("train")]
            resumed_from = train_cell(cell, folder, generator, method, reward, train_prompts, ledger,
                                      progress if dp.is_main else None, None if self.quiet else self.console,
                                      logging=self.suite.logging,
                                      evaluate_at=self._periodic_eval(cell, folder, generator, ledger),
                                      reward_identity=reward_identity)
            rank_ledgers = dp.gather(ledger.summary()) if dp.enabled else None
            if not dp.is_main:  # rank 0 alone saves, evaluates and writes the cell; the others wait
                dp.barrier()
                return "resumed" if resumed_from else "done"
            generator.save_adapter(folder.file(CellFolder.ADAPTER))
        try:
            return self._evaluate_and_store(cell, folder, generator, method_entry, ledger, started, resumed_from,
                                            reward_identity, rank_ledgers)
        finally:
            dp.barrier()  # (data parallel) the other ranks go on to the next cell together with rank 0

    def _prepare(self, cell: Cell, folder: CellFolder) -> str:
        """A complete cell is verified and "skipped"; otherwise its leftovers are cleared: "train"."""
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
        return "train"

    def _evaluate_and_store(self, cell: Cell, folder: CellFolder, generator: Any, method_entry: Any, ledger: Ledger,
                            started: float, resumed_from: int | None, reward_identity: Any,
                            rank_ledgers: list[dict[str, Any]] | None) -> str:
        fingerprint = cell.fingerprint
        final = self._final_eval.pop(cell.id, None)  # made at the last update's periodic evaluation, if any
        eval_started = time.perf_counter()
        if final is None and not cell.trains and cell.eval.every:
            final = self._evaluate_and_offer_step0(cell, folder, generator, ledger)
        result, scores = final if final is not None else self._final_evaluation(cell, folder, generator)
        eval_seconds = self._eval_seconds.pop(cell.id, 0.0) + time.perf_counter() - eval_started
        folder.write_scores(scores)
        folder.write_eval(result)
        ledger_json = ledger.to_json()
        if rank_ledgers is not None:  # data parallel: the total FLOPs, and each rank's own figures
            ledger_json["summary"] = combine_ledgers(rank_ledgers)
        folder.write_ledger(ledger_json)
        budget = cell.budget.model_dump()
        folder.write_cell(CellRecord(
            status="complete",
            cell_id=cell.id,
            fingerprint=fingerprint,
            suite=cell.suite,
            generator=cell.generator.model_dump(),
            method=cell.method.record(),
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
            eval_seconds_this_run=eval_seconds,
            code=cell.code.record(),
            execution={**self.execution, "torch_threads": torch.get_num_threads(),
                       **({"world_size": data_parallel().world_size} if data_parallel().enabled else {})},
            **{**self._env, "hardware": {**self._env["hardware"], "torch_threads": torch.get_num_threads()}},
        ))
        drop_checkpoints(folder)
        return "resumed" if resumed_from else "done"


@dataclass
class RunSummary:
    output: Path
    statuses: dict[str, str]  # cell id -> skipped | done | resumed | failed
    failures: dict[str, str]
    report_due: bool = True  # every planned cell finished or failed, no other run (shard) still in the folder
    rank: int = 0  # a data-parallel launch's process (rank 0 reports)


def run_cells_here(suite: Suite, output: Path, cells: list[Cell], quiet: bool, console: Console) -> RunSummary:
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
    except RankZeroFailed as exc:  # (data parallel) rank 0 failed this cell before training: it says why
        return "failed", str(exc)
    except UserError:
        raise
    except NonFiniteError as exc:  # a diagnosis, not a traceback: which update, phase, value
        if not data_parallel().is_main:  # raised on every rank together; rank 0 writes error.txt
            return "failed", str(exc)
        write_text(error_file, f"{exc}\n\nThe cell stopped; the suite went on. Fix the cause and rerun: "
                               "the cell restarts from its last checkpoint.\n")
        console.print(f"[red]cell {cell.id} failed: {exc} (in {error_file})[/]")
        return "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others
        failure = f"{type(exc).__name__}: {exc}"
        if data_parallel().enabled:  # the other ranks are inside this cell's collectives: stop the launch
            if data_parallel().is_main:
                write_text(error_file, traceback.format_exc())
            raise
        write_text(error_file, traceback.format_exc())
        console.print(f"[red]cell {cell.id} failed: {failure} (traceback in {error_file})[/]")
        return "failed", failure

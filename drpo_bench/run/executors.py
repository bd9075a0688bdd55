"""Run a list of cells somewhere and collect their outcomes: in this process, in a pool of local
processes, or as tasks on a Ray cluster.

A suite's ``execution:`` section (``config.ExecutionConfig``) or the run command's flags choose::

    drpo-bench run suites/quickstart.yaml --jobs auto              # one process per cell slot, here
    drpo-bench run suites/quickstart.yaml --jobs 4 --threads-per-cell 2
    drpo-bench run suites/paper/sd_turbo.yaml --executor ray --address auto   # an existing cluster

- ``jobs: 1`` (the default) runs the cells one after another in the run's own process, as
  always (``threads_per_cell``, when given, sets its torch threads). ``jobs: N`` starts N worker
  processes (multiprocessing's spawn context); each takes one cell at a time, with
  ``threads_per_cell`` torch threads (default: cores // jobs) and, where CUDA devices are visible
  and the generator runs on CUDA, its own GPU (slot i gets device i mod #GPUs, set through
  CUDA_VISIBLE_DEVICES, so inside a cell it is ``cuda`` / ``cuda:0``). ``auto`` = min(cells, GPUs)
  on CUDA generators, else min(cells, cores).
- ``executor: ray`` makes each cell a Ray remote task asking for ``num_cpus = threads_per_cell``
  and ``num_gpus = gpus_per_cell`` (default 1 on CUDA generators, else 0); ``address`` names an
  existing cluster, none starts a local one. Every node must have this drpo-bench installed and
  see the output folder at the same path (a shared file system): the cells write there directly.

Nothing here changes a cell's result or fingerprint, except that the number of CPU threads can
change float rounding (a reduction split over more threads adds in another order): compare runs
at the same ``threads_per_cell`` for bitwise equality. The parent process keeps the folder's run
lock, shows one progress display, skips complete cells itself (checksums verified), and collects
(status, failure) per cell; the per-cell locks (``locks.py``) still keep other runs off a cell.
A cell that fails, or whose worker process dies, is reported like any failed cell; the others go on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from drpo_bench.errors import UserError

if TYPE_CHECKING:
    from drpo_bench.suite.config import ExecutionConfig, Suite
    from drpo_bench.suite.planning import Cell
    from drpo_bench.run.cell_runner import RunSummary

RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install 'drpo-bench[ray]'"
POLL_S = 0.1  # how often the parent checks for events and dead workers
STOP_WAIT_S = 10.0  # how long a worker gets to exit after being told to stop (then it is terminated)


# ---- what runs where -----------------------------------------------------------------------


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return []
    listed = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def uses_cuda(cells: list[Cell]) -> bool:
    """Whether the cells' generators would run on CUDA here: a ``device`` setting of ``auto`` or
    ``cuda...`` (a generator without one, like the toy world's, runs on CPU)."""
    from drpo_bench.registry import GENERATORS

    for cell in cells:
        config = GENERATORS.get(cell.generator.name).parse_config(cell.generator.args)
        device = str(getattr(config, "device", "cpu") or "cpu")
        if device == "auto" or device.startswith("cuda"):
            return True
    return False


@dataclass(frozen=True)
class ExecutionPlan:
    """The resolved ``execution:`` settings for one run."""

    executor: str  # local | ray
    jobs: int | None  # cells at once (ray: None = as many as the cluster fits)
    threads: int | None  # torch threads per cell; None = leave the process's setting (jobs 1, nothing asked)
    gpus: list[str] = field(default_factory=list)  # local: CUDA devices handed out round-robin to the slots
    gpus_per_cell: float = 0.0  # ray: the num_gpus of each task
    address: str | None = None  # ray: the cluster to join; None = start a local one

    def describe(self, n_cells: int) -> str:
        where = f"on Ray ({self.address or 'a local cluster'})" if self.executor == "ray" else "in local processes"
        jobs = "as many as fit" if self.jobs is None else str(self.jobs)
        gpus = f", {len(self.gpus)} GPU(s) round-robin" if self.gpus else (
            f", {self.gpus_per_cell:g} GPU(s) each" if self.gpus_per_cell else "")
        return f"{n_cells} cell(s) {where}: {jobs} at once, {self.threads or 'default'} thread(s) each{gpus}"


def plan_execution(execution: ExecutionConfig, cells: list[Cell], *, cluster: dict[str, float] | None = None) -> ExecutionPlan:
    """Resolve ``auto`` and the defaults against this machine (or, for Ray, ``cluster``'s resources)."""
    n = max(1, len(cells))
    if execution.executor == "ray":
        cluster = cluster or {}
        cuda = bool(cluster.get("GPU")) and uses_cuda(cells)
        gpus_per_cell = execution.gpus_per_cell if execution.gpus_per_cell is not None else (1.0 if cuda else 0.0)
        jobs = None if execution.jobs in (None, "auto") else int(execution.jobs)
        width = jobs or min(n, int(cluster.get("GPU", 0)) if gpus_per_cell else int(cluster.get("CPU", 1))) or 1
        threads = execution.threads_per_cell or max(1, int(cluster.get("CPU", cpu_cores())) // width)
        return ExecutionPlan("ray", jobs, threads, gpus_per_cell=gpus_per_cell, address=execution.address)
    gpus = visible_gpus() if uses_cuda(cells) else []
    jobs = min(n, len(gpus) or cpu_cores()) if execution.jobs == "auto" else min(n, int(execution.jobs or 1))
    if jobs == 1:
        return ExecutionPlan("local", 1, execution.threads_per_cell)  # in this process, as always
    return ExecutionPlan("local", jobs, execution.threads_per_cell or max(1, cpu_cores() // jobs), gpus)


def run_cells(suite: Suite, output: Path, cells: list[Cell], quiet: bool, console: Console) -> RunSummary:
    """Run ``cells`` of ``suite`` into ``output`` as the suite's ``execution:`` says."""
    from drpo_bench.run.cell_runner import run_cells_here

    if suite.execution.executor == "ray":
        return RayExecutor(suite, output, quiet, console).run(cells)
    plan = plan_execution(suite.execution, cells)
    if plan.jobs == 1:
        import torch

        before = torch.get_num_threads()
        if plan.threads:
            torch.set_num_threads(plan.threads)
        try:
            return run_cells_here(suite, output, cells, quiet, console)
        finally:
            torch.set_num_threads(before)
    return LocalPool(suite, output, plan, quiet, console).run(cells)


# ---- the parent's bookkeeping (shared by the local pool and Ray) ---------------------------


class TrainingTimeRemaining(ProgressColumn):
    """The suite's ETA from its training cells alone: (wall seconds since the first training cell
    was dispatched) x (training cells left) / (training cells finished). Cells that only evaluate
    (base) finish in seconds and skipped cells in none, so rich's own rate would promise an end long
    before the training cells are done ("2/4 ... ETA 0:00:11" with two trainings left)."""

    def render(self, task: Any) -> Text:
        left, done, start = task.fields.get("train_left"), task.fields.get("train_done", 0), task.fields.get("train_start")
        if left is None:
            return Text("")
        if left == 0:
            return Text("-:--:--", style="progress.remaining")
        if not done or start is None:
            return Text("?:??:??", style="progress.remaining")  # no training cell has finished: no rate yet
        seconds = (time.monotonic() - start) * left / done
        return Text(str(datetime.timedelta(seconds=int(seconds))), style="progress.remaining")


class _Collector:
    """One progress display and the (status, failure) of each cell."""

    COLUMNS = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TrainingTimeRemaining())

    def __init__(self, suite: Suite, output: Path, cells: list[Cell], quiet: bool, console: Console) -> None:
        self.suite, self.output, self.cells, self.console = suite, output, cells, console
        self.statuses: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.abort: str | None = None  # a UserError from a cell: dispatch nothing more, then raise it
        self.progress = Progress(*self.COLUMNS, console=console, disable=quiet, transient=False)
        self.trains = {c.id: c.trains for c in cells}
        self.eta = {"train_left": sum(self.trains.values()), "train_done": 0, "train_start": None}
        self.overall = self.progress.add_task(f"[bold]{suite.name}[/]: cells", total=len(cells), **self.eta)

    def skip_complete(self) -> list[Cell]:
        """Verify and skip complete cells here (no worker needed); the rest, in plan order."""
        from drpo_bench.run.cell_runner import CellRunner, attempt
        from drpo_bench.store import CellFolder, CorruptCellError

        runner, rest = None, []
        for cell in self.cells:
            try:
                record = CellFolder(self.output / cell.id).read_cell()
            except CorruptCellError:
                record = None  # the worker reports it
            if record is None or record.status != "complete":
                rest.append(cell)
                continue
            runner = runner or CellRunner(self.suite, self.output, self.console, quiet=True)
            status, failure = attempt(runner, cell, None, self.console)
            if status == "busy":
                rest.append(cell)
            else:
                self.record(cell.id, status, failure)
        return rest

    def record(self, cell_id: str, status: str, failure: str | None) -> None:
        self.statuses[cell_id] = status
        if failure is not None:
            self.failures[cell_id] = failure
        if self.trains.get(cell_id):
            self.eta["train_left"] -= 1
            if status != "skipped":  # a finished training: the rate's unit
                self.eta["train_done"] += 1
        self.progress.update(self.overall, advance=1, **self.eta)

    def dispatched(self, cell_id: str) -> None:
        """A cell starts in a worker: the first training one starts the ETA's clock."""
        if self.trains.get(cell_id) and self.eta["train_start"] is None:
            self.eta["train_start"] = time.monotonic()
            self.progress.update(self.overall, **self.eta)

    def crashed(self, cell_id: str, why: str) -> None:
        """The process running ``cell_id`` died: error.txt says so, the cell is reported failed."""
        from drpo_bench.store import CellFolder, write_text

        error_file = self.output / cell_id / CellFolder.ERROR
        write_text(error_file, f"{why}\n\nThe cell stopped; the suite went on. Rerun: the cell restarts from its "
                               "last checkpoint.\n")
        self.console.print(f"[red]cell {cell_id} failed: {why} (in {error_file})[/]")
        self.record(cell_id, "failed", why)

    def summary(self) -> RunSummary:
        from drpo_bench.run.cell_runner import RunSummary

        if self.abort is not None:
            raise UserError(self.abort)
        order = [c.id for c in self.cells]
        return RunSummary(self.output, {k: self.statuses[k] for k in order if k in self.statuses},
                          {k: self.failures[k] for k in order if k in self.failures})


# ---- local processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One worker process: its index, torch threads and CUDA device (None: CPU only)."""

    index: int
    threads: int
    gpu: str | None
    jobs: int


class _EventStream:
    """A file for a worker's rich Console: each flushed chunk of text goes to the parent, which prints it."""

    def __init__(self, events: Any) -> None:
        self.events, self.buffer = events, []

    def write(self, text: str) -> int:
        self.buffer.append(text)
        return len(text)

    def flush(self) -> None:
        if self.buffer:
            self.events.put(("print", "".join(self.buffer)))
            self.buffer = []

    def isatty(self) -> bool:
        return False


class _ProgressProxy:
    """The rich.Progress calls a cell makes (add_task, update, advance, remove_task), forwarded to the
    parent's display: a worker shows its cell's update bar there."""

    FIELDS = ("description", "total", "completed", "advance")

    def __init__(self, events: Any, slot: int) -> None:
        self.events, self.slot, self._next = events, slot, 0

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_: Any) -> int:
        self._next += 1
        self.events.put(("task", self.slot, self._next, "add", {"description": description, "total": total,
                                                                 "completed": completed}))
        return self._next

    def update(self, task: int, **changes: Any) -> None:
        self.events.put(("task", self.slot, task, "update", {k: v for k, v in changes.items() if k in self.FIELDS}))

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def remove_task(self, task: int) -> None:
        self.events.put(("task", self.slot, task, "remove", {}))


def _worker_main(slot: Slot, suite: Suite, output: str, quiet: bool, console_style: dict[str, Any],
                 tasks: Any, events: Any) -> None:
    """A worker process: its own threads and device, then one cell per task until told to stop."""
    if slot.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu  # before anything touches CUDA: `cuda` is this GPU
    try:
        import torch

        from drpo_bench.suite.planning import plan_cells
        from drpo_bench.run.cell_runner import CellRunner, attempt

        torch.set_num_threads(slot.threads)
        console = Console(file=_EventStream(events), **console_style)  # type: ignore[arg-type]
        runner = CellRunner(suite, Path(output), console, quiet)
        runner.execution = {"executor": "local", "jobs": slot.jobs, "slot": slot.index,
                            "device": f"cuda (CUDA_VISIBLE_DEVICES={slot.gpu})" if slot.gpu is not None else "cpu"}
        cells = {c.id: c for c in plan_cells(suite)}
        progress = _ProgressProxy(events, slot.index)
        setup_error = None
    except Exception as exc:  # noqa: BLE001 - reported for each cell sent here
        setup_error = f"worker {slot.index} could not start: {type(exc).__name__}: {exc}"
    try:
        while (item := tasks.get()) is not None:
            cell_id, wait = item
            if setup_error is not None:
                events.put(("end", slot.index, cell_id, "failed", setup_error))
                continue
            runner.cell_wait = wait
            try:
                status, failure = attempt(runner, cells[cell_id], progress, console)  # type: ignore[arg-type]
            except UserError as exc:
                status, failure = "usererror", str(exc)
            except BaseException as exc:  # noqa: BLE001 - e.g. a SystemExit from a library: still this cell's
                status, failure = "failed", f"{type(exc).__name__}: {exc}"
            console.file.flush()
            events.put(("end", slot.index, cell_id, status, failure))
    except KeyboardInterrupt:
        pass  # the parent was interrupted too and says so


class LocalPool:
    """``plan.jobs`` worker processes on this machine, each running one cell at a time."""

    def __init__(self, suite: Suite, output: Path, plan: ExecutionPlan, quiet: bool, console: Console) -> None:
        import multiprocessing

        self.suite, self.output, self.plan, self.quiet, self.console = suite, output, plan, quiet, console
        self.ctx = multiprocessing.get_context("spawn")  # no fork: torch's threads and CUDA do not survive it
        self.events = self.ctx.Queue()
        self.slots = [Slot(i, plan.threads or 1, plan.gpus[i % len(plan.gpus)] if plan.gpus else None, plan.jobs or 1)
                      for i in range(plan.jobs or 1)]
        self.workers: dict[int, tuple[Any, Any]] = {}  # slot -> (process, its task queue)
        self.style = {"force_terminal": console.is_terminal, "color_system": console.color_system,
                      "width": console.width, "no_color": console.no_color}

    def _start(self, slot: Slot) -> None:
        tasks = self.ctx.Queue()
        process = self.ctx.Process(target=_worker_main, name=f"drpo-bench-cell-{slot.index}", daemon=True,
                                   args=(slot, self.suite, str(self.output), self.quiet, self.style, tasks, self.events))
        process.start()
        self.workers[slot.index] = (process, tasks)

    def run(self, cells: list[Cell]) -> RunSummary:
        collect = _Collector(self.suite, self.output, cells, self.quiet, self.console)
        with collect.progress:
            pending = deque((c.id, 0.0) for c in collect.skip_complete())  # (cell, seconds to wait for its lock)
            if pending and not self.quiet:
                self.console.print(f"[dim]{self.plan.describe(len(pending))}[/]")
            self.slots = self.slots[: max(1, min(len(self.slots), len(pending)))]
            try:
                self._loop(collect, pending)
            finally:
                self._stop()
        return collect.summary()

    def _loop(self, collect: _Collector, pending: deque[tuple[str, float | None]]) -> None:
        self.collect, self.pending = collect, pending
        self.busy: dict[int, str] = {}  # slot -> cell id
        self.deferred: list[str] = []  # cells another run was on: waited for once nothing else is left
        self.tasks: dict[tuple[int, int], TaskID] = {}  # (slot, worker's task number) -> display task
        while pending or self.deferred or self.busy:
            if not pending and self.deferred and collect.abort is None:
                pending.extend((cell_id, None) for cell_id in self.deferred)
                self.deferred.clear()
            for slot in self.slots:
                if slot.index in self.busy or not pending or collect.abort is not None:
                    continue
                if slot.index not in self.workers or self.workers[slot.index][0].exitcode is not None:
                    self._start(slot)  # first use, or its idle worker died
                cell_id, wait = pending.popleft()
                self.workers[slot.index][1].put((cell_id, wait))
                self.busy[slot.index] = cell_id
                collect.dispatched(cell_id)
            try:
                self._handle(self.events.get(timeout=POLL_S))
            except queue.Empty:
                self._reap()

    def _handle(self, event: tuple[Any, ...]) -> None:
        collect, progress, tasks = self.collect, self.collect.progress, self.tasks
        kind = event[0]
        if kind == "print":
            self.console.print(Text.from_ansi(event[1].rstrip("\n")))
        elif kind == "task":
            _, slot_index, number, action, changes = event
            key = (slot_index, number)
            if action == "add":
                tasks[key] = progress.add_task(**changes)
            elif action == "update" and key in tasks:
                progress.update(tasks[key], **changes)
            elif action == "remove" and key in tasks:
                progress.remove_task(tasks.pop(key))
        elif kind == "end":
            _, slot_index, cell_id, status, failure = event
            self.busy.pop(slot_index, None)
            for key in [k for k in tasks if k[0] == slot_index]:  # a bar left by a failed cell
                progress.remove_task(tasks.pop(key))
            if status == "busy":
                self.deferred.append(cell_id)
            elif status == "usererror":
                collect.abort = collect.abort or f"cell {cell_id}: {failure}"
                self.pending.clear()
                self.deferred.clear()
            else:
                collect.record(cell_id, status, failure)

    def _reap(self) -> None:
        """A worker that died mid-cell (killed, out of memory, a crash in native code) fails that cell
        only; its slot gets a fresh worker for the next cell."""
        for slot_index in list(self.busy):
            process, _ = self.workers[slot_index]
            if process.exitcode is None:
                continue
            try:  # its last words may still be in the queue
                while True:
                    self._handle(self.events.get(timeout=POLL_S))
            except queue.Empty:
                pass
            del self.workers[slot_index]
            if slot_index not in self.busy:  # it had reported its cell after all
                continue
            cell_id = self.busy.pop(slot_index)
            for key in [k for k in self.tasks if k[0] == slot_index]:
                self.collect.progress.remove_task(self.tasks.pop(key))
            code = process.exitcode
            why = f"its worker process died (exit code {code}" + (f", killed by signal {-code}" if code < 0 else "")
            self.collect.crashed(cell_id, why + ("; out of memory?)" if code == -9 else ")"))

    def _stop(self) -> None:
        for process, tasks in self.workers.values():
            if process.exitcode is None:
                tasks.put(None)
        for process, _ in self.workers.values():
            process.join(STOP_WAIT_S)
            if process.exitcode is None:
                process.terminate()
                process.join(STOP_WAIT_S)
        self.workers.clear()


# ---- Ray -----------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


_RAY_RUNNERS: dict[tuple[str, str], Any] = {}  # one CellRunner per suite and folder in each Ray worker process


def _ray_cell(suite: Suite, output: str, cell_id: str, wait: float | None, threads: int,
              execution: dict[str, Any], quiet: bool) -> tuple[str, str | None]:
    """A Ray task: one cell, with ``threads`` torch threads, on whatever GPU Ray gave it."""
    import torch

    from drpo_bench.suite.planning import plan_cells
    from drpo_bench.run.cell_runner import CellRunner, attempt

    torch.set_num_threads(threads)
    key = (output, suite.model_dump_json())
    if key not in _RAY_RUNNERS:
        _RAY_RUNNERS.clear()  # another suite's models are not needed any more
        _RAY_RUNNERS[key] = CellRunner(suite, Path(output), Console(stderr=True), quiet)
    runner = _RAY_RUNNERS[key]
    runner.cell_wait = wait
    runner.execution = {**execution, "host": socket.gethostname(),
                        "device": f"cuda (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})"
                        if execution.get("gpus_per_cell") else "cpu"}
    cell = {c.id: c for c in plan_cells(suite)}[cell_id]
    try:
        return attempt(runner, cell, None, runner.console)
    except UserError as exc:
        return "usererror", str(exc)


class RayExecutor:
    """Each cell a Ray remote task (num_cpus = threads per cell, num_gpus = GPUs per cell)."""

    def __init__(self, suite: Suite, output: Path, quiet: bool, console: Console) -> None:
        self.suite, self.output, self.quiet, self.console = suite, output, quiet, console

    def run(self, cells: list[Cell]) -> RunSummary:
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            address = self.suite.execution.address
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=not self.quiet,
                         configure_logging=False)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {address!r}: {exc}. Start one with `ray start --head` "
                                "or drop --address to start a local one.") from None
        try:
            return self._run(ray, cells)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, cells: list[Cell]) -> RunSummary:
        collect = _Collector(self.suite, self.output, cells, self.quiet, self.console)
        with collect.progress:
            rest = collect.skip_complete()
            plan = plan_execution(self.suite.execution, rest, cluster=ray.cluster_resources())
            if rest and not self.quiet:
                self.console.print(f"[dim]{plan.describe(len(rest))}[/]")
            remote = ray.remote(_ray_cell).options(num_cpus=plan.threads, num_gpus=plan.gpus_per_cell, max_retries=0)
            execution = {"executor": "ray", "address": plan.address, "jobs": plan.jobs, "gpus_per_cell": plan.gpus_per_cell}
            suite_ref = ray.put(self.suite)
            pending = deque((c.id, 0.0) for c in rest)
            deferred: list[str] = []
            running: dict[Any, str] = {}  # object ref -> cell id
            while pending or deferred or running:
                if not pending and deferred and collect.abort is None:
                    pending.extend((cell_id, None) for cell_id in deferred)
                    deferred.clear()
                while pending and collect.abort is None and (plan.jobs is None or len(running) < plan.jobs):
                    cell_id, wait = pending.popleft()
                    ref = remote.remote(suite_ref, str(self.output.resolve()), cell_id, wait, plan.threads, execution, self.quiet)
                    collect.dispatched(cell_id)
                    running[ref] = cell_id
                if not running:
                    continue
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in done:
                    cell_id = running.pop(ref)
                    try:
                        status, failure = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a dead worker or node: this cell fails, the others go on
                        collect.crashed(cell_id, f"its Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                        continue
                    if status == "busy":
                        deferred.append(cell_id)
                    elif status == "usererror":
                        collect.abort = collect.abort or f"cell {cell_id}: {failure}"
                        pending.clear()
                        deferred.clear()
                    else:
                        collect.record(cell_id, status, failure)
        return collect.summary()


# ---- command line --------------------------------------------------------------------------


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """``run``'s --jobs, --threads-per-cell, --executor, --address (each overrides the suite's execution:)."""
    parser.add_argument("--jobs", metavar="N|auto",
                        help="cells at once, each in its own process (auto: min(cells, GPUs or cores); default: the "
                             "suite's execution.jobs, else 1 = one after another in this process)")
    parser.add_argument("--threads-per-cell", type=int, metavar="T",
                        help="torch CPU threads of each cell (default cores // jobs; float rounding depends on it)")
    parser.add_argument("--executor", choices=["local", "ray"],
                        help="local processes (default) or Ray tasks (pip install 'drpo-bench[ray]')")
    parser.add_argument("--address", help="with --executor ray: an existing cluster (e.g. auto, ray://head:10001); "
                                          "default starts a local one")


def execution_overrides(args: argparse.Namespace) -> list[str]:
    """The execution flags given, as dotted overrides (``execution.jobs=2``): validated like the YAML."""
    given = {"jobs": getattr(args, "jobs", None), "threads_per_cell": getattr(args, "threads_per_cell", None),
             "executor": getattr(args, "executor", None), "address": getattr(args, "address", None)}
    out = []
    for key, value in given.items():
        if value is None:
            continue
        if key == "jobs" and str(value).isdigit():
            value = int(value)
        out.append(f"execution.{key}={json.dumps(value)}")
    if getattr(args, "address", None) and getattr(args, "executor", None) not in (None, "ray"):
        raise UserError("--address names a Ray cluster: use it with --executor ray")
    return out


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
from drpo_bench.errors import UserError
from drpo_bench.evaluation import evaluate
from drpo_bench.ledger import Ledger
from drpo_bench.methods import Method
from drpo_bench.metrics.base import Metric
from drpo_bench.metrics.reward_metric import RewardMetric
from drpo_bench.planning import Cell, plan_cells
from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import GENERATORS, METHODS, METRICS, PROMPTS, REWARDS
from drpo_bench.store import CellFolder, CellRecord, write_json, write_text
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
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
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
        folder = CellFolder(ensure_inside(self.output, self.output / cell.id))  # ids are safe names; belt and braces
        fingerprint = cell.fingerprint
        record = folder.read_cell()
        if record is not None and record.status == "complete":
            if record.fingerprint != fingerprint:
                raise UserError(
                    f"cell {cell.id} in {self.output} was run with other settings (fingerprint "
                    f"{record.fingerprint} != {fingerprint}). Use another --output, or delete that cell folder to rerun it."
                )
            return "skipped"
        folder.path.mkdir(parents=True, exist_ok=True)
        started = time.time()
        seed_everything(cell.seed)
        generator = build(GENERATORS, cell.generator)
        method_entry = METHODS.get(cell.method.method)
        method: Method = method_entry.cls(method_entry.parse_config(cell.method.args))
        ledger = Ledger(generator.device, count_flops=cell.train.count_flops)
        resumed_from = None
        if cell.trains:
            assert cell.reward_alias is not None
            reward = self.reward(cell.reward_alias, generator.device)
            train_prompts = [p.text for p in self.prompts("train")]
            resumed_from = train_cell(cell, folder, generator, method, reward, train_prompts, ledger, progress,
                                      None if self.quiet else self.console)
            generator.save_adapter(folder.file(CellFolder.ADAPTER))
        result = evaluate(cell, generator, self.prompts(cell.eval.split), self.metrics(generator.device),
                          folder.file(CellFolder.SAMPLES))
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
            train_reward={"alias": cell.reward_alias, **cell.reward.model_dump()} if cell.reward else None,
            seed=cell.seed,
            budget={**budget, "effective_batch": cell.budget.effective} if cell.trains else None,
            train=cell.train.model_dump() if cell.trains else None,
            eval=cell.eval.model_dump(),
            overrides=cell.overrides,
            budget_matched=cell.budget_matched,
            higher_is_better={k: v.higher_is_better for k, v in result.metrics.items()},
            metric_definitions={k: v.definition for k, v in result.metrics.items()},
            resumed_from_step=resumed_from,
            wall_seconds_this_run=time.time() - started,
            **self._env,
        ))
        drop_checkpoints(folder)
        return "resumed" if resumed_from else "done"


# ---- the whole suite -----------------------------------------------------------------------


@dataclass
class RunSummary:
    output: Path
    statuses: dict[str, str]  # cell id -> skipped | done | resumed | failed
    failures: dict[str, str]


def run_suite(suite: Suite, output: Path | None = None, *, allow_reference: bool = False, quiet: bool = False,
              shard: tuple[int, int] = (0, 1), console: Console | None = None) -> RunSummary:
    output = Path(output or suite.output_dir)
    check_output_dir(output, allow_reference)
    console = console or Console(stderr=True)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "suite.json", suite.model_dump(mode="json"))
    cells = [c for i, c in enumerate(plan_cells(suite)) if i % shard[1] == shard[0]]
    runner = CellRunner(suite, output, console, quiet)
    statuses: dict[str, str] = {}
    failures: dict[str, str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        overall = progress.add_task(f"[bold]{suite.name}[/]: cells", total=len(cells))
        for cell in cells:
            try:
                statuses[cell.id] = runner.run(cell, progress)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others
                statuses[cell.id] = "failed"
                failures[cell.id] = f"{type(exc).__name__}: {exc}"
                (output / cell.id).mkdir(parents=True, exist_ok=True)
                write_text(output / cell.id / "error.txt", traceback.format_exc())
                console.print(f"[red]cell {cell.id} failed: {failures[cell.id]} (traceback in {output / cell.id / 'error.txt'})[/]")
            progress.update(overall, advance=1)
    return RunSummary(output, statuses, failures)

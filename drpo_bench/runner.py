"""Plan cells, run each with the shared training loop, evaluate, store; skip and resume.

A cell is (generator, method, training reward, seed). Its folder under the suite's output
holds ``cell.json`` (written last: its presence with status "complete" means done),
``train.jsonl``, ``eval.json``, ``ledger.json``, ``samples.png`` and ``adapter.safetensors``.
While training, ``checkpoint.json`` points at the newest ``checkpoint-<step>/`` folder; a rerun
resumes from it. Prompt choice and noise of update ``t`` depend only on (seed, t), so a resumed
cell follows exactly the path an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import random
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from drpo_bench import __version__
from drpo_bench.config import ComponentSpec, MethodSpec, Suite
from drpo_bench.errors import UserError
from drpo_bench.ledger import Ledger
from drpo_bench.methods import Method, TrainContext
from drpo_bench.metrics.base import EvalSamples, Metric, MetricValue
from drpo_bench.metrics.reward_metric import RewardMetric
from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import GENERATORS, METHODS, METRICS, PROMPTS, REWARDS
from drpo_bench.store import read_json, save_safetensors, torch_save_atomic, write_json, write_text

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Cell:
    generator: ComponentSpec
    method: MethodSpec
    reward_alias: str | None  # None for methods that do not train
    seed: int

    @property
    def id(self) -> str:
        return f"{self.generator.label}--{self.method.id}--{self.reward_alias or 'none'}--s{self.seed}"


def plan_cells(suite: Suite) -> list[Cell]:
    """generator x method x training reward x seed, in suite order."""
    cells = []
    for gen in suite.generators:
        for method in suite.methods:
            cls = METHODS.get(method.method).cls
            if not cls.trains:
                aliases: list[str | None] = [None]
            elif method.reward:
                aliases = [method.reward]
            else:
                aliases = list(suite.train_rewards)
            for alias in aliases:
                for seed in suite.seeds:
                    cells.append(Cell(gen, method, alias, seed))
    return cells


def cell_fingerprint(suite: Suite, cell: Cell) -> str:
    """Hash of everything that determines a cell's result; a rerun with other settings is refused."""
    method_cls = METHODS.get(cell.method.method).cls
    payload = {
        "generator": cell.generator.model_dump(),
        "method": cell.method.model_dump(),
        "reward": suite.rewards[cell.reward_alias].model_dump() if cell.reward_alias else None,
        "prompts": suite.prompts.model_dump(),
        "seed": cell.seed,
        "budget": suite.budget.model_dump() if method_cls.trains else None,
        # bookkeeping that cannot change a result stays out, so old results still match
        "train": suite.train.model_dump(exclude={"checkpoint_every", "count_flops"}) if method_cls.trains else None,
        "eval": suite.eval.model_dump(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        cell_dir = self.output / cell.id
        fingerprint = cell_fingerprint(self.suite, cell)
        done = cell_dir / "cell.json"
        if done.exists():
            info = read_json(done)
            if info.get("status") == "complete":
                if info.get("fingerprint") != fingerprint:
                    raise UserError(
                        f"cell {cell.id} in {self.output} was run with other settings (fingerprint "
                        f"{info.get('fingerprint')} != {fingerprint}). Use another --output, or delete that cell folder to rerun it."
                    )
                return "skipped"
        cell_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        seed_everything(cell.seed)
        generator = build(GENERATORS, cell.generator)
        method_entry = METHODS.get(cell.method.method)
        method: Method = method_entry.cls(method_entry.parse_config(cell.method.args))
        ledger = Ledger(generator.device, count_flops=self.suite.train.count_flops)
        resumed_from = None
        if method.trains:
            assert cell.reward_alias is not None
            resumed_from = self.train(cell, cell_dir, fingerprint, generator, method, ledger, progress)
            generator.save_adapter(cell_dir / "adapter.safetensors")
        eval_result = self.evaluate(cell, cell_dir, generator)
        write_json(cell_dir / "eval.json", eval_result)
        write_json(cell_dir / "ledger.json", ledger.to_json())
        reward_spec = self.suite.rewards[cell.reward_alias] if cell.reward_alias else None
        write_json(
            done,
            {
                "status": "complete",
                "cell_id": cell.id,
                "fingerprint": fingerprint,
                "suite": self.suite.name,
                "generator": cell.generator.model_dump(),
                "method": cell.method.model_dump(),
                "method_paper": method_entry.cls.paper,
                "trains": method.trains,
                "needs_differentiable_reward": method_entry.cls.needs_differentiable_reward,
                "train_reward": {"alias": cell.reward_alias, **reward_spec.model_dump()} if reward_spec else None,
                "seed": cell.seed,
                "budget": {**self.suite.budget.model_dump(), "effective_batch": self.suite.budget.effective} if method.trains else None,
                "train": self._train_config(cell).__dict__ if method.trains else None,
                "eval": self.suite.eval.model_dump(),
                "higher_is_better": {k: v["higher_is_better"] for k, v in eval_result["metrics"].items()},
                "resumed_from_step": resumed_from,
                "wall_seconds_this_run": time.time() - started,
                **self._env,
            },
        )
        self._drop_checkpoints(cell_dir)
        return "resumed" if resumed_from else "done"

    @dataclass
    class _Train:
        lr: float
        lr_schedule: str
        weight_decay: float
        grad_clip: float | None
        betas: tuple[float, float]
        precision: str
        checkpoint_every: int

    def _train_config(self, cell: Cell) -> CellRunner._Train:
        t, o = self.suite.train, cell.method.train
        return CellRunner._Train(
            lr=o.lr if o.lr is not None else t.lr,
            lr_schedule=t.lr_schedule,
            weight_decay=o.weight_decay if o.weight_decay is not None else t.weight_decay,
            grad_clip=o.grad_clip if o.grad_clip is not None else t.grad_clip,
            betas=t.betas,
            precision=t.precision,
            checkpoint_every=t.checkpoint_every,
        )

    def train(self, cell: Cell, cell_dir: Path, fingerprint: str, generator: Any, method: Method,
              ledger: Ledger, progress: Progress | None) -> int | None:
        """The shared loop: same optimizer, precision, accumulation, clipping for every method."""
        budget, tcfg = self.suite.budget, self._train_config(cell)
        device = generator.device
        params = generator.trainable_parameters()
        if not params:
            raise RuntimeError(f"generator {cell.generator.name} exposes no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas)
        scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16")
        ctx = TrainContext(
            generator=generator,
            reward=self.reward(cell.reward_alias, device),  # type: ignore[arg-type]
            ledger=ledger,
            candidates_per_prompt=budget.candidates_per_prompt,
            noise_rng=torch.Generator(),
            loss_scale=budget.micro / budget.prompts_per_update,
            scaled=scaler.scale,
        )
        method.setup(ctx)
        train_prompts = [p.text for p in self.prompts("train")]

        start, resumed_from = self._resume(cell_dir, fingerprint, generator, optimizer, scaler, method)
        log_path = cell_dir / "train.jsonl"
        _truncate_log(log_path, start)
        task = progress.add_task(f"  {cell.id}", total=budget.steps, completed=start) if progress else None
        generator.train(True)
        with log_path.open("a") as log:
            for step in range(start, budget.steps):
                chosen = _update_prompts(train_prompts, budget.prompts_per_update, cell.seed, step)
                for group in optimizer.param_groups:  # a function of the step alone: resumes exactly
                    group["lr"] = tcfg.lr * lr_factor(tcfg.lr_schedule, step, budget.steps)
                ctx.noise_rng.manual_seed(_update_seed(cell.seed, step))
                ledger.begin_update()
                losses, logs = [], {}
                for i in range(0, len(chosen), budget.micro):
                    with _autocast(device, tcfg.precision):
                        out = method.step(chosen[i : i + budget.micro], ctx)
                    losses.append(out.loss)
                    for k, v in out.logs.items():
                        logs[k] = logs.get(k, 0.0) + v / (len(chosen) // budget.micro)
                with ledger.phase("optimizer"):
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip or float("inf"))
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                record = ledger.end_update()
                entry = {"step": step + 1, "loss": sum(losses) / len(losses), "grad_norm": float(grad_norm), **logs}
                if record is not None:
                    entry["seconds"] = record.seconds
                log.write(json.dumps(entry) + "\n")
                log.flush()
                if (step + 1) % tcfg.checkpoint_every == 0 and step + 1 < budget.steps:
                    self._checkpoint(cell_dir, fingerprint, step + 1, generator, optimizer, scaler, method)
                if progress is not None and task is not None:
                    progress.update(task, advance=1, description=f"  {cell.id} loss {entry['loss']:.3g}")
        generator.train(False)
        if progress is not None and task is not None:
            progress.remove_task(task)
        return resumed_from

    # ---- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self, cell_dir: Path, fingerprint: str, step: int, generator: Any, optimizer: Any,
                    scaler: Any, method: Method) -> None:
        folder = cell_dir / f"checkpoint-{step}"
        folder.mkdir(exist_ok=True)
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in generator.adapter_state_dict().items()},
                         folder / "adapter.safetensors")
        torch_save_atomic({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                           "method": method.state_dict()}, folder / "training_state.pt")
        # the pointer is the commit: written last, atomically
        write_json(cell_dir / "checkpoint.json", {"step": step, "folder": folder.name, "fingerprint": fingerprint})
        for old in cell_dir.glob("checkpoint-*"):
            if old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)

    def _resume(self, cell_dir: Path, fingerprint: str, generator: Any, optimizer: Any, scaler: Any,
                method: Method) -> tuple[int, int | None]:
        pointer = cell_dir / "checkpoint.json"
        if not pointer.exists():
            return 0, None
        info = read_json(pointer)
        if info.get("fingerprint") != fingerprint:
            raise UserError(
                f"cell folder {cell_dir} holds a checkpoint from other settings. Use another --output, "
                "or delete that folder to start the cell over."
            )
        folder = cell_dir / info["folder"]
        generator.load_adapter(folder / "adapter.safetensors")
        state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        method.load_state_dict(state["method"])
        if not self.quiet:
            self.console.print(f"[yellow]resuming {cell_dir.name} from step {info['step']}[/]")
        return int(info["step"]), int(info["step"])

    @staticmethod
    def _drop_checkpoints(cell_dir: Path) -> None:
        (cell_dir / "checkpoint.json").unlink(missing_ok=True)
        for old in cell_dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, cell: Cell, cell_dir: Path, generator: Any) -> dict[str, Any]:
        ecfg = self.suite.eval
        prompts = self.prompts(ecfg.split)[: ecfg.max_prompts]
        n = ecfg.images_per_prompt
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        noise_rng = torch.Generator().manual_seed(ecfg.seed + cell.seed)
        images, latents = [], []
        for start in range(0, len(rows), ecfg.batch_size):
            batch = rows[start : start + ecfg.batch_size]
            noise = generator.noise(len(batch), noise_rng)
            lat = generator.sample(noise, generator.encode([p.text for _, p in batch]))
            latents.append(lat.float().cpu())
            images.append(generator.decode(lat).float().clamp(0, 1).cpu())
        samples = EvalSamples(
            images=torch.cat(images),
            latents=torch.cat(latents),
            prompts=[p.text for _, p in rows],
            groups=torch.tensor([i for i, _ in rows]),
            tasks=[p.task for _, p in rows],
        )
        values: dict[str, MetricValue] = {}
        for metric in self.metrics(generator.device):
            values.update(metric.compute(samples))
        if ecfg.grid_prompts:
            write_samples_grid(cell_dir / "samples.png", samples.images[: ecfg.grid_prompts * n], nrow=n)
        return {
            "n_prompts": len(prompts),
            "images_per_prompt": n,
            "split": ecfg.split,
            "metrics": {k: {"mean": v.mean, "higher_is_better": v.higher_is_better, "per_task": v.per_task}
                        for k, v in values.items()},
        }


def write_samples_grid(path: Path, images: torch.Tensor, nrow: int) -> None:
    """(N, 3, H, W) in [0, 1] -> one PNG, one prompt per row (atomic write)."""
    from PIL import Image
    from torchvision.utils import make_grid

    if images.shape[-1] < 128:  # upscale tiny images so a person can see them
        factor = max(1, 128 // images.shape[-1])
        images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=0.5)  # (3, H', W')
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_text_bytes(path, buf.getvalue())


def write_text_bytes(path: Path, data: bytes) -> None:
    from drpo_bench.store import _atomic_write_bytes

    _atomic_write_bytes(path, data)


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning-rate multiplier of update ``step`` (0-based) of ``steps``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":  # half a cosine from 1 at the first update to 0 after the last
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def _update_prompts(prompts: list[str], n: int, seed: int, step: int) -> list[str]:
    rng = random.Random(f"prompts:{seed}:{step}")
    return rng.sample(prompts, n) if n <= len(prompts) else [rng.choice(prompts) for _ in range(n)]


def _update_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % 2**63


def _truncate_log(path: Path, keep_steps: int) -> None:
    """Drop log lines past the checkpoint a cell resumes from (they will be redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= keep_steps]
    write_text(path, "".join(line + "\n" for line in kept))


@contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    if precision == "fp32":
        with nullcontext():
            yield
        return
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


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

"""Live training logs, opt-in: TensorBoard, Weights & Biases, and a plain stderr line for batch jobs.

``train.jsonl`` in the cell folder stays the record of every update; the sinks here only show a
run while it goes. A suite turns them on with a ``logging:`` section::

    logging: {tensorboard: true, wandb: false, every: 10}

- ``tensorboard``: event files under ``<cell folder>/tensorboard/`` (``tensorboard --logdir runs/<suite>``
  shows every cell); needs ``pip install 'drpo-bench[tensorboard]'``.
- ``wandb``: one W&B run per cell (name = cell id, group = suite), files under the cell folder;
  needs ``pip install 'drpo-bench[wandb]'``; ``WANDB_MODE=offline`` logs without a network
  (``wandb sync`` uploads later). A resumed cell continues the same W&B run.
- lines: every ``every`` updates (and the first and last), one line on stderr such as
  ``cell sd-turbo--drpo--pickscore--s0 update 40/1000 loss 0.12 reward_mean 0.34 1.2 s/update ETA 19m``;
  on by default when stderr is not a terminal (a batch job's log, where progress bars print nothing
  until the cell ends), off in a terminal where the progress bar shows the same.
"""

from __future__ import annotations

import abc
import importlib.util
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from drpo_bench.errors import UserError
from drpo_bench.suite.config import LoggingConfig


class Sink(abc.ABC):
    """Where live training numbers go. ``entry`` is a train.jsonl line: {"step", "loss", "grad_norm", ...}."""

    @abc.abstractmethod
    def log_update(self, step: int, entry: dict[str, Any]) -> None: ...

    def log_images(self, step: int, tag: str, images: torch.Tensor) -> None:  # noqa: B027 - optional
        """(N, 3, H, W) images in [0, 1]."""

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:  # noqa: B027 - optional
        """Held-out metric means of a periodic evaluation (eval.every)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass


def _scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The entry's finite-or-not numbers, bools and the step itself left out."""
    return {k: float(v) for k, v in entry.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _missing(package: str, option: str) -> UserError:
    return UserError(
        f"logging.{option}: true needs the {package} package, which is not installed. Install it with "
        f"`pip install 'drpo-bench[{option}]'` (or `pip install {package}`), or set `logging.{option}: false`."
    )


class TensorBoardSink(Sink):
    """Scalars as ``train/<key>``, images with ``add_images``, into ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise _missing("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_update(self, step: int, entry: dict[str, Any]) -> None:
        for key, value in _scalars(entry).items():
            self.writer.add_scalar(f"train/{key}", value, global_step=step)
        self.writer.flush()

    def log_images(self, step: int, tag: str, images: torch.Tensor) -> None:
        self.writer.add_images(tag, images.detach().float().clamp(0, 1).cpu(), global_step=step)  # (N, 3, H, W)
        self.writer.flush()

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(f"eval/{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink(Sink):
    """One W&B run: scalars as ``train/<key>`` at ``step``, images as ``wandb.Image`` lists."""

    def __init__(self, project: str, name: str, run_id: str | None = None, group: str | None = None,
                 directory: str | Path | None = None, config: dict[str, Any] | None = None) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise _missing("wandb", "wandb")
        import wandb

        self.wandb = wandb
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, name=name, group=group, config=config or {},
            dir=str(directory) if directory is not None else None,
            id=_wandb_id(run_id) if run_id else None, resume="allow" if run_id else None,
        )

    def log_update(self, step: int, entry: dict[str, Any]) -> None:
        self.run.log({f"train/{k}": v for k, v in _scalars(entry).items()}, step=step)

    def log_images(self, step: int, tag: str, images: torch.Tensor) -> None:
        arrays = (images.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
        self.run.log({tag: [self.wandb.Image(a) for a in arrays]}, step=step)  # (H, W, 3) each

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({f"eval/{k}": v for k, v in _scalars(metrics).items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(text: str) -> str:
    """W&B run ids allow letters, digits, '-' and '_' (at most 64 of them)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64]


class LineSink(Sink):
    """A plain progress line on ``stream`` every ``every`` updates, the first and the last; the rate is
    measured over the updates since the previous line (a resumed cell starts counting at its resume)."""

    #: keys shown after the loss when present, in this order
    SHOWN = ("reward_mean", "grad_norm")

    def __init__(self, cell_id: str, total: int, every: int = 10, start: int = 0, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cell_id, self.total, self.every = cell_id, total, every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._last_step, self._last_time = start, clock()
        self._first = start + 1

    def log_update(self, step: int, entry: dict[str, Any]) -> None:
        if not (step % self.every == 0 or step == self.total or step == self._first):
            return
        now = self.clock()
        done = max(step - self._last_step, 1)
        per_update = (now - self._last_time) / done
        self._last_step, self._last_time = step, now
        parts = [f"cell {self.cell_id} update {step}/{self.total}"]
        for key in ("loss", *self.SHOWN):
            if isinstance(entry.get(key), (int, float)):
                parts.append(f"{key} {entry[key]:.3g}")
        parts.append(f"{per_update:.3g} s/update")
        if step < self.total:
            parts.append(f"ETA {format_duration(per_update * (self.total - step))}")
        print(" ".join(parts), file=self.stream, flush=True)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k} {v:.4g}" for k, v in _scalars(metrics).items())
        print(f"cell {self.cell_id} held-out eval at update {step}/{self.total}: {shown}", file=self.stream, flush=True)


def format_duration(seconds: float) -> str:
    """45s, 19m, 2h05m, 3d04h."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{round(s / 60)}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


class TrainLogger(Sink):
    """Every configured sink at once; a context manager that closes them."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log_update(self, step: int, entry: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log_update(step, entry)

    def log_images(self, step: int, tag: str, images: torch.Tensor) -> None:
        for sink in self.sinks:
            sink.log_images(step, tag, images)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log_eval(step, metrics)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> TrainLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_train_logger(config: LoggingConfig | None, cell_id: str, folder: str | Path, total: int, start: int = 0, *,
                      suite: str | None = None, run_id: str | None = None, run_config: dict[str, Any] | None = None,
                      stream: IO[str] | None = None) -> TrainLogger:
    """The sinks ``config`` asks for, for one training cell of ``total`` updates resumed at ``start``.

    ``folder``: the cell folder (TensorBoard and W&B files go under it); ``run_id``: a stable id
    (the cell's fingerprint) so a resumed cell continues its W&B run; ``run_config``: settings W&B records.
    """
    config = config or LoggingConfig()
    stream = stream if stream is not None else sys.stderr
    sinks: list[Sink] = []
    try:
        if config.lines == "on" or (config.lines == "auto" and not _is_tty(stream)):
            sinks.append(LineSink(cell_id, total, config.every, start, stream))
        if config.tensorboard:
            sinks.append(TensorBoardSink(Path(folder) / "tensorboard"))
        if config.wandb:
            sinks.append(WandbSink(config.wandb_project, cell_id, run_id=run_id, group=suite,
                                   directory=Path(folder), config=run_config))
    except BaseException:
        TrainLogger(sinks).close()
        raise
    return TrainLogger(sinks)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

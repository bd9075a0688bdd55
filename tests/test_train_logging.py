"""Live training sinks: stderr lines for batch jobs, TensorBoard, W&B (each opt-in)."""

from __future__ import annotations

import importlib.util
import io
import sys
import types

import pytest
import torch
from pydantic import ValidationError

from drpo_bench.errors import UserError
from drpo_bench.run.train_logging import (
    LineSink,
    LoggingConfig,
    TensorBoardSink,
    WandbSink,
    format_duration,
    open_train_logger,
)

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _entry(step: int) -> dict:
    return {"step": step, "loss": 0.5 / step, "grad_norm": 1.0, "reward_mean": 0.01 * step, "seconds": 1.2}


def test_line_sink_prints_every_n_with_rate_and_eta():
    out, clock = io.StringIO(), FakeClock()
    sink = LineSink("toy--drpo--redness--s0", total=100, every=40, stream=out, clock=clock)
    for step in range(1, 101):
        clock.now += 1.5 if step <= 40 else 3.0  # updates slow down after 40: the ETA follows the recent rate
        sink.log_update(step, _entry(step))
    lines = out.getvalue().splitlines()
    assert [line.split(" update ")[1].split()[0] for line in lines] == ["1/100", "40/100", "80/100", "100/100"]
    assert lines[1] == ("cell toy--drpo--redness--s0 update 40/100 loss 0.0125 reward_mean 0.4 grad_norm 1 "
                        "1.5 s/update ETA 2m")  # 60 updates x 1.5 s = 90 s -> 2m
    assert lines[2].endswith("3 s/update ETA 1m")  # 20 x 3 s = 60 s
    assert "ETA" not in lines[3]


def test_line_sink_after_resume_counts_from_the_checkpoint():
    out, clock = io.StringIO(), FakeClock()
    sink = LineSink("c", total=50, every=10, start=30, stream=out, clock=clock)
    for step in range(31, 51):
        clock.now += 2.0
        sink.log_update(step, {"step": step, "loss": 1.0})
    first = out.getvalue().splitlines()[0]
    assert first == "cell c update 31/50 loss 1 2 s/update ETA 38s"


@pytest.mark.parametrize("seconds,text", [(44.6, "45s"), (19 * 60 + 10, "19m"), (2 * 3600 + 5 * 60, "2h05m"),
                                          (3 * 86400 + 4 * 3600, "3d04h"), (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_lines_are_automatic_only_off_a_terminal():
    pipe, tty = io.StringIO(), TTY()
    with open_train_logger(LoggingConfig(every=1), "c", "/nonexistent", total=2, stream=pipe) as log:
        log.log_update(1, {"step": 1, "loss": 0.5})
    with open_train_logger(LoggingConfig(every=1), "c", "/nonexistent", total=2, stream=tty) as log:
        log.log_update(1, {"step": 1, "loss": 0.5})
    with open_train_logger(LoggingConfig(every=1, lines="on"), "c", "/nonexistent", total=2, stream=tty) as log:
        log.log_update(2, {"step": 2, "loss": 0.25})
    assert pipe.getvalue().startswith("cell c update 1/2 loss 0.5 ")
    assert tty.getvalue().startswith("cell c update 2/2 loss 0.25 ")  # only the forced one
    with open_train_logger(LoggingConfig(lines="off"), "c", "/nonexistent", total=2, stream=pipe) as log:
        assert log.sinks == []


def test_logging_config_is_strict():
    assert LoggingConfig.model_validate({"tensorboard": False, "wandb": False, "every": 10}).every == 10
    with pytest.raises(ValidationError):
        LoggingConfig.model_validate({"tensorbord": True})
    with pytest.raises(ValidationError):
        LoggingConfig.model_validate({"every": 0})


def test_tensorboard_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, _real=importlib.util.find_spec:
                        None if name == "tensorboard" else _real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'drpo-bench\[tensorboard\]'.*logging.tensorboard: false"):
        open_train_logger(LoggingConfig(tensorboard=True), "c", tmp_path, total=2)


def test_tensorboard_sink_writes_scalars_and_images(tmp_path):
    if not HAS_TENSORBOARD:
        pytest.skip("tensorboard not installed (pip install 'drpo-bench[tensorboard]'): TensorBoard sink not exercised")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "tb")
    for step in (1, 2, 3):
        sink.log_update(step, _entry(step))
    sink.log_images(3, "samples", torch.rand(2, 3, 8, 8))
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/reward_mean", "train/grad_norm", "train/seconds"} <= set(acc.Tags()["scalars"])
    assert "train/step" not in acc.Tags()["scalars"]
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3]
    assert [round(e.value, 6) for e in losses] == [round(0.5 / s, 6) for s in (1, 2, 3)]
    assert acc.Tags()["images"]


class _FakeRun:
    def __init__(self, **kwargs) -> None:
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, data, step=None) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording what the sink sends."""
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**kwargs):
        module.runs.append(_FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    module.Image = lambda array: ("image", array.shape)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, _real=importlib.util.find_spec:
                        module.__spec__ if name == "wandb" else _real(name, *a))
    return module


def test_wandb_sink_logs_scalars_images_and_resumes_by_id(fake_wandb, tmp_path):
    config = LoggingConfig(wandb=True, lines="off", wandb_project="proj")
    with open_train_logger(config, "toy--drpo--redness--s0", tmp_path, total=5, suite="toy-harness",
                           run_id="toy--drpo--redness--s0.ab12", run_config={"lr": 0.01}) as log:
        log.log_update(1, _entry(1))
        log.log_images(1, "samples", torch.rand(2, 3, 8, 8))
    run = fake_wandb.runs[0]
    assert run.init["project"] == "proj" and run.init["name"] == "toy--drpo--redness--s0"
    assert run.init["group"] == "toy-harness" and run.init["config"] == {"lr": 0.01}
    assert run.init["id"] == "toy--drpo--redness--s0_ab12" and run.init["resume"] == "allow"
    assert run.init["dir"] == str(tmp_path)
    step, data = run.logged[0]
    assert step == 1 and data == {"train/loss": 0.5, "train/grad_norm": 1.0, "train/reward_mean": 0.01, "train/seconds": 1.2}
    assert run.logged[1] == (1, {"samples": [("image", (8, 8, 3)), ("image", (8, 8, 3))]})
    assert run.finished


def test_wandb_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, _real=importlib.util.find_spec:
                        None if name == "wandb" else _real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'drpo-bench\[wandb\]'"):
        open_train_logger(LoggingConfig(wandb=True), "c", tmp_path, total=2)


def test_real_wandb_offline(tmp_path, monkeypatch):
    if not HAS_WANDB:
        pytest.skip("wandb not installed (pip install 'drpo-bench[wandb]'): real W&B offline run not exercised")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink("drpo-bench-test", "cell", run_id="cell-1", directory=tmp_path)
    for step in (1, 2):
        sink.log_update(step, _entry(step))
    sink.log_images(2, "samples", torch.rand(1, 3, 8, 8))
    sink.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


# ---- wired into the training loop (active once Suite has a `logging` field) -------------------------

TOY_SUITE = """\
name: logging-toy
generators: [toy]
rewards: {redness: toy-redness}
prompts: toy
train_rewards: [redness]
methods: [{id: raft, method: raft}]
seeds: [0]
budget: {steps: 5, candidates_per_prompt: 4, prompts_per_update: 2, micro_batch_prompts: 2}
train: {lr: 0.01, checkpoint_every: 5}
eval: {images_per_prompt: 2, metrics: [redness], grid_prompts: 0}
logging: {every: 2, lines: "on", tensorboard: %s}
"""


def test_training_loop_feeds_the_sinks(tmp_path, capsys):
    from drpo_bench.suite.config import Suite

    if "logging" not in Suite.model_fields:
        pytest.skip("Suite has no `logging` field yet: the sinks are not wired into the training loop")
    from drpo_bench.commands.main import main

    (tmp_path / "s.yaml").write_text(TOY_SUITE % ("true" if HAS_TENSORBOARD else "false"))
    assert main(["run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cell toy--raft--redness--s0 ")]
    assert [line.split()[3] for line in lines] == ["1/5", "2/5", "4/5", "5/5"]
    assert all(" loss " in line and " s/update" in line for line in lines)
    if HAS_TENSORBOARD:
        assert list((tmp_path / "out" / "toy--raft--redness--s0" / "tensorboard").glob("events.out.tfevents.*"))

"""Nothing lost, nothing mixed, nothing silently wrong: concurrent runs on one folder, non-finite
values, corrupted run files. Each test fails on a runner without the guard it checks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.registry import REWARDS
from drpo_bench.run.runner import run_suite
from drpo_bench.toy import ToyRedness

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "suites" / "toy" / "harness.yaml"
SMALL = ["seeds=[0]", "budget.steps=4",
         "methods=[{id: base, method: base}, {id: draft, method: draft}, {id: raft, method: raft}]"]


# ---- two runs on one output folder -------------------------------------------------------------

_RUNNER = """
import json, sys
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.run.runner import run_suite
try:
    summary = run_suite(load_suite(sys.argv[1], sys.argv[3:]), sys.argv[2], quiet=True)
    print(json.dumps(summary.statuses))
except UserError as exc:
    print("REFUSED", exc)
    sys.exit(2)
"""


def _start(out: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUNNER, str(TOY), str(out), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


SLOW = [*SMALL, "seeds=[0, 1]", "generators=[{name: toy, args: {delay_seconds: 0.03}}]"]


def test_two_runs_with_the_same_settings_train_every_cell_once(tmp_path):
    out = tmp_path / "shared"
    a, b = _start(out, *SLOW), _start(out, *SLOW)
    results = []
    for proc in (a, b):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    cells = sorted(p.name for p in out.iterdir() if (p / "cell.json").exists())
    assert len(cells) == 6
    for cell in cells:
        trained_by = [r[cell] for r in results]
        assert sorted(trained_by) == ["done", "skipped"], (cell, trained_by)  # once, by one of them
        steps = [json.loads(x)["step"] for x in (out / cell / "train.jsonl").read_text().splitlines()] \
            if (out / cell / "train.jsonl").exists() else []
        assert steps in ([], [1, 2, 3, 4])


def test_a_run_with_other_settings_is_refused_before_it_writes(tmp_path):
    out = tmp_path / "shared"
    a = _start(out, *SLOW)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "suite.json").exists():
        time.sleep(0.05)
    assert (out / "suite.json").exists(), a.communicate()[1][-2000:]
    suite_before = (out / "suite.json").read_text()
    b = _start(out, *SLOW, "train.lr=0.05")
    stdout_b, _ = b.communicate(timeout=300)
    still_running = a.poll() is None
    stdout_a, stderr_a = a.communicate(timeout=600)
    assert a.returncode == 0, stderr_a[-2000:]
    assert b.returncode == 2 and "REFUSED" in stdout_b and "other settings" in stdout_b, stdout_b
    assert still_running, "the refusal must come while the first run is live"
    assert (out / "suite.json").read_text() == suite_before, "the refused run wrote nothing"
    for cell in out.glob("*/cell.json"):
        train = json.loads(cell.read_text())["train"]
        assert train is None or train["lr"] == 0.01, "every cell has the first run's settings"


def test_finished_cells_from_other_settings_refuse_the_whole_run_up_front(tmp_path):
    out = tmp_path / "run"
    run_suite(load_suite(TOY, SMALL), out, quiet=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["run", str(TOY), "--output", str(out), "--quiet", *SMALL, "train.lr=0.05"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---- non-finite values ---------------------------------------------------------------------------

@REWARDS.register("toy-nan-after")
class _NanAfter(ToyRedness):
    """Toy redness, but NaN for every image once it has been called `after` times (a broken reward)."""

    calls = 0

    def score(self, images, prompts):
        type(self).calls += 1
        scores = super().score(images, prompts)
        return scores if type(self).calls <= 2 else torch.full_like(scores, float("nan"))


def test_a_nan_reward_fails_its_cell_with_a_diagnosis_and_the_suite_goes_on(tmp_path):
    _NanAfter.calls = 0
    out = tmp_path / "nan"
    suite = load_suite(TOY, [*SMALL, "rewards={redness: toy-redness, broken: toy-nan-after}",
                             "methods=[{id: base, method: base}, {id: raft, method: raft, reward: broken}, "
                             "{id: draft, method: draft}]"])
    summary = run_suite(suite, out, quiet=True)
    failed = [c for c, s in summary.statuses.items() if s == "failed"]
    assert failed == ["toy--raft--broken--s0"]
    error = (out / failed[0] / "error.txt").read_text()
    assert "non-finite reward from `toy-nan-after`" in error and "update 2" in error and "phase reward_forward" in error
    assert "Traceback" not in error
    assert summary.statuses["toy--draft--redness--s0"] == "done"
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Cells not in the tables" in report and "toy--raft--broken--s0: failed: non-finite reward" in report.replace("\\", "")


def test_an_exploding_learning_rate_fails_the_cell_on_a_non_finite_value(tmp_path):
    summary = run_suite(load_suite(TOY, [*SMALL, "train.lr=1.0e+30"]), tmp_path / "boom", quiet=True)
    assert summary.statuses["toy--base--none--s0"] == "done"
    for cell in ("toy--draft--redness--s0", "toy--raft--redness--s0"):
        assert summary.statuses[cell] == "failed" and "non-finite" in summary.failures[cell], summary.failures
    assert not (tmp_path / "boom" / "toy--draft--redness--s0" / "cell.json").exists()


def test_non_finite_settings_are_refused_at_validate(tmp_path):
    for override in ("train.lr=.inf", "train.lr=.nan", "methods=[{id: d, method: draft, args: {reward_scale: .inf}}]"):
        assert main(["validate", str(TOY), "--set", override]) == 2


# ---- corrupted run files -------------------------------------------------------------------------

@pytest.fixture()
def finished(tmp_path):
    out = tmp_path / "run"
    assert not run_suite(load_suite(TOY, SMALL), out, quiet=True).failures
    return out


@pytest.mark.parametrize("name, damage", [
    ("cell.json", lambda p: p.write_text("{not json")),
    ("cell.json", lambda p: p.write_text('{"status": "complete"}')),
    ("adapter.safetensors", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    ("eval.json", lambda p: p.write_text("[]")),
])
def test_a_corrupt_finished_cell_is_reported_not_skipped_and_not_a_traceback(finished, capsys, name, damage):
    victim = finished / "toy--draft--redness--s0"
    damage(victim / name)
    assert main(["run", str(TOY), "--output", str(finished), "--quiet", *SMALL]) == 1
    err = capsys.readouterr().err
    assert f"{victim / name}" in err.replace("\n", "") and "corrupt" in err and "Delete the cell folder" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["eval.json", "train.jsonl", "ledger.json", "cell.json"])
def test_report_names_a_corrupt_file_instead_of_crashing(finished, name):
    path = finished / "toy--draft--redness--s0" / name
    path.write_text(path.read_text()[:-7] + "garbage")
    assert main(["report", str(finished)]) == 0
    report = (finished / "report.md").read_text().replace("\\", "")
    assert "toy--draft--redness--s0: corrupt:" in report and name in report


def test_a_corrupt_checkpoint_is_reported_with_the_way_out(tmp_path, capsys):
    out = tmp_path / "ckpt"
    overrides = [*SMALL, "methods=[{id: draft, method: draft}]", "train.checkpoint_every=2"]
    run_suite(load_suite(TOY, overrides), out, quiet=True)
    cell = out / "toy--draft--redness--s0"
    (cell / "cell.json").unlink()  # as if killed after the checkpoint at step 2
    (cell / "checkpoint-2").mkdir()
    (cell / "checkpoint-2" / "adapter.safetensors").write_bytes(b"\x00" * 10)
    planned = __import__("drpo_bench.suite.planning").suite.planning.plan_cells(load_suite(TOY, overrides))[0]
    (cell / "checkpoint.json").write_text(json.dumps({"step": 2, "folder": "checkpoint-2",  # made by this code
                                                       "fingerprint": planned.fingerprint,
                                                       "code": {"hash": planned.code.hash, "files": planned.code.files}}))
    assert main(["run", str(TOY), "--output", str(out), "--quiet", *overrides]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert "checkpoint-2" in err and "corrupt" in err and "Traceback" not in err


def test_a_finished_cell_left_with_temp_files_and_a_checkpoint_is_cleaned_on_rerun(finished):
    cell = finished / "toy--draft--redness--s0"
    (cell / ".eval.json.abc.tmp").write_text("partial")
    (cell / "checkpoint-2").mkdir()
    (cell / "checkpoint.json").write_text("{}")
    assert main(["run", str(TOY), "--output", str(finished), "--quiet", *SMALL]) == 0
    assert not list(cell.glob(".*.tmp")) and not (cell / "checkpoint-2").exists() and not (cell / "checkpoint.json").exists()


def test_markdown_report_escapes_user_given_names(finished):
    from drpo_bench.report.build import md_escape

    assert md_escape("<script>alert(1)</script> | *x*") == "&lt;script&gt;alert(1)&lt;/script&gt; \\| \\*x\\*"


def test_sigkill_of_one_of_two_parallel_runs_loses_nothing(tmp_path):
    """Two runs share a folder (cells in parallel); one is killed mid-cell; a rerun finishes the
    killed cell from its checkpoint; every cell equals an uninterrupted run's and nothing is left behind."""
    import os
    import signal

    from safetensors.torch import load_file

    slow = [*SMALL, "seeds=[0, 1]", "budget.steps=10", "train.checkpoint_every=2",
            "generators=[{name: toy, args: {delay_seconds: 0.03}}]"]
    out = tmp_path / "parallel"
    a, b = _start(out, *slow), _start(out, *slow)
    deadline, killed = time.time() + 240, False
    while time.time() < deadline and not killed:
        for pointer in out.glob("*/checkpoint.json"):
            try:
                step = json.loads(pointer.read_text())["step"]
            except ValueError:
                continue
            if step >= 4 and a.poll() is None:
                os.kill(a.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    assert killed, "never caught a cell mid-training"
    a.wait()
    b.communicate(timeout=600)
    assert b.returncode == 0
    rerun = _start(out, *slow)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-2000:]
    clean = tmp_path / "clean"
    run_suite(load_suite(TOY, slow), clean, quiet=True)
    cells = sorted(p.name for p in clean.iterdir() if (p / "cell.json").exists())
    assert sorted(p.name for p in out.iterdir() if (p / "cell.json").exists()) == cells
    for cell in cells:
        mine, ref = out / cell, clean / cell
        assert not list(mine.glob("checkpoint*")) and not list(mine.glob(".*.tmp")), cell
        if (ref / "adapter.safetensors").exists():
            x, y = load_file(str(mine / "adapter.safetensors")), load_file(str(ref / "adapter.safetensors"))
            for key in y:
                torch.testing.assert_close(x[key], y[key], rtol=1e-5, atol=1e-6)
            steps = [json.loads(line)["step"] for line in (mine / "train.jsonl").read_text().splitlines()]
            assert steps == list(range(1, 11)), cell
        e1 = json.loads((mine / "eval.json").read_text())["metrics"]["redness"]["mean"]
        e2 = json.loads((ref / "eval.json").read_text())["metrics"]["redness"]["mean"]
        assert e1 == pytest.approx(e2, rel=1e-5), cell

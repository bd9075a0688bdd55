"""`drpo-bench run suites/smoke.yaml`: the tiny real SD-Turbo architecture end to end, then a rerun."""

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(out):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "drpo_bench", "run", "suites/smoke.yaml", "--output", str(out), "--quiet"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    return proc, time.perf_counter() - start


def test_smoke_suite_runs_and_reruns_without_training(tmp_path):
    out = tmp_path / "smoke"
    proc, _ = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = sorted(p.name for p in out.iterdir() if p.is_dir() and (p / "cell.json").exists())
    assert cells == [
        "sd-turbo-tiny--base--none--s0", "sd-turbo-tiny--base--none--s1",
        "sd-turbo-tiny--raft--pick--s0", "sd-turbo-tiny--raft--pick--s1",
    ]
    assert (out / "report.md").exists() and "| raft |" in (out / "report.md").read_text()
    info = json.loads((out / "sd-turbo-tiny--raft--pick--s0" / "cell.json").read_text())
    assert info["generator"]["name"] == "sd-turbo-tiny" and info["train_reward"]["name"] == "pickscore-tiny"
    stamps = {c: (out / c / "cell.json").stat().st_mtime_ns for c in cells}

    proc, seconds = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 skipped" in proc.stderr
    assert {c: (out / c / "cell.json").stat().st_mtime_ns for c in cells} == stamps, "nothing retrained"
    print(f"rerun took {seconds:.1f} s (imports dominate)")

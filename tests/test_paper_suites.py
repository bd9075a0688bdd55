"""The paper suites' tiny twins run end to end on a CPU (slow: about a minute each on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drpo_bench.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["sd-turbo-pickscore-tiny", "sdxl-turbo-pickscore-tiny"])
def test_tiny_twin_runs_end_to_end(suite, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the suites name their prompt files relative to the repository root
    out = tmp_path / suite
    assert main(["run", f"suites/paper/{suite}.yaml", "--output", str(out), "--quiet"]) == 0
    cells = sorted(p for p in out.iterdir() if p.is_dir() and (p / "cell.json").is_file())
    methods = {json.loads((c / "cell.json").read_text())["method"]["id"] for c in cells}
    assert {"base", "drpo", "draft"} <= methods
    for cell in cells:
        assert (cell / "eval.json").is_file()
    assert (out / "report.md").is_file()

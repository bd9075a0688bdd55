"""The paper suites' tiny twins run end to end on a CPU, every method of the paper's comparison,
at the full suites' precision and per-method settings (slow: about a minute each on 2 cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite

REPO = Path(__file__).resolve().parents[1]
PAPER_METHODS = {"drpo", "dpo", "pso", "grpo", "draft", "vggflow"}


@pytest.mark.parametrize("suite", ["sd-turbo-pickscore", "sdxl-turbo-pickscore"])
def test_each_tiny_twin_mirrors_its_full_suite(suite):
    """Same methods (ids and registered names), same precision, same per-method overrides' keys."""
    full, tiny = load_suite(REPO / f"suites/paper/{suite}.yaml"), load_suite(REPO / f"suites/paper/{suite}-tiny.yaml")
    assert [(m.id, m.method) for m in full.methods] == [(m.id, m.method) for m in tiny.methods]
    assert {m.method for m in full.methods} >= PAPER_METHODS | {"base"}
    assert full.train.precision == tiny.train.precision
    for f, t in zip(full.methods, tiny.methods):
        assert f.train.precision == t.train.precision, f.id


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["sd-turbo-pickscore-tiny", "sdxl-turbo-pickscore-tiny"])
def test_tiny_twin_trains_every_method_at_the_suites_precision(suite, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the suites name their prompt files relative to the repository root
    out = tmp_path / suite
    assert main(["run", f"suites/paper/{suite}.yaml", "--output", str(out), "--quiet"]) == 0
    cells = sorted(p for p in out.iterdir() if p.is_dir() and (p / "cell.json").is_file())
    infos = {c: json.loads((c / "cell.json").read_text()) for c in cells}
    assert {i["method"]["method"] for i in infos.values()} >= PAPER_METHODS | {"base"}
    for cell, info in infos.items():
        assert (cell / "eval.json").is_file()
        if not info["trains"]:
            continue
        for entry in (json.loads(x) for x in (cell / "train.jsonl").read_text().splitlines()):
            # every update counted: a finite loss and gradient, none skipped as an fp16 overflow
            assert entry["loss"] is not None and math.isfinite(entry["loss"]), (cell.name, entry)
            assert math.isfinite(entry["grad_norm"]) and entry["grad_norm"] > 0, (cell.name, entry)
            assert not entry.get("skipped_overflow"), (cell.name, entry)
        lora_b = [v for k, v in load_file(str(cell / "adapter.safetensors")).items() if "lora_B" in k or "lora.up" in k]
        assert lora_b and any(bool((v != 0).any()) for v in lora_b), f"{cell.name}: LoRA B starts at zero and must move"
    assert (out / "report.md").is_file()
    # the paper's published numbers beside the measured ones, from the suite's `paper:` block
    published = load_suite(REPO / f"suites/paper/{suite}.yaml").paper
    report = (out / "report.md").read_text()
    assert "### Paper values beside the measured ones" in report
    assert "| paper | measured (mean ± 95% CI) | measured − paper |" in report
    tables = json.loads((out / "tables" / "tables.json").read_text())["paper-values"]
    by_row = {(r[0], r[2]): r for r in tables["values"]}
    for method in ("base", "drpo", "draft"):
        row = by_row[(method, "pickscore")]
        assert row[3] == published.values[method]["pickscore"]
        assert row[5] == pytest.approx(row[4]["mean"] - row[3]), "measured − paper"
    assert by_row[("drpo", "imagereward")][4] is None, "not evaluated by the tiny twin: 'not measured'"

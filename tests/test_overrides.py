"""Per-method overrides of the training settings and budget: resolved per cell, recorded, flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import ConfigError
from drpo_bench.suite.planning import plan_cells
from drpo_bench.run.runner import run_suite

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "suites" / "toy" / "harness.yaml"

OVERRIDDEN = [
    "methods=[{id: base, method: base}, "
    "{id: drpo, method: drpo, args: {n_pos: 2, n_neg: 2, features: toy-pixels}, train: {lr: 0.02, precision: bf16}}, "
    "{id: draft, method: draft, budget: {steps: 2, candidates_per_prompt: 4}}]",
    "seeds=[0]",
]


def test_cells_resolve_each_methods_overrides():
    suite = load_suite(TOY, OVERRIDDEN)
    cells = {c.method.id: c for c in plan_cells(suite)}
    assert cells["drpo"].train.lr == 0.02 and cells["drpo"].train.precision == "bf16"
    assert cells["drpo"].budget == suite.budget and cells["drpo"].budget_matched  # lr/precision keep the budget
    assert cells["draft"].budget.steps == 2 and cells["draft"].budget.candidates_per_prompt == 4
    assert cells["draft"].budget.prompts_per_update == suite.budget.prompts_per_update
    assert not cells["draft"].budget_matched
    assert cells["draft"].train.lr == suite.train.lr
    assert cells["draft"].overrides == {"budget": {"steps": 2, "candidates_per_prompt": 4}}
    assert cells["drpo"].fingerprint != plan_cells(load_suite(TOY, ["seeds=[0]"]))[1].fingerprint


def test_run_records_overrides_and_report_flags_unmatched_budget(tmp_path):
    out = tmp_path / "run"
    summary = run_suite(load_suite(TOY, OVERRIDDEN), out, quiet=True)
    assert not summary.failures
    draft = json.loads((out / "toy--draft--redness--s0" / "cell.json").read_text())
    assert draft["budget_matched"] is False and draft["budget"]["steps"] == 2
    assert draft["overrides"] == {"budget": {"steps": 2, "candidates_per_prompt": 4}}
    assert len((out / "toy--draft--redness--s0" / "train.jsonl").read_text().splitlines()) == 2
    drpo = json.loads((out / "toy--drpo--redness--s0" / "cell.json").read_text())
    assert drpo["budget_matched"] is True and drpo["train"]["precision"] == "bf16" and drpo["train"]["lr"] == 0.02
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| draft † |" in report and "budget not matched" in report
    assert "| drpo |" in report  # lr/precision overrides alone keep the row unflagged
    assert "| train.lr | 0.02 |" in report and "| budget.steps | 2 |" in report  # the settings table


@pytest.mark.parametrize("methods, where, match", [
    ("[{id: draft, method: draft, budget: {prompts_per_update: 3}}]", "methods[0].budget", "multiple"),
    ("[{id: base, method: base, train: {lr: 0.1}}]", "methods[0]", "does not train"),
    ("[{id: draft, method: draft, train: {precision: fp8}}]", "methods[0].train.precision", "fp8"),
])
def test_bad_overrides_are_located_config_errors(methods, where, match):
    with pytest.raises(ConfigError) as err:
        load_suite(TOY, [f"methods={methods}"])
    assert where in str(err.value) and match in str(err.value)

"""The step-0 evaluation is computed once per seed and shared by the trained cells of that seed
(drpo_bench/run/shared_eval.py); every cell's eval_history.jsonl is what it computed alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import drpo_bench.run.cell_runner as cell_runner
from drpo_bench.suite.config import load_suite
from drpo_bench.suite.planning import plan_cells
from drpo_bench.registry import GENERATORS
from drpo_bench.run.runner import run_suite
from drpo_bench.run.shared_eval import CACHE_DIR, step0_key

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["seeds=[0, 1]", "budget.steps=4", "eval.every=2",
             "methods=[{id: base, method: base}, {id: raft, method: raft}, {id: draft, method: draft}, "
             "{id: drpo, method: drpo, args: {n_pos: 2, n_neg: 2, features: toy-pixels}}]"]


def _histories(out: Path) -> dict[str, list[dict]]:
    return {cell.name: [json.loads(line) for line in (cell / "eval_history.jsonl").read_text().splitlines()]
            for cell in sorted(out.iterdir()) if (cell / "eval_history.jsonl").is_file()}


def test_step0_is_evaluated_once_per_seed_and_each_cell_keeps_its_own_numbers(tmp_path: Path, monkeypatch) -> None:
    suite = load_suite(ROOT / "suites" / "toy" / "harness.yaml", OVERRIDES)
    computed: list[str] = []
    real = cell_runner.shared_step0

    def counting(output, key, compute):
        def wrapped():
            computed.append(key)
            return compute()
        return real(output, key, wrapped)

    monkeypatch.setattr(cell_runner, "shared_step0", counting)
    shared = tmp_path / "shared"
    run_suite(suite, shared, quiet=True)
    assert len(computed) == 2 and len(set(computed)) == 2, "one step-0 evaluation per seed, for three trained rows"
    assert not (shared / CACHE_DIR).exists(), "the cache goes once every cell is finished"

    monkeypatch.setattr(cell_runner, "shared_step0", lambda output, key, compute: compute())  # each cell alone
    alone = tmp_path / "alone"
    run_suite(suite, alone, quiet=True)
    a, b = _histories(shared), _histories(alone)
    assert sorted(a) == sorted(b) and len(a) == 6
    for cell in a:
        assert [r["step"] for r in a[cell]] == [0, 2, 4]
        for x, y in zip(a[cell], b[cell]):
            x.pop("train_seconds"), y.pop("train_seconds")
            assert x == y, f"{cell}: {x} != {y}"  # bit for bit: JSON floats round-trip exactly
    seeds = {cell: cell.rsplit("--s", 1)[1] for cell in a}
    for cell in a:  # and the shared rows are one value per seed
        for other in a:
            if seeds[cell] == seeds[other]:
                assert a[cell][0] == a[other][0]


def test_key_follows_the_adapter_and_the_seed() -> None:
    suite = load_suite(ROOT / "suites" / "toy" / "harness.yaml", OVERRIDES)
    cells = [c for c in plan_cells(suite) if c.trains]
    entry = GENERATORS.get(cells[0].generator.name)
    generator = entry.cls(entry.parse_config(cells[0].generator.args))
    key = step0_key(cells[0], generator, suite.rewards)
    same_seed = next(c for c in cells[1:] if c.seed == cells[0].seed)
    other_seed = next(c for c in cells if c.seed != cells[0].seed)
    assert step0_key(same_seed, generator, suite.rewards) == key
    assert step0_key(other_seed, generator, suite.rewards) != key
    with torch.no_grad():
        next(iter(generator.adapter_state_dict().values()))  # the adapter as a method's prepare_generator might change it
        generator.trainable_parameters()[0].add_(1e-3)
    assert step0_key(cells[0], generator, suite.rewards) != key


def test_last_periodic_evaluation_is_the_final_one_and_equals_an_evaluation_of_its_own(tmp_path: Path, monkeypatch) -> None:
    """The last update's history row comes from the final evaluation's first prompts (no second sampling),
    and equals what a separate evaluation of those prompts gives: the quickstart's metrics (checker, learned
    reward, diversity, FID/KID), a head (3 prompts x 4 images) that ends inside an eval batch of 8."""
    from drpo_bench.run.evaluation import evaluate as real_evaluate

    suite = load_suite(ROOT / "suites" / "quickstart.yaml",
                       ["seeds=[0]", "budget.steps=2", "budget.prompts_per_update=2", "budget.candidates_per_prompt=4",
                        "eval.every=1", "eval.every_max_prompts=3", "eval.max_prompts=5", "eval.images_per_prompt=4",
                        "eval.batch_size=8", "methods=[{id: grpo, method: grpo}]"])
    calls: list[dict] = []
    separate: dict[str, float] = {}

    def spying(cell, generator, prompts, metrics, *args, **kwargs):
        calls.append(kwargs)
        out = real_evaluate(cell, generator, prompts, metrics, *args, **kwargs)
        if kwargs.get("head_prompts"):
            alone = real_evaluate(cell, generator, prompts, metrics, max_prompts=kwargs["head_prompts"])[0]
            separate.update({name: m.mean for name, m in alone.metrics.items()})
        return out

    monkeypatch.setattr(cell_runner, "evaluate", spying)
    out = tmp_path / "run"
    run_suite(suite, out, quiet=True)
    cell = out / "shapes--grpo--clip--s0"
    history = [json.loads(line) for line in (cell / "eval_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 1, 2]
    # step 0 (shared), step 1 (periodic) and step 2: the final evaluation, once
    assert [c.get("head_prompts") for c in calls] == [None, None, 3], calls
    assert history[-1]["n_prompts"] == 3
    assert set(separate) == {"checker", "clip", "diversity", "fid", "kid"}
    for name, value in separate.items():
        assert history[-1][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert json.loads((cell / "eval.json").read_text())["n_prompts"] == 5, "eval.json holds the final evaluation"
    record = json.loads((cell / "cell.json").read_text())
    assert 0 < record["eval_seconds_this_run"] < record["wall_seconds_this_run"], "the evaluations' share is recorded"
    assert (cell / "samples.png").is_file()


def test_key_follows_the_evaluation_code_and_not_the_method(monkeypatch) -> None:
    """An entry left by an interrupted run is not reused once the code that evaluates has changed; the
    method's own code and the training loop are not in that key (every method of a seed shares it)."""
    import drpo_bench.suite.code_hash as code_hash

    suite = load_suite(ROOT / "suites" / "toy" / "harness.yaml", OVERRIDES)
    cells = [c for c in plan_cells(suite) if c.trains and c.seed == 0]
    files = code_hash.evaluation_code(cells[0]).files
    assert "drpo_bench/run/evaluation.py" in files and "drpo_bench/run/cell_runner.py" in files
    assert not any(name.startswith("baselines/") or name == "drpo_bench/run/training.py" for name in files), sorted(files)
    entry = GENERATORS.get(cells[0].generator.name)
    generator = entry.cls(entry.parse_config(cells[0].generator.args))
    key = step0_key(cells[0], generator, suite.rewards)
    real = code_hash.evaluation_code
    monkeypatch.setattr(code_hash, "evaluation_code",
                        lambda cell: dataclasses.replace(real(cell), hash="edited"))
    assert step0_key(cells[0], generator, suite.rewards) != key


def test_the_base_cell_leaves_the_step0_evaluation_and_no_trained_cell_computes_it(tmp_path: Path, monkeypatch) -> None:
    """The base row's final evaluation begins with the prompts a step-0 evaluation reads, of the same
    generator and eval noise: it leaves that entry, the trained cell of its seed reads it (its own
    evaluations are step 1 and the final one), and the row equals the one the trained cell computes
    without a base row, up to float rounding (the head ends inside an eval batch)."""
    from drpo_bench.run.evaluation import evaluate as real_evaluate

    settings = ["seeds=[0]", "budget.steps=2", "budget.prompts_per_update=2", "budget.candidates_per_prompt=4",
                "eval.every=1", "eval.every_max_prompts=3", "eval.max_prompts=5", "eval.images_per_prompt=4",
                "eval.batch_size=8", "execution.jobs=1"]  # in this process: the spy sees every call
    calls: list[tuple[str, dict]] = []

    def spying(cell, generator, prompts, metrics, *args, **kwargs):
        calls.append((cell.method.id, kwargs))
        return real_evaluate(cell, generator, prompts, metrics, *args, **kwargs)

    monkeypatch.setattr(cell_runner, "evaluate", spying)
    rows = {}
    for methods in ("[{id: base, method: base}, {id: grpo, method: grpo}]", "[{id: grpo, method: grpo}]"):
        calls.clear()
        suite = load_suite(ROOT / "suites" / "quickstart.yaml", [*settings, f"methods={methods}"])
        out = tmp_path / str(len(rows))
        run_suite(suite, out, quiet=True)
        history = [json.loads(line) for line in (out / "shapes--grpo--clip--s0" / "eval_history.jsonl").read_text().splitlines()]
        assert [r["step"] for r in history] == [0, 1, 2]
        rows[methods] = history[0]
        grpo_calls = [kwargs.get("max_prompts") for method, kwargs in calls if method == "grpo"]
        if "base" in methods:
            assert [kwargs.get("head_prompts") for method, kwargs in calls if method == "base"] == [3], calls
            assert grpo_calls == [3, None], f"the trained cell evaluates step 1 and the final one only: {calls}"
        else:
            assert grpo_calls == [3, 3, None], "without a base row the trained cell evaluates step 0 itself"
    with_base, alone = rows.values()
    assert with_base.keys() == alone.keys() and with_base["n_prompts"] == alone["n_prompts"] == 3
    for name in with_base:
        assert with_base[name] == pytest.approx(alone[name], rel=1e-5, abs=1e-7), name

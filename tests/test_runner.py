"""The runner on the toy world: cells, skip on rerun, SIGKILL + resume, results store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drpo_bench.suite.config import load_suite
from drpo_bench.suite.planning import plan_cells
from drpo_bench.run.runner import check_output_dir, run_suite
from drpo_bench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "suites" / "toy" / "harness.yaml"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    suite = load_suite(TOY)
    summary = run_suite(suite, out, quiet=True)
    return suite, out, summary


def test_plans_generator_method_reward_seed(toy_run):
    suite, out, summary = toy_run
    ids = [c.id for c in plan_cells(suite)]
    # base runs once per seed with no reward; the 3 trained methods on `redness`; drpo-bb on its own reward
    assert len(ids) == (1 + 3 + 1) * 2
    assert "toy--base--none--s0" in ids and "toy--drpo-bb--redness-bb--s1" in ids
    assert set(summary.statuses.values()) == {"done"} and not summary.failures


def test_cell_folders_are_self_describing(toy_run):
    suite, out, _ = toy_run
    cell = out / "toy--drpo--redness--s0"
    for name in ("cell.json", "train.jsonl", "eval.json", "ledger.json", "samples.png", "adapter.safetensors"):
        assert (cell / name).exists(), name
    info = json.loads((cell / "cell.json").read_text())
    assert info["status"] == "complete" and info["seed"] == 0
    assert info["versions"]["torch"] == torch.__version__ and "hardware" in info and "git" in info
    assert info["higher_is_better"] == {"redness": True, "diversity": True}
    assert info["budget"]["effective_batch"] == 32
    log = [json.loads(x) for x in (cell / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, suite.budget.steps + 1))
    ledger = json.loads((cell / "ledger.json").read_text())["summary"]
    assert ledger["updates"] == suite.budget.steps
    for phase in ("sample", "reference", "reward_forward", "features", "generator_backward", "optimizer"):
        assert ledger["phase_seconds"][phase] > 0, phase
    assert not list(cell.glob("checkpoint*")), "checkpoints are dropped once a cell is complete"
    # the base row trained nothing and has no adapter
    assert not (out / "toy--base--none--s0" / "adapter.safetensors").exists()


def test_training_moves_the_adapter(toy_run):
    _, out, _ = toy_run
    state = load_file(str(out / "toy--drpo--redness--s0" / "adapter.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k), "LoRA B starts at zero and must move"


def test_rerun_skips_every_complete_cell(toy_run):
    suite, out, _ = toy_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/cell.json")}
    summary = run_suite(suite, out, quiet=True)
    assert set(summary.statuses.values()) == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/cell.json")} == before


def test_rerun_with_other_settings_is_refused(toy_run):
    _, out, _ = toy_run
    changed = load_suite(TOY, ["train.lr=0.5"])
    with pytest.raises(UserError, match="other settings"):
        run_suite(changed, out, quiet=True)


def test_committed_results_are_protected(monkeypatch):
    from drpo_bench.suite import code_hash

    with pytest.raises(UserError, match="reference results"):
        check_output_dir(REPO / "results" / "quickstart", allow_reference=False)
    monkeypatch.setattr(code_hash, "git_state", lambda: code_hash.GitState("c" * 40, frozenset(), ()))
    check_output_dir(REPO / "results" / "quickstart", allow_reference=True)
    dirty = code_hash.GitState("c" * 40, frozenset({"baselines/raft.py"}), ("baselines/raft.py",))
    monkeypatch.setattr(code_hash, "git_state", lambda: dirty)
    with pytest.raises(UserError, match="uncommitted changes.*baselines/raft.py"):
        check_output_dir(REPO / "results" / "quickstart", allow_reference=True)
    check_output_dir(REPO / "runs" / "quickstart", allow_reference=False)  # elsewhere: no git needed


def _run_cli(out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "drpo_bench", "run", str(TOY), "--output", str(out), "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def test_sigkill_loses_nothing_and_resumes_from_checkpoint(tmp_path):
    """Kill the process mid-cell; the rerun keeps finished cells and resumes the interrupted one."""
    slow = ["seeds=[0]", "budget.steps=12", "generators=[{name: toy, args: {delay_seconds: 0.05}}]",
            "methods=[{id: base, method: base}, {id: drpo, method: drpo, args: {n_pos: 2, n_neg: 2, features: toy-pixels}}]"]
    out = tmp_path / "killed"
    proc = _run_cli(out, *slow)
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and victim is None:
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.communicate()[1]}")
        done = list(out.glob("*/cell.json"))
        for pointer in out.glob("*/checkpoint.json"):
            if json.loads(pointer.read_text())["step"] >= 4 and done:
                victim = pointer.parent
                break
        time.sleep(0.02)
    assert victim is not None, "never saw a checkpoint after a finished cell"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.read_text() for p in out.glob("*/cell.json")}
    assert finished and victim.name not in finished

    rerun = _run_cli(out, *slow)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    # finished cells were not touched; the victim resumed from its checkpoint
    for name, text in finished.items():
        assert (out / name / "cell.json").read_text() == text
    info = json.loads((victim / "cell.json").read_text())
    assert info["resumed_from_step"] >= 4
    steps = [json.loads(x)["step"] for x in (victim / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), "no step lost or repeated"
    ledger = json.loads((victim / "ledger.json").read_text())
    assert len(ledger["updates"]) == 12, "the ledger spans both processes of the resumed cell"
    assert ledger["summary"]["processes"] == 2 and sum(u["warmup"] for u in ledger["updates"]) == 2
    assert not list(victim.glob("checkpoint*")) and not list(victim.glob(".*.tmp")), "nothing left behind"

    # resuming is exact: an uninterrupted run of the same cell ends with the same adapter and scores
    clean = tmp_path / "clean"
    suite = load_suite(TOY, slow)
    suite = suite.model_copy(update={"methods": [m for m in suite.methods if m.id == "drpo"]})
    run_suite(suite, clean, quiet=True)
    a = load_file(str(victim / "adapter.safetensors"))
    b = load_file(str(clean / victim.name / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    ea = json.loads((victim / "eval.json").read_text())["metrics"]
    eb = json.loads((clean / victim.name / "eval.json").read_text())["metrics"]
    assert ea["redness"]["mean"] == pytest.approx(eb["redness"]["mean"], rel=1e-5)


def test_lr_schedules():
    from drpo_bench.run.training import lr_factor

    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 10) for s in range(10)]
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:]))
    assert 0 < cosine[-1] < 0.05 and cosine[5] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        lr_factor("linear", 0, 10)


def test_per_image_scores_are_kept_per_cell(toy_run):
    suite, out, _ = toy_run
    rows = [json.loads(x) for x in (out / "toy--drpo--redness--s0" / "scores.jsonl").read_text().splitlines()]
    n = len({r["prompt_index"] for r in rows})
    assert len(rows) == n * suite.eval.images_per_prompt
    assert {"image", "prompt_index", "prompt", "task", "redness"} <= set(rows[0])
    mean = json.loads((out / "toy--drpo--redness--s0" / "eval.json").read_text())["metrics"]["redness"]["mean"]
    assert sum(r["redness"] for r in rows) / len(rows) == pytest.approx(mean, rel=1e-5)


def test_a_relative_output_folder_holds_the_cells_directly(tmp_path, monkeypatch):
    """`--output runs/x` (relative, as users type it) puts each cell at runs/x/<cell id>."""
    monkeypatch.chdir(tmp_path)
    summary = run_suite(load_suite(TOY, ["seeds=[0]", "budget.steps=1", "methods=[{id: base, method: base}]"]),
                        Path("runs/rel"), quiet=True)
    assert not summary.failures
    assert (tmp_path / "runs" / "rel" / "toy--base--none--s0" / "cell.json").is_file()
    assert not (tmp_path / "runs" / "rel" / "runs").exists()


def test_an_eval_rewards_settings_are_in_the_fingerprint():
    """A base cell scored by a reward alias: that alias's args change its numbers, so its fingerprint."""
    quick = REPO / "suites" / "quickstart.yaml"
    small, large = (plan_cells(load_suite(quick, extra))[0] for extra in ([], ["rewards.clip.args.size=large"]))
    assert small.id == large.id == "shapes--base--none--s0" and small.fingerprint != large.fingerprint

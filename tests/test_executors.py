"""Cells in parallel (drpo_bench/run/executors.py): a local process pool and Ray give the sequential
run's results; a failing or crashing cell is reported while the others finish; one report, whose
header counts the planned cells missing; the reward server merges concurrent clients' requests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.run.executors import ExecutionPlan, execution_overrides, plan_execution
from drpo_bench.suite.planning import plan_cells
from drpo_bench.report.results import PLAN_FILE
from drpo_bench.rewards.remote import RemoteReward, decode_png, encode_png
from drpo_bench.run.runner import SETTINGS_NAME, run_suite
from drpo_bench.commands.serve import make_server
from drpo_bench.toy import ToyRedness

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "suites" / "toy" / "harness.yaml"
SMALL = ["seeds=[0]", "budget.steps=4", "execution.threads_per_cell=1",
         "methods=[{id: base, method: base}, {id: drpo, method: drpo, args: {n_pos: 2, n_neg: 2, features: toy-pixels}}, "
         "{id: draft, method: draft}]"]
TRAINED = ["toy--drpo--redness--s0", "toy--draft--redness--s0"]


def _results(out: Path) -> dict[str, tuple[dict[str, float], dict[str, torch.Tensor] | None]]:
    """cell id -> (eval.json metric means, adapter tensors or None)."""
    found = {}
    for cell in sorted(p for p in out.iterdir() if (p / "cell.json").exists()):
        means = {k: v["mean"] for k, v in json.loads((cell / "eval.json").read_text())["metrics"].items()}
        adapter = cell / "adapter.safetensors"
        found[cell.name] = (means, load_file(str(adapter)) if adapter.exists() else None)
    return found


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for cell in a:
        assert a[cell][0] == b[cell][0], cell  # bitwise: the same threads per cell, the same arithmetic
        if a[cell][1] is None:
            assert b[cell][1] is None, cell
            continue
        assert sorted(a[cell][1]) == sorted(b[cell][1]), cell
        for key, tensor in a[cell][1].items():
            assert torch.equal(tensor, b[cell][1][key]), (cell, key)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    summary = run_suite(load_suite(TOY, SMALL), out, quiet=True)
    assert set(summary.statuses.values()) == {"done"}, summary.failures
    return out, _results(out)


def test_a_pool_of_two_gives_the_sequential_results(sequential, tmp_path):
    _, expected = sequential
    out = tmp_path / "pool"
    summary = run_suite(load_suite(TOY, [*SMALL, "execution.jobs=2"]), out, quiet=True)
    assert summary.statuses == {c: "done" for c in ["toy--base--none--s0", *TRAINED]}, summary.failures
    assert any(v[1] is not None and any(t.abs().sum() > 0 for k, t in v[1].items() if "lora_B" in k)
               for v in expected.values()), "the trained adapters must have moved for the comparison to mean anything"
    _assert_same(_results(out), expected)
    slots = set()
    for cell in out.glob("*/cell.json"):
        info = json.loads(cell.read_text())
        assert info["execution"]["executor"] == "local" and info["execution"]["jobs"] == 2
        assert info["execution"]["torch_threads"] == 1 and info["hardware"]["torch_threads"] == 1  # the child's own
        slots.add(info["execution"]["slot"])
    assert slots == {0, 1}, "both workers ran cells"
    # a rerun skips every cell in the parent, without starting workers
    again = run_suite(load_suite(TOY, [*SMALL, "execution.jobs=2"]), out, quiet=True)
    assert set(again.statuses.values()) == {"skipped"}


_CRASH = '''
import os
from baselines.draft import DRaFT


class Crash(DRaFT):
    """DRaFT whose process dies at the start of training (as an out-of-memory kill would)."""

    def setup(self, ctx):
        os._exit(3)
'''


def test_a_failing_and_a_dying_cell_are_reported_and_the_others_finish(tmp_path, monkeypatch, capsys):
    (tmp_path / "pool_crash_mod.py").write_text(_CRASH)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this sys.path too
    out = tmp_path / "out"
    methods = ("methods=[{id: draft, method: draft, train: {lr: 1.0e+30}}, {id: crash, method: 'pool_crash_mod:Crash'}, "
               "{id: raft, method: raft}]")
    code = main(["run", str(TOY), "--output", str(out), "--jobs", "2", *SMALL, methods])
    assert code == 1
    err = capsys.readouterr().err
    statuses = {p.name: json.loads((p / "cell.json").read_text())["status"] for p in out.glob("*") if (p / "cell.json").exists()}
    assert statuses == {"toy--raft--redness--s0": "complete"}
    assert "non-finite" in (out / "toy--draft--redness--s0" / "error.txt").read_text()
    assert "worker process died (exit code 3)" in (out / "toy--crash--redness--s0" / "error.txt").read_text()
    assert "2 cell(s) failed" in err
    # the report is written once, at the end, and its header says how many planned cells are missing
    report = (out / "report.md").read_text()
    assert "partial results: 2 of 3 planned cells missing" in report
    assert "toy--crash--redness--s0: failed: its worker process died" in report.replace("\\", "")


def test_shards_write_one_report_when_the_last_one_finishes(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(TOY), "--output", str(out), "--quiet", "--shard", "0/2", *SMALL]) == 0
    assert not (out / "report.md").exists(), "cells of the other shard are not done: no report yet"
    assert main(["report", str(out)]) == 0  # asked for: a partial report that says so
    assert "partial results: 1 of 3 planned cells missing" in (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["run", str(TOY), "--output", str(out), "--quiet", "--shard", "1/2", *SMALL]) == 0
    report = (out / "report.md").read_text()
    assert "planned cells missing" not in report and "3 cells" in report
    assert PLAN_FILE == SETTINGS_NAME


@pytest.mark.slow  # ~25 s: a local Ray cluster starts and stops (CI runs the slow tests)
def test_ray_runs_the_suite_with_the_local_results(sequential, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'drpo-bench[ray]'")
    _, expected = sequential
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        summary = run_suite(load_suite(TOY, [*SMALL, "execution.executor=ray"]), out, quiet=True)
    finally:
        ray.shutdown()
    assert set(summary.statuses.values()) == {"done"}, summary.failures
    _assert_same(_results(out), expected)
    info = json.loads((out / TRAINED[0] / "cell.json").read_text())
    assert info["execution"]["executor"] == "ray" and info["execution"]["torch_threads"] == 1


def test_execution_settings_stay_out_of_fingerprints_and_resolve_auto(monkeypatch):
    plain, pooled = load_suite(TOY, SMALL), load_suite(TOY, [*SMALL, "execution={jobs: auto, threads_per_cell: 3}"])
    assert [c.fingerprint for c in plan_cells(plain)] == [c.fingerprint for c in plan_cells(pooled)]
    monkeypatch.setattr("drpo_bench.run.executors.cpu_cores", lambda: 8)
    cells = plan_cells(plain)  # 3 cells, toy generator: CPU only
    assert plan_execution(load_suite(TOY, [*SMALL, "execution.jobs=auto"]).execution, cells) == ExecutionPlan("local", 3, 1)
    assert plan_execution(load_suite(TOY, [*SMALL[:2], SMALL[3], "execution.jobs=2"]).execution, cells) == ExecutionPlan("local", 2, 4)
    assert plan_execution(plain.execution, cells).jobs == 1
    ray_plan = plan_execution(load_suite(TOY, [*SMALL, "execution.executor=ray"]).execution, cells, cluster={"CPU": 4.0})
    assert (ray_plan.jobs, ray_plan.threads, ray_plan.gpus_per_cell) == (None, 1, 0.0)


def test_execution_flags_are_validated_like_the_yaml(tmp_path, capsys):
    assert main(["run", str(TOY), "--output", str(tmp_path / "o"), "--jobs", "0", *SMALL]) == 2
    assert "jobs must be at least 1" in capsys.readouterr().err
    assert main(["run", str(TOY), "--output", str(tmp_path / "o"), "--jobs", "many", *SMALL]) == 2
    with pytest.raises(UserError, match="--executor ray"):
        execution_overrides(type("A", (), {"address": "auto", "executor": "local"})())


def test_ray_missing_is_a_user_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r"pip install 'drpo-bench\[ray\]'"):
        run_suite(load_suite(TOY, [*SMALL, "execution.executor=ray"]), tmp_path / "o", quiet=True)


# ---- the reward server with several clients ----------------------------------------------------


class _Gated(ToyRedness):
    """Toy redness whose first call waits for ``gate``: requests queue up behind it meanwhile."""

    def __init__(self) -> None:
        super().__init__(ToyRedness.Config())
        self.entered, self.gate, self.first = threading.Event(), threading.Event(), True

    def score(self, images, prompts):
        if self.first:
            self.first = False
            self.entered.set()
            assert self.gate.wait(30)
        return super().score(images, prompts)


class _GatedUnmerged(_Gated):
    merge_requests = False


@pytest.mark.parametrize("reward_cls, calls", [(_Gated, [1, 2]), (_GatedUnmerged, [1, 1, 1])])
def test_concurrent_clients_get_their_own_scores_from_one_merged_call(reward_cls, calls):
    reward = reward_cls()
    server = make_server(reward, "toy-redness", max_batch=16)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    batches = {name: torch.rand(n, 3, 8, 8) for name, n in (("first", 2), ("a", 3), ("b", 5))}
    got: dict[str, torch.Tensor] = {}

    def client(name: str) -> None:
        remote = RemoteReward(RemoteReward.Config(url=url, batch_size=16))
        got[name] = remote(batches[name], [f"{name} {i}" for i in range(len(batches[name]))])

    try:
        first = threading.Thread(target=client, args=("first",))
        first.start()
        assert reward.entered.wait(30)
        others = [threading.Thread(target=client, args=(name,)) for name in ("a", "b")]
        for t in others:
            t.start()
        deadline = time.monotonic() + 30
        while server.batcher.waiting() < 2 and time.monotonic() < deadline:  # both clients wait behind the first
            time.sleep(0.01)
        reward.gate.set()
        for t in (first, *others):
            t.join(30)
    finally:
        server.shutdown()
        server.server_close()
    assert server.batcher.calls == calls
    for name, images in batches.items():
        expected = ToyRedness(ToyRedness.Config())(decode_png(encode_png(images)), ["x"] * len(images))
        torch.testing.assert_close(got[name], expected, rtol=1e-6, atol=1e-6)

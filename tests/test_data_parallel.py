"""One shapes cell trained by 2 processes (torchrun, gloo on CPU) against 1 process at the same
effective batch; SIGKILL of the 2-process run and its resume; rank 1 writes nothing to the store."""

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

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "data_parallel" / "audited_run.py"
CELL = "shapes--drpo--clip--s0"

#: 6 updates of 4 prompts x K 4 in micro-batches of 1 prompt: each of 2 ranks accumulates 2 micro-batches
SUITE = """\
name: dp-tiny
description: one tiny DrPO cell in the shapes world, for the data-parallel tests
generators: [shapes]
rewards:
  clip: {name: shapes-clip, args: {size: small}}
  checker: shapes-checker
prompts: shapes
train_rewards: [clip]
methods:
  - {id: drpo, method: drpo, args: {n_pos: 2, n_neg: 2, feature_keys: [s1.mean_std, s2.mean_std, s3.mean_std]}}
seeds: [0]
budget: {steps: 6, candidates_per_prompt: 4, prompts_per_update: 4, micro_batch_prompts: 1}
train: {lr: 5.0e-3, checkpoint_every: 2}
eval: {images_per_prompt: 1, max_prompts: 4, batch_size: 8, metrics: [checker], grid_prompts: 4, every: 3, every_max_prompts: 4}
execution: {jobs: 1}
"""


def _env(audit: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if audit is not None:
        env["DP_AUDIT_LOG"] = str(audit)
    return env


def _launch(suite: Path, out: Path, nproc: int, audit: Path | None = None, *extra: str) -> subprocess.Popen:
    if nproc == 1:
        cmd = [sys.executable, "-m", "drpo_bench", "run"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER), "run"]
    return subprocess.Popen([*cmd, str(suite), "--output", str(out), "--quiet", *extra], cwd=REPO, env=_env(audit),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-6000:]}"
    return err


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / CELL / "train.jsonl").read_text().splitlines()]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / CELL / "adapter.safetensors"))


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    suite = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    suite.write_text(SUITE)
    return suite


@pytest.fixture(scope="module")
def runs(tmp_path_factory, suite_file):
    root = tmp_path_factory.mktemp("dp")
    suite = suite_file
    audit = root / "rank1-writes.log"
    two = _launch(suite, root / "two", 2, audit)
    _finish(two)
    one = _launch(suite, root / "one", 1)
    _finish(one)
    return root, suite, audit


def test_two_processes_train_as_one(runs):
    root, _, _ = runs
    one, two = _log(root / "one"), _log(root / "two")
    assert [e["step"] for e in two] == list(range(1, 7))
    # update 1: the same noise and prompts, and the summed gradient is the 1-process one (float32 sums)
    for key in ("loss", "grad_norm", "reward_mean"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-5), key
    # after 6 updates the LoRAs agree to float tolerance: measured max |diff| ~1e-3 of max |w| ~0.14 (CPU,
    # 2026-12); 1 process with 2 threads instead of 1 differs from itself by as much (Adam amplifies
    # float32 rounding), while a different noise or gradient moves every weight by ~lr = 5e-3 per update
    a, b = _adapter(root / "one"), _adapter(root / "two")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 5e-3, worst
    for e1, e2 in zip(one, two):
        assert e2["reward_mean"] == pytest.approx(e1["reward_mean"], rel=1e-3)  # measured: 1e-5

    record = json.loads((root / "two" / CELL / "cell.json").read_text())
    assert record["execution"]["world_size"] == 2
    summary = json.loads((root / "two" / CELL / "ledger.json").read_text())["summary"]
    ranks = summary["data_parallel"]["per_rank"]
    assert summary["data_parallel"]["world_size"] == 2 and [r["rank"] for r in ranks] == [0, 1]
    assert all(r["seconds_per_update"] > 0 and r["flops_per_update"] > 0 for r in ranks)
    total = summary["data_parallel"]["flops_per_update_total"]
    assert total == sum(r["flops_per_update"] for r in ranks) == summary["flops_per_update"]
    one_summary = json.loads((root / "one" / CELL / "ledger.json").read_text())["summary"]
    assert total == pytest.approx(one_summary["flops_per_update"], rel=1e-6)  # the same work, split in two


def test_rank_one_writes_nothing_to_the_store(runs):
    root, _, audit = runs
    assert audit.parent == root and not (root / "two" / audit.name).exists()
    writes = audit.read_text().splitlines() if audit.exists() else []
    assert writes == [], writes[:10]
    # and rank 0 wrote the same cell files as one process does, periodic evaluations included
    assert sorted(p.name for p in (root / "two" / CELL).iterdir()) == sorted(p.name for p in (root / "one" / CELL).iterdir())
    history = [json.loads(x)["step"] for x in (root / "two" / CELL / "eval_history.jsonl").read_text().splitlines()]
    assert history == [0, 3, 6]


def test_jobs_are_refused_under_a_multi_process_launch(runs, tmp_path):
    _, suite, _ = runs
    proc = _launch(suite, tmp_path / "jobs", 2, None, "--jobs", "2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Pass --jobs 1" in err, err[-3000:]
    assert not (tmp_path / "jobs").exists(), "refused before writing anything"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _kill_after_a_checkpoint(suite: Path, out: Path) -> None:
    """Launch 2 processes and SIGKILL all of them once a checkpoint is written (before the cell ends)."""
    proc = _launch(suite, out, 2)
    pointer, done, deadline = out / CELL / "checkpoint.json", out / CELL / "cell.json", time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a checkpoint was seen: {proc.communicate()[1][-3000:]}")
        try:
            if json.loads(pointer.read_text())["step"] >= 2 and not done.exists():
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    else:
        pytest.fail("never saw a checkpoint")
    workers = _children(proc.pid)  # torchrun starts its workers in sessions of their own: kill each
    for pid in [*workers, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert not done.exists(), "the kill came after the cell finished; nothing was tested"


@pytest.mark.slow
def test_sigkill_of_the_two_process_run_resumes_exactly(runs, tmp_path):
    root, suite, _ = runs
    out = tmp_path / "killed"
    _kill_after_a_checkpoint(suite, out)
    _finish(_launch(suite, out, 2))
    record = json.loads((out / CELL / "cell.json").read_text())
    assert record["resumed_from_step"] >= 2 and record["execution"]["world_size"] == 2
    assert [e["step"] for e in _log(out)] == list(range(1, 7)), "no update lost or repeated"
    ledger = json.loads((out / CELL / "ledger.json").read_text())
    assert len(ledger["updates"]) == 6 and ledger["summary"]["processes"] == 2
    assert [r["updates"] for r in ledger["summary"]["data_parallel"]["per_rank"]] == [6, 6]
    assert not list((out / CELL).glob("checkpoint*"))
    a, b = _adapter(out), _adapter(root / "two")
    for key in a:  # resuming is exact: the uninterrupted 2-process run's adapter
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    """Another world size resumes correctly: the optimizer state is the same on every rank and an
    update's gradient does not depend on how many processes share it."""
    root, suite, _ = runs
    out = tmp_path / "killed"
    _kill_after_a_checkpoint(suite, out)
    _finish(_launch(suite, out, 1))
    record = json.loads((out / CELL / "cell.json").read_text())
    assert record["resumed_from_step"] >= 2 and "world_size" not in record["execution"]
    assert [e["step"] for e in _log(out)] == list(range(1, 7))
    a, b = _adapter(out), _adapter(root / "one")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 5e-3, worst  # the float tolerance of test_two_processes_train_as_one


# ---- in one process: the checks made before a launch trains, and the noise replay ------------------


def test_a_launch_refuses_what_it_cannot_split(suite_file):
    from drpo_bench.suite.config import load_suite
    from drpo_bench.errors import UserError
    from drpo_bench.suite.planning import plan_cells
    from drpo_bench.run.runner import check_data_parallel

    suite = load_suite(suite_file)
    check_data_parallel(suite, plan_cells(suite), 2)  # 4 prompts = 2 ranks x 2 micro-batches of 1
    with pytest.raises(UserError, match="multiple of 3"):
        check_data_parallel(suite, plan_cells(suite), 3)
    ray = load_suite(suite_file, ["execution.executor=ray"])
    with pytest.raises(UserError, match="Pass --jobs 1"):
        check_data_parallel(ray, plan_cells(ray), 2)


class _Noise:
    latent_shape = (8, 8, 8)

    def noise(self, n, generator):
        return torch.randn((n, *self.latent_shape), generator=generator)


def test_replayed_draws_give_each_micro_batch_its_one_process_noise():
    """A method drawing two noises per micro-batch (as GRPO's and PSO's do): rank r of 2 replays the
    micro-batches before its slice and then draws exactly what one process draws for its own."""
    from drpo_bench.run.distributed import DataParallel, NoiseDraws

    gen, rng = _Noise(), torch.Generator()

    def micro_batch() -> torch.Tensor:
        return torch.cat([gen.noise(2, rng).flatten(), gen.noise(8, rng).flatten()])

    rng.manual_seed(7)
    one = [micro_batch() for _ in range(4)]  # one process: 4 micro-batches in a row
    with NoiseDraws(gen, rng) as draws:
        for rank, first in ((0, 0), (1, 2)):  # 2 ranks x 2 micro-batches; the pattern is learned on rank 0
            dp = DataParallel(rank=0, world_size=1)  # no collectives: broadcast is the identity
            rng.manual_seed(7)
            draws.skip(dp, first)
            for j in range(first, first + 2):
                draws.start()
                assert torch.equal(micro_batch(), one[j]), (rank, j)
                draws.finish(dp, "two-draws")
        assert draws.pattern == [2, 8]
        draws.start()
        gen.noise(3, rng)
        with pytest.raises(RuntimeError, match="same draws in every one"):
            draws.finish(dp, "two-draws")
    assert "noise" not in vars(gen), "the generator's own method again"

"""code_hash.result_provenance: the code record every results/compute file carries (commit, dirty
flag, digests of the writer's import closure), and that each writer puts it under "provenance"."""

from pathlib import Path
from types import SimpleNamespace

from drpo_bench.suite.code_hash import REPO_ROOT, combine, file_digest, refresh, result_provenance


def test_ledger_record_covers_the_counting_code_and_the_methods_run():
    prov = result_provenance(("drpo_bench.compute.bench", "drpo_bench.commands.flops"), methods=("draft",))
    files = prov["code"]["files"]
    for covered in ("drpo_bench/compute/bench.py", "drpo_bench/commands/flops.py", "drpo_bench/compute/memory.py",
                    "drpo_bench/compute/architectures.py", "baselines/draft.py"):
        assert covered in files, covered
    assert files["drpo_bench/compute/bench.py"] == file_digest(REPO_ROOT / "drpo_bench" / "compute" / "bench.py")
    for never in ("drpo_bench/commands/main.py", "drpo_bench/run/runner.py", "drpo_bench/suite/code_hash.py", "baselines/grpo.py"):
        assert never not in files, never  # run orchestration, or a method that was not run
    assert prov["code"]["hash"] == combine(files)
    assert set(prov) == {"commit", "dirty", "uncommitted", "code"}


def test_record_follows_a_scripts_imports_and_changes_with_its_code(tmp_path: Path):
    script = tmp_path / "make_numbers.py"
    script.write_text("from drpo_bench.commands.memory_plan import plan_json\nX = 1\n")
    first = result_provenance((), (script,))
    files = first["code"]["files"]
    assert "drpo_bench/commands/memory_plan.py" in files and "drpo_bench/compute/bench.py" in files  # the script's closure
    assert "make_numbers.py" in files and "make_numbers.py" in first["uncommitted"]  # outside the checkout

    script.write_text("from drpo_bench.commands.memory_plan import plan_json\nX = 1  # a comment changes nothing\n")
    refresh()
    assert result_provenance((), (script,))["code"] == first["code"]

    script.write_text("from drpo_bench.commands.memory_plan import plan_json\nX = 22\n")
    refresh()
    second = result_provenance((), (script,))
    assert second["code"]["hash"] != first["code"]["hash"]
    assert [k for k in files if files[k] != second["code"]["files"][k]] == ["make_numbers.py"]


def test_ledger_and_plan_writers_record_provenance():
    from drpo_bench.commands.flops import result_json
    from drpo_bench.commands.memory_plan import Planner, plan_json

    cost = SimpleNamespace(total=2.0, backward=1.0, phase_flops={"sample": 1.0})
    setting = SimpleNamespace(describe=lambda: {"generator": "sd-turbo"})
    ledger = result_json(setting, {"draft": cost, "drpo": cost})
    assert {"setting", "methods", "ratios", "versions"} <= set(ledger)
    assert {"drpo_bench/commands/flops.py", "baselines/draft.py", "drpo_bench/drpo/method.py"} <= set(
        ledger["provenance"]["code"]["files"])

    suite = "suites/paper/sd-turbo-pickscore.yaml"
    plan = plan_json(suite, [], Planner(80 * 10**9), ("drpo",))
    files = plan["provenance"]["code"]["files"]
    assert {"drpo_bench/commands/memory_plan.py", "drpo_bench/compute/memory.py", suite, "drpo_bench/drpo/method.py"} <= set(files)
    assert files[suite] == file_digest(REPO_ROOT / suite)

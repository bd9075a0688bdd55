"""Mutation testing of the modules the headline numbers flow through, one module at a time.

Each module is paired with the test files that cover it, so one run fits a 2-core machine: the
tree is copied to ``.mutation/<module>/`` (git-ignored), mutmut (https://github.com/boxed/mutmut)
mutates only that module there and runs only its paired tests against each mutant, in one
worker. The working tree is never touched. Usage (docs/testing.md)::

    python scripts/mutation.py drpo/field.py baselines/dpo.py   # some modules
    python scripts/mutation.py --all                              # every paired module
    python scripts/mutation.py --list                             # the pairing
    python scripts/mutation.py --rerun-survivors baselines/dpo.py  # only the last run's survivors, with today's tests

It prints, per module, killed (timeouts included) / survived ("no tests" included: the paired tests
never run that code) and the score killed / (killed + survived), and writes the survivors' names to
``.mutation/<module>/survivors.txt``; ``mutmut show NAME`` run in ``.mutation/<module>/`` shows
one as a diff. ``--rerun-survivors`` runs only the survivors of the module's last full run (read from
``.mutation/<module>/result.json``) against the tests as they are now, on a fresh copy, and adds the
newly killed to that run's kills: the score of the full run with the tests that were added since.
Not part of the default test run: it takes minutes to hours per module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"

#: module (relative to the checkout) -> the test files that cover it (the fast, default-run ones)
PAIRS: dict[str, list[str]] = {
    "drpo_bench/drpo/field.py": ["tests/test_field.py", "tests/test_drpo_options.py"],
    "drpo_bench/drpo/method.py": ["tests/test_field.py", "tests/test_drpo_options.py", "tests/test_method_contract.py"],
    "baselines/dpo.py": ["tests/test_baselines.py", "tests/test_baseline_values.py", "tests/test_baseline_steps.py"],
    "baselines/dpo_offline.py": ["tests/test_offline.py", "tests/test_baseline_values.py"],
    "baselines/grpo.py": ["tests/test_baselines.py", "tests/test_baseline_values.py", "tests/test_baseline_steps.py"],
    "baselines/pso.py": ["tests/test_baselines.py", "tests/test_baseline_values.py", "tests/test_baseline_steps.py"],
    "baselines/raft.py": ["tests/test_baselines.py", "tests/test_baseline_values.py", "tests/test_baseline_steps.py"],
    "baselines/draft.py": ["tests/test_baselines.py", "tests/test_baseline_values.py", "tests/test_baseline_steps.py"],
    "baselines/vggflow.py": ["tests/test_vggflow.py", "tests/test_baseline_values.py", "tests/test_baseline_steps.py"],
    "drpo_bench/report/scores.py": ["tests/test_report_units.py", "tests/test_report_statistics.py"],
    "drpo_bench/report/results.py": ["tests/test_report_units.py", "tests/test_report_statistics.py"],
    "drpo_bench/report/build.py": ["tests/test_report_units.py", "tests/test_report_statistics.py"],
    "drpo_bench/compute/ledger.py": ["tests/test_ledger.py"],
    "drpo_bench/store.py": ["tests/test_store_verify.py", "tests/test_store_files.py"],
    "drpo_bench/suite/planning.py": ["tests/test_store_verify.py", "tests/test_fingerprint.py", "tests/test_overrides.py"],
}

#: functions of a module that the mutation run covers (others are not on a headline number's path)
ONLY_FUNCTIONS: dict[str, list[str]] = {
    "drpo_bench/report/build.py": ["gain_table", "_best", "_fmt", "alignment_table"],
    "drpo_bench/suite/planning.py": ["fingerprint", "redact"],
}

#: tests that need a tool outside the Python environment (a full TeX install) or files outside the copied tree:
#: mutmut needs every selected test green before it starts, and these do not read the mutated numbers
NEEDS_OUTSIDE_TOOLS = ["tests/test_report_units.py::test_wide_table_compiles_without_overfull_boxes",
                      # reads cells from results/quickstart (38 MB, not copied): it checks that a missing pdflatex
                      # leaves the other formats written, not a number
                      "tests/test_report_units.py::test_pdf_without_a_tex_engine_still_writes_the_other_formats"]

#: tests left out of a module's run: the shared-loop test runs the toy suite for every method in a module-scoped
#: fixture (~10 s of CPU before each mutant's first assertion, about a minute per mutant on the shared machine);
#: it checks that each method runs in the loop and writes its files, not a value, and the step-level value tests
#: (test_baseline_values, test_baseline_steps) run every baseline's step and objective instead
SLOW_FOR: dict[str, list[str]] = {
    module: ["tests/test_baselines.py::test_runs_in_the_shared_loop"]
    for module in ("baselines/dpo.py", "baselines/grpo.py", "baselines/pso.py", "baselines/raft.py", "baselines/draft.py")
}

COPY = ("drpo_bench", "baselines", "tests", "suites", "configs", "docs", "scripts", "benchmarks", "README.md",
        "pyproject.toml", "constraints.txt")


def slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def prepare(module: str, tests: list[str]) -> Path:
    """A copy of the tree in .mutation/<slug>/ whose pyproject tells mutmut what to mutate and run."""
    work = WORK / slug(module)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, work / name)
    present = [t for t in tests if (ROOT / t).exists()]
    config = {
        "source_paths": ["drpo_bench", "baselines"],
        "only_mutate": [module],
        "also_copy": [n for n in COPY if n not in ("drpo_bench", "baselines")],
        "pytest_add_cli_args_test_selection": present,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:randomly", "-q",
                                *(arg for test in NEEDS_OUTSIDE_TOOLS + SLOW_FOR.get(module, [])
                                  for arg in ("--deselect", test))],
        "do_not_mutate_patterns": [],
        "timeout_multiplier": 5.0,
        # seconds added to each mutant's test estimate before the multiplier: the estimate counts test calls
        # only, so a module-scoped fixture (test_baselines.py runs the toy suite once, ~10 s of CPU) would
        # otherwise exceed mutmut's CPU limit and read as a timeout, i.e. a kill that no assertion made
        "timeout_constant": 30.0,
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    with open(work / "pyproject.toml", "a") as handle:
        handle.write("\n".join(lines) + "\n")
    return work


def run(module: str, tests: list[str], only: list[str] | None = None) -> dict[str, object]:
    """Mutate ``module`` and run its paired tests against each mutant (or only the mutants named in ``only``)."""
    work = prepare(module, tests)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    log = open(work / "run.log", "w")
    wanted = ONLY_FUNCTIONS.get(module)
    # with ONLY_FUNCTIONS, only those functions' mutants run (functions as x_NAME, methods as xǁCLASSǁNAME)
    names = only or [f"{slug(module)}.{pattern}" for f in wanted or [] for pattern in (f"x_{f}__mutmut_*", f"xǁ*ǁ{f}__mutmut_*")]
    subprocess.run([*mutmut, "run", "--max-children", "1", *names], cwd=work, env=env, stdout=log,
                   stderr=subprocess.STDOUT)
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name:
            status[name] = state
    if wanted:
        status = {n: s for n, s in status.items() if any(f"x_{f}__mutmut_" in n or f"ǁ{f}__mutmut_" in n for f in wanted)}
    if only is not None:
        status = {n: status.get(n, "not checked") for n in only}
    # a timeout is a detected mutant (it changed behaviour enough to hang); "no tests" (the paired tests
    # never run the mutated function) counts as not killed; "not checked" means the run did not finish
    killed = sum(s in ("killed", "timeout") for s in status.values())
    survived = sorted(n for n, s in status.items() if s in ("survived", "no tests"))
    other = {s: sum(v == s for v in status.values()) for s in set(status.values()) - {"killed", "survived"}}
    (work / "survivors.txt").write_text("".join(f"{n}: {status[n]}\n" for n in survived))
    score = killed / (killed + len(survived)) if killed + len(survived) else float("nan")
    result = {"module": module, "tests": tests, "killed": killed, "survived": len(survived), "other": other,
              "score": score, "survivors": survived}
    (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return {**result, "status": status}


def rerun_survivors(module: str, tests: list[str]) -> dict[str, object]:
    """The last full run's survivors against today's tests; the kills add to that run's."""
    previous_file = WORK / slug(module) / "result.json"
    if previous_file.exists():
        previous = json.loads(previous_file.read_text())
    else:  # a run made before result.json was written: its summary row and survivors.txt
        rows = [json.loads(line) for line in (WORK / "summary.jsonl").read_text().splitlines()
                if line.strip()] if (WORK / "summary.jsonl").exists() else []
        rows = [r for r in rows if r["module"] == module and not r.get("rerun_of") and not r.get("other", {}).get("not checked")]
        survivors_file = WORK / slug(module) / "survivors.txt"
        if not rows or not survivors_file.exists():
            sys.exit(f"{previous_file} not found: run a full pass first (python scripts/mutation.py {module})")
        names = [line.rpartition(": ")[0] for line in survivors_file.read_text().splitlines() if line.strip()]
        previous = {**rows[-1], "survivors": names}
    if not previous["survivors"]:
        return previous
    again = run(module, tests, only=previous["survivors"])
    # a survivor the rerun did not kill (survived, no tests, or not checked because the run failed) stays one
    left = sorted(set(previous["survivors"]) - {n for n, s in again["status"].items() if s in ("killed", "timeout")})
    killed = previous["killed"] + len(previous["survivors"]) - len(left)
    result = {**again, "killed": killed, "survived": len(left), "survivors": left,
              "score": killed / (killed + len(left)), "rerun_of": {k: previous[k] for k in ("killed", "survived", "score")}}
    (WORK / slug(module) / "survivors.txt").write_text("".join(f"{n}: {again['status'][n]}\n" for n in left))
    (WORK / slug(module) / "result.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "status"}, indent=1) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to mutate, as in --list")
    parser.add_argument("--all", action="store_true", help="every paired module")
    parser.add_argument("--list", action="store_true", help="print the module -> tests pairing and exit")
    parser.add_argument("--label", default="", help="a tag written with each module's row in .mutation/summary.jsonl")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="run only the survivors of each module's last full run, against the tests as they are now")
    args = parser.parse_args()
    if args.list:
        for module, tests in PAIRS.items():
            print(f"{module}: {' '.join(tests)}")
        return
    modules = list(PAIRS) if args.all else args.modules
    unknown = [m for m in modules if m not in PAIRS]
    if unknown or not modules:
        parser.error(f"name modules from --list (unknown: {unknown})" if unknown else "name modules or pass --all")
    summary = []
    for module in modules:
        result = rerun_survivors(module, PAIRS[module]) if args.rerun_survivors else run(module, PAIRS[module])
        result["label"] = args.label
        summary.append(result)
        with open(WORK / "summary.jsonl", "a") as handle:
            handle.write(json.dumps({k: v for k, v in result.items() if k not in ("survivors", "status")}) + "\n")
        print(f"{module}: killed {result['killed']}, survived {result['survived']}, other {result['other']}, "
              f"score {result['score']:.3f}", flush=True)



if __name__ == "__main__":
    main()

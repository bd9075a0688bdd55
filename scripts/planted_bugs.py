"""Put known bugs into a copy of the tree, one at a time, and check that a named test fails on each.

The bugs are the ones that once passed the suite unnoticed (docs/testing.md): each is a one-line
change of a shipped module, paired with the test that must now fail and the words its message
must contain. The working tree is never touched: each bug goes into a fresh copy under
``.mutation/planted/``. Usage::

    python scripts/planted_bugs.py            # every bug
    python scripts/planted_bugs.py a c        # some, by letter

Prints, per bug, the failing tests and whether the expected one failed with the expected words;
exits 1 if any bug went unnoticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation" / "planted"


@dataclass(frozen=True)
class Bug:
    letter: str
    what: str
    path: str
    old: str
    new: str
    tests: str  # pytest arguments: files or node ids
    expect_test: str  # a failing test's node id must contain this
    expect_words: str  # and the failure output these words


BUGS = [
    Bug("a", "DrPO anchor_features=recompute with positives and negatives swapped", "drpo_bench/drpo/method.py",
        'for which, idx in (("pos", pos_idx), ("neg", neg_idx))', 'for which, idx in (("pos", neg_idx), ("neg", pos_idx))',
        "tests/test_drpo_options.py", "each_option[sdxl-vit-mae-paper]", "SWAPPED"),
    Bug("b", "DrPO's lambda_ref ignored", "drpo_bench/drpo/method.py",
        "return pref_total + cfg.lambda_ref * ref_total, pref_total, ref_total",
        "return pref_total + ref_total, pref_total, ref_total",
        "tests/test_drpo_options.py", "each_option[sd-turbo-paper]", "lambda_ref=0.2 is not applied"),
    Bug("c", "one-step DPO with beta on the policy gap only", "baselines/dpo.py",
        "logit = beta * (gap - ref_gap)", "logit = beta * gap - ref_gap",
        "tests/test_baseline_values.py", "test_dpo_at_paper_beta_with_a_reference_gap", "beta gap - ref_gap"),
    Bug("d", "DPO's winners not detached", "baselines/dpo.py",
        "winners = torch.gather(x.detach(), 1, win_idx", "winners = torch.gather(x, 1, win_idx",
        "tests/test_baseline_values.py", "treats_winners_and_losers_as_constants", "flows through the winners"),
    Bug("e", "win rate's bootstrap interval at the 5th/95th percentiles", "drpo_bench/report/scores.py",
        "np.percentile(rates, [2.5, 97.5])", "np.percentile(rates, [5, 95])",
        "tests/test_report_statistics.py", "test_win_rate_interval_is_95_percent", "5th-95th percentiles"),
    Bug("f", "gain table's bold rule ignoring lower-is-better metrics", "drpo_bench/report/build.py",
        "(est.mean - est.half_width > 0 if higher else est.mean + est.half_width < 0)",
        "est.mean - est.half_width > 0",
        "tests/test_report_statistics.py", "test_gain_bold_follows_each_metrics_good_side", "lower-is-better"),
    Bug("g", "ledger counting the warm-up update in seconds per update", "drpo_bench/compute/ledger.py",
        "timed = [r for r in self.updates if not r.warmup] or self.updates", "timed = list(self.updates)",
        "tests/test_ledger.py", "leaves_out_each_processes_warm_up_update", "would count the warm-up update"),
    Bug("h", "a file listed in cell.json but deleted since, accepted as verified", "drpo_bench/store.py",
        'raise CorruptCellError(path, "missing, though the finished cell recorded it")', "continue",
        "tests/test_store_verify.py", "test_a_recorded_file_deleted_since_is_refused", "DID NOT RAISE"),
]

COPY = ("drpo_bench", "baselines", "tests", "suites", "configs", "pyproject.toml")


def plant(bug: Bug) -> Path:
    work = WORK / bug.letter
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, work / name)
    target = work / bug.path
    text = target.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"bug {bug.letter}: {bug.path} no longer holds {bug.old!r} exactly once; update this script")
    target.write_text(text.replace(bug.old, bug.new))
    return work


def check(bug: Bug) -> bool:
    work = plant(bug)
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *bug.tests.split()],
                          cwd=work, env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    named = [t for t in failed if bug.expect_test in t]
    caught = bool(named) and bug.expect_words in proc.stdout
    print(f"({bug.letter}) {bug.what}: {'CAUGHT' if caught else 'NOT CAUGHT'}")
    for test in failed:
        print(f"    FAILED {test}")
    shutil.rmtree(work)
    return caught


def main() -> None:
    wanted = set(sys.argv[1:])
    unknown = wanted - {b.letter for b in BUGS}
    if unknown:
        raise SystemExit(f"unknown bugs {sorted(unknown)}; pick from {[b.letter for b in BUGS]}")
    results = [check(b) for b in BUGS if not wanted or b.letter in wanted]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()

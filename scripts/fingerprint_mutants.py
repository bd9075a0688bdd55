"""Hand-put mutants of ``Cell.fingerprint``, which mutmut cannot mutate (it skips decorated functions,
and the fingerprint is a ``functools.cached_property``). Each one-line change goes into a fresh copy
of the tree under ``.mutation/fingerprint/`` (the working tree is never touched) and
``tests/test_fingerprint.py`` must fail on it. Usage (docs/testing.md)::

    python scripts/fingerprint_mutants.py

Prints each mutant as caught or MISSED and exits 1 if any was missed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation" / "fingerprint"
MODULE = "drpo_bench/suite/planning.py"

#: (old, new): every part of the fingerprint's payload and its hashing, dropped or changed once
MUTANTS = [
    ('"generator": self.generator.model_dump(),', '"generatorX": self.generator.model_dump(),'),
    ('model_dump(exclude={"tuned_from"})', "model_dump()"),
    ('"args": METHODS.get(self.method.method).cls.identity_args(self.method.args)}', "}"),
    ("redact(self.reward.model_dump()) if self.reward else None", "self.reward.model_dump() if self.reward else None"),
    ('"budget": self.budget.model_dump() if self.trains else None', '"budget": self.budget.model_dump()'),
    ("self.train.model_dump(exclude=BOOKKEEPING) if self.trains else None", "self.train.model_dump() if self.trains else None"),
    ('"train": self.train.model_dump(exclude=BOOKKEEPING) if self.trains else None',
     '"train": self.train.model_dump(exclude=BOOKKEEPING)'),
    ('"eval": redact(self.eval.model_dump()),', '"eval": self.eval.model_dump(),'),
    ("{alias: redact(spec.model_dump())", "{alias: spec.model_dump()"),
    ('"metric_conventions": METRIC_CONVENTIONS,', '"metric_conventions": METRIC_CONVENTIONS + 1,'),
    ('"seed": self.seed,', '"seed": 0,'),
    ('"prompts": self.prompts.model_dump(),', ""),
    ("sort_keys=True, default=str", "sort_keys=False, default=str"),
    (".hexdigest()[:16]", ".hexdigest()[:15]"),
    ("hashlib.sha256(", "hashlib.sha1("),
]


def main() -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    for name in ("drpo_bench", "baselines", "tests", "suites", "configs", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, WORK / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, WORK / name)
    target = WORK / MODULE
    original = target.read_text()
    env = {**os.environ, "PYTHONPATH": str(WORK), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    missed = 0
    for old, new in MUTANTS:
        if original.count(old) != 1:
            sys.exit(f"{MODULE} changed: {old!r} is not there exactly once; update MUTANTS")
        target.write_text(original.replace(old, new))
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fingerprint.py", "-q", "-x",
                               "-p", "no:cacheprovider", "-p", "no:randomly"], cwd=WORK, env=env, capture_output=True)
        caught = done.returncode != 0
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {old!r} -> {new!r}", flush=True)
    target.write_text(original)
    print(f"{len(MUTANTS) - missed} of {len(MUTANTS)} caught")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()

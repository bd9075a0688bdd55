"""A cell is tied to the code that made it: an edit to a module a cell runs stales that cell (the
rerun stops and names it; --rerun-stale retrains exactly those, --keep-stale keeps them marked),
an edit elsewhere stales nothing. Each test edits a COPY of the checkout and runs the CLI there."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drpo_bench.suite.code_hash import code_text

REPO = Path(__file__).resolve().parents[1]
#: the toy harness suite, cut to one seed, two updates and one metric (each run: seconds)
FAST = ["seeds=[0]", "budget.steps=2", "eval.metrics=[redness]"]
SUITE = "suites/toy/harness.yaml"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def copy_checkout(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for part in ("drpo_bench", "baselines", "suites"):
        shutil.copytree(REPO / part, dest / part, ignore=IGNORE)
    return dest


def cli(root: Path, *args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m drpo_bench ARGS` run in ``root`` with the copy (and ``extra_path``) first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (root, extra_path) if p is not None),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "drpo_bench", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)


def run(root: Path, *flags: str, overrides: list[str] = FAST, **kw) -> subprocess.CompletedProcess:
    return cli(root, "run", SUITE, *overrides, "--output", str(root / "out"), "--quiet", "--threads-per-cell", "1",
               *flags, **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of every cell folder (the run lock aside), by path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob("*--*/**/*"))
            if p.is_file() and not p.name.endswith(".lock")}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    """A copy of the checkout and a finished toy store made by it (5 cells: base, drpo, draft, raft, drpo-bb)."""
    root = copy_checkout(tmp_path_factory.mktemp("store") / "checkout")
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert "cells: 5 done" in done.stderr
    return root


@pytest.fixture
def store(toy_store, tmp_path):
    """A fresh copy of the checkout with its store, for one test to edit."""
    root = tmp_path / "checkout"
    shutil.copytree(toy_store, root, ignore=IGNORE)
    return root


def cells_of(text: str, method: str) -> bool:
    return f"toy--{method}--" in text


def test_editing_raft_stops_the_rerun_then_rerun_stale_retrains_raft_only(store):
    before = snapshot(store / "out")
    edit(store / "baselines" / "raft.py", "loss = (out.float()", "loss = 3 * (out.float()")  # the edit, on the default (self_denoise) loss

    stopped = run(store)
    assert stopped.returncode == 2, stopped.stderr
    message = " ".join(stopped.stderr.split())
    assert "baselines/raft.py" in message and "toy--raft--redness--s0" in message
    assert "--rerun-stale" in message and "--keep-stale" in message and "Nothing was trained" in message
    assert not any(cells_of(message, m) for m in ("drpo", "draft", "base", "drpo-bb")), message
    assert snapshot(store / "out") == before, "a stopped run changes nothing"
    pooled = run(store, "--shard", "1/2", "--jobs", "2")  # the shard holding raft, in a local pool: same rule
    assert pooled.returncode == 2 and "baselines/raft.py" in " ".join(pooled.stderr.split()), pooled.stderr

    rerun = run(store, "--rerun-stale")
    assert rerun.returncode == 0, rerun.stderr
    assert "cells: 1 done, 4 skipped" in rerun.stderr
    after = snapshot(store / "out")
    for name, data in before.items():
        if not name.startswith("toy--raft--"):
            assert after[name] == data, f"{name} changed"
    assert after["toy--raft--redness--s0/train.jsonl"] != before["toy--raft--redness--s0/train.jsonl"]
    old_loss = json.loads(before["toy--raft--redness--s0/train.jsonl"].splitlines()[0])["loss"]
    new_loss = json.loads(after["toy--raft--redness--s0/train.jsonl"].splitlines()[0])["loss"]
    assert new_loss == pytest.approx(3 * old_loss, rel=1e-5), "the retrained cell ran the edited loss"
    code = json.loads(after["toy--raft--redness--s0/cell.json"])["code"]
    assert "baselines/raft.py" in code["files"] and "drpo_bench/run/training.py" in code["files"]

    again = run(store)  # the store is current again: every cell skipped
    assert again.returncode == 0 and "cells: 5 skipped" in again.stderr, again.stderr


def test_editing_the_drift_field_stales_the_drpo_cells_and_keep_stale_marks_them(store):
    before = snapshot(store / "out")
    edit(store / "drpo_bench" / "drpo" / "field.py", "def drift_loss(", "FIELD_EDITED = True\n\n\ndef drift_loss(")
    stopped = run(store)
    assert stopped.returncode == 2, stopped.stderr
    message = " ".join(stopped.stderr.split())
    assert "drpo_bench/drpo/field.py" in message
    assert cells_of(message, "drpo") and cells_of(message, "drpo-bb")
    assert not any(cells_of(message, m) for m in ("raft", "draft", "base")), message

    kept = run(store, "--keep-stale")
    assert kept.returncode == 0 and "cells: 5 skipped" in kept.stderr, kept.stderr
    assert {k: v for k, v in snapshot(store / "out").items() if "kept_stale" not in k} == before
    report = (store / "out" / "report.md").read_text()
    recorded = json.loads(before["toy--drpo--redness--s0/cell.json"])["code"]["hash"]
    assert f"code hash {recorded}" in report and "drpo\\_bench/drpo/field.py" in report  # the footnote
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    assert "‡" in rows["drpo ‡"] and "drpo-bb ‡" in rows and "raft" in rows  # the drpo rows marked


def test_a_comment_in_report_or_cli_code_stales_nothing(store):
    before = snapshot(store / "out")
    edit(store / "drpo_bench" / "report" / "build.py", "def build_report(", "# a comment\ndef build_report(")
    edit(store / "drpo_bench" / "commands" / "main.py", "def main(", "def _unused() -> None:\n    pass\n\n\ndef main(")
    # and a comment (no code) in a module every trained cell runs
    edit(store / "drpo_bench" / "run" / "training.py", "def train_cell(", "# an explanation\ndef train_cell(")
    rerun = run(store)
    assert rerun.returncode == 0 and "cells: 5 skipped" in rerun.stderr, rerun.stderr
    assert snapshot(store / "out") == before


def test_editing_the_shared_loop_stales_every_trained_cell_but_not_base(store):
    edit(store / "drpo_bench" / "run" / "training.py", "MAX_FP16_SKIPS = 25", "MAX_FP16_SKIPS = 26")
    message = " ".join(run(store).stderr.split())
    assert "5 cell(s)" not in message and "4 cell(s)" in message and "drpo_bench/run/training.py" in message
    assert not cells_of(message, "base")


def test_a_method_outside_the_project_is_covered(tmp_path):
    root = copy_checkout(tmp_path / "checkout")
    ext = tmp_path / "ext"
    (ext / "extpkg").mkdir(parents=True)
    (ext / "extpkg" / "__init__.py").write_text("")
    (ext / "extpkg" / "helper.py").write_text("SCALE = 1.0\n")
    (ext / "extpkg" / "rwr.py").write_text(
        "from baselines.raft import RAFT\n"
        "from extpkg.helper import SCALE\n\n\n"
        "class ScaledRaft(RAFT):\n"
        "    def step(self, prompts, ctx):\n"
        "        out = super().step(prompts, ctx)\n"
        "        return out\n"
    )
    only = [*FAST, "methods=[{id: mine, method: 'extpkg.rwr:ScaledRaft'}]"]
    first = run(root, overrides=only, extra_path=ext)
    assert first.returncode == 0 and "cells: 1 done" in first.stderr, first.stderr
    code = json.loads((root / "out" / "toy--mine--redness--s0" / "cell.json").read_text())["code"]
    assert {"extpkg/rwr.py", "extpkg/helper.py", "baselines/raft.py"} <= set(code["files"])
    assert {"extpkg/rwr.py", "extpkg/helper.py"} <= set(code["outside"])

    (ext / "extpkg" / "helper.py").write_text("SCALE = 3.0\n")  # an edit in a module the method imports
    stopped = run(root, overrides=only, extra_path=ext)
    assert stopped.returncode == 2 and "extpkg/helper.py" in " ".join(stopped.stderr.split()), stopped.stderr
    rerun = run(root, "--rerun-stale", overrides=only, extra_path=ext)
    assert rerun.returncode == 0 and "cells: 1 done" in rerun.stderr, rerun.stderr


def test_code_text_ignores_comments_and_blank_lines_only():
    a = b'x = 1  # one\n\n\ndef f():\n    """doc\n\n    more"""\n    return x\n'
    assert code_text(a) == code_text(b'x = 1\n# note\ndef f():   \n    """doc\n\n    more"""\n    return x\n')
    assert code_text(a) != code_text(a.replace(b"x = 1", b"x = 2"))
    assert code_text(a) != code_text(a.replace(b"doc\n\n    more", b"doc\n    more"))  # inside a string: a value
    assert code_text(b"s = '# not a comment'\n") != code_text(b"s = ''\n")


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_references_come_from_a_clean_tree_and_report_honours_the_guard(store):
    (store / ".gitignore").write_text("out/\n__pycache__/\n")
    git(store, "init", "-q")
    git(store, "add", "-A")
    git(store, "commit", "-qm", "copy")
    out_report = (store / "out" / "report.md").read_bytes()

    refused = cli(store, "report", "out", "--output", "results/rep")  # report writes results/ only on purpose
    assert refused.returncode == 2 and "reference results" in refused.stderr, refused.stderr
    assert not (store / "results").exists()
    elsewhere = cli(store, "report", "out", "--output", "elsewhere", "--formats", "md")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert (store / "elsewhere" / "report.md").exists() and (store / "out" / "report.md").read_bytes() == out_report

    clean = cli(store, "report", "out", "--output", "results/rep", "--update-reference", "--formats", "md")
    assert clean.returncode == 0, clean.stderr
    git(store, "add", "-A")
    git(store, "commit", "-qm", "reference")
    (store / "results" / "rep" / "report.md").write_text("edited\n")  # results are not code: still clean
    assert cli(store, "report", "out", "--output", "results/rep", "--update-reference", "--formats", "md").returncode == 0

    # a reference made from the clean tree names its commit, and that commit's code has its hash
    base_only = [*FAST, "methods=[{id: base, method: base}]"]
    made = cli(store, "run", SUITE, *base_only, "--output", "results/toy", "--update-reference", "--quiet")
    assert made.returncode == 0, made.stderr
    code = json.loads((store / "results" / "toy" / "toy--base--none--s0" / "cell.json").read_text())["code"]
    head = git(store, "rev-parse", "HEAD").strip()
    assert code["commit"] == head and code["dirty"] is False and code["uncommitted"] == []
    for path, digest in code["files"].items():
        committed = subprocess.run(["git", "-C", str(store), "show", f"{head}:{path}"], capture_output=True).stdout
        text = code_text(committed) if path.endswith(".py") else committed
        assert hashlib.sha256(text).hexdigest()[:16] == digest, path
    assert "drpo_bench/run/training.py" not in code["files"], "a cell that does not train does not run the loop"
    shutil.rmtree(store / "results" / "toy")

    edit(store / "baselines" / "raft.py", "loss = (out.float()", "loss = 3 * (out.float()")
    dirty = cli(store, "run", SUITE, *FAST, "--output", "results/toy", "--update-reference", "--quiet")
    assert dirty.returncode == 2 and "baselines/raft.py" in dirty.stderr, dirty.stderr  # `run` has the same guard
    assert not (store / "results" / "toy").exists()
    git(store, "checkout", "--", "baselines/raft.py")
    (store / "baselines" / "extra.py").write_text("X = 1\n")  # untracked code
    untracked = cli(store, "report", "out", "--output", "results/rep", "--update-reference", "--formats", "md")
    assert untracked.returncode == 2 and "baselines/extra.py" in untracked.stderr, untracked.stderr

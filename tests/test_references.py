"""Every committed reference under results/ is traceable: each cell names a clean commit and its
code hash is the hash of that commit's code; a cell that is not is marked by the report (‡ and a
"Code" note), so no number in a committed report silently comes from code no one can check out."""

import hashlib
import subprocess
from pathlib import Path

import pytest

from drpo_bench.suite.code_hash import DIGEST, code_text, combine
from drpo_bench.report.provenance import MARK, cell_mark, code_notes
from drpo_bench.report.results import load_results

REPO = Path(__file__).resolve().parents[1]
#: every committed results folder holding cells (a suite's, and a tuning run's cells under tuning/cells)
REFERENCES = sorted({p.parent.parent for p in (REPO / "results").rglob("cell.json")})


def git(*args: str, binary: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=not binary)


def digest_at(commit: str, path: str) -> str | None:
    """The code_hash digest of ``path`` as committed in ``commit`` (None if it is not there)."""
    shown = git("show", f"{commit}:{path}", binary=True)
    if shown.returncode:
        return None
    data = code_text(shown.stdout) if path.endswith(".py") else shown.stdout
    return hashlib.sha256(data).hexdigest()[:DIGEST]


def test_there_are_references():
    assert REFERENCES, "no committed results/*/ folder with cells"


@pytest.mark.parametrize("folder", REFERENCES, ids=lambda p: p.relative_to(REPO / "results").as_posix())
def test_each_reference_cell_is_a_clean_commits_code_or_marked(folder):
    results = load_results(folder)
    marked, notes = code_notes(results)
    checked = 0
    for result in results:
        if cell_mark(result) is not None:  # untraceable: the report must mark it
            assert result.cell_id in marked and any(n.startswith(MARK) for n in notes)
            continue
        code = result.info.code
        assert code["commit"] and code["dirty"] is False and not code["uncommitted"], result.cell_id
        if git("rev-parse", "--is-inside-work-tree").returncode:
            pytest.skip("not a git checkout: the commits cannot be read")
        if git("cat-file", "-e", f"{code['commit']}^{{commit}}").returncode:
            shallow = git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
            if shallow:
                pytest.skip(f"shallow clone lacks commit {code['commit']}")
            pytest.fail(f"{result.cell_id} names commit {code['commit']}, which this repository does not have")
        at_commit = {path: digest_at(code["commit"], path) for path in code["files"]}
        changed = [p for p, d in at_commit.items() if d != code["files"][p]]
        assert not changed, f"{result.cell_id}: files differ from commit {code['commit'][:12]}: {changed}"
        assert combine(code["files"]) == code["hash"], result.cell_id
        checked += 1
    # every cell is accounted for: traceable and checked, or marked
    assert checked + len(marked & {r.cell_id for r in results}) == len(results)


#: every committed compute result: FLOP ledgers, memory predictions and plans, the full-size CPU check
COMPUTE = sorted((REPO / "results" / "compute").glob("*.json"))


def compute_provenances(data: dict) -> dict[str, dict | None]:
    """{where: provenance} of one results/compute file: its top-level ``provenance``, or, in
    cpu-fullsize.json ({setting: {"methods": {method: row}}}), each method row's."""
    if "provenance" in data or any(k in data for k in ("setting", "suite", "methods", "rows")):
        return {"": data.get("provenance")}
    return {f"{key}/{method}": row.get("provenance") for key, entry in data.items()
            for method, row in entry.get("methods", {}).items()} or {"": None}


def untraced_marks() -> set[str]:
    """Rows results/compute/README.md marks as made before results recorded their code
    (lines "- untraced ‡ `cpu-fullsize.json:<key>/<method>`: why"): the README's tables flag them."""
    import re

    text = (REPO / "results" / "compute" / "README.md").read_text()
    return set(re.findall(r"^- untraced ‡ `([^`]+)`", text, flags=re.MULTILINE))


def test_there_are_compute_results():
    assert COMPUTE, "no committed results/compute/*.json"


def test_each_untraced_mark_names_a_row_without_provenance():
    import json

    rows = {f"{path.name}{':' + where if where else ''}": prov for path in COMPUTE
            for where, prov in compute_provenances(json.loads(path.read_text())).items()}
    for mark in untraced_marks():
        assert mark in rows, f"results/compute/README.md marks {mark}, which no file holds"
        assert rows[mark] is None, f"{mark} records its provenance now: drop its untraced mark"


@pytest.mark.parametrize("path", COMPUTE, ids=lambda p: p.name)
def test_each_compute_result_is_a_clean_commits_code(path):
    import json

    found = compute_provenances(json.loads(path.read_text()))
    for where, prov in found.items():
        name = f"{path.name}{':' + where if where else ''}"
        if prov is None and name in untraced_marks():
            continue  # made before results recorded their code; the README flags it
        assert prov, f"{name} records no provenance: regenerate it (results/compute/README.md)"
        assert prov["commit"] and prov["dirty"] is False and not prov["uncommitted"], (name, prov["commit"],
                                                                                       prov["dirty"], prov["uncommitted"])
        files = prov["code"]["files"]
        assert files and combine(files) == prov["code"]["hash"], name
        if git("rev-parse", "--is-inside-work-tree").returncode:
            pytest.skip("not a git checkout: the commits cannot be read")
        if git("cat-file", "-e", f"{prov['commit']}^{{commit}}").returncode:
            if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
                pytest.skip(f"shallow clone lacks commit {prov['commit']}")
            pytest.fail(f"{name} names commit {prov['commit']}, which this repository does not have")
        changed = [p for p, d in files.items() if digest_at(prov["commit"], p) != d]
        assert not changed, f"{name}: files differ from commit {prov['commit'][:12]}: {changed}"

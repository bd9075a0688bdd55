"""Reports: tables with mean ± CI over seeds, arrows, bold best, escaping; from a toy run."""

from pathlib import Path

import pytest

from drpo_bench.suite.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.report import build_report
from drpo_bench.report.results import Estimate
from drpo_bench.run.runner import run_suite

TOY = Path(__file__).resolve().parents[1] / "suites" / "toy" / "harness.yaml"


def test_estimate_is_a_student_t_interval():
    est = Estimate.of([1.0, 2.0, 3.0])
    assert est.mean == pytest.approx(2.0)
    assert est.half_width == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert Estimate.of([5.0]).half_width is None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    suite = load_suite(TOY, ["seeds=[0,1]", "budget.steps=2",
                             "methods=[{id: base, method: base}, {id: draft, method: draft}]"])
    run_suite(suite, out, quiet=True)
    return out, build_report(out)


def test_markdown_table(report):
    out, written = report
    md = written["md"].read_text()
    assert "| method | train reward | seeds | redness ↑ | diversity ↑ |" in md
    assert "±" in md and "**" in md
    rows = [line for line in md.splitlines() if line.startswith("| base") or line.startswith("| draft")]
    assert [r.split("|")[1].strip() for r in rows][:2] == ["base", "draft"], "rows in suite order"
    assert "Compute per update" in md and "s / update" in md


def test_latex_and_html(report):
    _, written = report
    tex = written["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"\ensuremath{\pm}" in tex and r"\textbf{" in tex
    html = written["html"].read_text()
    assert "<table>" in html and "<b>" in html


def test_html_escapes_everything(tmp_path, report):
    out, _ = report
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cell = next(copy.glob("*draft*s0/cell.json"))
    info = json.loads(cell.read_text())
    info["method"]["id"] = "<script>alert(1)</script>"
    cell.write_text(json.dumps(info))
    html = build_report(copy)["html"].read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_report_on_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "nope")


def _cell(method: str, seed: int, score: float) -> "CellResult":
    from drpo_bench.report.results import CellResult
    from drpo_bench.store import CellRecord, MetricRecord

    info = CellRecord(status="complete", cell_id=f"g--{method}--r--s{seed}", fingerprint="f", suite="s",
                      generator={"name": "g"}, seed=seed, method={"id": method, "method": method},
                      trains=method != "base", eval={}, train_reward=None if method == "base" else {"alias": "r"})
    return CellResult(info.cell_id, info, {"score": MetricRecord(mean=score, higher_is_better=True)}, {}, [], Path("."))


def test_gain_table_pairs_by_seed_and_bolds_only_a_clear_gain():
    from drpo_bench.report.build import gain_table
    from drpo_bench.report.results import group_rows

    base = [0.40, 0.50, 0.60]  # seed-to-seed spread far larger than the gain
    cells = [_cell("base", s, v) for s, v in enumerate(base)]
    cells += [_cell("good", s, v + d) for s, (v, d) in enumerate(zip(base, [0.020, 0.021, 0.019]))]
    cells += [_cell("noisy", s, v + d) for s, (v, d) in enumerate(zip(base, [0.05, -0.04, 0.01]))]
    table = gain_table(group_rows(cells), multi=False)
    by_method = {row[0]: (row, marks) for row, marks in zip(table.rows, table.bold)}
    assert set(by_method) == {"good", "noisy"}, "the base row is the reference, not a row"
    good, good_bold = by_method["good"]
    assert good[2] == "3" and good[3].startswith("+0.020 ± ")
    assert good_bold[3], "a consistent per-seed gain clears its paired interval"
    noisy, noisy_bold = by_method["noisy"]
    assert not noisy_bold[3], "a gain whose sign flips between seeds does not"


def test_report_has_the_paired_gain_table(report):
    _, written = report
    md = written["md"].read_text()
    assert "Gain over base, paired by seed" in md and "| draft |" in md.split("Gain over base")[1]

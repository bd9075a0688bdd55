"""Reports: tables with mean ± CI over seeds, arrows, bold best, escaping; from a toy run."""

from pathlib import Path

import pytest

from drpo_bench.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.report import build_report
from drpo_bench.report.results import Estimate
from drpo_bench.runner import run_suite

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
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"\textbf{" in tex
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

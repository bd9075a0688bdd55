"""Paper-ready outputs of a toy run: LaTeX that pdflatex compiles without overfull boxes, a
self-contained HTML page that fits a 1280-px window, figures, win rates, CSV/JSON tables.

The LaTeX check skips (with the reason) where pdflatex or one of the LaTeX packages the report uses
(latex.PACKAGES, found with kpsewhich) is missing; the browser check where chromium is.
"""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.report import build_report
from drpo_bench.report.latex import log_problems, missing_tex
from drpo_bench.run.runner import run_suite

TOY = Path(__file__).resolve().parents[1] / "suites" / "toy" / "harness.yaml"
ODD_NAME = "dräft “β” 50% & a_b ± #1"  # a user-given method id with LaTeX specials and non-ASCII
ODD_PROMPT = "un chat sur la lune, café ☕ 猫 <b>x</b> $5"
NO_PDF = missing_tex()  # pdflatex and exactly the LaTeX packages the report uses (kpsewhich), or why not
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    suite = load_suite(TOY, ["seeds=[0,1]", "budget.steps=2",
                             "methods=[{id: base, method: base}, {id: draft, method: draft}, {id: raft, method: raft}, "
                             "{id: drpo-bb, method: drpo, reward: redness-bb, args: {n_pos: 2, n_neg: 2, features: toy-pixels}}]"])
    run_suite(suite, out, quiet=True)
    for cell in out.glob("*--draft--*"):  # a user-given name and prompt the report must escape
        info = json.loads((cell / "cell.json").read_text())
        info["method"]["id"] = ODD_NAME
        (cell / "cell.json").write_text(json.dumps(info))
    for scores in out.glob("*/scores.jsonl"):
        rows = [json.loads(line) for line in scores.read_text().splitlines()]
        for row in rows:
            if row["prompt_index"] == 0:
                row["prompt"] = ODD_PROMPT
        scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(out)
    return out


def test_tex_is_ascii_standalone_with_labels(folder):
    tex = (folder / "report.tex").read_text(encoding="utf-8")
    bad = sorted({ch for ch in tex if ord(ch) > 127})
    assert not bad, f"non-ASCII characters in report.tex: {bad}"
    assert tex.count(r"\documentclass") == 1 and r"\end{document}" in tex and r"\usepackage{booktabs}" in tex
    assert r"\label{tab:alignment}" in tex and r"\label{tab:win-rate}" in tex
    figures = re.findall(r"\\begin\{figure\}.*?\\end\{figure\}", tex, re.S)
    assert figures and all(r"\caption{" in f and r"\label{fig:" in f for f in figures)
    assert r"dr\"{a}ft" not in tex and "dra" in tex and r"50\%" in tex


@pytest.mark.skipif(NO_PDF is not None, reason=f"no PDF here: {NO_PDF}")
def test_pdflatex_compiles_the_report_with_no_overfull_box(folder, capsys):
    assert main(["report", str(folder), "--formats", "pdf"]) == 0
    assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-"
    log = (folder / "report.latex.log").read_text(errors="replace")
    assert "Output written on report.pdf" in log
    assert log_problems(log, tolerance_pt=1.0) == []
    assert "undefined references" not in log and "Rerun to get" not in log, "labels resolved (two passes)"


def test_html_is_self_contained(folder):
    page = (folder / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", page) + re.findall(r"url\(([^)]*)\)", page)
    assert refs, "the page has images"
    external = [r for r in refs if not r.startswith(("data:", "#"))]
    assert not external, f"references to other files: {external[:3]}"
    figures = sorted(p.name for p in (folder / "figures").glob("*.png"))
    images = re.findall(r"src='data:image/png;base64,([^']*)'", page)
    assert len(images) == len(figures)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<script" not in page and "&lt;b&gt;x&lt;/b&gt;" in page, "the prompt is text, not markup"
    assert page.count("<div class='scroll'><table>") == page.count("<table>")


@pytest.mark.skipif(BROWSER is None, reason="no chromium / chrome on PATH (apt-get install chromium)")
def test_html_fits_a_1280px_window_in_chromium(folder, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"]
    shot = tmp_path / "report.png"
    subprocess.run([BROWSER, *flags, f"--screenshot={shot}", (folder / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
    probe = tmp_path / "probe.html"  # the page plus a line that writes its scroll width into the DOM
    probe.write_text((folder / "report.html").read_text().replace(
        "</body>", "<script>document.body.setAttribute('data-scroll-width', document.documentElement.scrollWidth)"
                   "</script></body>"))
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    width = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
    assert width <= 1280, f"the page is {width} px wide in a 1280-px window"


def test_figures_one_scale_per_axis(folder):
    names = {p.stem for p in (folder / "figures").glob("*.png")}
    assert {"train-reward-redness", "train-reward-redness-bb"} <= names, "one training-reward figure per reward"
    assert {"redness-vs-compute", "diversity-vs-compute", "pareto-redness", "pareto-diversity"} <= names
    assert "samples-seed-0" in names and "samples-seed-1" not in names, "one grid figure, at the lowest seed"
    md = (folder / "report.md").read_text()
    captions = re.findall(r"Pareto front \(([^)]*)\): ([^.]*)\.", md)
    assert captions
    for caption in captions:  # "dashed" only when a dashed line is drawn (a front of two or more)
        assert ("dashed" in caption[0]) == ("," in caption[1]), caption
    tex = (folder / "report.tex").read_text()
    caption = re.search(r"\\caption\{Samples at seed 0.*?\}\n", tex, re.S).group(0)
    assert "(1) un chat sur la lune" in caption and "(2) held-out toy prompt 1" in caption, "prompts as captions"


def test_eval_history_draws_curves(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for cell in copy.glob("*--raft--*"):
        final = json.loads((cell / "eval.json").read_text())["metrics"]["redness"]["mean"]
        (cell / "eval_history.jsonl").write_text("".join(json.dumps({"step": s, "redness": final * s / 2}) + "\n"
                                                         for s in (1, 2)))
    build_report(copy, "md")
    md = (copy / "report.md").read_text()
    block = md.split("![redness-vs-compute]")[1].split("###")[0]
    assert "Curves (raft (redness)): evaluations during training" in block
    assert "No evaluation history for" in block and "hollow" in block, "the other rows' end points drawn apart"
    assert "Curves" not in md.split("![diversity-vs-compute]")[1].split("###")[0], "no history for diversity"


def test_win_rate_table_and_exports(folder):
    md = (folder / "report.md").read_text()
    assert "Win rate against base" in md and "| raft | redness | 32 |" in md  # 4 prompts x 4 images x 2 seeds
    tables = json.loads((folder / "tables" / "tables.json").read_text())
    assert {"alignment", "gain-over-base", "win-rate", "compute"} <= set(tables)
    for slug, table in tables.items():
        csv_text = (folder / "tables" / f"{slug}.csv").read_text()
        assert len(csv_text.strip().splitlines()) == len(table["rows"]) + 1, slug
    alignment = tables["alignment"]
    row = next(r for r in alignment["values"] if r[0] == "raft")
    cells = sorted(folder.glob("*--raft--*"))
    means = [json.loads((c / "eval.json").read_text())["metrics"]["redness"]["mean"] for c in cells]
    assert row[3]["mean"] == pytest.approx(sum(means) / len(means)) and row[3]["n"] == 2
    wins = tables["win-rate"]["values"][0][3]
    assert 0.0 <= wins["ci_low"] <= wins["win_rate"] <= wins["ci_high"] <= 1.0


def test_each_format_alone(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("report.*", "tables", "figures"))
    expected = {"md": "report.md", "tex": "report.tex", "html": "report.html", "csv": "tables/alignment.csv",
                "json": "tables/tables.json"}
    for fmt, path in expected.items():
        assert main(["report", str(copy), "--formats", fmt]) == 0, fmt
        assert (copy / path).exists(), fmt
    assert not (copy / "report.pdf").exists(), "pdf only when asked"

"""Report pieces on hand-made inputs: win rate and its bootstrap, Pareto front, LaTeX escaping and
splitting, CSV export, --formats and the override flags of run / validate."""

from pathlib import Path

import pytest

from drpo_bench.commands.main import build_parser, main
from drpo_bench.report.results import CellResult, Estimate
from drpo_bench.store import CellRecord, MetricRecord

TOY = Path(__file__).resolve().parents[1] / "suites" / "toy" / "harness.yaml"
QUICK = Path(__file__).resolve().parents[1] / "results" / "quickstart"


def _cell(method: str, seed: int, scores: list[tuple[int, float]], higher: bool = True) -> CellResult:
    """A cell whose per-image scores are [(prompt index, score)], image index = position."""
    info = CellRecord(status="complete", cell_id=f"g--{method}--r--s{seed}", fingerprint="f", suite="s",
                      generator={"name": "g"}, seed=seed, method={"id": method, "method": method},
                      trains=method != "base", eval={}, train_reward=None if method == "base" else {"alias": "r"})
    rows = [{"image": i, "prompt_index": p, "prompt": f"p{p}", "task": "t", "score": v} for i, (p, v) in enumerate(scores)]
    mean = sum(v for _, v in scores) / len(scores)
    return CellResult(info.cell_id, info, {"score": MetricRecord(mean=mean, higher_is_better=higher)}, {}, [],
                      Path("."), rows)


def test_win_rate_pairs_by_seed_and_image_and_counts_ties_half():
    from drpo_bench.report.scores import win_rate

    base = [_cell("base", 0, [(0, 0.5), (0, 0.5), (1, 0.5), (1, 0.5)]), _cell("base", 1, [(0, 0.9), (0, 0.9), (1, 0.9), (1, 0.9)])]
    # seed 0 beats its base on 3 images and ties one; seed 1 loses every image to its own (higher) base
    method = [_cell("m", 0, [(0, 0.6), (0, 0.6), (1, 0.6), (1, 0.5)]), _cell("m", 1, [(0, 0.8), (0, 0.8), (1, 0.8), (1, 0.8)])]
    result = win_rate(method, base, "score", higher_is_better=True)
    assert result.pairs == 8 and result.prompts == 2
    assert result.rate == pytest.approx((3 + 0.5) / 8)
    assert result.low <= result.rate <= result.high
    lower = win_rate(method, base, "score", higher_is_better=False)
    assert lower.rate == pytest.approx((4 + 0.5) / 8), "lower-is-better flips wins and losses; the tie stays half"


def test_win_rate_bootstrap_resamples_prompts_reproducibly():
    from drpo_bench.report.scores import win_rate

    # prompt 0: the method always wins, prompt 1: always loses -> the prompt-level interval is wide
    base = [_cell("base", 0, [(p, 0.5) for p in (0, 0, 1, 1)])]
    method = [_cell("m", 0, [(0, 0.9), (0, 0.9), (1, 0.1), (1, 0.1)])]
    a = win_rate(method, base, "score", True)
    b = win_rate(method, base, "score", True)
    assert (a.low, a.high) == (b.low, b.high), "fixed bootstrap seed"
    assert a.rate == 0.5 and a.low == 0.0 and a.high == 1.0, "two prompts: draws of both copies of one prompt happen"
    one = win_rate([_cell("m", 0, [(0, 0.9), (0, 0.1)])], [_cell("base", 0, [(0, 0.5), (0, 0.5)])], "score", True)
    assert one.low == one.high == 0.5, "one prompt: nothing to resample"


def test_win_rate_skips_unpaired_images():
    from drpo_bench.report.scores import win_rate

    base = [_cell("base", 0, [(0, 0.5), (1, 0.5)])]
    assert win_rate([_cell("m", 1, [(0, 0.9), (1, 0.9)])], base, "score", True) is None, "no base at seed 1"
    shifted = _cell("m", 0, [(1, 0.9), (0, 0.9)])  # image 0 shows another prompt than base's image 0
    assert win_rate([shifted], base, "score", True) is None


def test_win_rate_table_bolds_an_interval_above_one_half():
    from drpo_bench.report.results import group_rows
    from drpo_bench.report.scores import win_rate_table

    prompts = [p for p in range(6) for _ in range(2)]
    cells = [_cell("base", s, [(p, 0.5) for p in prompts]) for s in (0, 1)]
    cells += [_cell("good", s, [(p, 0.7) for p in prompts]) for s in (0, 1)]
    cells += [_cell("same", s, [(p, 0.5 + (0.1 if i % 2 else -0.1)) for i, p in enumerate(prompts)]) for s in (0, 1)]
    table = win_rate_table(group_rows(cells), multi=False)
    by_method = {row[0]: (row, bold) for row, bold in zip(table.rows, table.bold)}
    assert by_method["good"][0][3].startswith("1.000 [1.000, 1.000]") and by_method["good"][1][3]
    assert by_method["same"][0][3].startswith("0.500") and not by_method["same"][1][3]
    assert by_method["good"][0][2] == "24", "12 images x 2 seeds"


def test_pareto_front():
    from drpo_bench.report.figures import pareto_front

    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.2), (2.0, 0.4)]
    assert pareto_front(points, higher=True) == [3, 0, 1]
    assert pareto_front(points, higher=False) == [3]


def test_tex_escape_is_ascii_and_escapes_specials():
    from drpo_bench.report.latex import tex

    text = "a_b & 50% #1 $x ~ ^ \\ {} <> | ± ↑ ↓ × Δ − — – † “q” é 猫 🐱 \n"
    out = tex(text)
    assert out.isascii()
    for raw in ("a\\_b", "\\&", "50\\%", "\\#1", "\\$x", "\\ensuremath{\\pm}", "\\ensuremath{\\Delta}", "[U+732B]", "e"):
        assert raw in out


def _wide_table():
    from drpo_bench.report.table import Table

    headers = ["method", "train reward"] + [f"phase_number_{i} seconds" for i in range(14)] + ["notes"]
    rows = [[f"method-{r}", "hpsv3"] + [f"{0.1234 * i:.4f} ± 0.0012" for i in range(14)]
            + ["a long free-text override list that must wrap rather than widen the page: train.lr = 1e-5; "
               "budget.steps = 400; budget.candidates_per_prompt = 24"] for r in range(4)]
    return Table("A wide table", headers, rows, label_columns=2)


def test_wide_tables_are_split_with_the_row_names_repeated():
    from drpo_bench.report.latex import WIDTH_CHARS, split_columns

    table = _wide_table()
    parts = split_columns(table)
    assert len(parts) > 1
    assert all(part[:2] == [0, 1] for part in parts), "every part starts with the row's name"
    assert sorted({j for part in parts for j in part}) == list(range(len(table.headers))), "no column lost"
    for part in parts:
        if len(part) > 3:
            assert sum(min(max(len(c) for c in [table.headers[j]] + [r[j] for r in table.rows]) + 2, 42)
                       for j in part) <= WIDTH_CHARS


@pytest.mark.skipif(__import__("drpo_bench.report.latex", fromlist=["missing_tex"]).missing_tex() is not None,
                    reason=f"no PDF: {__import__('drpo_bench.report.latex', fromlist=['missing_tex']).missing_tex()}")
def test_wide_table_compiles_without_overfull_boxes(tmp_path):
    from drpo_bench.report.latex import build_pdf, document, log_problems, table_to_latex

    source = document("wide", "provenance", [table_to_latex(_wide_table())])
    built = build_pdf(source, tmp_path, [], name="wide")
    assert built.pdf.exists()
    assert log_problems(built.log.read_text(errors="replace")) == []


def test_log_problems_reads_overfull_sizes():
    from drpo_bench.report.latex import log_problems

    log = "Overfull \\hbox (0.5pt too wide) in paragraph\nOverfull \\hbox (771.2pt too wide) in alignment\n! Undefined control sequence."
    assert log_problems(log) == ["! Undefined control sequence.", "Overfull \\hbox (771.2pt too wide)"]


def test_csv_spreads_estimates_over_mean_ci_n():
    from drpo_bench.report.export import table_to_csv
    from drpo_bench.report.table import Table

    est = Estimate.of([1.0, 2.0, 3.0])
    table = Table("t", ["method", "score"], [["m", "2.000 ± 2.484"]], raw=[["m", est]])
    lines = table_to_csv(table).splitlines()
    assert lines[0] == "method,score mean,score ci95,score n"
    name, mean, ci, n = lines[1].split(",")
    assert (name, float(mean), float(ci), int(n)) == ("m", 2.0, pytest.approx(est.half_width), 3)


def test_report_formats_are_checked(tmp_path, capsys):
    from drpo_bench.commands import report as report_command
    from drpo_bench.report.build import DEFAULT_FORMATS, FORMATS

    assert (report_command.REPORT_FORMATS, report_command.DEFAULT_FORMATS) == (FORMATS, DEFAULT_FORMATS), "the CLI's copy is in step"
    assert main(["report", str(tmp_path), "--formats", "md,docx"]) == 2
    err = capsys.readouterr().err
    assert "docx" in err and "md, tex, html, pdf, csv, json" in err
    assert main(["report", str(tmp_path), "--formats", ","]) == 2


def test_pdf_without_a_tex_engine_still_writes_the_other_formats(tmp_path, monkeypatch, capsys):
    from drpo_bench.report import latex

    out = _copy_without_reports(tmp_path)
    monkeypatch.setattr(latex, "pdflatex", lambda: None)
    assert main(["report", str(out), "--formats", "md,pdf,csv"]) == 1, "exit code: a format was not written"
    err = capsys.readouterr().err
    assert "pdf not written: pdflatex is not on PATH" in err and "texlive-latex-recommended" in err
    assert len(err.strip().splitlines()) == 1, "one line"
    assert (out / "report.md").exists() and (out / "tables" / "alignment.csv").exists()
    assert not (out / "report.pdf").exists()


def test_a_missing_latex_package_is_named_with_its_debian_package(tmp_path, monkeypatch):
    from drpo_bench.report import latex

    if latex.pdflatex() is None or __import__("shutil").which("kpsewhich") is None:
        pytest.skip("no pdflatex / kpsewhich here")
    monkeypatch.setitem(latex.PACKAGES, "no-such-package-xyz.sty", "texlive-latex-extra")
    assert latex.missing_tex() == ("LaTeX file no-such-package-xyz.sty not found "
                                   "(Debian/Ubuntu: apt-get install texlive-latex-extra)")


def test_latex_uses_only_the_packages_it_checks():
    import re

    from drpo_bench.report.latex import PACKAGES, PREAMBLE

    used = {f"{name}.sty" for group in re.findall(r"\\usepackage(?:\[[^]]*\])?\{([^}]*)\}", PREAMBLE)
            for name in group.split(",")}
    assert used and used <= set(PACKAGES), f"preamble packages not checked by missing_tex(): {used - set(PACKAGES)}"
    assert "adjustbox" not in PREAMBLE, "not in texlive-latex-recommended"


def _copy_without_reports(tmp_path):
    import shutil

    out = tmp_path / "quick"
    out.mkdir()
    for cell in [*QUICK.glob("shapes--base--none--s[01]"), *QUICK.glob("shapes--dpo--clip--s[01]")]:
        shutil.copytree(cell, out / cell.name, ignore=shutil.ignore_patterns("*.safetensors"))
    return out


def test_run_and_validate_take_overrides_the_same_ways(capsys):
    from drpo_bench.commands.common import overrides as _overrides

    args = build_parser().parse_args(["run", "s.yaml", "budget.steps=2", "--set", "seeds=[0]"])
    assert _overrides(args) == ["budget.steps=2", "seeds=[0]"]
    assert main(["run", str(TOY), "--set", "budget.nope=1"]) == 2, "--set reaches the suite loader"
    assert "nope" in capsys.readouterr().err
    for argv in (["validate", str(TOY), "seeds=[0]"], ["validate", str(TOY), "--set", "seeds=[0]"],
                 ["validate", "--set", "seeds=[0]", str(TOY)]):
        assert main(argv) == 0, argv
        assert "5 cells" in capsys.readouterr().out, argv  # 10 cells with both seeds; ok lines on stdout
    assert main(["validate", str(TOY), "budget.nope=1"]) == 2
    assert main(["validate", str(TOY), "--set", "budget.nope=1"]) == 2
    assert main(["validate", "seeds=[0]"]) == 2
    assert "at least one suite" in capsys.readouterr().err

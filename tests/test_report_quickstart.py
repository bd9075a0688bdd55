"""The report of the committed results/quickstart (no training: its cells are read, the report is
written to a temporary folder): the settings a reader must see, compute tables that name every row
and say what their ratios are, and figures that are honest about what they draw."""

import csv
import json
import re
from pathlib import Path

import pytest

from drpo_bench.report import build_report
from drpo_bench.report import figures as figs
from drpo_bench.report.results import group_rows, load_results, load_suite_snapshot

QUICK = Path(__file__).resolve().parents[1] / "results" / "quickstart"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick-report")
    written = build_report(QUICK, "md,tex,html,csv,json", output=out)
    assert not written.missing
    return out


@pytest.fixture(scope="module")
def rows():
    return group_rows(load_results(QUICK), load_suite_snapshot(QUICK))


def test_the_settings_table_states_the_tuned_settings_in_every_format(report):
    md = (report / "report.md").read_text()
    tex = (report / "report.tex").read_text()
    page = (report / "report.html").read_text()
    with open(report / "tables" / "settings.csv") as f:
        table = list(csv.DictReader(f))
    # RAFT left the quickstart (docs/raft.md); DrPO's and VGG-Flow's tuned knobs stand beside DPO's and GRPO's;
    # a tuned value equal to the default (DrPO's two-seed tuning chose lambda_ref 0.2) is still listed as tuned
    expected = {("dpo", "args.beta"): ("30", "1"), ("grpo", "args.neighbor_sigma"): ("0.6", "0.3"),
                ("drpo", "args.lambda_ref"): ("0.2", "0.2"), ("vggflow", "args.reward_scale"): ("1", "1000")}
    for (method, setting), (value, default) in expected.items():
        row = next(r for r in table if r["method"] == method and r["setting"] == setting)
        assert (row["value"], row["default"]) == (value, default), (method, setting)
        assert row["source"] == f"tuned: results/quickstart-tuning/tuning/{method}.json"
        name = setting.split(".")[1]
        escaped = name.replace("_", "\\_")  # Markdown and LaTeX both write \_
        assert f"| {method} | clip | args.{escaped} | {value} | {default} | tuned: " in md
        assert f"{method} & clip & args.{escaped} & {value} & {default} & tuned: " in tex
        assert f"<td>{method}</td><td>clip</td><td>args.{name}</td><td>{value}</td><td>{default}</td>" in page
    assert "Per-method settings that differ from the suite" not in md, "the old lr-only table is gone"


def test_compute_tables_name_every_row_and_render_the_division_sign(report):
    tex = (report / "report.tex").read_text()
    assert "[U+" not in tex, "every character the report writes has a LaTeX form"
    assert r"time \ensuremath{\div} DRaFT's" in tex
    methods = {"drpo", "drpo-checker", "dpo", "pso", "grpo", "draft", "vggflow"}
    for label in ("tab:compute-savings", "tab:compute"):
        block = tex.split(rf"\label{{{label}}}")[1].split(r"\end{table}")[0]
        parts = re.findall(r"\\midrule\n(.*?)\\bottomrule", block, re.S)
        assert parts, label
        for part in parts:  # each part of a split table: every row starts with its method
            names = [line.split(" & ")[0] for line in part.strip().splitlines()]
            assert {n.replace(r"\textbf{", "").rstrip("}") for n in names} == methods, (label, names)
    with open(report / "tables" / "compute-savings.csv") as f:
        table = list(csv.DictReader(f))
    draft = next(r for r in table if r["method"] == "draft")
    compared = [r for r in table if r["time ÷ DRaFT's"]]  # drpo-checker: no DRaFT on its reward, no ratio
    assert len(compared) == 6
    for row in compared:  # the header's quotient: this method's time ÷ DRaFT's
        assert float(row["time ÷ DRaFT's"]) == pytest.approx(float(row["s / update"]) / float(draft["s / update"]))
    assert not any("paper scale" in h for h in table[0]), "no paper-scale prediction for the shapes world: dropped"


def test_curves_end_on_their_own_points_and_no_row_is_flagged_collapsed(rows, tmp_path):
    """Since RAFT left the quickstart no row collapses: none is flagged and every end point lies on the
    axes (the flagging rule itself: test_collapse_needs_the_bad_side_of_base)."""
    figures = {f.slug: f for f in figs.alignment_vs_compute(rows, tmp_path, False)}
    for metric in ("checker", "clip", "fid"):
        figure = figures[f"{metric}-vs-compute"]
        meta = figure.meta
        assert meta["collapsed"] == [], metric
        assert "kept from setting the axes" not in figure.caption
        low, high = meta["ylim"][0]
        for (key, cells) in rows.items():
            if cells[0].info.method_name == "base":
                continue
            label = f"{key[1]} ({key[2]})"
            last = [c.eval_history[-1][metric] for c in cells]  # the last evaluation during training, per seed
            assert meta["curve_ends"][label][1] == pytest.approx(sum(last) / len(last)), label
            assert meta["points"][label] == pytest.approx(meta["curve_ends"][label]), "the curve ends on its point"
            assert low <= meta["points"][label][1] <= high
        head = json.loads((QUICK / "suite.json").read_text())["eval"]["every_max_prompts"]  # the curves' prompts
        assert f"first {head} held-out prompts" in figure.caption and "all 98 held-out prompts" in figure.caption


def test_collapse_needs_the_bad_side_of_base():
    values = {("g", m, "r"): v for m, v in [("a", 1.0), ("b", 1.1), ("c", 0.9), ("d", 1.05), ("e", -30.0), ("f", 40.0)]}
    assert figs.collapsed(values, base=1.0, higher=True) == {("g", "e", "r")}, "far above base is a result, not a collapse"
    assert figs.collapsed(values, base=1.0, higher=False) == {("g", "f", "r")}


def test_figures_are_legible_at_their_printed_size(report):
    from PIL import Image

    assert figs.FONT_PT >= 8
    pngs = sorted((report / "figures").glob("*.png"))
    assert len(pngs) >= 10
    for png in pngs:
        with Image.open(png) as image:
            width_in, height_in = image.width / figs.DPI, image.height / figs.DPI
        # LaTeX includes each at \linewidth (6.69 in), at most 0.8 \textheight (8.1 in) tall: scale <= 1
        scale = min(figs.PRINT_WIDTH_IN / width_in, 8.09 / height_in)
        assert figs.FONT_PT * scale >= 8 - 1e-6, f"{png.name}: text printed at {figs.FONT_PT * scale:.1f} pt"


def test_sample_grids_have_a_labelled_row_per_prompt_with_base_first(rows, tmp_path):
    grids = figs.sample_grid_figures(rows, tmp_path, False)
    assert [g.slug for g in grids] == ["samples-seed-0-1", "samples-seed-0-2"]
    prompts = [json.loads(line)["prompt"] for line in (QUICK / "shapes--base--none--s0" / "scores.jsonl").read_text().splitlines()]
    first = list(dict.fromkeys(prompts))[:8]
    for grid in grids:
        assert grid.meta["rows"] == [f"({i + 1}) {p}" for i, p in enumerate(first)]
        assert grid.meta["columns"][0] == "base" and len(grid.meta["columns"]) <= 5
    assert sum(len(g.meta["columns"]) - 1 for g in grids) == 7, "every method once, each beside base"
    assert "same eval noise" in grids[0].caption and "(1) a circle" in grids[0].caption

"""The report's statistics against closed forms and plain loops written here.

The t interval over seeds (Student-t quantiles typed in from tables, not from scipy), the paired
gain over base and its bold rule in both directions (higher- and lower-is-better metrics), the
best-mean bold of the alignment table, the win rate against a plain pair count, and the level of
the win rate's bootstrap interval against the normal approximation on a world with many prompts.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from drpo_bench.report.build import alignment_table, gain_table
from drpo_bench.report.results import CellResult, Estimate, group_rows
from drpo_bench.report.scores import win_rate, win_rate_table
from drpo_bench.store import CellRecord, MetricRecord

#: two-sided 95 % Student-t quantiles t(0.975, df), from a printed table
T975 = {1: 12.7062047, 2: 4.30265273, 3: 3.18244631, 4: 2.77644511, 9: 2.26215716}


def plain_t_interval(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975[n - 1] * sd / math.sqrt(n)


@pytest.mark.parametrize("values", [[1.0, 2.0], [0.3, 0.1, 0.25], [1.0, 2.0, 3.0, 4.0, 10.0], [float(i) ** 1.5 for i in range(10)]])
def test_estimate_is_the_95_percent_student_t_interval(values):
    est = Estimate.of(values)
    mean, half = plain_t_interval(values)
    assert est.n == len(values) and est.mean == pytest.approx(mean)
    assert est.half_width == pytest.approx(half, rel=1e-6), (
        f"half-width {est.half_width} != t(0.975, {len(values) - 1}) x sd / sqrt(n) = {half}")


def test_estimate_of_one_seed_has_no_interval_and_keeps_the_values():
    one, two = Estimate.of([0.7]), Estimate.of([0.7, 0.9])
    assert (one.mean, one.half_width, one.n, one.values) == (0.7, None, 1, [0.7])
    assert (two.n, two.values) == (2, [0.7, 0.9])


def _cell(method: str, seed: int, metrics: dict[str, tuple[float | None, bool]], scores=None,
          budget_matched: bool = True) -> CellResult:
    info = CellRecord(status="complete", cell_id=f"g--{method}--r--s{seed}", fingerprint="f", suite="s",
                      generator={"name": "g"}, seed=seed, method={"id": method, "method": method},
                      trains=method != "base", eval={}, train_reward=None if method == "base" else {"alias": "r"},
                      budget_matched=budget_matched)
    records = {m: MetricRecord(mean=v, higher_is_better=h) for m, (v, h) in metrics.items()}
    return CellResult(info.cell_id, info, records, {}, [], Path("."), scores or [])


# ---- paired gain over base -------------------------------------------------------------------

BASE = {0: {"reward": 0.50, "fid": 30.0}, 1: {"reward": 0.55, "fid": 32.0}, 2: {"reward": 0.52, "fid": 29.0}}


def _gain_rows(per_seed: dict[int, dict[str, float]]):
    cells = [_cell("base", s, {"reward": (v["reward"], True), "fid": (v["fid"], False)}) for s, v in BASE.items()]
    cells += [_cell("m", s, {"reward": (v["reward"], True), "fid": (v["fid"], False)}) for s, v in per_seed.items()]
    return gain_table(group_rows(cells), multi=False)


def test_gain_is_the_t_interval_of_the_per_seed_differences():
    method = {0: {"reward": 0.60, "fid": 27.0}, 1: {"reward": 0.63, "fid": 30.5}, 2: {"reward": 0.64, "fid": 26.0}}
    table = _gain_rows(method)
    (row,) = table.raw
    for column, metric in ((3, "reward"), (4, "fid")):
        diffs = [method[s][metric] - BASE[s][metric] for s in (0, 1, 2)]
        mean, half = plain_t_interval(diffs)
        est = row[column]
        assert est.n == 3 and est.mean == pytest.approx(mean) and est.half_width == pytest.approx(half), metric
    assert table.rows[0][2] == "3", "three paired seeds"


@pytest.mark.parametrize("direction", ["better", "worse"])
def test_gain_bold_follows_each_metrics_good_side(direction):
    """Bold = the interval excludes zero on the metric's better side: up for reward, DOWN for FID."""
    sign = 1 if direction == "better" else -1
    method = {s: {"reward": v["reward"] + sign * (0.1 + 0.01 * s), "fid": v["fid"] - sign * (3.0 + 0.2 * s)}
              for s, v in BASE.items()}
    table = _gain_rows(method)
    reward_bold, fid_bold = table.bold[0][3], table.bold[0][4]
    assert reward_bold == (direction == "better"), f"reward (higher is better) {direction}: bold must be {direction == 'better'}"
    assert fid_bold == (direction == "better"), (
        f"FID (lower is better) {'fell' if direction == 'better' else 'rose'} clearly: bold must be "
        f"{direction == 'better'}; the bold rule must read the metric's direction (lower-is-better FID/KID)")


def test_gain_is_not_bold_when_the_interval_spans_zero():
    method = {0: {"reward": 0.60, "fid": 25.0}, 1: {"reward": 0.50, "fid": 36.0}, 2: {"reward": 0.53, "fid": 28.0}}
    assert _gain_rows(method).bold[0][3:] == [False, False]


# ---- alignment table: best mean in bold, per direction -----------------------------------------


def test_alignment_bolds_the_highest_reward_and_the_lowest_fid():
    cells = []
    for method, reward, fid in (("base", 0.5, 30.0), ("a", 0.7, 35.0), ("b", 0.6, 20.0)):
        cells += [_cell(method, s, {"reward": (reward + 0.01 * s, True), "fid": (fid + s, False)}) for s in (0, 1)]
    table = alignment_table(group_rows(cells), multi=False)
    bold = {row[0]: flags[3:] for row, flags in zip(table.rows, table.bold)}
    assert bold == {"base": [False, False], "a": [True, False], "b": [False, True]}, bold


def test_gain_bold_for_lower_is_better_needs_the_whole_interval_below_zero():
    """A lower-is-better metric is bold only when its interval lies wholly below zero: not for an
    unchanged metric (a zero gain with a zero-width interval), nor for one that got worse by less than
    one unit; the multi-generator export names the generator."""
    base = {0: (30.0, 1.0, 0.50), 1: (32.0, 2.0, 0.70)}  # fid, kid, dist per seed
    method = {0: (30.0, 1.30, 0.20), 1: (32.0, 2.31, 0.39)}  # fid unchanged, kid +0.30/+0.31, dist -0.30/-0.31
    cells = [_cell(name, s, {"fid": (v[0], False), "kid": (v[1], False), "dist": (v[2], False)})
             for name, values in (("base", base), ("m", method)) for s, v in values.items()]
    table = gain_table(group_rows(cells), multi=False)
    kid_mean, kid_half = plain_t_interval([0.30, 0.31])
    dist_mean, dist_half = plain_t_interval([-0.30, -0.31])
    assert 0 < kid_mean + kid_half < 1 and dist_mean + dist_half < 0
    assert table.rows[0][3:] == ["+0.000 ± 0.000", f"+{kid_mean:.3f} ± {kid_half:.3f}", f"{dist_mean:.3f} ± {dist_half:.3f}"]
    assert table.bold[0][3:] == [False, False, True], (
        "lower is better: bold only when mean + half-width < 0 (an unchanged FID or a KID worse by 0.3 is not a gain)")
    multi = gain_table(group_rows(cells), multi=True)
    assert multi.raw[0][:4] == ["g", "m", "r", 2] and multi.bold[0][4:] == [False, False, True]


def _alignment_cells(unmatched: bool = True) -> list[CellResult]:
    """Row a: three seeds, one of them run off the suite's budget, FID missing at seed 2; row b: one
    seed, no FID; base: two seeds. KID is recorded with no value everywhere (could not be computed)."""
    r, f, k = "reward", "fid", "kid"
    return [
        _cell("base", 0, {r: (0.50, True), f: (30.0, False), k: (None, False)}),
        _cell("base", 1, {r: (0.54, True), f: (32.0, False), k: (None, False)}),
        _cell("a", 0, {r: (0.70, True), f: (35.0, False), k: (None, False)}, budget_matched=not unmatched),
        _cell("a", 1, {r: (0.74, True), f: (33.0, False)}),
        _cell("a", 2, {r: (0.69, True), f: (None, False)}),
        _cell("b", 0, {r: (0.60, True), k: (None, False)}),
    ]


def _text(values: list[float]) -> str:
    mean, half = plain_t_interval(values)
    return f"{mean:.3f} ± {half:.3f}"


def test_alignment_table_every_cell_title_marks_note_and_export():
    """Every text cell, bold flag, the title, the † marker of a row run off the suite's budget and its
    note, and the exported estimates, against values written here: means over the seeds that have a
    value, the t interval, "n/a" where no seed has one (KID, and b's FID), one seed without an interval."""
    table = alignment_table(group_rows(_alignment_cells()), multi=False)
    assert table.title == "Held-out alignment (mean ± 95% CI over seeds)"
    assert table.headers == ["method", "train reward", "seeds", "reward ↑", "fid ↓", "kid ↓"]
    assert (table.slug, table.label_columns) == ("alignment", 2)
    assert table.rows == [
        ["a †", "r", "3", _text([0.70, 0.74, 0.69]), _text([35.0, 33.0]), "n/a"],
        ["b", "r", "1", "0.600", "n/a", "n/a"],
        ["base", "—", "2", _text([0.50, 0.54]), _text([30.0, 32.0]), "n/a"],
    ], "a's FID averages the two seeds with a value; a seed's missing value is not a zero"
    assert table.bold == [[False, False, False, True, False, False],
                          [False, False, False, False, False, False],
                          [False, False, False, False, True, False]], (
        "bold: a's reward (highest), base's FID (lowest); nothing in a column without values, nor in the labels")
    assert table.note == (
        "Best mean per column in bold. ↑ higher is better, ↓ lower is better. CI: Student-t over seeds. "
        "† budget not matched: the method ran another number of updates, candidates or prompts per update "
        "than the suite (its public settings); see the settings table.")
    labels = [row[:3] for row in table.raw]
    assert labels == [["a", "r", 3], ["b", "r", 1], ["base", "—", 2]], "the export's labels carry no † and count seeds"
    for raw, expected in zip(table.raw, ([[0.70, 0.74, 0.69], [35.0, 33.0], None],
                                         [[0.60], None, None],
                                         [[0.50, 0.54], [30.0, 32.0], None])):
        for est, values in zip(raw[3:], expected):
            if values is None:
                assert est is None, raw
                continue
            mean, half = plain_t_interval(values) if len(values) > 1 else (values[0], None)
            assert (est.n, est.values) == (len(values), values)
            assert est.mean == pytest.approx(mean) and est.half_width == pytest.approx(half), raw

    matched = alignment_table(group_rows(_alignment_cells(unmatched=False)), multi=False)
    assert matched.note == "Best mean per column in bold. ↑ higher is better, ↓ lower is better. CI: Student-t over seeds."
    assert [row[0] for row in matched.rows] == ["a", "b", "base"], "no † when every cell ran the suite's budget"

    multi = alignment_table(group_rows(_alignment_cells()), multi=True)
    assert multi.headers[:4] == ["generator", "method", "train reward", "seeds"] and multi.label_columns == 3
    assert multi.rows[0][:4] == ["g", "a †", "r", "3"], "the † marks the method, not the generator"
    assert multi.bold[0] == [False] * 4 + [True, False, False] and multi.raw[0][:4] == ["g", "a", "r", 3]


# ---- win rate ------------------------------------------------------------------------------------


def _score_cells(method: str, seed: int, values: list[tuple[int, float]], higher: bool = True) -> CellResult:
    rows = [{"image": i, "prompt_index": p, "prompt": f"p{p}", "task": "t", "score": v} for i, (p, v) in enumerate(values)]
    mean = sum(v for _, v in values) / len(values)
    return _cell(method, seed, {"score": (mean, higher)}, rows)


@pytest.mark.parametrize("higher", [True, False])
def test_win_rate_equals_a_plain_count_of_pairs(higher):
    rng = random.Random(0)
    base, method, wins, pairs = [], [], 0.0, 0
    for seed in (0, 1):
        prompts = [p for p in range(7) for _ in range(3)]
        b = [(p, round(rng.random(), 1)) for p in prompts]  # rounded: ties happen
        m = [(p, round(rng.random(), 1)) for p in prompts]
        base.append(_score_cells("base", seed, b, higher))
        method.append(_score_cells("m", seed, m, higher))
        for (_, x), (_, y) in zip(m, b):
            pairs += 1
            wins += 0.5 if x == y else float(x > y if higher else x < y)
    result = win_rate(method, base, "score", higher)
    assert result.pairs == pairs and result.prompts == 7
    assert result.rate == pytest.approx(wins / pairs)


def test_win_rate_interval_is_95_percent():
    """400 prompts, one pair each, 200 wins: the prompt bootstrap of the rate is close to normal with
    sd sqrt(0.25 / 400) = 0.025, so a 95 % interval is 0.5 +- 1.96 sd = +-0.049 (a 90 % one +-0.041)."""
    values = [(p, 1.0 if p % 2 else 0.0) for p in range(400)]
    base = [_score_cells("base", 0, [(p, 0.5) for p in range(400)])]
    result = win_rate([_score_cells("m", 0, values)], base, "score", True)
    assert result.rate == 0.5
    half = (result.high - result.low) / 2
    sd = math.sqrt(0.25 / 400)
    assert 1.80 * sd <= half <= 2.12 * sd, (
        f"the win rate's interval half-width {half:.4f} is {half / sd:.2f} sd; a 95 % interval is 1.96 sd "
        f"({1.96 * sd:.4f}); 1.645 sd ({1.645 * sd:.4f}) would be the 5th-95th percentiles (a 90 % interval)")
    assert result.low < 0.5 < result.high and abs((result.low + result.high) / 2 - 0.5) < 0.3 * sd


def test_win_rate_table_says_95_percent_and_the_percentiles_it_uses():
    prompts = [p for p in range(6) for _ in range(2)]
    cells = [_score_cells("base", 0, [(p, 0.5) for p in prompts]), _score_cells("m", 0, [(p, 0.7) for p in prompts])]
    table = win_rate_table(group_rows(cells), multi=False)
    assert "95% bootstrap" in table.title and "2.5 and 97.5 percentiles" in table.note


# ---- reading a results folder: which cells make the tables, and why the others do not ------------


def _write_cell(folder: Path, name: str, method: str, seed: int, status: str = "complete", reward: float = 0.5,
                generator: str = "g") -> Path:
    from drpo_bench.store import CellFolder, EvalRecord

    cell = CellFolder(folder / name)
    cell.path.mkdir(parents=True)
    cell.write_eval(EvalRecord(n_prompts=1, images_per_prompt=1, split="eval",
                               metrics={"reward": MetricRecord(mean=reward, higher_is_better=True)}))
    cell.write_ledger({"summary": {"updates": 4, "seconds_per_update": 0.25}, "updates": []})
    (cell.file(CellFolder.TRAIN_LOG)).write_text('{"step": 1, "loss": 0.5}\n')
    cell.write_scores([{"image": 0, "prompt_index": 0, "score": reward}])
    (cell.file(CellFolder.EVAL_HISTORY)).write_text('{"step": 2, "reward": 0.4}\n{"step": 1, "reward": 0.3}\n')
    cell.write_cell(CellRecord(status=status, cell_id=name, fingerprint="f", suite="s", generator={"name": generator},
                               seed=seed, method={"id": method, "method": method}, trains=method != "base", eval={},
                               train_reward=None if method == "base" else {"alias": "r"}))
    return cell.path


def test_load_results_reads_complete_cells_and_names_the_rest(tmp_path):
    from drpo_bench.report.results import load_results, load_results_and_problems, missing_cells

    ok = _write_cell(tmp_path, "g--m--r--s0", "m", 0, reward=0.7)
    _write_cell(tmp_path, "g--base--none--s0", "base", 0)
    unfinished = _write_cell(tmp_path, "g--m--r--s1", "m", 1, status="running")
    failed = tmp_path / "g--m--r--s2"
    failed.mkdir()
    (failed / "error.txt").write_text("non-finite loss at update 3\nmore\n")
    traced = tmp_path / "g--m--r--s3"
    traced.mkdir()
    (traced / "error.txt").write_text("Traceback (most recent call last):\n  File x\nValueError: boom\n")
    checkpointed = tmp_path / "g--m--r--s4"
    checkpointed.mkdir()
    (checkpointed / "checkpoint.json").write_text("{}")
    corrupt = _write_cell(tmp_path, "g--m--r--s5", "m", 5)
    (corrupt / "eval.json").write_text("{broken")
    undecodable = tmp_path / "g--m--r--s6"
    undecodable.mkdir()
    (undecodable / "error.txt").write_bytes(b"bad byte \xff in the message\n")
    blank = tmp_path / "g--m--r--s7"
    blank.mkdir()
    (blank / "error.txt").write_text("\n")
    (tmp_path / "empty-dir").mkdir()  # neither cell.json, nor an error, nor a checkpoint: not a cell
    (tmp_path / "notes.txt").write_text("a file, not a cell")
    results, problems = load_results_and_problems(tmp_path)
    assert sorted(r.cell_id for r in results) == ["g--base--none--s0", "g--m--r--s0"]
    assert problems == {
        "g--m--r--s1": "unfinished (rerun the suite to resume it)",
        "g--m--r--s2": "failed: non-finite loss at update 3",
        "g--m--r--s3": "failed: ValueError: boom",
        "g--m--r--s4": "unfinished (rerun the suite to resume it)",
        "g--m--r--s5": problems["g--m--r--s5"],
        "g--m--r--s6": "failed: bad byte \ufffd in the message",
        "g--m--r--s7": "failed: ?",
    } and problems["g--m--r--s5"].startswith("corrupt: ") and "eval.json" in problems["g--m--r--s5"]
    cell = next(r for r in results if r.cell_id == "g--m--r--s0")
    assert cell.metrics["reward"].mean == 0.7 and cell.folder == ok
    assert cell.ledger == {"updates": 4, "seconds_per_update": 0.25} and cell.train_log == [{"step": 1, "loss": 0.5}]
    assert cell.scores == [{"image": 0, "prompt_index": 0, "score": 0.7}]
    assert [row["step"] for row in cell.eval_history] == [1, 2]
    assert cell.row_key == ("g", "m", "r")
    assert next(r for r in results if r.cell_id.startswith("g--base")).row_key == ("g", "base", "—")
    assert len(load_results(tmp_path)) == 2
    assert missing_cells(tmp_path, results) is None, "no record of the plan: say nothing"
    (tmp_path / ".drpo-bench.settings.json").write_text(json.dumps({"cells": ["g--m--r--s0", "g--m--r--s1", "x"]}))
    assert missing_cells(tmp_path, results) == (2, 3)
    assert unfinished.exists()


def test_load_results_refuses_a_missing_or_empty_folder(tmp_path):
    from drpo_bench.errors import UserError
    from drpo_bench.report.results import load_results, load_suite_snapshot

    with pytest.raises(UserError, match="does not exist; run a suite first"):
        load_results(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no complete cells in"):
        load_results(tmp_path)
    assert load_suite_snapshot(tmp_path) is None
    (tmp_path / "suite.json").write_text('{"name": "s"}')
    assert load_suite_snapshot(tmp_path) == {"name": "s"}


def test_rows_follow_the_suites_order_else_alphabetical_and_cells_the_seeds():
    cells = [_cell(m, s, {"reward": (0.5, True)}) for m in ("zeta", "alpha", "base") for s in (2, 0, 1)]
    for c in cells[:3]:
        c.info.generator = {"name": "h"}  # zeta on another generator
    plain = group_rows(cells)
    assert list(plain) == [("g", "alpha", "r"), ("g", "base", "—"), ("h", "zeta", "r")]
    assert [c.info.seed for c in plain[("g", "alpha", "r")]] == [0, 1, 2]
    suite = {"generators": [{"name": "h"}, {"id": "g", "name": "other"}],
             "methods": [{"id": "zeta"}, {"id": "base"}, {"id": "alpha"}]}
    assert list(group_rows(cells, suite)) == [("h", "zeta", "r"), ("g", "base", "—"), ("g", "alpha", "r")]
    partial = {"generators": [{"name": "g"}], "methods": [{"id": "base"}]}  # rows it does not name come after
    assert list(group_rows(cells, partial)) == [("g", "base", "—"), ("g", "alpha", "r"), ("h", "zeta", "r")]
    by_id = {"generators": [{"id": "h", "name": "sd-turbo"}, {"id": "g", "name": "x"}]}  # a generator's row is its id
    assert list(group_rows(cells, by_id)) == [("h", "zeta", "r"), ("g", "alpha", "r"), ("g", "base", "—")]
    assert list(group_rows(cells, {"methods": [{"id": "zeta"}]}))[0] == ("g", "alpha", "r"), "no generators listed"


def test_win_rate_table_every_cell_of_a_small_world():
    """Two generators, a higher- and a lower-is-better per-image metric, a NaN score left out."""
    def cells_for(generator, method, seed, values, cost):
        rows = [{"image": i, "prompt_index": i // 2, "prompt": "p", "task": "t", "score": v, "cost": c, "note": "x"}
                for i, (v, c) in enumerate(zip(values, cost))]
        cell = _cell(method, seed, {"score": (sum(values) / 4, True), "cost": (sum(cost) / 4, False)}, rows)
        cell.info.generator = {"name": generator}
        return cell

    cells = [cells_for("g", "base", 0, [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]),
             cells_for("g", "m", 0, [0.9, 0.9, 0.1, float("nan")], [0.5, 0.5, 2.0, 1.0]),
             cells_for("h", "base", 0, [0.5] * 4, [1.0] * 4),
             cells_for("h", "m", 0, [0.6] * 4, [0.5] * 4)]
    table = win_rate_table(group_rows(cells), multi=True)
    assert table.headers == ["generator", "method", "train reward", "pairs", "win rate score", "win rate cost"]
    assert table.slug == "win-rate" and table.label_columns == 3
    by = {tuple(row[:2]): (row, bold, raw) for row, bold, raw in zip(table.rows, table.bold, table.raw)}
    assert set(by) == {("g", "m"), ("h", "m")}, "base rows are the reference, not rows"
    row, bold, raw = by[("g", "m")]
    # score: images 0, 1 win, 2 loses, 3 is NaN (left out): 2 / 3; cost (lower is better): 0, 1 win, 2 loses, 3 ties
    assert row[3] == "4" and raw[3] == 4, "pairs: the most pairs of any metric"
    assert row[4].startswith("0.667 [") and raw[4]["win_rate"] == pytest.approx(2 / 3) and raw[4]["pairs"] == 3
    assert raw[5]["win_rate"] == pytest.approx(2.5 / 4) and raw[5]["prompts"] == 2
    assert row[5] == f"0.625 [{raw[5]['ci_low']:.3f}, {raw[5]['ci_high']:.3f}]"
    assert bold == [False, False, False, False, raw[4]["ci_low"] > 0.5, raw[5]["ci_low"] > 0.5]
    row, bold, raw = by[("h", "m")]
    assert row[4] == "1.000 [1.000, 1.000]" and row[5] == "1.000 [1.000, 1.000]" and bold[4:] == [True, True]
    assert raw[:3] == ["h", "m", "r"]


def test_win_rate_table_is_none_without_a_base_or_per_image_scores():
    only_base = [_cell("base", 0, {"score": (0.5, True)}, [{"image": 0, "prompt_index": 0, "score": 0.5}])]
    assert win_rate_table(group_rows(only_base), multi=False) is None
    no_scores = [_cell("base", 0, {"score": (0.5, True)}), _cell("m", 0, {"score": (0.6, True)})]
    assert win_rate_table(group_rows(no_scores), multi=False) is None


def test_gain_table_text_headers_and_unpaired_seeds():
    cells = [_cell("base", s, {"reward": (v, True), "fid": (30.0, False)}) for s, v in ((0, 0.5), (1, 0.6))]
    cells += [_cell("m", s, {"reward": (v, True)}) for s, v in ((0, 0.7), (1, 0.7), (2, 0.9))]  # seed 2 has no base
    cells += [_cell("one", 0, {"reward": (0.4, True), "fid": (31.5, False)})]
    table = gain_table(group_rows(cells), multi=False)
    assert table.headers == ["method", "train reward", "paired seeds", "Δ reward", "Δ fid"]
    assert table.slug == "gain-over-base" and table.label_columns == 2
    rows = {row[0]: (row, raw) for row, raw in zip(table.rows, table.raw)}
    row, raw = rows["m"]
    mean, half = plain_t_interval([0.2, 0.1])
    assert row[2] == "2" and raw[2] == 2, "seed 2 has no base at its seed: not paired"
    assert row[3] == f"+{mean:.3f} ± {half:.3f}" and row[4] == "n/a" and raw[4] is None
    row, raw = rows["one"]
    assert row[3] == "-0.100" and row[4] == "+1.500", "one seed: the difference alone, signed"
    assert raw[3].half_width is None and raw[3].mean == pytest.approx(-0.1)
    assert gain_table(group_rows([c for c in cells if c.info.method_name != "base"]), multi=False) is None
    multi = gain_table(group_rows(cells), multi=True)
    assert multi.headers[0] == "generator" and multi.rows[0][0] == "g" and multi.label_columns == 3


def test_win_rate_bootstrap_equals_a_plain_resampling_of_prompts():
    """The interval, recomputed by hand: 1000 draws of prompts with replacement from numpy's PCG64
    seeded 0 (BOOTSTRAP_SEED), each draw's pooled rate, then the 2.5th and 97.5th percentiles with
    linear interpolation between order statistics."""
    import numpy as np

    pattern = random.Random(3)
    wins = {p: [pattern.randint(0, 1) for _ in range(1 + p % 4)] for p in range(30)}  # 1 = the method's image wins
    base_rows, method_rows = [], []
    for p, outcomes in wins.items():
        for o in outcomes:
            base_rows.append((p, 0.5))
            method_rows.append((p, 0.9 if o else 0.1))
    result = win_rate([_score_cells("m", 0, method_rows)], [_score_cells("base", 0, base_rows)], "score", True)
    prompts = list(wins)
    draws = np.random.default_rng(0).integers(0, len(prompts), size=(1000, len(prompts)))
    rates = sorted(sum(sum(wins[prompts[j]]) for j in row) / sum(len(wins[prompts[j]]) for j in row) for row in draws)

    def percentile(q):
        pos = q / 100 * (len(rates) - 1)
        lo = int(pos)
        return rates[lo] + (pos - lo) * (rates[min(lo + 1, len(rates) - 1)] - rates[lo])

    assert result.rate == pytest.approx(sum(map(sum, wins.values())) / sum(map(len, wins.values())))
    assert (result.low, result.high) == pytest.approx((percentile(2.5), percentile(97.5)), abs=1e-12)


def test_win_rate_skips_each_unpaired_row_and_goes_on():
    """A seed without a base, an image showing another prompt, a NaN score: each is skipped, and the
    rows after it still count."""
    base = [_score_cells("base", 0, [(0, 0.5), (1, 0.5), (2, 0.5), (3, 0.5)])]
    method = [_score_cells("m", 7, [(0, 0.9)] * 4),  # no base at seed 7
              _score_cells("m", 0, [(1, 0.9), (1, float("nan")), (2, 0.9), (3, 0.1)])]  # image 0 shows prompt 1
    result = win_rate(method, base, "score", True)
    assert (result.pairs, result.prompts, result.rate) == (2, 2, 0.5)


def test_win_rate_table_single_generator_headers_title_and_missing_metrics():
    rows = lambda vals: [{"image": i, "prompt_index": i, "prompt": "p", "task": "t", "score": v, "extra": v}  # noqa: E731
                         for i, v in enumerate(vals)]
    base = _cell("base", 0, {"score": (0.5, True)}, rows([0.5, 0.5]))
    m = _cell("m", 0, {"score": (0.7, True)}, rows([0.7, 0.7]))
    partial = _cell("p", 0, {"score": (0.7, True)}, [{"image": i, "prompt_index": i, "score": 0.2} for i in range(2)])
    empty = _cell("empty", 0, {"score": (0.7, True)}, [])  # no per-image scores: no row, and the rows after it stay
    table = win_rate_table(group_rows([base, empty, m, partial]), multi=False)
    assert table.title == "Win rate against base (per image, paired by seed and image; 95% bootstrap CI over prompts)"
    assert table.headers == ["method", "train reward", "pairs", "win rate score", "win rate extra"]
    assert table.label_columns == 2
    by = {row[0]: (row, raw) for row, raw in zip(table.rows, table.raw)}
    assert list(by) == ["m", "p"]
    assert by["m"][0][3:] == ["1.000 [1.000, 1.000]", "1.000 [1.000, 1.000]"], "extra: no aggregate, higher is better"
    assert by["p"][0][3:] == ["0.000 [0.000, 0.000]", "n/a"] and by["p"][1][4] is None


def test_gain_table_bold_flags_title_and_note():
    cells = [_cell("base", s, {"acc": (0.5, True), "reward": (v, True)}) for s, v in ((0, 0.5), (1, 0.6))]
    cells += [_cell("m", s, {"reward": (v, True)}) for s, v in ((0, 0.5), (1, 0.6))]  # acc missing: n/a first
    table = gain_table(group_rows(cells), multi=False)
    assert table.title == "Gain over base, paired by seed (mean ± 95% CI of the per-seed difference)"
    assert table.note == ("Δ = method − base at the same seed; both are evaluated on the same held-out prompts and "
                          "noise. Bold: the 95% Student-t interval excludes zero on the better side.")
    assert table.rows[0][3:] == ["n/a", "+0.000 ± 0.000"], "a zero gain is written +0.000; the metric after n/a is kept"
    assert table.bold == [[False, False, False, False, False]], "labels, n/a and a zero gain are not bold"
    assert table.raw[0][:3] == ["m", "r", 2]

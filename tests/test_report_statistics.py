"""The report's statistics against closed forms and plain loops written here.

The t interval over seeds (Student-t quantiles typed in from tables, not from scipy), the paired
gain over base and its bold rule in both directions (higher- and lower-is-better metrics), the
best-mean bold of the alignment table, the win rate against a plain pair count, and the level of
the win rate's bootstrap interval against the normal approximation on a world with many prompts.
"""

from __future__ import annotations

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


def test_estimate_of_one_seed_has_no_interval():
    assert Estimate.of([0.7]).half_width is None


def _cell(method: str, seed: int, metrics: dict[str, tuple[float, bool]], scores=None) -> CellResult:
    info = CellRecord(status="complete", cell_id=f"g--{method}--r--s{seed}", fingerprint="f", suite="s",
                      generator={"name": "g"}, seed=seed, method={"id": method, "method": method},
                      trains=method != "base", eval={}, train_reward=None if method == "base" else {"alias": "r"})
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

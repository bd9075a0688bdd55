"""Method-against-method verdicts (drpo_bench/report/verdicts.py) checked against independent
computations: scipy's paired t-test for the interval and the verdict, a Monte Carlo of the paired
t-test for the minimum detectable difference, and the committed quickstart's own cells."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from drpo_bench.report.verdicts import compare, minimum_detectable_difference, paired_t_power, textbook_mdd, verdict_tables

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("a, b, higher", [
    ([0.51, 0.55, 0.53, 0.56], [0.50, 0.52, 0.52, 0.53], True),   # A clearly above B
    ([0.51, 0.55, 0.53], [0.52, 0.50, 0.55], True),               # tied
    ([20.0, 18.0, 19.5], [25.0, 24.0, 26.5], False),              # lower is better: A better
    ([0.40, 0.42, 0.41], [0.45, 0.46, 0.48], True),               # A worse
])
def test_interval_and_verdict_match_scipys_paired_t_test(a: list[float], b: list[float], higher: bool) -> None:
    v = compare(dict(enumerate(a)), dict(enumerate(b)), higher)
    assert v is not None
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert v.diff.mean == pytest.approx(float(np.mean(np.subtract(a, b))), abs=1e-12)
    assert v.diff.mean - v.diff.half_width == pytest.approx(ci.low, abs=1e-12)
    assert v.diff.mean + v.diff.half_width == pytest.approx(ci.high, abs=1e-12)
    significant = res.pvalue < 0.05
    a_better = (v.diff.mean > 0) == higher
    assert v.verdict == ("tied" if not significant else "better" if a_better else "worse")


def test_pairs_only_shared_seeds_and_says_one_seed() -> None:
    v = compare({0: 1.0, 1: 2.0, 7: 5.0}, {0: 0.5, 1: 1.0, 3: 9.0}, True)
    assert v is not None and v.diff.n == 2 and v.diff.values == [0.5, 1.0]
    one = compare({0: 1.0}, {0: 0.5}, True)
    assert one is not None and one.verdict == "n/a (one seed)" and one.mdd is None
    assert compare({0: 1.0}, {1: 0.5}, True) is None


@pytest.mark.parametrize("n", [3, 6])
def test_mdd_has_80_percent_power_by_simulation(n: int) -> None:
    """Simulate the two-sided paired t-test at the true difference MDD80: it rejects 80% of the time
    (the closed-form textbook MDD, smaller at a few seeds, would not)."""
    sd = 0.013
    mdd = minimum_detectable_difference(sd, n)
    assert mdd is not None
    rng = np.random.default_rng(0)
    draws = rng.normal(mdd, sd, size=(400_000, n))
    t = draws.mean(1) / (draws.std(1, ddof=1) / math.sqrt(n))
    crit = stats.t.ppf(0.975, n - 1)
    rejected = float(np.mean(np.abs(t) > crit))
    assert rejected == pytest.approx(0.80, abs=0.004)  # Monte Carlo error ~0.0006
    assert paired_t_power(mdd, sd, n) == pytest.approx(0.80, abs=1e-9)


def test_textbook_formula_is_the_large_sample_limit() -> None:
    """MDD → (z_0.975 + z_0.80)·sd/√n; the textbook t form is within 1% at 30 seeds and below the exact one at 3."""
    for n in (30, 200):
        assert textbook_mdd(1.0, n) == pytest.approx(minimum_detectable_difference(1.0, n), rel=0.01)
    assert textbook_mdd(1.0, 3) < minimum_detectable_difference(1.0, 3)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert minimum_detectable_difference(1.0, 5000) * math.sqrt(5000) == pytest.approx(z, rel=1e-3)
    assert minimum_detectable_difference(0.0, 4) == 0.0 and minimum_detectable_difference(1.0, 1) is None


def _cell(method: str, reward: str, seed: int, value: float, trains: bool = True) -> SimpleNamespace:
    info = SimpleNamespace(seed=seed, trains=trains)
    return SimpleNamespace(info=info, metrics={"checker": SimpleNamespace(mean=value, higher_is_better=True)})


def test_tables_pair_rows_of_one_reward_only() -> None:
    rows = {
        ("shapes", "base", "—"): [_cell("base", "—", s, 0.5, trains=False) for s in range(3)],
        ("shapes", "a", "clip"): [_cell("a", "clip", s, 0.6 + 0.01 * s) for s in range(3)],
        ("shapes", "b", "clip"): [_cell("b", "clip", s, 0.5 + 0.012 * s) for s in range(3)],
        ("shapes", "c", "checker"): [_cell("c", "checker", s, 0.7) for s in range(3)],
    }
    (table,) = verdict_tables(rows, multi=False)
    assert [r[:3] for r in table.rows] == [["clip", "a", "b"]]  # base and the other reward's row are not paired
    assert table.raw[0][4].mean == pytest.approx(0.1 - 0.002)
    assert table.rows[0][5] == "better"


def test_report_verdicts_of_the_committed_quickstart(tmp_path: Path) -> None:
    """The report's verdict CSV against the paired differences read straight from each cell's eval.json."""
    from drpo_bench.report.build import build_report

    folder = tmp_path / "quickstart"
    shutil.copytree(REPO / "results" / "quickstart", folder, ignore=shutil.ignore_patterns("figures", "report.*", "tables"))
    build_report(folder, ("csv",))
    with (folder / "tables" / "verdicts-checker.csv").open() as handle:
        rows = {(r["A"], r["B"]): r for r in csv.DictReader(handle)}

    seeds = sorted(int(p.name.rsplit("--s", 1)[1]) for p in folder.glob("shapes--base--none--s*"))
    n = len(seeds)
    assert n >= 3

    def checker(method: str) -> list[float]:
        return [json.loads((folder / f"shapes--{method}--clip--s{s}" / "eval.json").read_text())["metrics"]["checker"]["mean"]
                for s in seeds]

    d = np.subtract(checker("drpo"), checker("grpo"))
    row = rows[("drpo", "grpo")]
    assert float(row["Δ checker (A − B) ± 95% CI mean"]) == pytest.approx(d.mean(), abs=1e-12)
    assert float(row["Δ checker (A − B) ± 95% CI ci95"]) == pytest.approx(
        stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n), abs=1e-12)
    assert float(row["MDD80"]) == pytest.approx(minimum_detectable_difference(float(d.std(ddof=1)), n), rel=1e-9)
    for (a, b), r in rows.items():  # every verdict follows its interval (checker: higher is better)
        mean, ci = float(r["Δ checker (A − B) ± 95% CI mean"]), float(r["Δ checker (A − B) ± 95% CI ci95"])
        expected = "better" if mean - ci > 0 else "worse" if mean + ci < 0 else "tied"
        assert r["verdict (A vs B)"] == expected, (a, b)
    assert ("drpo-checker", "drpo") not in rows and ("drpo", "drpo-checker") not in rows  # other training reward

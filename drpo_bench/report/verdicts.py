"""Method against method, paired by seed: the difference, its 95% CI, a verdict, and the smallest
difference the run could have detected.

For two trained rows of one generator and one training reward, at each seed both ran, the
per-seed difference d_s = A_s − B_s of a held-out metric cancels what the two share (the eval
prompts and noise, eval seed = eval.seed + s). Over the n paired seeds:

- Δ = mean(d), 95% CI = Δ ± t_{0.975, n−1} · sd(d)/√n (Student-t, as every interval of the report);
- verdict: "better" when the interval excludes 0 on the metric's good side for A, "worse" when on
  its bad side, else "tied";
- MDD80: the minimum detectable difference at 80% power, the smallest true mean difference δ at
  which the two-sided paired t-test at α = 0.05 over these n seeds rejects with probability 0.8,
  given the observed spread sd(d): solve power(δ) = 0.8 with
  power(δ) = P(|T| > t_{0.975, n−1}), T ~ noncentral t(n − 1, δ√n / sd(d))  (scipy.stats.nct).
  Close to the textbook MDD = (t_{0.975, n−1} + t_{0.80, n−1}) · sd(d)/√n, which ignores the far
  tail and the skew of the noncentral t and so understates the MDD at a few seeds.

A "tied" pair with |Δ| far below MDD80 is not shown equal: the run could not have told them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from scipy import optimize, stats

from drpo_bench.report.results import CellResult, Estimate
from drpo_bench.report.table import Table, slugify

ALPHA = 0.05  # two-sided, as the report's 95% intervals
POWER = 0.80


def paired_t_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over n pairs when the true mean difference is ``delta``."""
    return _power_at(delta * math.sqrt(n) / sd, n - 1, alpha)


def _power_at(nc: float, df: int, alpha: float) -> float:
    """P(|T| > t_{1-alpha/2, df}) for T ~ noncentral t(df, nc). scipy's far lower tail can be NaN
    where it is below 1e-12: counted as 0."""
    crit = stats.t.ppf(1 - alpha / 2, df)
    lower = float(stats.nct.cdf(-crit, df, nc))
    return float(stats.nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0)


def minimum_detectable_difference(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float | None:
    """The δ ≥ 0 with ``paired_t_power(δ, sd, n) = power``; 0 when sd is 0; None below 2 pairs."""
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    df = n - 1
    hi = 2 * textbook_mdd(1.0, n, power, alpha) * math.sqrt(n)  # in noncentrality units (sd = 1)
    while _power_at(hi, df, alpha) < power:  # the power rises with the noncentrality: widen until it brackets
        hi *= 2
    nc = optimize.brentq(lambda x: _power_at(x, df, alpha) - power, 0.0, hi, xtol=1e-12, rtol=1e-12)
    return float(nc * sd / math.sqrt(n))


def textbook_mdd(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """(t_{1−α/2, n−1} + t_{power, n−1}) · sd/√n: the usual closed-form approximation."""
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(n))


@dataclass
class Verdict:
    a: str
    b: str
    diff: Estimate  # of A − B over the paired seeds
    sd: float | None
    mdd: float | None
    verdict: str  # better | worse | tied | n/a (one seed)


def compare(a_values: dict[int, float], b_values: dict[int, float], higher_is_better: bool, a: str = "A",
            b: str = "B") -> Verdict | None:
    """A against B on the seeds both have ({seed: metric mean}); None when no seed is shared."""
    seeds = sorted(set(a_values) & set(b_values))
    if not seeds:
        return None
    diffs = [a_values[s] - b_values[s] for s in seeds]
    est = Estimate.of(diffs)
    n = len(diffs)
    if est.half_width is None:
        return Verdict(a, b, est, None, None, "n/a (one seed)")
    sd = math.sqrt(sum((d - est.mean) ** 2 for d in diffs) / (n - 1))
    low, high = est.mean - est.half_width, est.mean + est.half_width
    if low > 0:
        verdict = "better" if higher_is_better else "worse"
    elif high < 0:
        verdict = "worse" if higher_is_better else "better"
    else:
        verdict = "tied"
    return Verdict(a, b, est, sd, minimum_detectable_difference(sd, n), verdict)


def _metric_names(results: list[CellResult]) -> list[str]:
    return list(dict.fromkeys(name for r in results for name in r.metrics))


def verdict_tables(rows: dict[tuple[str, str, str], list[CellResult]], multi: bool) -> list[Table]:
    """One table per held-out metric: every pair of trained rows with the same generator and
    training reward (rows in the report's order, Δ = earlier − later). [] when no such pair exists."""
    trained = {k: cells for k, cells in rows.items() if cells[0].info.trains}
    groups: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for key in trained:
        groups.setdefault((key[0], key[2]), []).append(key)
    pairs = [(x, y) for keys in groups.values() for x, y in combinations(keys, 2)]
    if not pairs:
        return []
    results = [c for cells in trained.values() for c in cells]
    tables = []
    for metric in _metric_names(results):
        higher = next(r.metrics[metric].higher_is_better for r in results if metric in r.metrics)
        body, bold, raw = [], [], []
        for x, y in pairs:
            values = [{c.info.seed: c.metrics[metric].mean for c in trained[k]
                       if metric in c.metrics and c.metrics[metric].mean is not None} for k in (x, y)]
            v = compare(values[0], values[1], higher, x[1], y[1])
            if v is None:
                continue
            label = ([x[0]] if multi else []) + [x[2], x[1], y[1]]
            ci = f"{v.diff.mean:+.4f}" + (f" ± {v.diff.half_width:.4f}" if v.diff.half_width is not None else "")
            mdd = "n/a" if v.mdd is None else f"{v.mdd:.4f}"
            body.append(label + [str(v.diff.n), ci, v.verdict, mdd])
            bold.append([False] * len(label) + [False, v.verdict in ("better", "worse"), v.verdict in ("better", "worse"), False])
            raw.append(label + [v.diff.n, v.diff, v.verdict, v.mdd])
        if not body:
            continue
        arrow = "↑" if higher else "↓"
        headers = (["generator"] if multi else []) + ["train reward", "A", "B", "paired seeds",
                                                      f"Δ {metric} (A − B) ± 95% CI", "verdict (A vs B)", "MDD80"]
        note = (f"{metric} {arrow}. Paired by seed: Δ is the mean over seeds of A − B, both evaluated on the same "
                "held-out prompts and noise; 95% Student-t interval. Verdict: better / worse when the interval "
                "excludes 0 (for A, on the metric's good / bad side), else tied. MDD80: the smallest true |Δ| a "
                "two-sided paired t-test at level 0.05 over these seeds detects with 80% power at the observed seed "
                "spread sd (noncentral t; ≈ (t(0.975; n−1) + t(0.80; n−1)) × sd/√n). A tie with |Δ| below MDD80 "
                "says the run could not tell the two apart, not that they are equal.")
        tables.append(Table(f"Method against method: {metric} (paired by seed)", headers, body, bold, note,
                            slug="verdicts-" + slugify(metric), label_columns=len(headers) - 4, raw=raw))
    return tables


def verdict_rows(table: Table) -> list[dict[str, Any]]:
    """The table as records (CSV/JSON readers and tests): headers -> raw values."""
    return [dict(zip(table.headers, row)) for row in table.raw]

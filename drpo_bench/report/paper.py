"""The report's "paper values" table: a suite's published numbers (its ``paper:`` block, recorded in
suite.json) beside the measured mean ± 95% CI over seeds, and measured − paper.

One row per (row of the suite, metric) with a published value; a metric the run did not evaluate
(e.g. ImageReward without its server) says "not measured" rather than dropping the paper's number.
"""

from __future__ import annotations

from typing import Any

from drpo_bench.report.results import CellResult, Estimate
from drpo_bench.report.table import Table

RowKey = tuple[str, str, str]


def _fmt(est: Estimate) -> str:
    return f"{est.mean:.3f}" if est.half_width is None else f"{est.mean:.3f} ± {est.half_width:.3f}"


def paper_table(rows: dict[RowKey, list[CellResult]], suite: dict[str, Any] | None, multi: bool) -> Table | None:
    """None when the suite carries no ``paper`` block or none of its rows ran."""
    paper = (suite or {}).get("paper")
    if not paper or not paper.get("values"):
        return None
    body, raw = [], []
    for key, cells in rows.items():
        published = paper["values"].get(key[1])
        if not published:
            continue
        for metric, value in published.items():
            values = [c.metrics[metric].mean for c in cells if metric in c.metrics and c.metrics[metric].mean is not None]
            label = ([key[0]] if multi else []) + [key[1], key[2], metric]
            if not values:
                body.append(label + [f"{value:g}", "not measured", "n/a"])
                raw.append(label + [value, None, None])
                continue
            est = Estimate.of(values)
            diff = est.mean - value
            body.append(label + [f"{value:g}", _fmt(est), f"{diff:+.3f}"])
            raw.append(label + [value, est, diff])
    if not body:
        return None
    headers = (["generator"] if multi else []) + ["method", "train reward", "metric", "paper", "measured (mean ± 95% CI)",
                                                  "measured − paper"]
    note = (f"Paper: {paper['source']}; {paper['table']}." + (f" {paper['note']}." if paper.get("note") else "")
            + " Measured: this run's held-out mean over seeds with its 95% Student-t interval (none with one seed), "
            "in the units the paper prints. 'not measured': this run did not evaluate that metric.")
    return Table("Paper values beside the measured ones", headers, body, [], note, slug="paper-values",
                 label_columns=4 if multi else 3, raw=raw)

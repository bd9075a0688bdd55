"""Every report table as CSV (``tables/<slug>.csv``) and all of them as one ``tables/tables.json``.

Cells with an estimate become numbers: ``<header> mean``, ``<header> ci95`` (half-width of the
95% interval, empty with one seed) and ``<header> n`` in the CSV; {"mean", "ci95", "n", "values"}
in the JSON. Win rates keep their bootstrap interval ({"win_rate", "ci_low", "ci_high", ...}).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from drpo_bench.report.results import Estimate
from drpo_bench.report.table import Table
from drpo_bench.store import write_json, write_text


def _json_cell(value: Any) -> Any:
    if isinstance(value, Estimate):
        return {"mean": value.mean, "ci95": value.half_width, "n": value.n, "values": list(value.values)}
    return value


def table_to_json(table: Table) -> dict[str, Any]:
    out: dict[str, Any] = {"title": table.title, "headers": table.headers, "rows": table.rows,
                           "bold": table.bold, "note": table.note}
    if table.raw:
        out["values"] = [[_json_cell(v) for v in row] for row in table.raw]
    return out


def table_to_csv(table: Table) -> str:
    """One line per row; estimates spread over mean / ci95 / n columns."""
    source = table.raw or table.rows
    kinds: list[str] = []
    for j in range(len(table.headers)):
        column = [row[j] for row in source]
        if any(isinstance(v, Estimate) for v in column):
            kinds.append("estimate")
        elif any(isinstance(v, dict) for v in column):
            kinds.append("dict:" + ",".join(next(v for v in column if isinstance(v, dict))))
        else:
            kinds.append("plain")
    header: list[str] = []
    for h, kind in zip(table.headers, kinds):
        if kind == "estimate":
            header += [f"{h} mean", f"{h} ci95", f"{h} n"]
        elif kind.startswith("dict:"):
            header += [f"{h} {k}" for k in kind[5:].split(",")]
        else:
            header.append(h)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in source:
        line: list[Any] = []
        for v, kind in zip(row, kinds):
            if kind == "estimate":
                line += [v.mean, "" if v.half_width is None else v.half_width, v.n] if isinstance(v, Estimate) else ["", "", ""]
            elif kind.startswith("dict:"):
                keys = kind[5:].split(",")
                line += [(v or {}).get(k, "") if isinstance(v, dict) or v is None else "" for k in keys]
            else:
                line.append("" if v is None else v)
        writer.writerow(line)
    return buf.getvalue()


def export_tables(tables: list[Table], folder: Path, csv_files: bool = True, json_file: bool = True) -> dict[str, Path]:
    """Writes ``folder/tables/<slug>.csv`` per table and ``folder/tables/tables.json``."""
    out = folder / "tables"
    written: dict[str, Path] = {}
    slugs: dict[str, int] = {}
    named = []
    for t in tables:  # two tables with one slug (long titles) get -2, -3, ...
        slugs[t.slug] = slugs.get(t.slug, 0) + 1
        named.append((t.slug if slugs[t.slug] == 1 else f"{t.slug}-{slugs[t.slug]}", t))
    if csv_files:
        for slug, t in named:
            write_text(out / f"{slug}.csv", table_to_csv(t))
        written["csv"] = out
    if json_file:
        written["json"] = out / "tables.json"
        write_json(written["json"], {slug: table_to_json(t) for slug, t in named})
    return written

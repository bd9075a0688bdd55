"""The report's settings tables: for every cell group (generator, method, train reward), each resolved
setting that differs from the method's defaults (its ``Config`` for ``args``, the suite for ``train``
and ``budget``), and each setting a tuning record chose, marked with that record.

A reader must not take DPO to run at its default β when its tuning record chose β = 30.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drpo_bench.report.results import CellResult
from drpo_bench.report.table import Table

RowKey = tuple[str, str, str]


def method_defaults(method: str) -> dict[str, Any] | None:
    """The registered method's config defaults (preset applied); None when it is not registered here
    (a user's ``package.module:Class``) or its config has required fields."""
    from drpo_bench.errors import UserError
    from drpo_bench.registry import REGISTRIES

    try:
        return REGISTRIES["methods"].get(method).parse_config({}).model_dump()
    except (UserError, ValueError, KeyError, ImportError):
        return None


def resolved_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """The method's full config with the cell's args applied (the args alone when unregistered)."""
    from drpo_bench.errors import UserError
    from drpo_bench.registry import REGISTRIES

    try:
        return REGISTRIES["methods"].get(method).parse_config(args).model_dump()
    except (UserError, ValueError, KeyError, ImportError):
        return dict(args)


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _tuned_keys(cells: list[CellResult], folder: Path) -> tuple[set[str], str]:
    """The grid keys of the tuning record the group ran with (``train.lr``, ``args.beta``) and the
    record's path as the cell names it; (set(), "") when the group was not tuned."""
    record_path = (cells[0].info.method or {}).get("tuned_from")
    if not record_path:
        return set(), ""
    candidates = [Path(record_path), folder / "tuning" / f"{cells[0].info.method_id}.json"]
    for path in candidates:
        try:
            record = json.loads(path.read_text())
            return set(record.get("grid") or record.get("chosen") or {}), record_path
        except (OSError, ValueError):
            continue
    return set(), record_path + " (record not found: every setting it may have chosen is listed)"


def group_settings(cells: list[CellResult], suite: dict[str, Any] | None, folder: Path) -> list[list[str]]:
    """[setting, value, default, source] for every resolved setting of one cell group that differs
    from the method's defaults or was chosen by tuning."""
    info = cells[0].info
    spec = info.method or {}
    tuned, record = _tuned_keys(cells, folder)
    source_of = (lambda key: f"tuned: {record}" if key in tuned or (record and not tuned) else "suite methods[]")
    out: list[list[str]] = []
    defaults = method_defaults(info.method_name)
    for key, value in resolved_args(info.method_name, dict(spec.get("args") or {})).items():
        default = (defaults or {}).get(key, "?") if defaults is not None else "?"
        if default == value and f"args.{key}" not in tuned:
            continue
        out.append([f"args.{key}", value_text(value), "unknown" if defaults is None else value_text(default),
                    source_of(f"args.{key}")])
    for section in ("train", "budget"):
        suite_values = (suite or {}).get(section) or {}
        for key, value in (spec.get(section) or {}).items():
            if value is None:
                continue
            name = f"{section}.{key}"
            default = suite_values.get(key, "?")
            if default == value and name not in tuned:
                continue
            out.append([name, value_text(value), f"{value_text(default)} (suite)", source_of(name)])
    return out


def settings_tables(rows: dict[RowKey, list[CellResult]], multi: bool, suite: dict[str, Any] | None,
                    folder: Path) -> list[Table]:
    """One table per generator: a block of rows per trained cell group, one per setting."""
    tables = []
    for generator in dict.fromkeys(k[0] for k in rows):
        body, raw = [], []
        for key, cells in rows.items():
            if key[0] != generator or not cells[0].info.trains:
                continue
            settings = group_settings(cells, suite, folder) or [["(none)", "method defaults and the suite's settings", "", ""]]
            for setting in settings:
                body.append([key[1], key[2], *setting])
                raw.append([key[1], key[2], *setting])
        if not body:
            continue
        title = "Settings that differ from each method's defaults" + (f" ({generator})" if multi else "")
        slug = "settings" + (f"-{generator}" if multi else "")
        tables.append(Table(title, ["method", "train reward", "setting", "value", "default", "source"], body,
                            slug=slug, label_columns=2, raw=raw, split=False, note=(
                                "Every resolved setting of each cell group that differs from the method's defaults: "
                                "args against the method's config defaults, train and budget against the suite's. "
                                "'tuned: <record>' marks a setting chosen by that tuning record (its grid and scores "
                                "are in the Tuning tables). Learning rate and precision keep the budget matched; "
                                "steps, K or prompts per update do not (rows marked † in the alignment table).")))
    return tables

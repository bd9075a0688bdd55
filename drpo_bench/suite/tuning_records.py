"""Tuning records and their use (docs/tuning.md): grid points, a method row with a setting
applied, validation of a row's ``tune:`` grid, reading and applying a record. Imports neither the
config nor the runner (both call into it); the tuning run itself is ``drpo_bench/commands/tune.py``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from drpo_bench.errors import UserError, nearest
from drpo_bench.store import read_json, write_json, write_text

#: bump when the record's layout changes
RECORD_VERSION = 1
TUNING_DIR = "tuning"
CELLS_DIR = "cells"
VALIDATION_SPLIT = "validation"


# ---- the grid -------------------------------------------------------------------------------


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, in grid order (the first key varies slowest): [{"train.lr": 1e-3, ...}, ...]."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def with_setting(spec: Any, setting: dict[str, Any]) -> Any:
    """The method row with one grid point's settings in its ``args`` and ``train`` overrides."""
    args = dict(spec.args)
    train = spec.train.model_dump(exclude_none=True)
    for key, value in setting.items():
        where, name = key.split(".", 1)
        (args if where == "args" else train)[name] = value
    return spec.model_copy(update={"args": args, "train": type(spec.train).model_validate(train)})  # TrainOverrides


def label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in setting.items())


def score_text(config: dict[str, Any]) -> str:
    """One configuration's validation score as the record's tables show it: mean ± CI, or failed."""
    if config["mean"] is None:
        return "failed"
    return f"{config['mean']:.4f}" + (f" ± {config['ci95']:.4f}" if config.get("ci95") is not None else "")


# ---- validation (called by config.check_references) -------------------------------------------


def check_tuning(suite: Any, i: int, entry: Any, aliases: list[str], loader: Any) -> None:
    """A method's ``tune:`` grid names real settings with valid values, a metric the suite evaluates,
    one generator and one training reward, and a prompt set with a validation split; ``tuned_from``
    is a readable record of this method whose grid matches."""
    from drpo_bench.registry import PROMPTS

    spec = suite.methods[i]
    train_fields = list(type(spec.train).model_fields)  # TrainOverrides
    loc = ("methods", i, "tune")
    tune = spec.tune
    if tune is not None:
        labels = [m.label for m in suite.eval.metrics]
        if tune.metric not in labels:
            raise loader.error((*loc, "metric"), f"`{tune.metric}` is not one of this suite's eval metrics "
                                                 f"({', '.join(labels)}); nearest: {', '.join(nearest(tune.metric, labels))}")
        for key, values in tune.grid.items():
            where, name = key.split(".", 1)
            if where == "train" and name not in train_fields:
                raise loader.error((*loc, "grid", key), f"`{name}` is not a training setting; tunable: "
                                                        f"{', '.join('train.' + f for f in nearest(name, train_fields))}")
            if where == "args" and name not in entry.config_model.model_fields:
                fields = list(entry.config_model.model_fields)
                raise loader.error((*loc, "grid", key), f"method `{spec.method}` has no argument `{name}`; nearest: "
                                                        f"{', '.join('args.' + f for f in nearest(name, fields)) or 'none'}")
            for value in values:
                check_setting(spec, {key: value}, entry, suite, loader, (*loc, "grid", key))
        if len(suite.generators) != 1 or len(aliases) != 1:
            raise loader.error(loc, f"tuning needs one generator and one training reward for the method (this row has "
                                    f"{len(suite.generators)} generator(s) and rewards {aliases}): set `reward:` on it, "
                                    "or tune in a suite with one generator")
        prompt_config = PROMPTS.get(suite.prompts.name).config_model
        if "hold_out_validation" not in prompt_config.model_fields:
            raise loader.error(loc, f"prompt set `{suite.prompts.name}` has no validation split to tune on "
                                    "(a `hold_out_validation` option); tune with the shapes prompts, or drop `tune:`")
    if spec.tuned_from:
        try:
            record = read_record(Path(spec.tuned_from))
            check_record(record, spec, Path(spec.tuned_from))
        except UserError as exc:
            raise loader.error(("methods", i, "tuned_from"), str(exc)) from None


def check_setting(spec: Any, setting: dict[str, Any], entry: Any, suite: Any, loader: Any,
                  loc: tuple[Any, ...]) -> None:
    """One grid value validates as the method's argument or training setting, and fits its budget."""
    from pydantic import ValidationError

    try:
        candidate = with_setting(spec, setting)
        config = entry.parse_config(candidate.args)
        entry.cls.check_budget(config, suite.budget_for(candidate).candidates_per_prompt)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        raise loader.error(loc, f"{label(setting)} is not a valid setting: {errors[0]['msg'].removeprefix('Value error, ')}") from None


# ---- records -------------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"tuning record {path} does not exist; write it with `drpo-bench tune SUITE --output DIR` "
                        f"(it lands in DIR/{TUNING_DIR}/<method-id>.json)")
    try:
        record = read_json(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"tuning record {path} does not parse ({exc}); rerun `drpo-bench tune`") from None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION or not isinstance(record.get("chosen"), dict):
        raise UserError(f"{path} is not a tuning record of this drpo-bench (version {RECORD_VERSION}); rerun `drpo-bench tune`")
    return record


def check_record(record: dict[str, Any], spec: Any, path: Path) -> None:
    """The record tuned this method (same registered method) over this row's grid, if the row has one."""
    if record.get("method") != spec.method:
        raise UserError(f"tuning record {path} is for method `{record.get('method')}`, not `{spec.method}`")
    if spec.tune is not None and record.get("grid") != spec.tune.grid:
        raise UserError(f"tuning record {path} tried grid {record.get('grid')}, but method `{spec.id}` now lists "
                        f"{spec.tune.grid}; rerun `drpo-bench tune`, or point `tuned_from:` at a matching record")
    if spec.tune is not None and record.get("metric") != spec.tune.metric:
        raise UserError(f"tuning record {path} chose by `{record.get('metric')}`, but method `{spec.id}` tunes on "
                        f"`{spec.tune.metric}`; rerun `drpo-bench tune`")


def record_path(output: Path, method_id: str) -> Path:
    return output / TUNING_DIR / f"{method_id}.json"


def apply_tuning(suite: Any, output: Path) -> Any:
    """The suite with each tuned method's chosen setting applied: from ``tuned_from`` when set (the
    record is copied to ``output/tuning/<id>.json`` for the report), else from that file. A tuned
    method without a record is an error, never its untuned settings."""
    if not any(m.tune or m.tuned_from for m in suite.methods):
        return suite
    methods = []
    for spec in suite.methods:
        if not (spec.tune or spec.tuned_from):
            methods.append(spec)
            continue
        path = Path(spec.tuned_from) if spec.tuned_from else record_path(output, spec.id)
        if not path.is_file() and not spec.tuned_from:
            raise UserError(f"method `{spec.id}` has a `tune:` grid but no tuning record at {path}: run "
                            f"`drpo-bench tune SUITE --output {output}` first, or set `tuned_from:` to a committed record")
        record = read_record(path)
        check_record(record, spec, path)
        if spec.tuned_from:  # a copy beside the results, so the report shows the grid and the choice
            copy = record_path(output, spec.id)
            if not copy.is_file() or read_json(copy) != record:
                write_json(copy, record)
                write_text(copy.with_suffix(".md"), record_markdown(record))
        methods.append(with_setting(spec, record["chosen"]))
    return suite.model_copy(update={"methods": methods})


def record_markdown(record: dict[str, Any]) -> str:
    keys = list(record["grid"])
    seeds = record_seeds(record)
    per_seed = len(seeds) > 1
    head = f"### Tuning: {record['method_id']} ({record['method']})\n\n"
    lines = ["| " + " | ".join([*keys, f"validation {record['metric']} (mean ± 95% CI over prompts)",
                                *([f"per seed ({' / '.join(map(str, seeds))})"] if per_seed else []), "chosen"]) + " |",
             "|" + "---|" * (len(keys) + 2 + per_seed)]
    for c in record["configs"]:
        lines.append("| " + " | ".join([*(str(c["settings"][k]) for k in keys), score_text(c),
                                        *([seed_scores_text(c, seeds)] if per_seed else []),
                                        "**yes**" if c["chosen"] else ""]) + " |")
    chosen = label(record["chosen"])
    return head + "\n".join(lines) + f"\n\nChosen: {chosen}. Rule: {record['rule']}. {stability_text(record)}\n"


def record_seeds(record: dict[str, Any]) -> list[int]:
    """The tuning seeds of a record (records before ``tune.seeds`` name one ``seed``)."""
    return list(record.get("seeds") or [record["seed"]])


def seed_scores_text(config: dict[str, Any], seeds: list[int]) -> str:
    values = config.get("seed_means") or {}
    return " / ".join("failed" if values.get(str(s)) is None else f"{values[str(s)]:.4f}" for s in seeds)


def stability_text(record: dict[str, Any]) -> str:
    """Whether the chosen configuration wins at each tuning seed alone, and if not, by how much it loses."""
    seeds = record_seeds(record)
    check = record.get("stability")
    if len(seeds) < 2 or not check:
        return f"One tuning seed ({seeds[0]}): no stability check."
    if check["stable"]:
        return f"Stable: the chosen configuration also wins at each tuning seed alone ({', '.join(map(str, seeds))})."
    lost = [f"at seed {s} {label(w)} wins by {check['margin_over_chosen'][str(s)]:.4f}"
            for s in seeds if (w := check["winners"].get(str(s))) is not None and w != record["chosen"]]
    return f"Not stable: {'; '.join(lost)} over the chosen configuration ({record['metric']})."

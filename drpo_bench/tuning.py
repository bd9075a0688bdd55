"""Fair tuning as a feature: a method's small grid, chosen on a validation split, then run on all seeds.

A method row may carry ``tune: {grid: {train.lr: [...], args.beta: [...]}, metric: checker}``.
``drpo-bench tune SUITE --output DIR`` trains every combination of the grid at ``tune.seed`` on the
train prompts less the prompt set's "validation" split (``hold_out_validation``), scores it on
that validation split (never the held-out eval prompts), and writes ``DIR/tuning/<method-id>.json``
(every configuration: its settings, validation mean ± 95% CI over prompts, the chosen flag and the
rule) and ``DIR/tuning/<method-id>.md``. The grid's cells live in ``DIR/tuning/cells`` (skipped and
resumed like any run's). ``drpo-bench run SUITE --output DIR`` then runs each tuned method with its
record's chosen setting on every seed (``methods[].tuned_from`` names a committed record instead).
docs/tuning.md says how and why.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from drpo_bench.config import MethodSpec, Suite, SuiteLoader, TrainOverrides
from drpo_bench.errors import UserError, nearest
from drpo_bench.store import CellFolder, CorruptCellError, read_json, write_json, write_text

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


def with_setting(spec: MethodSpec, setting: dict[str, Any]) -> MethodSpec:
    """The method row with one grid point's settings in its ``args`` and ``train`` overrides."""
    args = dict(spec.args)
    train = spec.train.model_dump(exclude_none=True)
    for key, value in setting.items():
        where, name = key.split(".", 1)
        (args if where == "args" else train)[name] = value
    return spec.model_copy(update={"args": args, "train": TrainOverrides.model_validate(train)})


def label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in setting.items())


# ---- validation (called by config.check_references) -------------------------------------------


def check_tuning(suite: Suite, i: int, entry: Any, aliases: list[str], loader: SuiteLoader) -> None:
    """A method's ``tune:`` grid names real settings with valid values, a metric the suite evaluates,
    one generator and one training reward, and a prompt set with a validation split; ``tuned_from``
    is a readable record of this method whose grid matches."""
    from drpo_bench.registry import PROMPTS

    spec = suite.methods[i]
    loc = ("methods", i, "tune")
    tune = spec.tune
    if tune is not None:
        labels = [m.label for m in suite.eval.metrics]
        if tune.metric not in labels:
            raise loader.error((*loc, "metric"), f"`{tune.metric}` is not one of this suite's eval metrics "
                                                 f"({', '.join(labels)}); nearest: {', '.join(nearest(tune.metric, labels))}")
        for key, values in tune.grid.items():
            where, name = key.split(".", 1)
            if where == "train" and name not in TrainOverrides.model_fields:
                raise loader.error((*loc, "grid", key), f"`{name}` is not a training setting; tunable: "
                                                        f"{', '.join('train.' + f for f in nearest(name, list(TrainOverrides.model_fields)))}")
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


def check_setting(spec: MethodSpec, setting: dict[str, Any], entry: Any, suite: Suite, loader: SuiteLoader,
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


def check_record(record: dict[str, Any], spec: MethodSpec, path: Path) -> None:
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


def apply_tuning(suite: Suite, output: Path) -> Suite:
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


# ---- the tuning run ------------------------------------------------------------------------


def tuning_suite(suite: Suite) -> tuple[Suite, dict[str, list[tuple[str, dict[str, Any]]]]]:
    """One suite holding every grid point of every tuned method (id ``<id>.g<k>``), one seed each,
    trained on train less validation and evaluated on the validation split by the tuning metric only.
    Returns it and {method id: [(variant id, setting), ...]}."""
    tuned = [m for m in suite.methods if m.tune]
    if not tuned:
        raise UserError(f"suite {suite.name} has no method with a `tune:` grid; add one (docs/tuning.md)")
    metrics = {m.tune.metric for m in tuned if m.tune}
    if len(metrics) != 1:  # one evaluation config for the whole tuning run
        raise UserError(f"tuned methods choose by different metrics ({sorted(metrics)}); tune by one metric per suite")
    seeds = {m.tune.seed for m in tuned if m.tune}
    if len(seeds) != 1:
        raise UserError(f"tuned methods use different tune.seed values ({sorted(seeds)}); use one per suite")
    first = tuned[0].tune
    assert first is not None
    for m in tuned:
        assert m.tune is not None
        if (m.tune.max_prompts, m.tune.images_per_prompt) != (first.max_prompts, first.images_per_prompt):
            raise UserError("tuned methods evaluate the validation split differently (max_prompts, images_per_prompt); "
                            "give every `tune:` the same ones")
    variants, plan = [], {}
    for spec in tuned:
        assert spec.tune is not None
        budget = spec.budget.model_dump(exclude_none=True)
        if spec.tune.steps:
            budget["steps"] = spec.tune.steps
        plan[spec.id] = []
        for k, setting in enumerate(grid_points(spec.tune.grid)):
            variant = with_setting(spec, setting).model_dump(mode="json")
            variant.update(id=f"{spec.id}.g{k}", budget=budget, tune=None, tuned_from=None)
            variants.append(variant)
            plan[spec.id].append((variant["id"], setting))
    ev = suite.eval.model_dump(mode="json")
    ev.update(split=VALIDATION_SPLIT, metrics=[m.model_dump(mode="json") for m in suite.eval.metrics if m.label == first.metric],
              max_prompts=first.max_prompts, images_per_prompt=first.images_per_prompt or suite.eval.images_per_prompt,
              every=None, every_max_prompts=None, keep_images=False)
    data = suite.model_dump(mode="json")
    data.update(methods=variants, seeds=[first.seed], eval=ev,
                prompts={**data["prompts"], "args": {**data["prompts"]["args"], "hold_out_validation": True}})
    return Suite.model_validate(data), plan


def tune_suite(suite: Suite, output: Path, *, quiet: bool = False, console: Console | None = None,
               allow_reference: bool = False) -> dict[str, Path]:
    """Train and score every grid point, choose per method, write the records; {method id: record}."""
    from drpo_bench.runner import run_suite

    console = console or Console(stderr=True)
    tsuite, plan = tuning_suite(suite)
    cells_dir = output / TUNING_DIR / CELLS_DIR
    summary = run_suite(tsuite, cells_dir, allow_reference=allow_reference, quiet=quiet, console=console)
    if summary.failures:
        raise UserError(f"{len(summary.failures)} tuning cell(s) failed ("
                        + "; ".join(f"{k}: {v}" for k, v in list(summary.failures.items())[:3])
                        + f"); fix them and rerun the same command (finished cells are kept in {cells_dir})")
    written = {}
    for spec in suite.methods:
        if spec.id not in plan:
            continue
        record = build_record(suite, spec, tsuite, plan[spec.id], cells_dir)
        path = record_path(output, spec.id)
        write_json(path, record)
        write_text(path.with_suffix(".md"), record_markdown(record))
        written[spec.id] = path
    return written


def _cell_id(tsuite: Suite, variant_id: str) -> str:
    from drpo_bench.planning import plan_cells

    return next(c.id for c in plan_cells(tsuite) if c.method.id == variant_id)


def build_record(suite: Suite, spec: MethodSpec, tsuite: Suite, variants: list[tuple[str, dict[str, Any]]],
                 cells_dir: Path) -> dict[str, Any]:
    from drpo_bench.report.results import Estimate

    assert spec.tune is not None
    metric = spec.tune.metric
    configs, higher = [], None
    for variant_id, setting in variants:
        cell_id = _cell_id(tsuite, variant_id)
        folder = CellFolder(cells_dir / cell_id)
        try:
            value = folder.read_eval().metrics[metric]
            scores = folder.read_scores()
        except (CorruptCellError, KeyError) as exc:
            raise UserError(f"tuning cell {folder.path} has no `{metric}` score ({exc}); rerun `drpo-bench tune`") from None
        higher = value.higher_is_better
        per_prompt: dict[int, list[float]] = {}
        for row in scores:
            if isinstance(row.get(metric), (int, float)):
                per_prompt.setdefault(row["prompt_index"], []).append(float(row[metric]))
        estimate = Estimate.of([sum(v) / len(v) for v in per_prompt.values()]) if per_prompt else None
        configs.append({"settings": setting, "cell": cell_id, "mean": value.mean,
                        "ci95": estimate.half_width if estimate else None, "n_prompts": len(per_prompt) or None,
                        "chosen": False})
    scored = [c for c in configs if c["mean"] is not None]
    if not scored:
        raise UserError(f"no configuration of `{spec.id}` has a `{metric}` score; see the cells in {cells_dir}")
    best = scored[0]
    for c in scored[1:]:  # strictly better only: a tie keeps the earlier grid point
        if (c["mean"] > best["mean"]) if higher else (c["mean"] < best["mean"]):
            best = c
    best["chosen"] = True
    n_val = tsuite.eval.max_prompts
    rule = (f"{'highest' if higher else 'lowest'} mean `{metric}` on the `{VALIDATION_SPLIT}` prompts"
            f"{f' (first {n_val})' if n_val else ''}, seed {spec.tune.seed}, "
            f"{spec.tune.steps or suite.budget_for(spec).steps} updates; a tie keeps the earlier grid point")
    return {
        "version": RECORD_VERSION,
        "suite": suite.name,
        "method_id": spec.id,
        "method": spec.method,
        "base": {"args": spec.args, "train": spec.train.model_dump(exclude_none=True)},
        "grid": spec.tune.grid,
        "metric": metric,
        "higher_is_better": higher,
        "split": VALIDATION_SPLIT,
        "seed": spec.tune.seed,
        "steps": spec.tune.steps or suite.budget_for(spec).steps,
        "images_per_prompt": tsuite.eval.images_per_prompt,
        "rule": rule,
        "configs": configs,
        "chosen": best["settings"],
    }


def record_markdown(record: dict[str, Any]) -> str:
    keys = list(record["grid"])
    head = f"### Tuning: {record['method_id']} ({record['method']})\n\n"
    lines = ["| " + " | ".join([*keys, f"validation {record['metric']} (mean ± 95% CI over prompts)", "chosen"]) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for c in record["configs"]:
        score = "failed" if c["mean"] is None else f"{c['mean']:.4f}" + (f" ± {c['ci95']:.4f}" if c["ci95"] is not None else "")
        lines.append("| " + " | ".join([*(str(c["settings"][k]) for k in keys), score, "**yes**" if c["chosen"] else ""]) + " |")
    chosen = label(record["chosen"])
    return head + "\n".join(lines) + f"\n\nChosen: {chosen}. Rule: {record['rule']}.\n"


# ---- the command ---------------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    from drpo_bench.config import load_suite

    suite = load_suite(args.suite, [*args.overrides, *args.set_overrides])
    output = Path(args.output) if args.output else suite.output_dir
    console = Console(stderr=True)
    console.print(f"[bold]drpo-bench tune[/] {args.suite} → {output / TUNING_DIR}")
    written = tune_suite(suite, output, quiet=args.quiet, console=console, allow_reference=args.update_reference)
    for method_id, path in written.items():
        record = json.loads(path.read_text())
        console.print(f"{method_id}: chose {label(record['chosen'])} ({path})")
    console.print(f"next: `drpo-bench run {args.suite} --output {output}` runs these settings on every seed")
    return 0


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="train each tuned method's grid at one seed, choose on the validation split "
                                    "(docs/tuning.md); `run` with the same --output then uses the choice")
    p.add_argument("suite", help="suite YAML file whose methods have `tune:` grids")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as with run")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value",
                   help="an override given as an option; repeatable")
    p.add_argument("--output", help="results folder (default runs/<suite>); records go to OUTPUT/tuning/<method-id>.json")
    p.add_argument("--update-reference", action="store_true", help="allow writing into the committed results/ folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune)

"""Fair tuning as a feature: a method's small grid, chosen on a validation split, then run on all seeds.

A method row may carry ``tune: {grid: {train.lr: [...], args.beta: [...]}, metric: checker}``.
``drpo-bench tune SUITE --output DIR`` trains every combination of the grid at ``tune.seed`` on the
train prompts less the prompt set's "validation" split (``hold_out_validation``), scores it on
that validation split (never the held-out eval prompts), and writes ``DIR/tuning/<method-id>.json``
(every configuration: its settings, validation mean ± 95% CI over prompts, the chosen flag and the
rule) and ``DIR/tuning/<method-id>.md``. The grid's cells live in ``DIR/tuning/cells`` (skipped and
resumed like any run's). ``drpo-bench run SUITE --output DIR`` then runs each tuned method with its
record's chosen setting on every seed (``methods[].tuned_from`` names a committed record instead;
``drpo_bench/suite/tuning_records.py``). docs/tuning.md says how and why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from drpo_bench.suite.config import MethodSpec, Suite
from drpo_bench.errors import UserError
from drpo_bench.store import CellFolder, CorruptCellError, write_json, write_text
from drpo_bench.suite.tuning_records import (
    CELLS_DIR,
    RECORD_VERSION,
    TUNING_DIR,
    VALIDATION_SPLIT,
    grid_points,
    label,
    record_markdown,
    record_path,
    with_setting,
)


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
    seeds = {tuple(m.tune.tuning_seeds) for m in tuned if m.tune}
    if len(seeds) != 1:
        raise UserError(f"tuned methods use different tuning seeds ({sorted(seeds)}); give every `tune:` the same seed(s)")
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
    data.update(methods=variants, seeds=first.tuning_seeds, eval=ev,
                prompts={**data["prompts"], "args": {**data["prompts"]["args"], "hold_out_validation": True}})
    return Suite.model_validate(data), plan


def tune_suite(suite: Suite, output: Path, *, quiet: bool = False, console: Console | None = None,
               allow_reference: bool = False, stale: str = "stop") -> dict[str, Path]:
    """Train and score every grid point, choose per method, write the records; {method id: record}."""
    from drpo_bench.run.runner import run_suite

    console = console or Console(stderr=True)
    tsuite, plan = tuning_suite(suite)
    cells_dir = output / TUNING_DIR / CELLS_DIR
    summary = run_suite(tsuite, cells_dir, allow_reference=allow_reference, quiet=quiet, console=console, stale=stale)
    if summary.failures:
        raise UserError(f"{len(summary.failures)} tuning cell(s) failed ("
                        + "; ".join(f"{k}: {v}" for k, v in list(summary.failures.items())[:3])
                        + f"); fix them and rerun the same command (finished cells are kept in {cells_dir})")
    from drpo_bench.suite.planning import plan_cells

    cell_ids: dict[str, dict[int, str]] = {}  # variant id -> {tuning seed: its cell}
    for c in plan_cells(tsuite):
        cell_ids.setdefault(c.method.id, {})[c.seed] = c.id
    written = {}
    for spec in suite.methods:
        if spec.id not in plan:
            continue
        record = build_record(suite, spec, tsuite, plan[spec.id], cells_dir, cell_ids)
        path = record_path(output, spec.id)
        write_json(path, record)
        write_text(path.with_suffix(".md"), record_markdown(record))
        written[spec.id] = path
    return written


def build_record(suite: Suite, spec: MethodSpec, tsuite: Suite, variants: list[tuple[str, dict[str, Any]]],
                 cells_dir: Path, cell_ids: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Each configuration's validation score: the mean over the tuning seeds of its cells' means
    (per seed in ``seed_means``), a 95% CI over prompts of the per-prompt scores averaged over seeds;
    the chosen one, and the stability check (``stability``: the winner at each seed alone)."""
    from drpo_bench.report.results import Estimate

    assert spec.tune is not None
    metric = spec.tune.metric
    seeds = spec.tune.tuning_seeds
    configs, higher = [], None
    for variant_id, setting in variants:
        seed_means: dict[str, float | None] = {}
        per_prompt: dict[int, list[float]] = {}
        for seed in seeds:
            folder = CellFolder(cells_dir / cell_ids[variant_id][seed])
            try:
                value = folder.read_eval().metrics[metric]
                scores = folder.read_scores()
            except (CorruptCellError, KeyError) as exc:
                raise UserError(f"tuning cell {folder.path} has no `{metric}` score ({exc}); rerun `drpo-bench tune`") from None
            higher = value.higher_is_better
            seed_means[str(seed)] = value.mean
            seed_prompts: dict[int, list[float]] = {}
            for row in scores:
                if isinstance(row.get(metric), (int, float)):
                    seed_prompts.setdefault(row["prompt_index"], []).append(float(row[metric]))
            for index, values in seed_prompts.items():  # a prompt's mean at this seed
                per_prompt.setdefault(index, []).append(sum(values) / len(values))
        means = list(seed_means.values())
        mean = None if any(m is None for m in means) else sum(means) / len(means)  # type: ignore[arg-type]
        complete = {i: v for i, v in per_prompt.items() if len(v) == len(seeds)}  # prompts scored at every seed
        estimate = Estimate.of([sum(v) / len(v) for v in complete.values()]) if complete else None
        ids = [cell_ids[variant_id][seed] for seed in seeds]
        configs.append({"settings": setting, "cell": ids[0], "cells": ids, "seed_means": seed_means, "mean": mean,
                        "ci95": estimate.half_width if estimate else None, "n_prompts": len(complete) or None,
                        "chosen": False})
    best = _best(configs, lambda c: c["mean"], bool(higher))
    if best is None:
        raise UserError(f"no configuration of `{spec.id}` has a `{metric}` score; see the cells in {cells_dir}")
    best["chosen"] = True
    n_val = tsuite.eval.max_prompts
    steps = spec.tune.steps or suite.budget_for(spec).steps
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(map(str, seeds))}"
    rule = (f"{'highest' if higher else 'lowest'} mean `{metric}` on the `{VALIDATION_SPLIT}` prompts"
            f"{f' (first {n_val})' if n_val else ''}, {seed_text}, {steps} updates; "
            "a tie keeps the earlier grid point")
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
        "seed": seeds[0],
        "seeds": seeds,
        "steps": steps,
        "images_per_prompt": tsuite.eval.images_per_prompt,
        "rule": rule,
        "configs": configs,
        "chosen": best["settings"],
        "stability": stability(configs, seeds, bool(higher), best),
    }


def _best(configs: list[dict[str, Any]], score: Any, higher: bool) -> dict[str, Any] | None:
    """The best configuration by ``score`` (None scores skipped); strictly better only: a tie keeps the earlier."""
    best = None
    for c in configs:
        if score(c) is None:
            continue
        if best is None or ((score(c) > score(best)) if higher else (score(c) < score(best))):
            best = c
    return best


def stability(configs: list[dict[str, Any]], seeds: list[int], higher: bool, chosen: dict[str, Any]) -> dict[str, Any]:
    """Does the chosen configuration also win at each tuning seed alone? Per seed: the winner there
    and by how much it beats the chosen configuration at that seed (0 where the chosen one wins)."""
    winners, margins = {}, {}
    for seed in seeds:
        key = str(seed)
        winner = _best(configs, lambda c, key=key: c["seed_means"].get(key), higher)
        if winner is None or chosen["seed_means"].get(key) is None:
            winners[key], margins[key] = None, None
            continue
        winners[key] = winner["settings"]
        margin = winner["seed_means"][key] - chosen["seed_means"][key]
        margins[key] = margin if higher else -margin
    return {"stable": all(w == chosen["settings"] for w in winners.values()), "winners": winners,
            "margin_over_chosen": margins}


# ---- the command ---------------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    from drpo_bench.suite.config import load_suite

    suite = load_suite(args.suite, [*args.overrides, *args.set_overrides])
    output = Path(args.output) if args.output else suite.output_dir
    console = Console(stderr=True)
    console.print(f"[bold]drpo-bench tune[/] {args.suite} → {output / TUNING_DIR}")
    from drpo_bench.suite.code_hash import stale_policy

    written = tune_suite(suite, output, quiet=args.quiet, console=console, allow_reference=args.update_reference,
                         stale=stale_policy(args))
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
    from drpo_bench.suite.code_hash import add_stale_arguments

    add_stale_arguments(p)
    p.set_defaults(func=cmd_tune)

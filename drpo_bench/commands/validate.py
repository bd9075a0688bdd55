"""`drpo-bench validate SUITE...`: resolve suites (schema, names, pairings) without loading weights."""

from __future__ import annotations

import argparse

from rich.console import Console

from drpo_bench.commands.common import is_override
from drpo_bench.errors import UserError


def add_validate_parser(sub: argparse._SubParsersAction) -> None:
    from drpo_bench.suite.config import schema_text

    val = sub.add_parser("validate", help="check suites: schema, names, pairings; loads no weights",
                         epilog="suite schema (YAML keys; a component may be a bare name or {name, args, id}):\n"
                                + schema_text() + "\n\nexamples: suites/*.yaml; reference: docs/architecture.md",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    val.add_argument("suites", nargs="+", metavar="SUITE_OR_OVERRIDE",
                     help="suite YAML files, then optional key=value overrides as with run (e.g. budget.steps=4)")
    val.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value",
                     help="an override given as an option (same as a positional key=value); repeatable")
    from drpo_bench.commands.memory_plan import add_memory_arguments

    add_memory_arguments(val, required=False)  # validate --gpu-memory 80GB: plan the suite's memory too
    val.set_defaults(func=cmd_validate, overrides=[])


def cmd_validate(args: argparse.Namespace) -> int:
    from drpo_bench.suite.config import load_suite
    from drpo_bench.suite.planning import plan_cells

    # validate SUITE... [key=value ...]: the positional words with an "=" are overrides
    overrides = [x for x in args.suites if is_override(x)] + args.overrides + args.set_overrides
    suites = [x for x in args.suites if not is_override(x)]
    if not suites:
        raise UserError("validate needs at least one suite file, e.g. `drpo-bench validate suites/smoke.yaml`")
    console = Console()  # the result goes to stdout (errors to stderr), so `validate ... > ok.txt` keeps it
    for path in suites:
        suite = load_suite(path, overrides)
        cells = plan_cells(suite)
        console.print(f"[green]ok[/] {path}: {len(cells)} cells, effective batch {suite.budget.effective}, output {suite.output_dir}",
                      soft_wrap=True)
        if args.gpu_memory:  # --gpu-memory: also the predicted GPU memory of each training cell (drpo-bench plan)
            from drpo_bench.commands.memory_plan import plan_rows, planner_from_args, print_plan

            planner = planner_from_args(args)
            print_plan(path, plan_rows(suite, planner), planner)
    return 0


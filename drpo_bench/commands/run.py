"""`drpo-bench run SUITE`: run a suite's cells, then write its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from drpo_bench.commands.common import EXAMPLES, console, overrides
from drpo_bench.errors import UserError


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a suite (skips finished cells, resumes interrupted ones)",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. budget.steps=10 seeds=[0]")
    run.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value",
                     help="an override given as an option (same as a positional key=value); repeatable")
    run.add_argument("--output", help="results folder (default: the suite's output, runs/<suite>)")
    run.add_argument("--shard", help="run only cells i, i+n, i+2n, ... (i/n), for several processes or jobs")
    run.add_argument("--update-reference", action="store_true",
                     help="allow writing into the committed results/ folder (from a clean checkout only)")
    from drpo_bench.suite.code_hash import add_stale_arguments

    add_stale_arguments(run)  # --rerun-stale, --keep-stale
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="wait at least this long for another run's check-in on the same --output (default 60 s)")
    from drpo_bench.run.executors import add_execution_arguments

    add_execution_arguments(run)  # --jobs, --threads-per-cell, --executor, --address
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from drpo_bench.suite.config import load_suite
    from drpo_bench.run.executors import execution_overrides
    from drpo_bench.report import build_report
    from drpo_bench.report.build import summary_rows
    from drpo_bench.suite.code_hash import stale_policy
    from drpo_bench.run.runner import run_suite

    suite = load_suite(args.suite, [*overrides(args), *execution_overrides(args)])
    shard = _parse_shard(args.shard)
    _quiet_library_progress_bars()
    err = console()
    output = Path(args.output) if args.output else suite.output_dir
    err.print(f"[bold]drpo-bench run[/] {args.suite} → {output}")
    summary = run_suite(suite, output, allow_reference=args.update_reference, quiet=args.quiet, shard=shard,
                        console=err, wait=args.wait, stale=stale_policy(args))
    if summary.rank:  # a data-parallel launch's process > 0: rank 0 reports
        return 1 if summary.failures else 0
    counts = {s: list(summary.statuses.values()).count(s) for s in ("done", "resumed", "skipped", "failed")}
    err.print("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    try:
        if not summary.report_due:  # other shards still work here, or have yet to: the last one reports
            raise UserError(f"cells of other shards or runs in {output} are not finished; the last run to finish "
                            f"writes the report (or run `drpo-bench report {output}` for a partial one)")
        written = build_report(output)
        headers, rows = summary_rows(output)
    except UserError as exc:
        err.print(f"[yellow]no report: {exc}[/]")
    else:
        table = Table(title=f"{suite.name} (held-out, mean ± 95% CI over seeds)")
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        err.print("report: " + ", ".join(str(p) for p in written.values()))
    if summary.failures:
        err.print(f"[red]{len(summary.failures)} cell(s) failed[/]: " + "; ".join(f"{k}: {v}" for k, v in summary.failures.items()))
        return 1
    return 0


def _quiet_library_progress_bars() -> None:
    """transformers/diffusers print a tqdm bar per loaded model; our rich bars say enough."""
    for name in ("transformers", "diffusers"):
        try:
            __import__(f"{name}.utils.logging", fromlist=["disable_progress_bar"]).disable_progress_bar()
        except (ImportError, AttributeError):
            pass


def _parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= i < n")
    return (i, n)


"""`drpo-bench`: run, validate, list, report, sample (and flops, serve-reward where installed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from drpo_bench.errors import UserError

#: kept in step with drpo_bench.report.build.FORMATS / DEFAULT_FORMATS (tests check it); not imported
#: here so that `drpo-bench --help` does not load matplotlib
REPORT_FORMATS = ("md", "tex", "html", "pdf", "csv", "json")
DEFAULT_FORMATS = ("md", "tex", "html", "csv", "json")

EXAMPLES = """\
examples:
  drpo-bench run suites/quickstart.yaml                 # the embedded shapes world, CPU, minutes
  drpo-bench run suites/smoke.yaml budget.steps=4       # dotted overrides of any suite field
  drpo-bench run suites/quickstart.yaml --output /tmp/q # write somewhere else (default runs/<suite>)
  drpo-bench run suites/quickstart.yaml --jobs auto     # cells in parallel processes (--executor ray: a cluster)
  drpo-bench validate suites/*.yaml suites/paper/*.yaml # resolve everything, load no weights
  drpo-bench validate suites/smoke.yaml budget.steps=4  # overrides as with run (or --set budget.steps=4)
  drpo-bench ls methods                                 # what can be named in a suite
  drpo-bench report runs/quickstart                     # report.md / .tex / .html, figures/, tables/*.csv + json
  drpo-bench report runs/quickstart --formats pdf       # report.pdf (needs pdflatex)
  drpo-bench sample --adapter runs/quickstart/<cell> --prompt "a red circle"  # PNG grid from a cell's LoRA
  drpo-bench flops --generator sd-turbo --reward hpsv3 --methods drpo,draft --K 24 --effective-batch 192
  drpo-bench serve-reward shapes-clip --port 8765       # any reward over HTTP on localhost
  drpo-bench make-dataset --out runs/shapes-offline-data # offline preference data (docs/offline.md)
  drpo-bench tune suites/quickstart-tuning.yaml --output runs/qt  # grids on the validation split (docs/tuning.md)

A run writes one folder per cell under runs/<suite>/ (never into the committed results/).
Rerunning skips finished cells and resumes an interrupted one from its last checkpoint.
"""


def _console() -> Console:
    return Console(stderr=True)


def cmd_run(args: argparse.Namespace) -> int:
    from drpo_bench.config import load_suite
    from drpo_bench.executors import execution_overrides
    from drpo_bench.report import build_report
    from drpo_bench.report.build import summary_rows
    from drpo_bench.code_hash import stale_policy
    from drpo_bench.runner import run_suite

    suite = load_suite(args.suite, [*_overrides(args), *execution_overrides(args)])
    shard = _parse_shard(args.shard)
    _quiet_library_progress_bars()
    console = _console()
    output = Path(args.output) if args.output else suite.output_dir
    console.print(f"[bold]drpo-bench run[/] {args.suite} → {output}")
    summary = run_suite(suite, output, allow_reference=args.update_reference, quiet=args.quiet, shard=shard,
                        console=console, wait=args.wait, stale=stale_policy(args))
    if summary.rank:  # a data-parallel launch's process > 0: rank 0 reports
        return 1 if summary.failures else 0
    counts = {s: list(summary.statuses.values()).count(s) for s in ("done", "resumed", "skipped", "failed")}
    console.print("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    try:
        if not summary.report_due:  # other shards still work here, or have yet to: the last one reports
            raise UserError(f"cells of other shards or runs in {output} are not finished; the last run to finish "
                            f"writes the report (or run `drpo-bench report {output}` for a partial one)")
        written = build_report(output)
        headers, rows = summary_rows(output)
    except UserError as exc:
        console.print(f"[yellow]no report: {exc}[/]")
    else:
        table = Table(title=f"{suite.name} (held-out, mean ± 95% CI over seeds)")
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        console.print("report: " + ", ".join(str(p) for p in written.values()))
    if summary.failures:
        console.print(f"[red]{len(summary.failures)} cell(s) failed[/]: " + "; ".join(f"{k}: {v}" for k, v in summary.failures.items()))
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


def _is_override(text: str) -> bool:
    """``key=value`` (not an option, not an existing file whose name has an ``=``)."""
    return "=" in text and not text.startswith("-") and not Path(text).exists()


def _overrides(args: argparse.Namespace) -> list[str]:
    """Positional ``key=value`` overrides, then ``--set key=value`` ones (a later one wins)."""
    return [*args.overrides, *args.set_overrides]


def cmd_validate(args: argparse.Namespace) -> int:
    from drpo_bench.config import load_suite
    from drpo_bench.planning import plan_cells

    # validate SUITE... [key=value ...]: the positional words with an "=" are overrides
    overrides = [x for x in args.suites if _is_override(x)] + args.overrides + args.set_overrides
    suites = [x for x in args.suites if not _is_override(x)]
    if not suites:
        raise UserError("validate needs at least one suite file, e.g. `drpo-bench validate suites/smoke.yaml`")
    console = Console()  # the result goes to stdout (errors to stderr), so `validate ... > ok.txt` keeps it
    for path in suites:
        suite = load_suite(path, overrides)
        cells = plan_cells(suite)
        console.print(f"[green]ok[/] {path}: {len(cells)} cells, effective batch {suite.budget.effective}, output {suite.output_dir}",
                      soft_wrap=True)
        if args.gpu_memory:  # --gpu-memory: also the predicted GPU memory of each training cell (drpo-bench plan)
            from drpo_bench.memory_plan import plan_rows, planner_from_args, print_plan

            planner = planner_from_args(args)
            print_plan(path, plan_rows(suite, planner), planner)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from drpo_bench.registry import REGISTRIES

    table = Table(title=args.kind)
    if args.kind == "suites":
        from drpo_bench.config import SuiteLoader

        from drpo_bench.runner import REPO_ROOT

        root = Path("suites") if Path("suites").is_dir() else REPO_ROOT / "suites"
        paths = sorted(root.rglob("*.yaml"))
        longest = max((len(str(p)) for p in paths), default=10)
        table.add_column("suite", no_wrap=True, min_width=longest)  # whole paths, so they can be copied
        table.add_column("description", overflow="fold", min_width=30)
        console = Console(width=max(Console().width, longest + 40))
        for path in paths:
            try:
                raw = SuiteLoader(path).read()
                table.add_row(str(path), str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else "")
            except UserError as exc:
                table.add_row(str(path), f"[red]{exc}[/]")
    else:
        registry = REGISTRIES[args.kind]
        table.add_column("name")
        table.add_column("description")
        extra = args.kind in ("methods", "rewards")
        if extra:
            table.add_column("needs reward grad" if args.kind == "methods" else "differentiable")
        for entry in registry.entries():
            row = [entry.name, entry.description]
            if args.kind == "methods":
                row.append("yes" if entry.cls.needs_differentiable_reward else "no")
            elif args.kind == "rewards":
                row.append("yes" if entry.cls.differentiable else "no")
            table.add_row(*row)
        console = Console()
    console.print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from drpo_bench.report import build_report
    from drpo_bench.runner import check_output_dir

    output = Path(args.output) if args.output else Path(args.results)
    check_output_dir(output, args.update_reference, what="`report` writes into the results folder it reads by default")
    written = build_report(args.results, args.formats, output=output)
    for path in written.values():
        print(path)
    for fmt, why in written.missing.items():  # one line each; the other formats are written
        _console().print(Text.assemble((f"{fmt} not written: ", "bold red"), why), highlight=False, soft_wrap=True)
    return 1 if written.missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drpo-bench",
        description="Benchmark DrPO against reward-backprop and gradient-free baselines on one-step text-to-image generators.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    from drpo_bench.code_hash import add_stale_arguments

    add_stale_arguments(run)  # --rerun-stale, --keep-stale
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="wait at least this long for another run's check-in on the same --output (default 60 s)")
    from drpo_bench.executors import add_execution_arguments

    add_execution_arguments(run)  # --jobs, --threads-per-cell, --executor, --address
    run.set_defaults(func=cmd_run)

    from drpo_bench.config import schema_text

    val = sub.add_parser("validate", help="check suites: schema, names, pairings; loads no weights",
                         epilog="suite schema (YAML keys; a component may be a bare name or {name, args, id}):\n"
                                + schema_text() + "\n\nexamples: suites/*.yaml; reference: docs/architecture.md",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    val.add_argument("suites", nargs="+", metavar="SUITE_OR_OVERRIDE",
                     help="suite YAML files, then optional key=value overrides as with run (e.g. budget.steps=4)")
    val.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value",
                     help="an override given as an option (same as a positional key=value); repeatable")
    from drpo_bench.memory_plan import add_memory_arguments

    add_memory_arguments(val, required=False)  # validate --gpu-memory 80GB: plan the suite's memory too
    val.set_defaults(func=cmd_validate, overrides=[])

    ls = sub.add_parser("ls", help="list registered components or suites")
    ls.add_argument("kind", choices=["generators", "rewards", "features", "methods", "metrics", "prompts", "suites"])
    ls.set_defaults(func=cmd_ls)

    rep = sub.add_parser("report", help="tables (md, tex, html) and figures from a results folder")
    rep.add_argument("results", help="a results folder written by `drpo-bench run`, e.g. runs/quickstart")
    rep.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                     help=f"comma-separated subset of {','.join(REPORT_FORMATS)} (default: %(default)s; pdf runs "
                          "pdflatex, csv/json write tables/)")
    rep.add_argument("--output", metavar="DIR", help="write the report into DIR (default: the results folder itself)")
    rep.add_argument("--update-reference", action="store_true",
                     help="allow writing into the committed results/ folder (from a clean checkout only)")
    rep.set_defaults(func=cmd_report)

    from drpo_bench.sampling import add_sample_parser

    add_sample_parser(sub)

    _optional_commands(sub)
    return parser


def _optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands contributed by other modules (flops, bench, serve-reward, make-dataset)."""
    try:
        from drpo_bench.flops_cli import add_bench_parser, add_flops_parser
    except ImportError:
        pass
    else:
        add_flops_parser(sub)
        add_bench_parser(sub)
    from drpo_bench.memory_plan import add_plan_parser

    add_plan_parser(sub)
    try:
        from drpo_bench.serve import add_serve_reward_parser
    except ImportError:
        pass
    else:
        add_serve_reward_parser(sub)
    from drpo_bench.make_dataset import add_make_dataset_parser

    add_make_dataset_parser(sub)
    from drpo_bench.tuning import add_tune_parser

    add_tune_parser(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options too: `run S --output o budget.steps=2`
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        _console().print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted: finished cells are kept; rerun the same command to resume.[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())

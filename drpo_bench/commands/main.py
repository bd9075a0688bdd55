"""`drpo-bench`: the parser and the dispatch; each command lives in its own module of this folder."""

from __future__ import annotations

import argparse
import sys

from rich.text import Text

from drpo_bench.commands.common import EXAMPLES, console
from drpo_bench.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drpo-bench",
        description="Benchmark DrPO against reward-backprop and gradient-free baselines on one-step text-to-image generators.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from drpo_bench.commands.ls import add_ls_parser
    from drpo_bench.commands.report import add_report_parser
    from drpo_bench.commands.run import add_run_parser
    from drpo_bench.commands.sample import add_sample_parser
    from drpo_bench.commands.validate import add_validate_parser

    add_run_parser(sub)
    add_validate_parser(sub)
    add_ls_parser(sub)
    add_report_parser(sub)
    add_sample_parser(sub)
    _optional_commands(sub)
    return parser


def _optional_commands(sub: argparse._SubParsersAction) -> None:
    """flops, bench, plan, serve-reward, make-dataset, tune; flops/bench and serve-reward are skipped
    where their optional imports are missing."""
    try:
        from drpo_bench.commands.flops import add_bench_parser, add_flops_parser
    except ImportError:
        pass
    else:
        add_flops_parser(sub)
        add_bench_parser(sub)
    from drpo_bench.commands.memory_plan import add_plan_parser

    add_plan_parser(sub)
    try:
        from drpo_bench.commands.serve import add_serve_reward_parser
    except ImportError:
        pass
    else:
        add_serve_reward_parser(sub)
    from drpo_bench.commands.make_dataset import add_make_dataset_parser

    add_make_dataset_parser(sub)
    from drpo_bench.commands.tune import add_tune_parser

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
        console().print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console().print("[yellow]interrupted: finished cells are kept; rerun the same command to resume.[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`drpo-bench ls KIND`: the registered components of a kind, or the suite files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from drpo_bench.errors import UserError


def add_ls_parser(sub: argparse._SubParsersAction) -> None:
    ls = sub.add_parser("ls", help="list registered components or suites")
    ls.add_argument("kind", choices=["generators", "rewards", "features", "methods", "metrics", "prompts", "suites"])
    ls.set_defaults(func=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    from drpo_bench.registry import REGISTRIES

    table = Table(title=args.kind)
    if args.kind == "suites":
        from drpo_bench.suite.config import SuiteLoader

        from drpo_bench.run.runner import REPO_ROOT

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


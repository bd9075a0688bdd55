"""`drpo-bench report RESULTS`: tables (md, tex, html, csv, json), figures and a PDF from a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.text import Text

from drpo_bench.commands.common import console

#: kept in step with drpo_bench.report.build.FORMATS / DEFAULT_FORMATS (tests check it); not imported
#: here so that `drpo-bench --help` does not load matplotlib
REPORT_FORMATS = ("md", "tex", "html", "pdf", "csv", "json")
DEFAULT_FORMATS = ("md", "tex", "html", "csv", "json")


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="tables (md, tex, html) and figures from a results folder")
    rep.add_argument("results", help="a results folder written by `drpo-bench run`, e.g. runs/quickstart")
    rep.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                     help=f"comma-separated subset of {','.join(REPORT_FORMATS)} (default: %(default)s; pdf runs "
                          "pdflatex, csv/json write tables/)")
    rep.add_argument("--output", metavar="DIR", help="write the report into DIR (default: the results folder itself)")
    rep.add_argument("--update-reference", action="store_true",
                     help="allow writing into the committed results/ folder (from a clean checkout only)")
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from drpo_bench.report import build_report
    from drpo_bench.run.runner import check_output_dir

    output = Path(args.output) if args.output else Path(args.results)
    check_output_dir(output, args.update_reference, what="`report` writes into the results folder it reads by default")
    written = build_report(args.results, args.formats, output=output)
    for path in written.values():
        print(path)
    for fmt, why in written.missing.items():  # one line each; the other formats are written
        console().print(Text.assemble((f"{fmt} not written: ", "bold red"), why), highlight=False, soft_wrap=True)
    return 1 if written.missing else 0


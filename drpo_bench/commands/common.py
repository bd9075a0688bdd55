"""What the commands share: the error console, ``key=value`` overrides and the usage examples."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

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


def console() -> Console:
    """Progress, notes and errors go to stderr, so a command's own output on stdout can be piped."""
    return Console(stderr=True)


def is_override(text: str) -> bool:
    """``key=value`` (not an option, not an existing file whose name has an ``=``)."""
    return "=" in text and not text.startswith("-") and not Path(text).exists()


def overrides(args: argparse.Namespace) -> list[str]:
    """Positional ``key=value`` overrides, then ``--set key=value`` ones (a later one wins)."""
    return [*args.overrides, *args.set_overrides]


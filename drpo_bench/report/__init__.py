"""Stage 3, the report: Markdown, LaTeX (and PDF), self-contained HTML, figures, CSV/JSON tables from a results folder.

May import: ``store`` (it reads the results folder), ``suite`` (tuning records), ``compute``
(the ledger's phases), ``errors``/``registry``. Never ``run``: a report needs only the files.
"""

from drpo_bench.report.build import build_report

__all__ = ["build_report"]

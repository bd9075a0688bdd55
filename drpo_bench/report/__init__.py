"""Reports from a results folder: Markdown, LaTeX (and PDF), self-contained HTML, figures, CSV/JSON tables."""

from drpo_bench.report.build import build_report

__all__ = ["build_report"]

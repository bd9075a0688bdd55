"""Reports from a results folder: Markdown, LaTeX and HTML tables, plus figures."""

from drpo_bench.report.build import build_report

__all__ = ["build_report"]

"""Benchmarks (pytest-benchmark): not part of the default test run (testpaths = tests).

Run them all with:

    .venv/bin/python -m pytest benchmarks -m benchmark --benchmark-only

(``-m benchmark`` overrides the default ``-m 'not ... benchmark'`` of pyproject.toml; every test
here carries the marker.) Add ``--benchmark-json out.json`` to keep the numbers.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "benchmarks" in item.path.parts:
            item.add_marker(pytest.mark.benchmark)

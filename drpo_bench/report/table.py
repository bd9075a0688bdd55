"""The report's table: what every renderer (Markdown, LaTeX, HTML, CSV/JSON) reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]  # display text, one string per header
    bold: list[list[bool]] = field(default_factory=list)
    note: str = ""
    slug: str = ""  # file name (tables/<slug>.csv) and LaTeX label (tab:<slug>); from the title when empty
    label_columns: int = 1  # leading columns that name the row (repeated when a wide table is split)
    # numbers behind ``rows`` for the CSV/JSON export: per cell a float, a str, None or an
    # ``Estimate`` (mean, 95% half-width, n); empty means the display text is exported as is
    raw: list[list[Any]] = field(default_factory=list)
    # False: LaTeX keeps every column in one tabularx (long text wraps) instead of splitting the table
    # into parts; for tables read row by row (settings), where a split would separate a row's halves
    split: bool = True

    def __post_init__(self) -> None:
        if not self.slug:
            self.slug = slugify(self.title)


def slugify(text: str, limit: int = 48) -> str:
    """ASCII file-name and label stem: lower case, [a-z0-9-] only."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower().encode("ascii", "ignore").decode()).strip("-")
    return slug[:limit].rstrip("-") or "table"

"""Which code made the report's cells: the "Code" notes and the ‡ that marks a row whose cells
cannot be traced to the code of a clean commit (cell.json ``code``, drpo_bench/suite/code_hash.py).

A cell is marked when ``run --keep-stale`` kept it though other code made it (its
``kept_stale.json``), when it recorded no code hash (made before they were recorded), or when
it was made from code that differs from its commit (uncommitted or untracked files, code outside
the checkout, or no git checkout at all).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from drpo_bench.report.results import CellResult
from drpo_bench.report.table import Table
from drpo_bench.store import CellFolder, CorruptCellError

MARK = "‡"


def cell_mark(result: CellResult) -> str | None:
    """Why ``result`` is not traceable to a clean commit's code, or None when it is."""
    try:
        kept = CellFolder(result.folder).read_kept_stale()
    except CorruptCellError:
        kept = {"code_hash": None, "changed": ["(kept_stale.json is corrupt)"]}
    if kept is not None:
        changed = ", ".join(kept.get("changed") or []) or "?"
        return (f"made by other code than the run that kept it (--keep-stale): code hash "
                f"{kept.get('code_hash') or 'not recorded'}, not {kept.get('this_code_hash')}; changed since: {changed}")
    code: dict[str, Any] | None = result.info.code
    if not code:
        return f"made by code that was not recorded (no code hash; {result.info.git or 'no git commit'})"
    if not code.get("commit"):
        return f"code hash {code.get('hash')}, made outside a git checkout: no commit rebuilds it"
    uncommitted = list(code.get("uncommitted") or [])
    if uncommitted:
        return (f"code hash {code.get('hash')}, made from commit {code['commit'][:12]} plus uncommitted or outside "
                f"files: {', '.join(uncommitted[:6])}{' ...' if len(uncommitted) > 6 else ''}")
    return None


def code_notes(results: list[CellResult]) -> tuple[set[str], list[str]]:
    """(ids of the marked cells, one note per reason with the cells it applies to). The first note
    says what the unmarked cells were made by."""
    reasons: dict[str, list[str]] = defaultdict(list)
    clean: dict[str, list[str]] = defaultdict(list)  # commit -> code hashes of the traceable cells
    for result in results:
        why = cell_mark(result)
        if why is None:
            clean[result.info.code["commit"]].append(result.info.code["hash"])  # type: ignore[index]
        else:
            reasons[why].append(result.cell_id)
    notes = [f"{len(hashes)} cell(s) made by the code of clean commit {commit[:12]} (code hashes "
             f"{', '.join(sorted(set(hashes)))})" for commit, hashes in clean.items()]
    for why, cells in reasons.items():
        shown = ", ".join(cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
        notes.append(f"{MARK} {len(cells)} cell(s) ({shown}): {why}")
    return {c for cells in reasons.values() for c in cells}, notes


def mark_rows(table: Table, rows: dict[tuple[str, str, str], list[CellResult]], marked: set[str]) -> None:
    """Append ‡ to the method label of each row (of a table keyed like ``rows``) holding a marked cell."""
    if not marked or len(table.rows) != len(rows):
        return
    column = table.label_columns - 2  # the method column: (generator,) method, train reward
    for row, cells in zip(table.rows, rows.values()):
        if any(c.cell_id in marked for c in cells):
            row[column] += f" {MARK}"
    table.note = (table.note + " " if table.note else "") + f"{MARK} cells not made by a clean commit's code: see Code."

"""Errors that reach the user as one clear paragraph (exit code 2), never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a suite, a flag, a missing file. The CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """A suite file that does not validate."""


class MissingWeightsError(UserError):
    """Weights that are not on disk and cannot be downloaded here."""


class NonFiniteError(RuntimeError):
    """A NaN or infinity where a number must be finite (a reward, a loss, a gradient).

    Not a ``UserError``: it stops the cell it happens in (with a diagnosis in its error.txt)
    while the suite goes on. ``phase`` is filled in by the innermost ledger phase it crosses and
    ``update`` by the training loop, so the message says where it happened.
    """

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what)
        self.what, self.detail = what, detail
        self.phase: str | None = None
        self.update: int | None = None

    def __str__(self) -> str:
        where = []
        if self.update is not None:
            where.append(f"update {self.update}")
        if self.phase is not None:
            where.append(f"phase {self.phase}")
        return f"non-finite {self.what}" + (f" in {', '.join(where)}" if where else "") + f": {self.detail}"


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The closest valid names to a misspelled one, for 'did you mean' hints."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    return close or sorted(candidates)[:n]

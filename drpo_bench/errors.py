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


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The closest valid names to a misspelled one, for 'did you mean' hints."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    return close or sorted(candidates)[:n]

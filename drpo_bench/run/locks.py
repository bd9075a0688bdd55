"""Locks that keep concurrent runs on one output folder from training a cell twice or mixing settings.

``fcntl.flock`` on lock files: the kernel releases a lock when its holder exits or is killed, so
a lock left by a killed run is never stale (the next run simply takes it). Local file systems
only: flock over NFS depends on the server, so give each machine its own --output there.

- ``.drpo-bench.gate``: exclusive, held for the moment a run checks the folder's settings and
  registers itself;
- ``.drpo-bench.lock``: shared, held by every run working in the folder for its whole duration
  (a gate holder that can take it exclusively knows no other run is live);
- ``<cell>/.drpo-bench.lock``: exclusive, held while a cell trains or is verified; a run that
  finds a cell busy does the others first, then waits for it (and then finds it finished).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from drpo_bench.errors import UserError

LOCK_NAME = ".drpo-bench.lock"
GATE_NAME = ".drpo-bench.gate"


class LockedError(UserError):
    """Another live process holds the lock and we were not to wait."""


def holder_info() -> dict[str, Any]:
    """Who we are, as a lock's holder is described to others."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: {holder.get('command')}"


class FileLock:
    """``with FileLock(path):`` holds ``path`` exclusively (``shared=True``: shared with other readers).

    ``wait``: seconds to wait for the holder (0 = try once; ``None`` = wait as long as it takes).
    The exclusive holder writes its description into the file, which a refused process names.
    """

    def __init__(self, path: str | Path, *, shared: bool = False, wait: float | None = 0.0, what: str = "run",
                 poll: float = 0.2, record: bool = True) -> None:
        self.path, self.shared, self.wait, self.what, self.poll = Path(path), shared, wait, what, poll
        self.record = record and not shared  # write our description into the file for others to name
        self._handle: Any = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held until release()
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(handle.fileno(), mode)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    handle.close()
                    raise LockedError(
                        f"{self.path.parent} is in use by another {self.what} ({describe(self.holder())}). Wait for it "
                        "to finish, pass --wait SECONDS, or use another --output."
                    ) from None
                time.sleep(self.poll)
        if self.record:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(holder_info()))
            handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def is_free(path: str | Path) -> bool:
    """True when nobody holds ``path`` (shared or exclusive) right now."""
    try:
        with FileLock(path, wait=0, record=False):
            return True
    except LockedError:
        return False

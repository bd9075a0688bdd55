"""Per-phase wall-clock, peak memory and FLOPs of every training update.

Methods wrap their work in named phases::

    with ctx.ledger.phase("reward_forward"):
        scores = reward(images, prompts)

The runner brackets each optimizer update with ``begin_update``/``end_update``. On CUDA every
phase boundary synchronizes, so a phase's time is the device's time, not the launch time.
Peak memory is CUDA's max allocated bytes per phase; on CPU it is the process's peak resident
set size (the OS gives no per-phase figure), reported as such.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

#: the canonical phase names, in the order reports show them
PHASES = (
    "sample",
    "reference",
    "decode",
    "reward_forward",
    "reward_backward",
    "features",
    "loss",
    "generator_backward",
    "optimizer",
)


def _process_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


@dataclass
class UpdateRecord:
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    phase_flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    peak_memory_bytes: int = 0


class Ledger:
    """Collects phase timings for each update of one cell."""

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.updates: list[UpdateRecord] = []
        self._current: UpdateRecord | None = None
        self._update_start = 0.0
        self._cuda = self.device.type == "cuda"

    # ---- updates ---------------------------------------------------------------------------
    def begin_update(self) -> None:
        if not self.enabled:
            return
        self._sync()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._current = UpdateRecord()
        self._update_start = time.perf_counter()

    def end_update(self) -> UpdateRecord | None:
        if not self.enabled or self._current is None:
            return None
        self._sync()
        record = self._current
        record.seconds = time.perf_counter() - self._update_start
        record.peak_memory_bytes = self._peak_memory()
        record.phase_seconds = dict(record.phase_seconds)
        record.phase_flops = dict(record.phase_flops)
        self.updates.append(record)
        self._current = None
        return record

    # ---- phases ----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled or self._current is None:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._current.phase_seconds[name] += time.perf_counter() - start

    def add_flops(self, phase: str, flops: float) -> None:
        """Attribute counted FLOPs to a phase of the current update (see flops.py)."""
        if self.enabled and self._current is not None:
            self._current.phase_flops[phase] += float(flops)

    # ---- summaries -------------------------------------------------------------------------
    def summary(self, skip_first: int = 1) -> dict[str, Any]:
        """Means over updates; the first ``skip_first`` are warm-up (allocator, caches)."""
        records = self.updates[skip_first:] if len(self.updates) > skip_first else self.updates
        if not records:
            return {"updates": 0}
        n = len(records)
        phases: dict[str, float] = defaultdict(float)
        flops: dict[str, float] = defaultdict(float)
        for r in records:
            for k, v in r.phase_seconds.items():
                phases[k] += v / n
            for k, v in r.phase_flops.items():
                flops[k] += v / n
        seconds = [r.seconds for r in records]
        return {
            "updates": len(self.updates),
            "updates_averaged": n,
            "seconds_per_update": sum(seconds) / n,
            "seconds_per_update_min": min(seconds),
            "phase_seconds": {k: phases[k] for k in _ordered(phases)},
            "phase_flops": {k: flops[k] for k in _ordered(flops)},
            "flops_per_update": sum(flops.values()) if flops else None,
            "peak_memory_bytes": max(r.peak_memory_bytes for r in records),
            "peak_memory_kind": "cuda_max_allocated" if self._cuda else "process_peak_rss",
            "device": str(self.device),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "updates": [
                {
                    "seconds": r.seconds,
                    "phase_seconds": r.phase_seconds,
                    "phase_flops": r.phase_flops,
                    "peak_memory_bytes": r.peak_memory_bytes,
                }
                for r in self.updates
            ],
        }

    # ---- internals -------------------------------------------------------------------------
    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def _peak_memory(self) -> int:
        if self._cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return _process_peak_rss_bytes()


def _ordered(keys: Any) -> list[str]:
    known = [p for p in PHASES if p in keys]
    return known + sorted(k for k in keys if k not in PHASES)

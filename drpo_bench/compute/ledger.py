"""Per-phase wall-clock, peak memory and FLOPs of every training update.

Methods wrap their work in named phases::

    with ctx.ledger.phase("reward_forward"):
        scores = reward(images, prompts)

The runner brackets each optimizer update with ``begin_update``/``end_update`` (or ``with
ledger.update():``). Accounting is *exclusive*: time, FLOPs and memory go to the innermost open
phase, so nested phases never double count and the phases of an update sum to at most its time
(the rest is reported as ``other``).

- **Time**: on CUDA every phase boundary synchronizes, so a phase's time is the device's time,
  not the launch time.
- **Memory**: on CUDA, the max allocated bytes while the phase was innermost (the allocator's
  peak is reset at each boundary; the update's peak is the max over all of them). On CPU the OS
  gives no per-phase figure: each phase records the process's peak resident set size at its end
  (monotone), reported as such.
- **FLOPs**: with ``count_flops=True`` a ``torch.utils.flop_counter.FlopCounterMode`` runs during
  the first update only (it slows that update, which is the warm-up ``summary`` skips anyway),
  and its FLOPs go to the innermost phase; later updates cost nothing extra. FLOPs can also be
  added by hand with ``add_flops`` (e.g. from drpo_bench/compute/flops.py).

When ``enabled`` is False every call is a no-op; when enabled, the overhead is two clock reads
per phase (see benchmarks/test_ledger_overhead.py: well under 3% of a small update).
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from drpo_bench.errors import NonFiniteError

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
#: where work done outside every phase is accounted
OTHER = "other"


def _process_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


@dataclass
class UpdateRecord:
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    phase_flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    phase_peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    phase_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    peak_memory_bytes: int = 0
    #: FLOPs were counted in this update (its time includes the counter's overhead)
    flops_counted: bool = False
    #: the first update of a process (allocator and caches warm up): left out of timing means
    warmup: bool = False


class _Phase:
    """The context manager ``Ledger.phase`` returns (a class, not a generator: cheaper)."""

    __slots__ = ("ledger", "name")

    def __init__(self, ledger: Ledger, name: str) -> None:
        self.ledger = ledger
        self.name = name

    def __enter__(self) -> None:
        self.ledger._enter(self.name)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if isinstance(exc, NonFiniteError) and exc.phase is None:
            exc.phase = self.name  # the innermost phase it happened in
        self.ledger._exit()


_NULL = nullcontext()


class Ledger:
    """Collects phase timings, memory and FLOPs for each update of one cell."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        enabled: bool = True,
        *,
        count_flops: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.count_flops = count_flops
        self.updates: list[UpdateRecord] = []
        self._current: UpdateRecord | None = None
        self._update_start = 0.0
        self._cuda = self.device.type == "cuda"
        self._stack: list[str] = []
        self._mark = 0.0  # clock at the last boundary
        self._flop_mark = 0.0  # counter total at the last boundary
        self._counter: Any = None  # FlopCounterMode while counting
        self._flops_done = False
        self._started = False  # has this process begun an update yet (the first one is warm-up)

    def restore(self, updates: list[dict[str, Any]]) -> None:
        """Prepend the updates an earlier process of the same cell recorded (from ``to_json()``),
        so a resumed cell's ledger spans every process; FLOPs are not counted again."""
        restored = [UpdateRecord(**{k: v for k, v in u.items() if k in UpdateRecord.__dataclass_fields__}) for u in updates]
        self.updates = restored + self.updates
        if any(r.flops_counted for r in restored):
            self._flops_done = True

    # ---- updates ---------------------------------------------------------------------------
    def begin_update(self) -> None:
        if not self.enabled:
            return
        if self._counter is not None:  # an update that never ended (an exception): drop its counter
            self._stop_counter()
        self._sync()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._current = UpdateRecord(warmup=not self._started)
        self._started = True
        self._stack = []
        if self.count_flops and not self._flops_done:
            self._start_counter()
            self._current.flops_counted = True
        self._update_start = self._mark = time.perf_counter()

    def end_update(self) -> UpdateRecord | None:
        if not self.enabled or self._current is None:
            return None
        while self._stack:  # phases left open by an exception
            self._exit()
        self._sync()
        now = time.perf_counter()
        record = self._current
        record.seconds = now - self._update_start
        self._close_interval(OTHER, now)
        if self._counter is not None:
            self._stop_counter()
            self._flops_done = True
        record.peak_memory_bytes = max([self._peak_memory(), *record.phase_peak_memory_bytes.values()])
        record.phase_seconds = dict(record.phase_seconds)
        record.phase_flops = dict(record.phase_flops)
        record.phase_calls = dict(record.phase_calls)
        self.updates.append(record)
        self._current = None
        return record

    @contextmanager
    def update(self) -> Iterator[None]:
        """``begin_update``/``end_update`` as a context manager."""
        self.begin_update()
        try:
            yield
        finally:
            self.end_update()

    # ---- phases ----------------------------------------------------------------------------
    def phase(self, name: str) -> Any:
        """Context manager: account what runs inside to phase ``name`` (exclusive of nested phases)."""
        if not self.enabled or self._current is None:
            return _NULL
        return _Phase(self, name)

    def add_flops(self, phase: str, flops: float) -> None:
        """Attribute FLOPs to a phase of the current update by hand (see flops.py)."""
        if self.enabled and self._current is not None:
            self._current.phase_flops[phase] += float(flops)

    def _enter(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        self._close_interval(self._stack[-1] if self._stack else OTHER, now)
        self._stack.append(name)
        self._current.phase_calls[name] += 1  # type: ignore[union-attr]

    def _exit(self) -> None:
        self._sync()
        now = time.perf_counter()
        name = self._stack.pop()
        self._close_interval(name, now)

    def _close_interval(self, name: str, now: float) -> None:
        """Account the time, FLOPs and memory since the last boundary to ``name``."""
        record = self._current
        if record is None:
            return
        record.phase_seconds[name] += now - self._mark
        self._mark = now
        if self._counter is not None:
            total = float(self._counter.get_total_flops())
            if total > self._flop_mark:
                record.phase_flops[name] += total - self._flop_mark
            self._flop_mark = total
        peak = self._interval_peak_memory()
        record.phase_peak_memory_bytes[name] = max(record.phase_peak_memory_bytes.get(name, 0), peak)

    # ---- FLOP counting ---------------------------------------------------------------------
    def _start_counter(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        from drpo_bench.compute.flops import register_cpu_attention_formulas

        register_cpu_attention_formulas()  # CPU's fused attention would otherwise count as zero
        self._counter = FlopCounterMode(display=False)
        self._counter.__enter__()
        self._flop_mark = 0.0

    def _stop_counter(self) -> None:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)

    # ---- summaries -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Means over updates; each process's first update is warm-up (allocator, caches) and left
        out when others exist.

        Updates whose FLOPs were counted are excluded from the timing means when others exist
        (the counter slows them); FLOPs are the mean over the updates that have any.
        """
        timed = [r for r in self.updates if not r.warmup] or self.updates
        uncounted = [r for r in timed if not r.flops_counted]
        timed = uncounted or timed
        if not timed:
            return {"updates": 0}
        n = len(timed)
        phases: dict[str, float] = defaultdict(float)
        memory: dict[str, int] = {}
        for r in timed:
            for k, v in r.phase_seconds.items():
                phases[k] += v / n
            for k, m in r.phase_peak_memory_bytes.items():
                memory[k] = max(memory.get(k, 0), m)
        with_flops = [r for r in self.updates if r.phase_flops]
        flops: dict[str, float] = defaultdict(float)
        for r in with_flops:
            for k, v in r.phase_flops.items():
                flops[k] += v / len(with_flops)
        seconds = [r.seconds for r in timed]
        mean_seconds = sum(seconds) / n
        total_flops = sum(flops.values()) if flops else None
        return {
            "updates": len(self.updates),
            "processes": sum(r.warmup for r in self.updates) or 1,
            "updates_averaged": n,
            "seconds_per_update": mean_seconds,
            "seconds_per_update_min": min(seconds),
            "phase_seconds": {k: phases[k] for k in _ordered(phases)},
            "phase_flops": {k: flops[k] for k in _ordered(flops)},
            "flops_per_update": total_flops,
            "achieved_flops_per_second": (total_flops / mean_seconds) if total_flops and mean_seconds > 0 else None,
            "phase_peak_memory_bytes": {k: memory[k] for k in _ordered(memory)},
            "peak_memory_bytes": max(r.peak_memory_bytes for r in timed),
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
                    "phase_peak_memory_bytes": r.phase_peak_memory_bytes,
                    "phase_calls": r.phase_calls,
                    "peak_memory_bytes": r.peak_memory_bytes,
                    "flops_counted": r.flops_counted,
                    "warmup": r.warmup,
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

    def _interval_peak_memory(self) -> int:
        if self._cuda:
            peak = int(torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            return peak
        return _process_peak_rss_bytes()


def _ordered(keys: Any) -> list[str]:
    known = [p for p in PHASES if p in keys]
    return known + sorted(k for k in keys if k not in PHASES)

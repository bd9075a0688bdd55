"""The ledger: exclusive per-phase time, FLOPs and memory; FLOP counting in the first update only."""

from __future__ import annotations

import json

import pytest
import torch

from drpo_bench.compute import ledger as ledger_module
from drpo_bench.compute.ledger import OTHER, PHASES, Ledger


class FakeClock:
    """Replaces time.perf_counter in the ledger: each phase body advances it explicitly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(ledger_module.time, "perf_counter", c)
    return c


def test_public_api_is_kept() -> None:
    led = Ledger("cpu", True)
    assert PHASES[0] == "sample" and "generator_backward" in PHASES
    led.begin_update()
    with led.phase("sample"):
        pass
    led.add_flops("sample", 10)
    record = led.end_update()
    assert record is not None and record.phase_flops == {"sample": 10.0}
    assert led.summary()["updates"] == 1
    json.dumps(led.to_json())


def test_nested_phases_are_exclusive(clock: FakeClock) -> None:
    led = Ledger("cpu")
    led.begin_update()
    clock.advance(1.0)  # outside every phase
    with led.phase("sample"):
        clock.advance(2.0)
        with led.phase("features"):
            clock.advance(3.0)
        clock.advance(4.0)
    record = led.end_update()
    assert record.seconds == pytest.approx(10.0)
    assert record.phase_seconds["sample"] == pytest.approx(6.0)
    assert record.phase_seconds["features"] == pytest.approx(3.0)
    assert record.phase_seconds[OTHER] == pytest.approx(1.0)
    assert sum(record.phase_seconds.values()) == pytest.approx(record.seconds)
    assert record.phase_calls == {"sample": 1, "features": 1}


def _matmul(n: int) -> torch.Tensor:
    return torch.ones(n, n) @ torch.ones(n, n)  # 2·n³ FLOPs


def test_flops_go_to_the_innermost_phase_and_only_in_the_first_update() -> None:
    led = Ledger("cpu", count_flops=True)
    for _ in range(3):
        with led.update():
            with led.phase("sample"):
                _matmul(8)
                with led.phase("features"):
                    _matmul(4)
            _matmul(2)  # outside any phase
    first, *rest = led.updates
    assert first.flops_counted
    assert first.phase_flops == {"sample": 2 * 8**3, "features": 2 * 4**3, OTHER: 2 * 2**3}
    assert all(not r.phase_flops and not r.flops_counted for r in rest)
    s = led.summary()
    assert s["flops_per_update"] == 2 * (8**3 + 4**3 + 2**3)
    assert s["updates_averaged"] == 2  # the counted (warm-up) update is not timed


def test_backward_flops_are_counted_in_their_phase() -> None:
    led = Ledger("cpu", count_flops=True)
    w = torch.ones(4, 4, requires_grad=True)
    with led.update():
        with led.phase("sample"):
            y = (torch.ones(3, 4) @ w).sum()
        with led.phase("generator_backward"):
            y.backward()
    r = led.updates[0]
    assert r.phase_flops["sample"] == 2 * 3 * 4 * 4
    assert r.phase_flops["generator_backward"] == 2 * 3 * 4 * 4  # dW only: the input needs no grad


def test_cpu_attention_is_counted_by_the_ledger() -> None:
    led = Ledger("cpu", count_flops=True)
    q = torch.randn(1, 2, 16, 8)
    with led.update(), led.phase("loss"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert led.updates[0].phase_flops["loss"] == 4 * 2 * 16 * 16 * 8


def test_disabled_ledger_records_nothing() -> None:
    led = Ledger("cpu", enabled=False, count_flops=True)
    led.begin_update()
    with led.phase("sample"):
        _matmul(4)
    led.add_flops("sample", 5)
    assert led.end_update() is None
    assert led.updates == [] and led.summary() == {"updates": 0}


def test_phase_outside_an_update_is_a_no_op() -> None:
    led = Ledger("cpu")
    with led.phase("sample"):
        pass
    assert led.updates == []


def test_an_exception_does_not_leave_the_counter_running() -> None:
    led = Ledger("cpu", count_flops=True)
    led.begin_update()
    crashed = led._counter
    with pytest.raises(RuntimeError), led.phase("sample"):
        _matmul(8)
        raise RuntimeError("boom")
    # the runner starts the next update without ending this one: counting starts afresh
    led.begin_update()
    assert led._counter is not crashed
    with led.phase("sample"):
        _matmul(4)
    record = led.end_update()
    assert record is not None and record.phase_flops == {"sample": 2 * 4**3}
    assert led._counter is None  # stopped after the (first completed) counted update


def test_memory_per_phase_on_cpu() -> None:
    led = Ledger("cpu")
    with led.update(), led.phase("decode"):
        torch.zeros(1024, 1024).sum()
    s = led.summary()
    assert s["peak_memory_kind"] == "process_peak_rss"
    assert s["phase_peak_memory_bytes"]["decode"] > 0
    assert s["peak_memory_bytes"] >= s["phase_peak_memory_bytes"]["decode"]


def test_summary_orders_canonical_phases_first(clock: FakeClock) -> None:
    led = Ledger("cpu")
    with led.update():
        for name in ("optimizer", "custom", "sample"):
            with led.phase(name):
                clock.advance(1.0)
    assert list(led.summary()["phase_seconds"]) == ["sample", "optimizer", "custom", OTHER]


def _timed_updates(led: Ledger, clock: FakeClock, seconds: list[float]) -> None:
    """One update per entry, its time spent inside the "sample" phase."""
    for s in seconds:
        with led.update(), led.phase("sample"):
            clock.advance(s)


def test_seconds_per_update_leaves_out_each_processes_warm_up_update(clock: FakeClock) -> None:
    """A process's first update (allocator and caches warming up) is left out of the timing means."""
    led = Ledger("cpu")
    _timed_updates(led, clock, [10.0, 1.0, 3.0])  # warm-up 10 s, then 1 s and 3 s
    s = led.summary()
    assert s["seconds_per_update"] == pytest.approx(2.0), (
        f"seconds_per_update {s['seconds_per_update']} != mean of the post-warm-up updates (1 + 3) / 2 = 2; "
        "(10 + 1 + 3) / 3 = 4.67 would count the warm-up update")
    assert (s["updates"], s["updates_averaged"], s["processes"]) == (3, 2, 1), "3 updates, the warm-up not averaged"
    assert s["seconds_per_update_min"] == pytest.approx(1.0)
    assert s["phase_seconds"]["sample"] == pytest.approx(2.0), "phase means leave the warm-up out too"
    # a resumed cell: the next process's first update is its own warm-up
    resumed = Ledger("cpu")
    resumed.restore(led.to_json()["updates"])
    _timed_updates(resumed, clock, [20.0, 5.0])
    s = resumed.summary()
    assert s["processes"] == 2 and s["updates"] == 5 and s["updates_averaged"] == 3
    assert s["seconds_per_update"] == pytest.approx((1.0 + 3.0 + 5.0) / 3)


def test_a_single_update_is_its_own_timing(clock: FakeClock) -> None:
    led = Ledger("cpu")
    _timed_updates(led, clock, [7.0])
    s = led.summary()
    assert s["updates_averaged"] == 1 and s["seconds_per_update"] == pytest.approx(7.0)


def test_flop_counted_update_is_left_out_of_the_timing(clock: FakeClock) -> None:
    """Updates whose FLOPs were counted run slower (the counter): timing means skip them when others exist."""
    led = Ledger("cpu", count_flops=True)
    _timed_updates(led, clock, [10.0, 1.0, 3.0])  # the first is both warm-up and counted
    led2 = Ledger("cpu", count_flops=True)
    led2.restore([{**u, "warmup": False} for u in led.to_json()["updates"]])  # pretend none was warm-up
    s = led2.summary()
    assert s["updates_averaged"] == 2 and s["seconds_per_update"] == pytest.approx(2.0)


def test_summary_and_json_are_the_hand_computed_means(clock: FakeClock) -> None:
    """Three updates on a fake clock (started at 100 s), FLOPs added by hand: every number in the
    summary and in to_json, worked out here."""
    import resource
    import sys

    clock.advance(100.0)
    led = Ledger()  # defaults: the CPU, enabled, no FLOP counter
    assert led.device == torch.device("cpu") and not led.count_flops
    with led.update():  # warm-up: 4 s of sampling, 100 FLOPs
        with led.phase("sample"):
            clock.advance(4.0)
        led.add_flops("sample", 100)
    with led.update():  # 1 s other, 1 s sample, 2 s features (in two calls); 30 + 20 sample FLOPs, 50 loss FLOPs
        clock.advance(1.0)
        with led.phase("sample"):
            clock.advance(1.0)
        for _ in range(2):
            with led.phase("features"):
                clock.advance(1.0)
        led.add_flops("sample", 30)
        led.add_flops("sample", 20)
        led.add_flops("loss", 50)
    with led.update(), led.phase("sample"):  # 3 s of sampling, no FLOPs
        clock.advance(3.0)
    led.add_flops("sample", 1e9)  # outside an update: ignored
    s = led.summary()
    flops = {"sample": (100 + 50) / 2, "loss": 50 / 2}  # mean over the updates that have FLOPs (1 and 2)
    assert s["seconds_per_update"] == pytest.approx((4.0 + 3.0) / 2) and s["seconds_per_update_min"] == pytest.approx(3.0)
    assert s["phase_seconds"] == pytest.approx({"sample": (1.0 + 3.0) / 2, "features": 1.0, OTHER: 0.5})
    assert s["phase_flops"] == pytest.approx(flops) and s["flops_per_update"] == pytest.approx(100.0)
    assert s["achieved_flops_per_second"] == pytest.approx(100.0 / 3.5)
    assert (s["updates"], s["processes"], s["updates_averaged"]) == (3, 1, 2)
    assert s["device"] == "cpu" and s["peak_memory_kind"] == "process_peak_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    assert 0 < s["peak_memory_bytes"] <= rss and s["peak_memory_bytes"] > rss // 2, "bytes, not KiB"
    assert set(s["phase_peak_memory_bytes"]) == {"sample", "features", OTHER}
    assert all(0 < v <= s["peak_memory_bytes"] for v in s["phase_peak_memory_bytes"].values())
    dumped = led.to_json()
    assert dumped["summary"] == s
    rows = dumped["updates"]
    assert [r["seconds"] for r in rows] == pytest.approx([4.0, 4.0, 3.0])
    assert [r["warmup"] for r in rows] == [True, False, False] and not any(r["flops_counted"] for r in rows)
    assert rows[1]["phase_seconds"] == pytest.approx({OTHER: 1.0, "sample": 1.0, "features": 2.0})
    assert rows[1]["phase_flops"] == {"sample": 50.0, "loss": 50.0} and rows[2]["phase_flops"] == {}
    assert rows[1]["phase_calls"] == {"sample": 1, "features": 2}
    assert all(r["peak_memory_bytes"] >= max(r["phase_peak_memory_bytes"].values()) for r in rows)
    restored = Ledger()
    restored.restore(json.loads(json.dumps(rows)))
    assert restored.summary() == {**s, "peak_memory_bytes": s["peak_memory_bytes"]}


def test_a_non_finite_error_is_labelled_with_its_innermost_phase() -> None:
    from drpo_bench.errors import NonFiniteError

    led = Ledger("cpu")
    led.begin_update()
    with pytest.raises(NonFiniteError) as info:
        with led.phase("loss"), led.phase("features"):
            raise NonFiniteError("loss", "nan")
    assert info.value.phase == "features"
    labelled = NonFiniteError("loss", "nan")
    labelled.phase = "reward_forward"
    with pytest.raises(NonFiniteError) as info:
        with led.phase("loss"):
            raise labelled
    assert info.value.phase == "reward_forward", "an error already labelled keeps its phase"
    led.end_update()


def test_edges_of_the_summary(clock: FakeClock) -> None:
    """No FLOPs: None, not 0; sub-second and zero-second updates; restored updates without warm-up."""
    led = Ledger("cpu")
    _timed_updates(led, clock, [1.0, 0.5])
    s = led.summary()
    assert s["flops_per_update"] is None and s["achieved_flops_per_second"] is None and s["phase_flops"] == {}
    with led.update():
        clock.advance(0.5)
        led.add_flops("loss", 10)
    assert led.summary()["achieved_flops_per_second"] == pytest.approx(10 / 0.5), "FLOP/s over a sub-second mean"
    instant = Ledger("cpu")
    _timed_updates(instant, clock, [0.0, 0.0])
    instant.add_flops("loss", 1)  # outside an update: nothing
    with instant.update():
        instant.add_flops("loss", 5)
    assert instant.summary()["achieved_flops_per_second"] is None, "no time measured: no rate"
    restored = Ledger("cpu")
    restored.restore([{**u, "warmup": False} for u in led.to_json()["updates"]])
    assert restored.summary()["processes"] == 1
    assert Ledger("cpu").end_update() is None, "ending an update never begun records nothing"


def test_a_resumed_process_does_not_count_flops_again() -> None:
    led = Ledger("cpu", count_flops=True)
    with led.update(), led.phase("sample"):
        _matmul(8)
    resumed = Ledger("cpu", count_flops=True)
    resumed.restore(led.to_json()["updates"])
    with resumed.update(), resumed.phase("sample"):
        _matmul(8)
    assert [u.flops_counted for u in resumed.updates] == [True, False]


def test_flops_of_a_phase_entered_twice_add_up() -> None:
    led = Ledger("cpu", count_flops=True)
    with led.update():
        with led.phase("sample"):
            _matmul(8)
        with led.phase("loss"):
            _matmul(4)
        with led.phase("sample"):
            _matmul(16)
    assert led.updates[0].phase_flops == {"sample": 2 * 8**3 + 2 * 16**3, "loss": 2 * 4**3}


def test_cuda_memory_is_the_allocator_peak_per_phase_and_update(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device the ledger reads torch.cuda's peak allocation per interval (reset after each):
    faked here, so the bookkeeping is checked without a GPU."""
    device = torch.device("cuda", 0)
    peaks = iter([100, 300, 50, 40, 7, 200, 10, 20, 5, 250, 7, 8, 9, 60, 11, 12])  # one per read, in reading order
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("sync", d)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset", d)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: calls.append(("peak", d)) or next(peaks))
    led = Ledger(device)
    with led.update():
        with led.phase("sample"):  # entering closes "other": peak 100
            clock.advance(1.0)
        with led.phase("loss"):  # 300 for sample, then 50 for other between them
            clock.advance(1.0)
        with led.phase("sample"):  # 40 for loss, 7 for other
            clock.advance(1.0)
    # leaving the last sample: 200 for it; end_update: 10 for other, then the update's own peak 20
    record = led.updates[0]
    assert record.phase_peak_memory_bytes == {OTHER: 100, "sample": 300, "loss": 40}, "the max over a phase's intervals"
    assert record.peak_memory_bytes == 300
    assert all(d == device for _, d in calls), "every CUDA call names the ledger's device"
    assert ("reset", device) in calls and ("sync", device) in calls
    for _ in range(2):  # two timed updates: sample peaks 250, then 60
        with led.update(), led.phase("sample"):
            clock.advance(1.0)
    s = led.summary()
    assert s["peak_memory_kind"] == "cuda_max_allocated" and s["device"] == "cuda:0"
    assert s["phase_peak_memory_bytes"] == {"sample": 250, OTHER: 11}, "the max over the timed updates"
    assert s["peak_memory_bytes"] == 250

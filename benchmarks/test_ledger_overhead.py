"""The ledger's overhead on a small update: must stay under 3 %.

The "small update" is a CPU MLP step (forward, loss, backward, AdamW) of a few milliseconds,
far shorter than any real update (the shapes world's take ~0.1 s, SD-Turbo's seconds), so the
relative overhead measured here is an upper bound. Nine phases per update, as a DrPO step has.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from drpo_bench.compute.ledger import PHASES, Ledger


def _small_update() -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(256, 256)

    def update(ledger: Ledger) -> None:
        ledger.begin_update()
        with ledger.phase("sample"):
            h = net(x)
        for name in PHASES[1:7]:  # reference .. loss: cheap phases, as in a real step
            with ledger.phase(name):
                h = h * 1.0
        with ledger.phase("generator_backward"):
            h.pow(2).mean().backward()
        with ledger.phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        ledger.end_update()

    return update


def test_small_update_without_ledger(benchmark: Any) -> None:
    update = _small_update()
    off = Ledger("cpu", enabled=False)
    benchmark.group = "ledger overhead"
    benchmark(update, off)


def test_small_update_with_ledger(benchmark: Any) -> None:
    update = _small_update()
    on = Ledger("cpu")
    benchmark.group = "ledger overhead"
    benchmark(lambda: (update(on), on.updates.clear()))


def test_ledger_overhead_under_3_percent(benchmark: Any) -> None:
    """Interleaved medians of the same update with the ledger off and on."""
    update = _small_update()
    off, on = Ledger("cpu", enabled=False), Ledger("cpu")
    for _ in range(20):  # warm-up
        update(off)
        update(on)
    t_off, t_on = [], []
    for _ in range(300):
        t0 = time.perf_counter()
        update(off)
        t1 = time.perf_counter()
        update(on)
        t2 = time.perf_counter()
        t_off.append(t1 - t0)
        t_on.append(t2 - t1)
        on.updates.clear()
    t_off.sort()
    t_on.sort()
    median_off, median_on = t_off[len(t_off) // 2], t_on[len(t_on) // 2]
    # the ledger's own cost, timed in isolation: an update of nine empty phases
    empty = Ledger("cpu")

    def nine_empty_phases() -> None:
        empty.begin_update()
        for name in PHASES:
            with empty.phase(name):
                pass
        empty.end_update()
        empty.updates.clear()

    costs = []
    for _ in range(2000):
        t0 = time.perf_counter()
        nine_empty_phases()
        costs.append(time.perf_counter() - t0)
    costs.sort()
    ledger_cost = costs[len(costs) // 2]
    benchmark.group = "ledger overhead"
    benchmark(nine_empty_phases)
    overhead = ledger_cost / median_off
    benchmark.extra_info.update({
        "update_median_s_off": median_off,
        "update_median_s_on": median_on,
        "ledger_cost_per_update_s": ledger_cost,
        "overhead_fraction": overhead,
        "interleaved_overhead_fraction": median_on / median_off - 1,
    })
    print(f"\nsmall update {median_off * 1e3:.2f} ms; ledger (9 phases) {ledger_cost * 1e6:.1f} µs = {overhead:.2%}"
          f" (interleaved medians: {median_on / median_off - 1:+.2%})")
    assert overhead < 0.03

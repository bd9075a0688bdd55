"""Time the real training steps at paper scale with random weights: ``drpo-bench bench`` as a script.

    python scripts/gpu_benchmark.py --generator sd-turbo --reward hpsv3 --methods drpo,draft \\
        --K 24 --effective-batch 192 --grad-checkpointing --micro 1 --json results/compute/bench_<device>.json

Every argument is ``drpo-bench bench``'s (see drpo_bench/commands/flops.py): each method's own
``Method.step`` runs on the full-size networks built from drpo_bench/compute/architectures.py, the ledger
times its phases, records peak memory and counts the FLOPs of the first update; the achieved
TFLOP/s and the share of the device's dense bf16 peak are derived from those. There is no second
copy of any update here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_argv(argv: list[str]) -> list[str]:
    return ["bench", *argv]


def main(argv: list[str] | None = None) -> int:
    from drpo_bench.commands.flops import main as cli_main

    return cli_main(bench_argv(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())

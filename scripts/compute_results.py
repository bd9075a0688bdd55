"""Regenerate results/compute/*.json (FLOPs per update at paper scale) and print the summary table.

    .venv/bin/python scripts/compute_results.py            # all paper settings, ~3 min cold, seconds cached
    .venv/bin/python scripts/compute_results.py --out /tmp/compute

Each file is exactly what ``drpo-bench flops ... --json`` writes for one setting: SD-Turbo
(K=24, effective batch 192) and SDXL-Turbo (K=16, effective batch 128) × PickScore, HPSv2,
ImageReward, HPSv3 (and HPSv3 with its ≈600-token instruction prompt), each without and with
gradient checkpointing of every backpropagated network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_bench.flops_cli import result_json  # noqa: E402
from drpo_bench.phase_models import CHECKPOINT_ROLES, compute_methods, make_setting  # noqa: E402
from drpo_bench.store import write_json  # noqa: E402

GENERATORS = {"sd-turbo": (24, 192), "sdxl-turbo": (16, 128)}
REWARDS = ("pickscore", "hpsv2", "imagereward", "hpsv3", "hpsv3-instruct")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "compute")
    args = p.parse_args(argv)
    rows = []
    for gen, (k, batch) in GENERATORS.items():
        for reward in REWARDS:
            pair = []
            for ckpt in (False, True):
                s = make_setting(gen, reward, k=k, effective_batch=batch,
                                 checkpointing=frozenset(CHECKPOINT_ROLES) if ckpt else frozenset())
                res = compute_methods(s, ["drpo", "draft"])
                data = result_json(s, res)
                write_json(args.out / f"{gen}_{reward}{'_ckpt' if ckpt else ''}.json", data)
                pair.append(res)
            (plain, ck) = pair
            rows.append((gen, reward, plain["drpo"].total, plain["draft"].total, ck["drpo"].total, ck["draft"].total,
                         plain["drpo"].backward, plain["draft"].backward))
    print("| generator | reward | DrPO TFLOP | DRaFT TFLOP | DRaFT/DrPO | with checkpointing: DrPO | DRaFT | DRaFT/DrPO | backward DRaFT/DrPO |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for gen, reward, d, r, dc, rc, db, rb in rows:
        print(f"| {gen} | {reward} | {d / 1e12:,.0f} | {r / 1e12:,.0f} | {r / d:.2f}× | {dc / 1e12:,.0f} | "
              f"{rc / 1e12:,.0f} | {rc / dc:.2f}× | {rb / db:.1f}× |")


if __name__ == "__main__":
    main()

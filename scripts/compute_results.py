"""Regenerate results/compute/*.json (FLOPs per update at paper scale) and print the summary table.

    .venv/bin/python scripts/compute_results.py                      # every setting below
    .venv/bin/python scripts/compute_results.py --only sd-turbo_hpsv3,sdxl-turbo_hpsv3  # these files only
    .venv/bin/python scripts/compute_results.py --table-only           # print the table from the files

Each file is what ``drpo-bench flops ... --json`` writes for one setting (its ``provenance`` also
covers this script): each method's
real ``Method.step`` run once on full-size meta-device networks, FLOPs counted by the ledger
(drpo_bench/compute/bench.py). Settings: SD-Turbo (K=24, effective batch 192) and SDXL-Turbo (K=16,
effective batch 128) × PickScore, HPSv2, ImageReward, HPSv3 (and HPSv3 with its ≈600-token
instruction prompt), each without and with gradient checkpointing of the generator and the
reward (ImageReward: the generator only; its BLIP build has no checkpointing). Every registered training method for the headline pair (SD-Turbo × HPSv3), DrPO and
DRaFT elsewhere (each method costs ~30 s of CPU per setting to count).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_bench.compute.bench import ALL_METHODS, CHECKPOINT_ROLES, count_methods, make_setting, reward_can_checkpoint  # noqa: E402
from drpo_bench.commands.flops import result_json  # noqa: E402
from drpo_bench.store import write_json  # noqa: E402

GENERATORS = {"sd-turbo": (24, 192), "sdxl-turbo": (16, 128)}
REWARDS = ("pickscore", "hpsv2", "imagereward", "hpsv3", "hpsv3-instruct")
HEADLINE = ("sd-turbo", "hpsv3")


def settings() -> list[tuple[str, str, bool, str]]:
    out = []
    for gen in GENERATORS:
        for reward in REWARDS:
            for ckpt in (False, True):
                out.append((gen, reward, ckpt, f"{gen}_{reward}{'_ckpt' if ckpt else ''}"))
    return out


def table(folder: Path) -> str:
    lines = ["| generator | reward | DrPO | DRaFT | DRaFT/DrPO | ckpt: DrPO | ckpt: DRaFT | ckpt: DRaFT/DrPO | backward DRaFT/DrPO |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for gen in GENERATORS:
        for reward in REWARDS:
            files = [folder / f"{gen}_{reward}{s}.json" for s in ("", "_ckpt")]
            if not all(f.exists() for f in files):
                continue
            plain, ck = (json.loads(f.read_text())["methods"] for f in files)
            d, r = plain["drpo"]["total_flops"], plain["draft"]["total_flops"]
            dc, rc = ck["drpo"]["total_flops"], ck["draft"]["total_flops"]
            back = plain["draft"]["backward_flops"] / plain["drpo"]["backward_flops"]
            lines.append(f"| {gen} | {reward} | {d / 1e12:,.0f} | {r / 1e12:,.0f} | {r / d:.2f}× | {dc / 1e12:,.0f} | "
                         f"{rc / 1e12:,.0f} | {rc / dc:.2f}× | {back:.1f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "compute")
    p.add_argument("--only", default="", help="comma-separated file names (no .json) to regenerate; default all")
    p.add_argument("--table-only", action="store_true", help="print the summary table from the files, count nothing")
    args = p.parse_args(argv)
    if not args.table_only:
        for gen, reward, ckpt, name in settings():
            if args.only and name not in args.only.split(","):
                continue
            k, batch = GENERATORS[gen]
            roles = [r for r in CHECKPOINT_ROLES if r != "reward" or reward_can_checkpoint(reward)] if ckpt else []
            s = make_setting(gen, reward, k=k, effective_batch=batch, checkpointing=roles)
            methods = list(ALL_METHODS) if (gen, reward) == HEADLINE else ["drpo", "draft"]
            write_json(args.out / f"{name}.json", result_json(s, count_methods(s, methods), (Path(__file__),)))
            print(f"wrote {args.out / name}.json", flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()

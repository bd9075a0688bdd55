"""Markdown tables of results/compute/README.md's memory section, from the committed JSON files.

    .venv/bin/python scripts/memory_tables.py     # prints every table

- ``cpu-fullsize.json`` (scripts/fullsize_cpu_memory.py): predicted vs measured per method;
- ``plan_<suite>_80GB.json`` (``drpo-bench plan ... --json``): one table per suite;
- ``sd-turbo_hpsv3_memory*.json`` (``drpo-bench flops --memory --json``): DrPO vs DRaFT beside FLOPs.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results" / "compute"
GiB = 2**30


def gib(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value / GiB:,.{digits}f}"


def fullsize() -> None:
    path = ROOT / "cpu-fullsize.json"
    if not path.exists():
        return
    for key, entry in json.loads(path.read_text()).items():
        s = entry["setting"]
        print(f"\n{key}: {s['generator']} × {s['reward']}, K {s['K']}, 1 prompt, {s['precision']}"
              + (f", checkpointing {','.join(s['grad_checkpointing'])}" if s["grad_checkpointing"] else ""))
        print("\n| method | predicted peak | measured peak | ratio | predicted step | measured step | ratio | "
              "persistent (both) | loss finite | LoRA moved | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
        for method, row in entry["methods"].items():
            p, m = row["predicted"], row.get("measured")
            if not m:
                why = row.get("skipped") or row.get("failed") or "predicted only"
                print(f"| {method} | {gib(p['peak_bytes'])} | {why} | | {gib(p['activation_peak_bytes'])} | | | "
                      f"{gib(p['persistent_bytes'])} | | | |")
                continue
            same = "yes" if m["persistent_bytes"] == p["persistent_bytes"] else f"no ({gib(m['persistent_bytes'])})"
            print(f"| {method} | {gib(p['peak_bytes'])} | {gib(m['peak_bytes'])} | {row['ratio_peak']:.4f} | "
                  f"{gib(p['activation_peak_bytes'])} | {gib(m['allocator_peak_bytes'])} | {row['ratio_step']:.4f} | "
                  f"{gib(p['persistent_bytes'])} ({same}) | {m['loss_finite']} | {m['lora_moved']} | {m['seconds']:.0f} |")


def plans() -> None:
    for path in sorted(ROOT.glob("plan_*.json")):
        data = json.loads(path.read_text())
        print(f"\n`drpo-bench plan {data['suite']} --gpu-memory {data['gpu_memory_bytes'] / 1e9:g}GB` "
              f"({path.name}):\n")
        print("| method | reward | K | micro | precision | peak GiB | fits | largest micro | checkpointing needed |")
        print("|---|---|---:|---:|---|---:|---|---:|---|")
        for r in data["rows"]:
            fits = "–" if r["fits"] is None else ("yes" if r["fits"] else "**no**")
            print(f"| {r['method']} | {r['reward']} | {r['candidates_per_prompt']} | {r['micro_batch_prompts']} | "
                  f"{r['precision'] or '–'} | {gib(r['peak_bytes'], 1)} | {fits} | {r['largest_micro'] or '–'} | "
                  f"{r['checkpointing_needed'] or r['note']} |")


def headline() -> None:
    for path in sorted(ROOT.glob("sd-turbo_hpsv3_memory*.json")):
        data = json.loads(path.read_text())
        mem, s = data["memory"], data["setting"]
        print(f"\n{path.name}: K {s['K']}, effective batch {s['effective_batch']}, micro-batch {mem['micro_prompts']} "
              f"prompt, {mem['precision']}, checkpointing {','.join(s['grad_checkpointing']) or 'none'}:\n")
        print("| | " + " | ".join(mem["methods"]) + " |")
        print("|---|" + "---:|" * len(mem["methods"]))
        rows = {"weights GiB": "weights_bytes", "step peak above persistent GiB": "activation_peak_bytes",
                "peak GiB": "peak_bytes"}
        for label, key in rows.items():
            print(f"| {label} | " + " | ".join(gib(m[key], 1) for m in mem["methods"].values()) + " |")
        saved = [gib(sum(m["phase_saved_bytes"].values()), 1) for m in mem["methods"].values()]
        print("| saved for backward GiB | " + " | ".join(saved) + " |")
        flops = [f"{data['methods'][name]['total_flops'] / 1e12:,.0f}" for name in mem["methods"]]
        print("| TFLOP per update | " + " | ".join(flops) + " |")
        for name, ratio in mem.get("ratios", {}).items():
            f = data["ratios"].get(name, {}).get("total")
            print(f"\n{name}: peak memory {ratio:.2f}×, FLOPs {f:.2f}×" if f else f"\n{name}: peak memory {ratio:.2f}×")


if __name__ == "__main__":
    fullsize()
    plans()
    headline()

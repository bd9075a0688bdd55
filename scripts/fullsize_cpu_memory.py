"""Full-size networks on this CPU: one update of each training method, measured memory against the prediction.

    .venv/bin/python scripts/fullsize_cpu_memory.py                       # SD-Turbo x PickScore, every method
    .venv/bin/python scripts/fullsize_cpu_memory.py --methods draft       # one method (merged into the file)
    .venv/bin/python scripts/fullsize_cpu_memory.py --generator sdxl-turbo --predict-only

SD-Turbo's UNet, VAE and text encoder and PickScore's CLIP-H/14, built at full size with random
weights from their public configurations (drpo_bench/compute/architectures.py, through the real
``SDTurboGenerator`` class as ``drpo-bench flops`` and ``bench`` build them), K = 2 candidates,
1 prompt, 512 px. For each method:

1. the prediction: the method's real step on the meta device (drpo_bench/compute/memory.py);
2. if the machine's available memory exceeds the predicted peak plus a margin (``--margin-gib``,
   default 4), a fresh process builds the real networks and runs one micro-batch of the same step
   with real tensors (torch threads 2), LoRA gradients and AdamW state allocated before, under the
   profiler's memory events (the CPU allocator's running total), then an AdamW step; otherwise it
   waits and tries again (``--wait-minutes``).

One method per process, one after another, so each measurement starts from a clean allocator and
a peak RSS of its own. Results go to ``results/compute/cpu-fullsize.json`` (merged per method)
with the ratio measured / predicted of the whole peak and of the step's peak above the persistent
bytes, and the ``provenance`` of the code that made each method's row (commit, dirty flag, digests
of this script, its imports and the method's module: ``code_hash.result_provenance``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_bench.compute.bench import ALL_METHODS, make_setting, versions  # noqa: E402
from drpo_bench.suite.code_hash import result_provenance  # noqa: E402
from drpo_bench.compute.memory import GiB, Precision, available_bytes, measure_memory, predict_memory  # noqa: E402
from drpo_bench.store import write_json  # noqa: E402

#: K = 2 leaves one positive and one negative (DrPO), one winner and one loser (DPO), two anchors (GRPO)
K2_ARGS = {"drpo": {"n_pos": 1, "n_neg": 1}, "dpo": {"n_winners": 1, "n_losers": 1}, "grpo": {"anchors": 2}}
OUT = Path("results/compute/cpu-fullsize.json")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generator", default="sd-turbo")
    p.add_argument("--reward", default="pickscore")
    p.add_argument("--K", type=int, default=2)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--weights", default="bf16", choices=["fp32", "bf16", "fp16"],
                   help="frozen weights and activations (default bf16: this CPU has AMX bf16; fp32 DRaFT needs 23 GiB)")
    p.add_argument("--grad-checkpointing", default="", help="roles to checkpoint: generator,reward (default none)")
    p.add_argument("--margin-gib", type=float, default=4.0, help="free memory required above the predicted peak")
    p.add_argument("--wait-minutes", type=float, default=30.0, help="how long to wait for free memory per method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--predict-only", action="store_true", help="predictions only (no real networks)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one measurement, JSON on stdout
    return p.parse_args(argv)


def setting_of(args: argparse.Namespace):  # noqa: ANN201
    roles = [r for r in args.grad_checkpointing.split(",") if r]
    return make_setting(args.generator, args.reward, k=args.K, effective_batch=args.K, checkpointing=roles,
                        method_args=K2_ARGS if args.K == 2 else {})


def child(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    start = time.time()
    measured = measure_memory(args.child, setting_of(args), precision=Precision(weights=args.weights))
    print("RESULT " + json.dumps(measured.to_json() | {"seconds": time.time() - start}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child(args)
    import torch

    torch.set_num_threads(args.threads)
    setting = setting_of(args)
    precision = Precision(weights=args.weights)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = f"{args.generator}_{args.reward}_K{args.K}_{args.weights}" + ("_ckpt" if setting.checkpointing else "")
    entry = data.setdefault(key, {})
    entry.update({"setting": setting.describe() | {"precision": precision.label(), "resolution": 512,
                                                   "prompts": 1, "micro_batch_prompts": 1},
                  "versions": versions(), "cpu_threads": args.threads})
    entry.setdefault("methods", {})
    for method in [m for m in args.methods.split(",") if m]:
        t0 = time.time()
        predicted = predict_memory(method, setting, micro=1, precision=precision)
        # the code that made this row: this script, its imports and the method's module
        row: dict = {"predicted": predicted.to_json(), "predict_seconds": time.time() - t0,
                     "provenance": result_provenance((), (Path(__file__),), methods=(method,))}
        print(f"{method}: predicted peak {predicted.peak_bytes / GiB:.2f} GiB "
              f"(persistent {predicted.persistent_bytes / GiB:.2f}, step {predicted.activation_peak_bytes / GiB:.2f})",
              flush=True)
        if args.predict_only:
            old = entry["methods"].get(method, {})
            same_code = (old.get("provenance") or {}).get("code", {}).get("hash") == row["provenance"]["code"]["hash"]
            if old.get("measured") and not same_code:
                print(f"{method}: its measurement came from other code; dropped (rerun without --predict-only)")
            entry["methods"][method] = (old if same_code else {}) | row
            continue
        need = predicted.peak_bytes + args.margin_gib * GiB
        deadline = time.time() + args.wait_minutes * 60
        while available_bytes() < need:
            if time.time() > deadline:
                print(f"{method}: only {available_bytes() / GiB:.1f} GiB available, {need / GiB:.1f} needed; skipped")
                row["measured"] = None
                row["skipped"] = f"available memory stayed under the predicted peak + {args.margin_gib} GiB"
                break
            print(f"{method}: {available_bytes() / GiB:.1f} GiB available, {need / GiB:.1f} needed; waiting", flush=True)
            time.sleep(60)
        else:
            command = [sys.executable, __file__, "--child", method, "--generator", args.generator, "--reward",
                       args.reward, "--K", str(args.K), "--weights", args.weights, "--grad-checkpointing",
                       args.grad_checkpointing, "--threads", str(args.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                row["measured"] = None
                row["failed"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            else:
                measured = json.loads(lines[-1][len("RESULT "):])
                row["measured"] = measured
                row["ratio_peak"] = measured["peak_bytes"] / predicted.peak_bytes
                row["ratio_step"] = measured["allocator_peak_bytes"] / predicted.activation_peak_bytes
                print(f"{method}: measured peak {measured['peak_bytes'] / GiB:.2f} GiB (step "
                      f"{measured['allocator_peak_bytes'] / GiB:.2f}); measured/predicted {row['ratio_peak']:.3f} "
                      f"(step {row['ratio_step']:.3f}); loss finite {measured['loss_finite']}, LoRA moved "
                      f"{measured['lora_moved']}; {measured['seconds']:.0f} s", flush=True)
        entry["methods"][method] = row  # a new measurement replaces the old one whatever its outcome
        write_json(args.out, data)
    write_json(args.out, data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``drpo-bench flops`` and ``drpo-bench bench``: the cost of one update of each method's real step.

    drpo-bench flops --generator sd-turbo --reward hpsv3 --methods drpo,draft,vggflow,dpo,grpo,pso,raft \\
        --K 24 --effective-batch 192 --grad-checkpointing --json out.json
    drpo-bench bench --generator sd-turbo --reward hpsv3 --methods drpo,draft --K 24 --effective-batch 192 \\
        --grad-checkpointing --micro 1 --updates 3 --json results/compute/bench_<device>.json

``flops`` runs each registered method's ``Method.step`` once on full-size networks built on the
meta device (no weights, no memory) and reports the FLOPs the ledger counted in each phase
(drpo_bench/compute/bench.py). ``bench`` runs the same step with random weights on the present device
and reports seconds, peak memory and achieved TFLOP/s per phase. Wire into the main CLI with
``add_flops_parser(subparsers)`` / ``add_bench_parser(subparsers)``; also runnable alone:
``python -m drpo_bench.commands.flops [flops|bench] ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from drpo_bench.errors import UserError
from drpo_bench.compute.ledger import PHASES

#: the paper's measured wall-clock (SD-Turbo, HPSv3, effective batch 192)
PAPER_WALL_CLOCK = {
    "setting": "SD-Turbo, HPSv3 reward, effective batch 192 (K=24 × 8 prompts); DRaFT through a checkpointed HPSv3",
    "draft_seconds_per_update": 21.62,
    "drpo_seconds_per_update": 6.17,
    "draft_backward_seconds": 9.99,
    "drpo_backward_seconds": 0.34,
    "ratio": 3.51,
}
CONVENTION = (
    "FLOPs = 2 x multiply-adds of matmuls, convolutions and attention, as the ledger counts them (torch.utils."
    "flop_counter; fused attention's backward = 2.5x its forward); elementwise ops, norms, softmax and the optimizer "
    "are not counted"
)


def _common(p: argparse.ArgumentParser, default_methods: str) -> None:
    from drpo_bench.compute.bench import CHECKPOINT_ROLES, GENERATOR_CLASSES, REWARDS

    p.add_argument("--generator", default="sd-turbo", help=f"one of {', '.join(GENERATOR_CLASSES)} (default sd-turbo)")
    p.add_argument("--reward", default="hpsv3", help=f"one of {', '.join(REWARDS)} (default hpsv3)")
    p.add_argument("--methods", default=default_methods, help="comma-separated registered methods")
    p.add_argument("--features", default=None, help="DrPO feature space (registered name; default: the generator's public one)")
    p.add_argument("--K", "-K", dest="k", type=int, default=None, help="candidates per prompt (default: 24 SD-Turbo, 16 SDXL-Turbo)")
    p.add_argument("--effective-batch", type=int, default=None, help="candidates per optimizer update (default 8·K)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank on to_q/to_k/to_v/to_out.0 (default 16)")
    p.add_argument(
        "--grad-checkpointing", nargs="?", const=",".join(CHECKPOINT_ROLES), default="", metavar="ROLES",
        help=f"recompute forwards in backward; alone: {','.join(CHECKPOINT_ROLES)}, or a list of those",
    )
    p.add_argument("--method-arg", action="append", default=[], metavar="METHOD.KEY=JSON",
                   help="override a method's config, e.g. drpo.n_pos=4 (repeatable)")
    p.add_argument("--tiny", action="store_true", help="the architectures' tiny twins (tests, CPU)")
    p.add_argument("--json", type=Path, default=None, help="write the result as JSON here")


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _common(p, "drpo,draft,vggflow,dpo,grpo,pso,raft")
    m = p.add_argument_group("memory (--memory: predicted GPU memory of one micro-batch, drpo_bench/compute/memory.py)")
    m.add_argument("--memory", action="store_true", help="also predict each method's peak memory per micro-batch")
    m.add_argument("--micro", type=int, default=1, help="prompts per micro-batch for --memory (default 1: K candidates)")
    m.add_argument("--weights", default="fp32", choices=["fp32", "fp16", "bf16"], help="generator's frozen weights (default fp32)")
    m.add_argument("--autocast", default="fp32", choices=["fp32", "fp16", "bf16"], help="the loop's autocast (default fp32: none)")
    m.add_argument("--reward-dtype", default=None, choices=["fp32", "fp16", "bf16"], help="reward weights (default: as --weights)")
    p.set_defaults(func=flops_command)
    return p


def configure_bench_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _common(p, "drpo,draft")
    p.add_argument("--updates", type=int, default=3, help="timed updates per method, after one warm-up (default 3)")
    p.add_argument("--micro", type=int, default=None, help="prompts per micro-batch (default: the whole update)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="frozen weights (default bf16 on CUDA)")
    p.set_defaults(func=bench_command)
    return p


def add_flops_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("flops", help="FLOPs per update of each method's real step at paper scale (meta device)",
                              description=__doc__.split("\n\n")[0])
    return configure_parser(p)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="time N updates of each method's real step with random weights",
                              description=__doc__.split("\n\n")[0])
    return configure_bench_parser(p)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _method_args(items: list[str]) -> dict[str, dict[str, Any]]:
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise UserError(f"--method-arg {item!r}: write METHOD.KEY=VALUE, e.g. drpo.n_pos=4")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(method, {})[name] = parsed
    return out


def setting_from_args(args: argparse.Namespace) -> Any:
    from drpo_bench.compute.bench import make_setting

    return make_setting(args.generator, args.reward, k=args.k, effective_batch=args.effective_batch,
                        checkpointing=_split(args.grad_checkpointing or ""), lora_rank=args.lora_rank,
                        features=args.features, method_args=_method_args(args.method_arg), tiny=args.tiny)


def _methods(args: argparse.Namespace) -> list[str]:
    methods = _split(args.methods)
    if not methods:
        raise UserError("--methods is empty; name at least one, e.g. --methods drpo,draft")
    return methods


#: the modules whose closure made a FLOP ledger (with the modules of the methods counted)
LEDGER_ROOTS = ("drpo_bench.compute.bench", "drpo_bench.commands.flops")


def result_json(setting: Any, results: dict[str, Any], scripts: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The setting, each method's FLOPs by phase, ratios to DRaFT, the paper's timings, versions and the
    provenance of the code that counted them (``scripts``: a script that wrote the file, hashed too)."""
    from drpo_bench.compute.bench import versions
    from drpo_bench.suite.code_hash import result_provenance

    methods = {name: {"total_flops": c.total, "backward_flops": c.backward, "phase_flops": c.phase_flops}
               for name, c in results.items()}
    ratios: dict[str, Any] = {}
    if "draft" in results:
        base = results["draft"]
        for name, c in results.items():
            if name != "draft" and c.total:
                ratios[f"draft/{name}"] = {"total": base.total / c.total,
                                           "backward": base.backward / c.backward if c.backward else None}
    return {"setting": setting.describe(), "convention": CONVENTION, "source": "Method.step on meta-device networks, "
            "FLOPs counted by the ledger (drpo_bench/compute/bench.py)", "methods": methods, "ratios": ratios,
            "paper_wall_clock": PAPER_WALL_CLOCK, "versions": versions(),
            "provenance": result_provenance(LEDGER_ROOTS, scripts, methods=tuple(results))}


def _unit(largest: float) -> tuple[str, float]:
    for name, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if largest >= scale:
            return name, scale
    return "FLOP", 1.0


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _title(setting: Any, what: str) -> str:
    models = (f"tiny random-init twins of {setting.generator} × {setting.reward} (shapes only, not the real models' "
              f"cost)" if setting.tiny else f"{setting.generator} × {setting.reward}")
    return (f"{what} — {models}, K={setting.k}, effective batch {setting.effective_batch} "
            f"({setting.prompts} prompts)" + (f", checkpointing {','.join(sorted(setting.checkpointing))}"
                                               if setting.checkpointing else "") + (" [tiny]" if setting.tiny else ""))


def print_tables(setting: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    unit, scale = _unit(max(c.total for c in results.values()))
    console.print(_title(setting, f"{unit} per update"), style="bold")
    table = Table()
    table.add_column("phase")
    for name in results:
        table.add_column(name, justify="right")
    seen = {p for c in results.values() for p in c.phase_flops}
    for phase in [p for p in PHASES if p in seen] + sorted(seen - set(PHASES)):
        table.add_row(phase, *(f"{c.phase_flops.get(phase, 0.0) / scale:,.2f}" for c in results.values()))
    table.add_section()
    table.add_row("backward", *(f"{c.backward / scale:,.1f}" for c in results.values()))
    table.add_row("total", *(f"{c.total / scale:,.1f}" for c in results.values()), style="bold")
    console.print(table)
    if "draft" in results:
        for name, c in results.items():
            if name != "draft" and c.total:
                console.print(f"DRaFT FLOPs ÷ {name} FLOPs: {results['draft'].total / c.total:.2f}×")
    console.print(f"[dim]{CONVENTION}. Paper, measured wall-clock ({PAPER_WALL_CLOCK['setting']}): "
                  f"DRaFT {PAPER_WALL_CLOCK['draft_seconds_per_update']} s vs DrPO "
                  f"{PAPER_WALL_CLOCK['drpo_seconds_per_update']} s = {PAPER_WALL_CLOCK['ratio']}×.[/dim]")


def memory_table(setting: Any, estimates: dict[str, Any], flops: dict[str, Any]) -> None:
    """Predicted memory per micro-batch beside the FLOPs: persistent bytes, the step's peak, ratios to DRaFT."""
    from rich.table import Table

    first = next(iter(estimates.values()))
    unit, gib = ("GiB", 2**30) if max(e.peak_bytes for e in estimates.values()) >= 2**30 else ("MiB", 2**20)
    console = _console()
    console.print(_title(setting, f"predicted {unit} per micro-batch of {first.micro_prompts} prompt(s) "
                                  f"({first.candidates} candidates), {first.precision}"), style="bold")
    table = Table()
    table.add_column("")
    for name in estimates:
        table.add_column(name, justify="right")
    seen = {p for e in estimates.values() for p in e.phase_peak_bytes}
    for phase in [p for p in PHASES if p in seen] + sorted(seen - set(PHASES)):
        table.add_row(f"peak in {phase}", *(f"{e.phase_peak_bytes[phase] / gib:,.1f}" if phase in e.phase_peak_bytes
                                            else "–" for e in estimates.values()))
    table.add_section()
    table.add_row("saved for backward", *(f"{sum(e.phase_saved_bytes.values()) / gib:,.1f}" for e in estimates.values()))
    table.add_row("weights", *(f"{e.weights_bytes / gib:,.1f}" for e in estimates.values()))
    table.add_row("LoRA + grads + AdamW", *(f"{(e.trainable_bytes + e.grad_bytes + e.optimizer_bytes) / gib:,.2f}"
                                            for e in estimates.values()))
    table.add_row("step peak above those", *(f"{e.activation_peak_bytes / gib:,.1f}" for e in estimates.values()))
    table.add_row("peak", *(f"{e.peak_bytes / gib:,.1f}" for e in estimates.values()), style="bold")
    console.print(table)
    if "draft" in estimates:
        base = estimates["draft"]
        for name, e in estimates.items():
            if name != "draft":
                line = f"DRaFT peak ÷ {name} peak: {base.peak_bytes / e.peak_bytes:.2f}× (step peak " \
                       f"{base.activation_peak_bytes / max(e.activation_peak_bytes, 1):.2f}×)"
                if name in flops and "draft" in flops and flops[name].total:
                    line += f"; FLOPs {flops['draft'].total / flops[name].total:.2f}×"
                console.print(line)
    console.print("[dim]allocated bytes, as torch.cuda.max_memory_allocated counts them; the CUDA context and the "
                  "allocator's fragmentation come on top (drpo-bench plan keeps room for them).[/dim]")


def flops_command(args: argparse.Namespace) -> int:
    """Run ``drpo-bench flops``; returns the exit code (bad input raises UserError: exit 2)."""
    from drpo_bench.compute.bench import count_methods
    from drpo_bench.store import write_json

    setting = setting_from_args(args)
    results = count_methods(setting, _methods(args))
    print_tables(setting, results)
    data = result_json(setting, results)
    if getattr(args, "memory", False):
        from drpo_bench.compute.memory import Precision, predict_memory

        precision = Precision(weights=args.weights, autocast=args.autocast, reward=args.reward_dtype)
        estimates = {m: predict_memory(m, setting, micro=args.micro, precision=precision) for m in results}
        memory_table(setting, estimates, results)
        data["memory"] = {"precision": precision.label(), "micro_prompts": args.micro,
                          "source": "Method.step on meta-device networks, live storages counted (drpo_bench/compute/memory.py)",
                          "methods": {m: e.to_json() for m, e in estimates.items()}}
        if "draft" in estimates:
            data["memory"]["ratios"] = {f"draft/{m}": estimates["draft"].peak_bytes / e.peak_bytes
                                        for m, e in estimates.items() if m != "draft"}
    if args.json is not None:
        write_json(args.json, data)
        print(f"wrote {args.json}")
    return 0


def command_line(args: argparse.Namespace, setting: Any) -> str:
    """The ``drpo-bench bench`` command that reproduces this run, every default spelled out."""
    parts = ["drpo-bench", "bench", "--generator", setting.generator, "--reward", setting.reward, "--methods",
             args.methods, "--K", str(setting.k), "--effective-batch", str(setting.effective_batch),
             "--lora-rank", str(setting.lora_rank), "--updates", str(args.updates)]
    if setting.checkpointing:
        parts += ["--grad-checkpointing", ",".join(sorted(setting.checkpointing))]
    for flag, value in (("--micro", args.micro), ("--device", args.device), ("--dtype", args.dtype),
                        ("--features", args.features)):
        if value is not None:
            parts += [flag, str(value)]
    for item in args.method_arg:
        parts += ["--method-arg", item]
    if setting.tiny:
        parts.append("--tiny")
    return " ".join(parts)


def bench_command(args: argparse.Namespace) -> int:
    """Run ``drpo-bench bench``: time each method's real step; prints a table, optionally writes JSON."""
    import torch
    from rich.table import Table

    from drpo_bench.compute.bench import bench_json, time_updates
    from drpo_bench.store import write_json

    setting = setting_from_args(args)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    runs = []
    for method in _methods(args):
        runs.append(time_updates(method, setting, device=args.device, dtype=dtypes.get(args.dtype or ""),
                                 updates=args.updates, micro=args.micro))
    console = _console()
    console.print(_title(setting, f"seconds per update on {runs[0]['device_name']} ({runs[0]['dtype']})"), style="bold")
    table = Table()
    table.add_column("phase")
    for r in runs:
        table.add_column(r["method"], justify="right")
    seen = {p for r in runs for p in r["summary"]["phase_seconds"]}
    for phase in [p for p in PHASES if p in seen] + sorted(seen - set(PHASES)):
        table.add_row(phase, *(f"{r['summary']['phase_seconds'].get(phase, 0.0):.3f}" for r in runs))
    table.add_section()
    table.add_row("total s/update", *(f"{r['summary']['seconds_per_update']:.3f}" for r in runs), style="bold")
    unit, scale = _unit(max((r["summary"]["flops_per_update"] or 0) for r in runs))
    table.add_row(f"{unit}/update", *(f"{(r['summary']['flops_per_update'] or 0) / scale:,.2f}" for r in runs))
    table.add_row(f"achieved {unit}/s", *(f"{(r['achieved_tflops'] or 0) * 1e12 / scale:,.2f}" for r in runs))
    table.add_row("share of bf16 peak", *((f"{r['share_of_peak']:.1%}" if r["share_of_peak"] else "-") for r in runs))
    table.add_row("peak memory GiB", *(f"{r['summary']['peak_memory_bytes'] / 2**30:.2f}" for r in runs))
    console.print(table)
    by = {r["method"]: r for r in runs}
    if "draft" in by:
        for name, r in by.items():
            if name != "draft":
                ratio = by["draft"]["summary"]["seconds_per_update"] / r["summary"]["seconds_per_update"]
                console.print(f"DRaFT time ÷ {name} time: {ratio:.2f}×")
    if args.json is not None:
        write_json(args.json, bench_json(setting, runs, command_line(args, setting)))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("flops", "bench") else "flops"
    configure = configure_bench_parser if command == "bench" else configure_parser
    parser = configure(argparse.ArgumentParser(prog=f"drpo-bench {command}", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

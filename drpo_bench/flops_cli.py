"""``drpo-bench flops``: FLOPs per update of each method at full paper scale, without weights.

    drpo-bench flops --generator sd-turbo --reward hpsv3 --methods drpo,draft \\
        --K 24 --effective-batch 192 --grad-checkpointing --json out.json

Every network is built on the meta device and counted with torch.utils.flop_counter (cached,
see drpo_bench/flops.py); the per-method phase models live in drpo_bench/phase_models.py.
Wire into the main CLI with ``add_flops_parser(subparsers)``; the parsed namespace carries
``func=flops_command``. Also runnable alone: ``python -m drpo_bench.flops_cli ...``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

from drpo_bench.errors import UserError
from drpo_bench.ledger import PHASES
from drpo_bench.phase_models import (
    CHECKPOINT_ROLES,
    FEATURES,
    GENERATORS,
    PHASE_MODELS,
    REWARDS,
    ComputeSetting,
    MethodCompute,
    compute_methods,
    make_setting,
)

#: the paper's measured wall-clock (SD-Turbo, HPSv3, effective batch 192; docs/drpo.md)
PAPER_WALL_CLOCK = {
    "setting": "SD-Turbo, HPSv3 reward, effective batch 192 (K=24 × 8 prompts); DRaFT through a checkpointed HPSv3",
    "draft_seconds_per_update": 21.62,
    "drpo_seconds_per_update": 6.17,
    "draft_backward_seconds": 9.99,
    "drpo_backward_seconds": 0.34,
    "ratio": 3.51,
}
CONVENTION = (
    "FLOPs = 2 x multiply-adds of matmuls, convolutions and attention (torch.utils.flop_counter on the meta "
    "device); elementwise ops, norms, softmax and the optimizer are not counted"
)


def add_flops_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``flops`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "flops",
        help="FLOPs per update of each method at paper scale (meta device, no weights)",
        description=__doc__.split("\n\n")[0],
    )
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--generator", default="sd-turbo", help=f"one of {', '.join(GENERATORS)} (default sd-turbo)")
    p.add_argument("--reward", default="pickscore", help=f"one of {', '.join(REWARDS)} (default pickscore)")
    p.add_argument("--methods", default="drpo,draft", help=f"comma-separated, from {', '.join(PHASE_MODELS)}")
    p.add_argument("--features", default=None, help=f"DrPO feature space, from {', '.join(FEATURES)} (default: the generator's)")
    p.add_argument("--K", "-K", dest="k", type=int, default=None, help="candidates per prompt (default: 24 SD-Turbo, 16 SDXL-Turbo)")
    p.add_argument("--effective-batch", type=int, default=None, help="candidates per optimizer update (default 8·K)")
    p.add_argument("--n-pos", type=int, default=8, help="DrPO positives per prompt (default 8)")
    p.add_argument("--n-neg", type=int, default=8, help="DrPO negatives per prompt (default 8)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank on to_q/to_k/to_v/to_out.0 (default 16)")
    p.add_argument(
        "--grad-checkpointing",
        nargs="?",
        const=",".join(CHECKPOINT_ROLES),
        default="",
        metavar="ROLES",
        help=f"recompute forwards in backward; alone: every backpropagated network, or a list from {','.join(CHECKPOINT_ROLES)}",
    )
    p.add_argument("--tiny", action="store_true", help="price the tiny twins instead (tests)")
    p.add_argument("--detail", action="store_true", help="also print every line item")
    p.add_argument("--json", type=Path, default=None, help="write the result as JSON here")
    p.set_defaults(func=flops_command)
    return p


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def setting_from_args(args: argparse.Namespace) -> ComputeSetting:
    return make_setting(
        args.generator,
        args.reward,
        features=args.features,
        k=args.k,
        effective_batch=args.effective_batch,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        checkpointing=frozenset(_split(args.grad_checkpointing or "")),
        lora_rank=args.lora_rank,
        tiny=args.tiny,
    )


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    import drpo_bench

    return {
        "drpo_bench": drpo_bench.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def result_json(setting: ComputeSetting, results: dict[str, MethodCompute]) -> dict[str, Any]:
    """Everything the table shows, plus every line item, the components' counts and versions."""
    from drpo_bench import flops

    methods: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for name, mc in results.items():
        methods[name] = {
            "description": PHASE_MODELS[name].description,
            "total_flops": mc.total,
            "backward_flops": mc.backward,
            "phase_flops": mc.phase_flops,
            "lines": [
                {
                    "phase": w.work.phase,
                    "role": w.work.role,
                    "component": w.work.component,
                    "mode": w.work.mode,
                    "part": w.work.part,
                    "samples": w.work.samples,
                    "flops_per_sample": w.flops_per_sample,
                    "flops": w.flops,
                    **({"note": w.work.note} if w.work.note else {}),
                }
                for w in mc.lines
            ],
        }
        for w in mc.lines:
            if w.work.component is None:
                continue
            lora = setting.lora if w.work.mode == "backward_lora" else None
            c = flops.count(w.work.component, w.work.mode, shape=dict(w.work.shape), lora=lora, tiny=setting.tiny)
            key = w.work.component + ("" if not w.work.shape else "@" + ",".join(f"{k}={v}" for k, v in w.work.shape))
            components.setdefault(key, {})[w.work.mode] = {
                "forward_flops_per_sample": c.forward,
                "backward_flops_per_sample": c.backward,
                "params": c.params,
                "trainable_params": c.trainable_params,
                "shape": c.shape,
            }
    ratios: dict[str, Any] = {}
    base = "drpo" if "drpo" in results else next(iter(results))
    for name, mc in results.items():
        if name != base:
            ratios[f"{name}/{base}"] = {
                "total": mc.total / results[base].total,
                "backward": (mc.backward / results[base].backward) if results[base].backward else None,
            }
    return {
        "setting": {
            "generator": setting.generator.name,
            "reward": setting.reward.name,
            "reward_note": setting.reward.note,
            "features": setting.features.name,
            "K": setting.k,
            "effective_batch": setting.effective_batch,
            "prompts_per_update": setting.prompts,
            "n_pos": setting.n_pos,
            "n_neg": setting.n_neg,
            "grad_checkpointing": sorted(setting.checkpointing),
            "lora_rank": setting.lora.rank,
            "lora_targets": list(setting.lora.targets),
            "tiny": setting.tiny,
        },
        "convention": CONVENTION,
        "methods": methods,
        "ratios": ratios,
        "components": components,
        "paper_wall_clock": PAPER_WALL_CLOCK,
        "versions": _versions(),
    }


def _unit(largest: float) -> tuple[str, float]:
    for name, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if largest >= scale:
            return name, scale
    return "FLOP", 1.0


def print_tables(setting: ComputeSetting, results: dict[str, MethodCompute], detail: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    unit, scale = _unit(max(mc.total for mc in results.values()))
    title = (
        f"{unit} per update — {setting.generator.name} × {setting.reward.name}, features {setting.features.name}, "
        f"K={setting.k}, effective batch {setting.effective_batch} ({setting.prompts} prompts)"
        + (f", checkpointing {','.join(sorted(setting.checkpointing))}" if setting.checkpointing else "")
        + (" [tiny]" if setting.tiny else "")
    )
    console.print(title, style="bold")
    table = Table()
    table.add_column("phase")
    for name in results:
        table.add_column(name, justify="right")
    seen = {p for mc in results.values() for p in mc.phase_flops}
    phases = [p for p in PHASES if p in seen] + sorted(seen - set(PHASES))
    for phase in phases:
        table.add_row(phase, *(f"{mc.phase_flops.get(phase, 0.0) / scale:,.1f}" for mc in results.values()))
    table.add_section()
    table.add_row("backward", *(f"{mc.backward / scale:,.1f}" for mc in results.values()))
    table.add_row("total", *(f"{mc.total / scale:,.1f}" for mc in results.values()), style="bold")
    console.print(table)
    base = "drpo" if "drpo" in results else next(iter(results))
    for name, mc in results.items():
        if name != base and results[base].total:
            back = f", backward {mc.backward / results[base].backward:.2f}×" if results[base].backward else ""
            console.print(f"{name}/{base}: {mc.total / results[base].total:.2f}× FLOPs per update{back}")
    console.print(
        f"[dim]{CONVENTION}. Paper, measured wall-clock ({PAPER_WALL_CLOCK['setting']}): "
        f"DRaFT {PAPER_WALL_CLOCK['draft_seconds_per_update']} s vs DrPO {PAPER_WALL_CLOCK['drpo_seconds_per_update']} s "
        f"= {PAPER_WALL_CLOCK['ratio']}×.[/dim]"
    )
    if detail:
        for name, mc in results.items():
            t = Table(title=f"{name}: line items")
            for col in ("phase", "role", "component", "mode", "part", "samples", "GFLOP/sample", unit):
                t.add_column(col, justify="right" if col in ("samples", "GFLOP/sample", unit) else "left")
            for w in mc.lines:
                t.add_row(w.work.phase, w.work.role, w.work.component or "(analytic)", w.work.mode, w.work.part,
                          str(w.work.samples), f"{w.flops_per_sample / 1e9:,.2f}", f"{w.flops / scale:,.1f}")
            console.print(t)


def flops_command(args: argparse.Namespace) -> int:
    """Run ``drpo-bench flops``; returns the exit code (bad input raises UserError: exit 2)."""
    from drpo_bench.store import write_json

    setting = setting_from_args(args)
    methods = _split(args.methods)
    if not methods:
        raise UserError("--methods is empty; name at least one, e.g. --methods drpo,draft")
    results = compute_methods(setting, methods)
    print_tables(setting, results, detail=args.detail)
    if args.json is not None:
        write_json(args.json, result_json(setting, results))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="drpo-bench flops", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

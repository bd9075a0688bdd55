"""``drpo-bench plan SUITE --gpu-memory 80GB [--gpus N]``: will each cell of a suite fit, before launch.

    drpo-bench plan suites/paper/sd-turbo-pickscore.yaml --gpu-memory 80GB
    drpo-bench plan suites/compute/sd-turbo-hpsv3.yaml --gpu-memory 80GB --gpus 8 --json plan.json
    drpo-bench validate suites/paper/sdxl-turbo-pickscore.yaml --gpu-memory 80GB   # validate, then plan

For each training cell row (generator × method × training reward; seeds share a row) the cell's
real ``Method.step`` runs on full-size networks on the meta device (drpo_bench/compute/memory.py) with the
suite's settings: its generator's dtype, resolution and VAE slicing, its method arguments, K and
micro-batch, the loop's autocast precision, the reward's dtype and gradient checkpointing. No weight
is loaded. The table gives the predicted peak at the suite's micro-batch, whether it fits, the
largest micro-batch (prompts per forward) that fits, and whether gradient checkpointing is needed.

"Fits" leaves room for what a tensor count does not see: ``--reserve`` (default 1 GiB: the CUDA
context, cuBLAS/cuDNN workspaces) and ``--headroom`` (default 10 % of the peak: the caching
allocator's fragmentation). With ``--gpus N`` each GPU runs its share of an update's prompts in the
same micro-batches and holds the whole model (data parallel, drpo_bench/run/distributed.py); a
micro-batch must divide that share. The all-reduce's flat copy of the LoRA gradients comes after
the backward, so it does not raise the peak.

Rewards and features are the architectures' networks (drpo_bench/compute/bench.py), approximations as
listed there; DrPO's pixel ViT-MAE features run unmasked (the suites' 75 % masking only lowers the
figure). A reward with no architecture (a served ``remote`` reward, the shapes world) gets no
prediction, and its row says so.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drpo_bench.errors import UserError

GiB = 2**30
#: the suites' feature names -> the architectures' feature classes (drpo_bench/compute/bench.py)
FEATURES = {"latent-mae": "arch-latent-mae-resnet", "latent-mae-tiny": "arch-latent-mae-resnet",
            "vit-mae": "arch-vit-mae-base", "vit-mae-tiny": "arch-vit-mae-base"}
#: a reward's dtype "auto" on a GPU (drpo_bench/rewards): HPSv3 in bf16, the CLIP-type rewards in fp16
GPU_AUTO_REWARD_DTYPE = {"hpsv3": "bf16"}
#: generator config fields that do not change memory or do not apply to the architectures' build
_GENERATOR_SKIP = {"pretrained", "device", "cache_dir", "revision"}


def parse_size(text: str) -> int:
    """'80GB' (10^9), '80GiB' (2^30), '80G' (GiB), '81920MiB', a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"--gpu-memory {text!r}: write a size such as 80GB, 80GiB or 141GB")
    value, prefix, suffix = float(match.group(1)), match.group(2).upper(), match.group(3).lower()
    power = "KMGT".index(prefix) + 1 if prefix else 0
    base = 1000 if suffix == "b" and prefix else 1024  # GB: decimal; GiB and a bare G: binary
    return int(value * base**power)


@dataclass
class PlanRow:
    """One training row of a suite: the prediction at its micro-batch and what fits."""

    generator: str
    method: str
    reward: str
    candidates_per_prompt: int
    micro_batch_prompts: int
    precision: str
    checkpointing: list[str]
    peak_bytes: int | None = None  # predicted at the suite's micro-batch, with its checkpointing
    persistent_bytes: int | None = None
    fits: bool | None = None
    largest_micro: int | None = None  # prompts per forward that fit (suite's checkpointing, or with it if needed)
    checkpointing_needed: str = ""  # "no", "on in the suite", "yes, N GiB with it", "does not fit even with it (...)"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Planner:
    """Predictions for one suite's rows against one GPU's memory."""

    def __init__(self, gpu_memory: int, gpus: int = 1, reserve: int = GiB, headroom: float = 0.10) -> None:
        if gpus < 1:
            raise UserError(f"--gpus must be at least 1 (got {gpus})")
        self.gpu_memory, self.gpus, self.reserve, self.headroom = gpu_memory, gpus, reserve, headroom
        self._cache: dict[tuple[Any, ...], Any] = {}

    def fits(self, peak: int) -> bool:
        return peak * (1 + self.headroom) + self.reserve <= self.gpu_memory

    # ---- a cell -> the compute setting --------------------------------------------------------
    def inputs(self, cell: Any) -> tuple[Any, Any, dict[str, Any]] | str:
        """(Setting, Precision, generator args) for a training cell, or the reason it cannot be predicted."""
        from drpo_bench.compute import bench
        from drpo_bench.compute.memory import Precision
        from drpo_bench.registry import GENERATORS

        gen_name = cell.generator.name
        tiny = gen_name.endswith("-tiny")
        base_gen = gen_name.removesuffix("-tiny")
        if base_gen not in bench.GENERATOR_CLASSES:
            return f"no architecture for generator {gen_name}"
        reward_name = cell.reward.name.removesuffix("-tiny")
        if reward_name not in bench.REWARDS:
            return f"no architecture for reward {cell.reward.name} (a served or non-network reward)"
        gen_args = {k: v for k, v in cell.generator.args.items() if k not in _GENERATOR_SKIP}
        defaults = GENERATORS.get(gen_name).cls.Config.model_fields
        weights = gen_args.get("dtype", defaults["dtype"].default)
        if tiny:
            weights = gen_args.get("dtype", "fp32")
        gen_args = {k: v for k, v in gen_args.items() if k not in ("dtype", "resolution")} | (
            {"resolution": cell.generator.args["resolution"]} if "resolution" in cell.generator.args else {})
        gen_args.setdefault("vae_slicing", defaults["vae_slicing"].default if "vae_slicing" in defaults else False)
        roles = []
        if gen_args.pop("gradient_checkpointing", False):
            roles.append("generator")
        reward_args = cell.reward.args
        if reward_args.get("gradient_checkpointing"):
            roles.append("reward")
        reward_dtype = reward_args.get("dtype", "auto")
        if reward_dtype == "auto":
            reward_dtype = "fp32" if tiny else GPU_AUTO_REWARD_DTYPE.get(reward_name, "fp16")
        method_args = dict(cell.method.args)
        if cell.method.method == "drpo":
            features = method_args.get("features", "latent-mae")
            if features in FEATURES:
                method_args["features"] = FEATURES[features]
                method_args["feature_args"] = {"tiny": tiny or features.endswith("-tiny")}
            elif features != "unet-teacher":
                return f"no architecture for DrPO features {features}"
        budget = cell.budget
        k = budget.candidates_per_prompt
        setting = bench.make_setting(base_gen, reward_name, k=k, effective_batch=k * budget.prompts_per_update,
                                     checkpointing=roles, method_args={cell.method.method: method_args}, tiny=tiny)
        precision = Precision(weights=weights, autocast=cell.train.precision, reward=reward_dtype)
        return setting, precision, gen_args

    def predict(self, method: str, setting: Any, precision: Any, gen_args: dict[str, Any], micro: int) -> Any:
        from drpo_bench.compute.memory import predict_memory

        key = (method, setting, repr(sorted(setting.method_args.get(method, {}).items())), precision,
               repr(sorted(gen_args.items())), micro)
        if key not in self._cache:
            self._cache[key] = predict_memory(method, setting, micro=micro, precision=precision, generator_args=gen_args)
        return self._cache[key]

    def largest_micro(self, method: str, setting: Any, precision: Any, gen_args: dict[str, Any], per_gpu: int,
                      at: dict[int, int]) -> int | None:
        """The largest divisor of the per-GPU prompts that fits: a straight line through two predictions
        proposes it, a prediction at the proposal confirms it (or the next smaller divisor is tried)."""
        if not self.fits(at[1]):
            return None
        slope = max(at[2] - at[1], 1)
        budget = (self.gpu_memory - self.reserve) / (1 + self.headroom)
        guess = int(1 + (budget - at[1]) // slope)
        candidates = [d for d in _divisors(per_gpu) if d <= guess]
        for d in reversed(candidates):
            peak = at[d] if d in at else self.predict(method, setting, precision, gen_args, d).peak_bytes
            if self.fits(peak):
                return d
        return 1

    def row(self, cell: Any) -> PlanRow:
        from drpo_bench.compute import bench

        micro = cell.budget.micro
        row = PlanRow(generator=cell.generator.label, method=cell.method.id, reward=cell.reward_alias or "-",
                      candidates_per_prompt=cell.budget.candidates_per_prompt, micro_batch_prompts=micro,
                      precision="", checkpointing=[])
        resolved = self.inputs(cell)
        if isinstance(resolved, str):
            row.note = resolved
            return row
        setting, precision, gen_args = resolved
        row.precision, row.checkpointing = precision.label(), sorted(setting.checkpointing)
        prompts = cell.budget.prompts_per_update
        if prompts % self.gpus:
            raise UserError(f"{cell.id}: {prompts} prompts per update do not split over --gpus {self.gpus}; "
                            "choose a GPU count that divides budget.prompts_per_update")
        per_gpu = prompts // self.gpus
        method = cell.method.method
        at_suite = self.predict(method, setting, precision, gen_args, micro)
        row.peak_bytes, row.persistent_bytes = at_suite.peak_bytes, at_suite.persistent_bytes
        row.fits = self.fits(at_suite.peak_bytes)
        row.extra["phase_peak_bytes"] = at_suite.phase_peak_bytes
        row.extra["phase_saved_bytes"] = at_suite.phase_saved_bytes
        planned = setting
        roles = ["generator"] + (["reward"] if bench.reward_can_checkpoint(setting.reward) else [])
        missing = [r for r in roles if r not in setting.checkpointing]
        if row.fits:
            row.checkpointing_needed = "no" if not setting.checkpointing else "on in the suite"
        elif not missing:
            row.checkpointing_needed = "on in the suite; does not fit even with it"
        else:
            ckpt = bench.make_setting(setting.generator, setting.reward, k=setting.k,
                                      effective_batch=setting.effective_batch, checkpointing=roles,
                                      method_args=setting.method_args, features=setting.features, tiny=setting.tiny)
            with_ckpt = self.predict(method, ckpt, precision, gen_args, micro)
            row.extra["peak_bytes_with_checkpointing"] = with_ckpt.peak_bytes
            what = "" if not setting.checkpointing else f"also the {', '.join(missing)}: "
            if self.fits(with_ckpt.peak_bytes):
                row.checkpointing_needed = f"yes, {what}{_gib(with_ckpt.peak_bytes)} GiB with it"
                planned = ckpt
            else:
                row.checkpointing_needed = f"does not fit even with it ({what}{_gib(with_ckpt.peak_bytes)} GiB)"
        one = self.predict(method, planned, precision, gen_args, 1).peak_bytes
        two = self.predict(method, planned, precision, gen_args, 2).peak_bytes if per_gpu > 1 else one
        row.largest_micro = self.largest_micro(method, planned, precision, gen_args, per_gpu, {1: one, 2: two})
        return row


def plan_rows(suite: Any, planner: Planner) -> list[PlanRow]:
    """One row per training (generator, method, reward) of the suite, in suite order."""
    from drpo_bench.suite.planning import plan_cells

    rows: list[PlanRow] = []
    seen: set[tuple[str, str, str | None]] = set()
    for cell in plan_cells(suite):
        key = (cell.generator.label, cell.method.id, cell.reward_alias)
        if not cell.trains or key in seen:
            continue
        seen.add(key)
        rows.append(planner.row(cell))
    return rows


def _gib(value: int | None) -> str:
    """GiB with one decimal; under 1 GiB (the tiny twins) with three significant digits."""
    if value is None:
        return "–"
    return f"{value / GiB:.1f}" if value >= GiB else f"{value / GiB:.3g}"


def print_plan(path: str, rows: list[PlanRow], planner: Planner) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 180)
    console.print(f"{path}: predicted peak GPU memory per micro-batch on {planner.gpus} × {planner.gpu_memory / GiB:.1f} GiB "
                  f"(fits: peak × {1 + planner.headroom:.2f} + {planner.reserve / GiB:.1f} GiB reserve)", style="bold")
    table = Table()
    for name, justify in (("generator", "left"), ("method", "left"), ("reward", "left"), ("K", "right"),
                          ("micro", "right"), ("precision", "left"), ("peak GiB", "right"), ("fits", "left"),
                          ("largest micro", "right"), ("checkpointing needed", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        fits = "–" if r.fits is None else ("yes" if r.fits else "[red]no[/]")
        table.add_row(r.generator, r.method, r.reward, str(r.candidates_per_prompt), str(r.micro_batch_prompts),
                      r.precision or "–", _gib(r.peak_bytes), fits,
                      "–" if r.largest_micro is None else str(r.largest_micro), r.checkpointing_needed or r.note)
    console.print(table)
    console.print("[dim]micro = prompts per forward (× K candidates); peak = allocated bytes predicted from the method's "
                  "real step on the meta device (drpo_bench/compute/memory.py); no weights loaded.[/dim]")


def plan_json(path: str, rows: list[PlanRow], planner: Planner, methods: tuple[str, ...] = ()) -> dict[str, Any]:
    """The rows, the planner's settings, versions and the provenance of the code that predicted them:
    this module's closure, the registered ``methods`` the rows ran, and the suite file itself."""
    from drpo_bench.compute.bench import versions
    from drpo_bench.suite.code_hash import result_provenance

    return {"suite": path, "gpu_memory_bytes": planner.gpu_memory, "gpus": planner.gpus,
            "reserve_bytes": planner.reserve, "headroom": planner.headroom,
            "rows": [asdict(r) for r in rows], "versions": versions(),
            "provenance": result_provenance(("drpo_bench.commands.memory_plan",), (path,), methods=methods)}


def run_plan(path: str, overrides: list[str], planner: Planner, json_path: Path | None = None) -> list[PlanRow]:
    from drpo_bench.suite.config import load_suite
    from drpo_bench.suite.planning import plan_cells
    from drpo_bench.store import write_json

    suite = load_suite(path, overrides)
    rows = plan_rows(suite, planner)
    print_plan(path, rows, planner)
    if json_path is not None:
        methods = tuple(sorted({cell.method.method for cell in plan_cells(suite) if cell.trains}))
        write_json(json_path, plan_json(path, rows, planner, methods))
        print(f"wrote {json_path}")
    return rows


def add_memory_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--gpu-memory", required=required, default=None, metavar="SIZE",
                   help="one GPU's memory, e.g. 80GB, 80GiB, 141GB" + ("" if required else ": also plan memory"))
    p.add_argument("--gpus", type=int, default=1, help="GPUs sharing each update's prompts (data parallel; default 1)")
    p.add_argument("--reserve", default="1GiB", metavar="SIZE", help="kept free for the CUDA context and workspaces (default 1GiB)")
    p.add_argument("--headroom", type=float, default=0.10, help="allocator fragmentation, a fraction of the peak (default 0.10)")


def planner_from_args(args: argparse.Namespace) -> Planner:
    return Planner(parse_size(args.gpu_memory), args.gpus, parse_size(args.reserve), args.headroom)


def plan_command(args: argparse.Namespace) -> int:
    overrides = [x for x in args.suite_and_overrides[1:]] + args.set_overrides
    planner = planner_from_args(args)
    run_plan(args.suite_and_overrides[0], overrides, planner, args.json)
    return 0


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="predicted GPU memory of each training cell of a suite; loads no weights",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("suite_and_overrides", nargs="+", metavar="SUITE [key=value ...]",
                   help="a suite YAML file, then optional overrides as with run (e.g. budget.micro_batch_prompts=2)")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value")
    add_memory_arguments(p, required=True)
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    p.set_defaults(func=plan_command)
    return p

"""Data parallelism within a cell: one cell trained by several processes (``accelerate launch``, torchrun).

Under a multi-process launch (``WORLD_SIZE`` > 1) every process runs the same cells in the same
order, each cell a collective:

- an update's ``prompts_per_update`` prompts are split into one contiguous slice per rank (a
  prompt's K candidates stay on one rank: DrPO's field needs the whole group); each rank runs
  its slice in micro-batches of ``micro_batch_prompts``;
- each micro-batch's loss keeps its share of the whole update (micro / prompts_per_update), so
  the **sum** of the ranks' gradients (one all-reduce) is the 1-process gradient at the same
  effective batch; clipping, the optimizer and the fp16 scaler then run identically everywhere;
- the noise of a micro-batch is the one a single process draws for it: every rank seeds the
  update's noise generator as one process does and replays the draws of the micro-batches
  before its slice (``NoiseDraws``), so 1- and N-process runs see the same noise;
- rank 0 alone takes the locks and writes the store (train log, checkpoints, adapter, eval,
  ledger, cell.json); the other ranks write nothing and follow rank 0's decisions (skip, busy,
  resume). Every rank reads the checkpoint to resume (one machine, or a shared filesystem).

With one process nothing here does anything: ``current()`` is a disabled ``DataParallel``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from drpo_bench.errors import UserError

#: how long a rank waits at a collective (e.g. while rank 0 alone evaluates): DRPO_BENCH_DIST_TIMEOUT_MIN
DEFAULT_TIMEOUT_MINUTES = 360


class RankZeroFailed(RuntimeError):
    """Rank 0 failed a cell before training it (e.g. a corrupt folder); the other ranks skip it too."""


@dataclass
class DataParallel:
    """This process's place in the launch: rank, world size, and the few collectives the loop needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Sum ``params``' gradients over ranks in place (one flat all-reduce). A parameter that has
        a gradient on some rank gets zeros where it has none; one with none anywhere keeps None
        (as one process would: AdamW skips it)."""
        if not self.enabled:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self._device(params))
        torch.distributed.all_reduce(present)
        grads = []
        for p, anywhere in zip(params, present.tolist()):
            if anywhere and p.grad is None:
                p.grad = torch.zeros_like(p)
            if anywhere:
                grads.append(p.grad)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,) one message
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Rank 0's values of ``params`` everywhere (the LoRA starts identical on every rank)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    def slice(self, n: int, micro: int) -> tuple[int, int]:
        """This rank's prompts [start, stop) of an update of ``n`` prompts in micro-batches of ``micro``."""
        check_divisible(n, micro, self.world_size)
        share = n // self.world_size
        return self.rank * share, (self.rank + 1) * share

    @staticmethod
    def _device(params: Sequence[torch.Tensor]) -> torch.device:
        return params[0].device if params else torch.device("cpu")


def check_divisible(prompts_per_update: int, micro: int, world_size: int, cell_id: str = "") -> None:
    if prompts_per_update % (micro * world_size):
        where = f"cell {cell_id}: " if cell_id else ""
        raise UserError(
            f"{where}budget.prompts_per_update = {prompts_per_update} does not split into {world_size} processes x "
            f"micro-batches of {micro} prompts (a prompt's K candidates stay on one process). Make prompts_per_update "
            f"a multiple of {micro * world_size}, lower budget.micro_batch_prompts, or launch another number of processes."
        )


_CURRENT: DataParallel | None = None


def current() -> DataParallel:
    """The launch this process belongs to; initializes the process group (through accelerate's
    ``PartialState``: gloo on CPU, nccl on CUDA) on first use when ``WORLD_SIZE`` > 1."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = _from_environment()
    return _CURRENT


def _from_environment() -> DataParallel:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel()
    for flag, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(flag, "false").lower() in ("1", "true", "yes"):
            raise UserError(
                f"drpo-bench was launched with accelerate's {what} plugin, which it does not apply: it trains a cell "
                "data-parallel itself (replicated frozen models, LoRA gradients summed over processes). Use a "
                "MULTI_GPU accelerate config (configs/accelerate/sdxl-hpsv3-8gpu.yaml) or `accelerate launch --multi_gpu`."
            )
    mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mixed not in ("no", ""):
        raise UserError(
            f"accelerate's mixed_precision is {mixed!r}, which drpo-bench does not apply: a suite's train.precision sets "
            "each method's precision (fp16 for SD-Turbo, bf16 for SDXL-Turbo, as the public code). Launch with "
            "--mixed_precision no (or mixed_precision: 'no' in the accelerate config)."
        )
    from accelerate import PartialState

    minutes = float(os.environ.get("DRPO_BENCH_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MINUTES))
    cuda = torch.cuda.is_available()
    state = PartialState(cpu=not cuda, timeout=timedelta(minutes=minutes))
    if state.num_processes != world:
        raise UserError(f"WORLD_SIZE is {world} but the process group has {state.num_processes} processes")
    if cuda:
        torch.cuda.set_device(state.local_process_index)  # "auto"/"cuda" devices mean this rank's GPU
    return DataParallel(rank=state.process_index, world_size=state.num_processes, local_rank=state.local_process_index)


def set_current(dp: DataParallel | None) -> None:
    """Tests: pretend to be a given rank (no collectives are made with world_size 1)."""
    global _CURRENT
    _CURRENT = dp


# ---- the noise a single process would draw --------------------------------------------------------


@dataclass
class NoiseDraws:
    """Records the noise draws (``generator.noise(n, rng)`` calls) of one micro-batch and replays them.

    Every method draws its noise through ``generator.noise(n, ctx.noise_rng)``, the same calls for
    every micro-batch of a cell (sizes depend on P and K only). A rank whose slice starts at
    micro-batch j seeds the update's generator as one process does, then replays the draws of
    micro-batches 0 .. j-1, so its noise is the 1-process noise. The draw pattern is learned from
    rank 0's first micro-batch (broadcast once) and checked on every micro-batch after.
    """

    generator: Any
    rng: torch.Generator
    pattern: list[int] | None = None
    _seen: list[int] = field(default_factory=list)
    _original: Callable[..., torch.Tensor] | None = None

    def __enter__(self) -> NoiseDraws:
        self._original = self.generator.noise
        original, rng, seen = self._original, self.rng, self._seen

        def noise(n: int, generator: torch.Generator) -> torch.Tensor:
            if generator is rng:
                seen.append(int(n))
            return original(n, generator)

        self.generator.noise = noise  # instance attribute: shadows the method while training
        return self

    def __exit__(self, *exc: object) -> None:
        del self.generator.noise  # the class's method again

    def start(self) -> None:
        self._seen.clear()

    def finish(self, dp: DataParallel, method: str) -> None:
        """After one micro-batch: learn the pattern (rank 0, first micro-batch) or check it."""
        seen = list(self._seen)
        if self.pattern is None:
            self.pattern = seen
            if dp.is_main:
                dp.broadcast(seen)
        elif seen != self.pattern:
            raise RuntimeError(
                f"{method} drew noise {seen} in one micro-batch and {self.pattern} in another; data-parallel runs "
                "replay the draws of the micro-batches before a rank's slice and need the same draws in every one"
            )

    def skip(self, dp: DataParallel, micro_batches: int) -> None:
        """Before this rank's slice: replay ``micro_batches`` micro-batches' draws (pattern from rank 0)."""
        if self.pattern is None and not dp.is_main:
            self.pattern = dp.broadcast(None)  # rank 0 sends it after its first micro-batch
        if micro_batches == 0:
            return
        assert self.pattern is not None and self._original is not None
        with torch.no_grad():
            for _ in range(micro_batches):
                for n in self.pattern:
                    self._original(n, self.rng)


# ---- what the ranks of one update share -------------------------------------------------------------


def gather_update(dp: DataParallel, losses: list[float], logs: dict[str, float], ctx: Any,
                  failure: BaseException | None) -> tuple[list[float], dict[str, float]]:
    """Every rank's micro-batch losses (in 1-process order), logs (summed: each is already a share
    of the update) and reward scores (into ``ctx.scores_seen``, for the update's reward_mean). A
    non-finite value on any rank is raised on every rank, so all stop the cell together."""
    from drpo_bench.errors import NonFiniteError

    scores = torch.cat([s.flatten().float().cpu() for s in ctx.scores_seen]) if ctx.scores_seen else None
    error = None if failure is None else (getattr(failure, "what", "value"), getattr(failure, "detail", str(failure)),
                                          getattr(failure, "phase", None))
    everyone = dp.gather((losses, logs, scores, error))
    for rank, (_, _, _, err) in enumerate(everyone):
        if err is not None:
            if failure is not None:
                raise failure
            exc = NonFiniteError(err[0], f"{err[1]} (in process {rank} of {dp.world_size})")
            exc.phase = err[2]
            raise exc
    summed: dict[str, float] = {}
    for _, rank_logs, _, _ in everyone:
        for key, value in rank_logs.items():
            summed[key] = summed.get(key, 0.0) + value
    ctx.scores_seen[:] = [s for _, _, s, _ in everyone if s is not None]
    return [loss for rank_losses, _, _, _ in everyone for loss in rank_losses], summed


def combine_ledgers(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's ledger summary with the whole launch's FLOPs (the sum over ranks) and each rank's
    own figures under ``data_parallel`` (time, FLOPs and peak memory per update)."""
    main = dict(summaries[0])
    per_rank = [
        {"rank": rank, "updates": s.get("updates"), "seconds_per_update": s.get("seconds_per_update"),
         "flops_per_update": s.get("flops_per_update"), "phase_seconds": s.get("phase_seconds"),
         "phase_flops": s.get("phase_flops"), "peak_memory_bytes": s.get("peak_memory_bytes")}
        for rank, s in enumerate(summaries)
    ]
    flops = [s.get("flops_per_update") for s in summaries]
    total = sum(flops) if all(f is not None for f in flops) else None
    seconds = [s["seconds_per_update"] for s in summaries if s.get("seconds_per_update") is not None]
    if total is not None:
        phases: dict[str, float] = {}
        for s in summaries:
            for key, value in (s.get("phase_flops") or {}).items():
                phases[key] = phases.get(key, 0.0) + value
        main["phase_flops"] = phases
        main["flops_per_update"] = total
        mean_seconds = main.get("seconds_per_update")
        main["achieved_flops_per_second"] = total / mean_seconds if mean_seconds else None
    main["data_parallel"] = {
        "world_size": len(summaries),
        "flops_per_update_total": total,  # the sum of the ranks' FLOPs per update
        "seconds_per_update_slowest_rank": max(seconds) if seconds else None,
        "per_rank": per_rank,
    }
    return main


def check_same_state(dp: DataParallel, method: Any, name: str) -> None:
    """Raise on every rank when the method's checkpointed state differs between ranks (it would train
    on rank 0's after a resume, and each rank with its own until then)."""
    import pickle

    states = dp.gather(pickle.dumps(method.state_dict()))
    if any(state != states[0] for state in states[1:]):
        raise RuntimeError(
            f"method {name} keeps state that differs between the processes of this data-parallel launch (it is computed "
            "from each process's share of the update): make it gather the whole update's values, as VGG-Flow "
            "gathers its gradient norms (drpo_bench.run.distributed.current().gather)"
        )

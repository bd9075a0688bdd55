"""The shared training loop: one optimizer, precision, accumulation and clipping for every method.

Prompt choice and noise of update ``t`` depend only on (seed, t), so a cell resumed from a
checkpoint follows exactly the path an uninterrupted one would. While training,
``checkpoint.json`` points at the newest ``checkpoint-<step>/`` folder (the pointer is the
commit: written last, atomically); a rerun resumes from it.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from drpo_bench.run.distributed import NoiseDraws, check_same_state, gather_update
from drpo_bench.run.distributed import current as data_parallel
from drpo_bench.errors import NonFiniteError, UserError
from drpo_bench.compute.ledger import Ledger
from drpo_bench.compute.precision import autocast
from drpo_bench.methods import Method, TrainContext
from drpo_bench.suite.planning import Cell
from drpo_bench.store import CellFolder, CorruptCellError, read_json, torch_save_atomic, write_json, write_text
from drpo_bench.run.train_logging import LoggingConfig, TrainLogger, open_train_logger


#: fp16 updates in a row that may overflow while the loss scale backs off (65536 halves to ~1e-3)
MAX_FP16_SKIPS = 25


def train_cell(cell: Cell, folder: CellFolder, generator: Any, method: Method, reward: Any, train_prompts: list[str],
               ledger: Ledger, progress: Progress | None = None, console: Console | None = None,
               logging: LoggingConfig | None = None,
               evaluate_at: Callable[[int], tuple[dict[str, float], torch.Tensor]] | None = None,
               reward_identity: dict[str, Any] | None = None) -> int | None:
    """Train ``cell`` in place (its LoRA in ``generator``); returns the step it resumed from, if any.

    ``evaluate_at(step)`` -> (metric means, sample images): a held-out evaluation, called before
    the first update (step 0) and after every ``cell.eval.every``-th and the last (before that
    step's checkpoint, so a resumed run never misses one); both go to the live logs.
    ``reward_identity``: a served reward's identity (RemoteReward.identity), checkpointed and
    required to match on resume, as the cell's code hash is.
    """
    budget, tcfg = cell.budget, cell.train
    device = generator.device
    params = generator.trainable_parameters()
    if not params:
        raise RuntimeError(f"generator {cell.generator.name} exposes no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas)
    scaler = torch.amp.GradScaler(device.type, init_scale=tcfg.fp16_init_scale, enabled=tcfg.precision == "fp16")
    ctx = TrainContext(
        generator=generator,
        reward=reward,
        ledger=ledger,
        candidates_per_prompt=budget.candidates_per_prompt,
        noise_rng=torch.Generator(),
        loss_scale=budget.micro / budget.prompts_per_update,
        scaled=scaler.scale,
    )
    method.setup(ctx)

    dp = data_parallel()  # a multi-process launch (drpo_bench/run/distributed.py); disabled in one process
    main = dp.is_main  # rank 0 alone writes the cell folder
    made_by = {"code": {"hash": cell.code.hash, "files": cell.code.files}, "reward_identity": reward_identity}
    start, resumed_from = resume(folder, cell.fingerprint, generator, optimizer, scaler, method, ledger,
                                 console if main else None, rank=dp.rank, world_size=dp.world_size, made_by=made_by)
    dp.broadcast_parameters(params)  # every rank starts from rank 0's LoRA
    lo, hi = dp.slice(budget.prompts_per_update, budget.micro) if dp.enabled else (0, budget.prompts_per_update)
    draws = NoiseDraws(generator, ctx.noise_rng) if dp.enabled else nullcontext()
    log_path = folder.file(CellFolder.TRAIN_LOG)
    if main:
        truncate_log(log_path, start)
    task = progress.add_task(f"  {cell.id}", total=budget.steps, completed=start) if progress else None
    generator.train(True)
    micro_steps = budget.prompts_per_update // budget.micro
    fp16 = tcfg.precision == "fp16"
    skipped_in_a_row = 0  # fp16: updates the scaler skipped for an overflow, one after another
    live = open_train_logger(logging, cell.id, folder.path, budget.steps, start, suite=cell.suite,
                             run_id=f"{cell.fingerprint}-{cell.id}",
                             run_config={"generator": cell.generator.model_dump(), "method": cell.method.record(),
                                         "budget": cell.budget.model_dump(), "train": cell.train.model_dump(),
                                         "seed": cell.seed}) if main else TrainLogger([])  # rank > 0: no sinks
    every = cell.eval.every if evaluate_at is not None else None
    if every and main:
        folder.truncate_eval_history(start)
    with log_path.open("a") if main else open(os.devnull, "w") as log, live, draws:
        if every and start == 0:
            if main:
                _evaluate_between_updates(generator, evaluate_at, 0, live)
            dp.barrier()  # the other ranks wait while rank 0 evaluates
        for step in range(start, budget.steps):
            chosen = update_prompts(train_prompts, budget.prompts_per_update, cell.seed, step)
            for group in optimizer.param_groups:  # a function of the step alone: resumes exactly
                group["lr"] = tcfg.lr * lr_factor(tcfg.lr_schedule, step, budget.steps)
            ctx.noise_rng.manual_seed(update_seed(cell.seed, step))
            if dp.enabled:  # the noise one process draws: replay the micro-batches before this rank's slice
                draws.skip(dp, lo // budget.micro)
            ledger.begin_update()
            ctx.scores_seen.clear()
            losses, logs = [], {}
            try:
                failure = None
                try:
                    for i in range(lo, hi, budget.micro):
                        if dp.enabled:
                            draws.start()
                        with autocast(device, tcfg.precision):
                            out = method.step(chosen[i : i + budget.micro], ctx)
                        if dp.enabled:
                            draws.finish(dp, cell.method.method)
                        if not math.isfinite(out.loss) and not fp16:
                            raise NonFiniteError("loss", f"{cell.method.method} returned loss {out.loss}")
                        losses.append(out.loss)
                        for k, v in out.logs.items():
                            logs[k] = logs.get(k, 0.0) + v / micro_steps
                except NonFiniteError as exc:
                    if not dp.enabled:
                        raise
                    failure = exc  # raised on every rank once the others hear of it (gather_update)
                if dp.enabled:  # the whole update's losses, logs and scores; the 1-process gradient (sum)
                    with ledger.phase("gradient_all_reduce"):
                        losses, logs = gather_update(dp, losses, logs, ctx, failure)
                        dp.sum_gradients(params)
                with ledger.phase("optimizer"):
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip or float("inf"))
                    overflow = not torch.isfinite(grad_norm) or not all(math.isfinite(v) for v in losses)
                    if overflow and not fp16:
                        raise NonFiniteError("gradient", f"LoRA gradient norm is {float(grad_norm)} "
                                             f"(learning rate {optimizer.param_groups[0]['lr']})")
                    # fp16: an overflow is expected while the scaler searches its scale; the scaler skips
                    # the update and halves the scale. Only a run of them means the values themselves are bad
                    skipped_in_a_row = skipped_in_a_row + 1 if overflow else 0
                    if skipped_in_a_row > MAX_FP16_SKIPS:
                        raise NonFiniteError("loss or gradient", f"{skipped_in_a_row} fp16 updates in a row overflowed "
                                             f"(loss scale now {scaler.get_scale():g}); the values are not finite at any scale")
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            except NonFiniteError as exc:
                exc.update = step + 1
                raise
            record = ledger.end_update()
            if dp.enabled:  # a method's state must stay the same on every rank (it is checkpointed from rank 0)
                check_same_state(dp, method, cell.method.method)
            reward_mean = ctx.reward_mean()  # every method's, from the scores the context saw
            if reward_mean is not None:
                logs["reward_mean"] = reward_mean
            loss = sum(losses) / len(losses)
            entry = {"step": step + 1, "loss": loss if math.isfinite(loss) else None, "grad_norm": float(grad_norm), **logs}
            if fp16 and skipped_in_a_row:
                entry["skipped_overflow"] = True  # the fp16 scaler skipped this update and halved its scale
            if record is not None:
                entry["seconds"] = record.seconds
            log.write(json.dumps(entry) + "\n")  # rank > 0: os.devnull
            log.flush()
            live.log_update(step + 1, entry)
            if every and ((step + 1) % every == 0 or step + 1 == budget.steps):
                if main:
                    _evaluate_between_updates(generator, evaluate_at, step + 1, live)
                dp.barrier()
            if (step + 1) % tcfg.checkpoint_every == 0 and step + 1 < budget.steps:
                rank_updates = dp.gather(ledger.to_json()["updates"]) if dp.enabled else None
                if main:
                    checkpoint(folder, cell.fingerprint, step + 1, generator, optimizer, scaler, method, ledger,
                               rank_updates=rank_updates, made_by=made_by)
            if progress is not None and task is not None:
                progress.update(task, advance=1, description=f"  {cell.id} loss {loss:.3g}")
    generator.train(False)
    if progress is not None and task is not None:
        progress.remove_task(task)
    return resumed_from


def _evaluate_between_updates(generator: Any, evaluate_at: Callable[[int], tuple[dict[str, float], torch.Tensor]],
                              step: int, live: Any) -> None:
    """Run a held-out evaluation with the generator in eval mode, log it live, then back to training."""
    generator.train(False)
    try:
        metrics, images = evaluate_at(step)
    finally:
        generator.train(True)
    live.log_eval(step, metrics)
    if images.numel():
        live.log_images(step, "eval/samples", images)


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoint(folder: CellFolder, fingerprint: str, step: int, generator: Any, optimizer: Any, scaler: Any,
               method: Method, ledger: Ledger, rank_updates: list[Any] | None = None,
               made_by: dict[str, Any] | None = None) -> None:
    """``rank_updates``: every rank's ledger updates (a data-parallel run), so each resumes its own.
    ``made_by``: {"code": the cell's code hash and files, "reward_identity": a served reward's identity},
    written into the pointer; ``resume`` refuses a checkpoint whose ``made_by`` differs."""
    target = folder.file(f"checkpoint-{step}")
    target.mkdir(exist_ok=True)
    generator.save_adapter(target / "adapter.safetensors")  # the generator's own format (diffusers' for SD/SDXL)
    torch_save_atomic({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                       "method": method.state_dict()}, target / "training_state.pt")
    saved = {"updates": ledger.to_json()["updates"]}  # the ledger spans resumes
    if rank_updates is not None:
        saved["rank_updates"] = rank_updates
    write_json(target / "ledger.json", saved)
    # the pointer is the commit: written last, atomically
    write_json(folder.file(CellFolder.CHECKPOINT), {"step": step, "folder": target.name, "fingerprint": fingerprint,
                                                    **(made_by or {})})
    for old in folder.path.glob("checkpoint-*"):
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)


def resume(folder: CellFolder, fingerprint: str, generator: Any, optimizer: Any, scaler: Any, method: Method,
           ledger: Ledger, console: Console | None = None, *, rank: int = 0, world_size: int = 1,
           made_by: dict[str, Any] | None = None) -> tuple[int, int | None]:
    """Load the newest checkpoint (every rank of a data-parallel run reads it; any world size: the
    state is the same on every rank). Each rank's ledger restores its own updates when the checkpoint
    came from as many processes; otherwise rank 0 restores the old rank 0's and the others none."""
    pointer = folder.file(CellFolder.CHECKPOINT)
    if not pointer.exists():
        return 0, None
    try:
        info = read_json(pointer)
        int(info["step"]), str(info["folder"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptCellError(pointer, f"{type(exc).__name__}: {exc}") from None
    if info.get("fingerprint") != fingerprint:
        raise UserError(
            f"cell folder {folder.path} holds a checkpoint from other settings. Use another --output, "
            "or delete that folder to start the cell over."
        )
    if made_by is not None:
        refuse_other_makers(folder, info, made_by)
    target = folder.file(info["folder"])
    try:
        generator.load_adapter(target / "adapter.safetensors")
        state = torch.load(target / "training_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        method.load_state_dict(state["method"])
        if (target / "ledger.json").exists():
            saved = read_json(target / "ledger.json")
            per_rank = saved.get("rank_updates")
            if per_rank is not None and len(per_rank) == world_size:
                ledger.restore(per_rank[rank][: int(info["step"])])
            elif rank == 0:
                ledger.restore(saved["updates"][: int(info["step"])])
    except Exception as exc:  # noqa: BLE001 - whatever the loaders raise (safetensors, pickle, shapes): it does not load
        raise CorruptCellError(target, f"checkpoint does not load: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if console is not None:
        console.print(f"[yellow]resuming {folder.path.name} from step {info['step']}[/]")
    return int(info["step"]), int(info["step"])


def refuse_other_makers(folder: CellFolder, info: dict[str, Any], made_by: dict[str, Any]) -> None:
    """A checkpoint resumes only with the code and the served reward that made it: else one paragraph."""
    recorded_code = info.get("code") if isinstance(info.get("code"), dict) else {}
    if recorded_code.get("hash") != made_by["code"]["hash"]:
        old = recorded_code.get("files") or {}
        changed = sorted(k for k in set(old) | set(made_by["code"]["files"]) if old.get(k) != made_by["code"]["files"].get(k))
        raise UserError(
            f"cell folder {folder.path} holds a checkpoint (step {info.get('step')}) made by other code "
            f"(code hash {recorded_code.get('hash') or 'not recorded'}, now {made_by['code']['hash']}; changed: "
            f"{', '.join(changed[:8]) if old else 'not recorded'}); it was not resumed. Rerun with --rerun-stale to "
            "train the cell over with this code, or delete that folder."
        )
    recorded, current = info.get("reward_identity"), made_by.get("reward_identity")
    if (recorded or {}).get("fingerprint") != (current or {}).get("fingerprint"):
        def what(identity: dict[str, Any] | None) -> str:
            if not identity:
                return "a reward that is not served"
            return (f"the reward served at {identity.get('url')} as {identity.get('name')!r} config="
                    f"{json.dumps(identity.get('config'), sort_keys=True)} weights={(identity.get('weights') or {}).get('checksum')}")

        raise UserError(
            f"cell folder {folder.path} holds a checkpoint (step {info.get('step')}) trained against {what(recorded)}, "
            f"but this run's training reward is {what(current)}; it was not resumed, as that would mix two rewards in "
            "one cell. Serve the original reward (same name, config and weights) and rerun, or delete that folder "
            "to train the cell from the start against this one."
        )


def drop_checkpoints(folder: CellFolder) -> None:
    folder.file(CellFolder.CHECKPOINT).unlink(missing_ok=True)
    for old in folder.path.glob("checkpoint-*"):
        shutil.rmtree(old, ignore_errors=True)


# ---- what each update sees: a function of (seed, step) alone ----------------------------------------


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning-rate multiplier of update ``step`` (0-based) of ``steps``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":  # half a cosine from 1 at the first update to 0 after the last
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def update_prompts(prompts: list[str], n: int, seed: int, step: int) -> list[str]:
    rng = random.Random(f"prompts:{seed}:{step}")
    return rng.sample(prompts, n) if n <= len(prompts) else [rng.choice(prompts) for _ in range(n)]


def update_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % 2**63


def truncate_log(path: Path, keep_steps: int) -> None:
    """Drop log lines past the checkpoint a cell resumes from (they will be redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= keep_steps]
    write_text(path, "".join(line + "\n" for line in kept))

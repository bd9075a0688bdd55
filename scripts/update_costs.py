"""Seconds per update of each trained row of a suite, and of its evaluations, on this machine.

Builds each row's cell as `run` would (tuning records applied, the suite's precision), runs a few
updates of the real Method.step with the shared loop's autocast and optimizer, and prints the
median process-CPU and wall seconds per update (the first two updates excluded as warm-up), then
one periodic and one final evaluation of the base generator. One torch thread, as the quickstart's
cells run. On a shared machine wall-clock follows the load; process CPU time much less so.

    python scripts/update_costs.py suites/quickstart.yaml --updates 7 [--precision fp32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--updates", type=int, default=7)
    parser.add_argument("--methods", help="comma-separated row ids (default: every trained row)")
    parser.add_argument("--precision", help="override the suite's train.precision (fp32, bf16)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from drpo_bench.run.cell_runner import CellRunner, build, seed_everything
    from drpo_bench.suite.config import load_suite
    from drpo_bench.run.evaluation import evaluate
    from drpo_bench.compute.ledger import Ledger
    from drpo_bench.methods import TrainContext
    from drpo_bench.suite.planning import plan_cells
    from drpo_bench.registry import GENERATORS, METHODS
    from drpo_bench.compute.precision import autocast
    from drpo_bench.run.training import update_prompts, update_seed
    from drpo_bench.suite.tuning_records import apply_tuning

    scratch = Path("runs") / "update-costs"  # tuning records are copied here (apply_tuning)
    suite = apply_tuning(load_suite(args.suite, ["seeds=[0]"]), scratch)
    runner = CellRunner(suite, scratch, quiet=True)
    prompts = [p.text for p in runner.prompts("train")]
    wanted = args.methods.split(",") if args.methods else None
    out: dict = {"updates": {}, "eval": {}}
    for cell in plan_cells(suite):
        if not cell.trains or (wanted and cell.method.id not in wanted):
            continue
        precision = args.precision or cell.train.precision
        seed_everything(cell.seed)
        generator = build(GENERATORS, cell.generator)
        entry = METHODS.get(cell.method.method)
        method = entry.cls(entry.parse_config(cell.method.args))
        method.prepare_generator(generator)
        ctx = TrainContext(generator=generator, reward=runner.reward(cell.reward_alias, generator.device),
                           ledger=Ledger(generator.device), candidates_per_prompt=cell.budget.candidates_per_prompt,
                           noise_rng=torch.Generator(), loss_scale=1.0)
        method.setup(ctx)
        params = generator.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=cell.train.lr)
        generator.train(True)
        cpu, wall = [], []
        for step in range(args.updates):
            chosen = update_prompts(prompts, cell.budget.prompts_per_update, cell.seed, step)
            ctx.noise_rng.manual_seed(update_seed(cell.seed, step))
            c0, w0 = time.process_time(), time.perf_counter()
            with autocast(generator.device, precision):
                method.step(chosen, ctx)
            torch.nn.utils.clip_grad_norm_(params, cell.train.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        figures = {"precision": precision, "cpu_s": statistics.median(cpu[2:]), "wall_s": statistics.median(wall[2:])}
        out["updates"][cell.method.id] = figures
        print(f"{cell.method.id:14s} {precision}  cpu {figures['cpu_s']:.3f} s/update  wall {figures['wall_s']:.3f} s/update",
              flush=True)
    base = next(c for c in plan_cells(suite))
    generator = build(GENERATORS, base.generator)
    generator.train(False)
    metrics, eval_prompts = runner.metrics(generator.device), runner.prompts(base.eval.split)
    for name, max_prompts in (("periodic", base.eval.every_max_prompts), ("final", None), ("periodic", base.eval.every_max_prompts),
                              ("final", None)):  # the second pair: reference features cached, as in a run
        c0, w0 = time.process_time(), time.perf_counter()
        evaluate(base, generator, eval_prompts, metrics, max_prompts=max_prompts)
        out["eval"][name] = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0}
    for name, figures in out["eval"].items():
        print(f"eval {name:9s} cpu {figures['cpu_s']:.2f} s  wall {figures['wall_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

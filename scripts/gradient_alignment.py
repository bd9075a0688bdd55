"""How much of a method's update points up the reward? A gradient diagnostic in the shapes world.

    .venv/bin/python scripts/gradient_alignment.py                 # the built-in comparison, ~2 min
    .venv/bin/python scripts/gradient_alignment.py --batches 32 --json /tmp/alignment.json

For each method variant, on the untrained shapes generator (LoRA at its zero start):

* the *true* ascent direction G is the gradient of the learned reward (shapes-clip small),
  averaged over a fixed set of 96 train prompts x 8 noises;
* each variant's update direction -g is taken on ``--batches`` independent training batches
  (8 prompts x K=16 candidates, as in the quickstart);
* reported: the mean and std of cos(-g, G) per batch; cos(-sum g, G) (signal that survives
  averaging over batches); and cos(sum g, sum g_random), the share of the summed update that is
  there whatever the ranking (the same variant ranked by random scores).

A DrPO variant whose summed update mostly agrees with its random-ranking twin is pushed by
something other than the reward; that is how the reference-drift repulsion of the published
masking was found (docs/architecture.md, "DrPO's masks").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_bench.generators.base import repeat_conditioning  # noqa: E402
from drpo_bench.compute.ledger import Ledger  # noqa: E402
from drpo_bench.methods import TrainContext  # noqa: E402
from drpo_bench.registry import GENERATORS, METHODS, PROMPTS, REWARDS  # noqa: E402

PUBLISHED = {"n_pos": 4, "n_neg": 4}
BOTH_MASKS = {**PUBLISHED, "mask_anchor_self": True, "mask_reference_pairs": True}
#: name -> (method, ranking reward, method args); "random" ranks by coin flips
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "draft": ("draft", "clip", {}),
    "drpo (published masks)": ("drpo", "clip", PUBLISHED),
    "drpo (published masks), random ranks": ("drpo", "random", PUBLISHED),
    "drpo (both masks)": ("drpo", "clip", BOTH_MASKS),
    "drpo (both masks), random ranks": ("drpo", "random", BOTH_MASKS),
}


class RandomScores:
    """A 'reward' that ranks candidates by chance: the ranking-independent part of an update."""

    higher_is_better = True
    differentiable = False

    def __init__(self, seed: int) -> None:
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.rand(images.shape[0], generator=self.rng)


def _build(registry: Any, name: str, args: dict[str, Any]) -> Any:
    entry = registry.get(name)
    return entry.cls(entry.parse_config(args))


def _flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in params])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=16, help="training batches per variant (8 prompts x K each)")
    parser.add_argument("--k", type=int, default=16, help="candidates per prompt")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    gen = _build(GENERATORS, "shapes", {})
    clip = _build(REWARDS, "shapes-clip", {"size": "small"})
    train = [p.text for p in _build(PROMPTS, "shapes", {}).split("train")]
    random.Random(0).shuffle(train)
    params = gen.trainable_parameters()

    def zero() -> None:
        for p in params:
            p.grad = None

    eval_prompts, per_prompt = train[:96], 8
    cond = repeat_conditioning(gen.encode(eval_prompts), per_prompt)
    noise = gen.noise(len(eval_prompts) * per_prompt, torch.Generator().manual_seed(123))
    zero()
    clip(gen.decode(gen.sample(noise, cond)), [t for t in eval_prompts for _ in range(per_prompt)]).mean().backward()
    true_ascent = _flat_grad(params).clone()  # (n_params,)
    zero()

    ledger, sums, rows = Ledger(), {}, {}
    cos = torch.nn.functional.cosine_similarity
    for name, (method_name, reward_name, method_args) in VARIANTS.items():
        method = _build(METHODS, method_name, method_args)
        reward = RandomScores(7) if reward_name == "random" else clip
        ctx = TrainContext(generator=gen, reward=reward, ledger=ledger, candidates_per_prompt=args.k, noise_rng=torch.Generator())
        method.setup(ctx)
        per_batch, total = [], torch.zeros_like(true_ascent)
        for b in range(args.batches):
            ctx.noise_rng.manual_seed(1000 + b)
            prompts = train[96 + 8 * b : 96 + 8 * (b + 1)]
            zero()
            ledger.begin_update()
            method.step(prompts, ctx)
            g = _flat_grad(params)
            total += g
            per_batch.append(float(cos(-g, true_ascent, dim=0)))
        sums[name] = total
        t = torch.tensor(per_batch)
        rows[name] = {
            "cos_per_batch_mean": float(t.mean()),
            "cos_per_batch_std": float(t.std()),
            "cos_of_sum": float(cos(-total, true_ascent, dim=0)),
        }
    for name in VARIANTS:
        twin = f"{name}, random ranks"
        if twin in sums:
            rows[name]["cos_with_random_ranks"] = float(cos(sums[name], sums[twin], dim=0))
    zero()

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"update direction vs the true reward ascent ({args.batches} batches of 8 prompts x K={args.k})")
    for col in ("variant", "cos per batch", "cos of sum", "cos with random-rank twin"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, r in rows.items():
        twin = r.get("cos_with_random_ranks")
        table.add_row(
            name,
            f"{r['cos_per_batch_mean']:+.3f} ± {r['cos_per_batch_std']:.3f}",
            f"{r['cos_of_sum']:+.3f}",
            "–" if twin is None else f"{twin:+.2f}",
        )
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"batches": args.batches, "k": args.k, "variants": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()

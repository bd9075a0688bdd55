"""Whole updates: the tiny SD-Turbo-shaped DrPO and DRaFT updates (the methods' real steps on the
architectures' tiny twins, as ``drpo-bench bench --tiny`` runs them) and a shapes-world DrPO step."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from drpo_bench.compute.ledger import Ledger


@pytest.fixture(scope="module")
def tiny_setting() -> Any:
    from drpo_bench.compute import bench

    return bench.make_setting("sd-turbo", "pickscore", k=8, effective_batch=16, checkpointing=("generator",),
                              method_args={"drpo": {"n_pos": 2, "n_neg": 2}}, tiny=True)


@pytest.mark.parametrize("method", ["drpo", "draft"])
def test_tiny_sd_turbo_update(benchmark: Any, tiny_setting: Any, method: str) -> None:
    """The real Method.step (drpo_bench/compute/bench.py), one optimizer update, tiny twins on CPU."""
    from drpo_bench.compute import bench

    torch.manual_seed(0)
    stack = bench.build_stack(tiny_setting, "cpu")
    ledger = Ledger("cpu", enabled=False)
    runner = bench.prepare(method, tiny_setting, stack, ledger)
    opt = torch.optim.AdamW(stack.generator.trainable_parameters(), lr=1e-4)
    benchmark.group = "tiny sd-turbo update (K=8, effective batch 16)"
    benchmark.pedantic(bench.run_update, args=(runner, tiny_setting, ledger), kwargs={"micro": 1, "optimizer": opt},
                       rounds=3, warmup_rounds=1)


def test_shapes_world_drpo_step(benchmark: Any) -> None:
    from drpo_bench.methods import TrainContext
    from drpo_bench.registry import GENERATORS, METHODS, REWARDS

    generator = GENERATORS.get("shapes").cls()
    reward = REWARDS.get("shapes-checker").cls()
    method_entry = METHODS.get("drpo")
    method = method_entry.cls(method_entry.parse_config({}))
    ctx = TrainContext(generator=generator, reward=reward, ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=24, noise_rng=torch.Generator().manual_seed(0))
    method.setup(ctx)
    opt = torch.optim.AdamW(generator.trainable_parameters(), lr=1e-4)
    prompts = ["a red circle", "two blue squares"]

    def step() -> None:
        method.step(prompts, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)

    benchmark.group = "shapes-world DrPO step (2 prompts × K=24)"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)

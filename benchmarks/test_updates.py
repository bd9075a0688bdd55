"""Whole updates: the tiny SD-Turbo-shaped DrPO and DRaFT updates (scripts/gpu_benchmark.py's
code on the tiny twins) and a shapes-world DrPO step (skipped until that world is importable)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from drpo_bench.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def _gpu_benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "scripts" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["gpu_benchmark"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def tiny_stack() -> Any:
    gb = _gpu_benchmark()
    setting = gb.phase_models.make_setting("sd-turbo", "pickscore", k=8, effective_batch=16, n_pos=2, n_neg=2, tiny=True)
    return gb, gb.build_stack(setting, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("method", ["drpo", "draft"])
def test_tiny_sd_turbo_update(benchmark: Any, tiny_stack: Any, method: str) -> None:
    gb, stack = tiny_stack
    gb.set_checkpointing(stack.unet, True)
    gb.set_checkpointing(stack.reward, method == "draft")
    opt = torch.optim.AdamW([p for p in stack.unet.parameters() if p.requires_grad], lr=1e-4)
    ledger = Ledger("cpu", enabled=False)
    update = gb.UPDATES[method]
    benchmark.group = "tiny sd-turbo update (K=8, effective batch 16)"
    benchmark.pedantic(update, args=(stack, ledger, opt, 8 if method == "drpo" else 2), rounds=3, warmup_rounds=1)


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

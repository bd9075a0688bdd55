"""DrPO under the paper suites' mixed precision: features and the drift field stay float32.

The runner wraps every ``Method.step`` in autocast (fp16 for SD-Turbo, bf16 for SDXL-Turbo, as
the public code autocasts the model forwards). DrPO's anchor weights push the field's
affinities past float16's range, and the field's smallest radius turns small feature errors
into large changes of the target, so DrPO switches autocast off for its features and field.
These tests compare the LoRA gradient of one DrPO step under CPU autocast with the float32 one.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from drpo_bench.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import GENERATORS, METHODS, REWARDS

PROMPTS = ["a red cat on a mat", "two dogs playing in the snow"]
CASES = [("sd-turbo-tiny", "latent-mae-tiny"), ("sdxl-turbo-tiny", "vit-mae-tiny")]


def _build(registry, name, args=None):
    entry = registry.get(name)
    return entry.cls(entry.parse_config(args or {}))


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def drpo_case(request):
    generator_name, features = request.param
    gen = _build(GENERATORS, generator_name)
    g = torch.Generator().manual_seed(0)
    for name, param in gen.unet.named_parameters():  # move off the base: policy != reference
        if param.requires_grad and "lora_B" in name:
            param.data = 0.02 * torch.randn(param.shape, generator=g)
    drpo = _build(METHODS, "drpo", {"n_pos": 2, "n_neg": 2, "features": features})
    ctx = TrainContext(generator=gen, reward=_build(REWARDS, "pickscore-tiny"), ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=6, noise_rng=torch.Generator())
    drpo.setup(ctx)
    return gen, drpo, ctx


@contextmanager
def _generator_in_float32(gen):
    """Run the generator's own forwards without autocast, leaving DrPO's computation under it."""
    encode, sample, decode = gen.encode, gen.sample, gen.decode

    def fp32(fn):
        def run(*args, **kwargs):
            with torch.autocast("cpu", enabled=False):
                return fn(*args, **kwargs)
        return run

    gen.encode, gen.sample, gen.decode = fp32(encode), fp32(sample), fp32(decode)
    try:
        yield
    finally:
        gen.encode, gen.sample, gen.decode = encode, sample, decode


def _lora_grad(gen, drpo, ctx, dtype):
    for param in gen.trainable_parameters():
        param.grad = None
    ctx.noise_rng.manual_seed(0)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = drpo.step(PROMPTS, ctx)
    grad = torch.cat([p.grad.flatten() for p in gen.trainable_parameters()])
    assert torch.isfinite(torch.tensor(out.loss)) and torch.isfinite(grad).all()
    return grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_drpo_own_computation_matches_float32(drpo_case, dtype):
    """Same candidates (generator forwards in float32), DrPO's features and field under autocast."""
    gen, drpo, ctx = drpo_case
    reference = _lora_grad(gen, drpo, ctx, None)
    with _generator_in_float32(gen):
        mixed = _lora_grad(gen, drpo, ctx, dtype)
    assert torch.nn.functional.cosine_similarity(reference, mixed, dim=0) >= 0.999
    assert abs(mixed.norm() / reference.norm() - 1) < 1e-2


def test_drpo_whole_step_fp16_matches_float32(drpo_case):
    """The whole step under fp16 autocast (the SD-Turbo suites' precision): cosine >= 0.99 to fp32."""
    gen, drpo, ctx = drpo_case
    reference = _lora_grad(gen, drpo, ctx, None)
    mixed = _lora_grad(gen, drpo, ctx, torch.float16)
    assert torch.nn.functional.cosine_similarity(reference, mixed, dim=0) >= 0.99

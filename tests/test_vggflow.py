"""One-step VGG-Flow (baselines/vggflow.py): registration, the loss on hand-made tensors, one step by
hand (gradients, ledger, loss_scale, the running clip threshold), the shared loop on the toy world,
validation against black-box rewards, and one bf16 step on the tiny SD-Turbo twin."""

from __future__ import annotations

import inspect
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from worlds import LatentBlueness, LatentRedness, ShiftGenerator
from pydantic import ValidationError

from baselines.vggflow import clip_by_norm, one_step_vggflow_loss
from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import ConfigError
from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS
from drpo_bench.run.runner import run_suite
from drpo_bench.toy import ToyGenerator, ToyPrompts, ToyRedness


SUITES = Path(__file__).resolve().parents[1] / "suites" / "toy"
PHASES = {"sample", "reference", "decode", "reward_forward", "reward_backward", "loss", "generator_backward"}
PROMPTS = ["toy prompt 0", "toy prompt 1"]


def _method(args=None):
    entry = METHODS.get("vggflow")
    return entry.cls(entry.parse_config(args or {}))


# ---- registration ------------------------------------------------------------------------------


def test_registered_with_paper_docstring_and_reasoned_config():
    entry = METHODS.get("vggflow")
    cls = entry.cls
    assert cls.trains and cls.needs_differentiable_reward
    assert cls.paper == "https://arxiv.org/abs/2512.05116"
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    assert cls.paper in module_doc and "one-step" in module_doc.lower() and "UGVly/DrPO" in module_doc
    cfg = entry.parse_config({})  # defaults validate: the public SD-Turbo settings
    assert (cfg.reward_scale, cfg.clip_quantile, cfg.initial_clip_threshold) == (1000.0, 0.8, 1.0)
    with pytest.raises(ValidationError):
        entry.parse_config({"no_such_option": 1})
    with pytest.raises(ValidationError):
        entry.parse_config({"clip_quantile": 1.5})
    source = inspect.getsource(cls.Config)
    for field in cls.Config.model_fields:
        line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{field}:"))
        assert "#" in line, f"vggflow.Config.{field} needs a one-line reason for its default"


# ---- the loss on hand-made tensors -------------------------------------------------------------


def test_loss_and_clip_hand_computed():
    policy = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    grad = torch.tensor([[0.5, -1.0], [0.0, 0.25]])
    loss, target = one_step_vggflow_loss(policy, ref, grad, reward_scale=2.0)
    # targets: [0 + 1, 0 - 2] = [1, -2] and [1 + 0, 1 + 0.5] = [1, 1.5]
    torch.testing.assert_close(target, torch.tensor([[1.0, -2.0], [1.0, 1.5]]))
    # per-sample mean squared error: (0^2 + 4^2) / 2 = 8 and (1^2 + 1.5^2) / 2 = 1.625
    torch.testing.assert_close(loss, torch.tensor([8.0, 1.625]))
    loss.sum().backward()  # d/dx mean (x - t)^2 = (x - t) over 2 elements per sample
    torch.testing.assert_close(policy.grad, torch.tensor([[0.0, 4.0], [-1.0, -1.5]]))

    clipped, norms = clip_by_norm(torch.tensor([[3.0, 4.0], [0.0, 0.5]]), 1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))  # unclipped norms
    torch.testing.assert_close(clipped, torch.tensor([[0.6, 0.8], [0.0, 0.5]]))  # only the first shrinks
    same, _ = clip_by_norm(torch.tensor([[3.0, 4.0]]), None)
    torch.testing.assert_close(same, torch.tensor([[3.0, 4.0]]))
    zero, _ = clip_by_norm(torch.tensor([[3.0, 4.0]]), 0.0)  # a zero threshold disables (public rule)
    torch.testing.assert_close(zero, torch.tensor([[3.0, 4.0]]))


# ---- one step by hand on the toy world ---------------------------------------------------------


def _context(loss_scale=1.0, generator=None, reward=None, k=8, seed=0):
    ledger = Ledger("cpu")
    ledger.begin_update()
    return TrainContext(
        generator=generator or ToyGenerator(ToyGenerator.Config()),
        reward=reward or ToyRedness(ToyRedness.Config()),
        ledger=ledger,
        candidates_per_prompt=k,
        noise_rng=torch.Generator().manual_seed(seed),
        loss_scale=loss_scale,
    )


def _step(args=None, loss_scale=1.0):
    ctx = _context(loss_scale)
    method = _method(args)
    method.setup(ctx)
    out = method.step(PROMPTS, ctx)
    record = ctx.ledger.end_update()
    grads = {n: p.grad.clone() for n, p in ctx.generator.net.named_parameters() if p.requires_grad}
    return out, record, grads


@pytest.mark.parametrize("args", [{}, {"ref_l2_weight": 0.5, "initial_clip_threshold": 0.01}],
                         ids=["defaults", "ref_l2-clipped"])
def test_step_gives_finite_loss_lora_grads_phases_and_honours_loss_scale(args):
    out, record, grads = _step(args)
    assert math.isfinite(out.loss) and out.loss > 0
    assert all(math.isfinite(v) for v in out.logs.values())
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    lora_b = [g for n, g in grads.items() if "lora_B" in n]
    assert lora_b and all(g.abs().sum() > 0 for g in lora_b), "non-zero LoRA gradient"
    assert PHASES <= set(record.phase_seconds), set(record.phase_seconds)
    _, _, half = _step(args, loss_scale=0.5)  # same seed, same noise: half the gradient
    for n, g in grads.items():
        torch.testing.assert_close(half[n], 0.5 * g, rtol=1e-4, atol=1e-9)


def test_mixed_precision_scale_reaches_the_parameters_once():
    """ctx.scaled (the fp16 GradScaler) scales the parameter gradients, not the reward-gradient target."""
    grads = []
    for factor in (1.0, 1024.0):
        ctx = _context()
        ctx.scaled = lambda loss, factor=factor: loss * factor
        _method().step(PROMPTS, ctx)
        grads.append({n: p.grad.clone() for n, p in ctx.generator.net.named_parameters() if p.requires_grad})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], 1024.0 * g, rtol=1e-4, atol=1e-9)








REDNESS_GRAD = torch.cat([torch.full((64,), 1 / 64), torch.full((128,), -1 / 128)])  # (192,) ascent direction


@pytest.mark.parametrize("reward_cls", [LatentRedness, LatentBlueness])
@pytest.mark.parametrize("tau", [1.0, 0.05])  # ||g|| = sqrt(3/128) ~ 0.153: unclipped, then clipped
def test_step_at_the_base_is_a_scaled_clipped_reward_ascent(reward_cls, tau):
    gen = ShiftGenerator()
    ctx = _context(generator=gen, reward=reward_cls(reward_cls.Config()), k=4)
    ctx.ledger = Ledger("cpu", enabled=False)
    method = _method({"reward_scale": 10.0, "initial_clip_threshold": tau})
    prompts = ["p0", "p1", "p2"]
    out = method.step(prompts, ctx)
    norm = math.sqrt(3 / 128)
    clipped = REDNESS_GRAD * min(1.0, tau / norm)
    # at theta = 0, x = x_ref: d/dx mean_elements (x - x_ref - s g~)^2 = -2 s g~ / 192 per sample,
    # averaged over the 12 candidates, and d x / d theta = I
    torch.testing.assert_close(gen.theta.grad, -2 * 10.0 * clipped / 192, rtol=1e-4, atol=1e-8)
    assert out.loss == pytest.approx(float((10.0 * clipped).pow(2).mean()), rel=1e-4)
    assert out.logs["rgrad_norm"] == pytest.approx(norm, rel=1e-4)
    assert out.logs["clipped_fraction"] == (1.0 if tau < norm else 0.0)
    # the descent step raises the (lower-is-better flipped) reward
    assert float((-gen.theta.grad * REDNESS_GRAD).sum()) > 0
    # one full update (loss_scale 1) sets tau to the 0.8-quantile of its norms, all equal here
    assert method.clip_threshold == pytest.approx(norm, rel=1e-4)


def test_clip_threshold_updates_once_per_update_and_checkpoints():
    gen = ShiftGenerator()
    ctx = _context(loss_scale=0.5, generator=gen, reward=LatentRedness(LatentRedness.Config()), k=2)
    method = _method({"initial_clip_threshold": 0.01})
    method.step(["p0"], ctx)
    assert method.clip_threshold == 0.01, "half an update: tau must wait for the rest"
    method.step(["p1"], ctx)
    assert method.clip_threshold == pytest.approx(math.sqrt(3 / 128), rel=1e-4)
    fresh = _method({"initial_clip_threshold": 0.01})
    fresh.load_state_dict(method.state_dict())
    assert fresh.clip_threshold == method.clip_threshold
    off = _method({"clip_gradient": False, "initial_clip_threshold": 0.01})
    ctx.loss_scale = 1.0
    out = off.step(["p0"], ctx)
    assert off.clip_threshold == 0.01 and out.logs["clipped_fraction"] == 0.0


# ---- the shared loop on the toy world ----------------------------------------------------------


def test_shared_loop_raises_the_toy_reward(tmp_path):
    suite = load_suite(SUITES / "harness.yaml", [
        "seeds=[0]", "budget.steps=4", "train.checkpoint_every=2",
        "methods=[{id: vggflow, method: vggflow}]",
    ])
    summary = run_suite(suite, tmp_path, quiet=True)
    cell = "toy--vggflow--redness--s0"
    assert summary.statuses[cell] == "done", summary.failures.get(cell)
    entries = [json.loads(line) for line in (tmp_path / cell / "train.jsonl").read_text().splitlines()]
    assert len(entries) == 4
    for e in entries:
        assert math.isfinite(e["loss"]) and math.isfinite(e["grad_norm"]) and e["grad_norm"] > 0
        assert all(math.isfinite(v) for v in e.values() if isinstance(v, float))
    assert entries[-1]["clip_threshold"] != entries[0]["clip_threshold"], "tau follows the norms"
    ledger = json.loads((tmp_path / cell / "ledger.json").read_text())
    assert PHASES <= set(ledger["updates"][0]["phase_seconds"])

    # the reward on the train prompts at fixed noise, base vs the trained adapter (the toy's held-out
    # prompts have their own untrained embeddings, so their reward hardly moves for DRaFT either)
    train = [p.text for p in ToyPrompts(ToyPrompts.Config()).split("train")]
    texts = [p for p in train for _ in range(8)]
    eps = torch.randn(len(texts), 3 * 8 * 8, generator=torch.Generator().manual_seed(123))

    def redness(adapter=None):
        gen = ToyGenerator(ToyGenerator.Config())
        if adapter is not None:
            gen.load_adapter(adapter)
        return float(ToyRedness(ToyRedness.Config())(gen.generate(texts, eps), texts).mean())

    base, trained = redness(), redness(tmp_path / cell / "adapter.safetensors")
    assert trained > base + 2e-4, (base, trained)  # measured: 0.00155 -> 0.00258


# ---- validation ------------------------------------------------------------------------------


def test_validate_refuses_a_black_box_reward(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text((SUITES / "harness.yaml").read_text())
    override = ["methods=[{id: vggflow, method: vggflow, reward: redness-bb}]"]
    with pytest.raises(ConfigError, match="not differentiable"):
        load_suite(path, override)
    bad = tmp_path / "bad2.yaml"
    bad.write_text(
        "name: bad\ngenerators: [toy]\nrewards: {redness: toy-redness, bb: toy-redness-blackbox}\n"
        "prompts: toy\ntrain_rewards: [bb]\nmethods:\n  - {id: vggflow, method: vggflow}\nseeds: [0]\n"
        "budget: {steps: 2, candidates_per_prompt: 8, prompts_per_update: 2}\n"
        "eval: {images_per_prompt: 2, metrics: [redness]}\n"
    )
    assert main(["validate", str(bad)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not differentiable" in err and "Traceback" not in err


# ---- the tiny SD-Turbo twin under bf16 autocast -----------------------------------------------


def test_one_bf16_step_on_the_tiny_sd_turbo_twin():
    from drpo_bench.registry import GENERATORS
    from drpo_bench.registry import REWARDS

    gen = GENERATORS.build("sd-turbo-tiny")
    with torch.no_grad():  # LoRA B starts at zero, which blocks the gradient to A: make B non-zero
        for name, p in gen.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
    ctx = _context(generator=gen, reward=REWARDS.build("pickscore-tiny"), k=2)
    method = _method()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.step(["a photo of a red cat"], ctx)
    record = ctx.ledger.end_update()
    assert math.isfinite(out.loss) and all(math.isfinite(v) for v in out.logs.values()), out.logs
    grads = [p.grad for p in gen.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert out.logs["rgrad_norm"] > 0, "the reward gradient reached the latents"
    assert PHASES <= set(record.phase_seconds)
    # a bound on work, not on time: one sampling, reference, decode and reward pass each for the K = 2 candidates
    assert all(record.phase_calls[p] == 1 for p in PHASES if p in record.phase_calls), dict(record.phase_calls)

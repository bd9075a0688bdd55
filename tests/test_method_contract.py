"""The Method contract, for every registered method: a new file in baselines/ is tested by being there.

Each trainable method, on the toy world: one step gives a finite loss and finite, non-zero LoRA
gradients; it records the phases it declares (canonical ledger names); halving ``loss_scale``
halves the gradient; its state round-trips; one update moves a linear reward up on a generator
whose every candidate has the identity Jacobian, for a higher- and a lower-is-better reward.
Offline methods (``cls.offline``) run the same checks on a toy dataset made by make-dataset,
except those about ``ctx.reward``, which they never call (tests/test_offline.py checks they move
toward their dataset's positives).
"""

from __future__ import annotations

import math
import pytest
import torch
from worlds import LatentBlueness, LatentRedness, ShiftGenerator, redness_gain

from drpo_bench.compute.ledger import PHASES, Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS
from drpo_bench.toy import ToyGenerator, ToyRedness

#: toy-world arguments for methods whose defaults need another world (DrPO's default features
#: read the shapes world); every other method runs with its defaults
TOY_ARGS = {"drpo": {"n_pos": 2, "n_neg": 2, "features": "toy-pixels"}}
PROMPTS = ["toy prompt 0", "toy prompt 1"]
TRAINABLE = [name for name in METHODS.names() if METHODS.get(name).cls.trains]
OFFLINE = {name for name in TRAINABLE if METHODS.get(name).cls.offline}
#: offline methods' own arguments (the toy dataset's path is added by the fixture below)
OFFLINE_ARGS = {"drpo-offline": {"n_pos": 2, "n_neg": 2, "features": "toy-pixels"}, "dpo-offline": {}}


@pytest.fixture(scope="module", autouse=True)
def toy_dataset(tmp_path_factory):
    """A toy-world offline dataset (toy-redness scores), named in TOY_ARGS for every offline method."""
    from drpo_bench.commands.make_dataset import make_dataset

    folder = tmp_path_factory.mktemp("contract") / "toy-data"
    make_dataset(folder, generator="toy", prompts="toy", reward="toy-redness", images_per_prompt=8, progress=False)
    assert OFFLINE <= set(OFFLINE_ARGS), f"give {OFFLINE - set(OFFLINE_ARGS)} toy arguments in OFFLINE_ARGS"
    for name in OFFLINE:
        TOY_ARGS[name] = {**OFFLINE_ARGS[name], "dataset": str(folder)}
    yield folder
    for name in OFFLINE:
        TOY_ARGS.pop(name, None)


def _method(name):
    entry = METHODS.get(name)
    return entry.cls(entry.parse_config(TOY_ARGS.get(name, {})))


def _context(generator, reward, loss_scale=1.0, seed=0, ledger=None):
    return TrainContext(generator=generator, reward=reward, ledger=ledger or Ledger("cpu", enabled=False),
                        candidates_per_prompt=8, noise_rng=torch.Generator().manual_seed(seed), loss_scale=loss_scale)


def _one_step(name, loss_scale=1.0):
    torch.manual_seed(0)
    generator = ToyGenerator(ToyGenerator.Config())
    ledger = Ledger("cpu")
    ctx = _context(generator, ToyRedness(ToyRedness.Config()), loss_scale, ledger=ledger)
    method = _method(name)
    method.setup(ctx)
    ledger.begin_update()
    out = method.step(PROMPTS, ctx)
    record = ledger.end_update()
    if name not in OFFLINE:  # an offline method never calls the reward
        assert ctx.reward_mean() is not None, "the method scores through ctx.score/ctx.rank: the loop logs reward_mean"
    grads = {n: p.grad.clone() for n, p in generator.net.named_parameters() if p.requires_grad and p.grad is not None}
    return method, out, record, grads


def test_every_method_is_covered():
    assert {"drpo", "draft", "raft", "dpo", "grpo", "pso", "vggflow", "drpo-offline", "dpo-offline"} <= set(TRAINABLE)
    assert OFFLINE == {"drpo-offline", "dpo-offline"}


@pytest.mark.parametrize("name", TRAINABLE)
def test_step_is_finite_records_canonical_phases_and_honours_loss_scale(name):
    method, out, record, grads = _one_step(name)
    assert math.isfinite(out.loss) and all(math.isfinite(v) for v in out.logs.values()), out
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora" in n), "a non-zero LoRA gradient"
    recorded = {p for p, seconds in record.phase_seconds.items() if p != "other"}
    assert recorded <= set(PHASES), f"non-canonical phases {recorded - set(PHASES)}"
    assert {"sample", "generator_backward"} <= recorded
    assert recorded == set(method.phases()), "a method records exactly the phases it declares"
    _, _, _, half = _one_step(name, loss_scale=0.5)
    for n, g in grads.items():
        torch.testing.assert_close(half[n], 0.5 * g, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", TRAINABLE)
def test_state_round_trips(name):
    method, _, _, _ = _one_step(name)
    state = method.state_dict()
    fresh = _method(name)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert set(again) == set(state)
    for key, value in state.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(again[key], value)
        else:
            assert again[key] == value








@pytest.mark.parametrize("reward_cls", [LatentRedness, LatentBlueness])
@pytest.mark.parametrize("name", [n for n in TRAINABLE if n not in OFFLINE])  # offline: its data, not ctx.reward
def test_one_update_moves_toward_the_better_reward(name, reward_cls):
    gen = ShiftGenerator()
    ctx = _context(gen, reward_cls(reward_cls.Config()), seed=3)
    method = _method(name)
    method.setup(ctx)
    method.step(["toy prompt 0", "toy prompt 1", "toy prompt 2"], ctx)
    step = gen.theta.grad
    assert step is not None and step.abs().sum() > 0
    assert redness_gain(gen, step) > 0  # the reward is linear in theta: a small step's effect is exact

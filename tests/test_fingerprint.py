"""A cell's fingerprint is its definition, written out here: sha256 of the sorted JSON of the ten
things that determine its result, first 16 hex digits; secrets redacted, bookkeeping and the
tuning record's location left out. A rerun compares fingerprints to decide whether a finished
cell may be skipped, so any drift from this definition either mixes cells made with other
settings or refuses every committed result.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from drpo_bench.suite.config import BudgetConfig, ComponentSpec, EvalConfig, MethodSpec, TrainConfig
from drpo_bench.suite.planning import Cell, redact


def test_redact_replaces_every_non_empty_secret_at_any_depth():
    spec = {"url": "http://h", "token": "s3cret", "nested": [{"token": "t", "x": 1}, [{"token": "u"}], 7],
            "inner": {"token": "", "other": {"token": None, "tokens": "not a secret key"}}}
    assert redact(spec) == {"url": "http://h", "token": "<redacted>",
                            "nested": [{"token": "<redacted>", "x": 1}, [{"token": "<redacted>"}], 7],
                            "inner": {"token": "", "other": {"token": None, "tokens": "not a secret key"}}}
    assert redact([1, "token"]) == [1, "token"] and redact("token") == "token" and redact(None) is None


def _cell(*, trains=True, token="secret", tuned_from=None, lr=0.01, checkpoint_every=10, count_flops=True, seed=0,
          eval_rewards=None, method_args=None, eval_token=None) -> Cell:
    reward = ComponentSpec(name="remote", args={"url": "http://localhost:1", "token": token})
    method = MethodSpec(id="drpo", method="drpo" if trains else "base",
                        args=(method_args if method_args is not None else {"n_pos": 2}) if trains else {},
                        tuned_from=tuned_from)
    return Cell(
        suite="s", generator=ComponentSpec(name="toy"), method=method, reward_alias="r" if trains else None,
        reward=reward if trains else None, seed=seed, prompts=ComponentSpec(name="toy"),
        eval=EvalConfig(metrics=[ComponentSpec(name="redness", args={"token": eval_token} if eval_token else {})],
                        images_per_prompt=3),
        trains=trains, budget=BudgetConfig(steps=3, candidates_per_prompt=4, prompts_per_update=2),
        train=TrainConfig(lr=lr, checkpoint_every=checkpoint_every, count_flops=count_flops),
        eval_rewards=eval_rewards or {},
    )


def _by_definition(cell: Cell) -> str:
    """The fingerprint's definition, field by field (METRIC_CONVENTIONS is 2 since PickScore x100 / HPSv2 v2.0)."""
    method = cell.method.model_dump()
    method.pop("tuned_from", None)

    def hide_token(spec: ComponentSpec) -> dict:
        dump = spec.model_dump()
        if dump["args"].get("token"):
            dump["args"] = {**dump["args"], "token": "<redacted>"}
        return dump

    reward = hide_token(cell.reward) if cell.reward is not None else None
    train = None
    if cell.trains:
        train = cell.train.model_dump()
        del train["checkpoint_every"], train["count_flops"]
    payload = {
        "budget": cell.budget.model_dump() if cell.trains else None,
        "eval": {**cell.eval.model_dump(), "metrics": [hide_token(m) for m in cell.eval.metrics]},
        "eval_rewards": {alias: hide_token(spec) for alias, spec in cell.eval_rewards.items()},
        "generator": cell.generator.model_dump(),
        "method": method,
        "metric_conventions": 2,
        "prompts": cell.prompts.model_dump(),
        "reward": reward,
        "seed": cell.seed,
        "train": train,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("trains", [True, False], ids=["trained", "base"])
def test_the_fingerprint_is_the_sha256_of_its_definition(trains):
    cell = _cell(trains=trains)
    assert len(cell.fingerprint) == 16 and int(cell.fingerprint, 16) >= 0
    assert cell.fingerprint == _by_definition(cell)


def test_eval_rewards_enter_the_fingerprint_in_alias_order():
    big, small = ComponentSpec(name="pick", args={"size": 2}), ComponentSpec(name="clip", args={"token": "x"})
    forward = _cell(eval_rewards={"a": big, "b": small})
    backward = _cell(eval_rewards={"b": small, "a": big})
    assert forward.fingerprint == backward.fingerprint == _by_definition(forward)
    assert forward.fingerprint != _cell().fingerprint
    hidden = _cell(eval_rewards={"a": big, "b": ComponentSpec(name="clip", args={"token": "y"})})
    assert hidden.fingerprint == forward.fingerprint, "an eval reward's secret never enters a fingerprint"


def test_what_the_fingerprint_ignores_and_what_it_does_not():
    plain = _cell().fingerprint
    assert _cell(token="another").fingerprint == plain, "a secret's value never enters a fingerprint"
    assert _cell(token="").fingerprint != plain, "an empty token is kept as it is (it is no secret)"
    assert _cell(eval_token="a").fingerprint == _cell(eval_token="b").fingerprint == _by_definition(_cell(eval_token="a"))
    assert _cell(tuned_from="/a/record.json").fingerprint == plain, "the tuning record's location is left out"
    assert _cell(checkpoint_every=3, count_flops=False).fingerprint == plain, "bookkeeping cannot change a result"
    assert _cell(lr=0.02).fingerprint != plain and _cell(seed=1).fingerprint != plain
    assert _cell(method_args={"n_pos": 3}).fingerprint != plain
    base = _cell(trains=False).fingerprint
    assert _cell(trains=False, lr=0.5).fingerprint == base, "a base cell does not train: its train settings are moot"


def test_a_path_argument_enters_by_its_content_not_its_location(tmp_path):
    """An offline dataset named by path: the same files elsewhere give the same fingerprint, other files another."""
    here, there, other = tmp_path / "a" / "data", tmp_path / "b" / "data", tmp_path / "c" / "data"
    for folder, text in ((here, "scores"), (there, "scores"), (other, "other scores")):
        folder.mkdir(parents=True)
        (folder / "scores.jsonl").write_text(text)

    def offline(path):
        cell = _cell()
        return Cell(**{**cell.__dict__, "method": MethodSpec(id="dpo-off", method="dpo-offline", args={"dataset": str(path)})})

    assert offline(here).fingerprint == offline(there).fingerprint
    assert offline(here).fingerprint != offline(other).fingerprint

"""Plan a suite's cells: generator x method x training reward x seed, each fully resolved.

A ``Cell`` carries every setting that determines its result (the method's budget and training
settings after its overrides, the reward's spec, prompts, evaluation), so one object feeds the
fingerprint, ``cell.json`` and the training loop.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drpo_bench.suite.config import BudgetConfig, ComponentSpec, EvalConfig, MethodSpec, Suite, TrainConfig
from drpo_bench.registry import METHODS

if TYPE_CHECKING:
    from drpo_bench.suite.code_hash import CodeRecord

#: TrainConfig fields that cannot change a result: left out of the fingerprint
BOOKKEEPING = {"checkpoint_every", "count_flops"}
#: bump when a metric's reported definition or scale changes in code (e.g. PickScore reported as
#: 100 x cosine, HPSv2 v2.0 by default): cells from before then are not mixed with newer ones
METRIC_CONVENTIONS = 2


#: config keys whose values are secrets: never written into results, never part of a fingerprint
SECRET_KEYS = {"token"}


def redact(value: Any) -> Any:
    """A spec dump with every secret (e.g. a reward server's ``token``) replaced by "<redacted>"."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_KEYS and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True)
class Cell:
    suite: str
    generator: ComponentSpec
    method: MethodSpec
    reward_alias: str | None  # None for methods that do not train
    reward: ComponentSpec | None
    seed: int
    prompts: ComponentSpec
    eval: EvalConfig
    trains: bool
    budget: BudgetConfig  # the suite's budget with the method's overrides
    train: TrainConfig  # the suite's train settings with the method's overrides
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # what the method changes
    budget_matched: bool = True  # same steps, K and prompts per update as the suite
    eval_rewards: dict[str, ComponentSpec] = field(default_factory=dict)  # reward aliases used as eval metrics

    @property
    def id(self) -> str:
        return f"{self.generator.label}--{self.method.id}--{self.reward_alias or 'none'}--s{self.seed}"

    @functools.cached_property  # computed once per planned cell (a dataset argument is hashed)
    def fingerprint(self) -> str:
        """Hash of everything that determines the result; a rerun with other settings is refused."""
        payload = {
            "generator": self.generator.model_dump(),
            # path arguments (an offline dataset) by content, not location; a tuning record's path
            # (tuned_from) not at all: the setting it chose is in args / train, applied before planning
            "method": {**self.method.model_dump(exclude={"tuned_from"}),
                       "args": METHODS.get(self.method.method).cls.identity_args(self.method.args)},
            "reward": redact(self.reward.model_dump()) if self.reward else None,
            "prompts": self.prompts.model_dump(),
            "seed": self.seed,
            "budget": self.budget.model_dump() if self.trains else None,
            "train": self.train.model_dump(exclude=BOOKKEEPING) if self.trains else None,
            "eval": redact(self.eval.model_dump()),
            # a reward alias named as an eval metric is scored by that alias's spec (its size, views, ...)
            "eval_rewards": {alias: redact(spec.model_dump()) for alias, spec in sorted(self.eval_rewards.items())},
            "metric_conventions": METRIC_CONVENTIONS,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @functools.cached_property
    def code(self) -> CodeRecord:
        """The code that can change this cell's numbers, hashed (drpo_bench.suite.code_hash); kept apart
        from ``fingerprint`` so that other code (a stale cell) is told from other settings."""
        from drpo_bench.suite.code_hash import cell_code

        return cell_code(self)


def plan_cells(suite: Suite) -> list[Cell]:
    """generator x method x training reward x seed, in suite order."""
    cells = []
    for gen in suite.generators:
        for method in suite.methods:
            trains = METHODS.get(method.method).cls.trains
            if not trains:
                aliases: list[str | None] = [None]
            elif method.reward:
                aliases = [method.reward]
            else:
                aliases = list(suite.train_rewards)
            for alias in aliases:
                for seed in suite.seeds:
                    cells.append(Cell(
                        suite=suite.name,
                        generator=gen,
                        method=method,
                        reward_alias=alias,
                        reward=suite.rewards[alias] if alias else None,
                        seed=seed,
                        prompts=suite.prompts,
                        eval=suite.eval,
                        trains=trains,
                        budget=suite.budget_for(method),
                        train=suite.train_for(method),
                        overrides=suite.method_overrides(method) if trains else {},
                        budget_matched=suite.budget_matched(method) if trains else True,
                        eval_rewards={m.name: suite.rewards[m.name] for m in suite.eval.metrics if m.name in suite.rewards},
                    ))
    return cells

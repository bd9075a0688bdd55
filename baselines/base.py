"""The untrained base generator: the row every method is compared against."""

from __future__ import annotations

from collections.abc import Sequence

from drpo_bench.methods import Method, StepOutput, TrainContext
from drpo_bench.registry import METHODS


@METHODS.register("base")
class Base(Method):
    """No training: evaluates the frozen base generator."""

    trains = False

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        raise RuntimeError("the base method does not train; the runner never calls its step")

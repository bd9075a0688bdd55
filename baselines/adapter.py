"""An existing LoRA, evaluated like a trained cell: e.g. the official DrPO SD-Turbo LoRA
(github UGVly/DrPO), a cell of an earlier run, or any diffusers LoRA of the same generator.

No training: the runner builds the generator, this method loads the adapter into it
(``prepare_generator``), and the cell is evaluated on the suite's held-out prompts and metrics.
The adapter must have been made for the same generator with the same LoRA shape (rank, alpha,
targets); the generator's ``load_adapter`` says which ``lora_*`` args to set when it differs.

The cell's fingerprint covers ``path``, not the file's bytes: after replacing the file, delete the
cell folder (or use another ``--output``) to evaluate it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import field_validator

from drpo_bench.methods import Method, StepOutput, TrainContext
from drpo_bench.registry import METHODS, StrictConfig


@METHODS.register("adapter")
class Adapter(Method):
    """No training: evaluates an existing LoRA file or cell folder (`path`) on the generator."""

    trains = False

    class Config(StrictConfig):
        # an adapter .safetensors (diffusers or peft LoRA format), a finished cell folder, or a peft
        # adapter folder; relative paths are read from the directory drpo-bench runs in
        path: str

        @field_validator("path")
        @classmethod
        def _adapter_exists(cls, path: str) -> str:
            from drpo_bench.errors import UserError
            from drpo_bench.generators.base import resolve_adapter_file

            try:
                resolve_adapter_file(path)
            except UserError as exc:
                raise ValueError(str(exc).removeprefix("adapter: ")) from None
            return path

    def prepare_generator(self, generator: Any) -> None:
        generator.load_adapter(self.config.path)  # type: ignore[attr-defined]

    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        raise RuntimeError("the adapter method does not train; the runner never calls its step")

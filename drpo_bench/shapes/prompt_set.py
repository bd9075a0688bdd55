"""The "shapes" prompt set: the grammar's fixed train, held-out eval and validation splits."""

from __future__ import annotations

from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import PROMPTS, StrictConfig
from drpo_bench.shapes.grammar import prompt_split


@PROMPTS.register("shapes")
class ShapesPrompts(PromptSet):
    """Shapes-world prompts over GenEval's six tasks (402 train, 98 held-out eval; 77 of train are
    the validation split for tuning)."""

    class Config(StrictConfig):
        # True in tuning runs (docs/tuning.md): "train" leaves out the "validation" prompts, so a
        # configuration is chosen on prompts it did not train on; False: all 402 train prompts
        hold_out_validation: bool = False

    def split(self, name: str) -> list[Prompt]:
        if name == "train" and self.config.hold_out_validation:
            return prompt_split("train-minus-validation")
        return prompt_split(name)

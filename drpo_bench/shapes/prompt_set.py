"""The "shapes" prompt set: the grammar's fixed train and held-out eval splits."""

from __future__ import annotations

from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import PROMPTS
from drpo_bench.shapes.grammar import prompt_split


@PROMPTS.register("shapes")
class ShapesPrompts(PromptSet):
    """Shapes-world prompts over GenEval's six tasks (402 train, 98 held-out eval)."""

    def split(self, name: str) -> list[Prompt]:
        return prompt_split(name)

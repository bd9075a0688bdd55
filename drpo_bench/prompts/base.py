"""The prompt-set seam: fixed train and held-out eval splits."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from drpo_bench.registry import StrictConfig


@dataclass(frozen=True)
class Prompt:
    text: str
    task: str | None = None  # e.g. GenEval task: "counting", "position"; None if untagged


class PromptSet(abc.ABC):
    registry_name: str = "prompt"
    Config: ClassVar[type[StrictConfig]] = StrictConfig

    def __init__(self, config: StrictConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def split(self, name: str) -> list[Prompt]:
        """The prompts of split ``name`` ("train" or "eval"), in a fixed order."""

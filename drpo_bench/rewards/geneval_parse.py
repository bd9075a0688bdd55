"""Parse GenEval-style prompts into checkable constraints: objects, counts, colors, a relation.

Handles GenEval's six templates (and the shapes world's grammar, which follows them):

    single object      "a photo of a cat"
    two objects        "a photo of a cat and a dog"
    counting           "a photo of three cats"            (number words -> exact count)
    colors             "a photo of a red car"
    position           "a photo of a cat left of a dog"   (left of / right of / above / below)
    color attribution  "a photo of a red car and a blue bench"

"a"/"an" mean "at least one" (GenEval's include rule); a number word means exactly that many
(GenEval adds an exclude rule at count + 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
RELATIONS = ("left of", "right of", "above", "below")
_IRREGULAR = {"people": "person", "mice": "mouse", "knives": "knife", "sheep": "sheep", "skis": "skis",
              "scissors": "scissors", "glasses": "glass", "benches": "bench", "buses": "bus"}


@dataclass(frozen=True)
class ObjectSpec:
    name: str  # singular noun phrase, e.g. "traffic light"
    count: int | None = None  # exact count; None = at least one
    color: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None  # between objects[0] and objects[1]

    def n_constraints(self) -> int:
        return len(self.objects) + sum(o.color is not None for o in self.objects) + (self.relation is not None)


def singular(noun: str) -> str:
    words = noun.split()
    last = words[-1]
    if last in _IRREGULAR:
        last = _IRREGULAR[last]
    elif last.endswith("ies") and len(last) > 4:
        last = last[:-3] + "y"
    elif last.endswith(("ches", "shes", "xes", "sses")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith("ss"):
        last = last[:-1]
    return " ".join([*words[:-1], last])


def parse_object(phrase: str) -> ObjectSpec:
    words = phrase.split()
    if not words:
        raise ValueError("empty object phrase")
    count: int | None = None
    if words[0] in ("a", "an", "the"):
        words = words[1:]
    elif words[0] in NUMBERS or words[0].isdigit():
        count = NUMBERS.get(words[0]) or int(words[0])
        words = words[1:]
    color = None
    if words and words[0] in COLORS:
        color, words = words[0], words[1:]
    if not words:
        raise ValueError(f"no noun in {phrase!r}")
    noun = " ".join(words)
    if not re.fullmatch(r"[a-z][a-z' -]*", noun):
        raise ValueError(f"{noun!r} is not an object name")
    return ObjectSpec(singular(noun) if count and count > 1 else noun, count, color)


def parse_prompt(prompt: str) -> PromptSpec:
    """A prompt -> its constraints; ``ValueError`` when it follows none of the templates."""
    text = re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".")
    text = re.sub(r"^(a photo|an image|a picture) of ", "", text)
    for relation in RELATIONS:
        match = re.fullmatch(rf"(.+?) {relation} (.+)", text)
        if match:
            return PromptSpec((parse_object(match[1]), parse_object(match[2])), relation)
    return PromptSpec(tuple(parse_object(part) for part in text.split(" and ")))

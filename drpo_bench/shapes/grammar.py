"""The shapes prompt grammar, modelled on GenEval's six tasks.

Forms (``C`` a color, ``S`` a shape, ``N`` in two|three|four, ``R`` a relation)::

    single_object   a S                          "a circle"
    colors          a C S                        "a green triangle"
    counting        N [C] Ss                     "three blue squares", "two circles"
    two_objects     a S and a S                  "a square and a triangle"
    color_attr      a C S and a C S              "a red square and a green circle"
    position        a [C] S R a [C] S            "a blue circle left of a yellow triangle"

Relations: ``left of``, ``right of``, ``above``, ``below`` (the first object relative to the
second). Colors are the six hues 60 degrees apart (red, yellow, green, cyan, blue, purple):
cyan stands in for GenEval's orange because it stays separable in a blurry 32x32 image.

The splits are fixed: every task's prompt space is enumerated in a canonical order, shuffled
with a seed derived from the task's name, and cut into eval (first) and train (next): 98 eval
and 402 train prompts (``_SPLIT_SIZES``). The small tasks (single_object has 4 prompts in all,
two_objects 12, colors 24) hold out fewer prompts than the large ones (28 each), so average per
task first, then across tasks (as GenEval does).
A "validation" split for tuning (``docs/tuning.md``) is the last ``_VALIDATION_SIZES`` prompts
of each task's train slice (77 in all): disjoint from eval, and from "train-minus-validation",
the train prompts a tuning run trains on. "train" and "eval" are unchanged by it.
``random_prompt`` never returns a held-out eval prompt unless asked to.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

from drpo_bench.prompts.base import Prompt

#: RGB in [0, 1]; hues ~0, 55, 120, 185, 225, 280 degrees, saturated and bright.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.15, 0.80, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.35, 1.00),
    "purple": (0.70, 0.15, 0.95),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
NUMBERS: dict[str, int] = {"two": 2, "three": 3, "four": 4}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
TASKS: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
#: the relation that holds with the two objects swapped
INVERSE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

VOCABULARY: tuple[str, ...] = tuple(
    ["a", "and", "of", "left", "right", "above", "below"]
    + list(NUMBERS)
    + list(COLORS)
    + list(SHAPES)
    + list(PLURALS.values())
)

_SINGULAR = {p: s for s, p in PLURALS.items()}
_SPLIT_SEED = "drpo-bench shapes split v1"
#: (eval, train) prompts per task; single_object has only len(SHAPES) prompts in all.
_SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "single_object": (2, 2),
    "two_objects": (4, 8),
    "counting": (28, 56),
    "colors": (8, 16),
    "position": (28, 160),
    "color_attr": (28, 160),
}
#: validation prompts per task, carved from the end of the task's train slice (about half the eval
#: count; single_object keeps one train prompt)
_VALIDATION_SIZES: dict[str, int] = {
    "single_object": 1,
    "two_objects": 2,
    "counting": 14,
    "colors": 4,
    "position": 28,
    "color_attr": 28,
}
#: the split names prompt_split knows
SPLITS = ("train", "eval", "validation", "train-minus-validation")


@dataclass(frozen=True)
class ObjectSpec:
    shape: str  # one of SHAPES
    color: str | None  # one of COLORS, or None: any color
    count: int  # 1..4

    def phrase(self) -> str:
        if self.count == 1:
            words = ["a", self.color, self.shape]
        else:
            words = [_number_word(self.count), self.color, PLURALS[self.shape]]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class PromptSpec:
    objects: tuple[ObjectSpec, ...]  # one or two object groups
    relation: str | None = None  # objects[0] <relation> objects[1], one of RELATIONS

    @property
    def text(self) -> str:
        if len(self.objects) == 1:
            return self.objects[0].phrase()
        joiner = self.relation or "and"
        return f"{self.objects[0].phrase()} {joiner} {self.objects[1].phrase()}"

    @property
    def task(self) -> str:
        if len(self.objects) == 1:
            obj = self.objects[0]
            if obj.count > 1:
                return "counting"
            return "colors" if obj.color else "single_object"
        if self.relation:
            return "position"
        return "color_attr" if any(o.color for o in self.objects) else "two_objects"

    @property
    def n_objects(self) -> int:
        return sum(o.count for o in self.objects)


def _number_word(n: int) -> str:
    for word, value in NUMBERS.items():
        if value == n:
            return word
    raise ValueError(f"count {n} has no number word; counts are 1..4")


def _grammar_help() -> str:
    return (
        "Valid forms: 'a [color] shape', 'two|three|four [color] shapes', "
        "'a [color] shape and a [color] shape', 'a [color] shape left of|right of|above|below a [color] shape'; "
        f"colors {list(COLORS)}, shapes {list(SHAPES)}."
    )


def _parse_object(words: list[str], text: str) -> ObjectSpec:
    if not words:
        raise ValueError(f"prompt {text!r}: an object phrase is empty. {_grammar_help()}")
    head, rest = words[0], words[1:]
    if head == "a":
        count = 1
    elif head in NUMBERS:
        count = NUMBERS[head]
    else:
        raise ValueError(f"prompt {text!r}: expected 'a' or a number word, got {head!r}. {_grammar_help()}")
    color = None
    if rest and rest[0] in COLORS:
        color, rest = rest[0], rest[1:]
    if len(rest) != 1:
        raise ValueError(f"prompt {text!r}: expected one shape noun after {words[:len(words) - len(rest)]}, got {rest}. {_grammar_help()}")
    noun = rest[0]
    if count == 1 and noun in SHAPES:
        return ObjectSpec(noun, color, 1)
    if count > 1 and noun in _SINGULAR:
        return ObjectSpec(_SINGULAR[noun], color, count)
    expected = "a singular shape" if count == 1 else "a plural shape"
    raise ValueError(f"prompt {text!r}: {noun!r} is not {expected}. {_grammar_help()}")


@functools.lru_cache(maxsize=65536)
def parse(text: str) -> PromptSpec:
    """Parse a prompt of the grammar; ValueError (naming the problem) for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a string, got {type(text).__name__}")
    words = text.strip().lower().split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise ValueError(f"prompt {text!r}: words {unknown} are not in the shapes vocabulary. {_grammar_help()}")
    for i, w in enumerate(words):
        rel = None
        if w == "and":
            rel, width = None, 1
        elif w in ("above", "below"):
            rel, width = w, 1
        elif w in ("left", "right") and i + 1 < len(words) and words[i + 1] == "of":
            rel, width = f"{w} of", 2
        else:
            continue
        first, second = _parse_object(words[:i], text), _parse_object(words[i + width:], text)
        if first.count > 1 or second.count > 1:
            raise ValueError(f"prompt {text!r}: two-object prompts take one of each ('a ...'). {_grammar_help()}")
        return PromptSpec((first, second), rel)
    return PromptSpec((_parse_object(words, text),))


# --- enumeration and splits ---------------------------------------------------------------

def _colored(color_options: tuple[str | None, ...]) -> list[tuple[str, str | None]]:
    return [(s, c) for s in SHAPES for c in color_options]


def task_space(task: str) -> list[PromptSpec]:
    """Every prompt of one task, in a canonical order."""
    colors: tuple[str | None, ...] = tuple(COLORS)
    if task == "single_object":
        return [PromptSpec((ObjectSpec(s, None, 1),)) for s in SHAPES]
    if task == "colors":
        return [PromptSpec((ObjectSpec(s, c, 1),)) for s, c in _colored(colors)]
    if task == "counting":
        return [PromptSpec((ObjectSpec(s, c, n),)) for n in NUMBERS.values() for s, c in _colored((None, *colors))]
    if task == "two_objects":
        return [PromptSpec((ObjectSpec(a, None, 1), ObjectSpec(b, None, 1))) for a, b in itertools.permutations(SHAPES, 2)]
    if task == "color_attr":
        return [
            PromptSpec((ObjectSpec(a, ca, 1), ObjectSpec(b, cb, 1)))
            for a, b in itertools.permutations(SHAPES, 2)
            for ca, cb in itertools.permutations(colors, 2)
        ]
    if task == "position":
        out = []
        for rel in RELATIONS:
            out += [PromptSpec((ObjectSpec(a, None, 1), ObjectSpec(b, None, 1)), rel) for a, b in itertools.permutations(SHAPES, 2)]
            for (a, ca), (b, cb) in itertools.permutations(_colored(colors), 2):
                out.append(PromptSpec((ObjectSpec(a, ca, 1), ObjectSpec(b, cb, 1)), rel))
        return out
    raise ValueError(f"unknown shapes task {task!r}; tasks are {list(TASKS)}")


@functools.lru_cache(maxsize=None)
def _splits() -> dict[str, tuple[Prompt, ...]]:
    out: dict[str, list[Prompt]] = {name: [] for name in SPLITS}
    for task in TASKS:
        space = [s.text for s in task_space(task)]
        random.Random(f"{_SPLIT_SEED}/{task}").shuffle(space)
        n_eval, n_train = _SPLIT_SIZES[task]
        train = [Prompt(t, task) for t in space[n_eval:n_eval + n_train]]
        n_val = _VALIDATION_SIZES[task]
        out["eval"] += [Prompt(t, task) for t in space[:n_eval]]
        out["train"] += train
        out["validation"] += train[n_train - n_val:]
        out["train-minus-validation"] += train[:n_train - n_val]
    return {k: tuple(v) for k, v in out.items()}


def prompt_split(name: str) -> list[Prompt]:
    """The fixed prompts of one split, grouped by task in TASKS order: "train" and "eval" (disjoint),
    "validation" (part of train) and "train-minus-validation" (the rest of train)."""
    splits = _splits()
    if name not in splits:
        raise ValueError(f"unknown shapes split {name!r}; splits are {', '.join(repr(s) for s in SPLITS)}")
    return list(splits[name])


@functools.lru_cache(maxsize=None)
def eval_texts() -> frozenset[str]:
    return frozenset(p.text for p in _splits()["eval"])


def random_prompt(rng: random.Random, task: str | None = None, allow_eval: bool = False) -> Prompt:
    """A random prompt of ``task`` (a uniformly random task if None), never a held-out eval
    prompt unless ``allow_eval``: training data must not see the eval split."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown shapes task {task!r}; tasks are {list(TASKS)}")
    held_out = frozenset() if allow_eval else eval_texts()
    chosen = task or rng.choice(TASKS)
    for _ in range(1000):
        text = _sample_spec(rng, chosen).text
        if text not in held_out:
            return Prompt(text, chosen)
    raise RuntimeError(f"could not draw a non-eval prompt for task {chosen!r}")  # unreachable in practice


def _sample_spec(rng: random.Random, task: str) -> PromptSpec:
    shapes, colors = list(SHAPES), list(COLORS)
    if task == "single_object":
        return PromptSpec((ObjectSpec(rng.choice(shapes), None, 1),))
    if task == "colors":
        return PromptSpec((ObjectSpec(rng.choice(shapes), rng.choice(colors), 1),))
    if task == "counting":
        color = rng.choice(colors) if rng.random() < 0.5 else None
        return PromptSpec((ObjectSpec(rng.choice(shapes), color, rng.choice(list(NUMBERS.values()))),))
    a, b = rng.sample(shapes, 2)
    if task == "two_objects":
        return PromptSpec((ObjectSpec(a, None, 1), ObjectSpec(b, None, 1)))
    if task == "color_attr":
        ca, cb = rng.sample(colors, 2)
        return PromptSpec((ObjectSpec(a, ca, 1), ObjectSpec(b, cb, 1)))
    # position: one in seven uncolored (GenEval's form), else both colored (objects may share a
    # shape when their colors differ)
    rel = rng.choice(RELATIONS)
    if rng.random() < 1 / 7:
        return PromptSpec((ObjectSpec(a, None, 1), ObjectSpec(b, None, 1)), rel)
    while True:
        oa = ObjectSpec(rng.choice(shapes), rng.choice(colors), 1)
        ob = ObjectSpec(rng.choice(shapes), rng.choice(colors), 1)
        if oa != ob:
            return PromptSpec((oa, ob), rel)

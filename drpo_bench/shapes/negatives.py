"""Hard negatives: a prompt changed in one respect so that its ground truth no longer fits.

Kinds (each returns None where it does not apply):

- ``count``: another count for a single group ("three blue squares" -> "two blue squares"),
  or a pair reduced to one of its objects ("a square and a circle" -> "a circle");
- ``color``: the two colors swapped between the objects (attribute binding), or one color
  replaced; uncolored prompts have none (any color is true of them);
- ``shape``: one shape replaced by a shape not already in the prompt;
- ``relation``: the inverse relation, or the other axis ("left of" -> "above").
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import replace

from drpo_bench.shapes.grammar import COLORS, INVERSE_RELATION, NUMBERS, RELATIONS, SHAPES, PromptSpec, parse

KINDS: tuple[str, ...] = ("count", "color", "shape", "relation")


def _count(spec: PromptSpec, rng: random.Random) -> PromptSpec | None:
    if len(spec.objects) == 2:
        return PromptSpec((rng.choice(spec.objects),))
    obj = spec.objects[0]
    counts = [n for n in (1, *NUMBERS.values()) if n != obj.count]
    return PromptSpec((replace(obj, count=rng.choice(counts)),))


def _color(spec: PromptSpec, rng: random.Random) -> PromptSpec | None:
    colored = [i for i, o in enumerate(spec.objects) if o.color]
    if not colored:
        return None
    objs = list(spec.objects)
    if len(colored) == 2 and objs[0].color != objs[1].color and objs[0].shape != objs[1].shape and rng.random() < 0.5:
        a, b = objs
        return replace(spec, objects=(replace(a, color=b.color), replace(b, color=a.color)))
    i = rng.choice(colored)
    taken = {o.color for o in objs if o.shape == objs[i].shape}
    objs[i] = replace(objs[i], color=rng.choice([c for c in COLORS if c not in taken]))
    return replace(spec, objects=tuple(objs))


def _shape(spec: PromptSpec, rng: random.Random) -> PromptSpec | None:
    objs = list(spec.objects)
    i = rng.randrange(len(objs))
    present = {o.shape for o in objs}
    objs[i] = replace(objs[i], shape=rng.choice([s for s in SHAPES if s not in present]))
    return replace(spec, objects=tuple(objs))


def _relation(spec: PromptSpec, rng: random.Random) -> PromptSpec | None:
    if not spec.relation:
        return None
    inverse = INVERSE_RELATION[spec.relation]
    other_axis = [r for r in RELATIONS if r not in (spec.relation, inverse)]
    return replace(spec, relation=inverse if rng.random() < 0.6 else rng.choice(other_axis))


_MAKERS = {"count": _count, "color": _color, "shape": _shape, "relation": _relation}


def hard_negative(text: str, kind: str, rng: random.Random, exclude: Collection[str] = ()) -> str | None:
    """A prompt differing from ``text`` in ``kind``, not in ``exclude``; None if none applies."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown negative kind {kind!r}; kinds are {list(KINDS)}")
    spec = parse(text)
    for _ in range(8):
        neg = _MAKERS[kind](spec, rng)
        if neg is None:
            return None
        if neg.text != spec.text and neg.text not in exclude:
            return neg.text
    return None


def hard_negatives(text: str, rng: random.Random, exclude: Collection[str] = ()) -> dict[str, str]:
    """One negative of each applicable kind: {kind: prompt}."""
    out = {}
    for kind in KINDS:
        neg = hard_negative(text, kind, rng, exclude)
        if neg is not None:
            out[kind] = neg
    return out

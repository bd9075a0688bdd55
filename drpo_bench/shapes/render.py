"""Ground-truth renderer: a prompt of the shapes grammar -> a 32x32 RGB image that satisfies it.

Black background; every object is an axis-aligned shape in its own box, boxes at least
``GAP`` pixels apart (so objects never touch), sizes drawn per image. Relations hold with a
dominant axis: for "A left of B" A's box lies wholly left of B's and the vertical offset of the
centers is at most half the horizontal one. Uncolored objects get a uniformly random palette
color each. Masks are cached per (shape, h, w), so rendering runs at thousands per second.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from drpo_bench.shapes.grammar import COLORS, RELATIONS, SHAPES, PromptSpec, parse

SIZE = 32  # image side, pixels
MARGIN = 1  # free border, pixels
GAP = 2  # minimum empty pixels between two objects' boxes
MIN_OBJECT = 6  # smallest object side, pixels: below this shapes stop being distinguishable
#: object side range (inclusive) by how many objects the image holds
_SIZE_RANGE = {1: (9, 16), 2: (8, 13), 3: (6, 10), 4: (6, 10)}
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (C, 3)
_COLOR_INDEX = {name: i for i, name in enumerate(COLORS)}


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """(h, w) bool mask of ``shape`` filling an h x w box (triangles point up)."""
    yy = (np.arange(h, dtype=np.float64)[:, None] + 0.5) - h / 2  # (h, 1) offsets from center
    xx = (np.arange(w, dtype=np.float64)[None, :] + 0.5) - w / 2  # (1, w)
    if shape == "square":
        mask = np.ones((h, w), dtype=bool)
    elif shape == "circle":
        mask = (yy / (h / 2)) ** 2 + (xx / (w / 2)) ** 2 <= 1.0 + 1e-9
    elif shape == "triangle":
        half_width = (np.arange(h)[:, None] + 1) / h * (w / 2)  # (h, 1): grows to w/2 at the base
        mask = np.abs(xx) <= half_width + 1e-9
    elif shape == "diamond":
        mask = np.abs(xx) / (w / 2) + np.abs(yy) / (h / 2) <= 1.0 + 1e-9
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes are {list(SHAPES)}")
    mask = np.broadcast_to(mask, (h, w)).copy()
    mask.flags.writeable = False
    return mask


def _relation_ok(rel: str, a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether box a=(y, x, s) stands in ``rel`` to box b, with a dominant axis."""
    (ya, xa, sa), (yb, xb, sb) = a, b
    dy = (yb + sb / 2) - (ya + sa / 2)  # b's center minus a's center
    dx = (xb + sb / 2) - (xa + sa / 2)
    if rel == "left of":
        return xa + sa + GAP <= xb and abs(dy) <= 0.5 * dx
    if rel == "right of":
        return xb + sb + GAP <= xa and abs(dy) <= 0.5 * -dx
    if rel == "above":
        return ya + sa + GAP <= yb and abs(dx) <= 0.5 * dy
    if rel == "below":
        return yb + sb + GAP <= ya and abs(dx) <= 0.5 * -dy
    raise ValueError(f"unknown relation {rel!r}; relations are {list(RELATIONS)}")


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    (ya, xa, sa), (yb, xb, sb) = a, b
    return xa + sa + GAP <= xb or xb + sb + GAP <= xa or ya + sa + GAP <= yb or yb + sb + GAP <= ya


def layout(spec: PromptSpec, rng: np.random.Generator) -> list[tuple[str, int, int, int, int]]:
    """Objects as (shape, color index, y, x, side): non-overlapping, relation satisfied."""
    items = [(o.shape, o.color) for o in spec.objects for _ in range(o.count)]
    n = len(items)
    lo, hi = _SIZE_RANGE[min(n, 4)]
    for attempt in range(200):
        if attempt and attempt % 50 == 0:  # crowded: shrink the range toward the minimum
            hi = max(MIN_OBJECT, hi - 2)
            lo = max(MIN_OBJECT, lo - 2)
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            s = int(rng.integers(lo, hi + 1))
            span = SIZE - 2 * MARGIN - s
            box = (MARGIN + int(rng.integers(0, span + 1)), MARGIN + int(rng.integers(0, span + 1)), s)
            if not all(_apart(box, other) for other in boxes):
                break
            boxes.append(box)
        if len(boxes) < n:
            continue
        if spec.relation and not _relation_ok(spec.relation, boxes[0], boxes[1]):
            continue
        out = []
        for (shape, color), (y, x, s) in zip(items, boxes):
            ci = _COLOR_INDEX[color] if color else int(rng.integers(len(_PALETTE)))
            out.append((shape, ci, y, x, s))
        return out
    raise RuntimeError(f"could not place the objects of {spec.text!r} in {SIZE}x{SIZE}")  # not seen in practice


def draw(objects: list[tuple[str, int, int, int, int]], out: np.ndarray) -> None:
    """Paint objects into ``out`` (3, SIZE, SIZE), which must be zero."""
    for shape, ci, y, x, s in objects:
        mask = shape_mask(shape, s, s)
        region = out[:, y:y + s, x:x + s]  # (3, s, s) view
        region[:, mask] = _PALETTE[ci][:, None]


def render_array(text: str, rng: np.random.Generator) -> np.ndarray:
    """(3, 32, 32) float32 numpy image of ``text`` in [0, 1]."""
    out = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    draw(layout(parse(text), rng), out)
    return out


def render(text: str, rng: np.random.Generator) -> torch.Tensor:
    """(3, 32, 32) float32 tensor in [0, 1]: a random ground-truth image of ``text``."""
    return torch.from_numpy(render_array(text, rng))


def render_batch(texts: Sequence[str], seed: int) -> torch.Tensor:
    """(B, 3, 32, 32) float32: ground truth for each text, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(texts), 3, SIZE, SIZE), dtype=np.float32)
    for i, text in enumerate(texts):
        draw(layout(parse(text), rng), out[i])
    return torch.from_numpy(out)

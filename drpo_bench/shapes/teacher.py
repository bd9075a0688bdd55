"""The noise-driven teacher that the shapes generator is distilled from.

A one-step generator has to turn each noise into one image. The renderer (``render.layout``)
places objects at random, independently of any noise, so regressing a generator onto rendered
images would teach it the average of all placements: blurred blobs. The teacher instead reads
the placement off the generator's own noise, deterministically, so that (noise, prompt) ->
image is a function a network can learn by plain regression, the way SD-Turbo is distilled
from a teacher sampler rather than fitted to data:

- noise channel 0, blurred (sigma one latent cell) and upsampled to 32x32, is a *potential*;
  the prompt's objects, in the order the prompt names them, take its highest points one after
  another, each where its box fits ``GAP`` pixels clear of the boxes already placed;
- for a relation ("A left of B") the teacher takes the highest point for one of the two and
  the highest point for the other where the relation holds, trying A first and B first and
  keeping the pair whose second point is higher;
- channel 1, treated the same way, gives each object's side (through the normal CDF, into the
  renderer's size range for that many objects), and channel 2 the palette color of an object
  the prompt leaves uncolored.

Every teacher image is ground truth: it satisfies its prompt exactly as a rendered image does
(the checker scores it 1.0, ``tests/test_shapes_teacher.py``). What the distilled generator gets
wrong is therefore what a small network gets wrong when it approximates this function: which of
two near-equal peaks is higher (a count or binding error), where exactly a peak is, colors of
two objects that it cannot tell apart. Those are the generator's headroom.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, zoom
from scipy.special import ndtr

from drpo_bench.shapes.grammar import PromptSpec, parse
from drpo_bench.shapes.render import _COLOR_INDEX, _SIZE_RANGE, GAP, MARGIN, SIZE, draw, layout

Objects = list[tuple[str, int, int, int, int]]  # (shape, color index, y, x, side), as render.layout

POTENTIAL, SIDE, COLOR = 0, 1, 2  # the noise channels the teacher reads
_BLUR = 1.0  # Gaussian blur of a noise channel, in latent cells: peaks a few pixels wide


def field(channel: np.ndarray) -> np.ndarray:
    """One (8, 8) noise channel -> a smooth (32, 32) field with unit standard deviation."""
    smooth = gaussian_filter(channel.astype(np.float64), sigma=_BLUR, mode="wrap")
    up = zoom(smooth, SIZE // channel.shape[-1], order=3, mode="grid-wrap")  # (32, 32)
    return up / max(float(up.std()), 1e-8)


def _relation_holds(rel: str, a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> np.ndarray:
    """Boxes a and b, each (y, x, side) arrays: where a stands in ``rel`` to b (render's rule)."""
    (ya, xa, sa), (yb, xb, sb) = a, b
    dy = (yb + sb / 2) - (ya + sa / 2)  # b's center minus a's
    dx = (xb + sb / 2) - (xa + sa / 2)
    if rel == "left of":
        return (xa + sa + GAP <= xb) & (np.abs(dy) <= 0.5 * dx)
    if rel == "right of":
        return (xb + sb + GAP <= xa) & (np.abs(dy) <= 0.5 * -dx)
    if rel == "above":
        return (ya + sa + GAP <= yb) & (np.abs(dx) <= 0.5 * dy)
    if rel == "below":
        return (yb + sb + GAP <= ya) & (np.abs(dx) <= 0.5 * -dy)
    raise ValueError(f"unknown relation {rel!r}")


def teacher_layout(spec: PromptSpec, noise: np.ndarray) -> Objects | None:
    """The objects the teacher draws for ``spec`` and one (C, 8, 8) noise; None where none fit."""
    items = [(o.shape, o.color) for o in spec.objects for _ in range(o.count)]
    lo, hi = _SIZE_RANGE[min(len(items), 4)]
    potential = field(noise[POTENTIAL]).ravel()  # (1024,)
    order = np.argsort(-potential, kind="stable")  # candidate centers, highest first
    cy, cx = np.divmod(order, SIZE)
    side = lo + np.minimum(hi - lo, (ndtr(field(noise[SIDE]).ravel()[order]) * (hi - lo + 1)).astype(int))
    ys = np.clip(cy - side // 2, MARGIN, SIZE - MARGIN - side)  # box corners, same order
    xs = np.clip(cx - side // 2, MARGIN, SIZE - MARGIN - side)

    def clear_of(boxes: Objects | list[tuple[int, int, int]]) -> np.ndarray:
        ok = np.ones(len(order), dtype=bool)
        for y, x, s in boxes:
            ok &= (xs + side + GAP <= x) | (x + s + GAP <= xs) | (ys + side + GAP <= y) | (y + s + GAP <= ys)
        return ok

    def box(i: int) -> tuple[int, int, int]:
        return int(ys[i]), int(xs[i]), int(side[i])

    first = box(0)
    if spec.relation:
        free = clear_of([first])
        as_b = np.flatnonzero(free & _relation_holds(spec.relation, first, (ys, xs, side)))  # A at the peak
        as_a = np.flatnonzero(free & _relation_holds(spec.relation, (ys, xs, side), first))  # B at the peak
        if not len(as_b) and not len(as_a):
            return None
        if len(as_b) and (not len(as_a) or as_b[0] <= as_a[0]):
            boxes = [first, box(as_b[0])]
        else:
            boxes = [box(as_a[0]), first]
    else:
        boxes = [first]
        for _ in items[1:]:
            free = np.flatnonzero(clear_of(boxes))
            if not len(free):
                return None
            boxes.append(box(free[0]))
    colors = field(noise[COLOR])
    out: Objects = []
    for (shape, color), (y, x, s) in zip(items, boxes):
        ci = _COLOR_INDEX[color] if color else min(5, int(ndtr(colors[y + s // 2, x + s // 2]) * 6))
        out.append((shape, ci, y, x, s))
    return out


def teacher_images(texts: Sequence[str], noise: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """(B, 3, 32, 32) teacher images for B prompts and (B, C, 8, 8) noise, and how many fell back.

    Where no placement fits (a crowded prompt on an unlucky field: about 1 in 500), the image is
    an ordinary random rendering from ``rng``: still ground truth, just not a function of the noise.
    """
    if noise.ndim != 4 or noise.shape[0] != len(texts) or noise.shape[1] <= COLOR:
        raise ValueError(f"teacher: expected ({len(texts)}, C>{COLOR}, 8, 8) noise, got {tuple(noise.shape)}")
    array = noise.detach().to("cpu", torch.float64).numpy()
    out = np.zeros((len(texts), 3, SIZE, SIZE), dtype=np.float32)
    fallbacks = 0
    for i, text in enumerate(texts):
        spec = parse(text)
        objects = teacher_layout(spec, array[i])
        if objects is None:
            fallbacks += 1
            objects = layout(spec, rng)
        draw(objects, out[i])
    return torch.from_numpy(out), fallbacks

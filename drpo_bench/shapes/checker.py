"""The shapes checker: which of a prompt's constraints an image satisfies, from pixels alone.

A black-box, non-differentiable program in the spirit of GenEval:

1. candidate pixels: a little bright (max channel > ``LOW_VALUE``) and saturated; each takes
   the palette color nearest in hue;
2. connected components (8-connectivity, ``labeling.label``) of the candidates; in each, the
   object is the part at least half as bright as its peak (the half-maximum contour is where a
   blurred edge belongs, whatever the blur or dimming); blobs whose peak is below
   ``VALUE_MIN`` are smudges; a part not dominated by one color (two touching objects) is
   split by color; specks below ``MIN_AREA`` pixels (at 32x32, scaled with the image area)
   are dropped;
3. each component's shape is the template (square, circle, triangle, diamond, drawn in the
   component's bounding box) of highest IoU with it, or "unknown" below ``MIN_IOU``;
4. constraints, per object group of the prompt: its shape is present; its color is present on
   that shape (if the prompt names one); the number of matching components is exact; then the
   relation (bounding-box centers, the named axis must dominate); and no extra objects.

The score is the fraction of constraints that hold, in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from drpo_bench.shapes.grammar import COLORS, SHAPES, ObjectSpec, PromptSpec, parse
from drpo_bench.shapes.labeling import find_objects, label
from drpo_bench.shapes.render import shape_mask

LOW_VALUE = 0.12  # max-channel brightness above which a pixel may belong to an object
VALUE_MIN = 0.25  # an object's brightest pixel must exceed this (dimmer blobs are smudges)
HALF_MAX = 0.4  # an object's pixels: at least this share of its brightest pixel (0.5 would cut blurred corners)
SATURATION_MIN = 0.35  # (max - min) / max above which a pixel is colored, not gray noise
MIN_AREA = 10  # pixels at 32x32: smaller components are specks (the smallest object has ~24)
DOMINANT = 0.75  # share of one color above which a component is one object
MIN_IOU = 0.5  # template IoU below which a component's shape is "unknown"
_COLOR_NAMES = tuple(COLORS)


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """(3, ...) RGB -> (...) hue in degrees [0, 360)."""
    r, g, b = rgb
    mx, mn = rgb.max(axis=0), rgb.min(axis=0)
    delta = np.maximum(mx - mn, 1e-6)
    hue = np.where(
        mx == r, ((g - b) / delta) % 6.0, np.where(mx == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0)
    )
    return hue * 60.0


_PALETTE_HUES = _hue_degrees(np.array(list(COLORS.values()), dtype=np.float64).T)  # (C,)


@dataclass(frozen=True)
class Component:
    shape: str  # one of SHAPES or "unknown"
    color: str  # one of COLORS
    cy: float  # bounding-box center, pixels
    cx: float
    area: int


def _classify_shape(crop: np.ndarray) -> str:
    """(h, w) bool mask cropped to its bounding box -> best-matching shape name."""
    h, w = crop.shape
    best, best_iou = "unknown", MIN_IOU
    area = crop.sum()
    for shape in SHAPES:
        template = shape_mask(shape, h, w)
        inter = np.logical_and(crop, template).sum()
        iou = inter / (area + template.sum() - inter)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def _offset(box: tuple[slice, slice], sub: tuple[slice, slice]) -> tuple[slice, slice]:
    """A bounding box inside ``box`` -> the same box in image coordinates."""
    return tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub))  # type: ignore[return-value]


def _pieces(mask: np.ndarray, box: tuple[slice, slice], colors: np.ndarray, min_area: int):
    """Connected parts of ``mask`` (a crop at ``box``) as (crop, box, color index); a part not
    dominated by one color (two touching objects) is split by color."""
    sub, m = label(mask)
    for j, sub_box in enumerate(find_objects(sub, m), start=1):
        part, part_box = sub[sub_box] == j, _offset(box, sub_box)
        part_colors = colors[sub_box]
        counts = np.bincount(part_colors[part], minlength=len(_COLOR_NAMES))
        if counts.max() >= DOMINANT * part.sum():
            yield part, part_box, int(counts.argmax())
            continue
        for c in np.flatnonzero(counts >= min_area):
            same, k = label(part & (part_colors == c))
            for i, same_box in enumerate(find_objects(same, k), start=1):
                yield same[same_box] == i, _offset(part_box, same_box), int(c)


def components(image: np.ndarray) -> list[Component]:
    """(3, H, W) float image in [0, 1] -> the objects it shows."""
    image = np.asarray(image, dtype=np.float32)
    mx, mn = image.max(axis=0), image.min(axis=0)
    candidate = (mx > LOW_VALUE) & ((mx - mn) > SATURATION_MIN * mx)  # (H, W): maybe an object
    if not candidate.any():
        return []
    hue = _hue_degrees(image)  # (H, W)
    diff = np.abs(hue[None] - _PALETTE_HUES[:, None, None])  # (C, H, W)
    color_index = np.minimum(diff, 360.0 - diff).argmin(axis=0)  # (H, W)
    min_area = max(3, round(MIN_AREA * image.shape[1] * image.shape[2] / 1024))
    labels, n = label(candidate)
    out: list[Component] = []
    for index, box in enumerate(find_objects(labels, n), start=1):
        region = labels[box] == index
        bright = mx[box]
        peak = float(bright[region].max())
        if region.sum() < min_area or peak < VALUE_MIN:
            continue
        core = region & (bright >= HALF_MAX * peak)  # the half-maximum contour: a blurred edge's true place
        for piece, (ys, xs), c in _pieces(core, box, color_index[box], min_area):
            area = int(piece.sum())
            if area < min_area:
                continue
            out.append(
                Component(
                    shape=_classify_shape(piece),
                    color=_COLOR_NAMES[c],
                    cy=(ys.start + ys.stop) / 2,
                    cx=(xs.start + xs.stop) / 2,
                    area=area,
                )
            )
    return out


def _matches(comp: Component, obj: ObjectSpec) -> bool:
    return comp.shape == obj.shape and (obj.color is None or comp.color == obj.color)


def _relation_holds(rel: str, a: Component, b: Component) -> bool:
    """Whether a stands in ``rel`` to b: offset along the named axis, which dominates."""
    dy, dx = b.cy - a.cy, b.cx - a.cx
    if rel == "left of":
        return dx >= 1 and dx > abs(dy)
    if rel == "right of":
        return -dx >= 1 and -dx > abs(dy)
    if rel == "above":
        return dy >= 1 and dy > abs(dx)
    if rel == "below":
        return -dy >= 1 and -dy > abs(dx)
    raise ValueError(f"unknown relation {rel!r}")


def constraints(spec: PromptSpec, comps: list[Component]) -> dict[str, bool]:
    """Each named constraint of ``spec`` -> whether ``comps`` satisfy it."""
    out: dict[str, bool] = {}
    for i, obj in enumerate(spec.objects):
        of_shape = [c for c in comps if c.shape == obj.shape]
        out[f"{i}:shape {obj.shape}"] = bool(of_shape)
        if obj.color:
            out[f"{i}:color {obj.color}"] = any(c.color == obj.color for c in of_shape)
            wanted = sum(o.count for o in spec.objects if o.shape == obj.shape and o.color == obj.color)
            found = sum(1 for c in of_shape if c.color == obj.color)
        else:  # an uncolored group counts every object of its shape
            wanted = sum(o.count for o in spec.objects if o.shape == obj.shape)
            found = len(of_shape)
        out[f"{i}:count {obj.count}"] = found == wanted
    if spec.relation:
        first, second = spec.objects
        out[f"relation {spec.relation}"] = any(
            _relation_holds(spec.relation, a, b)
            for a in comps
            if _matches(a, first)
            for b in comps
            if b is not a and _matches(b, second)
        )
    out[f"{spec.n_objects} objects in all"] = len(comps) == spec.n_objects
    return out


def _to_numpy(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"checker: expected an image (3, H, W), got shape {tuple(image.shape)}")
    return image


def check(image: torch.Tensor | np.ndarray, text: str) -> float:
    """Fraction of ``text``'s constraints that the (3, H, W) image in [0, 1] satisfies."""
    result = constraints(parse(text), components(_to_numpy(image)))
    return sum(result.values()) / len(result)


def check_batch(images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """(B, 3, H, W) images and B prompts -> (B,) float32 fractions of constraints satisfied."""
    if images.ndim != 4 or len(texts) != images.shape[0]:
        raise ValueError(f"checker: expected (B, 3, H, W) images and B prompts, got {tuple(images.shape)} and {len(texts)}")
    array = images.detach().to("cpu", torch.float32).numpy()
    return torch.tensor([check(array[i], t) for i, t in enumerate(texts)], dtype=torch.float32)

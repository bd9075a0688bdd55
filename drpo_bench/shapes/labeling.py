"""Connected components of small boolean masks, 8-connectivity (``scipy.ndimage``).

``label`` returns labels 1..n in raster order of each component's first pixel (0 for
background), ``find_objects`` one (row slice, column slice) bounding box per label: the
conventions of ``scipy.ndimage``, which does the work in C. (An earlier pure-Python run-length
union-find cost two thirds of the checker's time.)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours touch


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) bool -> ((H, W) int32 labels, number of components), 8-connectivity."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"label: expected a 2-D mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=_EIGHT)
    return labels.astype(np.int32, copy=False), int(n)


def find_objects(labels: np.ndarray, n: int) -> list[tuple[slice, slice]]:
    """Bounding box (rows, cols) of each label 1..n."""
    return [box for box in ndimage.find_objects(labels, max_label=n) if box is not None]

"""Connected components of small boolean masks, in numpy and plain Python (no scipy needed).

``label`` and ``find_objects`` follow ``scipy.ndimage``'s conventions with 8-connectivity:
labels 1..n in raster order of each component's first pixel, 0 for background; one
(row slice, column slice) bounding box per label. The mask is cut into horizontal runs, and
runs that touch a run of the row above (diagonals included) are merged with union-find: a few
hundred runs at most in a 32x32 image, so this costs tens of microseconds.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, start column and end column (exclusive) of every horizontal run, in raster order."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # (h, w + 1): +1 where a run starts, -1 one past its end
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return rows, starts, ends


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) bool -> ((H, W) int32 labels, number of components), 8-connectivity."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"label: expected a 2-D mask, got shape {mask.shape}")
    rows, starts, ends = _runs(mask)
    rows_l, starts_l, ends_l = rows.tolist(), starts.tolist(), ends.tolist()
    parent = list(range(len(rows_l)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    above_lo = above_hi = 0  # runs of the previous row: [above_lo, above_hi)
    k = 0
    while k < len(rows_l):
        row = rows_l[k]
        row_end = k
        while row_end < len(rows_l) and rows_l[row_end] == row:
            row_end += 1
        if above_hi > above_lo and rows_l[above_lo] != row - 1:
            above_lo = above_hi  # the previous row with runs is not adjacent
        for i in range(k, row_end):
            for j in range(above_lo, above_hi):
                # 8-connectivity: runs overlap once each is widened by one column
                if starts_l[j] <= ends_l[i] and starts_l[i] <= ends_l[j]:
                    a, b = find(i), find(j)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        above_lo, above_hi = k, row_end
        k = row_end
    labels = np.zeros(mask.shape, dtype=np.int32)
    names: dict[int, int] = {}
    for i in range(len(rows_l)):
        root = find(i)
        if root not in names:  # roots are each component's first run: raster order
            names[root] = len(names) + 1
        labels[rows_l[i], starts_l[i]:ends_l[i]] = names[root]
    return labels, len(names)


def find_objects(labels: np.ndarray, n: int) -> list[tuple[slice, slice]]:
    """Bounding box (rows, cols) of each label 1..n."""
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        out.append((slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)))
    return out

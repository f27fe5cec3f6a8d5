"""Compiled per-label statistics (numba), with the same results as the NumPy path.

The analyser's instance statistics need, for every label of a label image, its pixel count,
its sums over a few float32 maps and its bounding box. NumPy does that with one gather and one
``bincount`` per map and a ``find_objects`` pass for the boxes: each streams the whole tile
from memory again. :func:`label_sums` does it in one pass over the label image (ADR 0037).
Sums run in float64 in raster order, as ``bincount`` adds them, so the results are identical.

numba is optional: :func:`label_sums` is None where it does not import (the analyser then
takes the NumPy path, which the tests check against this one).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _label_sums_py(labels, n, maps):
    """``(area, sums, boxes)`` of labels ``1..n``: pixel count (float64), sums over each map in
    ``maps`` (a tuple of float32 arrays shaped like ``labels``; ``(n, len(maps))`` float64) and
    the box ``(x0, y0, x1, y1)`` (int64; zeros for a label with no pixel). Other label values
    are ignored."""
    h, w = labels.shape
    k = len(maps)
    area = np.zeros(n, np.float64)
    sums = np.zeros((n, k), np.float64)
    boxes = np.zeros((n, 4), np.int64)
    boxes[:, 0] = w
    boxes[:, 1] = h
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab <= 0 or lab > n:  # (never written out of bounds)
                continue
            i = lab - 1
            area[i] += 1.0
            for c in range(k):
                sums[i, c] += maps[c][y, x]
            if x < boxes[i, 0]:
                boxes[i, 0] = x
            if x + 1 > boxes[i, 2]:
                boxes[i, 2] = x + 1
            if y < boxes[i, 1]:
                boxes[i, 1] = y
            boxes[i, 3] = y + 1
    for i in range(n):
        if area[i] == 0:
            boxes[i, 0] = 0
            boxes[i, 1] = 0
    return area, sums, boxes


def _compile() -> Callable | None:
    try:
        import numba
    except ImportError:  # optional: the NumPy path does the same
        return None
    return numba.njit(cache=True, nogil=True)(_label_sums_py)


label_sums: Callable | None = _compile()

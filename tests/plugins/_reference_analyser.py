"""The analyser's segmentation and scoring written the straightforward way (the test oracle).

Same maths as :mod:`solardesk_spectral.analyser`, none of its tricks: the score map sums every
term in a Python loop, morphology is scipy.ndimage's, components come from
``skimage.measure.label``, and every per-instance statistic is computed in a Python loop per
component (``regionprops`` for area and means; shapely for the minimum rotated rectangle and
the convex hull of the union of the component's pixel squares).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from shapely import box, union_all
from skimage.measure import label, regionprops
from solardesk_spectral.analyser import INSTANCE_FEATURES, _disk, _pairs


def score_map(features: np.ndarray, fusion) -> np.ndarray:
    n = features.shape[0]
    z = np.full(features.shape[1:], fusion.pixel_bias, np.float64)
    for i in range(n):
        z += float(fusion.pixel_weights[i]) * features[i]
    for k, (i, j) in enumerate(_pairs(n), start=n):
        z += float(fusion.pixel_weights[k]) * features[i].astype(np.float64) * features[j]
    return 1.0 / (1.0 + np.exp(-z))


def segment(score: np.ndarray, valid, gsd: float, threshold: float):
    binary = score > threshold
    if valid is not None:
        binary &= valid
    fp = _disk(max(1, round(0.25 / gsd))).astype(bool)
    # OpenCV's default border leaves erosion and dilation unaffected by the outside.
    binary = ndimage.binary_dilation(ndimage.binary_erosion(binary, fp, border_value=1), fp)
    binary = ndimage.binary_erosion(ndimage.binary_dilation(binary, fp), fp, border_value=1)
    if valid is not None:
        binary &= valid
    labels = label(binary, connectivity=2)
    return labels, int(labels.max())


def instance_stats(labels, n, features, score, gsd):
    rows, boxes = [], []
    for region in regionprops(labels):
        rr, cc = region.coords[:, 0], region.coords[:, 1]
        area = len(rr)
        row = [score[rr, cc].mean()]
        row += [f[rr, cc].mean() for f in features]
        pixels = union_all(
            [box(c - 0.5, r - 0.5, c + 0.5, r + 0.5) for r, c in zip(rr, cc, strict=True)]
        )
        rect = pixels.minimum_rotated_rectangle
        xs, ys = rect.exterior.coords.xy
        sides = sorted(np.hypot(xs[k + 1] - xs[k], ys[k + 1] - ys[k]) for k in range(2))
        row.append(np.log10(max(area * gsd * gsd, 1e-3)))
        row.append(area / max(rect.area, 1.0))
        row.append(area / max(pixels.convex_hull.area, 1.0))
        row.append(np.log10(max(sides[1], 1.0) / max(sides[0], 1.0)))
        rows.append(row)
        r0, c0, r1, c1 = region.bbox
        boxes.append((c0, r0, c1, r1))
    X = np.array(rows).reshape(-1, len(INSTANCE_FEATURES))
    return X, np.array(boxes, np.int64).reshape(-1, 4)

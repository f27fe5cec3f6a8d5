"""The analyser's segmentation and scoring written the straightforward way (the test oracle).

Same maths as :mod:`solardesk_spectral.analyser`, none of its tricks: the score map sums every
term in a Python loop, morphology is scipy.ndimage's, components come from
``skimage.measure.label``, and every per-instance statistic is computed in a Python loop per
component (``regionprops`` for area and means; shapely for the minimum rotated rectangle and
the convex hull of the union of the component's pixel squares).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from shapely import box, union_all
from skimage.measure import label, regionprops

from solardesk_spectral.analyser import (
    CONFIDENCE_OFFSET,
    CONTRAST_BLUE_LEVELS,
    CONTRAST_CLOSE_M,
    CONTRAST_DARK_LEVELS,
    CONTRAST_MIN_GSD,
    CONTRAST_THRESHOLD,
    CONTRAST_WINDOW_M,
    CUE_CLOSE_M,
    CUE_THRESHOLDS,
    CUE_WEIGHTS,
    DETAIL_GRID_SIGMA_PX,
    DETAIL_SIGMA_M,
    FINE_MIN_DETAIL,
    FINE_MIN_PIXELS,
    FINE_PEAK_MAX_GSD,
    FINE_PEAK_TOP,
    FINE_PERIOD_M,
    FRAME_M,
    GABOR_WAIVE_FROM,
    GABOR_WAIVE_TO,
    GRID_DETAIL_M,
    GRID_GATE,
    GRID_MAX_GSD,
    GRID_MAX_PART,
    GRID_MIN_PAIRS,
    GRID_MIN_PARENT_M2,
    GRID_MIN_STRENGTH,
    GRID_OPEN_M,
    GRID_PITCHES_M,
    GRID_QUANT,
    GRID_SMOOTH,
    GRID_WINDOW,
    INSTANCE_FEATURES,
    MAGENTA_FRAME_RELIEF,
    MAGENTA_LEVELS,
    MERGE_GAP_M,
    MERGE_MIN_CONFIDENCE,
    ORIENT_FLOOR,
    ORIENT_MIN_ANGLE_DEG,
    ORIENT_MIN_COHERENCE,
    ORIENT_MIN_SHARE,
    ORIENT_SIGMA_M,
    OUTLINE_MAX_GROWTH,
    OUTLINE_MIN_CONFIDENCE,
    OUTLINE_MIN_GAIN,
    PENALTY_ONLY_CUES,
    PIXEL_FEATURES,
    SMALL_PENALTY,
    SMALL_PIXELS,
    SPLIT_GATE_IGNORES,
    SPLIT_MARGIN,
    SPLIT_MIN_CONFIDENCE,
    SPLIT_MIN_SEPARATION,
    SPLIT_MIN_STEP,
    SPLIT_OPEN_M,
    SUPPRESS_OVERLAP,
    TEXTURE_CUE_CLOSE_M,
    TEXTURE_CUE_THRESHOLD,
    TEXTURE_CUE_WEIGHTS,
    WATER_LEVELS,
    _disk,
    _pairs,
)
from solardesk_spectral.channels import SNAP_TOLERANCE


def score_map(features: np.ndarray, fusion) -> np.ndarray:
    n = features.shape[0]
    z = np.full(features.shape[1:], fusion.pixel_bias, np.float64)
    for i in range(n):
        z += float(fusion.pixel_weights[i]) * features[i]
    for k, (i, j) in enumerate(_pairs(n), start=n):
        z += float(fusion.pixel_weights[k]) * features[i].astype(np.float64) * features[j]
    return 1.0 / (1.0 + np.exp(-z))


def strong_edges(rgb: np.ndarray, gsd: float) -> np.ndarray:
    """Canny (OpenCV's: there is no simpler exact one) of the grey tile smoothed at 0.15 m."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (0, 0), max(0.15 / gsd, 0.7))
    return cv2.Canny(grey, 80, 200, L2gradient=True) > 0


def segment(score: np.ndarray, valid, gsd: float, threshold: float, edges=None, close_m=0.25):
    binary = score > threshold
    if valid is not None:
        binary &= valid
    fp = _disk(max(1, round(0.25 / gsd))).astype(bool)
    fc = _disk(max(1, round(close_m / gsd))).astype(bool)
    # OpenCV's default border leaves erosion and dilation unaffected by the outside.
    binary = ndimage.binary_dilation(ndimage.binary_erosion(binary, fp, border_value=1), fp)
    binary = ndimage.binary_erosion(ndimage.binary_dilation(binary, fc), fc, border_value=1)
    if valid is not None:
        binary &= valid
    if edges is None:
        labels = label(binary, connectivity=2)
        return labels, int(labels.max())
    labels = label(binary & ~edges, connectivity=1)
    n = int(labels.max())
    # Each masked pixel under an edge joins the largest label among its 3×3 neighbours (the
    # labels before any pixel went back: no chains).
    cut = labels.copy()
    for r, c in zip(*np.nonzero(binary & edges), strict=True):
        labels[r, c] = cut[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].max()
    return labels, n


def orientation_field(grey: np.ndarray, gsd: float):
    """Structure tensor of Sobel gradients, scipy.ndimage (mirror borders like OpenCV's)."""
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    gx = ndimage.correlate(grey, kx, mode="mirror")
    gy = ndimage.correlate(grey, kx.T, mode="mirror")
    sigma = max(ORIENT_SIGMA_M / gsd, 1.0)
    jxx, jyy, jxy = (
        ndimage.gaussian_filter(a, sigma, mode="mirror", truncate=4.0)
        for a in (gx * gx, gy * gy, gx * gy)
    )
    trace = jxx + jyy + ORIENT_FLOOR
    return (jxx - jyy) / trace, 2 * jxy / trace


def split_by_orientation(labels, n, field, gsd: float, min_pixels: float):
    """The orientation split, one region at a time (skimage regions, scipy filters)."""
    vx, vy = field
    out = labels.copy()
    next_label = n
    sigma = max(ORIENT_SIGMA_M / gsd, 1.0)
    for region in regionprops(labels):
        sl = region.slice
        comp = labels[sl] == region.label
        if comp.sum() < 2 * min_pixels:
            continue
        coh = np.hypot(vx[sl], vy[sl])
        coherent = comp & (coh >= ORIENT_MIN_COHERENCE)
        if coherent.sum() < ORIENT_MIN_SHARE * comp.sum():
            continue
        phi = np.arctan2(vy[sl][coherent], vx[sl][coherent])
        mean = np.arctan2(np.sin(phi).mean(), np.cos(phi).mean())
        centres = [mean - np.pi / 2, mean + np.pi / 2]
        first = None
        for _ in range(10):
            new = np.cos(phi - centres[0]) >= np.cos(phi - centres[1])
            if not new.any() or new.all():
                first = None
                break
            if first is not None and (new == first).all():
                break
            first = new
            centres = [
                np.arctan2(np.sin(phi[first]).mean(), np.cos(phi[first]).mean()),
                np.arctan2(np.sin(phi[~first]).mean(), np.cos(phi[~first]).mean()),
            ]
        if first is None:
            continue
        angle = np.degrees(abs(np.angle(np.exp(1j * (centres[0] - centres[1]))))) / 2
        if angle < ORIENT_MIN_ANGLE_DEG or min(first.sum(), (~first).sum()) < min_pixels:
            continue
        a = np.zeros(comp.shape)
        b = np.zeros(comp.shape)
        rows, cols = np.nonzero(coherent)
        a[rows[first], cols[first]] = 1
        b[rows[~first], cols[~first]] = 1
        side = ndimage.gaussian_filter(a, sigma, mode="mirror", truncate=4.0) >= (
            ndimage.gaussian_filter(b, sigma, mode="mirror", truncate=4.0)
        )
        view = out[sl]
        view[comp] = 0
        for part in (comp & side, comp & ~side):
            pieces = label(part, connectivity=1)
            for j in range(1, pieces.max() + 1):
                if (pieces == j).sum() >= min_pixels:
                    next_label += 1
                    view[pieces == j] = next_label
    # number the components in raster order of their first pixel
    order, seen = [], set()
    for v in out.ravel():
        if v and v not in seen:
            order.append(v)
            seen.add(v)
    relabelled = np.zeros_like(out)
    for k, v in enumerate(order, start=1):
        relabelled[out == v] = k
    return relabelled, len(order)


def _cie_a(colour) -> float:
    """CIE a* of one sRGB colour in 8-bit levels: sRGB gamma, XYZ, D65 white (OpenCV's
    documented constants), one channel at a time."""

    def linear(v: float) -> float:
        v = min(max(v / 255.0, 0.0), 1.0)
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    def f(t: float) -> float:
        return t ** (1.0 / 3.0) if t > 0.008856 else 7.787 * t + 16.0 / 116.0

    r, g, b = (linear(float(v)) for v in colour)
    x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.950456
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    return 500.0 * (f(x) - f(y))


def instance_stats(labels, n, features, score, gsd, rgb, valid=None):
    rows, boxes = [], []
    h, w = labels.shape
    r = max(1, round(FRAME_M / gsd))
    green = features[PIXEL_FEATURES.index("excess_green")]
    redness = rgb[..., 0].astype(np.float64) - rgb[..., 2]
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
        # The frame: every pixel of the grown box that is outside the box, one at a time.
        r0, c0, r1, c1 = region.bbox
        frame = [
            (y, x)
            for y in range(max(r0 - r, 0), min(r1 + r, h))
            for x in range(max(c0 - r, 0), min(c1 + r, w))
            if not (r0 <= y < r1 and c0 <= x < c1) and (valid is None or valid[y, x])
        ]
        frame_a = None
        if frame:
            ys, xs = np.array(frame).T
            row.append(green[ys, xs].mean())
            row.append(redness[ys, xs].mean() - redness[rr, cc].mean())
            frame_a = _cie_a(rgb[ys, xs].astype(np.float64).mean(axis=0))
        else:  # no frame: the outline is the tile's; shape and context not measured (ADR 0039)
            row[-3:] = [np.nan] * 3
            row += [np.nan, np.nan]
        row.append(np.nan)  # fine_power_share: measured on the survivors
        cyan = [
            min(int(rgb[y, x, 1]), int(rgb[y, x, 2])) - int(rgb[y, x, 0])
            for y, x in zip(rr, cc, strict=True)
        ]
        row.append(max(float(np.mean(cyan)) - WATER_LEVELS, 0.0))
        row.append(np.nan)  # fine_peak_share: with the fine power share
        relief = 0.0 if frame_a is None else MAGENTA_FRAME_RELIEF * max(frame_a, 0.0)
        a_in = _cie_a(rgb[rr, cc].astype(np.float64).mean(axis=0))
        row.append(max(a_in - relief - MAGENTA_LEVELS, 0.0))
        rows.append(row)
        boxes.append((c0, r0, c1, r1))
    X = np.array(rows).reshape(-1, len(INSTANCE_FEATURES))
    return X, np.array(boxes, np.int64).reshape(-1, 4)


def _optimal_dft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c that is at least ``n``."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _masked_mean(weighted: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """G(weighted) / G(weight) on a grid f times coarser (ADR 0052): zero-padded to whole
    f × f blocks, block means, the Gaussian of σ / f there (zeros outside), the ratio
    interpolated bilinearly back with pixel centres aligned and edges held."""
    f = max(1, int(sigma / DETAIL_GRID_SIGMA_PX * (1 + SNAP_TOLERANCE)))
    h, w = weighted.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f

    def coarse(x: np.ndarray) -> np.ndarray:
        padded = np.zeros((hh, ww))
        padded[:h, :w] = x
        blocks = padded.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
        return ndimage.gaussian_filter(blocks, sigma / f, mode="constant", truncate=4.0)

    ratio = coarse(weighted) / np.maximum(coarse(weight), 1e-6)
    if f == 1:
        return ratio

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) / f - 0.5
        lo = np.floor(src).astype(int)
        t = src - lo
        return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), t

    y0, y1, ty = taps(h, hh // f)
    x0, x1, tx = taps(w, ww // f)
    rows = ratio[y0] * (1 - ty)[:, None] + ratio[y1] * ty[:, None]
    return rows[:, x0] * (1 - tx) + rows[:, x1] * tx


def fine_power_stats(grey: np.ndarray, mask: np.ndarray, gsd: float) -> tuple[float, float]:
    """The eroded interior's detail power: its share at periods under FINE_PERIOD_M, and the
    share of that fine power in its strongest FINE_PEAK_TOP of bins (sorted, not partitioned;
    NaN above FINE_PEAK_MAX_GSD) — scipy.ndimage and numpy's FFT (``grey`` float64 crop,
    ``mask`` bool crop)."""
    nan = float("nan")
    inner = ndimage.binary_erosion(mask, np.ones((3, 3), bool), border_value=1)
    if inner.sum() < FINE_MIN_PIXELS:
        return nan, nan
    weight = inner.astype(np.float64)
    sigma = max(DETAIL_SIGMA_M / gsd, 2.0)
    detail = (grey - _masked_mean(grey * weight, weight, sigma)) * weight
    if np.sqrt((detail**2).sum() / inner.sum()) < FINE_MIN_DETAIL:
        return nan, nan
    h, w = detail.shape
    ny, nx = _optimal_dft_size(h), _optimal_dft_size(w)
    power = np.abs(np.fft.fft2(detail, s=(ny, nx))) ** 2
    fine_bins, coarse = [], 0.0
    for ky in range(ny):
        for kx in range(nx):
            if ky == 0 and kx == 0:
                continue
            fy = (ky if ky < (ny + 1) // 2 else ky - ny) / ny
            fx = (kx if kx < (nx + 1) // 2 else kx - nx) / nx
            if np.hypot(fy, fx) < gsd / FINE_PERIOD_M:
                coarse += power[ky, kx]
            else:
                fine_bins.append(power[ky, kx])
    fine = float(np.sum(fine_bins))
    if fine + coarse <= 0:
        return nan, nan
    share = fine / (fine + coarse)
    if gsd > FINE_PEAK_MAX_GSD or fine <= 0:
        return share, nan
    k = max(1, int(FINE_PEAK_TOP * len(fine_bins)))
    return share, float(np.sum(sorted(fine_bins)[-k:])) / fine


def fine_power_share(grey: np.ndarray, mask: np.ndarray, gsd: float) -> float:
    return fine_power_stats(grey, mask, gsd)[0]


def blue_tint(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.float64)
    excess = (f[..., 2] - np.maximum(f[..., 0], f[..., 1])) / (f.mean(axis=2) + 8.0)
    return np.clip(excess / 0.15, 0.0, 1.0)


def fine_texture(rgb: np.ndarray, gsd: float) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    # OpenCV's Gaussian: reflect-101 border ("mirror"), kernel radius 4σ for float input.
    blur = ndimage.gaussian_filter(grey, max(0.2 / gsd, 0.5), mode="mirror", truncate=4.0)
    energy = ndimage.gaussian_filter(
        np.abs(grey - blur), max(0.6 / gsd, 1.0), mode="mirror", truncate=4.0
    )
    return np.clip(energy / 12.0, 0.0, 1.0)


def pixel_features(rgb: np.ndarray, valid, gsd: float) -> np.ndarray:
    """The ten pixel features, every one from a straightforward implementation."""
    from tests.unit._reference_spectral import (
        ref_excess_green,
        ref_shadow_mask,
        reference_channels,
    )

    out = np.empty((10, *rgb.shape[:2]), np.float64)
    out[:6] = reference_channels(rgb, gsd, valid)
    out[6] = ref_excess_green(rgb, valid)
    out[7] = ref_shadow_mask(rgb, gsd, valid)
    out[8] = blue_tint(rgb)
    out[9] = fine_texture(rgb, gsd)
    if valid is not None:
        out[8:, ~valid] = 0
    return out


def cue_score(features: np.ndarray, weights=CUE_WEIGHTS) -> np.ndarray:
    """The unit-weighted cue sum, one named feature at a time."""
    z = np.zeros(features.shape[1:], np.float64)
    for name, w in weights.items():
        z += w * features[PIXEL_FEATURES.index(name)]
    return z


def contrast_map(rgb: np.ndarray, gsd: float, valid=None) -> np.ndarray:
    """ADR 0056: blue less red above, and grey below, their means over the (valid pixels of
    the) odd square of about CONTRAST_WINDOW_M around each pixel, mirrored at the edge; in
    float64 with SciPy's uniform filter."""
    import cv2

    w = round(float(CONTRAST_WINDOW_M / gsd)) | 1
    f = rgb.astype(np.float64)
    bmr = f[..., 2] - f[..., 0]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    v = np.ones(bmr.shape) if valid is None else valid.astype(np.float64)

    def mean(x):
        return ndimage.uniform_filter(x * v, w, mode="mirror") / np.maximum(
            ndimage.uniform_filter(v, w, mode="mirror"), 1e-6
        )

    return (bmr - mean(bmr)) / CONTRAST_BLUE_LEVELS + (mean(grey) - grey) / CONTRAST_DARK_LEVELS


def analyse_masks(rgb: np.ndarray, valid, gsd: float, settings, fusion) -> list:
    """(confidence, full mask) of every candidate the reference keeps, as the fast stage."""
    feats = pixel_features(rgb, valid, gsd)
    score = score_map(feats, fusion)
    edges = strong_edges(rgb, gsd) if settings.edge_cut else None
    hypotheses = [(score, settings.score_threshold, 0.25)]
    if settings.cue_segmentation:
        cues = cue_score(feats)
        hypotheses += [(cues, t, c) for t, c in zip(CUE_THRESHOLDS, CUE_CLOSE_M, strict=True)]
    if settings.texture_segmentation:
        textured = cue_score(feats, TEXTURE_CUE_WEIGHTS)
        hypotheses.append((textured, TEXTURE_CUE_THRESHOLD, TEXTURE_CUE_CLOSE_M))
    if settings.contrast_segmentation and gsd > CONTRAST_MIN_GSD:
        hypotheses.append((contrast_map(rgb, gsd, valid), CONTRAST_THRESHOLD, CONTRAST_CLOSE_M))
    candidates = []  # (-confidence, hypothesis, label, mask, statistics)
    field = None
    if settings.orientation_split:
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
        field = orientation_field(grey, gsd)
    for h, (hyp_score, threshold, close_m) in enumerate(hypotheses):
        labels, n = segment(hyp_score, valid, gsd, threshold, edges, close_m)
        if field is not None:
            labels, n = split_by_orientation(labels, n, field, gsd, settings.min_area_m2 / gsd**2)
        X, _ = instance_stats(labels, n, feats, score, gsd, rgb, valid)
        for i in range(n):
            area_m2 = 10 ** X[i, INSTANCE_FEATURES.index("log_area_m2")]
            if settings.min_area_m2 <= area_m2 <= settings.max_area_m2:
                candidates.append((-confidence(X[i], fusion, gsd), h, i, labels == i + 1, X[i]))
    if len(hypotheses) == 1:
        kept = [(m, x) for _, _, _, m, x in candidates]
    else:  # greedy suppression by confidence, whole-tile masks
        kept = []
        taken = np.zeros(rgb.shape[:2], bool)
        min_pixels = settings.min_area_m2 / (gsd * gsd)
        for _, _, _, m, x in sorted(candidates, key=lambda t: t[:3]):
            if (m & taken).sum() > SUPPRESS_OVERLAP * m.sum():
                continue
            # Its pixels that are neither taken nor 8-neighbours of taken ones; their largest
            # 8-connected part, which must keep most of the candidate and the smallest area.
            free = m & ~ndimage.binary_dilation(taken, np.ones((3, 3), bool))
            parts = label(free, connectivity=2)
            if parts.max() > 1:
                free = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
            if free.sum() < (1 - SUPPRESS_OVERLAP) * m.sum() or free.sum() < min_pixels:
                continue
            kept.append((free, x))
            taken |= free
    # Every survivor gets the spectral measure of its (final) mask, then its final confidence.
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    survivors = []
    for m, x in kept:
        x = x.copy()
        survivors.append((_final_confidence(grey, m, x, gsd, fusion), m, x))
    if settings.merge_fragments:
        survivors = merge_fragments(
            survivors, grey, feats, score, gsd, rgb, valid, settings, fusion
        )
    if settings.split_candidates:
        survivors = split_candidates(
            survivors, grey, feats, score, gsd, rgb, valid, settings, fusion
        )
    if settings.grid_split:
        survivors = split_by_module_grid(
            survivors, grey, feats, score, gsd, rgb, valid, settings, fusion
        )
    if settings.fill_outlines:
        survivors = fill_outlines(survivors, grey, feats, score, gsd, rgb, valid, settings, fusion)
    survivors = [(_capped_white(rgb, c, m), m, x) for c, m, x in survivors]
    return [(c, m) for c, m, _ in survivors if c >= settings.floor]


def _capped_white(rgb: np.ndarray, c: float, m: np.ndarray) -> float:
    """ADR 0045: at most 0.4 when more than a fifth of the pixels have all bands ≥ 240."""
    if c <= 0.4:
        return c
    pixels = rgb[m]
    white = sum(1 for px in pixels if min(int(v) for v in px) >= 240)
    return 0.4 if white > 0.2 * len(pixels) else c


def _final_confidence(grey, m, x, gsd, fusion) -> float:
    h, w = grey.shape
    rows, cols = np.nonzero(m)
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, h)
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, w)
    share, peak = fine_power_stats(grey[r0:r1, c0:c1], m[r0:r1, c0:c1], gsd)
    x[INSTANCE_FEATURES.index("fine_power_share")] = share
    x[INSTANCE_FEATURES.index("fine_peak_share")] = peak
    return confidence(x, fusion, gsd)


def _scored(mask, grey, feats, score, gsd, rgb, valid, settings, fusion):
    """``(confidence, statistics)`` of a new candidate ``mask`` (a merge, a split part, a hull),
    fine power share included; None when its area lies outside the limits."""
    x, _ = instance_stats(mask.astype(np.int32), 1, feats, score, gsd, rgb, valid)
    x = x[0]
    if (
        not settings.min_area_m2
        <= 10 ** x[INSTANCE_FEATURES.index("log_area_m2")]
        <= (settings.max_area_m2)
    ):
        return None
    return _final_confidence(grey, mask, x, gsd, fusion), x


def merge_fragments(survivors, grey, feats, score, gsd, rgb, valid, settings, fusion) -> list:
    """Groups of nearby confident survivors, each tried as one candidate (whole-tile masks)."""
    members = [k for k, (c, _, _) in enumerate(survivors) if c >= MERGE_MIN_CONFIDENCE]
    if len(members) < 2:
        return survivors
    union = np.zeros(grey.shape, bool)
    for k in members:
        union |= survivors[k][1]
    others = np.zeros(grey.shape, bool)
    for k, (_, m, _) in enumerate(survivors):
        if k not in members:
            others |= m
    fc = _disk(max(1, round(MERGE_GAP_M / 2 / gsd))).astype(bool)
    closed = ndimage.binary_erosion(ndimage.binary_dilation(union, fc), fc, border_value=1)
    if valid is not None:
        closed &= valid
    ring = ndimage.binary_dilation(others, np.ones((3, 3), bool))
    parts = label(closed, connectivity=2)
    replaced, added = set(), []
    for p in range(1, parts.max() + 1):
        group = [k for k in members if (survivors[k][1] & (parts == p)).any()]
        if len(group) < 2:
            continue
        merged = (parts == p) & ~(ring & ~union)
        if label(merged, connectivity=2).max() != 1:
            continue  # the ring cut it in two
        scored = _scored(merged, grey, feats, score, gsd, rgb, valid, settings, fusion)
        if scored is None:
            continue
        c, x = scored
        if c >= max(survivors[k][0] for k in group):
            replaced.update(group)
            added.append((c, merged, x))
    return [s for k, s in enumerate(survivors) if k not in replaced] + added


def _without_colour(c: float, x: np.ndarray, fusion) -> float:
    """The confidence ``c`` of a candidate with statistics ``x`` less the terms of the cues
    the split's gate ignores (each its weight times its standardised value)."""
    paid = 0.0
    for name in SPLIT_GATE_IGNORES:
        k = INSTANCE_FEATURES.index(name)
        if not np.isnan(x[k]):
            z = (x[k] - fusion.instance_mean[k]) / fusion.instance_std[k]
            paid += fusion.instance_weights[k] * z
    if paid >= 0 or c >= 1.0:
        return c
    return 1.0 / (1.0 + math.exp(-(math.log(c / (1.0 - c)) - paid))) if c > 0 else 0.0


def split_candidates(survivors, grey, feats, score, gsd, rgb, valid, settings, fusion) -> list:
    """Each survivor cut at skimage's Otsu level of its grey values; the parts more confident
    than it by the margin and with a fine power share at least its mean replace it (whole-tile
    masks, scipy morphology, skimage labels)."""
    from skimage.filters import threshold_otsu

    disk = _disk(max(1, round(SPLIT_OPEN_M / gsd))).astype(bool)
    out = []
    for c, m, x in survivors:
        values = grey[m]
        gate = _without_colour(c, x, fusion)
        if gate < max(settings.floor, SPLIT_MIN_CONFIDENCE) or values.min() == values.max():
            out.append((c, m, x))
            continue
        lo, hi = int(values.min()), int(values.max())
        counts = np.array([(values == v).sum() for v in range(lo, hi + 1)])
        level = threshold_otsu(hist=(counts, np.arange(lo, hi + 1)))
        upper = values > level
        share = upper.mean()
        step = values[upper].mean() - values[~upper].mean()
        if (
            step < SPLIT_MIN_STEP
            or share * (1 - share) * step**2 < SPLIT_MIN_SEPARATION * values.var()
        ):
            out.append((c, m, x))
            continue
        pieces = []
        for side in (m & (grey > level), m & (grey <= level)):
            opened = ndimage.binary_opening(side, disk, border_value=0)
            comps = label(opened, connectivity=2)
            pieces += [comps == k for k in range(1, comps.max() + 1)]
        out.extend(
            _verified(c, m, x, pieces, grey, feats, score, gsd, rgb, valid, settings, fusion)
        )
    return out


def _verified(
    c,
    m,
    x,
    pieces,
    grey,
    feats,
    score,
    gsd,
    rgb,
    valid,
    settings,
    fusion,
    gate=True,
    together=False,
) -> list:
    """The survivors that replace survivor ``(c, m, x)`` after a split into ``pieces`` (whole-
    tile masks, in order): those of at least the smallest area and within the area limits,
    more confident than it by SPLIT_MARGIN and (with ``gate``) with a fine power share at least
    the fusion's mean — with ``together`` also all those more confident than it when there are
    two or more — taken by falling confidence unless touching one taken before, then its other
    pieces within the area limits of at least the storage floor on the same terms; or it
    alone."""
    min_pixels = settings.min_area_m2 / (gsd * gsd)
    parts, every = [], []
    for part in pieces:
        if part.sum() < min_pixels:
            continue
        scored = _scored(part, grey, feats, score, gsd, rgb, valid, settings, fusion)
        if scored is None:
            continue
        cp, xp = scored
        every.append((cp, len(every), part, xp))
        # the texture gate (ADR 0038): a measured fine power share at least the mean
        fine = xp[INSTANCE_FEATURES.index("fine_power_share")]
        textured = (
            not np.isnan(fine)
            and fine >= fusion.instance_mean[INSTANCE_FEATURES.index("fine_power_share")]
        )
        if textured or not gate:
            parts.append(every[-1])
    z = np.log(c / (1 - c))
    peers = [p for p in parts if np.log(p[0] / (1 - p[0])) > z]
    if together and len(peers) >= 2:
        parts = peers
    else:
        parts = [p for p in parts if np.log(p[0] / (1 - p[0])) > z + SPLIT_MARGIN]
    if not parts:
        return [(c, m, x)]
    chosen = {p[1] for p in parts}
    rest = [p for p in every if p[1] not in chosen and p[0] >= settings.floor]
    taken = np.zeros(m.shape, bool)
    accepted = []
    for group in (parts, rest):
        for cp, _, part, xp in sorted(group, key=lambda t: (-t[0], t[1])):
            if (ndimage.binary_dilation(taken, np.ones((3, 3), bool)) & part).any():
                continue
            taken |= part
            accepted.append((cp, part, xp))
    return accepted


def _grid_lag(d: np.ndarray, m: np.ndarray, kx: int, ky: int) -> float:
    """The detail's autocorrelation at integer lag ``(kx, ky)`` over the mask: the sum of
    d(p)·d(p + k) over pixel pairs both in the box, by the number of pairs both in the mask,
    by the detail's variance; 0 where fewer than GRID_MIN_PAIRS of the mask's pixels pair."""
    h, w = d.shape
    if abs(kx) >= w or abs(ky) >= h:
        return 0.0
    a = d[max(0, -ky) : h - max(0, ky), max(0, -kx) : w - max(0, kx)]
    b = d[max(0, ky) : h - max(0, -ky), max(0, kx) : w - max(0, -kx)]
    ma = m[max(0, -ky) : h - max(0, ky), max(0, -kx) : w - max(0, kx)]
    mb = m[max(0, ky) : h - max(0, -ky), max(0, kx) : w - max(0, -kx)]
    n = m.sum()
    pairs = (ma * mb).sum()
    if pairs < GRID_MIN_PAIRS * n:
        return 0.0
    return float((a * b).sum() / max(pairs, 1.0) / max((d * d).sum() / n, 1e-6))


def _grid_at(d, m, x: float, y: float) -> float:
    """:func:`_grid_lag` read at a real lag, bilinear between the four integer lags."""
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    return (
        _grid_lag(d, m, x0, y0) * (1 - fx) * (1 - fy)
        + _grid_lag(d, m, x0 + 1, y0) * fx * (1 - fy)
        + _grid_lag(d, m, x0, y0 + 1) * (1 - fx) * fy
        + _grid_lag(d, m, x0 + 1, y0 + 1) * fx * fy
    )


def module_grid(grey: np.ndarray, m: np.ndarray, gsd: float) -> tuple[float, float, float]:
    """(strength, direction, pitch in pixels) of the module grid in ``grey`` inside ``m``
    (a box's grey values and mask), each lag summed directly."""
    gx = ndimage.sobel(grey, axis=1, mode="mirror")[m]
    gy = ndimage.sobel(grey, axis=0, mode="mirror")[m]
    theta = 0.5 * math.atan2(2 * (gx * gy).sum(), (gx * gx).sum() - (gy * gy).sum())
    d = grey - _gauss_reflect(grey, max(GRID_DETAIL_M / gsd, 1.0))
    d = (d - d[m].mean()) * m
    first, last, step = GRID_PITCHES_M
    pitches = [(first + step * k) / gsd for k in range(math.floor((last - first) / step + 0.5) + 1)]
    best = (-math.inf, theta, pitches[0])
    for direction in (theta, theta + math.pi / 2):
        c, s_ = math.cos(direction), math.sin(direction)
        for pitch in pitches:
            strength = _grid_at(d, m, pitch * c, pitch * s_) - _grid_at(
                d, m, pitch * c / 2, pitch * s_ / 2
            )
            if strength > best[0]:
                best = (strength, direction, pitch)
    return best


def _gauss_reflect(img, sigma):
    return ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=4.0)


def _odd(x: float) -> int:
    return max(3, math.floor(x + 0.5) // 2 * 2 + 1)


def grid_map(grey: np.ndarray, direction: float, pitch: float) -> np.ndarray:
    """The local grid correlation at one pitch less that at half a pitch, smoothed (scipy
    shifts and uniform filters)."""
    d = grey - _gauss_reflect(grey, max(pitch / 3, 1.0))
    window = _odd(GRID_WINDOW * pitch)

    def correlation(lag: float) -> np.ndarray:
        dx, dy = lag * math.cos(direction), lag * math.sin(direction)
        a = ndimage.shift(d, (dy / 2, dx / 2), order=1, mode="reflect")
        b = ndimage.shift(d, (-dy / 2, -dx / 2), order=1, mode="reflect")

        def box(v):
            return ndimage.uniform_filter(v, window, mode="reflect")

        # running-sum filters can return a hair below 0 for a sum of squares: clamp
        power = np.maximum(box(a * a), 0) * np.maximum(box(b * b), 0)
        return box(a * b) / (np.sqrt(power) + 1e-3)

    g = correlation(pitch) - correlation(pitch / 2)
    return ndimage.uniform_filter(g, _odd(GRID_SMOOTH * pitch), mode="reflect")


def split_by_module_grid(survivors, grey, feats, score, gsd, rgb, valid, settings, fusion) -> list:
    """Each large survivor cut where its module grid is (ADR 0041), the parts verified as in
    :func:`split_candidates` (whole-tile masks, skimage's Otsu and labels, scipy morphology)."""
    from skimage.filters import threshold_otsu

    if gsd > GRID_MAX_GSD:
        return survivors
    disk = _disk(max(1, round(GRID_OPEN_M / gsd))).astype(bool)
    out = []
    for c, m, x in survivors:
        area = 10 ** x[INSTANCE_FEATURES.index("log_area_m2")]
        if c < settings.floor or area < GRID_MIN_PARENT_M2:
            out.append((c, m, x))
            continue
        rows, cols = np.nonzero(m)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        mb = m[box]
        strength, direction, pitch = module_grid(grey[box], mb, gsd)
        if strength < GRID_MIN_STRENGTH:
            out.append((c, m, x))
            continue
        g = grid_map(grey[box], direction, pitch)
        q = np.clip((g + 1.0) * GRID_QUANT, 0, 255).astype(np.uint8)
        values = q[mb]
        if values.min() == values.max():
            out.append((c, m, x))
            continue
        lo, hi = int(values.min()), int(values.max())
        counts = np.array([(values == v).sum() for v in range(lo, hi + 1)])
        level = threshold_otsu(hist=(counts, np.arange(lo, hi + 1)))
        side = np.zeros(m.shape, bool)
        side[box] = mb & (q > level)
        comps = label(ndimage.binary_opening(side, disk, border_value=0), connectivity=2)
        pieces = [comps == k for k in range(1, comps.max() + 1)]
        pieces = [p for p in pieces if p.sum() <= GRID_MAX_PART * m.sum()]
        out.extend(
            _verified(
                c,
                m,
                x,
                pieces,
                grey,
                feats,
                score,
                gsd,
                rgb,
                valid,
                settings,
                fusion,
                GRID_GATE,
                together=True,
            )
        )
    return out


def convex_hull_mask(m: np.ndarray) -> np.ndarray | None:
    """The pixels whose centres lie in the convex hull of ``m``'s pixel centres (qhull, a
    half-plane test per facet of every pixel), or None when the hull has no area."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.argwhere(m)[:, ::-1].astype(np.float64)  # (x, y)
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return None
    rows, cols = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    normals, offsets = hull.equations[:, :2], hull.equations[:, 2]
    inside = (centres @ normals.T + offsets <= 1e-9).all(axis=1)
    return inside.reshape(m.shape)


def fill_outlines(survivors, grey, feats, score, gsd, rgb, valid, settings, fusion) -> list:
    """Each confident survivor's convex hull, less the pixels next to any other survivor's
    reach (its hull when it is confident enough to get one, else its mask) and of no data,
    takes its place when it grows it by more than OUTLINE_MIN_GAIN, at most OUTLINE_MAX_GROWTH
    times, within the area limits, and is more confident (whole-tile masks, qhull, scipy
    morphology); the confidence stays the survivor's."""
    least = max(settings.floor, OUTLINE_MIN_CONFIDENCE)
    hulls = [convex_hull_mask(m) if c >= least else None for c, m, _ in survivors]
    reach = [m if h is None else h for (_, m, _), h in zip(survivors, hulls, strict=True)]
    out = []
    for k, (c, m, x) in enumerate(survivors):
        if hulls[k] is None:
            out.append((c, m, x))
            continue
        others = np.zeros(m.shape, bool)
        for j, r in enumerate(reach):
            if j != k:
                others |= r
        part = hulls[k] & ~ndimage.binary_dilation(others, np.ones((3, 3), bool))
        if valid is not None:
            part &= valid
        if not (1 + OUTLINE_MIN_GAIN) * m.sum() < part.sum() <= OUTLINE_MAX_GROWTH * m.sum():
            out.append((c, m, x))
            continue
        scored = _scored(part, grey, feats, score, gsd, rgb, valid, settings, fusion)
        if scored is None:
            out.append((c, m, x))
            continue
        cp, xp = scored
        with np.errstate(divide="ignore"):  # a confidence of 1.0 is beaten by none
            beats = np.log(cp / (1 - cp)) > np.log(c / (1 - c))
        if beats:
            out.append((c, part, xp))
        else:
            out.append((c, m, x))
    return out


def confidence(x: np.ndarray, fusion, gsd: float) -> float:
    """Logistic of the weighted standardised statistics; a NaN one (not measured) adds 0, a
    penalty-only cue adds at most 0, the Gabor energy penalty shrinks linearly from whole
    at a fine peak share of GABOR_WAIVE_FROM to nothing at GABOR_WAIVE_TO, and a candidate of
    fewer than SMALL_PIXELS pixels loses SMALL_PENALTY per halving."""
    z = fusion.instance_bias + CONFIDENCE_OFFSET
    pixels = 10 ** x[INSTANCE_FEATURES.index("log_area_m2")] / gsd**2
    if pixels < SMALL_PIXELS:
        z -= SMALL_PENALTY * math.log2(SMALL_PIXELS / pixels)
    for k, value in enumerate(x):
        if not np.isnan(value):
            term = (
                fusion.instance_weights[k]
                * (value - fusion.instance_mean[k])
                / fusion.instance_std[k]
            )
            if INSTANCE_FEATURES[k] in PENALTY_ONLY_CUES:
                term = min(term, 0.0)
            if INSTANCE_FEATURES[k] == "mean_gabor_energy":  # waived by a module grid
                peak = x[INSTANCE_FEATURES.index("fine_peak_share")]
                if not np.isnan(peak):
                    ramp = (peak - GABOR_WAIVE_FROM) / (GABOR_WAIVE_TO - GABOR_WAIVE_FROM)
                    term *= 1.0 - min(max(ramp, 0.0), 1.0)
            z += term
    return float(1.0 / (1.0 + np.exp(-z)))

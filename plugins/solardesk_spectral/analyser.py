"""The label-free panel analyser: six channels → fused score map → instances with confidence.

Per tile:

1. **Features**: the six channels of :mod:`solardesk_spectral.channels` plus two rejection
   cues, excess green (vegetation) and a cast-shadow mask.
2. **Fusion**: a per-pixel logistic model of the eight features (with their pairwise
   products, so a texture cue can count only where the colour is panel-like) gives a score
   map in [0, 1]. Its weights are *learned on synthetic scenes* whose truth is known
   (:mod:`solardesk_spectral.learn`; ``fusion.json``); nothing learned from real labelled
   imagery ships.
3. **Segmentation**: threshold, a small opening and closing sized in metres, then (by
   default) a cut along the tile's strong edges (Canny on the grey tile smoothed at 0.15 m)
   so that an array that scores like its roof is not merged with it, then connected
   components; the cut pixels go back to a neighbouring component. Components outside the
   plausible panel area (m²) are dropped.
4. **Confidence**: the logistic of a unit-weighted, signed sum of each instance's size in m²,
   rectangularity (area over its minimum rotated rectangle), solidity, its mean vegetation,
   shadow, Gabor energy and Gabor coherence, and two cues of the frame around it (its excess
   green; how much redder it is than the candidate), how cyan it is (water, a hinge with a
   fixed scale; ADR 0027) and how far its mean colour leans to magenta (CIE a*: blue cars,
   tarpaulins, pool covers, courts; a hinge with a fixed scale, ADR 0053), each standardised
   by its spread over synthetic candidates, plus a tuned offset (:data:`CONFIDENCE_OFFSET`);
   the signs are those real imagery shows (``learn.CONFIDENCE_CUES``), and texture only
   counts against a candidate (:data:`PENALTY_ONLY_CUES`, ADR 0028). The other appearance
   means are left out (they do not rank panels the same way on real imagery, ADRs 0008,
   0017) and computed only for the stored candidates, over the pixels each keeps. With
   ``cue_segmentation`` a second segmentation of a unit-weighted cue sum adds candidates, and
   overlapping ones are suppressed by confidence (ADR 0009).
5. **Verification**: each candidate that survives suppression gets two more cues from its
   interior's detail power (2-D DFT): the share at periods under 2.5 m (an array is uniform at
   coarser scales; ADR 0018) and, where the module grid is resolved (≤ 0.2 m), the share of
   that fine power in its strongest 1 % of frequencies (a grid's harmonics; ADR 0032); then its
   final confidence. Survivors within 1 m of each other are then
   tried as one candidate, which replaces them when it is at least as confident as the best
   of them (:func:`merge_fragments`, ADR 0026). With ``split_candidates`` (on by default) a
   candidate whose grey values form two distinct classes is cut at its Otsu level and replaced
   by a part that is clearly more confident and shows fine detail (:func:`split_candidates`,
   ADRs 0029, 0038). With ``grid_split`` (on by default), where modules are resolved, a
   candidate of 100 m² or more that holds one grid of modules (pitch and direction found by
   the autocorrelation of its detail) is cut where that grid is and replaced by a part that is
   clearly more confident (:func:`split_by_module_grid`, ADR 0041). Candidates at
   or above the storage floor are returned; the pseudo-label threshold is applied at read time.
6. **Coarser pass** (setting ``coarse_pass``, off by default; ADR 0044): on imagery of 0.2 m or
   finer the tile is also analysed three times coarser, and those candidates join the tile's
   own where they share no pixel with a more confident one (:func:`analyse_tile`).
7. **Relative-colour segmentation** (setting ``contrast_segmentation``, off by default; ADR
   0056): on imagery coarser than 0.2 m a further segmentation of where the tile is darker
   and bluer than the roof around it (:func:`contrast_map`) adds candidates to the others.

Every weighed per-instance mean is computed for all components at once (one ``bincount`` per
statistic); shapes from each component's hull, computed exactly (ADR 0050);
``tests/plugins/_reference_analyser.py`` computes the same maths with a Python loop per
component, scikit-image ``regionprops`` and shapely, as the oracle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from solardesk_spectral.channels import CHANNEL_NAMES, SNAP_TOLERANCE, _compiled, compute_channels

FUSION_FILE = Path(__file__).with_name("fusion.json")

PIXEL_FEATURES = (*CHANNEL_NAMES, "excess_green", "shadow", "blue_tint", "fine_texture")
INSTANCE_FEATURES = (
    "mean_score",
    *(f"mean_{n}" for n in PIXEL_FEATURES),
    "log_area_m2",
    "rectangularity",
    "solidity",
    "log_elongation",
    "frame_excess_green",
    "frame_redness",
    "fine_power_share",
    "water_excess",
    "fine_peak_share",
    "magenta_excess",
)

#: Width of the frame around a candidate's bounding box whose colour is its context.
FRAME_M = 1.0

#: Water (swimming pools, ponds) is cyan: green and blue both well above red. ``water_excess``
#: is how far a candidate's mean ``min(G, B) - R`` (8-bit levels) lies above WATER_LEVELS, 0 below
#: it; the confidence takes one log-odds off per WATER_SCALE levels of it (a fixed scale, not
#: learned: the synthetic scenes hold no water). Blue-grey and deep-blue panels lie below the
#: hinge (median 10-16 levels on the shared data). Chosen on the even half (ADR 0027).
WATER_LEVELS = 20.0
WATER_SCALE = 20.0

#: Blue cars, tarpaulins, pool covers, painted courts and red roofs lean to magenta: CIE a*
#: above 0. Crystalline panels reflect the sky blue-grey to cyan-grey, with a* at or below 0
#: (95 % of the matched candidates on the shared data at a* ≤ 0.6-1.0). ``magenta_excess`` is
#: how far the a* of a candidate's mean colour (sRGB, D65, :func:`mean_colour_a`) lies above
#: MAGENTA_LEVELS, 0 below it; the confidence takes one log-odds off per MAGENTA_SCALE units
#: of it (a fixed scale: the synthetic scenes hold no such look-alikes). A small array on a
#: red tiled roof takes some of the roof's colour at its edges: MAGENTA_FRAME_RELIEF times the
#: a* of the frame around the candidate (:data:`FRAME_M`), where that is positive, is taken
#: off first. Chosen on the even half of the shared data among hinges 0-4, scales 0.5-4 and
#: reliefs 0-1 (ADR 0053).
MAGENTA_LEVELS = 1.0
MAGENTA_SCALE = 1.0
MAGENTA_FRAME_RELIEF = 0.5

#: The interior detail of a candidate is its grey level less its local mean inside the
#: candidate (a Gaussian of DETAIL_SIGMA_M metres, normalised by the mask); ``fine_power_share``
#: is the share of that detail's power (its 2-D Fourier spectrum) at periods shorter than
#: FINE_PERIOD_M metres. Chosen on the even half of the shared real data (ADR 0018).
DETAIL_SIGMA_M = 1.0
FINE_PERIOD_M = 2.5
#: The local mean is computed on a grid ``f = max(1, ⌊σ / DETAIL_GRID_SIGMA_PX⌋)`` times coarser
#: than the tile (σ in tile pixels; within SNAP_TOLERANCE under a whole multiple counts as it),
#: where σ still spans at least this many pixels: block means, the Gaussian there, bilinear back
#: (ADR 0052). At 0.14 m σ = 1 m is 7.2 pixels and f = 2; at 0.2 m and coarser f = 1.
DETAIL_GRID_SIGMA_PX = 3.0
#: Fewer eroded interior pixels than this, or detail whose root mean square is below
#: FINE_MIN_DETAIL grey levels (a flat or saturated surface): the share is not measured (NaN,
#: a neutral cue).
FINE_MIN_PIXELS = 30
FINE_MIN_DETAIL = 0.5
#: ``fine_peak_share`` (ADR 0032): the share of that fine detail power held by its strongest
#: FINE_PEAK_TOP of frequency bins. A module grid puts its power into a few harmonics of its
#: pitch; shade edges, roof texture and noise spread theirs. Measured only where the grid can be
#: resolved, at ground resolutions up to FINE_PEAK_MAX_GSD (the ≈ 1 m module pitch at least five
#: pixels); coarser imagery leaves it NaN (neutral). The confidence adds one log-odds per
#: FINE_PEAK_SCALE above FINE_PEAK_MEAN (a fixed scale: the synthetic scenes' module grids are
#: cleaner than real ones). Chosen on the even half of the shared data.
FINE_PEAK_TOP = 0.01
FINE_PEAK_MAX_GSD = 0.2
FINE_PEAK_MEAN = 0.5
FINE_PEAK_SCALE = 0.25
_FINE_COLS = [
    INSTANCE_FEATURES.index("fine_power_share"),
    INSTANCE_FEATURES.index("fine_peak_share"),
]


@dataclass(frozen=True)
class Fusion:
    """The two learned logistic models (pixel score map, instance confidence)."""

    pixel_weights: np.ndarray  # (n_pixel_terms,) for [features, pairwise products]
    pixel_bias: float
    instance_mean: np.ndarray  # standardisation of instance features
    instance_std: np.ndarray
    instance_weights: np.ndarray
    instance_bias: float
    meta: dict

    def to_json(self) -> dict:
        return {
            "pixel_features": list(PIXEL_FEATURES),
            "instance_features": list(INSTANCE_FEATURES),
            "pixel_weights": [float(v) for v in self.pixel_weights],
            "pixel_bias": float(self.pixel_bias),
            "instance_mean": [float(v) for v in self.instance_mean],
            "instance_std": [float(v) for v in self.instance_std],
            "instance_weights": [float(v) for v in self.instance_weights],
            "instance_bias": float(self.instance_bias),
            "meta": self.meta,
        }

    def without(self, *cues: str) -> Fusion:
        """This fusion with the instance weights of ``cues`` set to 0 (they count for nothing)."""
        weights = self.instance_weights.copy()
        weights[[INSTANCE_FEATURES.index(c) for c in cues]] = 0.0
        return replace(self, instance_weights=weights)

    @classmethod
    def from_json(cls, d: dict) -> Fusion:
        if (
            tuple(d["pixel_features"]) != PIXEL_FEATURES
            or tuple(d["instance_features"]) != INSTANCE_FEATURES
        ):
            raise ValueError("fusion.json was learned for other features; rerun the learning")
        return cls(
            np.asarray(d["pixel_weights"], np.float32),
            float(d["pixel_bias"]),
            np.asarray(d["instance_mean"], np.float64),
            np.asarray(d["instance_std"], np.float64),
            np.asarray(d["instance_weights"], np.float64),
            float(d["instance_bias"]),
            dict(d.get("meta", {})),
        )


def init_worker() -> None:
    """Per-process set-up for pre-compute workers: one OpenCV thread (the pool is the
    parallelism) and an allocator that keeps tile-sized buffers instead of returning them to
    the kernel after every tile (see :func:`solardesk_spectral.channels.tune_allocator`)."""
    from solardesk_spectral.channels import tune_allocator

    cv2.setNumThreads(1)
    tune_allocator()


def _fusion_for(fusion: Fusion | None, settings: Any) -> Fusion:
    """``fusion`` (the shipped one when None) as ``settings`` use it: without the magenta cue
    where ``magenta_cue`` is off."""
    fusion = fusion or default_fusion()
    if not getattr(settings, "magenta_cue", True):
        fusion = fusion.without("magenta_excess")
    return fusion


@lru_cache(maxsize=1)
def default_fusion() -> Fusion:
    """The fusion shipped with the plugin (learned on synthetic scenes)."""
    return Fusion.from_json(json.loads(FUSION_FILE.read_text(encoding="utf-8")))


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i, n)]


N_PIXEL_TERMS = len(PIXEL_FEATURES) + len(_pairs(len(PIXEL_FEATURES)))


# --------------------------------------------------------------------------------------------
# Per-pixel features and score map
# --------------------------------------------------------------------------------------------
def pixel_features(
    rgb: np.ndarray, valid: np.ndarray | None, gsd: float, grey_u8: np.ndarray | None = None
) -> np.ndarray:
    """``(10, H, W)`` float32: the six channels, excess green, shadow, blue tint, fine texture.
    ``grey_u8``: the tile's grey (:func:`grey_of`) when the caller has it already."""
    h, w = rgb.shape[:2]
    out = np.empty((len(PIXEL_FEATURES), h, w), np.float32)
    if grey_u8 is None:
        grey_u8 = grey_of(rgb)
    # + excess green, shadow
    compute_channels(rgb, gsd, valid, masks=out[6:8], out=out[:6], grey_u8=grey_u8)
    out[8] = blue_tint(rgb)
    out[9] = fine_texture(rgb, gsd, grey_u8)
    if valid is not None:
        out[8:, ~valid] = 0
    return out


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """The 8-bit grey of an RGB tile (OpenCV's ``COLOR_RGB2GRAY``), which the channels, the
    fine texture, the strong edges and the statistics all start from: computed once."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def blue_tint(rgb: np.ndarray) -> np.ndarray:
    """Blue over the larger of red and green, relative to brightness, ramped to [0, 1].

    Crystalline panels reflect the sky: blue-grey whether dark or bright, where roofs are red,
    brown or neutral grey and vegetation is green. 0 at no excess, 1 at an excess of 15 %.
    """
    r, g, b = (c.astype(np.float32) for c in cv2.split(rgb))
    excess = b - np.maximum(r, g)
    r += g
    r += b
    r *= 1.0 / 3.0
    r += 8.0
    excess /= r
    excess *= 1.0 / 0.15
    return np.clip(excess, 0.0, 1.0, out=excess)


def fine_texture(rgb: np.ndarray, gsd: float, grey_u8: np.ndarray | None = None) -> np.ndarray:
    """Energy of detail finer than ≈ 0.5 m (module frames and gaps), smoothed over ≈ 1 m.

    Mean absolute difference between the grey tile and its Gaussian blur at σ = 0.2 m,
    averaged with σ = 0.6 m, relative to 12 grey levels and ramped to [0, 1].
    """
    grey = (grey_of(rgb) if grey_u8 is None else grey_u8).astype(np.float32)
    blur = cv2.GaussianBlur(grey, (0, 0), max(0.2 / gsd, 0.5))
    diff = np.abs(grey - blur, out=grey)
    energy = cv2.GaussianBlur(diff, (0, 0), max(0.6 / gsd, 1.0))
    return np.clip(energy / 12.0, 0.0, 1.0, out=energy)


def pixel_terms(features: np.ndarray) -> np.ndarray:
    """Features and their pairwise products (including squares), ``(N_PIXEL_TERMS, ...)``."""
    n = features.shape[0]
    terms = np.empty((N_PIXEL_TERMS, *features.shape[1:]), np.float32)
    terms[:n] = features
    for k, (i, j) in enumerate(_pairs(n), start=n):
        np.multiply(features[i], features[j], out=terms[k])
    return terms


def score_map(features: np.ndarray, fusion: Fusion, *, compiled: bool = True) -> np.ndarray:
    """Fused per-pixel panel score in [0, 1] (logistic of the weighted terms).

    The weighted features and pairwise products are a quadratic form, added up per feature
    as ``Σ_i f_i (w_i + Σ_{j ≥ i} w_ij f_j)`` (:func:`_quadratic_form`): 55 products of ten
    features without a map for each. One compiled pass where numba is installed (ADR 0055),
    else the same float32 operations on whole maps (``compiled=False`` takes this path too;
    the same bits).
    """
    n = features.shape[0]
    w = np.asarray(fusion.pixel_weights, np.float32)
    upper = np.zeros((n, n), np.float32)
    for k, (i, j) in enumerate(_pairs(n), start=n):
        upper[i, j] = w[k]
    flat = np.ascontiguousarray(features.reshape(n, -1), np.float32)
    z = _quadratic_form(flat, upper, w[:n].copy(), np.float32(fusion.pixel_bias), compiled)
    # logistic, in place
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1.0
    np.reciprocal(z, out=z)
    return z.reshape(features.shape[1:])


def _quadratic_form(
    flat: np.ndarray, upper: np.ndarray, linear: np.ndarray, bias: np.float32, compiled: bool
) -> np.ndarray:
    """``bias + Σ_i f_i (linear_i + Σ_{j ≥ i} upper_ij f_j)`` per column of ``flat`` (float32,
    in the order :func:`~solardesk_spectral._kernels.quadratic_form` documents)."""
    kernel = _compiled("quadratic_form") if compiled else None
    out = np.empty(flat.shape[1], np.float32)
    if kernel is not None:
        return kernel(flat, upper, linear, bias, out)
    out[:] = bias
    t = np.empty_like(out)
    c = np.empty_like(out)
    for i in range(len(flat)):
        np.multiply(flat[i], upper[i, i], out=t)
        t += linear[i]  # (a + b·f, as the kernel adds it)
        for j in range(i + 1, len(flat)):
            np.multiply(flat[j], upper[i, j], out=c)
            t += c
        t *= flat[i]
        out += t
    return out


#: The second score map: a unit-weighted sum of the pixel cues that mean the same on real
#: imagery as on synthetic scenes (photometric index, LBP uniformity and blue tint for, excess
#: green and shadow against), thresholded at each of CUE_THRESHOLDS (chosen on the even half of
#: the shared real data, measured on the odd half: ADR 0009; 1.0 suits South Tyrol's bright
#: panels at 0.14 m, 0.8 Bradbury's dark ones at 0.3 m). The learned score map misses dark
#: panels at 0.3 m that these find; the candidates of every segmentation compete on confidence.
CUE_WEIGHTS = {
    "photometric_index": 1.0,
    "lbp_uniformity": 1.0,
    "blue_tint": 1.0,
    "excess_green": -1.0,
    "shadow": -1.0,
}
CUE_THRESHOLDS = (1.0, 0.8)
#: The closing radius (metres) of each cue segmentation (the learned score's is 0.25 m). At the
#: lower threshold a dark array breaks up along its module frames and row gaps; closing over
#: 0.9 m, about a module's short side, makes it one candidate again (ADR 0018 addendum).
CUE_CLOSE_M = (0.25, 0.9)


#: The third score map (ADR 0034): the same cue sum with the *fine texture* (module frames and
#: gaps) in place of the LBP uniformity. The fine texture tells an array from the roof around it
#: better (South Tyrol's even half: mean 0.57 on panels against 0.31 on their roofs; LBP
#: uniformity 0.37 against 0.27), so this sum lights bright arrays on light flat roofs, where
#: the other two maps light the roof strips between the rows as much as the rows. Thresholded
#: at TEXTURE_CUE_THRESHOLD and closed over TEXTURE_CUE_CLOSE_M (a module's short side, like
#: the second cue segmentation). Chosen on the even half of the shared data (thresholds 0.8–1.5,
#: closings 0.25–1.5 m, the sum without the photometric index), measured on the odd half.
TEXTURE_CUE_WEIGHTS = {
    "photometric_index": 1.0,
    "fine_texture": 1.0,
    "blue_tint": 1.0,
    "excess_green": -1.0,
    "shadow": -1.0,
}
TEXTURE_CUE_THRESHOLD = 1.0
TEXTURE_CUE_CLOSE_M = 0.9


#: The texture cue sum less the cue sum: what turns one into the other in two passes.
_TEXTURE_LESS_CUE = {
    name: w
    for name in (*CUE_WEIGHTS, *TEXTURE_CUE_WEIGHTS)
    if (w := TEXTURE_CUE_WEIGHTS.get(name, 0.0) - CUE_WEIGHTS.get(name, 0.0)) != 0
}


def cue_score(
    features: np.ndarray, weights: dict[str, float] | None = None, start: np.ndarray | None = None
) -> np.ndarray:
    """Weighted sum of pixel cues, :data:`CUE_WEIGHTS` unless ``weights`` (float32; with unit
    weights it ranges over [-2, 3]), added to a copy of ``start`` when given.
    ``cue_score(f, TEXTURE_CUE_WEIGHTS)`` is the texture cue sum."""
    z = np.zeros(features.shape[1:], np.float32) if start is None else start.copy()
    for name, w in (CUE_WEIGHTS if weights is None else weights).items():
        f = features[PIXEL_FEATURES.index(name)]
        if w == 1.0:
            z += f
        elif w == -1.0:
            z -= f
        else:
            z += np.float32(w) * f
    return z


#: The relative-colour map (setting ``contrast_segmentation``, off by default; ADR 0056): where
#: the module grid is not resolved (ground resolution coarser than CONTRAST_MIN_GSD), an array
#: that none of the maps above lights is still a patch darker and bluer than the roof around
#: it. The map adds its blue less red above the mean of a CONTRAST_WINDOW_M square around it,
#: in units of CONTRAST_BLUE_LEVELS 8-bit levels, to its darkness below that square's mean grey,
#: in units of CONTRAST_DARK_LEVELS. It is cut at CONTRAST_THRESHOLD and closed over
#: CONTRAST_CLOSE_M like the learned score map. The window is a roof's size; the two units
#: were set from the contrasts of Bradbury's panels that no other map lights (medians about 10
#: and 24 levels), the threshold chosen on its even half (1.0–3.0) and measured on its odd half
#: (docs/spectral_quality.md). Off by default: on South Tyrol's scenes coarsened to 0.28 m, grey
#: roof planes and skylights on red tiles pass it too, and precision falls.
CONTRAST_MIN_GSD = FINE_PEAK_MAX_GSD
CONTRAST_WINDOW_M = 12.0
CONTRAST_BLUE_LEVELS = 8.0
CONTRAST_DARK_LEVELS = 20.0
CONTRAST_THRESHOLD = 2.0
CONTRAST_CLOSE_M = 0.25


def contrast_map(
    rgb: np.ndarray, grey: np.ndarray, gsd: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Darker and bluer than the roof around: the relative-colour map (float32).

    Responds to a patch whose blue less red is above, and whose grey is below, the means of
    the square of :data:`CONTRAST_WINDOW_M` around each pixel (an odd number of pixels,
    mirrored at the tile's edge): ``(B − R − mean) / CONTRAST_BLUE_LEVELS + (mean grey − grey)
    / CONTRAST_DARK_LEVELS``. About 0 on a uniform surface; high on a dark grey-blue array on a
    beige or light grey roof. Low on a dark patch that is redder than its surroundings (a
    brown roof, soil). With ``valid``, the means are taken over valid pixels only.
    """
    w = round(float(CONTRAST_WINDOW_M / gsd)) | 1
    f = rgb.astype(np.float32)
    bmr = f[..., 2] - f[..., 0]
    g = grey.astype(np.float32)
    if valid is None:
        mean_bmr, mean_g = cv2.blur(bmr, (w, w)), cv2.blur(g, (w, w))
    else:
        v = valid.astype(np.float32)
        n = np.maximum(cv2.blur(v, (w, w)), np.float32(1e-6))
        mean_bmr, mean_g = cv2.blur(bmr * v, (w, w)) / n, cv2.blur(g * v, (w, w)) / n
    return (bmr - mean_bmr) / np.float32(CONTRAST_BLUE_LEVELS) + (mean_g - g) / np.float32(
        CONTRAST_DARK_LEVELS
    )


def segmentation_maps(
    features: np.ndarray, score: np.ndarray, settings: Any, contrast: np.ndarray | None = None
) -> list[tuple[np.ndarray, float, float]]:
    """``(map, threshold, closing in metres)`` of each segmentation the settings ask for: the
    learned score map, the cue sum at each of CUE_THRESHOLDS, the texture cue sum, and
    ``contrast`` (:func:`contrast_map`) when given."""
    maps = [(score, settings.score_threshold, 0.25)]
    cues = None
    if settings.cue_segmentation:
        cues = cue_score(features)
        maps += [(cues, t, c) for t, c in zip(CUE_THRESHOLDS, CUE_CLOSE_M, strict=True)]
    if settings.texture_segmentation:
        textured = (
            cue_score(features, TEXTURE_CUE_WEIGHTS)
            if cues is None
            else cue_score(features, _TEXTURE_LESS_CUE, start=cues)
        )
        maps.append((textured, TEXTURE_CUE_THRESHOLD, TEXTURE_CUE_CLOSE_M))
    if contrast is not None:
        maps.append((contrast, CONTRAST_THRESHOLD, CONTRAST_CLOSE_M))
    return maps


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------
def _disk(radius_px: int) -> np.ndarray:
    r = max(1, int(radius_px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


#: From this radius on, :func:`disk_morphology` works with the disk's rectangles: OpenCV's
#: separable rectangle passes then beat its general element pass (measured: 0.63 → 0.40 ms
#: for a closing of radius 7 on a 512² tile; even or slower below 4).
DISK_RECTS_FROM = 4


@lru_cache(maxsize=16)
def _disk_rects(radius_px: int) -> tuple[np.ndarray, ...]:
    """The rectangles whose union is :func:`_disk` (each row of OpenCV's ellipse is a centred
    run): one per distinct half-width, as tall as the rows at least that wide."""
    disk = _disk(radius_px)
    r = disk.shape[0] // 2
    half = [(int(row.sum()) - 1) // 2 for row in disk]
    rects = []
    for w in sorted(set(half)):
        dy = max(abs(k - r) for k, hw in enumerate(half) if hw >= w)
        rects.append(cv2.getStructuringElement(cv2.MORPH_RECT, (2 * w + 1, 2 * dy + 1)))
    return tuple(rects)


def disk_morphology(binary: np.ndarray, op: int, radius_px: int, **border) -> np.ndarray:
    """``cv2.morphologyEx(binary, op, _disk(radius_px), **border)`` for ``op`` MORPH_OPEN or
    MORPH_CLOSE, the same pixels. From DISK_RECTS_FROM on, as the disk's rectangles
    (:func:`_disk_rects`): a dilation by a union is the largest of the dilations by its parts,
    an erosion the smallest of the erosions, borders included (OpenCV's default border is
    left out of either; a constant one is seen by every part alike)."""
    r = max(1, int(radius_px))
    if r < DISK_RECTS_FROM:
        return cv2.morphologyEx(binary, op, _disk(r), **border)
    rects = _disk_rects(r)

    def by_rects(image: np.ndarray, one, combine) -> np.ndarray:
        out = one(image, rects[0], **border)
        for rect in rects[1:]:
            combine(out, one(image, rect, **border), dst=out)
        return out

    def grow(image: np.ndarray) -> np.ndarray:
        return by_rects(image, cv2.dilate, cv2.max)

    def shrink(image: np.ndarray) -> np.ndarray:
        return by_rects(image, cv2.erode, cv2.min)

    if op == cv2.MORPH_CLOSE:
        return shrink(grow(binary))
    if op == cv2.MORPH_OPEN:
        return grow(shrink(binary))
    raise ValueError(f"disk_morphology opens or closes, not operation {op}")


#: Strong edges: Canny hysteresis thresholds on the 8-bit grey tile (L2 gradient) after a
#: Gaussian of σ = EDGE_SIGMA_M metres. Chosen on the even half of the shared data, measured
#: on the odd half (docs/spectral_quality.md).
EDGE_SIGMA_M = 0.15
EDGE_LOW, EDGE_HIGH = 80, 200


def strong_edges(rgb: np.ndarray, gsd: float, grey_u8: np.ndarray | None = None) -> np.ndarray:
    """Boolean map of the tile's strong edges: where an array meets its roof or the ground.

    An array's outline is a long, high-contrast step (dark or blue modules against a red,
    brown or grey roof); its module frames and the texture of trees and gravel are weaker or
    shorter and mostly fall below the hysteresis thresholds.
    """
    grey = grey_of(rgb) if grey_u8 is None else grey_u8
    grey = cv2.GaussianBlur(grey, (0, 0), max(EDGE_SIGMA_M / gsd, 0.7))
    return cv2.Canny(grey, EDGE_LOW, EDGE_HIGH, L2gradient=True) > 0


def segment(
    score: np.ndarray,
    valid: np.ndarray | None,
    gsd: float,
    threshold: float,
    edges: np.ndarray | None = None,
    close_m: float = 0.25,
) -> tuple[np.ndarray, int]:
    """Label candidate regions: threshold, open (0.25 m), close (``close_m``), connected parts.

    Without ``edges``: 8-connected parts. With ``edges`` (a boolean map): the edge pixels are
    taken out of the mask, the rest is split into 4-connected parts (a one-pixel 8-connected
    edge line separates them), and each mask pixel under an edge goes back to the largest
    label among its 3×3 neighbours (none: it stays background). Parts may then touch.
    """
    binary = np.greater(score, threshold).view(np.uint8)  # 0 / 1
    if valid is not None:
        binary[~valid] = 0
    binary = disk_morphology(binary, cv2.MORPH_OPEN, round(0.25 / gsd))
    binary = disk_morphology(binary, cv2.MORPH_CLOSE, round(close_m / gsd))
    if valid is not None:
        binary[~valid] = 0
    if edges is None:
        n, labels = cv2.connectedComponents(binary, connectivity=8, ltype=cv2.CV_32S)
        return labels, n - 1
    # (OpenCV's masked passes: NumPy's boolean indexing is several times slower here)
    back = cv2.bitwise_and(binary, edges.view(np.uint8))
    cut = cv2.subtract(binary, back)
    n, labels = cv2.connectedComponents(cut, connectivity=4, ltype=cv2.CV_32S)
    if n > 1 and cv2.countNonZero(back):
        _take_largest_neighbour(labels, back, n - 1)
    return labels, n - 1


def _take_largest_neighbour(labels: np.ndarray, back: np.ndarray, n: int) -> None:
    """Each pixel of ``back`` (uint8, non-zero) takes the largest of ``labels`` (int32, values
    0..``n``, in place) among its 3×3 neighbours, as they were before: a 3×3 dilation in a type
    that holds every label exactly. uint16 up to 65535 labels (a tile holds a few thousand at
    most), which OpenCV dilates several times faster than float32; float32 (exact to 2**24)
    past that."""
    exact = np.uint16 if n <= np.iinfo(np.uint16).max else np.float32
    grown = cv2.dilate(labels.astype(exact), np.ones((3, 3), np.uint8))
    np.copyto(labels, grown, casting="unsafe", where=back.view(bool))


#: The orientation of a surface's texture: the structure tensor of the grey tile's Sobel
#: gradients integrated over a Gaussian of ORIENT_SIGMA_M metres. Its doubled-angle vector
#: ``((Jxx - Jyy), 2 Jxy) / (Jxx + Jyy + ORIENT_FLOOR)`` has the dominant orientation as angle
#: and the coherence as length (0 on flat surfaces, thanks to the floor in squared grey levels).
ORIENT_SIGMA_M = 0.75
ORIENT_FLOOR = 400.0
#: A candidate is split by orientation when at least ORIENT_MIN_SHARE of its pixels have a
#: coherence of ORIENT_MIN_COHERENCE (a module grid's two line families keep it moderate) and
#: the two orientation clusters of those pixels lie ORIENT_MIN_ANGLE_DEG apart or more.
ORIENT_MIN_COHERENCE = 0.2
ORIENT_MIN_SHARE = 0.5
ORIENT_MIN_ANGLE_DEG = 30.0


def orientation_field(grey: np.ndarray, gsd: float) -> tuple[np.ndarray, np.ndarray]:
    """Doubled-angle orientation vector ``(vx, vy)`` of the texture at every pixel (float32)."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    sigma = max(ORIENT_SIGMA_M / gsd, 1.0)
    jxx = cv2.GaussianBlur(gx * gx, (0, 0), sigma)
    jyy = cv2.GaussianBlur(gy * gy, (0, 0), sigma)
    jxy = cv2.GaussianBlur(gx * gy, (0, 0), sigma)
    trace = jxx + jyy
    trace += np.float32(ORIENT_FLOOR)
    jxx -= jyy
    jxx /= trace
    jxy *= 2.0
    jxy /= trace
    return jxx, jxy


def _two_directions(phi: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Two-means of doubled angles ``phi`` on the circle (started at the mean direction ± 90°,
    ten rounds at most): ``(in_first, angle between the two in degrees of orientation)``, or
    None when one cluster is empty."""
    c, s = np.cos(phi), np.sin(phi)
    m = np.arctan2(s.mean(), c.mean())
    centres = (m - np.pi / 2, m + np.pi / 2)
    first = None
    for _ in range(10):
        new = np.cos(phi - centres[0]) >= np.cos(phi - centres[1])
        if not new.any() or new.all():
            return None
        if first is not None and np.array_equal(new, first):
            break
        first = new
        centres = (
            np.arctan2(s[first].mean(), c[first].mean()),
            np.arctan2(s[~first].mean(), c[~first].mean()),
        )
    d = abs(np.angle(np.exp(1j * (centres[0] - centres[1]))))
    return first, float(np.degrees(d) / 2.0)


def split_by_orientation(
    labels: np.ndarray,
    n: int,
    field: tuple[np.ndarray, np.ndarray],
    gsd: float,
    min_pixels: float,
) -> tuple[np.ndarray, int]:
    """Split each component whose texture runs in two directions into one part per direction.

    A component of at least twice ``min_pixels`` with at least ORIENT_MIN_SHARE of its pixels
    coherent (ORIENT_MIN_COHERENCE) is split when the two-means of those pixels' orientations
    (:func:`_two_directions`) lie ORIENT_MIN_ANGLE_DEG apart and each holds ``min_pixels``:
    every pixel of the component goes to the direction whose coherent pixels weigh more around
    it (a Gaussian vote of σ = ORIENT_SIGMA_M over the component's box, OpenCV's default
    border), and each 4-connected part of ``min_pixels`` or more becomes a component (smaller
    ones are dropped). Returns the relabelled image (components numbered in raster order of
    their first pixel) and their count.
    """
    from scipy.ndimage import find_objects

    vx, vy = field
    out = labels.copy()
    next_label = n
    sigma = max(ORIENT_SIGMA_M / gsd, 1.0)
    for i, sl in enumerate(find_objects(labels, max_label=n)):
        if sl is None:
            continue
        comp = labels[sl] == i + 1
        area = int(np.count_nonzero(comp))
        if area < 2 * min_pixels:
            continue
        x, y = vx[sl], vy[sl]
        coherent = comp & (np.hypot(x, y) >= ORIENT_MIN_COHERENCE)
        if np.count_nonzero(coherent) < ORIENT_MIN_SHARE * area:
            continue
        found = _two_directions(np.arctan2(y[coherent], x[coherent]))
        if found is None:
            continue
        first, angle = found
        if angle < ORIENT_MIN_ANGLE_DEG or min(first.sum(), (~first).sum()) < min_pixels:
            continue
        votes = np.zeros((2, *comp.shape), np.float32)
        rows, cols = np.nonzero(coherent)
        votes[0][rows[first], cols[first]] = 1.0
        votes[1][rows[~first], cols[~first]] = 1.0
        side = cv2.GaussianBlur(votes[0], (0, 0), sigma) >= cv2.GaussianBlur(
            votes[1], (0, 0), sigma
        )
        view = out[sl]
        view[comp] = 0
        for part in (comp & side, comp & ~side):
            k, parts = cv2.connectedComponents(part.view(np.uint8), connectivity=4)
            for j in range(1, k):
                piece = parts == j
                if np.count_nonzero(piece) >= min_pixels:
                    next_label += 1
                    view[piece] = next_label
    if next_label == n:
        return labels, n
    return _relabel(out)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Number the distinct non-zero values 1..k in raster order of their first pixel."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values > 0
    values, first = values[keep], first[keep]
    lut = np.zeros(int(flat.max()) + 1, labels.dtype)
    lut[values[np.argsort(first)]] = np.arange(1, len(values) + 1, dtype=labels.dtype)
    return lut[labels], len(values)


# --------------------------------------------------------------------------------------------
# Instance statistics, all components at once
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameContext:
    """What the colour statistics need of a tile, computed once for all its segmentations:
    the red-minus-blue map, the cyan map ``min(G, B) - R``, the green and blue bands (8-bit
    levels, float32), integral images of (valid) excess green, redness and count (float64)
    and the valid mask (None: all valid)."""

    redness: np.ndarray
    sums: tuple[np.ndarray, ...]
    count: np.ndarray
    cyan: np.ndarray
    green: np.ndarray
    blue: np.ndarray
    valid: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        rgb: np.ndarray,
        features: np.ndarray,
        valid: np.ndarray | None,
        *,
        compiled: bool = True,
    ) -> FrameContext:
        """The context of one tile. Its four colour maps in one compiled pass where numba is
        installed (``_kernels.frame_maps``), else OpenCV and NumPy passes (``compiled=False``
        takes them too; whole numbers either way, the same maps)."""
        kernel = _compiled("frame_maps") if compiled else None
        if kernel is not None:
            red, cyan, green_, blue = (np.empty(rgb.shape[:2], np.float32) for _ in range(4))
            kernel(np.ascontiguousarray(rgb), red, cyan, green_, blue)
        else:
            red, green_, blue = cv2.split(rgb)
            cyan = cv2.min(green_, blue).astype(np.float32) - red
            red, blue = red.astype(np.float32), blue.astype(np.float32)
            green_ = green_.astype(np.float32)
            red -= blue
        green = features[PIXEL_FEATURES.index("excess_green")]
        if valid is None:
            count = cv2.integral(np.ones(red.shape, np.uint8), sdepth=cv2.CV_64F)
            sums = (cv2.integral(green, sdepth=cv2.CV_64F), cv2.integral(red, sdepth=cv2.CV_64F))
        else:
            v = valid.astype(np.float32)
            count = cv2.integral(valid.astype(np.uint8), sdepth=cv2.CV_64F)
            sums = (
                cv2.integral(green * v, sdepth=cv2.CV_64F),
                cv2.integral(red * v, sdepth=cv2.CV_64F),
            )
        return cls(red, sums, count, cyan, green_, blue, valid)

    @cached_property
    def colour_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Integral images (float64) of the valid green and blue bands, built when first
        asked for (the magenta cue's frame colour)."""
        maps = (self.green, self.blue)
        if self.valid is not None:
            v = self.valid.astype(np.float32)
            maps = tuple(m * v for m in maps)
        return tuple(cv2.integral(m, sdepth=cv2.CV_64F) for m in maps)


def magenta_excess(
    mean_rgb: np.ndarray,
    red_frame: np.ndarray,
    boxes: np.ndarray,
    r: int,
    context: FrameContext,
    measure: np.ndarray,
) -> np.ndarray:
    """``magenta_excess`` of the candidates with mean colours ``mean_rgb`` (``(n, 3)``, 8-bit
    levels), frame redness ``red_frame`` (mean red less blue, :func:`_frame_means`; NaN: no
    frame) and boxes ``boxes``, where ``measure`` (NaN elsewhere): the a* of the mean colour,
    less MAGENTA_FRAME_RELIEF times the a* of the mean colour of the valid pixels in the frame
    ``r`` pixels wide around the box where that is positive, above MAGENTA_LEVELS. The frame's
    green and blue are read only for the candidates whose own a* lies above MAGENTA_LEVELS
    (the rest are 0)."""
    out = np.full(len(measure), np.nan)
    idx = np.flatnonzero(measure)
    a_in = mean_colour_a(*mean_rgb[idx].T)
    out[idx] = 0.0
    tinted = a_in > MAGENTA_LEVELS
    if tinted.any():
        at = idx[tinted]
        green, blue = _frame_means(boxes[at], r, context, context.colour_sums)
        red_minus_blue = red_frame[at]
        framed = ~np.isnan(blue)
        a_frame = np.zeros(len(at))
        a_frame[framed] = mean_colour_a(
            red_minus_blue[framed] + blue[framed], green[framed], blue[framed]
        )
        relief = MAGENTA_FRAME_RELIEF * np.maximum(a_frame, 0.0)
        out[at] = np.maximum(a_in[tinted] - relief - MAGENTA_LEVELS, 0.0)
    return out


def mean_colour_a(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """CIE a* of the sRGB colours ``(red, green, blue)`` in 8-bit levels (float arrays of one
    shape), in float64 by the formulas OpenCV documents for ``COLOR_RGB2Lab`` (sRGB gamma,
    D65 white); OpenCV's own float conversion interpolates tables and is off by up to 0.4."""
    rgb = np.clip(np.stack([red, green, blue], axis=-1) / 255.0, 0.0, 1.0)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    x = linear @ _RGB_TO_X / 0.950456
    y = linear @ _RGB_TO_Y
    return 500.0 * (_lab_f(x) - _lab_f(y))


_RGB_TO_X = np.array([0.412453, 0.357580, 0.180423])
_RGB_TO_Y = np.array([0.212671, 0.715160, 0.072169])


def _lab_f(t: np.ndarray) -> np.ndarray:
    return np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)


def instance_stats(
    labels: np.ndarray,
    n: int,
    features: np.ndarray,
    score: np.ndarray,
    gsd: float,
    rgb: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    context: FrameContext | None = None,
    shape_area_px: tuple[float, float] = (0.0, np.inf),
    means: Collection[int] | None = None,
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, boxes)``: per-instance feature rows (INSTANCE_FEATURES) and boxes (x0, y0, x1, y1).

    Row ``i`` describes label ``i + 1``. The two context statistics look at the frame
    :data:`FRAME_M` wide around the bounding box (clipped to the tile, valid pixels only): its
    mean excess green, and how much redder it is than the candidate (mean red minus blue, in
    8-bit levels, of the frame less that of the candidate's pixels). An array lies on a roof or
    on open ground and is bluer than a tiled roof; a whole roof plane, a tree or a lawn has
    gardens, lawns or other roofs of its own colour around it.

    Shape statistics (rectangularity, solidity, elongation) are traced only for components
    whose pixel count lies within ``shape_area_px``; the others get NaN there (the analyser
    drops them by area anyway), and so does a component with no frame (its box holds the whole
    valid tile: its outline is the tile's; ADR 0039), whose two context statistics are NaN
    too. ``magenta_excess`` (:func:`magenta_excess`) is measured for the components within
    ``shape_area_px``, with or without a frame (NaN for the others). ``fine_power_share`` is
    NaN here: the analyser measures it only on the candidates that survive suppression
    (:func:`fine_power_share`). ``means``: which of
    the mean columns (0: the score, ``1 + k``: pixel feature ``k``) to compute (default all);
    the others are NaN. ``boxes``: each label's
    bounding box when the caller knows them (else found in one pass over ``labels``).
    """
    if n == 0:
        return np.zeros((0, len(INSTANCE_FEATURES))), np.zeros((0, 4), np.int64)
    context = context or FrameContext.of(rgb, features, valid)
    wanted = sorted(range(1 + len(features)) if means is None else means)
    stack = (score, *features)
    maps = [stack[k] for k in wanted] + [context.redness, context.cyan, context.green, context.blue]
    area, sums, found = _label_sums(labels, n, maps, boxes=boxes)
    if boxes is None:
        boxes = found
    cols = [np.full(n, np.nan) for _ in stack]
    for j, k in enumerate(wanted):
        cols[k] = sums[:, j] / area
    red_in, cyan = sums[:, -4] / area, sums[:, -3]
    green_in, blue_in = sums[:, -2] / area, sums[:, -1] / area
    r = max(1, round(FRAME_M / gsd))
    green_frame, red_frame = _frame_means(boxes, r, context)
    # No frame: the box holds the whole (valid) tile, so the tile's edges are the candidate's
    # outline on every side and its shape is the tile's: not traced, not measured (NaN,
    # neutral; ADR 0039), like its context.
    no_frame = np.isnan(green_frame)
    within = (area > 0) & (area >= shape_area_px[0]) & (area <= shape_area_px[1])
    traced = within & ~no_frame
    rect_area, hull_area, long_side, short_side = _shape_stats(labels, n, traced, boxes)
    area_m2 = area * gsd * gsd
    cols.append(np.log10(np.maximum(area_m2, 1e-3)))
    cols.append(area / np.maximum(rect_area, 1.0))
    cols.append(area / np.maximum(hull_area, 1.0))
    cols.append(np.log10(np.maximum(long_side, 1.0) / np.maximum(short_side, 1.0)))
    cols.append(green_frame)  # NaN without a frame: the context is not observed either
    cols.append(red_frame - red_in)
    cols.append(np.full(n, np.nan))  # fine_power_share: measured on the survivors (analyse)
    cols.append(np.maximum(cyan / area - WATER_LEVELS, 0.0))
    cols.append(np.full(n, np.nan))  # fine_peak_share: with the fine power share
    mean_rgb = np.stack([red_in + blue_in, green_in, blue_in], axis=1)
    cols.append(magenta_excess(mean_rgb, red_frame, boxes, r, context, within))
    return np.stack(cols, axis=1), boxes


def _label_sums(
    labels: np.ndarray,
    n: int,
    maps: list[np.ndarray],
    *,
    compiled: bool = True,
    boxes: np.ndarray | None = None,
    only: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(area, sums, boxes)`` of labels ``1..n``: pixel count, the sum over each of ``maps``
    (columns, float64, added in raster order) and the box (x0, y0, x1, y1; zeros for a label
    with no pixel); other label values are ignored. One compiled pass over the image where
    numba is installed (ADR 0037), else one gather and ``bincount`` per map and a
    ``find_objects`` pass (``compiled=False`` takes this path too; the results are the
    same). ``boxes``: boxes (x0, y0, x1, y1) that hold each label's pixels, when the caller
    knows them; the compiled pass then looks inside them only, where they cover less than the
    image (the same figures). ``only`` (with ``boxes``): which labels the caller needs; the
    others get empty boxes, are not looked for and may come back as zeros."""
    if only is not None and boxes is not None:
        boxes = np.where(only[:, None], boxes, 0)
    kernel = _compiled("label_sums") if compiled else None
    if kernel is not None and boxes is not None and n == len(boxes):
        b = _inside(boxes, labels.shape)  # (numba does not check bounds)
        if int(np.sum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))) < labels.size:
            return _compiled("label_sums_in_boxes")(
                np.ascontiguousarray(labels, np.int32),
                b,
                tuple(np.ascontiguousarray(m, np.float32) for m in maps),
            )
    if kernel is not None:
        return kernel(
            np.ascontiguousarray(labels, np.int32),
            n,
            tuple(np.ascontiguousarray(m, np.float32) for m in maps),
        )
    # Only labelled pixels matter: gather them once, then one bincount per map.
    flat = labels.ravel()
    where = np.flatnonzero((flat > 0) & (flat <= n))  # (on a boolean: several times faster)
    lab = flat[where] - 1
    area = np.bincount(lab, minlength=n).astype(np.float64)
    sums = np.zeros((n, len(maps)))
    for j, m in enumerate(maps):
        sums[:, j] = np.bincount(lab, weights=m.ravel()[where], minlength=n)
    boxes = np.zeros((n, 4), np.int64)
    for i, sl in enumerate(_box_slices(labels, n)):
        if sl is not None:
            boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return area, sums, boxes


def _frame_means(
    boxes: np.ndarray,
    r: int,
    context: FrameContext,
    sums: tuple[np.ndarray, ...] | None = None,
    *,
    compiled: bool = True,
) -> list[np.ndarray]:
    """Mean of each of the context's maps (``sums``, integral images: by default its excess
    green and redness) over the valid pixels of the frame ``r`` pixels wide around each box
    (the box grown by ``r`` and clipped to the tile, less the box); NaN where the frame is
    empty. O(1) per box: one compiled pass over the boxes where numba is installed, else
    eight gathers per map (``compiled=False`` takes this path too; the same bits)."""
    sums = context.sums if sums is None else sums
    kernel = _compiled("frame_means") if compiled else None
    if kernel is not None:
        out = kernel(_inside(boxes, context.redness.shape), int(r), context.count, tuple(sums))
        return list(out.T)
    h, w = context.redness.shape
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    gx0, gy0 = np.maximum(x0 - r, 0), np.maximum(y0 - r, 0)
    gx1, gy1 = np.minimum(x1 + r, w), np.minimum(y1 + r, h)

    def frame(ii: np.ndarray) -> np.ndarray:
        outer = ii[gy1, gx1] - ii[gy0, gx1] - ii[gy1, gx0] + ii[gy0, gx0]
        inner = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
        return outer - inner

    n_px = frame(context.count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(n_px > 0, frame(ii) / n_px, np.nan) for ii in sums]


def _shape_stats(
    labels: np.ndarray, n: int, traced: np.ndarray, boxes: np.ndarray, *, compiled: bool = True
):
    """Minimum-rotated-rectangle area and sides and convex hull area of each ``traced`` label
    (NaN for the others; a traced label must have pixels).

    Of the union of the label's pixel squares (pixel centres at integer coordinates), so an
    ``a × b`` pixel rectangle has rectangle area ``a·b``, matching the pixel-count area; the
    pixels are found in the label's bounding box (``boxes``: x0, y0, x1, y1; components may
    touch). The hull rests on the outer corners of each row's outermost pixels; the figures
    are computed exactly from its vertices, whatever their order (ADR 0050): of rectangles of
    equal area the one with the shorter long side is taken. One compiled pass
    (:func:`~solardesk_spectral._kernels.shape_stats`) where numba is installed, else NumPy
    and ``cv2.convexHull`` (``compiled=False`` takes this path too; the figures are the same
    to the last bit).
    """
    kernel = _compiled("shape_stats") if compiled else None
    if kernel is not None:
        out = kernel(
            np.ascontiguousarray(labels, np.int32),
            _inside(boxes, labels.shape),  # (numba does not check bounds)
            np.ascontiguousarray(traced, np.bool_),
        )
        return out[:, 0], out[:, 1], out[:, 2], out[:, 3]
    out = np.full((n, 4), np.nan)
    for i, (ys, xs) in enumerate(_box_slices(labels, n, boxes)):
        if not traced[i]:
            continue
        crop = labels[ys, xs] == int(i) + 1
        rows = np.flatnonzero(crop.any(axis=1))
        inside = crop[rows]
        left = inside.argmax(axis=1) + xs.start
        right = xs.stop - 1 - inside[:, ::-1].argmax(axis=1)
        y = rows + ys.start
        # the outer corners of each row's outermost pixels, in doubled coordinates
        cx = np.concatenate([2 * left - 1, 2 * left - 1, 2 * right + 1, 2 * right + 1])
        cy = np.concatenate([2 * y - 1, 2 * y + 1, 2 * y - 1, 2 * y + 1])
        hull = cv2.convexHull(np.stack([cx, cy], axis=1).astype(np.int32)).reshape(-1, 2)
        out[i] = hull_measures(hull[:, 0].astype(np.int64), hull[:, 1].astype(np.int64))
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3]


def _inside(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``boxes`` (x0, y0, x1, y1) as int64, clipped to an image of ``shape`` (H, W)."""
    h, w = shape[:2]
    # (np.minimum of np.maximum: the values of np.clip without its Python wrappers' cost)
    return np.minimum(np.maximum(np.asarray(boxes, np.int64).reshape(-1, 4), 0), [w, h, w, h])


def hull_measures(hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
    """``[rect_area, hull_area, long_side, short_side]`` of the convex polygon with vertices
    ``hx, hy`` (int64, doubled coordinates: twice the true ones), in either orientation, from
    any vertex, collinear vertices allowed: the same figures, to the last bit, as the compiled
    :func:`~solardesk_spectral._kernels._hull_measures_py` (the same integer arithmetic and
    the same roundings, for all edges at once).

    The hull area is the shoelace sum (exact). The minimum-area rectangle rests on a hull
    edge: each edge's direction, reduced by its gcd and turned into the quadrant ``dx > 0,
    dy ≥ 0``, gives the extents along and across it (exact integers) and from them the area
    and sides (one rounding each); the smallest area wins, then the shorter long side, then
    the smaller ``(dx, dy)``."""
    nx, ny = np.roll(hx, -1), np.roll(hy, -1)
    hull_area = abs(int(np.sum(hx * ny - nx * hy))) / 8.0
    dx, dy = nx - hx, ny - hy
    edge = (dx != 0) | (dy != 0)
    dx, dy = dx[edge], dy[edge]
    g = np.gcd(dx, dy)
    dx, dy = dx // g, dy // g
    for _ in range(3):  # the same rectangle every quarter turn
        turn = ~((dx > 0) & (dy >= 0))
        dx, dy = np.where(turn, dy, dx), np.where(turn, -dx, dy)
    u = hx[None, :] * dx[:, None] + hy[None, :] * dy[:, None]
    v = hy[None, :] * dx[:, None] - hx[None, :] * dy[:, None]
    eu = u.max(axis=1) - u.min(axis=1)
    ev = v.max(axis=1) - v.min(axis=1)
    dd = dx * dx + dy * dy
    area = (eu * ev).astype(np.float64) / (4 * dd).astype(np.float64)
    root = 2.0 * np.sqrt(dd.astype(np.float64))
    long_side = np.maximum(eu, ev).astype(np.float64) / root
    short_side = np.minimum(eu, ev).astype(np.float64) / root
    k = np.lexsort((dy, dx, long_side, area))[0]
    return np.array([area[k], hull_area, long_side[k], short_side[k]])


def _box_slices(labels: np.ndarray, n: int, boxes: np.ndarray | None = None) -> list:
    """Each label's bounding box as a ``(rows, cols)`` pair of slices (``None``: absent): from
    ``boxes`` (x0, y0, x1, y1) when the caller knows them, else found in one pass."""
    if boxes is not None:
        return [(slice(b[1], b[3]), slice(b[0], b[2])) for b in boxes.tolist()]
    from scipy.ndimage import find_objects

    return find_objects(labels, max_label=n)


def _within_area_limits(X: np.ndarray, settings: Any) -> np.ndarray:
    """Which instance rows lie inside the settings' panel area limits (m²)."""
    area_m2 = 10 ** X[:, INSTANCE_FEATURES.index("log_area_m2")]
    return (area_m2 >= settings.min_area_m2) & (area_m2 <= settings.max_area_m2)


@lru_cache(maxsize=512)
def _coarse_frequencies(ny: int, nx: int, cutoff: float) -> np.ndarray:
    """Boolean ``(ny, nx)`` map of the DFT bins below ``cutoff`` cycles per pixel (DC too)."""
    fy = np.fft.fftfreq(ny).astype(np.float32)[:, None]
    fx = np.fft.fftfreq(nx).astype(np.float32)[None, :]
    return fy * fy + fx * fx < np.float32(cutoff * cutoff)


@lru_cache(maxsize=512)
def _packed_bins(ny: int, nx: int, cutoff: float) -> tuple[np.ndarray, ...]:
    """The bins of OpenCV's packed real DFT (CCS) of a ``ny × nx`` image: ``(re, im, mult,
    fine, n_fine)``, for each bin of the half spectrum the flat position of its real part and of its
    imaginary part (-1: a real bin), how many bins of the whole spectrum it stands for (a bin
    and its mirror (-ky, -kx), except the self-mirrored DC, (ny/2, 0), (0, nx/2) and (ny/2,
    nx/2)) and whether it lies at or above ``cutoff`` cycles per pixel (DC comes first), and
    the number of the whole spectrum's bins at or above it, DC left out (it is fine only
    where ``cutoff`` is 0).

    The packing: columns 0 and, for an even width, nx - 1 hold the real DFTs along y of the
    spectrum's columns kx = 0 and nx / 2 (row 0 the real DC term, then real and imaginary
    parts of ky = 1, 2, ... in pairs of rows, then for an even height the real ky = ny / 2);
    columns 2 kx - 1 and 2 kx hold the real and imaginary parts of every row ky of column kx
    in between."""
    coarse = _coarse_frequencies(ny, nx, cutoff)
    res, ims, mults, kys, kxs = [], [], [], [], []
    edges = [(0, 0)] + ([(nx // 2, nx - 1)] if nx % 2 == 0 and nx > 1 else [])
    pairs = np.arange(1, (ny - 1) // 2 + 1)  # ky of the rows packed as (real, imaginary)
    for kx, col in edges:
        top = [0] + ([ny // 2] if ny % 2 == 0 and ny > 1 else [])  # real bins
        res += [np.array([0] + [(ny - 1) * nx] * (len(top) - 1)) + col, (2 * pairs - 1) * nx + col]
        ims += [np.full(len(top), -1), 2 * pairs * nx + col]
        mults += [np.ones(len(top)), np.full(len(pairs), 2.0)]
        kys += [np.array(top), pairs]
        kxs += [np.full(len(top) + len(pairs), kx)]
    # the columns in between, row by row (the packed array's order)
    inner = np.arange(1, (nx - 1) // 2 + 1)
    rows = np.arange(ny)[:, None] * nx
    res.append((rows + 2 * inner - 1).ravel())
    ims.append((rows + 2 * inner).ravel())
    mults.append(np.full(ny * len(inner), 2.0))
    fine_inner = ~coarse[:, inner].ravel()
    re = np.concatenate(res).astype(np.int64)  # DC first
    im = np.concatenate(ims).astype(np.int64)
    mult = np.concatenate(mults)
    fine_edges = ~coarse[np.concatenate(kys).astype(np.int64), np.concatenate(kxs).astype(np.int64)]
    fine = np.concatenate([fine_edges, fine_inner])
    return re, im, mult, fine, int(mult[1:][fine[1:]].sum())


def _spectrum_sums(packed: np.ndarray, cutoff: float, top_share: float, *, compiled: bool = True):
    """``(total, fine_power, top)`` of the packed real DFT ``packed`` (``ny × nx`` float32; see
    ``_kernels.spectrum_sums``, one compiled pass where numba is installed), else the same
    figures, to the last bit, by NumPy over :func:`_packed_bins`: every sum in float64 in the
    bins' order, the top ones from the largest down (``compiled=False`` takes this path too).
    ``top_share`` 0: no top sum (0)."""
    cutoff2 = np.float32(cutoff * cutoff)
    kernel = _compiled("spectrum_sums") if compiled else None
    if kernel is not None:
        return kernel(packed, cutoff2, float(top_share))
    re, im, mult, fine, n_fine = _packed_bins(*packed.shape, cutoff)
    flat = packed.ravel()
    power = flat[re] * flat[re]
    real = im < 0
    power += np.where(real, np.float32(0.0), flat[np.where(real, 0, im)] ** 2)
    weighted = power[1:].astype(np.float64) * mult[1:]
    total = float(np.cumsum(weighted)[-1]) if len(weighted) else 0.0
    sel = fine[1:]
    fine_sum = float(np.cumsum(weighted[sel])[-1]) if sel.any() else 0.0
    if top_share <= 0:
        return total, fine_sum, 0.0
    k = max(1, int(top_share * n_fine))
    values, twice = power[1:][sel], mult[1:][sel] == 2.0
    once, twice = values[~twice], values[twice]
    k2, k1 = min((k + 1) // 2, len(twice)), min(k, len(once))
    top2 = np.partition(twice, len(twice) - k2)[len(twice) - k2 :] if k2 else twice[:0]
    top1 = np.partition(once, len(once) - k1)[len(once) - k1 :] if k1 else once[:0]
    pool = np.sort(np.concatenate([top2, top2, top1]))[::-1][:k]
    return total, fine_sum, float(np.cumsum(pool.astype(np.float64))[-1]) if len(pool) else 0.0


def fine_power_stats(grey: np.ndarray, mask: np.ndarray, gsd: float) -> tuple[float, float]:
    """``(fine_power_share, fine_peak_share)`` of a candidate's interior detail.

    The first is the share of the detail's power at periods shorter than FINE_PERIOD_M; the
    second the share of that fine power in its strongest FINE_PEAK_TOP of frequency bins (at
    least one), NaN where ``gsd`` exceeds FINE_PEAK_MAX_GSD (ADR 0032).

    The peak share responds to the module grid's regularity: it puts its fine power into a few
    harmonics of its pitch, where noise, roofing speckle and shade edges spread theirs.

    ``grey`` is a float32 crop of the grey tile and ``mask`` (uint8, 0/1) the candidate in it,
    with one pixel of margin wherever the candidate does not touch the tile's edge. The mask is
    eroded by a 3×3 square (the crop's outside counts as candidate: the tile edge is not an
    outline); the detail is ``(grey - m) · mask`` with ``m`` the mask-normalised Gaussian mean
    (σ = DETAIL_SIGMA_M, at least 2 px; zeros outside the crop; on a grid where σ spans at
    least DETAIL_GRID_SIGMA_PX pixels, :func:`_masked_mean`); its power spectrum (DFT of the
    crop zero-padded to OpenCV's optimal sizes, computed as the real DFT's half spectrum with
    each mirrored bin counted twice) is summed below and above FINE_PERIOD_M, leaving out DC.
    NaN when fewer than FINE_MIN_PIXELS interior pixels remain or the detail's root mean square
    over them is below FINE_MIN_DETAIL (both NaN then).
    """
    nan = float("nan")
    inner = cv2.erode(mask, _SQUARE3)
    n_inner = cv2.countNonZero(inner)
    if n_inner < FINE_MIN_PIXELS:
        return nan, nan
    weight = inner.astype(np.float32)
    detail = grey - _masked_mean(grey * weight, weight, max(DETAIL_SIGMA_M / gsd, 2.0))
    detail *= weight
    if float(np.dot(detail.ravel(), detail.ravel())) < FINE_MIN_DETAIL**2 * n_inner:
        return nan, nan
    return detail_spectrum_stats(detail, gsd)


_SQUARE3 = np.ones((3, 3), np.uint8)


@lru_cache(maxsize=16)
def _gaussian_taps(sigma: float) -> np.ndarray:
    """The float32 taps ``cv2.GaussianBlur`` builds for ``sigma`` on a float32 image:
    ``sepFilter2D`` with them gives its bits without building them on every call."""
    return cv2.getGaussianKernel(int(np.rint(sigma * 8 + 1)) | 1, sigma, cv2.CV_32F)


def _masked_mean(weighted: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """The mask-normalised Gaussian mean ``G(weighted) / G(weight)`` (σ = ``sigma`` pixels, zeros
    outside the crop, the denominator at least 1e-6), on a grid ``f`` times coarser
    (DETAIL_GRID_SIGMA_PX): both maps zero-padded to whole blocks of ``f × f`` and averaged
    over them, smoothed with σ / f, divided, and the ratio resampled bilinearly to the crop."""
    f = max(1, int(sigma / DETAIL_GRID_SIGMA_PX * (1 + SNAP_TOLERANCE)))
    h, w = weighted.shape
    if f > 1:
        hh, ww = -(-h // f) * f, -(-w // f) * f
        if (hh, ww) != (h, w):
            weighted = cv2.copyMakeBorder(weighted, 0, hh - h, 0, ww - w, cv2.BORDER_CONSTANT)
            weight = cv2.copyMakeBorder(weight, 0, hh - h, 0, ww - w, cv2.BORDER_CONSTANT)
        size = (ww // f, hh // f)
        weighted = cv2.resize(weighted, size, interpolation=cv2.INTER_AREA)
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
        sigma /= f
    taps = _gaussian_taps(sigma)
    num = cv2.sepFilter2D(weighted, -1, taps, taps, borderType=cv2.BORDER_CONSTANT)
    den = cv2.sepFilter2D(weight, -1, taps, taps, borderType=cv2.BORDER_CONSTANT)
    np.maximum(den, 1e-6, out=den)
    num /= den
    if f > 1:
        num = cv2.resize(num, (ww, hh), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return num


def detail_spectrum_stats(
    detail: np.ndarray, gsd: float, *, compiled: bool = True
) -> tuple[float, float]:
    """The two shares of :func:`fine_power_stats` from the masked detail itself: its power
    spectrum (DFT zero-padded to OpenCV's optimal sizes, DC left out) split below and above
    FINE_PERIOD_M, and the share of the fine power in its strongest FINE_PEAK_TOP of bins (NaN
    above FINE_PEAK_MAX_GSD). Computed from OpenCV's packed real DFT (float32) and its half
    spectrum's bins (:func:`_packed_bins`, each mirrored bin counted twice): the same figures
    as the whole spectrum's. The sums: :func:`_spectrum_sums`."""
    nan = float("nan")
    h, w = detail.shape
    ny, nx = cv2.getOptimalDFTSize(h), cv2.getOptimalDFTSize(w)
    padded = cv2.copyMakeBorder(detail, 0, ny - h, 0, nx - w, cv2.BORDER_CONSTANT)
    peak = gsd <= FINE_PEAK_MAX_GSD
    total, fine_power, top = _spectrum_sums(
        cv2.dft(padded), gsd / FINE_PERIOD_M, FINE_PEAK_TOP if peak else 0.0, compiled=compiled
    )
    if total <= 0:
        return nan, nan
    share = fine_power / total
    if not peak or fine_power <= 0:
        return share, nan
    return share, top / fine_power


def fine_power_share(grey: np.ndarray, mask: np.ndarray, gsd: float) -> float:
    """The share of :func:`fine_power_stats`: how much of a candidate's interior detail power
    lies at periods shorter than FINE_PERIOD_M.

    Responds to what an array's surface is: uniform at the scale of metres, with all its
    variation in the module grid (frames and gaps every 1-2 m) and finer. A surface whose
    brightness wanders over metres (uneven roofing, dappled light, a car park, a tree crown)
    varies at coarser periods; a blob spanning two surfaces has a step among its detail.
    """
    return fine_power_stats(grey, mask, gsd)[0]


def measure_fine_power(
    grey: np.ndarray, labels: np.ndarray, gsd: float, which, boxes: np.ndarray | None = None
) -> np.ndarray:
    """:func:`fine_power_stats` of each label ``i + 1`` with ``which[i]`` as an ``(n, 2)`` array
    (NaN elsewhere); the crop is the label's tight box (``boxes`` when known) grown by one
    pixel, within the tile."""
    h, w = labels.shape
    out = np.full((len(which), 2), np.nan)
    slices = _box_slices(labels, len(which), boxes)
    for i in np.flatnonzero(which):
        if slices[i] is None:
            continue
        ys, xs = slices[i]
        y0, y1 = max(ys.start - 1, 0), min(ys.stop + 1, h)
        x0, x1 = max(xs.start - 1, 0), min(xs.stop + 1, w)
        mask = (labels[y0:y1, x0:x1] == int(i) + 1).view(np.uint8)
        out[i] = fine_power_stats(grey[y0:y1, x0:x1], mask, gsd)
    return out


def _best_fine_gain(X: np.ndarray, fusion: Fusion, gsd: float) -> np.ndarray:
    """The most measuring the two spectral statistics can add to each row's log-odds: the best
    terms of the two cues (each statistic lies in [0, 1]; an unmeasured one adds 0), plus the
    Gabor energy penalty a module grid may waive (:func:`gabor_waiver`) where the fine
    peak share can be measured at all."""
    best = 0.0
    for col in _FINE_COLS:
        weight = fusion.instance_weights[col] / fusion.instance_std[col]
        best += max(
            weight * (1.0 - fusion.instance_mean[col]), -weight * fusion.instance_mean[col], 0
        )
    if gsd > FINE_PEAK_MAX_GSD:
        return np.full(len(X), best)
    return best - _terms(X, fusion)[..., _GABOR_COL]  # the whole penalty (≤ 0)


def gabor_waiver(peak: np.ndarray) -> np.ndarray:
    """The share of the Gabor energy penalty a candidate keeps, from its fine peak share: 1 up
    to GABOR_WAIVE_FROM (and where the share is not measured), 0 from GABOR_WAIVE_TO, linear
    between (ADR 0035)."""
    ramp = (_nan_to_zero(np.array(peak, np.float64)) - GABOR_WAIVE_FROM) / (
        GABOR_WAIVE_TO - GABOR_WAIVE_FROM
    )
    return 1.0 - np.minimum(np.maximum(ramp, 0.0), 1.0)


#: Added to the instance score (a sum of standardised cues, ``fusion.json``) before the
#: logistic. It puts the default pseudo-label cut (0.85) where precision against recall (F0.5)
#: was best on the tuning half of the shared real data (its even images; the odd half measures
#: it: docs/spectral_quality.md, ADRs 0008, 0009 and 0017). A tuned default like the edge
#: thresholds, not a model trained on that data.
CONFIDENCE_OFFSET = -3.5

#: Cues that only count against a candidate: their standardised, signed term is clipped at 0.
#: Strong oriented texture (Gabor energy: tree crowns, vineyard rows, tiled roofs) is evidence
#: against a panel, but its absence is none for one: shadows, flat roofs and asphalt are as
#: smooth (ADR 0028).
PENALTY_ONLY_CUES = ("mean_gabor_energy",)
_PENALTY_ONLY = [INSTANCE_FEATURES.index(name) for name in PENALTY_ONLY_CUES]
#: A module grid is strong oriented texture too: where a candidate's fine detail holds the
#: grid's harmonics (its fine peak share, ADR 0032), the Gabor energy penalty fades, from
#: full at a share of GABOR_WAIVE_FROM (about the level of the typical non-panel candidate on
#: 0.14 m imagery) to none at GABOR_WAIVE_TO (about that of arrays). Where the share is not
#: measured the penalty stays whole. Chosen on the even half of the shared data among ramps
#: from 0.2–0.35 to 0.5–0.7 (ADR 0035).
GABOR_WAIVE_FROM = 0.3
GABOR_WAIVE_TO = 0.6
_GABOR_COL = INSTANCE_FEATURES.index("mean_gabor_energy")
_PEAK_COL = INSTANCE_FEATURES.index("fine_peak_share")
_AREA_COL = INSTANCE_FEATURES.index("log_area_m2")

#: A candidate of few pixels is weak evidence whatever its statistics say: its shape
#: (rectangularity, solidity) and its means rest on a handful of pixels, and at a coarse ground
#: resolution a blob of a small array's size is as often a pool, a car or a roof-edge sliver.
#: Below SMALL_PIXELS pixels the confidence loses SMALL_PENALTY log-odds per halving of the
#: pixel count. Chosen on the even half of the shared data among floors of 100–300 pixels and
#: 0.5–1 log-odds per halving (ADR 0036). On 0.14 m imagery even the smallest candidate (4 m²,
#: 204 pixels) is above the floor; on 0.3 m imagery candidates under 13.5 m² pay.
SMALL_PIXELS = 150.0
SMALL_PENALTY = 0.5


def small_penalty(X: np.ndarray, gsd: float | np.ndarray) -> np.ndarray:
    """Log-odds a candidate loses for its few pixels (0 from :data:`SMALL_PIXELS` up);
    ``gsd``: the ground resolution in metres (a scalar, or one per row of ``X``)."""
    pixels = 10.0 ** X[..., _AREA_COL] / (np.asarray(gsd, np.float64) ** 2)
    return SMALL_PENALTY * np.log2(np.maximum(SMALL_PIXELS / pixels, 1.0))


def confidence(X: np.ndarray, fusion: Fusion, gsd: float | np.ndarray) -> np.ndarray:
    """Instance confidence in [0, 1] from the instance feature rows of candidates at ground
    resolution ``gsd`` (a rank score: higher is more panel-like; see
    :data:`CONFIDENCE_OFFSET` for where 0.85 sits). A NaN statistic is one not measured: it
    counts as the synthetic candidates' mean (adds nothing)."""
    if len(X) == 0:
        return np.zeros(0)
    return 1.0 / (1.0 + np.exp(-_logit(X, fusion, gsd)))


def _logit(X: np.ndarray, fusion: Fusion, gsd: float | np.ndarray) -> np.ndarray:
    """The confidence's log-odds; a statistic that is NaN (not measured) counts as neutral,
    the terms of :data:`PENALTY_ONLY_CUES` are at most 0, the Gabor energy penalty fades
    where the fine peak share shows a module grid (:func:`gabor_waiver`), and a candidate of
    few pixels pays :func:`small_penalty`."""
    terms = _terms(X, fusion)
    terms[..., _GABOR_COL] *= gabor_waiver(X[..., _PEAK_COL])
    return terms.sum(axis=-1) + fusion.instance_bias + CONFIDENCE_OFFSET - small_penalty(X, gsd)


def _log_odds(p: np.ndarray) -> np.ndarray:
    """The log-odds of confidences ``p``: +inf at 1.0 (in float64; nothing beats it), -inf at
    0, without a divide-by-zero warning."""
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _nan_to_zero(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x, nan=0.0)`` in place (NaN → 0, ±inf → the largest finite float),
    without its Python-level cost where every value is finite or NaN (the confidence's
    statistics, many calls per tile)."""
    if np.isinf(x).any():
        return np.nan_to_num(x, copy=False, nan=0.0)
    np.copyto(x, 0.0, where=np.isnan(x))
    return x


def _terms(X: np.ndarray, fusion: Fusion) -> np.ndarray:
    """Each statistic's signed, standardised term before a module grid's waiver: 0 where it
    is NaN (not measured), at most 0 for :data:`PENALTY_ONLY_CUES`."""
    terms = _nan_to_zero((X - fusion.instance_mean) / fusion.instance_std)
    terms *= fusion.instance_weights
    terms[..., _PENALTY_ONLY] = np.minimum(terms[..., _PENALTY_ONLY], 0.0)
    return terms


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Analysis:
    """Everything the analyser computed for one tile (for learning, review and debugging)."""

    features: np.ndarray
    score: np.ndarray
    labels: np.ndarray
    X: np.ndarray
    boxes: np.ndarray
    confidence: np.ndarray  # per label; 0 where the area limits drop it
    kept: np.ndarray  # bool per label: passes the area limits


def _traced_px(settings: Any, gsd: float) -> tuple[float, float]:
    """The pixel counts between which a candidate's shape is traced: the area limits, with a
    margin for rounding (outside them the candidate is dropped anyway)."""
    return (0.999 * settings.min_area_m2 / gsd**2, 1.001 * settings.max_area_m2 / gsd**2)


def analyse(
    rgb: np.ndarray,
    valid: np.ndarray | None,
    gsd: float,
    settings: Any,
    fusion: Fusion | None = None,
    *,
    measure_all: bool = False,
) -> Analysis:
    """Run the whole analysis of one tile and return every intermediate.

    The candidates of every segmentation are scored without the two spectral statistics
    (neutral), suppressed by that confidence, and the survivors then get the spectral measure
    and their final confidence: only those that could still reach the storage floor
    (``settings.floor``) with the best possible statistics (and the texture penalty a module
    grid could waive) are measured, unless ``measure_all`` (which also computes every
    mean statistic of every candidate, not only those the confidence weighs).
    """
    fusion = _fusion_for(fusion, settings)
    if valid is not None and valid.all():
        valid = None  # the same figures; every pass that masks invalid pixels is skipped
    grey_u8 = grey_of(rgb)
    feats = pixel_features(rgb, valid, gsd, grey_u8)
    score = score_map(feats, fusion)
    edges = strong_edges(rgb, gsd, grey_u8) if settings.edge_cut else None
    contrast = None
    if settings.contrast_segmentation and gsd > CONTRAST_MIN_GSD:
        contrast = contrast_map(rgb, grey_u8, gsd, valid)
    hypotheses = segmentation_maps(feats, score, settings, contrast)
    context = FrameContext.of(rgb, feats, valid)
    # Shapes are traced only where the area limits may keep a component; of the means, those
    # the confidence weighs (the others: for the survivors, below).
    px = _traced_px(settings, gsd)
    # (with ``measure_all``, every mean of every candidate: learning and diagnostics see each
    # candidate's own statistics)
    weighed = {k for k in range(1 + len(PIXEL_FEATURES)) if fusion.instance_weights[k] != 0}
    if measure_all:
        weighed = None
    grey = grey_u8.astype(np.float32)
    field = orientation_field(grey, gsd) if settings.orientation_split else None
    parts = []
    for hyp_score, threshold, close_m in hypotheses:
        labels, n = segment(hyp_score, valid, gsd, threshold, edges, close_m)
        if field is not None:
            labels, n = split_by_orientation(labels, n, field, gsd, settings.min_area_m2 / gsd**2)
        X, boxes = instance_stats(
            labels,
            n,
            feats,
            score,
            gsd,
            rgb,
            valid,
            context=context,
            shape_area_px=px,
            means=weighed,
        )
        kept = _within_area_limits(X, settings)
        conf = np.where(kept, confidence(X, fusion, gsd), 0.0)
        parts.append((labels, X, boxes, conf, kept))
    if len(parts) == 1:
        labels, X, boxes, conf, kept = parts[0]
    else:
        labels, X, boxes, conf = suppress(parts, settings.min_area_m2 / (gsd * gsd))
        kept = np.ones(len(conf), bool)
    conf = _with_fine_power(grey, labels, X, kept, gsd, fusion, settings, measure_all, boxes)
    tile = TileData(rgb, valid, gsd, grey, feats, score, context)
    for step, on in (
        (merge_fragments, settings.merge_fragments),
        (split_candidates, settings.split_candidates),
        (split_by_module_grid, settings.grid_split),
        (fill_outlines, settings.fill_outlines),
    ):
        if on:
            labels, X, boxes, conf, kept = step(
                labels,
                X,
                boxes,
                conf,
                kept,
                tile,
                fusion,
                settings,
                shape_area_px=px,
                means=weighed,
            )
    conf = cap_white(rgb, labels, boxes, conf, kept)
    stored = kept if measure_all else kept & (conf >= settings.floor)
    _fill_means(X, labels, stored, feats, score, boxes)
    return Analysis(feats, score, labels, X, boxes, conf, kept)


#: Clipped white (ADR 0045): a candidate more than WHITE_MAX_SHARE of whose pixels are clipped
#: white (all three bands at least WHITE_LEVEL) is at most WHITE_CAP confident. A photovoltaic
#: module absorbs most of the light; over the shared real data no candidate that matches a
#: labelled panel at 0.5 or more confidence has over 5 % of such pixels, while white hall and
#: flat roofs with regular seams reach 0.94 confidence with 59 % of them. The cap (under the
#: 0.5 that the quality tables start at) keeps such a candidate stored — a reviewer sees it, a
#: glinting array can still be accepted — but never a pseudo-label. In 8-bit levels, as the
#: analyser reads every raster.
WHITE_LEVEL = 240
WHITE_MAX_SHARE = 0.2
WHITE_CAP = 0.4


def cap_white(rgb: np.ndarray, labels: np.ndarray, boxes: np.ndarray, conf: np.ndarray, kept):
    """``conf`` with each kept candidate above :data:`WHITE_CAP` capped there when more than
    :data:`WHITE_MAX_SHARE` of its pixels are clipped white (see :data:`WHITE_LEVEL`)."""
    which = kept & (conf > WHITE_CAP)
    if not which.any():
        return conf
    white = cv2.inRange(rgb, (WHITE_LEVEL,) * 3, (255,) * 3)  # 255: all three at the level
    white = np.minimum(white, 1, out=white).astype(np.float32)
    area, sums, _ = _label_sums(labels, len(conf), [white], boxes=boxes, only=which)
    capped = which & (sums[:, 0] > WHITE_MAX_SHARE * area)
    return np.where(capped, WHITE_CAP, conf)


def outline_confidence(
    rgb: np.ndarray,
    valid: np.ndarray | None,
    gsd: float,
    labels: np.ndarray,
    n: int,
    settings: Any,
    fusion: Fusion | None = None,
) -> np.ndarray:
    """The confidence the analyser would give outlines it did not draw: label ``i + 1`` of
    ``labels`` (int32, shaped like the tile) scored as a candidate with exactly that outline —
    every instance statistic measured on it, the spectral ones included, then the confidence
    and the clipped-white cap, as for the analyser's own candidates; 0 outside the area limits.

    Separates what a segmentation misses from what the confidence misses: scored on hand-drawn
    panel outlines (``benchmarks/diagnose_confidence.py``), the share at 0.85 or more is the
    recall that pseudo-labels could reach at that cut if every panel were segmented exactly.
    """
    if n == 0:
        return np.zeros(0)
    fusion = _fusion_for(fusion, settings)
    grey_u8 = grey_of(rgb)
    feats = pixel_features(rgb, valid, gsd, grey_u8)
    score = score_map(feats, fusion)
    grey = grey_u8.astype(np.float32)
    tile = TileData(rgb, valid, gsd, grey, feats, score, FrameContext.of(rgb, feats, valid))
    stats = {"shape_area_px": _traced_px(settings, gsd)}
    X, boxes, kept = _measure_new(labels, n, tile, fusion, settings, stats)
    conf = np.where(kept, confidence(X, fusion, gsd), 0.0)
    return cap_white(rgb, labels, boxes, conf, kept)


def _fill_means(X, labels, which, feats: np.ndarray, score: np.ndarray, boxes=None) -> None:
    """Fill the mean columns of ``X`` still NaN (those the confidence does not weigh) of the
    rows ``which`` with the means over each label's final pixels (after suppression: the pixels
    it keeps), in one pass over the label image or its labels' ``boxes`` (:func:`_label_sums`)."""
    todo = [k for k in range(1 + len(feats)) if len(X) and np.isnan(X[:, k]).all()]
    if not todo or not np.any(which):
        return
    stack = (score, *feats)
    area, sums, _ = _label_sums(labels, len(X), [stack[k] for k in todo], boxes=boxes, only=which)
    rows = np.flatnonzero(which & (area > 0))
    X[np.ix_(rows, todo)] = sums[rows] / area[rows, None]


def _with_fine_power(
    grey, labels, X, kept, gsd, fusion, settings, measure_all, boxes=None
) -> np.ndarray:
    """Measure ``fine_power_share`` and ``fine_peak_share`` (into ``X``) on the kept candidates
    that need them and return every candidate's final confidence (0 where not kept).
    ``boxes``: boxes that hold each candidate's pixels (they may be loose): the tight ones of
    the measured candidates are then found inside them, not by a pass over the whole tile."""
    weighed = any(fusion.instance_weights[c] != 0 for c in _FINE_COLS)
    if measure_all or (weighed and settings.floor <= 0):
        which = kept.copy()
    elif not weighed or settings.floor >= 1:
        which = np.zeros_like(kept)
    else:  # could it reach the floor with the best statistics in [0, 1]?
        floor = np.log(settings.floor / (1.0 - settings.floor))
        which = kept & (_logit(X, fusion, gsd) + _best_fine_gain(X, fusion, gsd) >= floor)
    if which.any():
        tight = None
        if boxes is not None:
            # (one map: the compiled pass wants at least one; its sums are not used)
            _, _, tight = _label_sums(labels, len(which), [grey], boxes=boxes, only=which)
        X[np.ix_(which, _FINE_COLS)] = measure_fine_power(grey, labels, gsd, which, tight)[which]
    return np.where(kept, confidence(X, fusion, gsd), 0.0)


#: Fragment merge (ADR 0026): candidates at least MERGE_MIN_CONFIDENCE confident whose masks come
#: within MERGE_GAP_M of each other form a group, tried as one candidate (the closing of their
#: union); it replaces them when it is at least as confident as the best of them. Chosen on the
#: even half of the shared data (gaps 0.6–2 m and least confidences 0.05–0.3 measured).
MERGE_GAP_M = 1.0
MERGE_MIN_CONFIDENCE = 0.1


@dataclass(frozen=True)
class TileData:
    """One tile and what the analyser derived from it, for measuring new candidates."""

    rgb: np.ndarray
    valid: np.ndarray | None
    gsd: float
    grey: np.ndarray
    features: np.ndarray
    score: np.ndarray
    context: FrameContext


def _measure_new(
    labels, n, tile: TileData, fusion, settings, stats, *, among=None, boxes=None, beat=None
):
    """``(X, boxes, ok)`` of ``n`` new candidates (label ``i + 1`` of ``labels``) that a merge
    or a split made: their statistics, ``ok`` where they lie within the area limits (and
    ``among``, when given), and the spectral statistics of the ``ok`` ones — with ``beat`` (a
    log-odds per candidate), only of those that could exceed it with the best possible
    spectral statistics (a NaN one is neutral: the best term is ≥ 0), and ``ok`` then says
    which were measured. ``boxes``: their tight boxes when known; ``stats``: ``shape_area_px``
    and ``means`` of :func:`instance_stats`."""
    Xn, bn = instance_stats(
        labels,
        n,
        tile.features,
        tile.score,
        tile.gsd,
        tile.rgb,
        tile.valid,
        context=tile.context,
        boxes=None if boxes is None else boxes.astype(np.int64),
        **stats,
    )
    ok = _within_area_limits(Xn, settings)
    if among is not None:
        ok &= among
    if beat is not None:
        ok &= _logit(Xn, fusion, tile.gsd) + _best_fine_gain(Xn, fusion, tile.gsd) > beat
    if ok.any():
        Xn[np.ix_(ok, _FINE_COLS)] = measure_fine_power(tile.grey, labels, tile.gsd, ok, bn)[ok]
    return Xn, bn, ok


def merge_fragments(labels, X, boxes, conf, kept, tile: TileData, fusion, settings, **stats):
    """Merge the fragments of one array (rows of a multi-row array, parts cut by a frame).

    Returns ``(labels, X, boxes, confidence, kept)`` with each merged candidate in place of its
    members (new rows at the end; the other rows keep their order). A group is the members
    (kept, confidence ≥ :data:`MERGE_MIN_CONFIDENCE`) inside one 8-connected part of the
    closing (disk of radius ``MERGE_GAP_M / 2``) of their union; its mask is that part, less a
    one-pixel ring around every kept candidate that is no member (instances never touch), and
    must stay one 8-connected piece within the area limits of ``settings``. It is scored like any
    candidate (fine power share included) and replaces its members when its confidence is at
    least the highest of theirs: a merge is verified, never assumed. ``stats``:
    ``shape_area_px`` and ``means`` of :func:`instance_stats`.
    """
    gsd = tile.gsd
    unchanged = labels, X, boxes, conf, kept
    n = len(conf)
    member = kept & (conf >= MERGE_MIN_CONFIDENCE)
    if np.count_nonzero(member) < 2:
        return unchanged
    lut = np.zeros(n + 1, np.uint8)
    lut[1:][member] = 1
    lut[1:][kept & ~member] = 2
    # 1: a member, 2: another kept candidate (one gather for both; np.take: the same values
    # as indexing, in about half the time on a tile)
    kind = np.take(lut, labels)
    on = kind == 1
    cand = on.view(np.uint8)
    closed = disk_morphology(cand, cv2.MORPH_CLOSE, round(MERGE_GAP_M / 2 / gsd))
    if tile.valid is not None:
        closed[~tile.valid] = 0
    nc, comp = cv2.connectedComponents(closed, connectivity=8, ltype=cv2.CV_32S)
    pairs = np.unique(comp[on].astype(np.int64) * (n + 1) + labels[on])
    group, who = np.divmod(pairs, n + 1)
    multi = np.flatnonzero(np.bincount(group, minlength=nc) >= 2)
    if len(multi) == 0:
        return unchanged
    glut = np.zeros(nc, np.int32)
    glut[multi] = np.arange(1, len(multi) + 1)
    mlab = np.take(glut, comp)
    others = (kind == 2).view(np.uint8)
    ring = cv2.dilate(others, np.ones((3, 3), np.uint8)) > 0
    mlab[ring & ~on] = 0
    g = len(multi)
    n_parts, parts = cv2.connectedComponents((mlab > 0).view(np.uint8), connectivity=8)
    whole = np.ones(g, bool)
    if n_parts - 1 != g:  # a group the ring cut in two is not merged
        pieces = np.unique(mlab.astype(np.int64) * n_parts + parts)
        per_group = np.bincount(pieces // n_parts, minlength=g + 1)[1:]
        whole = per_group == 1
    Xm, bm, ok = _measure_new(mlab, g, tile, fusion, settings, stats, among=whole)
    best = np.zeros(nc)
    np.maximum.at(best, group, conf[who - 1])
    cm = confidence(Xm, fusion, gsd)
    ok &= cm >= best[multi]
    if not ok.any():
        return unchanged
    drop = np.zeros(n + 1, bool)
    drop[who[np.isin(group, multi[ok])]] = True
    rows = np.flatnonzero(~drop[1:])
    new = np.zeros(n + 1, np.int32)
    new[1 + rows] = np.arange(1, len(rows) + 1)
    out = np.take(new, labels)
    acc = np.flatnonzero(ok)
    mnew = np.zeros(g + 1, np.int32)
    mnew[1 + acc] = len(rows) + 1 + np.arange(len(acc))
    sel = np.take(mnew, mlab)
    out = np.where(sel > 0, sel, out)
    return (
        out,
        np.concatenate([X[rows], Xm[acc]]),
        np.concatenate([boxes[rows], bm[acc]]),
        np.concatenate([conf[rows], cm[acc]]),
        np.concatenate([kept[rows], np.ones(len(acc), bool)]),
    )


#: Verified split (ADR 0029; setting ``split_candidates``, on since ADR 0038): a stored candidate
#: at least SPLIT_MIN_CONFIDENCE confident is cut at the Otsu level of its grey values when the
#: two classes are distinct (their means at least SPLIT_MIN_STEP 8-bit levels apart, and at
#: least SPLIT_MIN_SEPARATION of the grey variance between them: an array beside a shadow or a
#: roof of another tone, not one surface and its noise); each side is opened with a disk of
#: radius SPLIT_OPEN_M (at least one pixel) and its parts are scored like any candidate. A part
#: replaces the candidate only when SPLIT_MARGIN log-odds more confident (the half of an array
#: that lies in shade or reflects the sky can look cleaner than the whole) and when it shows
#: fine texture (:func:`shows_fine_texture`). All chosen on the even half of the shared data
#: (docs/spectral_quality.md); the texture gate has no constant of its own.
SPLIT_MIN_CONFIDENCE = 0.05
#: The colour rejection cues (water, magenta) weigh what a candidate's pixels are on average:
#: one that holds an array and the pool or flowering bush beside it pays for its neighbour.
#: The split's gate (SPLIT_MIN_CONFIDENCE) reads the confidence without them, so that such a
#: candidate is still tried for a part; the part must beat the whole as it is (ADR 0053).
SPLIT_GATE_IGNORES = ("water_excess", "magenta_excess")
SPLIT_MIN_STEP = 30.0
SPLIT_MIN_SEPARATION = 0.7
SPLIT_OPEN_M = 0.15
SPLIT_MARGIN = 1.0
_FINE_POWER_COL = INSTANCE_FEATURES.index("fine_power_share")


def shows_fine_texture(X: np.ndarray, fusion: Fusion) -> np.ndarray:
    """Whether each row's fine power share is measured and at least the fusion's mean of it
    (the mean of the synthetic candidates: with the shipped positive weight, its confidence
    term is then not against the row).

    The texture gate of a split part (ADR 0038): a cut along grey levels alone hands the
    confidence clean-edged uniform planes (dark roof facets, a flat hall roof) that rank like
    arrays by shape and colour; a part replaces its candidate only if its interior detail lies
    mostly at the fine periods of modules and frames (or of mere noise) rather than in the
    broad shading of a plane. A part too flat or thin to measure never passes."""
    share = X[:, _FINE_POWER_COL]
    with np.errstate(invalid="ignore"):
        return ~np.isnan(share) & (share >= fusion.instance_mean[_FINE_POWER_COL])


def otsu_level(values: np.ndarray) -> tuple[int, float, float] | None:
    """Otsu's level of non-negative integer ``values``, its effectiveness and its step.

    The level is the largest value of the lower class (``values > level`` is the upper one),
    found on the histogram with one bin per integer from the minimum to the maximum, as
    :func:`skimage.filters.threshold_otsu` finds it on that histogram; the effectiveness is the
    share of the values' variance that lies between the two classes (1 for two spikes, 0.75
    for a uniform spread, about 0.64 for a normal one); the step is the upper class's mean less
    the lower's. ``None`` when all values are equal (or there are none). The analyser's splits
    count a crop under a mask with :func:`otsu_level_in` (compiled, the same figures).
    """
    if values.size == 0:
        return None
    lo = int(values.min())
    counts = np.bincount(values.astype(np.int64) - lo).astype(np.float64)
    if len(counts) < 2:
        return None
    centres = np.arange(lo, lo + len(counts), dtype=np.float64)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centres) / w1
    m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    k = int(np.argmax(between))
    total = w1[-1] * float(counts @ (centres - m1[-1]) ** 2)
    return lo + k, float(between[k] / total), float(m2[k + 1] - m1[k])


def otsu_level_in(image: np.ndarray, mask: np.ndarray, *, compiled: bool = True):
    """:func:`otsu_level` of ``image[mask]`` (whole-number values from 0 to 255), counted in
    one compiled pass over the crop where numba is installed (``_kernels.otsu_masked``: no
    gathered copy of the values; the same figures to the last bit), else by
    :func:`otsu_level` itself (``compiled=False`` takes this path too)."""
    kernel = _compiled("otsu_masked") if compiled else None
    if kernel is None:
        return otsu_level(image[mask])
    counts = np.zeros(256, np.int64)
    lo, n, k, between, step, mean, weight = kernel(image, mask, counts)
    if n < 0:  # a value outside 0-255: counted the NumPy way
        return otsu_level(image[mask])
    if n < 2:
        return None
    centres = np.arange(lo, lo + n, dtype=np.float64)
    total = weight * float(counts[lo : lo + n].astype(np.float64) @ (centres - mean) ** 2)
    return lo + k, float(between / total), float(step)


def split_candidates(labels, X, boxes, conf, kept, tile: TileData, fusion, settings, **stats):
    """Split a candidate that holds an array and its surroundings (a dark roof, a shadow).

    Returns ``(labels, X, boxes, confidence, kept)`` like :func:`merge_fragments` (the most
    confident part takes the row of the candidate it replaces, the others are new rows). Every
    candidate at or above the storage floor and :data:`SPLIT_MIN_CONFIDENCE` whose grey values
    fall into two distinct classes (:func:`otsu_level`, :data:`SPLIT_MIN_STEP`,
    :data:`SPLIT_MIN_SEPARATION`) is cut at the Otsu level; each side is opened with a disk of
    radius :data:`SPLIT_OPEN_M` (zero outside the tile) and its 8-connected parts within the
    area limits are scored like any candidate (fine power share included). The parts at least
    :data:`SPLIT_MARGIN` log-odds more confident than the candidate and showing fine texture
    (:func:`shows_fine_texture`, ADR 0038) replace it, taken by
    falling confidence, each unless it touches one taken before (instances never touch); when
    there is none, the candidate stays as it was: a split is verified, never assumed.
    ``stats``: ``shape_area_px`` and ``means`` of :func:`instance_stats`.
    """
    gsd = tile.gsd
    unchanged = labels, X, boxes, conf, kept
    gate = _without_colour(conf, X, fusion)
    parents = np.flatnonzero(kept & (gate >= max(settings.floor, SPLIT_MIN_CONFIDENCE)))
    if len(parents) == 0:
        return unchanged
    r = max(1, round(SPLIT_OPEN_M / gsd))
    min_px = settings.min_area_m2 / (gsd * gsd)
    plab = np.zeros_like(labels)
    owner, pboxes = [], []
    for i, (x0, y0), mine, grey in _parent_crops(labels, boxes, parents, tile.grey):
        otsu = otsu_level_in(grey, mine)
        if otsu is None or otsu[1] < SPLIT_MIN_SEPARATION or otsu[2] < SPLIT_MIN_STEP:
            continue
        level = otsu[0]
        for side in (mine & (grey > level), mine & (grey <= level)):
            _add_parts(plab, owner, pboxes, i, (x0, y0), side, r, min_px)
    if not owner:
        return unchanged
    return _replace_by_parts(
        (labels, X, boxes, conf, kept), plab, owner, pboxes, tile, fusion, settings, stats
    )


def _without_colour(conf: np.ndarray, X: np.ndarray, fusion: Fusion) -> np.ndarray:
    """The confidences ``conf`` of the rows of ``X`` less the (non-positive) terms of
    :data:`SPLIT_GATE_IGNORES`; ``conf`` itself where those are 0."""
    cols = [INSTANCE_FEATURES.index(c) for c in SPLIT_GATE_IGNORES]
    penalty = _terms(X, fusion)[:, cols].sum(axis=1) if len(X) else np.zeros(0)
    out = np.asarray(conf, np.float64).copy()
    paid = penalty < 0
    if paid.any():
        out[paid] = 1.0 / (1.0 + np.exp(-(_log_odds(out[paid]) - penalty[paid])))
    return out


def _parent_crops(labels, boxes, parents, grey):
    """``(i, (x0, y0), mask, grey)`` over the box of each candidate ``i`` in ``parents``."""
    for i in parents:
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        yield i, (x0, y0), labels[y0:y1, x0:x1] == int(i) + 1, grey[y0:y1, x0:x1]


def _add_parts(plab, owner, pboxes, i, origin, side, r, min_px, max_px=np.inf) -> None:
    """The 8-connected parts of ``side`` (a boolean mask over candidate ``i``'s box, whose
    top-left corner is ``origin``) after an opening with a disk of radius ``r`` that sees
    zeros outside the box, those of ``min_px`` to ``max_px`` pixels, appended to a split's
    parts: ``plab`` (part ``j`` labelled ``j + 1``), ``owner`` and ``pboxes`` (tight boxes)."""
    x0, y0 = origin
    h, w = side.shape
    opened = disk_morphology(
        side.astype(np.uint8), cv2.MORPH_OPEN, r, borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    _, comp, cstats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    areas = cstats[1:, cv2.CC_STAT_AREA]
    for j in np.flatnonzero((areas >= min_px) & (areas <= max_px)) + 1:
        owner.append(i)
        left, top, width, height = cstats[j, :4]
        pboxes.append((x0 + left, y0 + top, x0 + left + width, y0 + top + height))
        plab[y0 : y0 + h, x0 : x0 + w][comp == int(j)] = len(owner)


def _replace_by_parts(
    candidates,
    plab,
    owner,
    pboxes,
    tile: TileData,
    fusion,
    settings,
    stats,
    gate=True,
    together=False,
):
    """A verified split's outcome: ``candidates`` (``labels, X, boxes, confidence, kept``) with
    each one replaced by its accepted parts, or unchanged.

    ``plab`` labels the parts (part ``j`` is ``j + 1``), ``owner[j]`` the candidate it was cut
    from, ``pboxes[j]`` its tight box. A part is accepted when it lies within the area limits,
    is :data:`SPLIT_MARGIN` log-odds more confident than its candidate and, with ``gate``,
    shows fine texture (:func:`shows_fine_texture`). With ``together``, the parts of a
    candidate that are each more confident than it, if not by the margin, are accepted too
    when there are two or more of them (the candidate was several arrays that touch). A
    candidate's accepted parts replace it by falling confidence, each unless it touches one
    taken before (instances never touch). The most confident part takes its candidate's row
    and label, the others are new rows. The candidate's other parts within the area limits
    (not accepted) then follow by falling confidence on the same terms, each at its own
    confidence when that reaches the storage floor: a candidate found to be more than one
    thing no longer hides the rest of what it held (a second, less confident array).
    """
    labels, X, boxes, conf, kept = candidates
    owner = np.asarray(owner)
    base = _log_odds(conf[owner])  # the log-odds of each part's candidate
    to_beat = base + SPLIT_MARGIN
    Xp, bp, ok = _measure_new(
        plab,
        len(owner),
        tile,
        fusion,
        settings,
        stats,
        boxes=np.asarray(pboxes),
        beat=base if together else to_beat,
    )
    logit = _logit(Xp, fusion, tile.gsd)
    if gate:
        ok &= shows_fine_texture(Xp, fusion)
    peers = ok & (logit > base)
    ok &= logit > to_beat
    if together:
        for i in np.unique(owner[peers]):
            mine = peers & (owner == i)
            if mine.sum() >= 2:
                ok |= mine
    if not ok.any():
        return candidates
    # The rest of each replaced candidate: measured where the verification skipped the spectral
    # statistics, kept from the storage floor.
    rest = _within_area_limits(Xp, settings) & ~ok & np.isin(owner, owner[ok])
    todo = rest & np.isnan(Xp[:, _FINE_COLS[0]])
    if todo.any():
        Xp[np.ix_(todo, _FINE_COLS)] = measure_fine_power(tile.grey, plab, tile.gsd, todo, bp)[todo]
    cp = np.where(ok | rest, confidence(Xp, fusion, tile.gsd), 0.0)
    rest &= cp >= settings.floor
    # Only the candidates' boxes change in the label image.
    out, X, boxes, conf = labels.copy(), X.copy(), boxes.copy(), conf.copy()
    ring = np.ones((3, 3), np.uint8)
    added = []
    for i in np.unique(owner[ok]):
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        crop, parts = out[y0:y1, x0:x1], plab[y0:y1, x0:x1]
        crop[crop == int(i) + 1] = 0
        taken = np.zeros((y1 - y0, x1 - x0), np.uint8)
        by_confidence = [
            j
            for among in (ok, rest)
            for j in sorted(np.flatnonzero(among & (owner == i)), key=lambda j: (-cp[j], j))
        ]
        for j in by_confidence:
            part = parts == int(j) + 1
            if not taken.any():
                crop[part] = i + 1
                X[i], boxes[i], conf[i] = Xp[j], bp[j], cp[j]
            elif cv2.dilate(taken, ring)[part].any():
                continue
            else:
                added.append(j)
                crop[part] = len(conf) + len(added)
            taken[part] = 1
    added = np.asarray(added, np.int64)
    return (
        out,
        np.concatenate([X, Xp[added]]),
        np.concatenate([boxes, bp[added]]),
        np.concatenate([conf, cp[added]]),
        np.concatenate([kept, np.ones(len(added), bool)]),
    )


#: Module-grid split (ADR 0041; setting ``grid_split``): where the module grid is resolved
#: (ground resolution at most GRID_MAX_GSD metres), a stored candidate of at least
#: GRID_MIN_PARENT_M2 is searched for one grid of modules: the pitch (GRID_PITCHES_M, the sides
#: of a module and of a module pair) and the direction (across the candidate's dominant lines,
#: or at right angles to it) where its detail (grey less a Gaussian of σ GRID_DETAIL_M) repeats
#: most strongly at one pitch and least at half of it. Where that strength reaches
#: GRID_MIN_STRENGTH, its grid map (:func:`grid_map`) is cut inside the candidate at the map's
#: Otsu level, opened with a disk of radius GRID_OPEN_M, and the parts are verified like those
#: of :func:`split_candidates`. The pitches, the detail, the windows and the opening were set
#: from the size of modules before measuring; the parent's least area and strength were chosen
#: on the even half of the shared data for speed (they change nothing there) and checked on the
#: odd half (docs/spectral_quality.md).
GRID_MAX_GSD = FINE_PEAK_MAX_GSD
GRID_MIN_PARENT_M2 = 100.0
GRID_MIN_STRENGTH = 0.1
#: Whether a grid part must also pass the texture gate of the grey split (ADR 0038). It does
#: not: the grid map chose it for its module grid, and arrays whose fine power share lies under
#: the synthetic mean were turned back (measured in ADR 0041).
GRID_GATE = False
GRID_PITCHES_M = (0.8, 2.2, 0.05)  # first, last, step
GRID_DETAIL_M = 0.3
GRID_MIN_PAIRS = 0.25  # of the candidate's pixels: lags with fewer pixel pairs are not read
GRID_OPEN_M = 0.5
#: The grid map's windows in pitches: the side of the squares its local correlations are taken
#: over, and of those it is averaged over (squares with the second moments of Gaussians of σ
#: 0.75 and 0.5 pitch).
GRID_WINDOW = 2.6
GRID_SMOOTH = 1.7
GRID_MAX_PART = 0.9  # a part with more of the candidate's pixels is the candidate again
GRID_QUANT = 127.5  # the grid map's range [-1, 1] as 256 levels for Otsu


def grid_pitches(gsd: float) -> np.ndarray:
    """The pitches (pixels) :func:`module_grid` tries at ground resolution ``gsd``."""
    first, last, step = GRID_PITCHES_M
    n = math.floor((last - first) / step + 0.5) + 1
    return (first + step * np.arange(n)) / gsd


def grid_direction(grey: np.ndarray, mask: np.ndarray) -> float:
    """The direction (radians, image x right and y down) across the dominant lines of ``grey``
    inside ``mask``: the mean gradient orientation (3×3 Sobel, structure tensor summed over the
    mask)."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3).ravel()
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3).ravel()
    gxm = gx * mask.ravel()
    gym = gy * mask.ravel()
    return 0.5 * math.atan2(
        2.0 * float(np.vdot(gxm, gy)), float(np.vdot(gxm, gx) - np.vdot(gym, gy))
    )


def _bilinear(R: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``R`` (periodic: negative lags wrap) read at real lags ``(x, y)``."""
    h, w = R.shape
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    return (
        R[y0 % h, x0 % w] * (1 - fx) * (1 - fy)
        + R[y0 % h, (x0 + 1) % w] * fx * (1 - fy)
        + R[(y0 + 1) % h, x0 % w] * (1 - fx) * fy
        + R[(y0 + 1) % h, (x0 + 1) % w] * fx * fy
    )


def module_grid(grey: np.ndarray, mask: np.ndarray, gsd: float) -> tuple[float, float, float]:
    """The module grid most evident in ``grey`` inside ``mask``: ``(strength, direction,
    pitch)`` with the pitch in pixels.

    The detail (``grey`` less a Gaussian of σ :data:`GRID_DETAIL_M`, centred on its mask mean
    and zero outside the mask) is autocorrelated over the mask (one FFT, normalised per lag by
    the number of pixel pairs and by the detail's variance: 1 at lag 0). For each pitch of
    :func:`grid_pitches` along the direction of :func:`grid_direction` and the one at right
    angles, the strength is the autocorrelation at the pitch less that at half the pitch:
    high for frames one pitch apart (modules), low for a surface that repeats at half the
    pitch or not at all. (A strictly regular fine period P also reads high at odd multiples
    of P; subtracting the third of the pitch too was measured and not kept, ADR 0041.) Lags
    that fewer than :data:`GRID_MIN_PAIRS` of the mask's pixels share read 0.
    """
    theta = grid_direction(grey, mask)
    m = mask.astype(np.float32)
    d = grey - cv2.GaussianBlur(
        grey, (0, 0), max(GRID_DETAIL_M / gsd, 1.0), borderType=cv2.BORDER_REFLECT
    )
    d = (d - float(d[mask].mean())) * m
    h, w = mask.shape
    pitches = grid_pitches(gsd)
    pad = math.ceil(pitches[-1]) + 2  # lags up to the largest pitch are not wrapped
    shape = (cv2.getOptimalDFTSize(h + pad), cv2.getOptimalDFTSize(w + pad))
    R, pairs = _autocorrelation(d, shape), _autocorrelation(m, shape)
    n = float(m.sum())
    R /= np.maximum(pairs, 1.0) * max(float((d * d).sum()) / n, 1e-6)
    R[pairs < GRID_MIN_PAIRS * n] = 0.0
    best = (-np.inf, theta, float(pitches[0]))
    for direction in (theta, theta + math.pi / 2):
        c, s_ = math.cos(direction), math.sin(direction)
        strength = _bilinear(R, pitches * c, pitches * s_) - _bilinear(
            R, pitches * c / 2, pitches * s_ / 2
        )
        k = int(np.argmax(strength))
        if strength[k] > best[0]:
            best = (float(strength[k]), direction, float(pitches[k]))
    return best


def _autocorrelation(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The circular autocorrelation of float32 ``a`` zero-padded to ``shape`` (the inverse DFT
    of its power spectrum, scaled by the number of pixels), by OpenCV's packed real DFT."""
    h, w = a.shape
    padded = cv2.copyMakeBorder(a, 0, shape[0] - h, 0, shape[1] - w, cv2.BORDER_CONSTANT)
    spectrum = cv2.dft(padded)
    power = cv2.mulSpectrums(spectrum, spectrum, 0, conjB=True)
    return cv2.idft(power, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)


def _shifted(a: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``a`` moved by ``(dx, dy)`` pixels (bilinear, mirrored at the border)."""
    M = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(
        a, M, (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def _box(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` × ``size`` square (mirrored at the border)."""
    return cv2.boxFilter(x, -1, (size, size), borderType=cv2.BORDER_REFLECT)


def _odd(x: float) -> int:
    """``x`` rounded (halves up), plus one if even; at least 3: an odd window side."""
    return max(3, math.floor(x + 0.5) // 2 * 2 + 1)


def _local_correlation(d: np.ndarray, dx: float, dy: float, window: int) -> np.ndarray:
    """Correlation of ``d`` with itself one lag ``(dx, dy)`` away, centred on each pixel, over a
    ``window`` × ``window`` square."""
    a, b = _shifted(d, dx / 2, dy / 2), _shifted(d, -dx / 2, -dy / 2)
    # A box sum of squares can come out a hair below 0 on a flat patch (OpenCV's running
    # sums): clamped, so that the square root is never NaN.
    power = np.maximum(_box(a * a, window), 0) * np.maximum(_box(b * b, window), 0)
    return _box(a * b, window) / (np.sqrt(power) + 1e-3)


def grid_map(grey: np.ndarray, direction: float, pitch: float) -> np.ndarray:
    """Where ``grey`` holds a grid of period ``pitch`` pixels along ``direction``: the local
    correlation of its detail (less a Gaussian of σ pitch / 3) one pitch away, less that half a
    pitch away, over squares of :data:`GRID_WINDOW` pitches, then averaged over squares of
    :data:`GRID_SMOOTH` pitches (sides rounded to odd pixels); in [-2, 2], about 1 on modules
    and 0 on plain surfaces or those that repeat at half the pitch."""
    d = grey - cv2.GaussianBlur(grey, (0, 0), max(pitch / 3, 1.0), borderType=cv2.BORDER_REFLECT)
    dx, dy = pitch * math.cos(direction), pitch * math.sin(direction)
    window = _odd(GRID_WINDOW * pitch)
    g = _local_correlation(d, dx, dy, window) - _local_correlation(d, dx / 2, dy / 2, window)
    return _box(g, _odd(GRID_SMOOTH * pitch))


def split_by_module_grid(labels, X, boxes, conf, kept, tile: TileData, fusion, settings, **stats):
    """Cut an array out of the roof it was segmented with, along its module grid (ADR 0041).

    Returns ``(labels, X, boxes, confidence, kept)`` like :func:`split_candidates`. Every
    candidate at or above the storage floor of at least :data:`GRID_MIN_PARENT_M2`, where the
    ground resolution resolves modules (at most :data:`GRID_MAX_GSD`), gets its module grid
    (:func:`module_grid`) and that grid's map (:func:`grid_map`) over its box; its pixels above
    the map's Otsu level (:func:`otsu_level` on the map as 256 levels) are opened with a disk
    of radius :data:`GRID_OPEN_M` (zero outside the candidate), and the 8-connected parts
    within the area limits that are not most of the candidate are verified and replace it as
    in :func:`split_candidates`: only a part clearly more confident than the whole — without
    the texture gate (:data:`GRID_GATE`): the grid map chose it for its grid.
    """
    gsd = tile.gsd
    unchanged = labels, X, boxes, conf, kept
    if gsd > GRID_MAX_GSD:
        return unchanged
    area = 10.0 ** X[:, _AREA_COL]
    parents = np.flatnonzero(kept & (conf >= settings.floor) & (area >= GRID_MIN_PARENT_M2))
    if len(parents) == 0:
        return unchanged
    r = max(1, round(GRID_OPEN_M / gsd))
    min_px = settings.min_area_m2 / (gsd * gsd)
    plab = np.zeros_like(labels)
    owner, pboxes = [], []
    for i, (x0, y0), mine, grey in _parent_crops(labels, boxes, parents, tile.grey):
        strength, direction, pitch = module_grid(grey, mine, gsd)
        if strength < GRID_MIN_STRENGTH:
            continue
        g = grid_map(grey, direction, pitch)
        q = np.clip((g + 1.0) * GRID_QUANT, 0, 255).astype(np.uint8)
        otsu = otsu_level_in(q, mine)
        if otsu is None:
            continue
        side = mine & (q > otsu[0])
        max_px = GRID_MAX_PART * mine.sum()
        _add_parts(plab, owner, pboxes, i, (x0, y0), side, r, min_px, max_px)
    if not owner:
        return unchanged
    return _replace_by_parts(
        unchanged, plab, owner, pboxes, tile, fusion, settings, stats, GRID_GATE, together=True
    )


#: Outline fill (ADR 0042; setting ``fill_outlines``): a stored candidate of at least
#: OUTLINE_MIN_CONFIDENCE whose convex hull adds more than OUTLINE_MIN_GAIN of its pixels and
#: at most makes it OUTLINE_MAX_GROWTH times larger takes the hull as its outline when the
#: hull is more confident than the candidate; its confidence stays the candidate's own. An
#: array is a convex plate or a block of them; what a segmentation leaves out of one inside
#: its hull is mostly module frames, row gaps and lighter modules. Chosen on the even half of
#: the shared data (growth 1.15–2, least confidence 0.01–0.5, the hull's own confidence),
#: measured on the odd half (docs/spectral_quality.md).
OUTLINE_MIN_CONFIDENCE = 0.5
OUTLINE_MIN_GAIN = 0.02
OUTLINE_MAX_GROWTH = 1.5


def convex_hull_mask(mask: np.ndarray) -> np.ndarray | None:
    """The pixels whose centres lie in the convex hull of the centres of ``mask``'s pixels
    (on its edges included), or None when that hull has no area (one pixel, a straight line).
    The hull's corners are integer pixel coordinates, so the test is exact in integers."""
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    corners = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.int64)
    if len(corners) < 3:
        return None
    x, y = corners[:, 0], corners[:, 1]
    twice_area = int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    if twice_area == 0:
        return None
    side = 1 if twice_area > 0 else -1
    # Pixel (x, y) is inside when, for every edge (x0, y0) → (x1, y1), the cross product of the
    # edge with the pixel's offset from its start is ≥ 0: a·x + c(y) ≥ 0, with a the same for
    # every row. So each row holds one run of columns, from the largest lower bound (edges with
    # a > 0) to the smallest upper bound (a < 0), in exact integer division.
    x0, y0 = corners[:, 0], corners[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    a = -side * (y1 - y0)
    rows = np.arange(mask.shape[0], dtype=np.int64)[:, None]
    c = side * (x1 - x0) * (rows - y0) - a * x0
    big = np.int64(1 << 40)
    safe = np.where(a == 0, 1, a)
    lo = np.where(a > 0, -(c // safe), -big).max(axis=1)
    hi = np.where(a < 0, c // -safe, big).min(axis=1)
    lo[((a == 0) & (c < 0)).any(axis=1)] = big  # a row beyond a horizontal edge
    cols = np.arange(mask.shape[1], dtype=np.int64)
    return (cols >= lo[:, None]) & (cols <= hi[:, None])


def fill_outlines(labels, X, boxes, conf, kept, tile: TileData, fusion, settings, **stats):
    """Give a ragged array the outline of its convex hull (ADR 0042).

    Returns ``(labels, X, boxes, confidence, kept)`` like :func:`split_candidates`. Each
    candidate at or above the storage floor and :data:`OUTLINE_MIN_CONFIDENCE` gets its convex
    hull (:func:`convex_hull_mask`) less the pixels within one pixel of any other candidate's
    reach (its hull when it has one here, else its mask: instances never touch, whichever
    outline each ends with) and of no data. When that adds more than :data:`OUTLINE_MIN_GAIN`
    of the candidate's pixels, keeps it within :data:`OUTLINE_MAX_GROWTH` times its size and
    within the area limits, and is scored more confident than the candidate (fine power share
    included), it becomes the candidate's mask, box and statistics — at the candidate's own
    confidence: the hull is regular by construction, and the confidence's shape cues would
    reward that, not the evidence of an array.
    """
    gsd = tile.gsd
    unchanged = labels, X, boxes, conf, kept
    parents = np.flatnonzero(kept & (conf >= max(settings.floor, OUTLINE_MIN_CONFIDENCE)))
    if len(parents) == 0:
        return unchanged
    h_, w_ = labels.shape
    hulls, reach = {}, np.zeros(labels.shape, np.uint8)  # reach: how many hulls hold a pixel
    for i in parents:
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        hull = convex_hull_mask(labels[y0:y1, x0:x1] == int(i) + 1)
        if hull is not None:
            hulls[i] = hull
            reach[y0:y1, x0:x1] += hull
    ring = np.ones((3, 3), np.uint8)
    plab = np.zeros_like(labels)
    owner, pboxes = [], []
    for i, hull in hulls.items():
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        # the others' reach over the box grown by a pixel, then its one-pixel ring
        a0, b0, a1, b1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, w_), min(y1 + 1, h_)
        grown = labels[b0:b1, a0:a1]
        mine = grown == int(i) + 1
        held = reach[b0:b1, a0:a1].copy()
        held[y0 - b0 : y1 - b0, x0 - a0 : x1 - a0] -= hull
        others = ((grown > 0) & ~mine) | (held > 0)
        near = cv2.dilate(others.view(np.uint8), ring)[y0 - b0 : y1 - b0, x0 - a0 : x1 - a0]
        part = hull & (near == 0)
        if tile.valid is not None:
            part &= tile.valid[y0:y1, x0:x1]
        n_part, n_mine = int(np.count_nonzero(part)), int(np.count_nonzero(mine))
        if not (1 + OUTLINE_MIN_GAIN) * n_mine < n_part <= OUTLINE_MAX_GROWTH * n_mine:
            continue
        owner.append(i)
        ys, xs = np.nonzero(part)
        pboxes.append((x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1))
        plab[y0:y1, x0:x1][part] = len(owner)
    if not owner:
        return unchanged
    owner = np.asarray(owner)
    base = _log_odds(conf[owner])
    Xp, bp, ok = _measure_new(
        plab, len(owner), tile, fusion, settings, stats, boxes=np.asarray(pboxes), beat=base
    )
    ok &= _logit(Xp, fusion, gsd) > base
    if not ok.any():
        return unchanged
    out, X, boxes = labels.copy(), X.copy(), boxes.copy()
    for j in np.flatnonzero(ok):
        i = owner[j]
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        crop = out[y0:y1, x0:x1]
        crop[crop == int(i) + 1] = 0
        crop[plab[y0:y1, x0:x1] == int(j) + 1] = i + 1
        X[i], boxes[i] = Xp[j], bp[j]
    return out, X, boxes, conf, kept


#: A candidate is dropped when more than this share of its pixels lies in a candidate of higher
#: confidence (from any score map).
SUPPRESS_OVERLAP = 0.3


def suppress(
    parts: list, min_pixels: float = 0, *, compiled: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One label image from the candidates of several segmentations (greedy, by confidence).

    ``parts`` holds ``(labels, X, boxes, confidence, kept)`` per segmentation. Candidates inside
    the area limits (``kept``) are taken by falling confidence (ties: the earlier segmentation,
    then the lower label); one is dropped when more than :data:`SUPPRESS_OVERLAP` of its pixels
    already belong to a taken one. Else it takes the largest connected part of its pixels that
    are neither taken nor next to a taken one (8-neighbours: no two instances touch), provided
    that part keeps at least ``1 - SUPPRESS_OVERLAP`` of the candidate and ``min_pixels``.
    Returns ``(labels, X, boxes, confidence)`` of the taken candidates, label ``i + 1`` for row
    ``i`` (statistics and box are the candidate's own, computed before it was trimmed).
    Confidences must be numbers (a NaN's order would be undefined: ``ValueError``). One
    compiled pass where numba is installed (:func:`~solardesk_spectral._kernels.suppress`),
    else a loop of NumPy and OpenCV steps per candidate (``compiled=False`` takes it too; the
    results are the same).
    """
    shape = parts[0][0].shape
    n_feat = parts[0][1].shape[1] if parts[0][1].ndim == 2 else len(INSTANCE_FEATURES)
    for _, _, _, conf, kept in parts:
        if np.isnan(np.asarray(conf, np.float64)[kept]).any():
            raise ValueError("suppress: a kept candidate's confidence is NaN")
    kernel = _compiled("suppress") if compiled else None
    if kernel is not None:
        # the same order as the loop's: falling confidence, then segmentation, then label
        idx = [np.flatnonzero(p[4]) for p in parts]
        seg = np.concatenate([np.full(len(i), h, np.int64) for h, i in enumerate(idx)])
        lab = np.concatenate(idx).astype(np.int64)
        neg = np.concatenate(
            [-np.asarray(p[3], np.float64)[i] for p, i in zip(parts, idx, strict=True)]
        )
        order = np.lexsort((lab, seg, neg))
        seg, lab, neg = seg[order], lab[order], neg[order]
        boxes = np.concatenate(
            [np.asarray(p[2], np.int64)[i].reshape(-1, 4) for p, i in zip(parts, idx, strict=True)]
        )[order]
        # (the kernel does not check bounds: a box is the tile's at most)
        scan = np.clip(boxes, 0, np.array([shape[1], shape[0]] * 2, np.int64))
        out, taken = kernel(
            tuple(np.ascontiguousarray(p[0], np.int32) for p in parts),
            seg,
            lab,
            scan,
            SUPPRESS_OVERLAP,
            float(min_pixels),
        )
        rows = [parts[h][1][i] for h, i in zip(seg[taken], lab[taken], strict=True)]
        return out, np.array(rows, np.float64).reshape(-1, n_feat), boxes[taken], -neg[taken]
    order = sorted(
        (
            (-float(conf[i]), h, int(i))
            for h, (_, _, _, conf, kept) in enumerate(parts)
            for i in np.flatnonzero(kept)
        )
    )
    out = np.zeros(shape, np.int32)
    h_, w_ = shape
    ring = np.ones((3, 3), np.uint8)
    rows, boxes, confs = [], [], []
    for neg_conf, h, i in order:
        labels, X, bxs, _, _ = parts[h]
        x0, y0, x1, y1 = (int(v) for v in bxs[i])
        mine = labels[y0:y1, x0:x1] == int(i) + 1
        taken = out[y0:y1, x0:x1]
        area = int(np.count_nonzero(mine))
        if np.count_nonzero(mine & (taken > 0)) > SUPPRESS_OVERLAP * area:
            continue
        # Its free pixels, less a one-pixel ring around the taken ones (instances never touch);
        # of those, the largest connected part, which must keep most of the candidate.
        a0, b0, a1, b1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, w_), min(y1 + 1, h_)
        near = cv2.dilate((out[b0:b1, a0:a1] > 0).view(np.uint8), ring)
        free = mine & (near[y0 - b0 : y1 - b0, x0 - a0 : x1 - a0] == 0)
        n_free = int(np.count_nonzero(free))
        if n_free < area:
            n, parts_lab, stats, _ = cv2.connectedComponentsWithStats(
                free.view(np.uint8), connectivity=8
            )
            if n > 2:
                biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                free = parts_lab == biggest
                n_free = int(stats[biggest, cv2.CC_STAT_AREA])
        if n_free < (1 - SUPPRESS_OVERLAP) * area or n_free < min_pixels:
            continue
        taken[free] = len(rows) + 1
        rows.append(X[i])
        boxes.append(bxs[i])
        confs.append(-neg_conf)
    return (
        out,
        np.array(rows, np.float64).reshape(-1, n_feat),
        np.array(boxes, np.int64).reshape(-1, 4),
        np.array(confs, np.float64),
    )


#: The coarser pass (setting ``coarse_pass``, off by default; ADR 0044): on tiles of
#: COARSE_MAX_GSD or finer the analysis runs again on the tile made COARSE_FACTOR times coarser
#: (block averages), and its candidates, drawn back on the tile's grid with their confidence
#: lowered by COARSE_DISCOUNT, join the tile's own where they overlap none more confident.
#: Measured on South Tyrol (0.14 m, docs/spectral_quality.md): stored recall 0.60 → 0.68; on
#: Bradbury's 0.3 m it adds nothing, hence the limit. Not smaller than COARSE_MIN_PX a side.
COARSE_FACTOR = 3
COARSE_MAX_GSD = 0.2
COARSE_DISCOUNT = 0.05
COARSE_MIN_PX = 64


def coarsened(
    rgb: np.ndarray, valid: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The tile ``k`` times coarser: ``k × k`` block averages (``cv2.INTER_AREA``, as a coarser
    sensor integrates), a block valid only where all its pixels are; the last rows and columns
    that do not fill a block are left out."""
    h, w = (rgb.shape[0] // k) * k, (rgb.shape[1] // k) * k
    size = (w // k, h // k)
    small = cv2.resize(np.ascontiguousarray(rgb[:h, :w]), size, interpolation=cv2.INTER_AREA)
    if valid is None:
        return small, None
    share = cv2.resize(valid[:h, :w].astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return small, share >= 1.0 - 1e-6


def coarse_instances(
    rgb: np.ndarray, valid: np.ndarray | None, gsd: float, settings: Any, k: int = COARSE_FACTOR
) -> list:
    """The instances of the tile made ``k`` times coarser (:func:`coarsened`), drawn back on the
    tile's grid (each coarse pixel as its ``k × k`` block), at their own confidence."""
    from solardesk.core.cache import Instance

    small, small_valid = coarsened(rgb, valid, k)
    if small_valid is not None and not small_valid.any():
        return []
    out = []
    for inst in _instances(small, small_valid, gsd * k, settings):
        x0, y0, x1, y1 = inst.bbox
        out.append(
            Instance(
                bbox=(k * x0, k * y0, k * x1, k * y1),
                mask=np.kron(inst.mask, np.ones((k, k), bool)),
                confidence=inst.confidence,
                scores=inst.scores,
                provenance="spectral",
            )
        )
    return out


def _coarse_pass(rgb, valid, gsd: float, settings: Any, native: list) -> list:
    """``native`` joined with the coarser pass's instances (see :data:`COARSE_FACTOR`): all of
    them by falling confidence (a native one first on a tie), each kept unless it shares a
    pixel with one already kept, so instances still never overlap."""
    from dataclasses import replace

    h, w = rgb.shape[:2]
    if gsd > COARSE_MAX_GSD or min(h, w) // COARSE_FACTOR < COARSE_MIN_PX:
        return native
    coarse = [
        replace(inst, confidence=inst.confidence - COARSE_DISCOUNT)
        for inst in coarse_instances(rgb, valid, gsd, settings)
        if inst.confidence - COARSE_DISCOUNT >= settings.floor
    ]
    order = sorted(
        [(-i.confidence, 0, n) for n, i in enumerate(native)]
        + [(-i.confidence, 1, n) for n, i in enumerate(coarse)]
    )
    taken = np.zeros((h, w), bool)
    out = []
    for _, which, n in order:
        inst = (native, coarse)[which][n]
        x0, y0, x1, y1 = inst.bbox
        box = taken[y0:y1, x0:x1]
        if not (box & inst.mask).any():
            box |= inst.mask
            out.append(inst)
    return out


def analyse_tile(
    rgb: np.ndarray, valid: np.ndarray | None, gsd: float, params: dict[str, Any]
) -> list:
    """The pre-compute stage: candidate instances of one tile at or above the storage floor
    (with ``coarse_pass``, joined with those of the tile made coarser: ADR 0044).

    ``params`` are :class:`~solardesk_spectral.settings.SpectralSettings` as a dict.
    """
    from solardesk_spectral.settings import SpectralSettings

    settings = SpectralSettings.model_validate(params)
    if valid is not None and not valid.any():
        return []
    out = _instances(rgb, valid, gsd, settings)
    if settings.coarse_pass:
        out = _coarse_pass(rgb, valid, gsd, settings, out)
    return out


def _instances(rgb: np.ndarray, valid: np.ndarray | None, gsd: float, settings: Any) -> list:
    """The instances of one analysis of the tile, at or above the storage floor."""
    from solardesk.core.cache import Instance

    a = analyse(rgb, valid, gsd, settings)
    out = []
    means = [INSTANCE_FEATURES.index(f"mean_{c}") for c in CHANNEL_NAMES]
    stored = np.flatnonzero(a.kept & (a.confidence >= settings.floor))
    # (per candidate only what must be: Python floats and boxes taken out in one go)
    scores = a.X[np.ix_(stored, means)].tolist()
    confidences = np.clip(a.confidence[stored], 0.0, 1.0).tolist()
    boxes = a.boxes[stored].tolist()
    for i, (x0, y0, x1, y1), conf, row in zip(stored, boxes, confidences, scores, strict=True):
        mask = a.labels[y0:y1, x0:x1] == int(i) + 1
        # The analysis keeps a candidate's box from before its outline was trimmed (a
        # superset); the stored box is the mask's tight one (COCO's bbox, the map's extent).
        left, top, width, height = cv2.boundingRect(mask.view(np.uint8))
        if not width:
            continue
        out.append(
            Instance(
                bbox=(x0 + left, y0 + top, x0 + left + width, y0 + top + height),
                mask=mask[top : top + height, left : left + width],
                confidence=conf,
                scores=tuple(row),
                provenance="spectral",
            )
        )
    return out

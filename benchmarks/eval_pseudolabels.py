"""Measure the spectral pseudo-labels against hand-made labels on real imagery.

    python benchmarks/eval_pseudolabels.py DATA_DIR [--overlays OUT_DIR] [--limit N]
        [--split all|even|odd] [--set NAME=VALUE ...] [--coarsen K] [--compare NAME=VALUE ...]
        [--explain]

DATA_DIR holds ``southtyrol-bz2023-roof-solar/`` (JPEG + world file, class 2 of
``derived/masks/*.png`` is solar) and/or ``bradbury-usgs-ca-tiles/`` (PNG at 0.3 m, masks 0/255).
Each image is analysed as one tile. A true panel is a connected component of the label mask;
a candidate matches it at IoU ≥ 0.5 (greedy, one to one, best IoU first). Prints per source:
object precision and recall at confidence 0.5, 0.7 and 0.85, the recall of every stored
candidate (what a reviewer could find), pixel IoU, the share of candidates that lie on labelled
panels (at least half their pixels; a fragment of a labelled array counts, which precision at IoU
≥ 0.5 does not), and what the false positives at 0.85 lie on (South Tyrol: roof or not). Under
the table, a 95 % bootstrap interval over images for precision and recall at each cut
(:func:`bootstrap_interval`): how far a figure could move with another draw of images like
these, so that two versions a panel or two apart are not read as different.

``--compare NAME=VALUE`` (repeatable) also runs the analyser with those settings changed (on top
of ``--set``) on the same images, prints its table, and the difference of the two in precision
and recall at each cut with a 95 % *paired* bootstrap interval (:func:`paired_difference`: the
same draws of images for both, so what the images have in common cancels): a variant is better
than the baseline beyond the noise of these images only where the interval excludes 0.
Labels are not exhaustive: some "false positives" are unlabelled panels — look at the overlays
before concluding.

``--explain`` also says, per source, what the false pseudo-labels at 0.85 are (each with its
image, confidence, size, best IoU with a labelled panel and share of its pixels on panels: a
fragment or loose outline of a panel when most of its pixels are on panels, else something
off the panels) and where the panels
missed at 0.85 stand among all stored candidates (one at IoU ≥ 0.5 under the cut, by
confidence; one at IoU 0.3–0.5 only; none), with how many of them are small, and, of those
no candidate matches at IoU ≥ 0.5, how many lie inside a larger candidate, in pieces, or
touched by none (:func:`explain`).

``--coarsen K`` measures the same scenes at K times coarser ground resolution (South Tyrol's
0.14 m as 0.55 m with K = 4, Bradbury's 0.3 m as 0.6 m with K = 2): each image is area-averaged
over K × K blocks (``cv2.INTER_AREA``, as a coarser sensor integrates), a label pixel is a panel
(or roof) where at least half of its block was, and a pixel is valid only where its whole block
was. Panels are then compared at the coarser grid; the analyser's limits in m² do not change.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

THRESHOLDS = (0.5, 0.7, 0.85)
SETTINGS: dict = {}
COARSEN = [1]  # --coarsen: the block side K (1: the images as they are)


def coarsen(rgb: np.ndarray, valid, gsd: float, *masks: np.ndarray, k: int | None = None):
    """``(rgb, valid, gsd, *masks)`` on a grid ``k`` times coarser (see the module text); the
    image's last rows and columns that do not fill a block are dropped. The image and its
    validity as the analyser's coarser pass makes them (``analyser.coarsened``)."""
    from solardesk_spectral.analyser import coarsened

    k = COARSEN[0] if k is None else k
    if k == 1:
        return (rgb, valid, gsd, *masks)
    small, v = coarsened(rgb, valid, k)
    h, w = small.shape[0] * k, small.shape[1] * k

    def share(m: np.ndarray) -> np.ndarray:
        size = small.shape[1::-1]
        return cv2.resize(m[:h, :w].astype(np.float32), size, interpolation=cv2.INTER_AREA)

    return (small, v, gsd * k, *(share(m) >= 0.5 for m in masks))


@dataclass
class Tally:
    truths: int = 0
    preds: dict = field(default_factory=lambda: {t: 0 for t in (0.0, *THRESHOLDS)})
    hits_pred: dict = field(default_factory=lambda: {t: 0 for t in (0.0, *THRESHOLDS)})
    hits_truth: dict = field(default_factory=lambda: {t: 0 for t in (0.0, *THRESHOLDS)})
    inter: dict = field(default_factory=lambda: {t: 0 for t in (0.0, *THRESHOLDS)})
    union: dict = field(default_factory=lambda: {t: 0 for t in (0.0, *THRESHOLDS)})
    on_panels: dict = field(default_factory=lambda: {t: 0 for t in (0.0, *THRESHOLDS)})
    fp_on_roof: int = 0
    fp_total: int = 0
    images: int = 0
    seconds: float = 0.0
    gsd: float = float("nan")  # of the last image (one source: one ground resolution)
    #: per image and cut: (candidates kept, of them matched, panels, of them matched)
    per_image: list = field(default_factory=list)
    #: the analyser settings this tally measures (None: those of ``--set``)
    settings: dict | None = None
    #: ``--explain``: gather the false pseudo-labels and the missed panels at 0.85
    explain: bool = False
    #: per false pseudo-label at 0.85: (image, confidence, pixels, best IoU, share on panels)
    false_ones: list = field(default_factory=list)
    #: per panel missed at 0.85: (image, area m², best IoU of a stored candidate, its
    #: confidence, its share on the panel, the largest share of the panel one candidate
    #: covers, that candidate's size over the panel's)
    missed: list = field(default_factory=list)


def bootstrap_interval(
    counts: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap intervals of object precision and recall over images.

    ``counts`` is ``(images, 4)``: per image the candidates kept, how many of them match, the
    labelled panels and how many of them are matched. The images are drawn with replacement
    ``resamples`` times (seeded: the same figures on every run) and precision and recall are
    recomputed from the summed counts of each draw, so an image with many panels weighs as
    much as it does in the figure itself. Returns ``((precision low, high), (recall low,
    high))`` at ``level``; NaN where a draw has no candidate or no panel.
    """
    counts = np.asarray(counts, np.float64).reshape(-1, 4)
    if len(counts) == 0:
        nan = (float("nan"), float("nan"))
        return nan, nan
    pick = np.random.default_rng(seed).integers(0, len(counts), (resamples, len(counts)))
    precision, recall = _ratios(counts[pick].sum(axis=1))
    return _interval(precision, level), _interval(recall, level)


def _ratios(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of summed counts ``(..., 4)`` (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts[..., 1] / counts[..., 0], counts[..., 3] / counts[..., 2]


def _interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite values of ``x``."""
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan")
    lo, hi = np.percentile(x, (100 * (1 - level) / 2, 100 * (1 + level) / 2))
    return float(lo), float(hi)


def paired_difference(
    base: np.ndarray, other: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``other`` less ``base`` in object precision and recall, with a paired bootstrap interval.

    ``base`` and ``other`` are ``(images, 4)`` counts as for :func:`bootstrap_interval`, row
    ``k`` of both from the same image. Each of the ``resamples`` draws of images (seeded) sums
    both on the same images, so the spread is that of the difference, not of each figure.
    Returns ``((precision difference, low, high), (recall difference, low, high))``; NaN where
    undefined (no candidate in a draw).
    """
    a = np.asarray(base, np.float64).reshape(-1, 4)
    b = np.asarray(other, np.float64).reshape(-1, 4)
    if a.shape != b.shape:
        raise ValueError(f"paired counts of {len(a)} and {len(b)} images")
    nan3 = (float("nan"),) * 3
    if len(a) == 0:
        return nan3, nan3
    pick = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))
    whole = _ratios(b.sum(0)), _ratios(a.sum(0))
    draws = _ratios(b[pick].sum(1)), _ratios(a[pick].sum(1))
    out = []
    for k in range(2):  # precision, recall
        lo, hi = _interval(draws[0][k] - draws[1][k], level)
        out.append((float(whole[0][k] - whole[1][k]), lo, hi))
    return out[0], out[1]


def _iou_row(inter: np.ndarray, size, area_t: np.ndarray) -> np.ndarray:
    """IoU of a mask of ``size`` pixels with each labelled panel, ``inter`` the pixels it
    shares with each label (``bincount`` of the labels under it) and ``area_t`` each label's
    pixel count (index 0, background: 0). Rows of several masks at once broadcast (``inter``
    ``(n, labels)``, ``size`` ``(n, 1)``)."""
    iou = inter / np.maximum(size + area_t - inter, 1)
    iou[..., 0] = 0.0
    return iou


def greedy_matches(pred_masks: list[np.ndarray], truth_labels: np.ndarray, n_truth: int):
    """Indices of predictions and truths matched one to one at IoU ≥ 0.5."""
    if not pred_masks or n_truth == 0:
        return set(), set()
    t = truth_labels.ravel()
    area_t = np.bincount(t, minlength=n_truth + 1)
    pairs = []
    for i, m in enumerate(pred_masks):
        iou = _iou_row(np.bincount(t[m.ravel()], minlength=n_truth + 1), int(m.sum()), area_t)
        for j in np.flatnonzero(iou >= 0.5):
            pairs.append((iou[j], i, j))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return used_p, used_t


def evaluate_image(
    rgb, valid, gsd, truth_mask, roof_mask, tally: Tally, overlay_path=None, stem: str = ""
):
    from solardesk_spectral.analyser import analyse_tile
    from solardesk_spectral.settings import SpectralSettings

    chosen = SETTINGS if tally.settings is None else tally.settings
    params = SpectralSettings(**chosen).model_dump()
    t0 = time.perf_counter()
    inst = analyse_tile(rgb, valid, gsd, params)
    tally.seconds += time.perf_counter() - t0
    tally.images += 1
    tally.gsd = gsd
    h, w = truth_mask.shape
    n_truth, truth_labels = cv2.connectedComponents(truth_mask.astype(np.uint8), connectivity=8)
    n_truth -= 1
    tally.truths += n_truth
    masks = [i.full_mask(h, w) for i in inst]
    conf = np.array([i.confidence for i in inst])
    counts = {}
    for thr in (0.0, *THRESHOLDS):
        sel = [m for m, c in zip(masks, conf, strict=True) if c >= thr]
        hp, ht = greedy_matches(sel, truth_labels, n_truth)
        tally.preds[thr] += len(sel)
        tally.hits_pred[thr] += len(hp)
        tally.on_panels[thr] += sum(int((m & truth_mask).sum() >= 0.5 * m.sum()) for m in sel)
        tally.hits_truth[thr] += len(ht)
        counts[thr] = (len(sel), len(hp), n_truth, len(ht))
        union_pred = np.any(sel, axis=0) if sel else np.zeros((h, w), bool)
        tally.inter[thr] += int((union_pred & truth_mask).sum())
        tally.union[thr] += int((union_pred | truth_mask).sum())
        if thr == 0.85 and roof_mask is not None:
            for k, m in enumerate(sel):
                if k not in hp:
                    tally.fp_total += 1
                    tally.fp_on_roof += int((m & roof_mask).sum() > 0.5 * m.sum())
        if thr == 0.85 and tally.explain:
            explain(stem, gsd, inst, conf >= thr, hp, ht, truth_labels, n_truth, tally)
    tally.per_image.append(counts)
    if overlay_path is not None:
        ov = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        cnts, _ = cv2.findContours(truth_mask.astype(np.uint8), cv2.RETR_EXTERNAL, 2)
        cv2.drawContours(ov, cnts, -1, (0, 255, 255), 2)
        for m, c in zip(masks, conf, strict=True):
            cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, 2)
            colour = (0, 0, 255) if c >= 0.85 else (255, 0, 255) if c >= 0.5 else (255, 128, 0)
            cv2.drawContours(ov, cnts, -1, colour, 1)
        cv2.imwrite(str(overlay_path), ov)


def explain(stem, gsd, inst, kept, hp, ht, truth_labels, n_truth, tally: Tally) -> None:
    """Note, for ``--explain``, each false pseudo-label of one image (the instances ``kept``
    at the cut whose index among them is not in ``hp``) and each labelled panel not in ``ht``
    (the panels matched at the cut), with the best IoU any stored instance reaches on it, that
    instance's confidence and the share of it on the panel, and the largest share of the panel
    one instance covers with that instance's size over the panel's."""
    area_t = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
    under = [truth_labels[i.bbox[1] : i.bbox[3], i.bbox[0] : i.bbox[2]][i.mask] for i in inst]
    inter = np.array([np.bincount(u, minlength=n_truth + 1) for u in under], np.float64).reshape(
        len(inst), n_truth + 1
    )
    sizes = np.array([len(u) for u in under], np.float64)
    ious = _iou_row(inter, sizes[:, None], area_t)
    kept_idx = np.flatnonzero(kept)
    for k, j in enumerate(kept_idx):
        if k in hp:
            continue
        on = float((under[j] > 0).mean())
        best = float(ious[j].max())
        tally.false_ones.append((stem, inst[j].confidence, len(under[j]), best, on))
    for t in range(1, n_truth + 1):
        if t in ht:
            continue
        j = int(np.argmax(ious[:, t])) if len(inst) else 0
        best = float(ious[j, t]) if len(inst) else 0.0
        conf = inst[j].confidence if best > 0 else float("nan")
        on = float(inter[j, t] / sizes[j]) if best > 0 else 0.0
        c = int(np.argmax(inter[:, t])) if len(inst) else 0
        cover = float(inter[c, t] / area_t[t]) if len(inst) else 0.0
        ratio = float(sizes[c] / area_t[t]) if cover > 0 else 0.0
        tally.missed.append((stem, float(area_t[t]) * gsd * gsd, best, conf, on, cover, ratio))


#: ``--explain``: a false pseudo-label with at least half its pixels on labelled panels is a
#: fragment or loose outline of one (its IoU with a panel under 0.5), the others lie off the
#: panels (look-alikes, or panels nobody labelled); a missed panel is small under
#: SMALL_PANEL_M2.
SMALL_PANEL_M2 = 10.0
#: ``--explain``: a missed panel with no stored candidate at IoU ≥ 0.5 lies inside a larger
#: candidate when one covers at least MERGED_COVER of it and is at least MERGED_RATIO times its
#: size; it is in pieces when its best candidate lies at least PIECE_ON on it and covers under
#: half of it; no candidate touches it when none covers NONE_COVER of it.
MERGED_COVER, MERGED_RATIO = 0.7, 2.0
PIECE_ON = 0.9
NONE_COVER = 0.1


def report_explained(t: Tally) -> None:
    """What ``--explain`` gathered (see the module text)."""
    cut = THRESHOLDS[-1]
    fragments = [f for f in t.false_ones if f[4] >= 0.5]
    print(
        f"false pseudo-labels at {cut}: {len(t.false_ones)}; {len(fragments)} fragments or "
        f"loose outlines of labelled panels (most of their pixels on panels), "
        f"{len(t.false_ones) - len(fragments)} off the panels"
    )
    for stem, conf, px, best, on in sorted(t.false_ones, key=lambda f: -f[1]):
        print(f"  {stem}: confidence {conf:.3f}, {px} px, best IoU {best:.2f}, {on:.0%} on panels")
    m = np.array([row[1:] for row in t.missed], np.float64).reshape(-1, 6)
    ranked = m[:, 1] >= 0.5
    conf = np.nan_to_num(m[:, 2], nan=0.0)
    print(
        f"panels missed at {cut}: {len(m)}; a stored candidate at IoU ≥ 0.5 under the cut for "
        f"{int(ranked.sum())} (confidence 0.7–{cut}: {int((ranked & (conf >= 0.7)).sum())}, "
        f"0.5–0.7: {int((ranked & (conf >= 0.5) & (conf < 0.7)).sum())}, under 0.5: "
        f"{int((ranked & (conf < 0.5)).sum())}), at IoU 0.3–0.5 only for "
        f"{int(((m[:, 1] >= 0.3) & ~ranked).sum())}, none for {int((m[:, 1] < 0.3).sum())}; "
        f"{int((m[:, 0] < SMALL_PANEL_M2).sum())} of them under {SMALL_PANEL_M2:g} m²"
    )
    best, on, cover, ratio = m[:, 1], m[:, 3], m[:, 4], m[:, 5]
    unmatched = best < 0.5
    merged = unmatched & (cover >= MERGED_COVER) & (ratio >= MERGED_RATIO)
    pieces = unmatched & ~merged & (on >= PIECE_ON) & (best > 0) & (cover < 0.5)
    untouched = unmatched & ~merged & ~pieces & (cover < NONE_COVER)
    rest = unmatched & ~merged & ~pieces & ~untouched
    print(
        f"  of the {int(unmatched.sum())} with no stored candidate at IoU ≥ 0.5: "
        f"{int(merged.sum())} inside a larger candidate (one covers ≥ {MERGED_COVER:.0%} of the "
        f"panel and is ≥ {MERGED_RATIO:g}× its size), {int(pieces.sum())} in pieces (their best "
        f"candidate lies ≥ {PIECE_ON:.0%} on them and covers under half), "
        f"{int(untouched.sum())} touched by none (no candidate covers {NONE_COVER:.0%} of them), "
        f"{int(rest.sum())} otherwise"
    )


def _split(items: list, split: str) -> list:
    """``even``/``odd`` halves by sorted position (a tuning and a measuring half), or ``all``."""
    if split == "all":
        return items
    return items[0 if split == "even" else 1 :: 2]


def southtyrol_images(root: Path, split: str = "all", limit: int | None = None):
    """``(stem, rgb, valid, gsd, labels)`` of each South Tyrol image with a label mask
    (labels: 0 background, 1 roof, 2 solar)."""
    from rasterio.windows import Window

    from solardesk.core.raster import RasterReader, describe

    for mpath in _split(sorted((root / "derived" / "masks").glob("*.png")), split)[:limit]:
        img = root / "images" / (mpath.stem + ".jpg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsd = describe(img).ground_resolution_m
            with RasterReader(img) as r:
                rgb, valid = r.read_rgb(Window(0, 0, r.ds.width, r.ds.height))
        yield mpath.stem, rgb, valid, gsd, cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE)


def bradbury_images(root: Path, split: str = "all", limit: int | None = None):
    """``(stem, rgb, None, 0.3, panel mask)`` of each Bradbury tile."""
    for ipath in _split(sorted((root / "images").glob("*.png")), split)[:limit]:
        rgb = cv2.cvtColor(cv2.imread(str(ipath), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        lab = cv2.imread(str(root / "masks" / ipath.name), cv2.IMREAD_GRAYSCALE)
        yield ipath.stem, rgb, None, 0.3, lab > 127


def southtyrol_panels(root: Path, split: str = "all", limit: int | None = None):
    """``(stem, rgb, valid, gsd, panel mask)`` of each South Tyrol image (class 2 is solar)."""
    for stem, rgb, valid, gsd, labels in southtyrol_images(root, split, limit):
        yield stem, rgb, valid, gsd, labels == 2


#: The labelled data sets: name, folder inside DATA_DIR, and a reader ``(root, split, limit)``
#: of ``(stem, rgb, valid, gsd, panel mask)``.
DATA_SETS = (
    ("South Tyrol", "southtyrol-bz2023-roof-solar", southtyrol_panels),
    ("Bradbury", "bradbury-usgs-ca-tiles", bradbury_images),
)


def data_sets(data_dir: Path) -> list[tuple[str, Path, Callable]]:
    """``(name, root, reader)`` of the :data:`DATA_SETS` inside ``data_dir``; when there are
    none, says so on stderr (the scripts then exit with status 2)."""
    found = [(n, data_dir / f, r) for n, f, r in DATA_SETS if (data_dir / f).is_dir()]
    if not found:
        print(f"{data_dir}: no known data set inside", file=sys.stderr)
    return found


def southtyrol(root: Path, tallies, overlays: Path | None, limit: int | None, split: str):
    """Each South Tyrol image into each of ``tallies`` (a :class:`Tally` or a list of them:
    the same images under each one's settings; overlays of the first only)."""
    tallies = tallies if isinstance(tallies, list) else [tallies]
    for stem, rgb, valid, gsd, lab in southtyrol_images(root, split, limit):
        ov = overlays / f"st_{stem}.png" if overlays and (lab == 2).any() else None
        scene = coarsen(rgb, valid, gsd, lab == 2, lab >= 1)
        for k, tally in enumerate(tallies):
            evaluate_image(*scene, tally, ov if k == 0 else None, stem=stem)


def bradbury(root: Path, tallies, overlays: Path | None, limit: int | None, split: str):
    """Each Bradbury image into each of ``tallies`` (as :func:`southtyrol`)."""
    tallies = tallies if isinstance(tallies, list) else [tallies]
    for k, (stem, rgb, valid, gsd, panels) in enumerate(bradbury_images(root, split, limit)):
        ov = overlays / f"bb_{stem}.png" if overlays and k % 10 == 0 else None
        rgb, valid, gsd, panels = coarsen(rgb, valid, gsd, panels)
        for j, tally in enumerate(tallies):
            evaluate_image(rgb, valid, gsd, panels, None, tally, ov if j == 0 else None, stem=stem)


#: How this script evaluates each data set (South Tyrol also reports what its false positives
#: lie on, from the roof class of its labels).
EVALUATE = {"South Tyrol": southtyrol, "Bradbury": bradbury}


def report(name: str, t: Tally) -> None:
    print(
        f"\n## {name}: {t.images} images, {t.truths} labelled panels, "
        f"{t.seconds / max(t.images, 1) * 1000:.0f} ms per image"
    )
    print("| confidence ≥ | candidates | precision | recall | F1 | pixel IoU | on panels |")
    print("|---|---|---|---|---|---|---|")
    for thr in (0.0, *THRESHOLDS):
        n = t.preds[thr]
        p = t.hits_pred[thr] / n if n else float("nan")
        r = t.hits_truth[thr] / t.truths if t.truths else float("nan")
        f1 = 2 * p * r / (p + r) if n and (p + r) > 0 else float("nan")
        iou = t.inter[thr] / t.union[thr] if t.union[thr] else float("nan")
        label = "all stored" if thr == 0.0 else f"{thr}"
        on = t.on_panels[thr] / n if n else float("nan")
        print(f"| {label} | {n} | {p:.3f} | {r:.3f} | {f1:.3f} | {iou:.3f} | {on:.3f} |")
    for thr in THRESHOLDS:
        (p_lo, p_hi), (r_lo, r_hi) = bootstrap_interval([c[thr] for c in t.per_image])
        print(
            f"at {thr}: 95 % interval over images (bootstrap): precision {p_lo:.3f}–{p_hi:.3f}, "
            f"recall {r_lo:.3f}–{r_hi:.3f}"
        )
    if t.fp_total:
        print(
            f"false positives at 0.85: {t.fp_total}, of which {t.fp_on_roof} "
            f"({t.fp_on_roof / t.fp_total:.0%}) lie on labelled roofs"
        )


def report_difference(base: Tally, other: Tally) -> None:
    """The variant less the baseline at each cut, with :func:`paired_difference`'s interval."""
    for thr in THRESHOLDS:
        (dp, p_lo, p_hi), (dr, r_lo, r_hi) = paired_difference(
            [c[thr] for c in base.per_image], [c[thr] for c in other.per_image]
        )
        print(
            f"variant less baseline at {thr}: precision {dp:+.3f} (95 % paired interval "
            f"{p_lo:+.3f} to {p_hi:+.3f}), recall {dr:+.3f} ({r_lo:+.3f} to {r_hi:+.3f})"
        )


def _assignments(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict (a later one of the same name wins)."""
    return dict(item.partition("=")[::2] for item in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--overlays", type=Path, help="Write overlay PNGs here.")
    ap.add_argument("--limit", type=int, help="Only the first N images per source.")
    ap.add_argument(
        "--split", choices=("all", "even", "odd"), default="all", help="Which half of each source."
    )
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="Analyser setting."
    )
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Also run with this setting changed; print the paired difference (repeatable).",
    )
    ap.add_argument(
        "--coarsen",
        type=int,
        default=1,
        metavar="K",
        help="Measure at K times coarser ground resolution (K x K block averages).",
    )
    ap.add_argument(
        "--explain",
        action="store_true",
        help="Also list the false pseudo-labels at 0.85 and where the missed panels stand.",
    )
    args = ap.parse_args(argv)
    if args.coarsen < 1:
        print("eval_pseudolabels: --coarsen must be 1 or more", file=sys.stderr)
        return 2
    COARSEN[0] = args.coarsen
    SETTINGS.clear()
    SETTINGS.update(_assignments(args.set))  # the settings model parses them (numbers, bools)
    from solardesk.config import ConfigError, parse
    from solardesk_spectral.settings import SpectralSettings

    variant = {**SETTINGS, **_assignments(args.compare)}
    try:
        parse(SpectralSettings, SETTINGS, "eval_pseudolabels --set")
        parse(SpectralSettings, variant, "eval_pseudolabels --compare")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
    found = data_sets(args.data_dir)
    for name, root, _ in found:
        t = Tally(explain=args.explain)
        tallies = [t, Tally(settings=variant)] if args.compare else [t]
        EVALUATE[name](root, tallies, args.overlays, args.limit, args.split)
        report(f"{name} ({t.gsd:.3g} m)", t)
        if args.explain:
            report_explained(t)
        if args.compare:
            changed = ", ".join(args.compare)
            report(f"{name} ({t.gsd:.3g} m), variant {changed}", tallies[1])
            report_difference(t, tallies[1])
    return 0 if found else 2


if __name__ == "__main__":
    sys.exit(main())

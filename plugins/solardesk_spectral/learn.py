"""Learn the analyser's fusion on synthetic scenes, whose truth is known.

``python -m solardesk_spectral.learn [--out fusion.json] [--scenes 24]`` generates scenes with
:mod:`solardesk.synthetic` (ground resolutions 0.1–0.3 m, dark, bright and mixed panels,
orchards, shadows, roads), and

1. fits a per-pixel logistic model of the ten pixel features and their pairwise products
   (panel pixels against everything else, class-balanced, L2-regularised, Newton's method);
2. measures the mean and spread of every instance statistic over the candidates the analyser
   segments (except :data:`FIXED_SCALES`, whose scale is set); the confidence is the
   unit-weighted, signed sum of the standardised :data:`CONFIDENCE_CUES` (an instance is a hit
   when it overlaps a true panel array with IoU ≥ 0.5, for the held-out figures),

and writes both to ``fusion.json`` with the held-out synthetic figures in its ``meta``.
No real imagery is used: what ships is learned from generated scenes only (the analyser's
``CONFIDENCE_OFFSET`` is a default tuned on real imagery, ADR 0008).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from solardesk_spectral.analyser import (
    FINE_PEAK_MEAN,
    FINE_PEAK_SCALE,
    FUSION_FILE,
    INSTANCE_FEATURES,
    MAGENTA_SCALE,
    N_PIXEL_TERMS,
    PIXEL_FEATURES,
    WATER_SCALE,
    Fusion,
    analyse,
    confidence,
    pixel_features,
    pixel_terms,
)
from solardesk_spectral.settings import SpectralSettings

TILE = 512
GSDS = (0.1, 0.15, 0.2, 0.3)
STYLES = ("dark", "bright", "mixed")

#: The instance confidence: a unit-weighted sum of these statistics, each standardised by its
#: spread over the synthetic candidates, with the sign a panel gives it on real imagery (+1:
#: panels have more of it than the other candidates). Shape in metres, the two rejection cues,
#: the two context cues of the frame around the candidate, and the Gabor bank's energy and
#: orientation coherence, both *lower* on an array than on what competes with it (a module grid
#: has two perpendicular line families and smooth glass between them, where tiled roofs, row
#: crops, road markings and foliage have one strong family or strong texture), and the share of
#: its interior detail at periods under 2.5 m (an array is uniform at coarser scales; ADR 0018).
#: Left out: the mean fused score, FFT periodicity, photometric index, edges, blue tint, fine
#: texture and elongation, whose ranking differs between the two real sources or from synthetic
#: scenes.
#: Unit weights rather than weights fitted on the synthetic candidates: the fitted ones
#: under-weight area and the rejection cues, which matter more on real imagery (ADRs 0008 and
#: 0017, docs/spectral_quality.md).
CONFIDENCE_CUES: dict[str, int] = {
    "log_area_m2": 1,
    "rectangularity": 1,
    "solidity": 1,
    "mean_excess_green": -1,
    "mean_shadow": -1,
    "frame_excess_green": -1,
    "frame_redness": 1,
    "mean_gabor_energy": -1,
    "mean_gabor_coherence": -1,
    "fine_power_share": 1,
    "water_excess": -1,
    "fine_peak_share": 1,
    "magenta_excess": -1,
}

#: Cues whose scale is fixed rather than measured on the synthetic candidates, as (mean, spread):
#: the scenes hold no water and no blue cars or tarpaulins, so the spreads of ``water_excess``
#: and ``magenta_excess`` there say nothing (ADRs 0027, 0053), and their module grids are
#: cleaner than real ones (``fine_peak_share``, ADR 0032).
FIXED_SCALES: dict[str, tuple[float, float]] = {
    "water_excess": (0.0, WATER_SCALE),
    "fine_peak_share": (FINE_PEAK_MEAN, FINE_PEAK_SCALE),
    "magenta_excess": (0.0, MAGENTA_SCALE),
}


def fit_logistic(
    X: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iters: int = 50, balanced: bool = True
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method; returns ``(weights, bias)``."""
    Xb = np.c_[X, np.ones(len(X))]
    y = y.astype(np.float64)
    pos = y.mean()
    sw = np.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)) if balanced else np.ones_like(y)
    w = np.zeros(Xb.shape[1])
    reg = l2 * np.eye(len(w))
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Xb @ w, -30, 30)))
        g = Xb.T @ ((p - y) * sw) / len(y) + reg @ w
        h = (Xb * (p * (1 - p) * sw)[:, None]).T @ Xb / len(y) + reg
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w[:-1], float(w[-1])


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    npos = int(y.sum())
    nneg = len(y) - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[y.astype(bool)].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def iou_matrix(labels: np.ndarray, n: int, truth: np.ndarray) -> np.ndarray:
    """``(n, truth.max() + 1)``: the IoU of each predicted label 1..n (rows) with each truth
    instance (columns, by label; column 0, the background, is 0), in one pass over the image."""
    t = truth.astype(np.int64)
    nt = int(t.max()) + 1
    pair = labels.astype(np.int64) * nt + t
    inter = np.bincount(pair.ravel(), minlength=(n + 1) * nt).reshape(n + 1, nt)
    area_p = inter.sum(1)
    area_t = inter.sum(0)
    union = area_p[:, None] + area_t[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[:, 0] = 0.0
    return iou[1:]


def match_iou(labels: np.ndarray, n: int, truth: np.ndarray) -> np.ndarray:
    """Best IoU of each predicted label 1..n with any truth instance (0 = background)."""
    if n == 0:
        return np.zeros(0)
    return iou_matrix(labels, n, truth).max(1)


def synthetic_tiles(n_scenes: int, seed: int):
    """Yield ``(rgb, truth_instances, gsd)`` 512² tiles cut from generated scenes."""
    from solardesk.synthetic import SceneSpec, generate_scene

    rng = np.random.default_rng(seed)
    for k in range(n_scenes):
        gsd = float(GSDS[k % len(GSDS)])
        style = STYLES[(k // len(GSDS)) % len(STYLES)]
        spec = SceneSpec(
            height=2 * TILE,
            width=2 * TILE,
            gsd=gsd,
            seed=int(rng.integers(1 << 30)),
            panel_style=style,
        )
        scene = generate_scene(spec)
        rgb = np.ascontiguousarray(np.moveaxis(scene.image[:3], 0, -1))
        for r in (0, TILE):
            for c in (0, TILE):
                yield (
                    np.ascontiguousarray(rgb[r : r + TILE, c : c + TILE]),
                    scene.instance_mask[r : r + TILE, c : c + TILE],
                    gsd,
                )


def learn(
    n_scenes: int = 24,
    seed: int = 7,
    holdout: int = 6,
    log=print,
    cues: dict[str, int] | None = None,
) -> Fusion:
    cues = CONFIDENCE_CUES if cues is None else cues
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    tiles = list(synthetic_tiles(n_scenes + holdout, seed))
    train, test = tiles[: 4 * n_scenes], tiles[4 * n_scenes :]
    log(f"{len(tiles)} synthetic tiles in {time.perf_counter() - t0:.1f} s")

    # 1. pixel model
    feats_cache = []
    Xs, ys = [], []
    for rgb, truth, gsd in train:
        f = pixel_features(rgb, None, gsd)
        feats_cache.append(f)
        y = (truth > 0).ravel()
        terms = pixel_terms(f).reshape(N_PIXEL_TERMS, -1)
        pos = np.flatnonzero(y)
        neg = np.flatnonzero(~y)
        pick = np.concatenate(
            [
                rng.choice(pos, min(len(pos), 2000), replace=False) if len(pos) else pos,
                rng.choice(neg, min(len(neg), 4000), replace=False),
            ]
        )
        Xs.append(terms[:, pick].T)
        ys.append(y[pick])
    X = np.concatenate(Xs).astype(np.float64)
    y = np.concatenate(ys)
    pw, pb = fit_logistic(X, y, l2=1e-3)
    log(f"pixel model: {len(y)} samples, {y.mean():.2f} positive")

    placeholder = Fusion(
        pw.astype(np.float32),
        pb,
        np.zeros(len(INSTANCE_FEATURES)),
        np.ones(len(INSTANCE_FEATURES)),
        np.zeros(len(INSTANCE_FEATURES)),
        0.0,
        {},
    )
    settings = SpectralSettings()

    # 2. instance cue scales: the spread of each statistic over the candidates the analyser
    # keeps. The placeholder gives every candidate the same confidence (less the pixel-count
    # penalty of ADR 0036, at 0.3 m), so where segmentations overlap the suppression mostly
    # keeps the learned score's candidate (the first segmentation).
    def instances(tileset):
        rows, labels_, gsds = [], [], []
        for rgb, truth, gsd in tileset:
            a = analyse(rgb, None, gsd, settings, placeholder, measure_all=True)
            iou = match_iou(a.labels, len(a.kept), truth)
            rows.append(a.X[a.kept])
            labels_.append(iou[a.kept] >= 0.5)
            gsds.append(np.full(int(a.kept.sum()), gsd))
        return np.concatenate(rows), np.concatenate(labels_), np.concatenate(gsds)

    Xi, yi, _ = instances(train)
    # fine_power_share is NaN where a candidate is too thin to measure
    mean = np.nanmean(Xi, axis=0)
    std = np.nanstd(Xi, axis=0) + 1e-6
    for name, (m, sd) in FIXED_SCALES.items():
        mean[INSTANCE_FEATURES.index(name)], std[INSTANCE_FEATURES.index(name)] = m, sd
    iw = np.zeros(len(INSTANCE_FEATURES))
    for name, sign in cues.items():
        iw[INSTANCE_FEATURES.index(name)] = sign
    ib = 0.0
    fusion = Fusion(pw.astype(np.float32), pb, mean, std, iw, ib, {})
    log(f"instance scale: {len(yi)} candidates, {yi.mean():.2f} match a panel at IoU >= 0.5")

    # 3. held-out synthetic figures
    pix_s, pix_y = [], []
    for rgb, truth, gsd in test:
        from solardesk_spectral.analyser import score_map

        s = score_map(pixel_features(rgb, None, gsd), fusion).ravel()
        pick = rng.choice(len(s), 20000, replace=False)
        pix_s.append(s[pick])
        pix_y.append((truth.ravel() > 0)[pick])
    auc = roc_auc(np.concatenate(pix_s), np.concatenate(pix_y))
    Xt, yt, gt = instances(test)
    conf = confidence(Xt, fusion, gt)
    figures = {"pixel_auc_holdout": round(auc, 4)}
    for thr in (0.5, 0.7, 0.85):
        keep = conf >= thr
        figures[f"instance_precision_at_{thr}"] = (
            round(float(yt[keep].mean()), 4) if keep.any() else None
        )
        figures[f"instances_kept_at_{thr}"] = int(keep.sum())
    figures["instance_auc_holdout"] = round(roc_auc(conf, yt), 4)
    meta = {
        "learned_on": "synthetic scenes only (solardesk.synthetic)",
        "scenes": n_scenes,
        "holdout_scenes": holdout,
        "seed": seed,
        "gsds": list(GSDS),
        "styles": list(STYLES),
        "confidence_cues": dict(cues),
        "holdout": figures,
    }
    log(json.dumps(figures))
    return Fusion(pw.astype(np.float32), pb, mean, std, iw, ib, meta)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=FUSION_FILE)
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    fusion = learn(args.scenes, args.seed)
    args.out.write_text(json.dumps(fusion.to_json(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()


__all__ = ["PIXEL_FEATURES", "fit_logistic", "iou_matrix", "learn", "match_iou", "roc_auc"]

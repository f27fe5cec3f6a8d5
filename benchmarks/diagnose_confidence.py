"""How well does the instance confidence rank the spectral candidates on real imagery?

    python benchmarks/diagnose_confidence.py DATA_DIR [--fusion FUSION.json]

For every candidate the analyser segments (before the storage floor; inside the area limits)
on the South Tyrol and Bradbury images of DATA_DIR (see ``eval_pseudolabels.py``), a candidate
is a hit when it overlaps a labelled panel at IoU ≥ 0.5. Per source and half (even: the tuning
half, odd: the measuring half) it prints

* the ROC-AUC of the shipped confidence (``--fusion``: another fusion file instead) and of each
  instance statistic alone (below 0.5: the statistic is *lower* on panels);
* the best F1 and F0.5 over all confidence cuts (precision, recall, the confidence at the cut),
  the highest recall at a cut where precision is at least 0.9 (the aim's precision; the
  confidence at that cut), and precision / recall at the cuts 0.5, 0.7 and 0.85;
* a diagnostic ceiling: a logistic model of all the statistics fitted on the even half and
  scored on the odd half. It is never shipped (the data's licences are not cleared); it says
  how much a better confidence could gain with the same candidates;
* the labelled outlines themselves scored as candidates (``outline_confidence``): the share of
  the panels whose own outline reaches 0.5, 0.7 and 0.85 — the recall pseudo-labels could have
  at each cut if the segmentation drew every panel exactly — beside the candidates' reach (the
  panels some candidate matches, at any confidence) and the recall at 0.85 as it is, and how
  many of the panels whose own outline reaches 0.85 are matched by a less confident candidate
  (its looser outline costs the confidence) or by none (not segmented). Where the outlines'
  share at 0.85 is far above today's recall, segmentation is what holds recall down; where it
  is low too, the confidence is.

Recall here counts candidates against every labelled panel, so it is bounded by what the
segmentation offers ("all candidates").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_pseudolabels import data_sets


def collect(root: Path, images, split: str, fusion) -> dict:
    """Instance rows, best IoU and confidence of every candidate, and the number of panels."""
    from solardesk_spectral.analyser import analyse, outline_confidence
    from solardesk_spectral.learn import match_iou
    from solardesk_spectral.settings import SpectralSettings

    settings = SpectralSettings()
    rows, ious, confs, outlines, matched, n_truth = [], [], [], [], [], 0
    for _stem, rgb, valid, gsd, truth in images(root, split):
        n, truth_labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        n_truth += n - 1
        outlines.append(outline_confidence(rgb, valid, gsd, truth_labels, n - 1, settings, fusion))
        # every candidate gets every statistic (the stage skips the spectral measure of those
        # that cannot reach the storage floor)
        a = analyse(rgb, valid, gsd, settings, fusion, measure_all=True)
        matched.append(matched_confidence(a.labels, a.confidence, a.kept, truth_labels, n - 1))
        if not len(a.X):
            continue
        iou = match_iou(a.labels, len(a.X), truth_labels)
        rows.append(a.X[a.kept])
        ious.append(iou[a.kept])
        confs.append(a.confidence[a.kept])
    X = np.concatenate(rows) if rows else np.zeros((0, 0))
    if len(X):  # a statistic too thin to measure (NaN) counts as the half's mean, and one
        # never measured on the half (fine_peak_share on coarse imagery) as 0
        measured = ~np.isnan(X).all(axis=0)
        fill = np.zeros(X.shape[1])
        fill[measured] = np.nanmean(X[:, measured], axis=0)
        X = np.where(np.isnan(X), fill, X)
    return {
        "X": X,
        "hit": np.concatenate(ious) >= 0.5 if ious else np.zeros(0, bool),
        "conf": np.concatenate(confs) if confs else np.zeros(0),
        "panels": n_truth,
        "outlines": np.concatenate(outlines) if outlines else np.zeros(0),
        "matched": np.concatenate(matched) if matched else np.zeros(0),
    }


def matched_confidence(labels, conf, kept, truth_labels, n_truth: int) -> np.ndarray:
    """Per labelled panel ``1..n_truth``: the confidence of the kept candidate that matches it
    at IoU ≥ 0.5 (candidates never overlap: at most one does), -1 where none does."""
    from solardesk_spectral.learn import iou_matrix

    out = np.full(n_truth, -1.0)
    n = len(conf)
    if n == 0 or n_truth == 0:
        return out
    iou = iou_matrix(labels, n, truth_labels)[:, 1:]  # panel j + 1 in column j
    for i, j in zip(*np.nonzero((iou >= 0.5) & kept[:, None]), strict=True):
        out[j] = max(out[j], conf[i])
    return out


#: The confidence cuts the tables report.
CUTS = (0.5, 0.7, 0.85)


def curve_points(score: np.ndarray, hit: np.ndarray, panels: int, precision: float = 0.9) -> dict:
    """Best F1 and F0.5 over all cuts of ``score``, each as (F, precision, recall, cut); and
    ``"R@P"``: the highest recall at a cut whose precision is at least ``precision``, as
    (recall, precision, cut) — (0, nan, nan) when no cut reaches it. A cut keeps every
    candidate of that score or more (ties are never split)."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    tp = np.cumsum(hit[order])
    p = tp / np.arange(1, len(hit) + 1)
    r = tp / max(panels, 1)
    out = {}
    for name, beta in (("F1", 1.0), ("F0.5", 0.5)):
        f = (1 + beta**2) * p * r / np.maximum(beta**2 * p + r, 1e-12)
        i = int(np.argmax(f))
        out[name] = (float(f[i]), float(p[i]), float(r[i]), float(s[i]))
    last = np.ones(len(s), bool)  # the last candidate of each score: where a cut can fall
    last[:-1] = s[1:] != s[:-1]
    ok = np.flatnonzero(last & (p >= precision))
    if len(ok):
        i = int(ok[np.argmax(r[ok])])
        out["R@P"] = (float(r[i]), float(p[i]), float(s[i]))
    else:
        out["R@P"] = (0.0, float("nan"), float("nan"))
    return out


def main(argv: list[str] | None = None) -> int:
    from solardesk_spectral.analyser import INSTANCE_FEATURES, Fusion, default_fusion
    from solardesk_spectral.learn import fit_logistic, roc_auc

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--fusion", type=Path, help="A fusion JSON instead of the shipped one.")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    fusion = (
        Fusion.from_json(json.loads(args.fusion.read_text())) if args.fusion else default_fusion()
    )
    found = data_sets(args.data_dir)
    for name, root, images in found:
        halves = {s: collect(root, images, s, fusion) for s in ("even", "odd")}
        print(f"\n## {name}")
        print(
            "| half | panels | candidates | hits | confidence AUC | best F1 (P, R, cut) "
            "| best F0.5 (P, R, cut) | R at P ≥ 0.9 (cut) | P / R at 0.5 | at 0.7 | at 0.85 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for split, d in halves.items():
            hit, conf, panels = d["hit"], d["conf"], d["panels"]
            pts = curve_points(conf, hit, panels)
            cuts = []
            for t in CUTS:
                sel = conf >= t
                prec = hit[sel].mean() if sel.any() else float("nan")
                cuts.append(f"{prec:.2f} / {hit[sel].sum() / max(panels, 1):.3f}")
            f1, f05, rp = pts["F1"], pts["F0.5"], pts["R@P"]
            print(
                f"| {split} | {panels} | {len(hit)} | {int(hit.sum())} | "
                f"{roc_auc(conf, hit):.3f} | {f1[0]:.3f} ({f1[1]:.2f}, {f1[2]:.3f}, {f1[3]:.2f}) "
                f"| {f05[0]:.3f} ({f05[1]:.2f}, {f05[2]:.3f}, {f05[3]:.2f}) "
                f"| {rp[0]:.3f} ({rp[2]:.2f}) | " + " | ".join(cuts) + " |"
            )
        print(
            "\nThe labelled outlines scored as candidates (share of the panels at each cut), the "
            "candidates' reach and the recall at 0.85:"
        )
        print(
            "| half | panels | own outline ≥ 0.5 | ≥ 0.7 | ≥ 0.85 | median | reach "
            "| recall at 0.85 | own ≥ 0.85, matched under 0.85 | own ≥ 0.85, not matched |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for split, d in halves.items():
            own, got, panels = d["outlines"], d["matched"], max(d["panels"], 1)
            shares = " | ".join(f"{np.count_nonzero(own >= t) / panels:.3f}" for t in CUTS)
            median = float(np.median(own)) if len(own) else float("nan")
            good = own >= 0.85
            print(
                f"| {split} | {d['panels']} | {shares} | {median:.2f} | "
                f"{np.count_nonzero(got >= 0) / panels:.3f} | "
                f"{np.count_nonzero(got >= 0.85) / panels:.3f} | "
                f"{np.count_nonzero(good & (got >= 0) & (got < 0.85))} | "
                f"{np.count_nonzero(good & (got < 0))} |"
            )
        even, odd = halves["even"], halves["odd"]
        print("\nROC-AUC of each statistic alone (even / odd):")
        print(
            ", ".join(
                f"{f} {roc_auc(even['X'][:, i], even['hit']):.2f} / "
                f"{roc_auc(odd['X'][:, i], odd['hit']):.2f}"
                for i, f in enumerate(INSTANCE_FEATURES)
            )
        )
        mu, sd = even["X"].mean(0), even["X"].std(0) + 1e-9
        w, b = fit_logistic((even["X"] - mu) / sd, even["hit"], l2=1e-2)
        z = ((odd["X"] - mu) / sd) @ w + b
        f1 = curve_points(z, odd["hit"], odd["panels"])["F1"]
        print(
            f"diagnostic ceiling (all statistics, fitted on even, never shipped): odd-half AUC "
            f"{roc_auc(z, odd['hit']):.3f}, best F1 {f1[0]:.3f} (P {f1[1]:.2f}, R {f1[2]:.3f})"
        )
    return 0 if found else 2


if __name__ == "__main__":
    sys.exit(main())

"""Why the spectral analyser misses labelled panels: a breakdown per source.

    python benchmarks/diagnose_misses.py DATA_DIR [--split all|even|odd]

For every labelled panel (a connected component of the label mask, ≥ 20 px) of the data sets
that ``eval_pseudolabels.py`` reads, it looks at the analyser's score map and components
before the confidence is applied, and puts the panel in one class:

* **below threshold**: fewer than 30 % of its pixels lie above the threshold of any of the
  maps the analyser segments (the learned score map; the cue sum at its lowest threshold when
  ``cue_segmentation`` is on, the texture cue sum when ``texture_segmentation`` is): the pixel
  features do not see it;
* **merged**: its best-overlapping component is more than twice its area and IoU < 0.5 (it
  ran into a roof, a shadow or a neighbour);
* **fragmented**: otherwise below IoU 0.5 (cut into pieces, or only partly found);
* **segmented**: a component matches it at IoU ≥ 0.5 (a reviewer could find it, whatever
  its confidence).

The split tells where work pays: pixel features (below threshold) or segmentation (merged,
fragmented).

A second table looks at the *stored* candidates instead (after the merge, the splits and the
outline fill, at or above the storage floor: what a reviewer sees), one class per panel:

* **matched**: a stored candidate matches it at IoU ≥ 0.5;
* **inside a larger one**: at least 60 % of it lies in one candidate of 1.5 times its area or
  more (an array taken with its roof, or several arrays taken as one);
* **in pieces**: candidates cover at least half of it, two or more of them a tenth each;
* **partly**: candidates cover at least a fifth of it;
* **untouched**: less than that.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from eval_pseudolabels import data_sets

CLASSES = ("below threshold", "merged", "fragmented", "segmented")
STORED_CLASSES = ("matched", "inside a larger one", "in pieces", "partly", "untouched")


def classify(lit, labels, truth_component) -> str:
    """The class of one labelled panel; ``lit``: pixels above the threshold of some map."""
    area = int(truth_component.sum())
    if lit[truth_component].mean() < 0.3:
        return "below threshold"
    inside = labels[truth_component]
    ids, counts = np.unique(inside[inside > 0], return_counts=True)
    if ids.size == 0:
        return "below threshold"  # above threshold but removed by the opening
    comp = labels == ids[np.argmax(counts)]
    iou = (comp & truth_component).sum() / (comp | truth_component).sum()
    if iou >= 0.5:
        return "segmented"
    return "merged" if comp.sum() > 2 * area else "fragmented"


def classify_stored(stored: np.ndarray, areas: np.ndarray, truth_component) -> str:
    """The class of one labelled panel among the stored candidates (``stored``: their label
    image, 0 elsewhere; ``areas``: pixels per label)."""
    area = int(truth_component.sum())
    inside = stored[truth_component]
    ids, counts = np.unique(inside[inside > 0], return_counts=True)
    if ids.size == 0:
        return "untouched"
    iou = counts / (areas[ids] + area - counts)
    if iou.max() >= 0.5:
        return "matched"
    k = int(np.argmax(counts))
    if counts[k] >= 0.6 * area and areas[ids[k]] >= 1.5 * area:
        return "inside a larger one"
    covered = counts.sum()
    if covered >= 0.5 * area and (counts >= 0.1 * area).sum() >= 2:
        return "in pieces"
    return "partly" if covered >= 0.2 * area else "untouched"


def diagnose(images) -> tuple[int, Counter, list[float], Counter]:
    """Panels of ≥ 20 px, their classes before the confidence, the share of each above a
    threshold, and their classes among the stored candidates."""
    from solardesk_spectral.analyser import analyse, segmentation_maps
    from solardesk_spectral.settings import SpectralSettings

    settings = SpectralSettings()
    tally: Counter = Counter()
    stored_tally: Counter = Counter()
    shares: list[float] = []
    n = 0
    for _stem, rgb, valid, gsd, truth in images:
        a = analyse(rgb, valid, gsd, settings)
        lit = np.zeros(a.score.shape, bool)
        for score_map, threshold, _ in segmentation_maps(a.features, a.score, settings):
            lit |= score_map > threshold
        keep = np.zeros(len(a.confidence) + 1, bool)
        keep[1:] = a.kept & (a.confidence >= settings.floor)
        stored = np.where(keep[a.labels], a.labels, 0)
        areas = np.bincount(stored.ravel(), minlength=len(keep))
        nt, tl = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        for j in range(1, nt):
            m = tl == j
            if m.sum() < 20:
                continue
            n += 1
            shares.append(float(lit[m].mean()))
            tally[classify(lit, a.labels, m)] += 1
            stored_tally[classify_stored(stored, areas, m)] += 1
    return n, tally, shares, stored_tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--split", choices=("all", "even", "odd"), default="all")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    found = data_sets(args.data_dir)
    if not found:
        return 2
    print("| source | panels | " + " | ".join(CLASSES) + " | median share above threshold |")
    print("|---|---|" + "---|" * len(CLASSES) + "---|")
    stored_rows = []
    for name, root, reader in found:
        n, tally, shares, stored = diagnose(reader(root, args.split))
        cells = " | ".join(f"{tally[c] / max(n, 1):.0%}" for c in CLASSES)
        print(f"| {name} | {n} | {cells} | {np.median(shares) if shares else float('nan'):.2f} |")
        stored_rows.append(
            f"| {name} | {n} | " + " | ".join(f"{stored[c]}" for c in STORED_CLASSES) + " |"
        )
    print("\nAmong the stored candidates (panels):")
    print("| source | panels | " + " | ".join(STORED_CLASSES) + " |")
    print("|---|---|" + "---|" * len(STORED_CLASSES))
    print("\n".join(stored_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

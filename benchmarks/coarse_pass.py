"""What a second, coarser analysis of each image would add to the spectral pseudo-labels.

    python benchmarks/coarse_pass.py DATA_DIR [--coarsen 3] [--split all|even|odd]
        [--iou 0.3] [--discount 0.05] [--limit N]

For each labelled image of DATA_DIR (the layout of ``eval_pseudolabels.py``) the analyser runs
twice: on the image as it is, and on the image made ``--coarsen`` times coarser (block averages,
as ``eval_pseudolabels.py --coarsen``), whose candidates are then drawn back on the full grid
(each coarse pixel as its block). The two candidate sets are joined by confidence: a candidate
is dropped when it overlaps one already kept at mask IoU above ``--iou``, visiting all of them
from the most confident (the coarse ones' confidence lowered by ``--discount``; a native one
first on a tie). Prints, per source, object precision and recall at IoU ≥ 0.5 of every stored
candidate and at confidence 0.5 and 0.85, for the native analysis alone and for the join.

The analyser's setting ``coarse_pass`` (ADR 0044) is one of these joins built into the stage:
``--coarsen 3 --iou 0 --discount 0.05`` (there, on tiles of 0.2 m or finer, a coarse candidate
whose lowered confidence falls under the storage floor is not stored either). This script joins
after the analyser so that other rules can be measured (docs/spectral_quality.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from eval_pseudolabels import data_sets, greedy_matches

CUTS = (0.0, 0.5, 0.85)


def coarse_candidates(rgb, valid, gsd: float, k: int, settings) -> list[tuple]:
    """``(mask on the full grid, confidence)`` of the analysis of the ``k``-times coarser image
    (the analyser's own :func:`~solardesk_spectral.analyser.coarse_instances`)."""
    from solardesk_spectral.analyser import coarse_instances

    h, w = rgb.shape[:2]
    return [
        (i.full_mask(h, w), i.confidence) for i in coarse_instances(rgb, valid, gsd, settings, k)
    ]


def join(native: list[tuple], coarse: list[tuple], iou: float, discount: float) -> list[tuple]:
    """Both sets, the coarse confidences lowered by ``discount``, without overlaps above ``iou``
    (greedy from the most confident; native first on a tie)."""
    order = sorted(
        [(c, 0, m) for m, c in native] + [(c - discount, 1, m) for m, c in coarse],
        key=lambda t: (-t[0], t[1]),
    )
    kept: list[tuple] = []
    for c, _, m in order:
        area = int(m.sum())
        if all(
            (inter := int((m & km).sum())) == 0 or inter / (area + int(km.sum()) - inter) <= iou
            for km, _ in kept
        ):
            kept.append((m, c))
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--coarsen", type=int, default=3, metavar="K", help="the coarser pass's K")
    ap.add_argument("--split", choices=("all", "even", "odd"), default="all")
    ap.add_argument("--iou", type=float, default=0.3, help="overlap at which one is dropped")
    ap.add_argument("--discount", type=float, default=0.05, help="off the coarse confidences")
    ap.add_argument("--limit", type=int, help="only the first N images per source")
    args = ap.parse_args(argv)
    if args.coarsen < 2:
        print("coarse_pass: --coarsen must be 2 or more", file=sys.stderr)
        return 2
    from solardesk_spectral.analyser import analyse_tile
    from solardesk_spectral.settings import SpectralSettings

    settings = SpectralSettings()
    params = settings.model_dump()
    cv2.setNumThreads(1)
    found = data_sets(args.data_dir)
    for name, root, reader in found:
        panels = 0
        tally = {v: {t: [0, 0, 0] for t in CUTS} for v in ("native", "joined")}
        for _, rgb, valid, gsd, truth in reader(root, args.split, args.limit):
            h, w = truth.shape
            n, labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
            panels += n - 1
            found_here = analyse_tile(rgb, valid, gsd, params)
            native = [(i.full_mask(h, w), i.confidence) for i in found_here]
            coarse = coarse_candidates(rgb, valid, gsd, args.coarsen, settings)
            both = join(native, coarse, args.iou, args.discount)
            for variant, cands in (("native", native), ("joined", both)):
                for t in CUTS:
                    sel = [m for m, c in cands if c >= t]
                    hp, ht = greedy_matches(sel, labels, n - 1)
                    row = tally[variant][t]
                    row[0] += len(sel)
                    row[1] += len(hp)
                    row[2] += len(ht)
        print(
            f"\n## {name}: {panels} labelled panels; coarser pass at K = {args.coarsen}, "
            f"IoU {args.iou}, discount {args.discount}"
        )
        print("| analysis | stored: recall (candidates) | P / R at ≥ 0.5 | P / R at ≥ 0.85 |")
        print("|---|---|---|---|")
        for variant, rows in tally.items():
            cells = []
            for t in CUTS:
                n_sel, hits, found_ = rows[t]
                p = hits / n_sel if n_sel else float("nan")
                r = found_ / panels if panels else float("nan")
                cells.append(f"{r:.3f} ({n_sel})" if t == 0.0 else f"{p:.3f} / {r:.3f}")
            print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0 if found else 2


if __name__ == "__main__":
    sys.exit(main())

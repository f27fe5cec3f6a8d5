"""ImageNet-pretrained EfficientNet-Lite0 against random initialisation, same steps (ADR 0016).

    python benchmarks/pretrained_vs_random.py [--steps 150] [--tile 256] [--batch 2]
        [--train-scenes 4] [--val-scenes 4] [--scene 1024] [--threads 1] [--seed 0]
        [--arms lite0-imagenet lite0-random mobilenet-random lite0-imagenet-noise-aware]
        [--noise 0.0] [--out results.json]

Synthetic scenes (``solardesk.synthetic``, 0.15 m, panels on every roof, ground-mounted fields)
are written as GeoTIFFs; the true panel instances of each tile go into a mask cache as
pseudo-labels (confidence 0.95; fragments under ``--min-px`` pixels at tile edges left out).
The training scenes and the held-out scenes have different seeds and lie 10 km apart.

Each arm trains the same Mask R-CNN (light heads: 300 proposals, 128 sampled RoIs per tile)
with the real trainer (``solardesk_maskrcnn.train.train``: AdamW, warm-up, cosine decay,
augmentation) for the same number of steps from the same seed, on one core with DataLoader
workers 0, and is then scored on every tile of the held-out scenes: object precision, recall
and F1 at mask IoU ≥ 0.5 and score ≥ 0.5 (``solardesk.core.metrics``), and mask AP50. The
step time is the median wall time between two optimiser steps (checkpoint writes at the ends
of epochs left out). Compare figures within one run only: other processes share this machine.

``--noise 1 --arms lite0-imagenet lite0-imagenet-noise-aware`` compares noise-aware training
(ADR 0011) off and on: the training pseudo-labels then hold as many false labels as true ones,
with overlapping but lower confidences, and the held-out scenes are scored against the truth.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

#: name → (backbone, model.weights, optim.noise_aware)
ARMS: dict[str, tuple[str, str | None, bool]] = {
    "lite0-imagenet": ("efficientnet_lite0_fpn", "imagenet", False),
    "lite0-random": ("efficientnet_lite0_fpn", None, False),
    "mobilenet-random": ("mobilenet_v3_large_fpn", None, False),
    "lite0-imagenet-noise-aware": ("efficientnet_lite0_fpn", "imagenet", True),
}
GSD = 0.15


def false_labels(truth: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` panel-sized rectangles (8–40 px sides) that touch no true panel of ``truth``."""
    out: list[np.ndarray] = []
    h, w = truth.shape
    for _ in range(20 * n):
        if len(out) == n:
            break
        bh, bw = (int(v) for v in rng.integers(8, 41, 2))
        y, x = int(rng.integers(0, max(1, h - bh))), int(rng.integers(0, max(1, w - bw)))
        if truth[y : y + bh, x : x + bw].any():
            continue
        m = np.zeros((h, w), bool)
        m[y : y + bh, x : x + bw] = True
        out.append(m)
    return out


def make_cache(
    root: Path,
    seeds: list[int],
    size: int,
    tile: int,
    min_px: int,
    x0: float,
    noise: float = 0.0,
) -> tuple[Path, int]:
    """GeoTIFFs of synthetic scenes and a cache of their true panels; returns (cache, n).

    With ``noise`` > 0 the pseudo-labels are noisy as the spectral ones are: each tile also gets
    ``noise`` false labels per true one (panel-sized rectangles on roofs, roads or vegetation),
    with confidences drawn from 0.85–0.93 while the true panels get 0.88–0.99 — overlapping, but
    lower on average, which is what noise-aware weighting can use.
    """
    from solardesk.core.cache import Instance, MaskCache, TileKey
    from solardesk.core.raster import describe
    from solardesk.core.tiling import make_grid
    from solardesk.synthetic import SceneSpec, generate_scene, write_scene

    root.mkdir(parents=True, exist_ok=True)
    cache_path = root / "cache.sqlite"
    n = 0
    rng = np.random.default_rng(12345)
    with MaskCache(cache_path) as cache:
        for k, seed in enumerate(seeds):
            spec = SceneSpec(
                height=size,
                width=size,
                gsd=GSD,
                seed=seed,
                roof_panel_probability=1.0,
                origin=(x0 + k * size * GSD, 5152000.0),
            )
            scene = generate_scene(spec)
            tif = root / f"scene{seed}.tif"
            write_scene(scene, tif)
            info = describe(tif)
            cache.put_raster_info(info)
            for t in make_grid(info.width, info.height, info.affine, tile, 0):
                sub = scene.instance_mask[
                    t.row_off : t.row_off + tile, t.col_off : t.col_off + tile
                ]
                insts = [
                    Instance.from_full_mask(
                        sub == v,
                        confidence=float(rng.uniform(0.88, 0.99)) if noise else 0.95,
                    )
                    for v in np.unique(sub[sub > 0])
                    if int((sub == v).sum()) >= min_px
                ]
                n += len(insts)
                if noise:
                    k = int(rng.poisson(noise * max(len(insts), 1)))
                    insts += [
                        Instance.from_full_mask(m, confidence=float(rng.uniform(0.85, 0.93)))
                        for m in false_labels(sub > 0, k, rng)
                    ]
                cache.write_tile(TileKey(info.fingerprint, t.id, "spectral", 1, "p"), t, insts)
    return cache_path, n


def config_for(
    args,
    backbone: str,
    weights: str | None,
    cache: Path,
    out: Path,
    epochs: int,
    noise_aware: bool = False,
):
    from solardesk_maskrcnn.config import parse_train_config

    return parse_train_config(
        {
            "cache": str(cache),
            "output_dir": str(out),
            "data": {"val_fraction": 0.0, "empty_tile_fraction": 0.1, "split_seed": args.seed},
            "model": {
                "backbone": backbone,
                "weights": weights,
                "tile_size": args.tile,
                "rpn_proposals_train": 300,
                "rpn_proposals_test": 300,
                "rois_per_image": 128,
            },
            "optim": {
                "epochs": epochs,
                "batch_size": args.batch,
                "lr": args.lr,
                "warmup_steps": max(1, args.steps // 10),
                "noise_aware": noise_aware,
            },
            "run": {
                "device": "cpu",
                "num_workers": 0,
                "threads": args.threads,
                "log_every": 1,
                "eval_every": 0,
                "seed": args.seed,
                "keep_checkpoints": 1,
            },
        }
    )


def run_arm(args, name: str, train_cache: Path, val_cache: Path, work: Path) -> dict[str, Any]:
    import torch

    from solardesk_maskrcnn.evaluate import evaluate
    from solardesk_maskrcnn.train import plan_data, train

    backbone, weights, noise_aware = ARMS[name]
    out = work / f"run-{name}"
    probe = plan_data(config_for(args, backbone, weights, train_cache, out, 1, noise_aware))
    per_epoch = math.ceil(len(probe.train) / args.batch)
    probe.source.close()
    epochs = max(1, round(args.steps / per_epoch))
    cfg = config_for(args, backbone, weights, train_cache, out, epochs, noise_aware)

    stamps: list[float] = []
    losses: list[float] = []

    def emit(ev: dict) -> None:
        if ev["event"] == "progress":
            stamps.append(time.perf_counter())
            losses.append(float(ev["loss"]))

    t0 = time.perf_counter()
    result = train(cfg, emit=emit)
    train_s = time.perf_counter() - t0
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    t1 = time.perf_counter()
    ev, _ = evaluate(result.checkpoint, cache=val_cache, split="all", device="cpu", batch_size=1)
    eval_s = time.perf_counter() - t1
    s = ev.summary()
    tail = max(1, len(losses) // 10)
    return {
        "arm": name,
        "backbone": backbone,
        "weights": weights or "random",
        "noise_aware": noise_aware,
        "steps": result.step,
        "epochs": epochs,
        "train_tiles": len(probe.train),
        "step_s": statistics.median(gaps) if gaps else float("nan"),
        "train_s": train_s,
        "eval_s": eval_s,
        "first_loss": float(np.mean(losses[:tail])),
        "last_loss": float(np.mean(losses[-tail:])),
        "threads": torch.get_num_threads(),
        **{k: s[k] for k in ("images", "gt_instances", "tp", "fp", "fn")},
        **{k: s[k] for k in ("precision", "recall", "f1", "mask_ap50")},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="optimiser steps per arm (about)")
    ap.add_argument("--tile", type=int, default=256, help="tile size in pixels")
    ap.add_argument("--batch", type=int, default=2, help="tiles per step")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    ap.add_argument("--train-scenes", type=int, default=4, help="training scenes")
    ap.add_argument("--val-scenes", type=int, default=4, help="held-out scenes")
    ap.add_argument("--scene", type=int, default=1024, help="scene side in pixels")
    ap.add_argument("--min-px", type=int, default=16, help="smallest instance kept")
    ap.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="false pseudo-labels per true one in the training cache (0: clean labels)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    ap.add_argument("--arms", nargs="+", default=list(ARMS)[:3], choices=list(ARMS))
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        train_cache, n_train = make_cache(
            work / "train",
            list(range(args.train_scenes)),
            args.scene,
            args.tile,
            args.min_px,
            680000.0,
            args.noise,
        )
        val_cache, n_val = make_cache(
            work / "heldout",
            list(range(1000, 1000 + args.val_scenes)),
            args.scene,
            args.tile,
            args.min_px,
            690000.0,
        )
        print(
            f"synthetic scenes: {args.train_scenes} training ({n_train} panel instances), "
            f"{args.val_scenes} held out ({n_val}); {args.scene}² px at {GSD} m, "
            f"{args.noise:g} false pseudo-labels per true one in training, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        runs = []
        for name in args.arms:
            r = run_arm(args, name, train_cache, val_cache, work)
            runs.append(r)
            print(json.dumps(r), flush=True)

    print(
        f"\nobject P/R/F1 at mask IoU >= 0.5, score >= 0.5 on {runs[0]['images']} held-out "
        f"{args.tile} px tiles ({runs[0]['gt_instances']} panels); {runs[0]['steps']} steps of "
        f"{args.batch} tiles from {runs[0]['train_tiles']} training tiles, seed {args.seed}"
    )
    print(
        f"{'arm':<27} {'backbone':<23} {'init':<8} {'steps':>5} {'s/step':>6} {'loss':>11} "
        f"{'P':>6} {'R':>6} {'F1':>6} {'AP50':>6}"
    )
    for r in runs:
        ap50 = r["mask_ap50"]
        print(
            f"{r['arm']:<27} {r['backbone']:<23} {r['weights']:<8} {r['steps']:>5} "
            f"{r['step_s']:>6.2f} {r['first_loss']:>5.2f}>{r['last_loss']:<5.2f} "
            f"{r['precision']:>6.3f} {r['recall']:>6.3f} {r['f1']:>6.3f} "
            f"{'-' if ap50 is None else f'{ap50:.3f}':>6}"
        )
    print(
        f"torch threads {args.threads}, total {time.perf_counter() - t_all:.0f} s; load average "
        f"before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f} (other processes share the cores)"
    )
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2, default=str))


if __name__ == "__main__":
    main()

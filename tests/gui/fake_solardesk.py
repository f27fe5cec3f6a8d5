"""A stand-in for the ``solardesk`` command in GUI tests: ``train`` and ``detect``.

``train CONFIG [--resume]`` follows the JSON-lines event contract of ``solardesk train``
(started, progress, metrics, checkpoint, finished, error), stops when it reads ``stop`` on
stdin (finishing the step and saving; with ``FAKE_TRAIN_FAIL_ON_STOP`` set it fails there, exit
1, as on a full disk), and crashes with SIGABRT at ``crash_at`` (a global
step in the config) like a trainer hit by a native fault. ``detect RASTER ... --out FILE``
draws a tqdm-style progress bar on stderr and writes two panels around the raster's centre
with the real vector writer; it records its arguments in ``FILE.args.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def train(args) -> int:
    cfg = json.loads(Path(args.config).read_text())
    epochs, steps = int(cfg.get("epochs", 3)), int(cfg.get("steps", 20))
    sleep, crash_at = float(cfg.get("sleep", 0.01)), cfg.get("crash_at")
    state = Path(args.config).with_suffix(".state.json")
    start = 1
    if args.resume and state.exists():
        start = json.loads(state.read_text())["epoch"] + 1
    stop = threading.Event()

    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                stop.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    print("loading tiles from the cache…", file=sys.stderr, flush=True)
    emit(
        event="started",
        device="cpu",
        epochs=epochs,
        steps_per_epoch=steps,
        resumed_from=f"epoch {start - 1}" if start > 1 else None,
    )
    for epoch in range(start, epochs + 1):
        for step in range(1, steps + 1):
            g = (epoch - 1) * steps + step
            if crash_at is not None and g >= crash_at:
                print("CUDA error: an illegal memory access was encountered", file=sys.stderr)
                sys.stderr.flush()
                os.abort()
            time.sleep(sleep)
            emit(
                event="progress",
                epoch=epoch,
                step=step,
                steps=steps,
                loss=2 * math.exp(-g / 30) + 0.1,
            )
            if stop.is_set() and os.environ.get("FAKE_TRAIN_FAIL_ON_STOP"):  # its last save fails
                print("OSError: [Errno 28] No space left on device", file=sys.stderr, flush=True)
                return 1
            if stop.is_set():
                ckpt = Path(args.config).with_name(f"ckpt_epoch{epoch}.pt")
                ckpt.write_text("fake")
                state.write_text(json.dumps({"epoch": epoch - 1}))
                emit(event="checkpoint", path=str(ckpt), epoch=epoch)
                emit(event="finished", stopped=True, checkpoint=str(ckpt))
                return 0
        emit(event="metrics", epoch=epoch, val_loss=1.5 * math.exp(-epoch / 2), ap50=0.2 * epoch)
        ckpt = Path(args.config).with_name(f"ckpt_epoch{epoch}.pt")
        ckpt.write_text("fake")
        state.write_text(json.dumps({"epoch": epoch}))
        emit(event="checkpoint", path=str(ckpt), epoch=epoch)
    emit(event="finished", stopped=False)
    return 0


def detect(args) -> int:
    from shapely.geometry import box

    from solardesk.core.raster import describe
    from solardesk.core.vector import VectorWriter, read_geometries

    out = Path(args.out)
    record = {"rasters": args.rasters, "spectral": args.spectral, "model": args.model}
    if args.aoi:
        geoms, _ = read_geometries(args.aoi)
        record["aoi_bounds"] = list(geoms[0].bounds)
    Path(str(out) + ".args.json").write_text(json.dumps(record))
    if os.environ.get("FAKE_DETECT_FAIL"):
        print("Error: the model has no SolarDesk metadata.", file=sys.stderr)
        return 2
    info = describe(args.rasters[0])  # (the first raster's tiles and panels stand for all)
    # Like the real command: each tile's instances go to the cache beside the output first
    # (one 20-px square per tile here), so the GUI can show them as tiles finish.
    from solardesk.core.cache import Instance, MaskCache, TileKey
    from solardesk.core.detect import default_cache_path

    sleep = float(os.environ.get("FAKE_DETECT_SLEEP", "0.01"))
    with MaskCache(default_cache_path(out)) as cache:
        cache.put_raster_info(info)
        for i in range(1, 11):
            mask = np.zeros((64, 64), bool)
            mask[20:40, 20:40] = True
            cache.write_tile(
                TileKey(info.fingerprint, f"t{i}", "fake-detect", "1", "p"),
                (64 * (i - 1), 0, 64, 64),
                [Instance.from_full_mask(mask, confidence=0.9)],
            )
            bar = "█" * i + " " * (10 - i)
            print(
                f"detect: {i * 10:3d}%|{bar}| {i}/10 [00:00<00:00, 50.0tile/s]",
                end="\r",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(sleep)
    print(file=sys.stderr)
    minx, miny, maxx, maxy = info.bounds
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    with VectorWriter(out, info.crs, schema_fields={"score": float}, overwrite=args.overwrite) as w:
        w.write(
            [
                (box(cx - 5, cy - 3, cx + 5, cy + 3), {"score": 0.9}),
                (box(cx + 10, cy - 3, cx + 20, cy + 3), {"score": 0.7}),
            ]
        )
    print(f"2 panels written to {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="solardesk")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true")
    d = sub.add_parser("detect")
    d.add_argument("rasters", nargs="+")
    d.add_argument("--spectral", action="store_true")
    d.add_argument("--model")
    d.add_argument("--out", required=True)
    d.add_argument("--aoi")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--tile", type=int, default=512)
    d.add_argument("--overlap", type=int, default=64)
    d.add_argument("--cache")
    d.add_argument("--threshold", type=float)
    d.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    return train(args) if args.cmd == "train" else detect(args)


if __name__ == "__main__":
    sys.exit(main())

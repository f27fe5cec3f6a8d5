"""Training throughput: tiles/s the data loader delivers against tiles/s the model consumes.

    python benchmarks/bench_train.py [--tile 256] [--batch 2] [--backbone mobilenet_v3_large_fpn]
        [--channels rgb rgb+spectral] [--workers 0 2] [--steps 6] [--device cpu]

A synthetic project (1024² scenes at 0.15 m, true panel masks as pseudo-labels) is written to a
temporary folder. The loader figure is steady-state tiles/s of the real training DataLoader
(cache reads, raster windows, spectral channels for 9-channel input, augmentation), measured
after its first batch so worker start-up is left out (and reported apart). The model figure is
training steps/s on batches already in memory. The ratio loader ÷ model says whether training
waits for data: above 1 the loader keeps up; the GPU target is 5 or more. Compare figures
within one run only (other processes share this machine's cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))


def make_project(root: Path, tile: int, n_scenes: int = 2, size: int = 1024) -> Path:
    """Synthetic rasters and a cache whose pseudo-labels are the true panel masks."""
    from solardesk.core.cache import Instance, MaskCache, TileKey
    from solardesk.core.raster import describe
    from solardesk.core.tiling import make_grid
    from solardesk.synthetic import SceneSpec, generate_scene, write_scene

    cache_path = root / "cache.sqlite"
    with MaskCache(cache_path) as cache:
        for i in range(n_scenes):
            spec = SceneSpec(
                height=size,
                width=size,
                gsd=0.15,
                seed=i,
                roof_panel_probability=1.0,
                origin=(680000.0 + i * size * 0.15, 5152000.0),
            )
            scene = generate_scene(spec)
            tif = root / f"scene{i}.tif"
            write_scene(scene, tif)
            info = describe(tif)
            cache.put_raster_info(info)
            rng = np.random.default_rng(i)
            for t in make_grid(info.width, info.height, info.affine, tile, tile // 8):
                sub = scene.instance_mask[
                    t.row_off : t.row_off + tile, t.col_off : t.col_off + tile
                ]
                insts = [
                    Instance.from_full_mask(sub == v, confidence=float(rng.uniform(0.86, 0.99)))
                    for v in np.unique(sub[sub > 0])
                ]
                cache.write_tile(TileKey(info.fingerprint, t.id, "spectral", 1, "p"), t, insts)
    return cache_path


def dataset_for(cache_path: Path, channels: str):
    from solardesk.core.cache import MaskCache
    from solardesk_maskrcnn.config import AugmentSettings
    from solardesk_maskrcnn.dataset import CacheTileDataset
    from solardesk_maskrcnn.samples import RasterLocator, TileSource, list_samples

    with MaskCache(cache_path, readonly=True) as cache:
        samples = list_samples(cache, 0.85)
        loc = RasterLocator(cache)
        paths = {s.raster_fp: str(loc.locate(s.raster_fp)) for s in samples}
        gsd = {fp: cache.get_raster(fp).gsd_m for fp in paths}
    source = TileSource(cache_path, paths, threshold=0.85, gsd=gsd)
    return CacheTileDataset(
        source, samples, spectral=channels != "rgb", augment=AugmentSettings(), seed=0
    )


def loader_rate(dataset, batch: int, workers: int, n_batches: int) -> tuple[float, float]:
    """(steady-state tiles/s, seconds to the first batch).

    Steady state is the second half of the timed batches: by then every worker has started
    (their start-up, mostly importing torch in a spawned process, overlaps the first half).
    """
    import torch

    from solardesk_maskrcnn.dataset import collate, worker_init

    # A shuffled subset the loader consumes to the end: workers are idle when it shuts down.
    skip = max(1, workers)  # each worker's first batch carries its start-up
    order = np.random.default_rng(0).permutation(len(dataset))[: (n_batches + skip) * batch]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order.tolist()),
        batch_size=batch,
        collate_fn=collate,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        multiprocessing_context="spawn" if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    for _ in range(skip - 1):
        next(it)
    stamps = [(time.perf_counter(), 0)]
    for images, _ in it:
        stamps.append((time.perf_counter(), len(images)))
    half = len(stamps) // 2
    n = sum(k for _, k in stamps[half + 1 :])
    dt = stamps[-1][0] - stamps[half][0]
    return (n / dt if dt > 0 else float("nan")), first


def step_rate(
    dataset, backbone: str, channels: str, tile: int, batch: int, steps: int, device, light: bool
):
    """Training steps/s of the model on in-memory batches (after one warm-up step)."""
    import torch

    from solardesk_maskrcnn.config import ModelSettings
    from solardesk_maskrcnn.dataset import collate
    from solardesk_maskrcnn.model import build_model

    torch.manual_seed(0)
    extra = {"rpn_proposals_train": 200, "rois_per_image": 64} if light else {}
    settings = ModelSettings(backbone=backbone, channels=channels, **extra)
    model = build_model(settings, tile).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = [i for i, s in enumerate(dataset.samples) if s.n_targets][: batch * 2] or [0, 1]
    batches = []
    for k in range(0, len(idx), batch):
        images, targets = collate([dataset[i] for i in idx[k : k + batch]])
        batches.append(
            (
                [im.to(device) for im in images],
                [{key: v.to(device) for key, v in t.items()} for t in targets],
            )
        )

    def one(b) -> None:
        loss = sum(model(*b).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    one(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        one(batches[s % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=256, help="tile size in pixels")
    ap.add_argument("--batch", type=int, default=2, help="tiles per step")
    ap.add_argument("--backbone", default="mobilenet_v3_large_fpn", help="model backbone")
    ap.add_argument("--channels", nargs="+", default=["rgb", "rgb+spectral"])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader workers")
    ap.add_argument("--batches", type=int, default=24, help="loader batches timed")
    ap.add_argument("--steps", type=int, default=6, help="model steps timed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the model")
    ap.add_argument("--scenes", type=int, default=2, help="1024² synthetic scenes to write")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--light",
        action="store_true",
        help="200 proposals and 64 sampled RoIs per tile (the tests' settings) instead of the "
        "defaults (1000 and 256)",
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = make_project(Path(tmp), args.tile, n_scenes=args.scenes)
        print(f"synthetic project: {time.perf_counter() - t0:.1f} s")
        print(
            f"{'channels':<13} {'workers':>7} {'loader tiles/s':>15} {'1st batch s':>12} "
            f"{'model steps/s':>14} {'model tiles/s':>14} {'loader/model':>13}"
        )
        for channels in args.channels:
            ds = dataset_for(cache, channels)
            rate = step_rate(
                ds, args.backbone, channels, args.tile, args.batch, args.steps, device, args.light
            )
            for workers in args.workers:
                tiles_s, first = loader_rate(ds, args.batch, workers, args.batches)
                ratio = tiles_s / (rate * args.batch)
                print(
                    f"{channels:<13} {workers:>7} {tiles_s:>15.2f} {first:>12.2f} "
                    f"{rate:>14.3f} {rate * args.batch:>14.2f} {ratio:>13.2f}",
                    flush=True,
                )
            ds.source.close()
    print(
        f"backbone {args.backbone}{' (light heads)' if args.light else ''}, {args.tile} px tiles, "
        f"batch {args.batch}, device {device}, model threads {args.threads}; load average "
        f"before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f} (other processes share the cores)"
    )


if __name__ == "__main__":
    main()

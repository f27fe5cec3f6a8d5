"""Mask cache figures: encode/decode, insert cost per mask, read_tile latency, streaming memory.

    python benchmarks/bench_cache.py [N_TILES] [INSTANCES_PER_TILE]

Defaults: 10 000 tiles x 20 instances = 200 000 instances in a temporary cache, in four
rasters laid out as the pre-compute plans them (a grid of 512 px tiles overlapping by 64 px).
Masks are synthetic blobs of 10-80 px, the size of panel arrays at 0.1-0.3 m in a tile. Figures
are for this machine and run; compare ratios within one run (other processes share the cores).
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solardesk.core.cache import (
    CHANNELS,
    Instance,
    MaskCache,
    TileKey,
    TileResult,
    hash_params,
)
from solardesk.core.masks import decode_mask, encode_mask

TILE = 512


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def blob_instances(rng: np.random.Generator, n: int) -> list[Instance]:
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(10, 80, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        m = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 4 < 1.0
        m[:: max(2, h // 6)] = False  # gaps between module rows
        x0, y0 = (int(v) for v in rng.integers(0, TILE - 80, size=2))
        out.append(
            Instance(
                bbox=(x0, y0, x0 + w, y0 + h),
                mask=m,
                confidence=float(rng.uniform(0.3, 1.0)),
                scores=dict(zip(CHANNELS, rng.random(6).tolist(), strict=True)),
                provenance="spectral",
            )
        )
    return out


def timeit(fn, repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    n_tiles = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    per_tile = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rng = np.random.default_rng(0)
    print(f"mask cache benchmark: {n_tiles} tiles x {per_tile} instances")

    # --- encodings -----------------------------------------------------------------------
    big = np.zeros((TILE, TILE), bool)
    for inst in blob_instances(rng, 30):
        x0, y0, x1, y1 = inst.bbox
        big[y0:y1, x0:x1] |= inst.mask
    blob = encode_mask(big)
    enc = timeit(lambda: encode_mask(big), 200) * 1e3
    dec = timeit(lambda: decode_mask(blob, TILE, TILE), 200) * 1e3
    print(f"encode 512x512: {enc:.3f} ms, decode {dec:.3f} ms, {len(blob)} bytes")
    pool = blob_instances(rng, 400)
    crop = pool[0].mask
    print(
        f"encode one {crop.shape} crop: {timeit(lambda: encode_mask(crop), 2000) * 1e6:.1f} us, "
        f"mean blob {statistics.mean(len(encode_mask(i.mask)) for i in pool):.0f} bytes"
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        ph = hash_params({"threshold": 0.45})
        cycle = itertools.cycle(pool)

        def tiles():
            # four rasters, each a grid of tiles 50 wide that overlap by 64 px, as planned
            for t in range(n_tiles):
                key = TileKey(f"raster{t % 4}", f"t{t}", "spectral", "1", ph)
                i = t // 4
                window = ((i % 50) * (TILE - 64), (i // 50) * (TILE - 64), TILE, TILE)
                yield TileResult(key, window, list(itertools.islice(cycle, per_tile)))

        # --- writes ----------------------------------------------------------------------
        work = list(tiles())  # build the inputs outside the timed part
        n_masks = n_tiles * per_tile
        with MaskCache(path) as cache:
            t0 = time.perf_counter()
            cache.write_tiles(work, batch_size=64)
            dt = time.perf_counter() - t0
            wal = cache.size_bytes()
        size = path.stat().st_size  # after the checkpoint on close
        del work
        print(
            f"write_tiles: {dt:.2f} s for {n_masks} masks = {dt / n_masks * 1e6:.1f} us/mask "
            f"(encode included), {n_tiles / dt:.0f} tiles/s; file {size / 2**20:.1f} MiB "
            f"({size / n_masks:.0f} B/instance; {wal / 2**20:.1f} MiB with the WAL before close)"
        )
        one = [
            TileResult(
                TileKey("single", f"s{t}", "spectral", "1", ph),
                ((t % 50) * (TILE - 64), (t // 50) * (TILE - 64), TILE, TILE),
                pool[:per_tile],
            )
            for t in range(200)
        ]
        with MaskCache(path) as cache:
            t0 = time.perf_counter()
            for item in one:
                cache.write_tile(*item)
            dt = time.perf_counter() - t0
        print(f"write_tile (one transaction per tile): {dt / len(one) * 1e3:.2f} ms/tile")

        # --- reads -----------------------------------------------------------------------
        with MaskCache(path, readonly=True) as reader:
            ids = rng.integers(0, n_tiles, size=2000)
            for t in ids[:50]:  # warm the page cache
                reader.read_tile(f"raster{t % 4}", f"t{t}")
            times = []
            for t in ids:
                t0 = time.perf_counter()
                got = reader.read_tile(f"raster{t % 4}", f"t{t}")
                times.append(time.perf_counter() - t0)
                assert len(got) == per_tile
            times_ms = np.array(times) * 1e3
            print(
                f"read_tile ({per_tile} instances, masks decoded): median "
                f"{np.median(times_ms):.3f} ms, p95 {np.percentile(times_ms, 95):.3f} ms"
            )
            t0 = time.perf_counter()
            done = reader.done_tile_ids("raster0", "spectral", "1", ph)
            print(f"done_tile_ids: {len(done)} ids in {(time.perf_counter() - t0) * 1e3:.1f} ms")
            t0 = time.perf_counter()
            st = reader.stats()
            print(
                f"stats: {(time.perf_counter() - t0) * 1e3:.0f} ms "
                f"({st['tiles']} tiles, {st['instances']} instances)"
            )

            # --- counting objects (cache stats): memory of one band of a raster -------------
            def objects(raster: str | None) -> tuple[int, float, float]:
                t0 = time.perf_counter()
                n = reader.count_objects(0.85, raster)
                dt = time.perf_counter() - t0  # (timed without tracing: it slows Python)
                tracemalloc.start()
                reader.count_objects(0.85, raster)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                return n, dt, peak / 2**20

            n_one, dt_one, peak_one = objects("raster0")
            n_every, dt_every, peak_every = objects(None)
            print(
                f"count_objects (cache stats): one raster {n_one} objects in {dt_one:.1f} s, "
                f"peak {peak_one:.2f} MiB; all four {n_every} in {dt_every:.1f} s, peak "
                f"{peak_every:.2f} MiB (ratio {peak_every / peak_one:.2f} for "
                f"{n_every / max(n_one, 1):.1f}x the objects)"
            )

            # --- streaming memory ---------------------------------------------------------
            def stream(limit: int | None) -> tuple[float, float, int, float]:
                rss0 = rss_mib()
                tracemalloc.start()
                t0 = time.perf_counter()
                n = 0
                for _tile, inst in itertools.islice(reader.iter_instances(), limit):
                    n += inst.area_px > 0
                dt = time.perf_counter() - t0
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                return peak / 2**20, rss_mib() - rss0, n, dt

            t0 = time.perf_counter()
            n_all = sum(1 for _ in reader.iter_instances())
            rate = n_all / (time.perf_counter() - t0)
            print(f"iter_instances: {rate:.0f} instances/s (masks decoded, no tracing)")

            small = n_masks // 10
            p_small, r_small, n1, _ = stream(small)
            p_all, r_all, n2, dt_all = stream(None)
            print(
                f"iter_instances: {n1} instances -> tracemalloc peak {p_small:.2f} MiB "
                f"(RSS +{r_small:.1f} MiB); {n2} instances -> peak {p_all:.2f} MiB "
                f"(RSS +{r_all:.1f} MiB); {n2 / dt_all:.0f} instances/s under tracemalloc"
            )
            tracemalloc.start()
            kept = [inst for _t, inst in itertools.islice(reader.iter_instances(), small)]
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(
                f"baseline, holding {len(kept)} instances in a list: peak {peak / 2**20:.1f} MiB "
                f"(~{peak / 2**20 * n2 / len(kept):.0f} MiB for all {n2}); "
                f"streaming peak ratio {p_all / (peak / 2**20):.3f}"
            )
            del kept

            out = Path(tmp) / "coco.json"
            t0 = time.perf_counter()
            counts = reader.export_coco(out, threshold=0.85)
            print(
                f"export_coco: {counts['images']} images, {counts['annotations']} annotations "
                f"in {time.perf_counter() - t0:.1f} s, {out.stat().st_size / 2**20:.0f} MiB"
            )


if __name__ == "__main__":
    main()

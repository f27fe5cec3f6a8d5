"""Peak memory while reading every tile of a large raster, against a small one.

    python benchmarks/bench_read_tiles.py [--size 20000] [--baseline 2000] [--tile 512]
        [--overlap 64] [--workdir DIR] [--raster PATH]

Writes a synthetic GeoTIFF of SIZE² (and a BASELINE² one) with solardesk.synthetic, then in a
fresh process for each reads every tile of a 512/64 grid as normalised RGB (what every
pipeline step does) and prints the process's peak resident memory. Target: under 300 MB for
20000², and about the same as the baseline (memory must not grow with the scene).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from solardesk.core.raster import RasterReader, describe
from solardesk.core.tiling import make_grid
path, tile, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
info = describe(path)
grid = make_grid(info.width, info.height, info.affine, tile, overlap)
n = 0
checksum = 0
with RasterReader(path) as r:
    for t in grid:
        rgb, valid = r.read_rgb(t.window)
        checksum += int(rgb[::64, ::64].sum())
        n += 1
print(json.dumps({"tiles": n, "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(path: Path, tile: int, overlap: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tile), str(overlap)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--baseline", type=int, default=2000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)

    from solardesk.synthetic import write_large_raster

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = []
        for size in (args.baseline, args.size):
            path = Path(tmp) / f"synthetic_{size}.tif"
            t0 = time.perf_counter()
            write_large_raster(path, size, size, seed=0)
            made = time.perf_counter() - t0
            r = measure(path, args.tile, args.overlap)
            rows.append((size, made, path.stat().st_size / 1e6, r))
        print("| raster | file MB | tiles | read s | tiles/s | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for size, _made, mb, r in rows:
            print(
                f"| {size}×{size} | {mb:.0f} | {r['tiles']} | {r['seconds']:.1f} | "
                f"{r['tiles'] / r['seconds']:.0f} | {r['peak_mb']:.0f} |"
            )
        base, big = rows[0][3]["peak_mb"], rows[1][3]["peak_mb"]
        print(
            f"\npeak memory {args.size}² / {args.baseline}²: {big / base:.2f}× "
            f"({big:.0f} MB vs {base:.0f} MB; target < 300 MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of ``solardesk detect`` on a big raster against a small one (it must not grow).

    python benchmarks/bench_detect_memory.py [--big 20000] [--small 2000] [--model M.onnx]
        [--detectors spectral,onnx] [--workers 1] [--gdal-cachemax default,16] [--keep DIR]

Writes two synthetic GeoTIFFs with ``solardesk.synthetic.write_large_raster`` (tiled, deflate,
0.15 m) and runs ``solardesk detect`` on each, once per detector, each run in a fresh process,
and reads that process's peak resident memory (``getrusage`` of the child). Target: the big
raster's peak within 1.2× of the small one's, for each detector.

The ONNX detector runs ``--model`` if given, else a tiny Mask R-CNN exported here
(:func:`solardesk_onnx.testing.export_tiny`, 512 px, random weights with distinct scores): the
pipeline's memory is what is measured, and a real model adds its weights once, whatever the
raster. Its random detections are many, so many lie on seams and are held until the end.

GDAL's block cache counts as the process's memory. SolarDesk caps it at 64 MB
(``solardesk.core.raster.GDAL_CACHE_MB``) unless ``GDAL_CACHEMAX`` is set: a 2000² px RGB raster
(12 MB decoded) never fills it, a 20000² one does. Each configuration of ``--gdal-cachemax``
("default": SolarDesk's cap; a number: ``GDAL_CACHEMAX`` in MB for the child) is measured, so
the pipeline's own growth is told apart from the cache's bounded fill.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs one command as a child and prints its peak RSS (kB) and wall time as JSON on stderr.
_RUNNER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
res = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": res.returncode, "peak_kb": peak, "seconds": time.perf_counter() - t0,
                  "stdout": res.stdout, "stderr": res.stderr[-2000:]}))
"""


def measure(args: list[str], gdal_cachemax: str) -> dict:
    env = dict(os.environ)
    env.pop("GDAL_CACHEMAX", None)
    if gdal_cachemax != "default":
        env["GDAL_CACHEMAX"] = gdal_cachemax
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=20000)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--model", type=Path, help="ONNX model (default: a tiny one made here).")
    ap.add_argument("--detectors", default="spectral,onnx")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument(
        "--gdal-cachemax",
        default="default,16",
        help="GDAL block cache settings to measure: 'default' (SolarDesk's 64 MB cap) and/or MB.",
    )
    ap.add_argument("--keep", type=Path, help="Keep rasters, model and outputs in this folder.")
    args = ap.parse_args(argv)

    from solardesk.synthetic import write_large_raster

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_detect_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    rasters = {}
    for size in (args.small, args.big):
        path = work / f"synthetic_{size}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            write_large_raster(path, size, size, gsd=0.15, seed=1)
            print(f"wrote {path.name} ({size}² px) in {time.perf_counter() - t0:.0f} s")
        rasters[size] = path

    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    model = args.model
    if "onnx" in detectors and model is None:
        model = work / "tiny-512.onnx"
        if not model.exists():
            import warnings

            from solardesk_onnx.testing import export_tiny

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_tiny(model, args.tile, fixed_shape=True, gsd_m=0.15, overlap=64)
            print(f"exported a tiny 512 px model to {model}")

    solardesk = [sys.executable, "-m", "solardesk"]
    rows = []
    configs = [c.strip() for c in args.gdal_cachemax.split(",") if c.strip()]
    for cfg in configs:
        for det in detectors:
            for size, raster in rasters.items():
                out = work / f"{det}_{size}.gpkg"
                cache = work / f"{det}_{size}.cache.sqlite"
                for p in (out, cache, Path(f"{cache}-wal"), Path(f"{cache}-shm")):
                    p.unlink(missing_ok=True)
                cmd = [*solardesk, "detect", str(raster), "--out", str(out), "--cache", str(cache)]
                cmd += ["--tile", str(args.tile), "--workers", str(args.workers), "--quiet"]
                cmd += ["--spectral"] if det == "spectral" else ["--model", str(model)]
                r = measure(cmd, cfg)
                if r["rc"] != 0:
                    print(f"{det} on {raster.name} failed:\n{r['stderr']}")
                    return 1
                m = re.match(r"(\d+) panels? from (\d+) tiles?", r["stdout"])
                rows.append(
                    (cfg, det, size, int(m.group(2)), int(m.group(1)), r["seconds"], r["peak_kb"])
                )
                print(
                    f"GDAL cache {cfg:>7}: {det:>8} {size:>6}² px: {m.group(2):>5} tiles, "
                    f"{m.group(1):>6} panels, {r['seconds']:6.0f} s, "
                    f"peak {r['peak_kb'] / 1024:6.0f} MB"
                )
    print()
    ok = True
    for cfg in configs:
        for det in detectors:
            small = next(r for r in rows if r[:3] == (cfg, det, args.small))
            big = next(r for r in rows if r[:3] == (cfg, det, args.big))
            ratio = big[6] / small[6]
            if cfg == "default":
                ok &= ratio <= 1.2
            print(
                f"GDAL cache {cfg}: {det}: peak {big[6] / 1024:.0f} MB on {args.big}² px "
                f"({big[3]} tiles) vs {small[6] / 1024:.0f} MB on {args.small}² px "
                f"({small[3]} tiles): {ratio:.2f}× "
                f"({'within' if ratio <= 1.2 else 'OVER'} the 1.2× target)"
            )
    print(f"files in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

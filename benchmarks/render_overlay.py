"""Render polygons over a raster to a PNG, to look at what SolarDesk found.

    python benchmarks/render_overlay.py RASTER DETECTIONS.gpkg OUT.png [--truth TRUTH.geojson]
        [--max-size 1600]

Detections are drawn in red (thickness by score), ground truth in yellow. The raster is read
decimated (overviews when present), so this works on large rasters too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np


def _draw(img, geoms, inv, scale, colour, thickness):
    for g in geoms:
        polys = getattr(g, "geoms", [g])
        for p in polys:
            if p.is_empty or p.geom_type != "Polygon":
                continue
            pts = np.array([inv @ xy for xy in p.exterior.coords]) * scale
            cv2.polylines(img, [pts.astype(np.int32)], True, colour, thickness, cv2.LINE_AA)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raster", type=Path)
    ap.add_argument("detections", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--truth", type=Path)
    ap.add_argument("--max-size", type=int, default=1600)
    args = ap.parse_args(argv)

    from solardesk.core.raster import RasterReader, describe
    from solardesk.core.vector import read_geometries

    info = describe(args.raster)
    scale = min(1.0, args.max_size / max(info.width, info.height))
    h, w = max(1, round(info.height * scale)), max(1, round(info.width * scale))
    with RasterReader(args.raster) as r:
        n = r.normalisation
        raw = r.ds.read(sorted(set(n.bands)), out_shape=(len(set(n.bands)), h, w))
    index = {b: i for i, b in enumerate(sorted(set(n.bands)))}
    rgb = np.stack([raw[index[b]] for b in n.bands], axis=-1)
    if n.lo is not None:
        lo, hi = np.array(n.lo), np.array(n.hi)
        rgb = np.clip((rgb - lo) / (hi - lo) * 255, 0, 255)
    img = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR)
    inv = ~info.affine
    if args.truth:
        truth, _ = read_geometries(args.truth, dst_crs=info.crs)
        _draw(img, truth, inv, scale, (0, 230, 255), 2)
    det, _ = read_geometries(args.detections, dst_crs=info.crs)
    _draw(img, det, inv, scale, (0, 0, 255), 2)
    cv2.imwrite(str(args.out), img)
    print(f"{args.out}: {len(det)} detections over {args.raster.name} ({w}×{h})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``solardesk detect`` end to end on real imagery, scored against hand-drawn panels.

    python benchmarks/eval_detect.py DATA_DIR [--model M.onnx] [--png docs/detect_mosaic.png]
        [--workers 1] [--keep DIR]

For each ``DATA_DIR/southtyrol-bz2023-roof-solar/derived/geotiff/mosaic4x4_*.tif`` (a 2560 ×
2560 px mosaic of 16 orthophoto tiles, EPSG:3857, ≈ 0.137 m) and its dissolved ground truth
beside it (``derived/mosaic4x4_<id>_dissolved_epsg3857.geojson``, class "solar"), runs the
spectral detector (no model) and, with ``--model``, the ONNX one, each as the CLI in a fresh
process with a fresh cache, and prints: wall time, panels found at the detector's default
threshold, and object precision and recall at IoU ≥ 0.5 (polygon IoU, greedy one-to-one, best
first) at that threshold and at a few others (a second, cached run at the lowest threshold
gives every stored detection). Renders the default-threshold polygons (red) and the truth
(yellow) over the raster to ``--png`` (``detect_mosaic.png``; the ONNX one to
``detect_mosaic_onnx.png``). Labels are not exhaustive (some visible panels are unlabelled):
read precision with that in mind, and look at the picture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Score thresholds scored besides the detector's default, and the lowest stored score.
THRESHOLDS = {"spectral": (0.5, 0.7, 0.85), "onnx": (0.3, 0.5, 0.7, 0.9)}
LOWEST = {"spectral": 0.3, "onnx": 0.05}


def read_polygons(path: Path, crs, *, where=None) -> list[tuple]:
    """``(polygon, properties)`` of a vector file, reprojected to ``crs``."""
    import fiona
    from pyproj import CRS, Transformer
    from shapely import make_valid
    from shapely.geometry import shape
    from shapely.ops import transform

    out = []
    with fiona.open(path) as src:
        src_crs = CRS.from_user_input(src.crs.to_wkt()) if src.crs else CRS.from_epsg(4326)
        dst = CRS.from_user_input(crs)
        tr = None if src_crs == dst else Transformer.from_crs(src_crs, dst, always_xy=True)
        for f in src:
            props = dict(f["properties"])
            if where is not None and not where(props):
                continue
            g = shape(f["geometry"])
            if tr is not None:
                g = transform(tr.transform, g)
            if not g.is_valid:
                g = make_valid(g)
            out.append((g, props))
    return out


def match(pred: list, truth: list, iou_min: float = 0.5) -> int:
    """Number of one-to-one matches at polygon IoU ≥ ``iou_min`` (greedy, best IoU first)."""
    from shapely import STRtree

    if not pred or not truth:
        return 0
    tree = STRtree(truth)
    pairs = []
    for i, p in enumerate(pred):
        for j in tree.query(p, predicate="intersects"):
            t = truth[j]
            inter = p.intersection(t).area
            union = p.area + t.area - inter
            iou = inter / union if union > 0 else 0.0
            if iou >= iou_min:
                pairs.append((iou, i, int(j)))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


def scores(pred: list, truth: list) -> tuple[int, float, float]:
    n = match(pred, truth)
    precision = n / len(pred) if pred else 1.0
    recall = n / len(truth) if truth else 1.0
    return n, precision, recall


def _recompress(png: Path) -> None:
    """Rewrite a PNG at zlib level 9 (it is kept in the repository)."""
    import cv2

    cv2.imwrite(str(png), cv2.imread(str(png)), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def run_detect(raster: Path, out: Path, cache: Path, detector: str, model, extra=()) -> tuple:
    cmd = [sys.executable, "-m", "solardesk", "detect", str(raster), "--out", str(out)]
    cmd += ["--cache", str(cache), "--overwrite", "--quiet", *extra]
    cmd += ["--spectral"] if detector == "spectral" else ["--model", str(model)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{detector} detect failed:\n{res.stderr}")
    return seconds, res.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--model", type=Path, help="Also evaluate this ONNX model.")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "detect_mosaic.png")
    ap.add_argument("--max-size", type=int, default=1200, help="Longest side of the PNG (px).")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="Keep outputs and caches in this folder.")
    args = ap.parse_args(argv)

    import render_overlay

    from solardesk.core.raster import describe

    base = args.data_dir / "southtyrol-bz2023-roof-solar" / "derived"
    mosaics = sorted((base / "geotiff").glob("mosaic4x4_*.tif"))
    if not mosaics:
        print(f"no mosaic4x4_*.tif under {base / 'geotiff'}")
        return 1
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eval_detect_"))
    work.mkdir(parents=True, exist_ok=True)
    detectors = ["spectral"] + (["onnx"] if args.model else [])
    for raster in mosaics:
        info = describe(raster)
        truth_file = base / f"{raster.stem}_dissolved_epsg3857.geojson"
        truth = [
            g
            for g, _ in read_polygons(
                truth_file, info.crs, where=lambda p: str(p.get("class_name")).lower() == "solar"
            )
        ]
        solar_only = work / f"{raster.stem}_solar.geojson"
        solar_only.write_text(
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "crs": {"type": "name", "properties": {"name": info.crs}},
                    "features": [
                        {"type": "Feature", "properties": {}, "geometry": g.__geo_interface__}
                        for g in truth
                    ],
                }
            )
        )
        print(
            f"{raster.name}: {info.width}×{info.height} px at {info.ground_resolution_m:.3f} m, "
            f"{len(truth)} true solar polygons (dissolved)"
        )
        for det in detectors:
            out = work / f"{raster.stem}_{det}.gpkg"
            cache = work / f"{raster.stem}_{det}.cache.sqlite"
            for p in (cache, Path(f"{cache}-wal"), Path(f"{cache}-shm")):
                p.unlink(missing_ok=True)
            extra = ["--workers", str(args.workers)]
            seconds, summary = run_detect(raster, out, cache, det, args.model, extra)
            found = read_polygons(out, info.crs)
            n, p, r = scores([g for g, _ in found], truth)
            print(
                f"  {det:>8}: {seconds:5.1f} s end to end ({summary.split(' written')[0]}), "
                f"{len(found)} panels; precision {p:.2f}, recall {r:.2f} "
                f"({n} matched at IoU ≥ 0.5, default threshold)"
            )
            low = work / f"{raster.stem}_{det}_all.gpkg"
            lowest = ["--threshold", str(LOWEST[det])]
            run_detect(raster, low, cache, det, args.model, [*extra, *lowest])
            every = read_polygons(low, info.crs)
            for t in THRESHOLDS[det]:
                kept = [g for g, props in every if props["score"] >= t]
                n, p, r = scores(kept, truth)
                print(
                    f"            score ≥ {t:.2f}: {len(kept):4d} panels, precision {p:.2f}, "
                    f"recall {r:.2f}"
                )
            _, _, r_all = scores([g for g, _ in every], truth)
            print(
                f"            every stored detection (≥ {LOWEST[det]}): {len(every)}, recall "
                f"{r_all:.2f} (what a reviewer could find)"
            )
            png = (
                args.png
                if det == "spectral"
                else args.png.with_name(f"{args.png.stem}_{det}{args.png.suffix}")
            )
            png.parent.mkdir(parents=True, exist_ok=True)
            if found:
                size = ["--max-size", str(args.max_size)]
                render_overlay.main(
                    [str(raster), str(out), str(png), "--truth", str(solar_only), *size]
                )
                _recompress(png)
            else:
                print(f"  no {det} panels at the default threshold: {png.name} not drawn")
    print(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

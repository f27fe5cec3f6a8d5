"""Regenerate the demo sample scene and its truth from a fixed seed.

    python resources/sample/make_sample.py

writes, next to this script, ``sample_scene.tif`` (1024 × 1024 px at 0.15 m, 3-band uint8,
EPSG:32632 near Bolzano, JPEG-in-TIFF with internal overviews) and
``sample_scene_panels.geojson`` (one polygon per panel array, EPSG:4326). Both are synthetic:
no real imagery is redistributed. The JPEG is lossy, so the pixels differ slightly from
``generate_scene(SAMPLE_SPEC).image``; the polygons are exact.
"""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.enums import Resampling

from solardesk.synthetic import SceneSpec, generate_scene, write_scene

HERE = Path(__file__).resolve().parent
TIF = HERE / "sample_scene.tif"
GEOJSON = HERE / "sample_scene_panels.geojson"

#: Chosen by eye: dark and bright roof arrays, a ground-mounted field, a vineyard, a road with
#: markings and cars, hedges, trees and their shadows.
SAMPLE_SPEC = SceneSpec(height=1024, width=1024, gsd=0.15, crs="EPSG:32632", seed=12)


def main() -> None:
    scene = generate_scene(SAMPLE_SPEC)
    write_scene(scene, TIF, GEOJSON, compress="jpeg", blocksize=256)
    with rasterio.open(TIF, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.average)
        ds.update_tags(ns="rio_overview", resampling="average")
    kinds = [info.kind for info in scene.panel_info]
    print(
        f"{TIF.name}: {TIF.stat().st_size / 1e6:.2f} MB; {GEOJSON.name}: {len(kinds)} arrays "
        f"({kinds.count('roof')} on roofs, {kinds.count('ground')} on the ground)"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Set up .venv and run the main job on the bundled sample raster: GeoTIFF in, polygons out.
# Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
sample=resources/sample/sample_scene.tif
out=demo-out
mkdir -p "$out"
.venv/bin/solardesk info "$sample"
.venv/bin/solardesk precompute "$sample" --cache "$out/project.sqlite" --workers 2
.venv/bin/solardesk detect "$sample" --spectral --cache "$out/project.sqlite" \
    --out "$out/panels.gpkg" --overwrite
.venv/bin/solardesk detect "$sample" --spectral --cache "$out/project.sqlite" \
    --out "$out/panels.geojson" --overwrite --quiet
echo "Polygons: $out/panels.gpkg (GeoPackage) and $out/panels.geojson; open them in QGIS."

#!/usr/bin/env bash
# Set up .venv and run the main job on the bundled sample raster. Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
sample=resources/sample/sample_scene.tif
out=demo-out
mkdir -p "$out"
.venv/bin/solardesk info "$sample"
.venv/bin/solardesk tiles "$sample" --tile 512 --overlap 64 --out "$out/tiles.gpkg" --overwrite

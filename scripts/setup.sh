#!/usr/bin/env bash
# Create .venv at the repository root and install SolarDesk with everything it needs.
# Idempotent: a second run only re-checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# The stamp skips the pip resolve when pyproject.toml has not changed since the last install.
stamp=.venv/.solardesk-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch/torchvision are pinned in pyproject.toml (an unpinned torch downloads gigabytes).
    .venv/bin/python -m pip install --quiet -e '.[all,dev]'
    touch "$stamp"
fi

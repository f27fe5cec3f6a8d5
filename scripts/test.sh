#!/usr/bin/env bash
# Set up everything (system packages, .venv) and run the whole test suite plus the style and
# architecture checks. Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports pyproject.toml
.venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Install smoke test of the desktop app: build the wheel, install it into a fresh virtual
# environment, install the desktop entry and icon into a throw-away XDG data folder, and start
# the *installed* app on the bundled sample raster for a few seconds (offscreen). Fails if the
# wheel lacks a file the app needs, the entry point or desktop file is wrong, or the app posts
# an error while it opens the sample.
#
# Usage: bash packaging/install_smoke_test.sh            (from anywhere)
#   PYTHON=...      interpreter whose site-packages already hold the dependencies
#                   (default: the repository's .venv), so that nothing big is downloaded
#   KEEP=1          keep the temporary folder and print its path
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
tmp="$(mktemp -d)"
cleanup() { if [[ "${KEEP:-}" == 1 ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "build the wheel"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$tmp/dist" "$root"
wheel="$(ls "$tmp"/dist/solardesk-*.whl)"
echo "$wheel"
"$python" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["solardesk/gui/app.py", "solardesk/gui/icons/check.svg", "solardesk/gui/icons/unchecked.svg"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"missing from the wheel: {missing}")
print("the wheel holds the GUI and its icons")
EOF

step "install it into a fresh venv (dependencies borrowed from $python)"
"$python" -m venv "$tmp/venv"
deps="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
venv_site="$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Dependencies come from the existing environment; SolarDesk itself only from the wheel.
echo "$deps" > "$venv_site/_solardesk_smoke_deps.pth"
"$tmp/venv/bin/python" -m pip install --quiet --no-deps --no-index "$wheel"
# From the temporary folder: the repository's own sources must not be importable by accident.
(cd "$tmp" && "$tmp/venv/bin/python" - <<'EOF'
import pathlib, sys
import solardesk.gui.app as app
where = pathlib.Path(app.__file__).resolve()
assert "site-packages" in str(where) and "/.venv/" not in str(where).replace(sys.prefix, ""), where
print("solardesk.gui from", where)
EOF
)

step "desktop entry"
data="$tmp/xdg-data"
mkdir -p "$data/applications" "$data/icons/hicolor/scalable/apps"
install -m 644 "$root/packaging/solardesk.desktop" "$data/applications/solardesk.desktop"
install -m 644 "$root/packaging/solardesk.svg" "$data/icons/hicolor/scalable/apps/solardesk.svg"
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$data/applications/solardesk.desktop"
  echo "desktop-file-validate: ok"
else
  echo "desktop-file-validate not installed (Debian: desktop-file-utils); skipped"
fi
exec_cmd="$(sed -n 's/^Exec=\([^ ]*\).*/\1/p' "$data/applications/solardesk.desktop")"
[[ -x "$tmp/venv/bin/$exec_cmd" ]] || { echo "Exec=$exec_cmd is not installed by the wheel"; exit 1; }

step "the installed command"
PATH="$tmp/venv/bin:$PATH"
(cd "$tmp" && solardesk gui --help >/dev/null)
echo "solardesk gui --help: ok"

step "start the installed app on the sample raster (offscreen, 4 s)"
sample="$root/resources/sample/sample_scene.tif"
(cd "$tmp" && QT_QPA_PLATFORM=offscreen XDG_DATA_HOME="$data" XDG_CONFIG_HOME="$tmp/config" \
  HOME="$tmp" SOLARDESK_GUI_EXIT_AFTER=4 timeout 120 solardesk gui "$sample")
echo "the app opened $sample and closed without an error"
echo
echo "install smoke test passed"

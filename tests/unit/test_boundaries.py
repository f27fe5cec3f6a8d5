"""The core stays free of Qt, torch and onnxruntime (DESIGN.md §3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_core_imports_no_heavy_runtime() -> None:
    code = (
        "import sys, solardesk, solardesk.cli, solardesk.config, solardesk.errors, "
        "solardesk.plugin_api, solardesk.synthetic\n"
        "import solardesk.core.raster, solardesk.core.tiling, solardesk.core.aoi\n"
        "import pkgutil, importlib, solardesk.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('solardesk.core.' + m.name)\n"
        "from solardesk.plugin_api import get_plugin_manager\n"
        "get_plugin_manager()\n"
        "bad = [m for m in ('PySide6', 'torch', 'onnxruntime', 'torchvision') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core pulled in: {out.stdout.strip()}"


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(exe), "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken" in out.stdout

"""The command line: help text for every command, and clean errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from solardesk import __version__
from solardesk.cli import _add_plugin_commands, cli
from tests.conftest import write_damaged_inside, write_raster


def run(*args: str) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "solardesk", *args], capture_output=True, text=True, check=False
    )


def all_commands():
    _add_plugin_commands()

    def walk(group: click.Group, prefix: tuple[str, ...]):
        for name, cmd in group.commands.items():
            yield (*prefix, name), cmd
            if isinstance(cmd, click.Group):
                yield from walk(cmd, (*prefix, name))

    return list(walk(cli, ()))


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    cmd = dict(all_commands())[path]
    assert cmd.help and len(cmd.help.strip()) > 20, f"{' '.join(path)} has no real help text"
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name not in ("help",):
            assert param.help, f"option {param.opts} of {' '.join(path)} has no help"


def test_info_json(rgb_tif: Path) -> None:
    out = run("info", str(rgb_tif), "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["crs"] == "EPSG:32632" and facts["width"] == 300
    assert facts["ground_resolution_m"] == pytest.approx(0.2, rel=3e-3)


def test_info_text(rgb_tif: Path) -> None:
    out = run("info", str(rgb_tif))
    assert out.returncode == 0
    assert "ground resolution" in out.stdout and "EPSG:32632" in out.stdout


def test_info_of_a_folder_lists_each_raster_and_what_they_share(tmp_path: Path) -> None:
    """A delivery checked before a run: one line per image, then its CRSs and resolutions
    (a UTM scene among Web Mercator ones stands out)."""
    from affine import Affine

    d = tmp_path / "delivery"
    d.mkdir()
    write_raster(d / "a.tif", np.zeros((3, 40, 50), np.uint8))
    write_raster(
        d / "b.tif",
        np.zeros((1, 30, 30), np.uint16),
        crs="EPSG:3857",
        transform=Affine(0.3, 0, 1248532.0, 0, -0.3, 5819737.0),
    )
    (d / "b.tfw").write_text("0.3\n0\n0\n-0.3\n1248532.15\n5819736.85\n")
    out = run("info", str(d))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["file", "size", "(px)", "bands", "type", "CRS", "m/px"]
    assert lines[1].split()[:7] == ["a.tif", "50", "×", "40", "3", "uint8", "EPSG:32632"]
    assert lines[2].split()[:7] == ["b.tif", "30", "×", "30", "1", "uint16", "EPSG:3857"]
    assert lines[3].startswith("2 rasters; CRS EPSG:32632, EPSG:3857; ground resolution 0.")
    listed = json.loads(run("info", str(d / "a.tif"), str(d / "b.tif"), "--json").stdout)
    assert [Path(f["path"]).name for f in listed] == ["a.tif", "b.tif"]
    # A quoted pattern, as a shell that does not expand it passes it on; ** at any depth.
    (d / "later").mkdir()
    write_raster(d / "later" / "c.tif", np.zeros((3, 20, 20), np.uint8))
    out = run("info", str(tmp_path / "**" / "*.tif"), "--json")
    assert out.returncode == 0, out.stderr
    assert [Path(f["path"]).name for f in json.loads(out.stdout)] == ["a.tif", "b.tif", "c.tif"]


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty.tif").write_bytes(b"")
    (tmp / "notes.tif").write_text("hello\n" * 20)
    good = write_raster(tmp / "good.tif", np.zeros((3, 300, 300), np.uint8))
    tiny = write_raster(tmp / "tiny.tif", np.zeros((3, 16, 300), np.uint8))  # under any tile
    far = tmp / "far.geojson"
    far.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]],
                        },
                    }
                ],
            }
        )
    )
    nocrs = write_raster(tmp / "nocrs.tif", np.zeros((3, 300, 300), np.uint8), crs=None)
    bad = write_damaged_inside(tmp)  # opens; its middle blocks cannot be read
    cache = tmp / "c.sqlite"
    return [
        (["info", str(bad)], "bad.tif: reading window"),
        (["precompute", str(bad), "--cache", str(cache)], "the file is damaged. Copy or download"),
        (["cache", "stats", str(cache), "--threshold", "nan"], "must be a number from 0 to 1"),
        (["cache", "export-coco", str(cache), str(tmp / "x.json"), "--threshold", "1.5"], "1.5"),
        (["detect", str(good), "--spectral", "--threshold", "-0.1"], "'--threshold': -0.1"),
        (["info", str(tmp / "missing.tif")], "missing.tif: no such file"),
        (["info", str(tmp / "empty.tif")], "empty.tif: the file is empty"),
        (["info", str(tmp / "notes.tif")], "notes.tif: cannot be read as a raster"),
        (["tiles", str(tiny), "--tile", "1024"], "tiny.tif: the raster (300×16 px) is smaller"),
        (["tiles", str(good), "--tile", "128", "--overlap", "128"], "overlap 128 must be smaller"),
        (["tiles", str(good), "--tile", "128", "--aoi", str(far)], "does not intersect"),
        (["tiles", str(nocrs), "--tile", "128", "--aoi", str(far)], "needs a georeferenced"),
        (
            ["precompute", str(good), "--cache", str(tmp / "c.sqlite"), "--workers", "0"],
            "Invalid value for '--workers': 0 is not in the range x>=1",
        ),
        (
            ["precompute", str(good), "--cache", str(tmp / "c.sqlite"), "--workers", "many"],
            "Invalid value for '--workers': 'many' is not 'auto' nor a whole number",
        ),
    ]


def test_bad_input_gives_clean_errors(tmp_path: Path) -> None:
    for args, expected in _bad_inputs(tmp_path):
        out = run(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert expected in out.stderr, (args, out.stderr)
        assert out.stderr.splitlines()[-1].startswith("Error: "), out.stderr
        assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "x.json").exists()


def test_jpeg_without_world_file_warns_cleanly(tmp_path: Path) -> None:
    p = write_raster(tmp_path / "x.jpg", np.zeros((3, 64, 64), np.uint8), crs=None, driver="JPEG")
    for aux in tmp_path.glob("*.aux.xml"):
        aux.unlink()
    out = run("info", str(p))
    assert out.returncode == 0
    assert out.stderr.startswith("Warning: ") and "world file" in out.stderr
    assert "Traceback" not in out.stderr and "warnings.warn" not in out.stderr


def test_internal_errors_hide_the_traceback_unless_debug(monkeypatch, rgb_tif: Path) -> None:
    import solardesk.core.raster as raster

    def boom(path):
        raise ZeroDivisionError("unexpected")

    monkeypatch.setattr(raster, "describe", boom)
    result = CliRunner().invoke(cli, ["info", str(rgb_tif)])
    assert result.exit_code == 3
    assert "Internal error: ZeroDivisionError" in result.output
    result = CliRunner().invoke(cli, ["--debug", "info", str(rgb_tif)])
    assert isinstance(result.exception, ZeroDivisionError)

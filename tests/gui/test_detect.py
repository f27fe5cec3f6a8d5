"""The detect & export dock against the ``solardesk detect`` command line (a fake one)."""

from __future__ import annotations

import json

import pytest

from solardesk.gui.layers import VectorLayer
from tests.gui.conftest import until, wait_raster


def _setup(qtbot, window, scene_tif, out):
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    window.show_dock("detect")
    dock = window.detect
    dock.out_edit.setText(str(out))
    return dock


def test_detect_writes_and_shows_the_panels(qtbot, window, scene_tif, tmp_path):
    out = tmp_path / "panels.gpkg"
    dock = _setup(qtbot, window, scene_tif, out)
    assert dock.detector.currentData().id == "spectral"
    assert dock.build_args() == [
        "detect",
        str(scene_tif.resolve()),
        "--spectral",
        "--out",
        str(out),
        "--tile",
        "512",
        "--overlap",
        "64",
        "--overwrite",
    ]
    assert dock.run()
    until(lambda: not dock.process.running, timeout=20000)
    until(lambda: "2 panels written" in dock.status.text(), timeout=10000)
    assert out.exists()
    layer = next(lay for lay in window.ctx.layers if isinstance(lay, VectorLayer))
    assert layer.path == out and layer.data.count == 2
    assert dock.progress.value() == dock.progress.maximum()


def test_detect_uses_the_project_cache_its_settings_and_the_layer_threshold(
    qtbot, window, scene_tif, tmp_path
):
    """Detect & export ran on a cache of its own beside the output: the review's rejections,
    acceptances and drawn panels (all in the project's cache) were not in the export, and the
    layer's threshold slider did nothing. Now it runs on the project's cache, with the
    stage's settings as pre-computed (the same keys: nothing recomputed) and the layer's
    threshold; the project's own layer shows the tiles as they come and stays."""
    from solardesk.gui.layers import PseudoLabelLayer

    out = tmp_path / "panels.gpkg"
    cache = tmp_path / "project.sqlite"
    dock = _setup(qtbot, window, scene_tif, out)
    project = window.ctx.project
    project.set_cache(cache)
    project.set_plugin_settings(
        "solardesk_spectral", {"spectral": {"threshold": 0.9, "split_candidates": False}}
    )
    (layer,) = window.open_cache(cache)
    layer.set_threshold(0.7)
    # A cache that is not there (moved): refused, not made anew at the old path by detect.
    with pytest.raises(ValueError, match=r"mask cache .* is not there"):
        dock.build_args()
    from solardesk.core.cache import MaskCache

    with MaskCache(cache):
        pass
    args = dock.build_args()
    i = args.index("--cache")
    assert args[i + 1] == str(cache)
    assert args[args.index("--threshold") + 1] == "0.7"  # the map's, not the saved 0.9
    assert "split_candidates=false" in args and not any(a.startswith("threshold=") for a in args)
    assert "--bands" not in args and "--stretch" not in args  # the project's are the defaults
    # The project's band mapping and stretch, which its pre-compute used, reach detect too.
    from solardesk.config import RasterSettings

    project.set_raster_settings(RasterSettings(bands=(3, 2, 1), stretch_high=99.5))
    args = dock.build_args()
    assert args[args.index("--bands") + 1] == "3,2,1"
    assert args[args.index("--stretch") + 1] == "2,99.5"
    project.set_raster_settings(RasterSettings())
    assert dock.run()
    until(lambda: not dock.process.running, timeout=20000)
    until(lambda: "panels written" in dock.status.text(), timeout=10000)
    pseudo = [lay for lay in window.ctx.layers if isinstance(lay, PseudoLabelLayer)]
    assert pseudo == [layer] and not layer.name.startswith("Detecting")


def test_visible_extent_shapefile_and_model(qtbot, window, scene_tif, tmp_path):
    out = tmp_path / "panels.gpkg"
    dock = _setup(qtbot, window, scene_tif, out)
    window.ctx.project.add_model(tmp_path / "model.onnx")
    dock.detector.setCurrentIndex(dock.detector.findText("ONNX model  [fake]"))
    dock.model_combo.setCurrentIndex(0)
    dock.format_combo.setCurrentIndex(dock.format_combo.findData(".shp"))
    assert dock.out_edit.text().endswith("panels.shp")
    dock.extent_view.setChecked(True)
    view = window.map_view
    view.zoom_by(3.0)
    args = dock.build_args()
    assert args[2:4] == ["--model", str((tmp_path / "model.onnx").resolve())]
    assert "--aoi" in args
    assert "--tile" not in args and "--overlap" not in args  # the model's own tiling
    assert dock.run()
    until(lambda: not dock.process.running, timeout=20000)
    record = json.loads((tmp_path / "panels.shp.args.json").read_text())
    minx, _miny, _maxx, maxy = record["aoi_bounds"]
    vminx, _vminy, _vmaxx, vmaxy = view.visible_extent()
    assert abs(minx - vminx) < 1e-3 and abs(maxy - vmaxy) < 1e-3
    until(lambda: (tmp_path / "panels.shp").exists(), timeout=5000)


def test_failing_detect_is_reported(qtbot, window, scene_tif, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DETECT_FAIL", "1")
    dock = _setup(qtbot, window, scene_tif, tmp_path / "x.gpkg")
    dock.run()
    until(lambda: not dock.process.running, timeout=20000)
    assert dock.status.text().startswith("Detection failed")
    err = window.ctx.notifications.errors()[-1]
    assert "exit code 2" in err.message and "no SolarDesk metadata" in err.details


def test_detections_appear_on_the_map_while_the_command_runs(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    from solardesk.gui.layers import PseudoLabelLayer

    monkeypatch.setenv("FAKE_DETECT_SLEEP", "0.25")  # ten tiles over 2.5 s
    out = tmp_path / "live.gpkg"
    dock = _setup(qtbot, window, scene_tif, out)
    assert dock.run()
    live = dock.live
    assert isinstance(live, PseudoLabelLayer) and live in window.ctx.layers.layers
    assert live.name.startswith("Detecting")
    # Tiles show up before the command has finished.
    until(lambda: len(live.records) >= 2, timeout=20000)
    assert dock.process.running
    until(lambda: not dock.process.running, timeout=20000)
    until(lambda: "2 panels written" in dock.status.text(), timeout=10000)
    # The running layer gave way to the output.
    assert dock.live is None and live not in window.ctx.layers.layers
    assert any(isinstance(lay, VectorLayer) and lay.path == out for lay in window.ctx.layers)


def test_all_rasters_of_a_project_are_detected_in_one_run(qtbot, window, scene_dir, tmp_path):
    """A project of several rasters (a folder) offers them all at once, first; the command
    gets every raster, and the project cache's layers of all of them are refreshed."""
    import shutil

    from solardesk.core.cache import MaskCache

    d = tmp_path / "area"
    d.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(scene_dir / "scene.tif", d / name)
    cache = tmp_path / "project.sqlite"
    MaskCache(cache).close()
    window.open_paths([d, cache])
    until(lambda: len(window.ctx.layers.of_kind("pseudo")) == 2, timeout=10000)
    wait_raster(qtbot, window)
    window.show_dock("detect")
    dock = window.detect
    out = tmp_path / "panels.gpkg"
    dock.out_edit.setText(str(out))
    assert dock.raster.itemText(0) == "All 2 rasters of the project"
    assert dock.raster.currentIndex() == 0
    rasters = [str((d / n).resolve()) for n in ("a.tif", "b.tif")]
    args = dock.build_args()
    assert args[:4] == ["detect", *rasters, "--spectral"]
    assert args[args.index("--cache") + 1] == str(cache.resolve())
    refreshed = []
    for layer in window.ctx.layers.of_kind("pseudo"):
        layer.refresh = lambda full=False, name=layer.raster.path.name: refreshed.append(name)
    assert dock.run()
    until(lambda: not dock.process.running, timeout=20000)
    record = json.loads((tmp_path / "panels.gpkg.args.json").read_text())
    assert record["rasters"] == rasters
    until(lambda: {"a.tif", "b.tif"} <= set(refreshed), timeout=5000)
    # One raster still can be chosen alone.
    dock.raster.setCurrentIndex(2)
    assert dock.build_args()[:3] == ["detect", rasters[1], "--spectral"]

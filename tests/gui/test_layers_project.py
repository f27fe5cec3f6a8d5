"""Layers panel (visibility, opacity, order, threshold), vector layers, the project file,
recent projects and window state."""

from __future__ import annotations

import json
import os

import pytest
from PySide6.QtCore import Qt

from solardesk.gui.layers import PseudoLabelLayer, RasterLayer, VectorLayer
from solardesk.gui.map_view import VectorRenderer
from tests.gui.conftest import pause, until, wait_raster


def _add_all(qtbot, window, scene_dir, tmp_path):
    window.open_path(scene_dir / "scene.tif")
    wait_raster(qtbot, window)
    vec = window.add_vector(scene_dir / "truth.geojson")
    until(lambda: vec.data is not None, timeout=10000)
    window.ctx.project.set_cache(tmp_path / "c.sqlite")
    (pseudo,) = window.open_cache(tmp_path / "c.sqlite")
    return vec, pseudo


def test_vector_layer_is_reprojected_and_drawn(qtbot, window, scene_dir, tmp_path):
    vec, _ = _add_all(qtbot, window, scene_dir, tmp_path)
    # truth.geojson is WGS84; the map is in UTM 32N (the raster's CRS).
    assert vec.data.count == 5
    raster = window.ctx.layers.of_kind("raster")[0]
    rminx, rminy, rmaxx, rmaxy = raster.extent()
    minx, miny, maxx, maxy = vec.extent()
    assert rminx <= minx < maxx <= rmaxx and rminy <= miny < maxy <= rmaxy
    renderer = window.map_view.renderers[vec]
    assert isinstance(renderer, VectorRenderer)
    until(lambda: len(renderer.items) >= 1, timeout=5000)
    assert renderer.items[0].path().elementCount() > 5 * 4


def test_panel_controls_visibility_opacity_order_threshold(qtbot, window, scene_dir, tmp_path):
    vec, pseudo = _add_all(qtbot, window, scene_dir, tmp_path)
    panel = window.layers_panel
    layers = window.ctx.layers
    assert [lay.kind for lay in layers] == ["vector", "pseudo", "raster"]
    view = window.map_view
    z = {lay: view.renderers[lay].root.zValue() for lay in layers}
    assert z[vec] > z[pseudo] > z[layers.layers[2]]

    item = panel._item_of(vec)
    item.setCheckState(Qt.CheckState.Unchecked)
    assert not vec.visible and not view.renderers[vec].root.isVisible()
    panel.select(vec)
    panel.opacity.setValue(40)
    assert abs(view.renderers[vec].root.opacity() - 0.4) < 1e-6

    panel.select(vec)
    panel.down.click()
    assert layers.layers.index(vec) == 1
    assert view.renderers[vec].root.zValue() < view.renderers[pseudo].root.zValue()

    panel.select(pseudo)
    assert panel.pseudo_box.isVisibleTo(panel)
    panel.threshold.setValue(70)
    assert abs(pseudo.threshold - 0.70) < 1e-9
    assert "0.70" in panel.threshold_label.text()


def test_project_round_trip_and_recent(qtbot, make_window, app_settings, scene_dir, tmp_path):
    window = make_window()
    vec, pseudo = _add_all(qtbot, window, scene_dir, tmp_path)
    pseudo.set_threshold(0.7)
    vec.set_opacity(0.5)
    project_file = tmp_path / "proj" / "my.json"
    project_file.parent.mkdir()
    assert window._save(project_file)
    data = json.loads(project_file.read_text())
    # Paths are relative to the project folder; the app's own state sits in plugins.gui.
    assert data["rasters"] == [os.path.relpath(scene_dir / "scene.tif", project_file.parent)]
    assert data["cache"] == "../c.sqlite"
    gui = data["plugins"]["gui"]
    rel = os.path.relpath(scene_dir / "truth.geojson", project_file.parent)
    assert gui["vectors"] == [rel]
    assert gui["layers"][pseudo.key]["threshold"] == 0.7
    assert app_settings.recent_projects()[0] == project_file.resolve()
    window.close()
    assert app_settings.window_geometry() is not None and app_settings.window_state() is not None

    other = make_window()
    assert other.open_path(project_file)
    wait_raster(qtbot, other)
    kinds = [lay.kind for lay in other.ctx.layers]
    assert sorted(kinds) == ["pseudo", "raster", "vector"]
    p2 = next(lay for lay in other.ctx.layers if isinstance(lay, PseudoLabelLayer))
    v2 = next(lay for lay in other.ctx.layers if isinstance(lay, VectorLayer))
    assert p2.threshold == 0.7 and v2.opacity == 0.5
    assert not other.ctx.project.dirty
    assert other.windowTitle().startswith("my[*]") or "my" in other.windowTitle()


def test_a_project_whose_cache_moved_says_so_and_makes_no_new_one(
    qtbot, make_window, scene_dir, tmp_path
):
    """It opened empty without a word ("0 candidates"), and the first drawn panel or decision
    created a new, empty cache at the old path."""
    window = make_window()
    _add_all(qtbot, window, scene_dir, tmp_path)
    project_file = tmp_path / "proj" / "my.json"
    project_file.parent.mkdir()
    assert window._save(project_file)
    window.close()
    cache = tmp_path / "c.sqlite"
    from solardesk.core.cache import MaskCache

    with MaskCache(cache):  # the project's cache, made by a pre-compute
        pass
    cache.rename(tmp_path / "moved.sqlite")

    other = make_window()
    assert other.open_path(project_file)
    wait_raster(qtbot, other)
    (warning,) = [n for n in other.ctx.notifications.items if n.source == "Project"]
    assert str(cache) in warning.message and "Open mask cache" in warning.message
    # An edit is refused, clearly, rather than written into a new cache at the old path.
    from solardesk.errors import CacheError
    from solardesk.gui import _io

    with pytest.raises(CacheError, match="the mask cache is not there"):
        _io.set_review(cache, [1], "accepted")
    with pytest.raises(CacheError, match="the mask cache is not there"):
        _io.delete_instances(cache, [1])
    assert not cache.exists()


def test_raster_in_another_crs_is_warped_into_the_map_crs(qtbot, window, scene_tif, tmp_path):
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject

    other = tmp_path / "scene_3857.tif"
    with rasterio.open(scene_tif) as src:
        t, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        profile = src.profile | {"crs": "EPSG:3857", "transform": t, "width": w, "height": h}
        with rasterio.open(other, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b))
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    window.add_raster(other)
    wait_raster(qtbot, window)
    layers = window.ctx.layers.of_kind("raster")
    warped = next(lay for lay in layers if lay.path == other)
    assert isinstance(warped, RasterLayer) and warped.source.warped
    a, b = layers[0].extent(), layers[1].extent()
    # Same place in the same CRS: the centres agree to a pixel or so, the warped extent is a
    # little larger (a 3857 rectangle is not a UTM rectangle).
    assert abs((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) < 0.5
    assert abs((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) < 0.5
    assert abs((a[2] - a[0]) - (b[2] - b[0])) < 0.1 * (a[2] - a[0])


def test_the_panel_counts_an_object_in_the_overlap_of_tiles_once(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    """The records hold one instance per tile, so an object in the overlap of two tiles is a
    pseudo-label of each; the panel also shows the objects, counted by the cache on a worker,
    and counts again when the threshold moves. A count that fails shows no figure (and is not
    retried in a loop)."""
    import numpy as np

    from solardesk.core.cache import Instance, MaskCache, TileKey, hash_params

    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    fp = window.ctx.layers.of_kind("raster")[0].source.info.fingerprint

    def square(x0: int, conf: float) -> Instance:
        return Instance(bbox=(x0, 10, x0 + 10, 20), mask=np.ones((10, 10), bool), confidence=conf)

    params = hash_params({"threshold": 0.5})
    with MaskCache(tmp_path / "c.sqlite") as cache:
        # left (0-64) and right (48-112) share columns 48-64: the square at 50 is one object
        cache.write_tile(
            TileKey(fp, "left", "spectral", 1, params),
            (0, 0, 64, 48),
            [square(50, 0.9), square(10, 0.95)],
        )
        cache.write_tile(
            TileKey(fp, "right", "spectral", 1, params),
            (48, 0, 64, 48),
            [square(2, 0.9), square(30, 0.6)],
        )
    window.ctx.project.set_cache(tmp_path / "c.sqlite")
    (pseudo,) = window.open_cache(tmp_path / "c.sqlite")
    panel = window.layers_panel
    panel.select(pseudo)
    until(lambda: "3 pseudo-labels (≥ 0.85) · 2 objects" in panel.counts.text(), timeout=10000)
    assert "4 candidates in 2 tiles" in panel.counts.text()
    pseudo.set_threshold(0.5)
    until(lambda: "4 pseudo-labels (≥ 0.50) · 3 objects" in panel.counts.text(), timeout=10000)
    pseudo.set_threshold(0.95)
    until(lambda: "1 pseudo-label (≥ 0.95) · 1 object\n" in panel.counts.text(), timeout=10000)
    pseudo.set_threshold(0.99)
    until(lambda: "0 pseudo-labels (≥ 0.99)\n" in panel.counts.text(), timeout=10000)

    from solardesk.errors import CacheError
    from solardesk.gui import _io

    calls = []

    def broken(*args):
        calls.append(args)
        raise CacheError("the cache is locked")

    monkeypatch.setattr(_io, "count_objects", broken)
    pseudo.set_threshold(0.5)
    until(lambda: calls and "4 pseudo-labels (≥ 0.50)\n" in panel.counts.text(), timeout=10000)
    pause(2000)  # longer than the count's wait: no second try
    assert len(calls) == 1 and "object" not in panel.counts.text()

"""A pseudo-label layer's reads of the cache: asked for again while one runs, none is lost,
and none is drawn with a raster's earlier placement."""

from __future__ import annotations

import time

import numpy as np
import rasterio
from rasterio.warp import calculate_default_transform, reproject

from solardesk.core.cache import Instance, MaskCache, TileKey
from solardesk.core.raster import describe
from solardesk.gui import _io
from tests.gui.conftest import pause, until, wait_raster


def _reprojected(src_path, out, crs):
    with rasterio.open(src_path) as src:
        t, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": crs, "transform": t, "width": w, "height": h}
        with rasterio.open(out, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b))
    return out


def _cache_for(raster, path, n_tiles=4, params="p", confidence=0.9):
    info = describe(raster)
    with MaskCache(path) as c:
        c.put_raster_info(info)
        for k in range(n_tiles):
            insts = [
                Instance(
                    bbox=(10 + 45 * i, 100, 40 + 45 * i, 120),
                    mask=np.ones((20, 30), bool),
                    confidence=confidence,
                )
                for i in range(5)
            ]
            key = TileKey(info.fingerprint, f"c{k * 128}_r0_256x256", "fake", "1", params)
            c.write_tile(key, (k * 128, 0, 256, 256), insts)
    return path


def _slow_reads(monkeypatch, delay):
    real = _io.load_tiles

    def slow(*a, **k):
        time.sleep(delay)  # a large cache: a read takes a while
        return real(*a, **k)

    monkeypatch.setattr(_io, "load_tiles", slow)


def _slow_to_open(monkeypatch, raster, delay):
    """``raster`` takes ``delay`` s to open in its own CRS (a large raster's thumbnail)."""
    real = _io.open_source

    def slow(path, map_crs_wkt):
        if str(path) == str(raster) and map_crs_wkt is None:
            time.sleep(delay)
        return real(path, map_crs_wkt)

    monkeypatch.setattr(_io, "open_source", slow)


def test_labels_of_a_raster_in_another_crs_land_on_it(qtbot, window, scene_tif, tmp_path):
    """Read with the raster's first (unwarped) placement, then re-read when it was warped to
    the map's CRS: the second read was dropped (a read already ran), and the outlines sat
    hundreds of km away."""
    other = _reprojected(scene_tif, tmp_path / "scene_32633.tif", "EPSG:32633")
    cache = _cache_for(other, tmp_path / "c.sqlite", 60)
    window.open_path(scene_tif)  # the map's CRS: 32632
    window.add_raster(other)
    window.open_cache(cache)
    rasters = window.ctx.layers.of_kind("raster")
    until(lambda: all(lay.source is not None for lay in rasters), timeout=20000)
    b = next(lay for lay in rasters if lay.path.name == "scene_32633.tif")
    until(lambda: b.source.warped, timeout=20000)
    layer = next(lay for lay in window.ctx.layers.of_kind("pseudo") if lay.raster is b)
    until(lambda: len(layer.records) == 300 and layer._job is None, timeout=20000)
    pause(500)
    # On it (its tiles reach 1.5 km east of it, over a turned grid), not 460 km west of it.
    x0, y0, x1, y1 = b.extent()
    for rec in layer.records.values():
        assert x0 - 50 <= rec.bounds[0] <= x1 + 2000 and y0 - 100 <= rec.bounds[1] <= y1 + 100


def test_a_full_read_asked_during_a_poll_is_done(qtbot, window, scene_tif, tmp_path, monkeypatch):
    """The pre-compute's end asks for a full read (rows chosen again are older than what the
    layer read); a poll in flight swallowed it."""
    cache = _cache_for(scene_tif, tmp_path / "c.sqlite")
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    (layer,) = window.open_cache(cache)
    until(lambda: len(layer.records) == 20 and layer._job is None, timeout=10000)
    info = describe(scene_tif)
    with MaskCache(cache) as c:  # another parameter set for tile 0, then the first again
        c.write_tile(
            TileKey(info.fingerprint, "c0_r0_256x256", "fake", "1", "q"),
            (0, 0, 256, 256),
            [Instance(bbox=(50, 50, 90, 90), mask=np.ones((40, 40), bool), confidence=0.5)],
        )
    layer.refresh()
    until(lambda: layer._job is None, timeout=10000)
    assert any(r.confidence == 0.5 for r in layer.records.values())
    with MaskCache(cache) as c:
        c.choose(info.fingerprint, "fake", "1", "p", ["c0_r0_256x256"])
    _slow_reads(monkeypatch, 0.5)
    layer.refresh()  # a poll, in flight
    layer.refresh(full=True)  # the job ended: read everything again
    until(lambda: layer._job is None and not layer._again_full, timeout=10000)
    pause(300)
    with MaskCache(cache, readonly=True) as c:
        in_cache = sorted(round(i.confidence, 2) for _, i in c.iter_instances())
    assert sorted(round(r.confidence, 2) for r in layer.records.values()) == in_cache


def test_tiles_of_two_edits_during_one_read_are_both_read(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    cache = _cache_for(scene_tif, tmp_path / "c.sqlite")
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    (layer,) = window.open_cache(cache)
    until(lambda: len(layer.records) == 20 and layer._job is None, timeout=10000)
    asked = []
    real = _io.load_tiles

    def spy(path, fp, placement, since, tile_ids):
        asked.append(tile_ids)
        time.sleep(0.3)
        return real(path, fp, placement, since, tile_ids)

    monkeypatch.setattr(_io, "load_tiles", spy)
    layer.refresh()  # a poll, in flight
    layer.refresh(tile_ids=["c0_r0_256x256"])  # a decision in tile 0
    layer.refresh(tile_ids=["c128_r0_256x256"])  # and one in tile 1
    layer.refresh()  # the pre-compute's next poll
    until(lambda: layer._job is None and len(asked) >= 3, timeout=10000)
    pause(700)
    assert asked[1] == ["c0_r0_256x256", "c128_r0_256x256"] and asked[2] is None


def test_the_map_takes_the_first_raster_s_crs_whichever_opens_first(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    """ADR 0023: the map's CRS is the first raster's. It was the CRS of whichever raster
    finished opening first: reopening a project gave another CRS from time to time. The first
    raster opens slowly here; a first raster that cannot be opened hands the choice on."""
    from pyproj import CRS

    other = _reprojected(scene_tif, tmp_path / "scene_32633.tif", "EPSG:32633")
    _slow_to_open(monkeypatch, scene_tif, 0.8)
    window.open_path(scene_tif)
    window.add_raster(other)
    rasters = window.ctx.layers.of_kind("raster")
    until(lambda: all(lay.source is not None for lay in rasters), timeout=20000)
    until(lambda: window.ctx.layers.crs_known, timeout=20000)
    pause(1000)
    assert CRS.from_wkt(window.ctx.layers.crs_wkt).to_epsg() == 32632
    b = next(lay for lay in rasters if lay.path.name == "scene_32633.tif")
    until(lambda: b.source.warped, timeout=20000)

    missing = tmp_path / "gone.tif"
    window.ctx.layers.clear()
    window.ctx.layers.add_raster(missing)  # cannot be opened
    window.ctx.layers.add_raster(other)
    until(lambda: window.ctx.layers.crs_known, timeout=20000)
    assert CRS.from_wkt(window.ctx.layers.crs_wkt).to_epsg() == 32633


def test_a_raster_that_opens_before_the_first_is_shown_in_the_first_s_crs(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    """The second raster opened first, waited for the first to set the CRS, but the view was
    framed in its own coordinates meanwhile (degrees here): the map showed nothing."""
    other = _reprojected(scene_tif, tmp_path / "scene_4326.tif", "EPSG:4326")
    _slow_to_open(monkeypatch, scene_tif, 0.8)
    window.open_path(scene_tif)
    window.add_raster(other)
    rasters = window.ctx.layers.of_kind("raster")
    until(lambda: window.ctx.layers.crs_known, timeout=20000)
    b = next(lay for lay in rasters if lay.path.name == "scene_4326.tif")
    until(lambda: b.source is not None and b.source.warped, timeout=20000)
    pause(500)
    a = next(lay for lay in rasters if lay is not b)
    view = window.map_view
    ax0, ay0, ax1, ay1 = a.extent()
    vx0, vy0, vx1, vy1 = view.visible_extent()
    assert vx0 < ax1 and ax0 < vx1 and vy0 < ay1 and ay0 < vy1, (
        "the view shows nothing of the rasters"
    )


def test_labels_opened_while_the_first_raster_still_opens_land_on_theirs(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    """A layer of labels opened while the first raster was still opening was read with its
    raster's own placement and never read again once that raster was warped."""
    other = _reprojected(scene_tif, tmp_path / "scene_32633.tif", "EPSG:32633")
    cache = _cache_for(other, tmp_path / "c.sqlite", 4)
    _slow_to_open(monkeypatch, scene_tif, 3.0)
    window.open_path(scene_tif)
    window.add_raster(other)
    rasters = window.ctx.layers.of_kind("raster")
    b = next(lay for lay in rasters if lay.path.name == "scene_32633.tif")
    pause(300)
    assert not window.ctx.layers.crs_known  # A is still opening
    window.open_cache(cache)
    layer = next(lay for lay in window.ctx.layers.of_kind("pseudo") if lay.raster is b)
    until(lambda: b.source is not None and b.source.warped, timeout=20000)
    until(lambda: layer._job is None, timeout=20000)
    pause(1500)
    x0, y0, x1, y1 = b.extent()
    for rec in layer.records.values():
        assert x0 - 50 <= rec.bounds[0] <= x1 + 2000 and y0 - 100 <= rec.bounds[1] <= y1 + 100

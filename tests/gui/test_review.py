"""The review dock: the queue in uncertainty order, accept/reject by key and by click,
delete, draw a polygon, split an instance; every change lands in the cache."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from solardesk.core.cache import Instance, MaskCache, TileKey
from solardesk.core.raster import describe
from solardesk.gui._io import split_mask
from tests.gui.conftest import pause, until, wait_raster

#: Confidences of the five instances written by ``cache``; the threshold is 0.6.
CONFIDENCES = [0.40, 0.55, 0.62, 0.81, 0.95]
EXPECTED_ORDER = [2, 1, 0, 3, 4]  # |c - 0.6|: 0.02, 0.05, 0.20, 0.21, 0.35


@pytest.fixture
def cache(scene_tif, tmp_path):
    """A cache with one 256-px tile at (128, 128) holding five 30×20 px rectangles."""
    info = describe(scene_tif)
    path = tmp_path / "review.sqlite"
    instances = []
    for i, c in enumerate(CONFIDENCES):
        mask = np.ones((20, 30), bool)
        x0, y0 = 10 + 45 * i, 100
        instances.append(Instance(bbox=(x0, y0, x0 + 30, y0 + 20), mask=mask, confidence=c))
    with MaskCache(path) as c:
        c.put_raster_info(info)
        c.write_tile(
            TileKey(info.fingerprint, "c128_r128_256x256", "fake", "1", "p"),
            (128, 128, 256, 256),
            instances,
        )
        ids = [i.id for _, i in c.iter_instances()]
    return path, ids


def _open(qtbot, window, scene_tif, cache_path, n: int = 5):
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    (layer,) = window.open_cache(cache_path)
    layer.set_threshold(0.6)
    until(lambda: len(layer.records) == n, timeout=10000)
    window.show_dock("review")
    dock = window.review
    until(lambda: len(dock.model.ids) == n, timeout=5000)
    return layer, dock


def _review(path, iid):
    with MaskCache(path, readonly=True) as c:
        return c.get_instance(iid)[1]


def test_queue_is_ordered_by_uncertainty(qtbot, window, scene_tif, cache):
    path, ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    assert dock.model.ids == [ids[i] for i in EXPECTED_ORDER]
    assert dock.current_id == ids[2]  # the most uncertain is shown first
    assert dock.model.data(dock.model.index(0, 2)) == "+0.020"
    # The selection is drawn on the map, while its layer is shown.
    assert not window.map_view.selection_item.path().isEmpty()
    layer.set_visible(False)
    assert window.map_view.selection_item.path().isEmpty()
    layer.set_visible(True)
    assert not window.map_view.selection_item.path().isEmpty()


def test_accept_reject_by_key_and_button_go_to_the_cache(qtbot, window, scene_tif, cache):
    path, ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    first, second = ids[2], ids[1]
    window.map_view.setFocus()
    QTest.keyClick(window, Qt.Key.Key_A)
    until(lambda: _review(path, first).review == "accepted", timeout=5000)
    until(lambda: layer.records[first].review == "accepted", timeout=5000)
    # Accepted instances leave the pending queue; the next most uncertain is current.
    until(lambda: dock.current_id == second, timeout=5000)
    assert first not in dock.model.ids
    QTest.keyClick(window, Qt.Key.Key_R)
    until(lambda: _review(path, second).review == "rejected", timeout=5000)
    until(lambda: dock.current_id == ids[0], timeout=5000)
    dock.reject_btn.click()
    until(lambda: _review(path, ids[0]).review == "rejected", timeout=5000)
    with MaskCache(path, readonly=True) as c:
        st = c.stats(threshold=0.6)
    assert st["by_review"] == {"pending": 2, "accepted": 1, "rejected": 2}
    # "Pending only" off shows the reviewed ones again, with their state.
    dock.pending_only.setChecked(False)
    assert len(dock.model.ids) == 5


def test_closing_the_window_writes_the_queued_decisions(
    qtbot, window, scene_tif, cache, monkeypatch
):
    """Decisions made faster than the cache takes them wait in the edits queue; closing the
    window writes them all, in order (before, the queue was dropped on close)."""
    import time

    from solardesk.gui import _io

    path, ids = cache
    _layer, dock = _open(qtbot, window, scene_tif, path)
    set_review = _io.set_review

    def slow_set_review(*args, **kwargs):
        time.sleep(0.3)
        return set_review(*args, **kwargs)

    monkeypatch.setattr(_io, "set_review", slow_set_review)
    decisions = {ids[2]: "accepted", ids[1]: "rejected", ids[0]: "accepted", ids[4]: "rejected"}
    for iid, state in decisions.items():
        dock.current_id = iid
        dock.review(state)
    # The wait (4 × 0.3 s) is said, counted down, in a dialog: seen from a timer.
    shown = []

    def look() -> None:
        from PySide6.QtWidgets import QProgressDialog

        shown.extend(d.labelText() for d in window.findChildren(QProgressDialog) if d.isVisible())

    from PySide6.QtCore import QTimer

    for ms in (700, 1000):
        QTimer.singleShot(ms, look)
    window.close()
    for iid, state in decisions.items():
        assert _review(path, iid).review == state
    assert _review(path, ids[3]).review == "pending"
    assert shown, "no dialog said what the closing window waited for"
    assert all(re.fullmatch(r"Writing [1-4] review edits? to the project cache…", t) for t in shown)


def _copy_in_the_tile_beside(path) -> int:
    """Write a second tile (from column 192) that holds the third rectangle again (raster
    columns 228-258, rows 228-248); returns the copy's id."""
    with MaskCache(path) as c:
        (fp,) = {t.raster_fp for t in c.iter_tiles()}
        copy = Instance(bbox=(36, 100, 66, 120), mask=np.ones((20, 30), bool), confidence=0.62)
        c.write_tile(
            TileKey(fp, "c192_r128_256x256", "fake", "1", "p"), (192, 128, 256, 256), [copy]
        )
        (copy_id,) = [i.id for i in c.read_tile(fp, "c192_r128_256x256")]
    return copy_id


def test_a_decision_reaches_the_copy_in_the_overlapping_tile(qtbot, window, scene_tif, cache):
    """The tile beside the first overlaps it and holds the most uncertain rectangle again:
    accepting it once accepts both copies, in the cache, on the map and in the queue."""
    path, ids = cache
    copy_id = _copy_in_the_tile_beside(path)
    layer, dock = _open(qtbot, window, scene_tif, path, n=6)
    assert dock.current_id == ids[2]
    dock.accept_btn.click()
    until(lambda: _review(path, copy_id).review == "accepted", timeout=5000)
    assert _review(path, ids[2]).review == "accepted"
    until(lambda: layer.records[copy_id].review == "accepted", timeout=5000)
    until(lambda: len(dock.model.ids) == 4, timeout=5000)
    assert copy_id not in dock.model.ids and ids[2] not in dock.model.ids
    assert "and its copy in the overlapping tile: accepted" in dock.status.text()


def test_click_on_the_map_selects_and_delete_removes(qtbot, window, scene_tif, cache):
    path, ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    view = window.map_view
    target = layer.records[ids[4]]
    minx, miny, maxx, maxy = target.bounds
    view.show_bounds(target.bounds)
    pause(50)
    scene_pt = view.frame.to_scene((minx + maxx) / 2, (miny + maxy) / 2)
    pos = view.mapFromScene(scene_pt)
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    until(lambda: dock.current_id == ids[4], timeout=3000)
    QTest.keyClick(window, Qt.Key.Key_Delete)
    until(lambda: ids[4] not in layer.records, timeout=5000)
    with MaskCache(path, readonly=True) as c, pytest.raises(KeyError):
        c.get_instance(ids[4])
    # A click on empty ground selects nothing new.
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(3, 3))
    assert dock.current_id != ids[4]


def _draw(window, layer, x0, y0, x1, y1) -> None:
    """Draw the rectangle of raster pixels (x0, y0)-(x1, y1) with the draw tool."""
    view = window.map_view
    t = layer.raster.source.info.affine
    corners = [t * (x0, y0), t * (x1, y0), t * (x1, y1), t * (x0, y1)]
    view.zoom_to(
        (
            min(c[0] for c in corners) - 10,
            min(c[1] for c in corners) - 10,
            max(c[0] for c in corners) + 10,
            max(c[1] for c in corners) + 10,
        )
    )
    pause(50)
    QTest.keyClick(window, Qt.Key.Key_D)
    assert view.tool == "draw"
    for x, y in corners:
        QTest.mouseClick(
            view.viewport(),
            Qt.MouseButton.LeftButton,
            pos=view.mapFromScene(view.frame.to_scene(x, y)),
        )
    QTest.keyClick(view, Qt.Key.Key_Return)


def test_a_panel_drawn_over_a_candidate_hides_it(qtbot, window, scene_tif, cache):
    """ADR 0046: the person's outline stands for the candidate it covers (IoU >= 0.5), in the
    cache and on the map; the other candidates stay."""
    path, ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    # The last stored rectangle covers raster pixels 318..348, 228..248.
    _draw(window, layer, 318, 228, 348, 248)
    until(lambda: ids[4] not in layer.records and max(layer.records) > ids[4], timeout=5000)
    assert len(layer.records) == 5
    with MaskCache(path, readonly=True) as c:
        shown = [i.id for _, i in c.iter_instances()]
    assert ids[4] not in shown and set(ids[:4]) < set(shown) and len(shown) == 5
    # deleting the drawn panel shows the candidate again, on the map too
    drawn = max(layer.records)
    assert dock.current_id == drawn
    dock.delete_current()
    until(lambda: drawn not in layer.records and ids[4] in layer.records, timeout=5000)
    assert len(layer.records) == 5


def test_a_panel_drawn_over_an_object_in_two_tiles_hides_both_outlines(
    qtbot, window, scene_tif, cache
):
    """A drawn panel is stored in one tile; the tile beside holds its own outline of the same
    object, which leaves the map and the queue too (it stayed, as a second panel to review,
    until stop 38), and comes back when the drawn panel is deleted."""
    path, ids = cache
    copy_id = _copy_in_the_tile_beside(path)
    layer, dock = _open(qtbot, window, scene_tif, path, n=6)
    _draw(window, layer, 228, 228, 258, 248)
    until(lambda: max(layer.records) > copy_id, timeout=5000)
    drawn = max(layer.records)
    until(lambda: ids[2] not in layer.records and copy_id not in layer.records, timeout=5000)
    until(lambda: ids[2] not in dock.model.ids and copy_id not in dock.model.ids, timeout=5000)
    dock.current_id = drawn
    dock.delete_current()
    until(lambda: ids[2] in layer.records and copy_id in layer.records, timeout=5000)
    assert drawn not in layer.records


def test_drawn_polygon_becomes_a_human_instance(qtbot, window, scene_tif, cache):
    path, _ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    # A 20×14 px rectangle inside the stored tile (raster pixels 300..320, 200..214).
    _draw(window, layer, 300, 200, 320, 214)
    assert window.map_view.tool == "pan"  # the draw tool ends with Enter
    until(lambda: len(layer.records) == 6, timeout=5000)
    new_id = max(layer.records)
    with MaskCache(path, readonly=True) as c:
        tile, inst = c.get_instance(new_id)
    assert inst.provenance == "human" and inst.review == "accepted"
    assert tile.tile_id == "c128_r128_256x256" and tile.stage_id == "edits"
    assert abs(inst.area_px - 20 * 14) <= 40
    assert dock.current_id == new_id


def test_draw_cancelled_with_escape(qtbot, window, scene_tif, cache):
    path, _ = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    dock.start_drawing()
    view = window.map_view
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(100, 100))
    QTest.keyClick(view, Qt.Key.Key_Escape)
    assert view.tool == "pan" and not dock.draw_btn.isChecked()
    pause(100)
    assert len(layer.records) == 5


# -- split -------------------------------------------------------------------------------------
def test_split_mask_cuts_along_the_line_and_keeps_every_pixel():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:50] = True  # 20 x 40
    parts = split_mask(mask, [(30.0, 0.0), (30.0, 40.0)])  # vertical, between columns 29 and 30
    assert len(parts) == 2
    assert not (parts[0] & parts[1]).any()
    assert np.array_equal(parts[0] | parts[1], mask)  # the cut pixels went to a part
    # The one-pixel-wide cut goes to one side or the other: at most one column of 20 moves.
    assert all(abs(int(p.sum()) - 400) <= 20 for p in parts)
    # Each part lies on one side of the line.
    for p in parts:
        cols = np.flatnonzero(p.any(axis=0))
        assert cols.max() <= 30 or cols.min() >= 29


def test_split_mask_diagonal_and_three_parts():
    mask = np.zeros((50, 50), bool)
    mask[5:45, 5:45] = True
    # A diagonal line (8-connected pixels) still separates 4-connected parts.
    two = split_mask(mask, [(0.0, 0.0), (50.0, 50.0)])
    assert len(two) == 2 and abs(int(two[0].sum()) - int(two[1].sum())) <= 45
    # A polyline that crosses the square twice cuts off two corners: three parts.
    three = split_mask(mask, [(0.0, 15.0), (15.0, 0.0), (35.0, 0.0), (50.0, 15.0)])
    assert len(three) == 3
    assert int(three[0].sum()) > int(three[1].sum()) >= int(three[2].sum())
    assert int(sum(p.sum() for p in three)) == int(mask.sum())


def test_split_mask_refuses_a_line_that_does_not_cut():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    with pytest.raises(ValueError, match="does not cut"):
        split_mask(mask, [(15.0, 5.0), (15.0, 20.0)])  # ends inside the mask
    with pytest.raises(ValueError, match="two points"):
        split_mask(mask, [(15.0, 5.0)])


def test_split_on_the_map_makes_two_human_instances(qtbot, window, scene_tif, cache):
    path, ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    view = window.map_view
    t = layer.raster.source.info.affine
    target = ids[4]  # raster pixels x 318..348, y 228..248; confidence 0.95
    dock.select_instance(target)
    assert dock.current_id == target and dock.split_btn.isEnabled()
    view.zoom_to(tuple(layer.records[target].bounds))
    view.zoom_by(0.5)
    pause(50)
    QTest.keyClick(window, Qt.Key.Key_S)
    assert view.tool == "split" and dock.split_btn.isChecked()
    for x, y in (t * (333, 220), t * (333, 256)):  # a vertical line across the middle
        QTest.mouseClick(
            view.viewport(),
            Qt.MouseButton.LeftButton,
            pos=view.mapFromScene(view.frame.to_scene(x, y)),
        )
    QTest.keyClick(view, Qt.Key.Key_Return)
    assert view.tool == "pan" and not dock.split_btn.isChecked()
    until(lambda: len(layer.records) == 6, timeout=5000)
    new_id = max(layer.records)
    assert new_id not in ids and target in layer.records
    with MaskCache(path, readonly=True) as c:
        _, kept = c.get_instance(target)
        tile, new = c.get_instance(new_id)
    assert kept.provenance == new.provenance == "human"
    assert kept.confidence == new.confidence == pytest.approx(0.95)
    assert new.review == kept.review == "pending"
    assert kept.area_px + new.area_px == 30 * 20  # no pixel lost or gained
    assert abs(kept.area_px - new.area_px) <= 2 * 20
    assert tile.tile_id == "c128_r128_256x256" and tile.stage_id == "edits"
    # The two parts lie on either side of the line (tile x = 333 - 128 = 205).
    assert {kept.bbox[2] <= 206, new.bbox[2] <= 206} == {True, False}


def test_split_needs_a_selection_and_reports_a_miss(qtbot, window, scene_tif, cache):
    path, ids = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    dock.current_id = None
    dock.start_splitting()
    assert window.map_view.tool == "pan" and "Select" in dock.status.text()
    # A line that misses the instance changes nothing and tells the user why.
    dock.select_instance(ids[4])
    t = layer.raster.source.info.affine
    dock.split_current([t * (140, 140), t * (150, 150)])
    notes = window.ctx.notifications
    until(lambda: any("does not cut" in n.message for n in notes.items), timeout=5000)
    assert notes.items[-1].level == "warning"  # bad input, not a bug: no traceback shown
    assert len(layer.records) == 5
    with MaskCache(path, readonly=True) as c:
        assert c.get_instance(ids[4])[1].area_px == 600


def test_next_on_a_geographic_map_zooms_to_the_panel(qtbot, window, scene_tif, cache, tmp_path):
    """With the map in degrees (its first raster in EPSG:4326), Next zoomed out to about 60°:
    the UTM raster's pixel size (0.2 m) was read as 0.2° of context."""
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject

    path, _ids = cache
    geo = tmp_path / "scene_4326.tif"
    with rasterio.open(scene_tif) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                              *src.bounds)  # fmt: skip
        profile = src.profile | {"crs": "EPSG:4326", "transform": t, "width": w, "height": h}
        with rasterio.open(geo, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b))
    window.open_path(geo)  # the map is in degrees
    wait_raster(qtbot, window)
    window.add_raster(scene_tif)
    utm = next(lay for lay in window.ctx.layers.of_kind("raster") if lay.path.name == "scene.tif")
    until(lambda: utm.source is not None and utm.source.warped, timeout=10000)
    (layer,) = [lay for lay in window.open_cache(path) if lay.raster is utm]
    layer.set_threshold(0.6)
    until(lambda: len(layer.records) == 5, timeout=10000)
    window.show_dock("review")
    dock = window.review
    until(lambda: len(dock.model.ids) == 5, timeout=5000)
    dock.step(1)
    pause(300)
    rec = layer.records[dock.current_id]
    x0, _y0, x1, _y1 = window.map_view.visible_extent()
    panel = rec.bounds[2] - rec.bounds[0]  # about 6e-5°
    assert panel < x1 - x0 < 200 * panel  # about 400 raster pixels of context, not 60°


def test_next_and_previous_go_on_to_the_next_raster_s_queue(
    qtbot, window, scene_tif, cache, tmp_path
):
    """Past the end of one raster's queue, N goes on to the next layer that has one (a
    project of many rasters is reviewed in one pass) and P comes back; one layer wraps."""
    from solardesk.synthetic import SceneSpec, generate_scene, write_scene

    path, _ = cache
    layer, dock = _open(qtbot, window, scene_tif, path)
    # A single layer's queue wraps round.
    dock._select_row(4)
    dock.step(1)
    assert dock.current_id == dock.model.ids[0]

    # A second raster (other pixels: its own fingerprint) with two candidates of its own.
    other = tmp_path / "other.tif"
    write_scene(generate_scene(SceneSpec(height=640, width=640, gsd=0.15, seed=4)), other)
    info = describe(other)
    with MaskCache(path) as c:
        c.put_raster_info(info)
        c.write_tile(
            TileKey(info.fingerprint, "c0_r0_256x256", "fake", "1", "p"),
            (0, 0, 256, 256),
            [
                Instance(bbox=(10, 10, 40, 30), mask=np.ones((20, 30), bool), confidence=0.5),
                Instance(bbox=(60, 10, 90, 30), mask=np.ones((20, 30), bool), confidence=0.9),
            ],
        )
    window.add_raster(other)
    until(lambda: len(window.ctx.layers.of_kind("pseudo")) == 2, timeout=10000)
    second = next(lay for lay in window.ctx.layers.of_kind("pseudo") if lay is not layer)
    second.set_threshold(0.6)
    until(lambda: len(second.records) == 2, timeout=10000)
    combo = [dock.layer_combo.itemData(i) for i in range(dock.layer_combo.count())]
    first_layer, next_layer = combo
    dock.layer_combo.setCurrentIndex(0)
    queue = list(dock.model.ids)
    dock._select_row(len(queue) - 1)
    dock.step(1)  # past the end: the next layer's first instance
    assert dock.layer is next_layer and dock.current_id == dock.model.ids[0]
    dock.step(-1)  # and back: the first layer's last
    assert dock.layer is first_layer and dock.current_id == queue[-1]
    # The last layer's end has no next layer: its queue wraps.
    dock.layer_combo.setCurrentIndex(1)
    dock._select_row(len(dock.model.ids) - 1)
    dock.step(1)
    assert dock.layer is next_layer and dock.current_id == dock.model.ids[0]

    # Deciding a raster's last pending candidate moves on to the next raster's queue.
    dock.layer_combo.setCurrentIndex(0)
    for iid in list(dock.model.ids):
        dock.select_instance(iid)
        dock.reject_btn.click()
        until(lambda iid=iid: first_layer.records[iid].review == "rejected", timeout=5000)
    until(lambda: dock.layer is next_layer, timeout=5000)
    assert dock.current_id == dock.model.ids[0] and "is reviewed; on to" in dock.status.text()

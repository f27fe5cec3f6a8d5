"""The map view: reads only what the screen shows, scale bar, cursor coordinates, navigation."""

from __future__ import annotations

import math

from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from solardesk.gui.map_view import RasterRenderer, _nice_length
from tests.gui.conftest import STALL_LIMIT_S, StallMeter, pause, until, wait_raster


def _renderer(window) -> RasterRenderer:
    return next(r for r in window.map_view.renderers.values() if isinstance(r, RasterRenderer))


def test_big_raster_is_read_at_screen_resolution_only(qtbot, window, big_tif):
    window.open_path(big_tif)
    wait_raster(qtbot, window)
    r = _renderer(window)
    src = r.layer.source
    assert max(src.thumbnail.shape[:2]) <= 1024  # the whole raster only as a thumbnail
    view = window.map_view
    vw, vh = view.device_size()
    # Zoomed out to the whole raster, the thumbnail is as sharp as the screen: no read.
    pause(200)
    assert not r.detail.isVisible() or r.detail_shown is None

    # Zoom to native resolution at the centre: one read of about the screen's size.
    view.center_on_map(680300.0, 5149700.0)
    view.zoom_by(1.0 / (view.pixels_per_unit() * 0.1))
    until(lambda: r.detail_shown is not None and r.detail.isVisible(), timeout=10000)
    window_px, out_w, out_h = r.detail_shown
    assert out_w * out_h <= (vw * 1.5 + 2) * (vh * 1.5 + 2)
    assert window_px[2] * window_px[3] < 0.1 * src.width * src.height
    assert out_w >= 0.9 * window_px[2]  # native resolution: about one raster pixel per pixel

    # A pan beyond the margin reads the new extent, again screen-sized.
    reads = r.reads
    view.center_on_map(680520.0, 5149480.0)
    until(lambda: r.reads > reads and not r.in_flight, timeout=10000)
    until(lambda: r.detail_shown[0][0] > 4000, timeout=10000)
    assert r.detail_shown[1] * r.detail_shown[2] <= (vw * 1.5 + 2) * (vh * 1.5 + 2)


def test_zooming_and_panning_never_stall(qtbot, window, big_tif):
    window.open_path(big_tif)
    wait_raster(qtbot, window)
    view = window.map_view
    meter = StallMeter()
    meter.start()
    for i in range(30):
        view.zoom_by(1.15)
        view.horizontalScrollBar().setValue(view.horizontalScrollBar().value() + 25 * (i % 3))
        pause(15)
    pause(300)
    worst = meter.stop()
    assert meter.ticks > 20
    assert worst < STALL_LIMIT_S, f"the event loop stalled {worst * 1000:.0f} ms"


def test_cursor_coordinates_lonlat_and_scale_bar(qtbot, window, scene_tif):
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    view = window.map_view
    pause(100)
    centre = view.viewport().rect().center()
    QTest.mouseMove(view.viewport(), centre)
    until(lambda: window.coords_label.text().startswith("E "), timeout=3000)
    e_text, n_text = window.coords_label.text().split("N ")
    x = float(e_text[2:].replace(",", ""))
    y = float(n_text.replace(",", ""))
    left, bottom, right, top = window.ctx.layers.layers[0].extent()
    assert left < x < right and bottom < y < top
    lonlat = window.lonlat_label.text()
    assert "° N" in lonlat and "° E" in lonlat
    lat = float(lonlat.split("°")[0])
    assert 45 < lat < 48  # the synthetic scene lies near Bolzano
    assert window.crs_label.text() == "EPSG:32632"
    # Scale bar: true ground metres per screen pixel (UTM: map units are metres).
    mpp = view.metres_per_pixel
    assert mpp is not None
    assert math.isclose(mpp, 1 / view.pixels_per_unit(), rel_tol=0.01)
    assert view.scale_bar.isVisible() and view.scale_bar.label.endswith("m")
    assert window.scale_label.text().startswith("1:")


def test_keyboard_zoom_and_pan(qtbot, window, scene_tif):
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    view = window.map_view
    view.setFocus()
    before = view.pixels_per_unit()
    QTest.keyClick(view, Qt.Key.Key_Plus)
    assert view.pixels_per_unit() > before * 1.2
    h = view.horizontalScrollBar().value()
    QTest.keyClick(view, Qt.Key.Key_Right)
    assert view.horizontalScrollBar().value() > h
    QTest.mouseMove(view.viewport(), QPoint(10, 10))


def test_nice_lengths():
    assert _nice_length(137, "m") == (100, "100 m")
    assert _nice_length(2600, "m") == (2000, "2 km")
    assert _nice_length(0.37, "m") == (0.2, "20 cm")
    assert _nice_length(57, "px") == (50, "50 px")


def test_polygons_are_built_from_arrays_vertex_for_vertex():
    import numpy as np
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QPolygonF

    from solardesk.gui.map_view import polygon_from_array

    rng = np.random.default_rng(1)
    for pts in (
        rng.normal(5e5, 1e3, (1500, 2)),
        np.array([[1.5, -2.25]]),
        rng.integers(0, 9, (7, 2)).astype(np.int32),  # any dtype
        rng.normal(0, 1, (6, 4))[:, ::2],  # a strided view
        np.asfortranarray(rng.normal(0, 1, (5, 2))),
    ):
        poly = polygon_from_array(pts)
        expected = QPolygonF([QPointF(float(x), float(y)) for x, y in pts])
        assert poly == expected and poly.size() == len(pts)
        # The polygon owns its copy: the array may change or go.
        before = [(p.x(), p.y()) for p in poly]
        pts[...] = 0
        assert [(p.x(), p.y()) for p in poly] == before
    assert polygon_from_array(np.zeros((0, 2))).isEmpty()

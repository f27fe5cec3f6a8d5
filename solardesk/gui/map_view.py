"""The map: a ``QGraphicsView`` over the layers of a :class:`~solardesk.gui.layers.LayerList`.

Scene coordinates are map coordinates shifted to a local origin with y pointing down
(``scene = (x - x0, y0 - y)``): large projected coordinates (UTM northings of millions of
metres) stay small where Qt paints in single precision.

Rasters are drawn as two pixmaps: a thumbnail of the whole raster (read once) and a *detail*
image of the visible extent at screen resolution, read on the render pool after every pan or
zoom (debounced; one read in flight per raster, the newest request wins). A read never costs
more pixels than the screen shows, whatever the raster's size.

Pseudo-labels are painted by one item per layer that culls by tile buckets and reads the
threshold at paint time, so moving the threshold slider repaints without rebuilding anything.
Polygons are converted to Qt objects in small time slices (:class:`_Feeder`) so a large cache
never stalls the event loop.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QTimer, Signal, Slot
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QPolygonF,
    QTransform,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QStyleOptionGraphicsItem,
    QWidget,
)
from shiboken6 import VoidPtr

from solardesk.gui import _io
from solardesk.gui.layers import Layer, LayerList, PseudoLabelLayer, RasterLayer, VectorLayer
from solardesk.gui.workers import JobRunner, call

#: Delay between the last pan/zoom and the reads of the visible extent.
REFRESH_DELAY_MS = 40
#: Share of the view read beyond each side, so that short pans show detail at once.
READ_MARGIN = 0.25
#: Time the GUI thread spends per event-loop turn building Qt objects for new features.
FEED_BUDGET_S = 0.008
MAX_ZOOM_PX_PER_RASTER_PX = 32.0
BACKGROUND = QColor("#1e1f22")


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------
class MapFrame:
    """Map ↔ scene coordinates and, for a georeferenced map, lon/lat and ground distances."""

    def __init__(self) -> None:
        self.origin: tuple[float, float] | None = None
        self.crs_wkt: str | None = None
        self._to_lonlat = None
        self._geod = None
        self.crs_name = "pixels"

    def set_origin(self, x: float, y: float) -> None:
        self.origin = (float(x), float(y))

    def set_crs(self, crs_wkt: str | None) -> None:
        self.crs_wkt = crs_wkt
        self._to_lonlat = None
        self.crs_name = "pixels"
        if crs_wkt is None:
            return
        import pyproj

        crs = pyproj.CRS.from_wkt(crs_wkt)
        code = crs.to_epsg()
        self.crs_name = f"EPSG:{code}" if code else crs.name
        if crs.is_geographic or crs.is_projected:
            self._to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
            self._geod = pyproj.Geod(ellps="WGS84")

    @property
    def georeferenced(self) -> bool:
        return self._to_lonlat is not None

    def to_scene(self, x: float, y: float) -> QPointF:
        ox, oy = self.origin or (0.0, 0.0)
        return QPointF(x - ox, oy - y)

    def to_map(self, p: QPointF) -> tuple[float, float]:
        ox, oy = self.origin or (0.0, 0.0)
        return p.x() + ox, oy - p.y()

    def ring_to_scene(self, ring: np.ndarray) -> np.ndarray:
        ox, oy = self.origin or (0.0, 0.0)
        out = np.empty_like(ring, dtype=np.float64)
        out[:, 0] = ring[:, 0] - ox
        out[:, 1] = oy - ring[:, 1]
        return out

    def rect_to_scene(self, bounds: Sequence[float]) -> QRectF:
        minx, miny, maxx, maxy = bounds
        a, b = self.to_scene(minx, maxy), self.to_scene(maxx, miny)
        return QRectF(a, b).normalized()

    def affine_to_scene(self, t: Sequence[float]) -> QTransform:
        """A QTransform for image pixel → scene, from a rasterio affine (a, b, c, d, e, f)."""
        a, b, c, d, e, f = t[:6]
        ox, oy = self.origin or (0.0, 0.0)
        return QTransform(a, -d, b, -e, c - ox, oy - f)

    def lonlat(self, x: float, y: float) -> tuple[float, float] | None:
        if self._to_lonlat is None:
            return None
        lon, lat = self._to_lonlat.transform(x, y)
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return None
        return lon, lat

    def ground_distance(self, p: tuple[float, float], q: tuple[float, float]) -> float | None:
        a, b = self.lonlat(*p), self.lonlat(*q)
        if a is None or b is None:
            return None
        _, _, d = self._geod.inv(a[0], a[1], b[0], b[1])
        return float(d)


def polygon_from_array(points: np.ndarray) -> QPolygonF:
    """A QPolygonF of an (n, 2) array, written straight into the polygon's memory (a
    QPointF is two doubles): about 100× faster than a QPointF per vertex, which cost the GUI
    thread seconds when a pre-compute brought thousands of outlines."""
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    poly = QPolygonF()
    if n == 0:
        return poly
    poly.resize(n)
    np.frombuffer(VoidPtr(poly.data(), n * 16, True), np.float64).reshape(n, 2)[:] = pts
    first, last = poly[0], poly[n - 1]
    if (first.x(), first.y(), last.x(), last.y()) != (*pts[0], *pts[-1]):
        # (A binding whose data() is not the polygon's own memory: the slow, sure way.)
        return QPolygonF([QPointF(x, y) for x, y in pts.tolist()])
    return poly


# --------------------------------------------------------------------------------------------
# Time-sliced work on the GUI thread
# --------------------------------------------------------------------------------------------
class _Feeder(QObject):
    """Runs queued small tasks on the GUI thread, ``FEED_BUDGET_S`` per event-loop turn."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tasks: deque[Callable[[], None]] = deque()
        self.timer = QTimer(self)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._run)

    def push(self, task: Callable[[], None]) -> None:
        self.tasks.append(task)
        if not self.timer.isActive():
            self.timer.start()

    def drop(self, owner: object) -> None:
        self.tasks = deque(t for t in self.tasks if getattr(t, "owner", None) is not owner)

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    @Slot()
    def _run(self) -> None:
        end = time.perf_counter() + FEED_BUDGET_S
        while self.tasks and time.perf_counter() < end:
            self.tasks.popleft()()
        if not self.tasks:
            self.timer.stop()


class _Task:
    def __init__(self, owner: object, fn: Callable[[], None]) -> None:
        self.owner = owner
        self.fn = fn

    def __call__(self) -> None:
        self.fn()


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------
class _LayerRoot(QGraphicsItem):
    """An empty parent item: the layer's visibility, opacity and stacking order."""

    def __init__(self) -> None:
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)

    def boundingRect(self) -> QRectF:
        return QRectF()

    def paint(self, painter, option, widget=None) -> None:  # pragma: no cover - no contents
        pass


# The bright half of matplotlib's plasma: every confidence stays visible on dark roofs,
# vegetation and shadow alike; green and red are left to the review states.
_CMAP_STOPS = [
    (0.0, QColor("#b12a90")),
    (0.5, QColor("#e16462")),
    (0.75, QColor("#fca636")),
    (1.0, QColor("#f0f921")),
]
ACCEPTED_COLOUR = QColor("#00e676")
REJECTED_COLOUR = QColor("#ff1744")
SELECTED_COLOUR = QColor("#ffffff")


def confidence_colour(c: float) -> QColor:
    """Colour of a confidence: magenta (low) through orange to yellow (high)."""
    c = min(1.0, max(0.0, c))
    for (a, ca), (b, cb) in itertools.pairwise(_CMAP_STOPS):
        if c <= b:
            t = (c - a) / (b - a) if b > a else 0.0
            return QColor(
                round(ca.red() + (cb.red() - ca.red()) * t),
                round(ca.green() + (cb.green() - ca.green()) * t),
                round(ca.blue() + (cb.blue() - ca.blue()) * t),
            )
    return QColor(_CMAP_STOPS[-1][1])


def _cosmetic(colour: QColor, width: float, style=Qt.PenStyle.SolidLine) -> QPen:
    pen = QPen(colour, width, style)
    pen.setCosmetic(True)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    return pen


class _InstancesItem(QGraphicsItem):
    """Paints the instances of one pseudo-label layer, culled by tile buckets."""

    def __init__(self, layer: PseudoLabelLayer) -> None:
        super().__init__()
        self.layer = layer
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)
        self.polys: dict[int, QPolygonF] = {}
        self.rects: dict[int, QRectF] = {}
        self.buckets: dict[str, set[int]] = {}
        self.bucket_rects: dict[str, QRectF] = {}
        self.tile_outlines: dict[str, QPolygonF] = {}
        self._bounds = QRectF()
        self._pens: dict[tuple, tuple[QPen, QBrush]] = {}

    def boundingRect(self) -> QRectF:
        return self._bounds

    def grow(self, rect: QRectF) -> None:
        if not self._bounds.contains(rect):
            self.prepareGeometryChange()
            self._bounds = self._bounds.united(rect) if not self._bounds.isNull() else rect

    def add(self, iid: int, tile_id: str, poly: QPolygonF) -> None:
        rect = poly.boundingRect()
        self.polys[iid] = poly
        self.rects[iid] = rect
        self.buckets.setdefault(tile_id, set()).add(iid)
        br = self.bucket_rects.get(tile_id)
        self.bucket_rects[tile_id] = rect if br is None else br.united(rect)
        self.grow(rect)

    def remove(self, iid: int, tile_id: str | None = None) -> None:
        self.polys.pop(iid, None)
        self.rects.pop(iid, None)
        if tile_id is not None:
            self.buckets.get(tile_id, set()).discard(iid)
        else:
            for members in self.buckets.values():
                members.discard(iid)

    def set_tile(self, tile_id: str, outline: QPolygonF) -> None:
        self.tile_outlines[tile_id] = outline
        rect = outline.boundingRect()
        br = self.bucket_rects.get(tile_id)
        self.bucket_rects[tile_id] = rect if br is None else br.united(rect)
        self.grow(rect)

    # -- style ---------------------------------------------------------------------------------
    def style_of(self, rec: _io.InstanceRecord) -> tuple | None:
        """A hashable style key, or ``None`` when the instance is hidden."""
        layer = self.layer
        if rec.review == "accepted":
            return ("accepted",)
        if rec.review == "rejected":
            return ("rejected",)
        above = rec.confidence >= layer.threshold
        if not above and not layer.show_below:
            return None
        bucket = round(rec.confidence * 20) / 20  # 21 colours are plenty
        return ("above" if above else "below", bucket)

    def _pen_brush(self, key: tuple) -> tuple[QPen, QBrush]:
        found = self._pens.get(key)
        if found is not None:
            return found
        kind = key[0]
        if kind == "accepted":
            fill = QColor(ACCEPTED_COLOUR)
            fill.setAlpha(60)
            found = (_cosmetic(ACCEPTED_COLOUR, 2.2), QBrush(fill))
        elif kind == "rejected":
            found = (
                _cosmetic(REJECTED_COLOUR, 1.6, Qt.PenStyle.DashLine),
                QBrush(Qt.BrushStyle.NoBrush),
            )
        elif kind == "above":
            colour = confidence_colour(key[1])
            fill = QColor(colour)
            fill.setAlpha(70)
            found = (_cosmetic(colour, 2.0), QBrush(fill))
        else:
            colour = confidence_colour(key[1])
            colour.setAlpha(220)
            found = (_cosmetic(colour, 1.2, Qt.PenStyle.DashLine), QBrush(Qt.BrushStyle.NoBrush))
        self._pens[key] = found
        return found

    def visible_ids(self, rect: QRectF) -> list[int]:
        out = []
        for tile_id, members in self.buckets.items():
            br = self.bucket_rects.get(tile_id)
            if br is None or not br.intersects(rect):
                continue
            out.extend(i for i in members if self.rects[i].intersects(rect))
        return out

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        exposed = option.exposedRect
        lod = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        layer = self.layer
        if layer.show_tiles and self.tile_outlines:
            painter.setPen(_cosmetic(QColor(255, 255, 255, 70), 1.0, Qt.PenStyle.DotLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            for tile_id, outline in self.tile_outlines.items():
                if self.bucket_rects[tile_id].intersects(exposed):
                    painter.drawPolygon(outline)
        groups: dict[tuple, list[int]] = {}
        records = layer.records
        for iid in self.visible_ids(exposed):
            rec = records.get(iid)
            if rec is None:
                continue
            key = self.style_of(rec)
            if key is not None:
                groups.setdefault(key, []).append(iid)
        # Draw the faint ones first and reviewed ones last, so decisions stay readable.
        order = {"below": 0, "above": 1, "rejected": 2, "accepted": 3}
        for key in sorted(groups, key=lambda k: (order[k[0]], k[1:])):
            pen, brush = self._pen_brush(key)
            painter.setPen(pen)
            painter.setBrush(brush)
            for iid in groups[key]:
                r = self.rects[iid]
                if max(r.width(), r.height()) * lod < 2.5:
                    painter.drawPoint(r.center())  # sub-pixel: a dot is all one can see
                else:
                    painter.drawPolygon(self.polys[iid])

    def instance_at(self, p: QPointF, tolerance: float) -> int | None:
        """The visible instance under ``p`` (scene), the smallest one when they nest."""
        probe = QRectF(p.x() - tolerance, p.y() - tolerance, 2 * tolerance, 2 * tolerance)
        best = None
        for iid in self.visible_ids(probe):
            rec = self.layer.records.get(iid)
            if rec is None or self.style_of(rec) is None:
                continue
            poly = self.polys[iid]
            inside = poly.containsPoint(p, Qt.FillRule.OddEvenFill)
            r = self.rects[iid]
            d = 0.0 if inside else math.hypot(r.center().x() - p.x(), r.center().y() - p.y())
            score = (0 if inside else 1, r.width() * r.height() if inside else d)
            if best is None or score < best[0]:
                best = (score, iid)
        return best[1] if best else None


# --------------------------------------------------------------------------------------------
# Renderers: one per layer, the view side of the model
# --------------------------------------------------------------------------------------------
class _Renderer(QObject):
    def __init__(self, view: MapView, layer: Layer) -> None:
        super().__init__(view)
        self.view = view
        self.layer = layer
        self.root = _LayerRoot()
        view.scene().addItem(self.root)
        layer.changed.connect(self.sync_look)
        self.sync_look()

    @Slot()
    def sync_look(self) -> None:
        self.root.setVisible(self.layer.visible)
        self.root.setOpacity(self.layer.opacity)

    def view_changed(self) -> None:
        pass

    def dispose(self) -> None:
        self.view.feeder.drop(self)
        scene = self.view.scene()
        if self.root.scene() is scene:
            scene.removeItem(self.root)


class RasterRenderer(_Renderer):
    """Thumbnail + detail of the visible extent (see the module docstring)."""

    layer: RasterLayer

    def __init__(self, view: MapView, layer: RasterLayer) -> None:
        super().__init__(view, layer)
        self.thumb = QGraphicsPixmapItem(self.root)
        self.thumb.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.detail = QGraphicsPixmapItem(self.root)
        self.detail.setZValue(1)
        self.detail_request: tuple | None = None  #: (window, out_w, out_h) shown or in flight
        self.detail_shown: tuple | None = None
        self.in_flight = False
        self.pending: tuple | None = None
        self.reads = 0
        layer.sourceReady.connect(self._on_source)
        if layer.source is not None:
            self._on_source()

    @Slot()
    def _on_source(self) -> None:
        src = self.layer.source
        if src is None:
            return
        self.view.ensure_origin(self.layer.extent())
        self.thumb.setPixmap(_pixmap(src.thumbnail))
        self.thumb.setTransform(self.view.frame.affine_to_scene(src.thumbnail_transform))
        self.detail.setPixmap(QPixmap())
        self.detail_request = self.detail_shown = None
        self.view.schedule_refresh()

    def view_changed(self) -> None:
        src = self.layer.source
        if src is None or not self.layer.visible:
            return
        vw, vh = self.view.device_size()
        corners = self.view.viewport_corners_map(margin=0.0)
        need = _io.view_window(src, corners, vw, vh)
        if need is None:
            return
        window, out_w, _out_h = need
        factor = window[2] / out_w  # raster pixels per screen pixel
        if factor >= src.thumbnail_factor * 0.9:
            self.detail.setVisible(False)  # the thumbnail is as sharp as the screen
            return
        if self._covers(self.detail_request, window, factor):
            self.detail.setVisible(True)
            return
        big = _io.view_window(
            src,
            self.view.viewport_corners_map(margin=READ_MARGIN),
            round(vw * (1 + 2 * READ_MARGIN)),
            round(vh * (1 + 2 * READ_MARGIN)),
        )
        if big is None:
            return
        self.detail_request = big
        if self.in_flight:
            self.pending = big
        else:
            self._read(big)

    @staticmethod
    def _covers(request: tuple | None, window: tuple, factor: float) -> bool:
        if request is None:
            return False
        (c, r, w, h), ow, _ = request
        have = w / ow
        inside = (
            c <= window[0]
            and r <= window[1]
            and c + w >= window[0] + window[2]
            and r + h >= window[1] + window[3]
        )
        # Sharp enough (≤ 1.3× the screen's pixels) and not needlessly sharp (zoomed out 2×).
        return inside and have <= max(factor * 1.3, 1.0) and have >= factor / 2.0

    def _read(self, request: tuple) -> None:
        src = self.layer.source
        window, out_w, out_h = request
        self.in_flight = True
        self.reads += 1
        job = self.view.runner.submit(
            lambda: call(_io.read_view, src, window, out_w, out_h),
            f"Draw {self.layer.name}",
        )
        job.finished.connect(self._on_image)
        job.ended.connect(self._on_read_ended)

    @Slot(object)
    def _on_image(self, image: _io.ViewImage) -> None:
        if self.layer.source is None:
            return
        self.detail.setPixmap(_pixmap(image.rgba))
        self.detail.setTransform(self.view.frame.affine_to_scene(image.transform))
        self.detail.setVisible(True)
        self.detail_shown = (image.window, image.rgba.shape[1], image.rgba.shape[0])

    @Slot()
    def _on_read_ended(self) -> None:
        self.in_flight = False
        if self.pending is not None:
            nxt, self.pending = self.pending, None
            self._read(nxt)


def _pixmap(rgba: np.ndarray) -> QPixmap:
    h, w = rgba.shape[:2]
    data = np.ascontiguousarray(rgba)
    image = QImage(data.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(image.copy())


class PseudoLabelRenderer(_Renderer):
    layer: PseudoLabelLayer

    def __init__(self, view: MapView, layer: PseudoLabelLayer) -> None:
        super().__init__(view, layer)
        self.item = _InstancesItem(layer)
        self.item.setParentItem(self.root)
        layer.tilesUpdated.connect(self._on_tiles)
        layer.instanceChanged.connect(self._on_changed)
        layer.instanceAdded.connect(self._on_added)
        layer.instanceRemoved.connect(self._on_removed)
        layer.thresholdChanged.connect(self._repaint)
        layer.styleChanged.connect(self._repaint)
        if layer.records or layer.tiles:
            self._on_tiles((list(layer.tiles.values()), [], list(layer.records.values())))

    @Slot(object)
    def _on_tiles(self, update) -> None:
        tiles, removed, added = update
        self.view.ensure_origin(self.layer.extent())
        frame = self.view.frame
        for iid in removed:
            self.item.remove(iid)
        for t in tiles:
            self.item.set_tile(t.tile_id, polygon_from_array(frame.ring_to_scene(t.footprint)))
        # Qt objects for new instances are built in slices: a big cache never stalls the GUI.
        for i in range(0, len(added), 200):
            chunk = added[i : i + 200]
            self.view.feeder.push(_Task(self, lambda chunk=chunk: self._build(chunk)))
        self.item.update()

    def _build(self, records: list[_io.InstanceRecord]) -> None:
        frame = self.view.frame
        current = self.layer.records
        for rec in records:
            if current.get(rec.id) is rec or rec.id in current:
                self.item.add(
                    rec.id, rec.tile_id, polygon_from_array(frame.ring_to_scene(rec.ring))
                )
        self.item.update()

    @Slot(int)
    def _on_changed(self, iid: int) -> None:
        r = self.item.rects.get(iid)
        if r is not None:
            self.item.update(r.adjusted(-1, -1, 1, 1))
        else:
            self.item.update()

    @Slot(object)
    def _on_added(self, rec: _io.InstanceRecord) -> None:
        self._build([rec])

    @Slot(int)
    def _on_removed(self, iid: int) -> None:
        r = self.item.rects.get(iid)
        self.item.remove(iid)
        if r is not None:
            self.item.update(r.adjusted(-1, -1, 1, 1))

    @Slot()
    def _repaint(self) -> None:
        self.item.update()

    def instance_at(self, p: QPointF, tolerance: float) -> int | None:
        if not self.layer.visible:
            return None
        return self.item.instance_at(p, tolerance)


class VectorRenderer(_Renderer):
    layer: VectorLayer
    CHUNK = 256

    def __init__(self, view: MapView, layer: VectorLayer) -> None:
        super().__init__(view, layer)
        self.items: list[QGraphicsPathItem] = []
        layer.dataReady.connect(self._on_data)
        layer.changed.connect(self._restyle)
        if layer.data is not None:
            self._on_data()

    def _pen_brush(self) -> tuple[QPen, QBrush]:
        colour = QColor(self.layer.colour)
        fill = QColor(colour)
        fill.setAlpha(50)
        return _cosmetic(colour, 1.8), QBrush(fill)

    @Slot()
    def _on_data(self) -> None:
        data = self.layer.data
        if data is None:
            return
        self.view.feeder.drop(self)
        for item in self.items:
            item.setParentItem(None)
            if item.scene() is not None:
                item.scene().removeItem(item)
        self.items = []
        if data.bounds is not None:
            self.view.ensure_origin(data.bounds)
        polys, lines = data.polygons, data.lines
        for i in range(0, len(polys), self.CHUNK):
            chunk = polys[i : i + self.CHUNK]
            self.view.feeder.push(_Task(self, lambda chunk=chunk: self._build_polygons(chunk)))
        for i in range(0, len(lines), self.CHUNK):
            chunk = lines[i : i + self.CHUNK]
            self.view.feeder.push(_Task(self, lambda chunk=chunk: self._build_lines(chunk)))
        if len(data.points):
            self.view.feeder.push(_Task(self, lambda: self._build_points(data.points)))
        self.view.schedule_refresh()

    def _add_path(self, path: QPainterPath, filled: bool) -> None:
        item = QGraphicsPathItem(path, self.root)
        pen, brush = self._pen_brush()
        item.setPen(pen)
        item.setBrush(brush if filled else QBrush(Qt.BrushStyle.NoBrush))
        item.setData(0, filled)
        self.items.append(item)

    def _build_polygons(self, chunk: list[list[np.ndarray]]) -> None:
        frame = self.view.frame
        path = QPainterPath()
        path.setFillRule(Qt.FillRule.OddEvenFill)
        for rings in chunk:
            for ring in rings:
                path.addPolygon(polygon_from_array(frame.ring_to_scene(ring)))
                path.closeSubpath()
        self._add_path(path, True)

    def _build_lines(self, chunk: list[np.ndarray]) -> None:
        frame = self.view.frame
        path = QPainterPath()
        for line in chunk:
            pts = frame.ring_to_scene(line)
            path.moveTo(*pts[0])
            for x, y in pts[1:].tolist():
                path.lineTo(x, y)
        self._add_path(path, False)

    def _build_points(self, points: np.ndarray) -> None:
        frame = self.view.frame
        path = QPainterPath()
        # A tiny cross per point; cosmetic pens keep it visible at any zoom.
        for x, y in frame.ring_to_scene(points).tolist():
            path.moveTo(x, y)
            path.lineTo(x, y)
        self._add_path(path, False)

    @Slot()
    def _restyle(self) -> None:
        pen, brush = self._pen_brush()
        for item in self.items:
            item.setPen(pen)
            item.setBrush(brush if item.data(0) else QBrush(Qt.BrushStyle.NoBrush))


# --------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------
class MapView(QGraphicsView):
    """Pans (drag, middle button, arrows), zooms (wheel, +/-), selects (click), draws.

    Tools: ``"pan"``, ``"draw"`` (a polygon) and ``"split"`` (a polyline). Signals carry map
    coordinates: ``cursorMoved(x, y)`` (``None`` when the cursor leaves),
    ``instanceClicked(layer, id)``, ``polygonDrawn([(x, y), ...])``, ``lineDrawn([(x, y), ...])``.
    """

    cursorMoved = Signal(object)
    viewChanged = Signal()
    scaleChanged = Signal(object)
    instanceClicked = Signal(object, int)
    polygonDrawn = Signal(object)
    lineDrawn = Signal(object)
    toolChanged = Signal(str)

    def __init__(self, layers: LayerList, runner: JobRunner, parent=None) -> None:
        super().__init__(parent)
        self.layers = layers
        self.runner = runner
        self.frame = MapFrame()
        self.feeder = _Feeder(self)
        self.setScene(QGraphicsScene(self))
        self.setObjectName("mapView")
        self.setBackgroundBrush(BACKGROUND)
        self.setRenderHints(
            QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform
        )
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        # No item takes drops; a QGraphicsView would still take every drag in, and a file
        # dropped on the map would go nowhere. Left to the window, it is opened.
        self.setAcceptDrops(False)
        self.viewport().setAcceptDrops(False)
        self.renderers: dict[Layer, _Renderer] = {}
        self.tool = "pan"
        self._press: QPointF | None = None
        self._middle: QPointF | None = None
        self._has_view = False
        self.metres_per_pixel: float | None = None
        self.refresh_timer = QTimer(self)
        self.refresh_timer.setSingleShot(True)
        self.refresh_timer.setInterval(REFRESH_DELAY_MS)
        self.refresh_timer.timeout.connect(self._refresh)
        # Selection and drawing overlays, above every layer.
        # The selection: a white line on a dark halo reads on any imagery.
        self.selection_halo = QGraphicsPathItem()
        self.selection_halo.setZValue(1e6 - 1)
        self.selection_halo.setPen(_cosmetic(QColor(0, 0, 0, 160), 5.0))
        self.scene().addItem(self.selection_halo)
        self.selection_item = QGraphicsPathItem()
        self.selection_item.setZValue(1e6)
        self.selection_item.setPen(_cosmetic(SELECTED_COLOUR, 2.0))
        self.scene().addItem(self.selection_item)
        self.draw_points: list[tuple[float, float]] = []
        self.draw_item = QGraphicsPathItem()
        self.draw_item.setZValue(1e6 + 1)
        self.draw_item.setPen(_cosmetic(QColor("#ffea00"), 2.0))
        fill = QColor("#ffea00")
        fill.setAlpha(50)
        self._draw_fill = QBrush(fill)
        self.draw_item.setBrush(self._draw_fill)
        self.scene().addItem(self.draw_item)
        self._cursor_map: tuple[float, float] | None = None
        self.scale_bar = ScaleBar(self)
        self.scale_bar.setVisible(False)

        layers.inserted.connect(self._on_inserted)
        layers.removed.connect(self._on_removed)
        layers.moved.connect(self._restack)
        layers.crsChanged.connect(self._on_crs)
        for i, layer in enumerate(layers.layers):
            self._on_inserted(layer, i)

    # -- layers ------------------------------------------------------------------------------
    @Slot(object, int)
    def _on_inserted(self, layer: Layer, _index: int) -> None:
        if isinstance(layer, RasterLayer):
            r: _Renderer = RasterRenderer(self, layer)
        elif isinstance(layer, PseudoLabelLayer):
            r = PseudoLabelRenderer(self, layer)
        elif isinstance(layer, VectorLayer):
            r = VectorRenderer(self, layer)
        else:
            return
        self.renderers[layer] = r
        self._restack()

    @Slot(object)
    def _on_removed(self, layer: Layer) -> None:
        r = self.renderers.pop(layer, None)
        if r is not None:
            r.dispose()
        if not self.renderers:
            self.frame.origin = None
            self._has_view = False
            self.clear_selection()

    @Slot()
    def _restack(self) -> None:
        n = len(self.layers.layers)
        for i, layer in enumerate(self.layers.layers):
            r = self.renderers.get(layer)
            if r is not None:
                r.root.setZValue(n - i)

    @Slot()
    def _on_crs(self) -> None:
        self.frame.set_crs(self.layers.crs_wkt)
        self._update_scale()

    def ensure_origin(self, extent: Sequence[float] | None) -> None:
        """Fix the scene origin at the first extent seen, and frame the view on it once."""
        if extent is None:
            return
        minx, _miny, _maxx, maxy = extent
        if self.frame.origin is None:
            self.frame.set_origin(minx, maxy)
        self._grow_scene(extent)
        if not self._has_view:
            self._has_view = True
            self.zoom_to(extent)

    def _grow_scene(self, extent: Sequence[float]) -> None:
        rect = self.frame.rect_to_scene(extent)
        pad_w, pad_h = max(rect.width(), 1.0) * 2, max(rect.height(), 1.0) * 2
        rect = rect.adjusted(-pad_w, -pad_h, pad_w, pad_h)
        current = self.sceneRect()
        self.setSceneRect(current.united(rect) if self._has_view else rect)

    # -- geometry of the view ------------------------------------------------------------------
    def device_size(self) -> tuple[int, int]:
        ratio = self.devicePixelRatioF()
        vp = self.viewport()
        return max(1, round(vp.width() * ratio)), max(1, round(vp.height() * ratio))

    def viewport_corners_map(self, margin: float = 0.0) -> list[tuple[float, float]]:
        vp = self.viewport().rect()
        mx, my = vp.width() * margin, vp.height() * margin
        pts = [
            QPointF(-mx, -my),
            QPointF(vp.width() + mx, -my),
            QPointF(vp.width() + mx, vp.height() + my),
            QPointF(-mx, vp.height() + my),
        ]
        inv, _ = self.viewportTransform().inverted()
        return [self.frame.to_map(inv.map(p)) for p in pts]

    def visible_extent(self) -> tuple[float, float, float, float]:
        corners = self.viewport_corners_map()
        xs = [c[0] for c in corners]
        ys = [c[1] for c in corners]
        return min(xs), min(ys), max(xs), max(ys)

    def pixels_per_unit(self) -> float:
        t = self.transform()
        return math.hypot(t.m11(), t.m12())

    def zoom_to(self, extent: Sequence[float], margin: float = 0.03) -> None:
        rect = self.frame.rect_to_scene(extent)
        if rect.width() <= 0 and rect.height() <= 0:
            self.centerOn(rect.center())
        else:
            w, h = max(rect.width(), 1e-6), max(rect.height(), 1e-6)
            self.fitInView(
                rect.adjusted(-w * margin, -h * margin, w * margin, h * margin),
                Qt.AspectRatioMode.KeepAspectRatio,
            )
        self._view_changed()

    def zoom_full(self) -> None:
        extents = [e for layer in self.layers if (e := layer.extent()) is not None]
        if not extents:
            return
        self.zoom_to(
            (
                min(e[0] for e in extents),
                min(e[1] for e in extents),
                max(e[2] for e in extents),
                max(e[3] for e in extents),
            )
        )

    def zoom_by(self, factor: float) -> None:
        current = self.pixels_per_unit()
        limit = self._max_pixels_per_unit()
        if factor > 1 and current * factor > limit:
            factor = max(1.0, limit / current)
        if factor < 1 and current * factor < 1e-9:
            return
        self.scale(factor, factor)
        self._view_changed()

    def _max_pixels_per_unit(self) -> float:
        sizes = [
            layer.source.map_pixel_size
            for layer in self.layers
            if isinstance(layer, RasterLayer) and layer.source is not None
        ]
        finest = min(sizes) if sizes else 1e-3
        return MAX_ZOOM_PX_PER_RASTER_PX / max(finest, 1e-12)

    def center_on_map(self, x: float, y: float) -> None:
        self.centerOn(self.frame.to_scene(x, y))
        self._view_changed()

    def show_bounds(self, bounds: Sequence[float], min_size: float | None = None) -> None:
        """Centre on ``bounds``: they fill about a third of the view, which spans at least
        ``min_size`` map units (context around a small object)."""
        minx, miny, maxx, maxy = bounds
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        half = max(max(maxx - minx, maxy - miny) * 1.5, (min_size or 0.0) / 2)
        self.zoom_to((cx - half, cy - half, cx + half, cy + half), margin=0.0)

    # -- events ---------------------------------------------------------------------------------
    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self._view_changed()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_scale_bar()
        self._view_changed()

    def wheelEvent(self, event) -> None:
        delta = event.angleDelta().y()
        if delta == 0:
            return
        self.zoom_by(1.0015**delta)
        event.accept()

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.MiddleButton:
            self._middle = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        if self.tool in _DRAWING_TOOLS:
            if event.button() == Qt.MouseButton.LeftButton:
                self.draw_points.append(
                    self.frame.to_map(self.mapToScene(event.position().toPoint()))
                )
                self._update_draw_item()
            elif event.button() == Qt.MouseButton.RightButton:
                self.finish_drawing()
            event.accept()
            return
        if event.button() == Qt.MouseButton.LeftButton:
            self._press = event.position()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        pos = event.position()
        if self._middle is not None:
            d = pos - self._middle
            self._middle = pos
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(d.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(d.y()))
        self._cursor_map = self.frame.to_map(self.mapToScene(pos.toPoint()))
        self.cursorMoved.emit(self._cursor_map)
        if self.tool in _DRAWING_TOOLS and self.draw_points:
            self._update_draw_item()
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.MiddleButton and self._middle is not None:
            self._middle = None
            self.viewport().unsetCursor()
            event.accept()
            return
        super().mouseReleaseEvent(event)
        if self.tool == "pan" and event.button() == Qt.MouseButton.LeftButton and self._press:
            moved = (event.position() - self._press).manhattanLength()
            self._press = None
            if moved <= 4:
                self.click_at(self.mapToScene(event.position().toPoint()))

    def mouseDoubleClickEvent(self, event) -> None:
        if self.tool in _DRAWING_TOOLS and event.button() == Qt.MouseButton.LeftButton:
            self.finish_drawing()
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def leaveEvent(self, event) -> None:
        self._cursor_map = None
        self.cursorMoved.emit(None)
        super().leaveEvent(event)

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if self.tool in _DRAWING_TOOLS:
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.finish_drawing()
                return
            if key == Qt.Key.Key_Escape:
                self.set_tool("pan")
                return
            if key == Qt.Key.Key_Backspace and self.draw_points:
                self.draw_points.pop()
                self._update_draw_item()
                return
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(1.25)
            return
        if key == Qt.Key.Key_Minus:
            self.zoom_by(0.8)
            return
        step = {
            Qt.Key.Key_Left: (-1, 0),
            Qt.Key.Key_Right: (1, 0),
            Qt.Key.Key_Up: (0, -1),
            Qt.Key.Key_Down: (0, 1),
        }.get(key)
        if step is not None:
            vp = self.viewport()
            h, v = self.horizontalScrollBar(), self.verticalScrollBar()
            h.setValue(h.value() + step[0] * vp.width() // 5)
            v.setValue(v.value() + step[1] * vp.height() // 5)
            return
        super().keyPressEvent(event)

    # -- selection --------------------------------------------------------------------------------
    def click_at(self, scene_pos: QPointF) -> None:
        tolerance = 5.0 / max(self.pixels_per_unit(), 1e-12)
        for layer in self.layers.layers:  # top first
            r = self.renderers.get(layer)
            if isinstance(r, PseudoLabelRenderer):
                iid = r.instance_at(scene_pos, tolerance)
                if iid is not None:
                    self.instanceClicked.emit(layer, iid)
                    return

    def show_selection(self, ring: np.ndarray | None) -> None:
        path = QPainterPath()
        if ring is not None and len(ring):
            path.addPolygon(polygon_from_array(self.frame.ring_to_scene(ring)))
            path.closeSubpath()
        self.selection_item.setPath(path)
        self.selection_halo.setPath(path)

    def clear_selection(self) -> None:
        self.show_selection(None)

    # -- drawing --------------------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        if tool not in ("pan", *_DRAWING_TOOLS):
            raise ValueError(f"unknown tool {tool!r}")
        self.tool = tool
        self.draw_points = []
        self._update_draw_item()
        # A polygon is filled as it grows; a split line is a line only.
        self.draw_item.setBrush(
            self._draw_fill if tool == "draw" else QBrush(Qt.BrushStyle.NoBrush)
        )
        if tool in _DRAWING_TOOLS:
            self.setDragMode(QGraphicsView.DragMode.NoDrag)
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)
            self.setFocus()
        else:
            self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
            self.viewport().unsetCursor()
        self.toolChanged.emit(tool)

    def finish_drawing(self) -> None:
        tool = self.tool
        pts = _dedupe(self.draw_points)
        self.set_tool("pan")
        if tool == "draw" and len(pts) >= 3:
            self.polygonDrawn.emit(pts)
        elif tool == "split" and len(pts) >= 2:
            self.lineDrawn.emit(pts)

    def _update_draw_item(self) -> None:
        path = QPainterPath()
        pts = list(self.draw_points)
        if self.tool in _DRAWING_TOOLS and pts:
            if self._cursor_map is not None:
                pts.append(self._cursor_map)
            scene = [self.frame.to_scene(x, y) for x, y in pts]
            if self.tool == "draw":
                path.addPolygon(QPolygonF(scene))
                if len(scene) > 2:
                    path.closeSubpath()
            else:  # a polyline: no fill
                path.moveTo(scene[0])
                for p in scene[1:]:
                    path.lineTo(p)
            r = 3.0 / max(self.pixels_per_unit(), 1e-12)
            for p in scene[: len(self.draw_points)]:
                path.addEllipse(p, r, r)
        self.draw_item.setPath(path)

    # -- refresh and scale ------------------------------------------------------------------------
    def _view_changed(self) -> None:
        self.refresh_timer.start()
        self.viewChanged.emit()

    def schedule_refresh(self) -> None:
        self.refresh_timer.start()

    @Slot()
    def _refresh(self) -> None:
        for r in list(self.renderers.values()):
            r.view_changed()
        self._update_scale()
        self.viewport().update()

    def _update_scale(self) -> None:
        if self.frame.origin is None:
            self.metres_per_pixel = None
        else:
            vp = self.viewport().rect()
            c = self.mapToScene(vp.center())
            inv, _ = self.viewportTransform().inverted()
            p = self.frame.to_map(c)
            q = self.frame.to_map(inv.map(QPointF(vp.center().x() + 100, vp.center().y())))
            d = self.frame.ground_distance(p, q)
            if d is None:
                d = math.hypot(q[0] - p[0], q[1] - p[1])  # pixel units: no ground metres
            self.metres_per_pixel = d / 100.0 if d > 0 else None
        self.scale_bar.set_scale(self.metres_per_pixel, "m" if self.frame.georeferenced else "px")
        self._place_scale_bar()
        self.scaleChanged.emit(self.metres_per_pixel)

    def _place_scale_bar(self) -> None:
        vp = self.viewport().geometry()
        self.scale_bar.move(vp.left() + 12, vp.bottom() - self.scale_bar.height() - 10)

    def scale_denominator(self) -> float | None:
        """The map scale 1:N on this screen (ground metres per screen metre)."""
        if self.metres_per_pixel is None or not self.frame.georeferenced:
            return None
        return self.metres_per_pixel / (0.0254 / max(self.logicalDpiX(), 1))


class ScaleBar(QWidget):
    """A scale bar in true ground metres, floating over the map's bottom-left corner.

    A child of the view, not of its viewport: the viewport's contents are scrolled when the
    map pans, and an overlay painted into them would be dragged along.
    """

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("scaleBar")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)
        self.metres_per_pixel: float | None = None
        self.units = "m"
        self.length = 0.0
        self.label = ""
        self.resize(180, 40)

    def set_scale(self, metres_per_pixel: float | None, units: str) -> None:
        self.metres_per_pixel = metres_per_pixel
        self.units = units
        if metres_per_pixel:
            self.length, self.label = _nice_length(metres_per_pixel * 120, units)
        self.setVisible(bool(metres_per_pixel))
        self.update()

    def paintEvent(self, event) -> None:
        mpp = self.metres_per_pixel
        if not mpp:
            return
        bar_px = self.length / mpp
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, font.pointSizeF() - 0.5))
        painter.setFont(font)
        text_w = painter.fontMetrics().horizontalAdvance(self.label)
        width = max(bar_px, text_w) + 16
        if abs(self.width() - width) > 1:
            self.resize(round(width) + 1, 40)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(QRectF(0, 0, width, 36), 4, 4)
        painter.setPen(QPen(QColor("white"), 2))
        x0, y0 = 8.0, 28.0
        painter.drawLine(QPointF(x0, y0), QPointF(x0 + bar_px, y0))
        for x, tick in ((x0, 7), (x0 + bar_px / 2, 4), (x0 + bar_px, 7)):
            painter.drawLine(QPointF(x, y0), QPointF(x, y0 - tick))
        painter.drawText(QPointF(x0, y0 - 10), self.label)
        painter.end()


def _nice_length(target: float, units: str) -> tuple[float, str]:
    """A round length (1, 2 or 5 × 10^k) not longer than ``target``, and its label."""
    if target <= 0:
        return 0.0, ""
    exp = math.floor(math.log10(target))
    best = 10.0**exp
    for m in (1, 2, 5):
        if m * 10.0**exp <= target:
            best = m * 10.0**exp
    if units == "m" and best >= 1000:
        return best, f"{best / 1000:g} km"
    if units == "m" and best < 1:
        return best, f"{best * 100:g} cm"
    return best, f"{best:g} {units}"


_DRAWING_TOOLS = ("draw", "split")


def _dedupe(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for p in points:
        if not out or (abs(p[0] - out[-1][0]) > 1e-9 or abs(p[1] - out[-1][1]) > 1e-9):
            out.append(p)
    if len(out) > 1 and out[0] == out[-1]:
        out.pop()
    return out

"""The map's model: layers and their order, observed by the map view and the layers panel.

Layers are ``QObject``s that hold data and emit signals; they know no widget (napari's
model/view split). Their data is loaded on a :class:`~solardesk.gui.workers.JobRunner`
by the functions of :mod:`solardesk.gui._io`, and arrives through queued signals.

``LayerList.layers[0]`` is the top of the stack (drawn last), as in QGIS's layer panel.
The map CRS is the CRS of the first raster that loads; later rasters in another CRS are warped
into it on the fly and vector files are reprojected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from solardesk.gui import _io
from solardesk.gui.workers import JobError, JobRunner, call

REVIEW_STATES = ("pending", "accepted", "rejected")


class Layer(QObject):
    """Base: a name, visibility, opacity, a loading state and an error."""

    changed = Signal()  #: name, visibility or opacity
    loadingChanged = Signal(bool)
    failed = Signal(str)

    kind = "layer"

    def __init__(self, name: str, runner: JobRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.runner = runner
        self.visible = True
        self.opacity = 1.0
        self.loading = False
        self.error: str | None = None

    def set_visible(self, visible: bool) -> None:
        if visible != self.visible:
            self.visible = bool(visible)
            self.changed.emit()

    def set_opacity(self, opacity: float) -> None:
        opacity = min(1.0, max(0.0, float(opacity)))
        if abs(opacity - self.opacity) > 1e-6:
            self.opacity = opacity
            self.changed.emit()

    def set_name(self, name: str) -> None:
        if name != self.name:
            self.name = name
            self.changed.emit()

    def extent(self) -> tuple[float, float, float, float] | None:
        """(minx, miny, maxx, maxy) in map coordinates, once loaded."""
        return None

    def _set_loading(self, loading: bool) -> None:
        if loading != self.loading:
            self.loading = loading
            self.loadingChanged.emit(loading)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.error = error.message
        self._set_loading(False)
        self.failed.emit(error.message)

    def state(self) -> dict:
        """What the project file keeps about this layer's looks."""
        return {"visible": self.visible, "opacity": round(self.opacity, 3)}

    def restore(self, state: dict) -> None:
        if "visible" in state:
            self.set_visible(bool(state["visible"]))
        if "opacity" in state:
            self.set_opacity(float(state["opacity"]))


# --------------------------------------------------------------------------------------------
class RasterLayer(Layer):
    """A raster file shown through reduced-resolution reads of the visible extent."""

    kind = "raster"
    sourceReady = Signal()

    def __init__(self, path: str | Path, runner: JobRunner, parent: QObject | None = None) -> None:
        super().__init__(Path(path).name, runner, parent)
        self.path = Path(path)
        self.source: _io.RasterSource | None = None

    @property
    def key(self) -> str:
        return f"raster:{self.path}"

    def load(self, map_crs_wkt: str | None) -> None:
        self._set_loading(True)
        self.error = None
        job = self.runner.submit(
            lambda: call(_io.open_source, self.path, map_crs_wkt), f"Open {self.path.name}"
        )
        job.finished.connect(self._on_source)
        job.errored.connect(self._on_error)

    @Slot(object)
    def _on_source(self, source: _io.RasterSource) -> None:
        self.source = source
        self._set_loading(False)
        self.sourceReady.emit()

    @property
    def fingerprint(self) -> str | None:
        return self.source.info.fingerprint if self.source else None

    def extent(self) -> tuple[float, float, float, float] | None:
        if self.source is None:
            return None
        t = self.source.affine
        corners = [t * (0, 0), t * (self.source.width, 0), t * (0, self.source.height)]
        corners.append(t * (self.source.width, self.source.height))
        xs = [c[0] for c in corners]
        ys = [c[1] for c in corners]
        return min(xs), min(ys), max(xs), max(ys)


# --------------------------------------------------------------------------------------------
class PseudoLabelLayer(Layer):
    """The cached instances of one raster, coloured by confidence, filtered by a threshold.

    ``records`` maps instance id → :class:`~solardesk.gui._io.InstanceRecord`. The layer
    polls the cache for tiles written since the last poll (:meth:`refresh`), so tiles show up
    while a pre-compute runs; edits made through the app are applied with :meth:`set_review`,
    :meth:`add_record` and :meth:`remove_record` once the cache has stored them.
    """

    kind = "pseudo"
    tilesUpdated = Signal(object)  #: (tile records, removed ids, added records)
    instanceChanged = Signal(int)
    instanceAdded = Signal(object)
    instanceRemoved = Signal(int)
    thresholdChanged = Signal(float)
    styleChanged = Signal()
    objectsCounted = Signal()  #: :attr:`objects` is new

    def __init__(
        self,
        cache_path: str | Path,
        raster: RasterLayer,
        runner: JobRunner,
        threshold: float = 0.85,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(f"{raster.path.name} · pseudo-labels", runner, parent)
        self.cache_path = Path(cache_path)
        self.raster = raster
        self.threshold = float(threshold)
        self.show_below = True  #: draw candidates below the threshold (faint, dashed)
        self.show_tiles = True  #: draw the outlines of computed tiles
        self.records: dict[int, _io.InstanceRecord] = {}
        self.tiles: dict[str, _io.TileRecord] = {}
        self._by_tile: dict[str, set[int]] = {}
        self._since_pk = 0
        self._job = None
        # Reads asked for while one runs, all kept (each kind would miss what another sees):
        # everything again, these tiles again (an edit keeps its tile's row id, so only a
        # read of that tile shows it), and what was written since the last read.
        self._again_full = False
        self._again_tiles: set[str] = set()
        self._again_poll = False
        self._job_placement: _io.Placement | None = None
        self._order_cache: dict[bool, list[int]] = {}
        #: ``(threshold, n)``: the objects at that threshold, the copies of one object in
        #: overlapping tiles counted once (:meth:`count_objects`); None until counted
        self.objects: tuple[float, int | None] | None = None
        self._count_job = None
        self._count_threshold = self.threshold
        self._count_again = False
        # Read in full each time the raster is placed (again): once opened, and again when
        # it is warped to the map's CRS.
        raster.sourceReady.connect(self._on_raster_ready)
        if raster.source is not None:
            self.refresh()

    @property
    def key(self) -> str:
        return f"pseudo:{self.cache_path}:{self.raster.path}"

    @Slot()
    def _on_raster_ready(self) -> None:
        self.refresh(full=True)

    def placement(self) -> _io.Placement | None:
        return _io.placement_of(self.raster.source) if self.raster.source else None

    def tiles_around(self, tile_id: str) -> list[str]:
        """``tile_id`` and the tiles whose windows overlap it: those a panel drawn (or deleted)
        in it can change, since each hides its own outline of that panel (ADR 0046)."""
        own = self.tiles.get(tile_id)
        if own is None:
            return [tile_id]
        x0, y0, w, h = own.window
        return [tile_id] + [
            tid
            for tid, t in self.tiles.items()
            if tid != tile_id
            and t.window[0] < x0 + w
            and x0 < t.window[0] + t.window[2]
            and t.window[1] < y0 + h
            and y0 < t.window[1] + t.window[3]
        ]

    def refresh(self, full: bool = False, tile_ids: list[str] | None = None) -> None:
        """Read tiles written since the last refresh (all with ``full``) on a worker."""
        source = self.raster.source
        if source is None:
            return
        if self._job is not None:
            # One read at a time; remember to read again when it ends. (A full read resets
            # the row id only when it starts: the running read would raise it back.)
            if full:
                self._again_full = True
            elif tile_ids:
                self._again_tiles.update(tile_ids)
            else:
                self._again_poll = True
            return
        if full:
            self._since_pk = 0
        self._set_loading(True)
        fp, placement, since = source.info.fingerprint, _io.placement_of(source), self._since_pk
        self._job_placement = placement
        path = self.cache_path
        self._job = self.runner.submit(
            lambda: call(_io.load_tiles, path, fp, placement, since, tile_ids),
            f"Read pseudo-labels of {self.raster.path.name}",
        )
        self._job.finished.connect(self._on_update)
        self._job.errored.connect(self._on_error)
        self._job.ended.connect(self._on_job_ended)

    def count_objects(self) -> None:
        """Count the objects at the current threshold on a worker (the records hold one
        instance per tile, so an object in the overlap of tiles is there once per tile);
        :attr:`objects` then holds the count and :attr:`objectsCounted` is emitted. One count
        at a time; asked again meanwhile, it counts once more when that one ends."""
        source = self.raster.source
        if source is None:
            return
        if self._count_job is not None:
            self._count_again = True
            return
        path, fp, thr = self.cache_path, source.info.fingerprint, self.threshold
        self._count_threshold = thr
        self._count_job = self.runner.submit(
            lambda: call(_io.count_objects, path, fp, thr),
            f"Count the objects of {self.raster.path.name}",
            notify=False,  # a figure for the panel; the layer's own reads report errors
        )
        self._count_job.finished.connect(self._on_counted)
        self._count_job.errored.connect(self._on_count_failed)
        self._count_job.ended.connect(self._on_count_ended)

    @Slot(object)
    def _on_counted(self, n: int) -> None:
        self.objects = (self._count_threshold, int(n))
        self.objectsCounted.emit()

    @Slot(object)
    def _on_count_failed(self, _error: JobError) -> None:
        # (None: not counted at this threshold; the panel shows no figure rather than retry)
        self.objects = (self._count_threshold, None)
        self.objectsCounted.emit()

    @Slot()
    def _on_count_ended(self) -> None:
        self._count_job = None
        if self._count_again:
            self._count_again = False
            self.count_objects()

    @Slot()
    def _on_job_ended(self) -> None:
        self._job = None
        self._set_loading(False)
        if self._again_full:
            self._again_full, self._again_tiles, self._again_poll = False, set(), False
            self.refresh(full=True)
        elif self._again_tiles:
            tiles, self._again_tiles = sorted(self._again_tiles), set()
            self.refresh(tile_ids=tiles)  # (a pending poll stays pending: read after it)
        elif self._again_poll:
            self._again_poll = False
            self.refresh()

    @Slot(object)
    def _on_update(self, update: _io.TilesUpdate) -> None:
        if self._job_placement != self.placement():
            # Read for the raster's earlier placement (it was re-warped to the map's CRS
            # meanwhile): drawn there, the outlines would sit hundreds of km away.
            self._again_full = True
            return
        self.apply(update)

    def apply(self, update: _io.TilesUpdate) -> None:
        """Replace the instances of the updated tiles with the ones read from the cache."""
        self._since_pk = max(self._since_pk, update.max_pk)
        removed: list[int] = []
        for t in update.tiles:
            self.tiles[t.tile_id] = t
            for iid in self._by_tile.pop(t.tile_id, set()):
                if self.records.pop(iid, None) is not None:
                    removed.append(iid)
        added = []
        for rec in update.instances:
            self.records[rec.id] = rec
            self._by_tile.setdefault(rec.tile_id, set()).add(rec.id)
            added.append(rec)
        if update.tiles or removed or added:
            self._order_cache.clear()
            self.tilesUpdated.emit((update.tiles, removed, added))

    # -- looks ----------------------------------------------------------------------------------
    def set_threshold(self, threshold: float) -> None:
        threshold = min(1.0, max(0.0, float(threshold)))
        if abs(threshold - self.threshold) > 1e-9:
            self.threshold = threshold
            self._order_cache.clear()
            self.thresholdChanged.emit(threshold)

    def set_show_below(self, show: bool) -> None:
        if show != self.show_below:
            self.show_below = bool(show)
            self.styleChanged.emit()

    def set_show_tiles(self, show: bool) -> None:
        if show != self.show_tiles:
            self.show_tiles = bool(show)
            self.styleChanged.emit()

    def state(self) -> dict:
        return {
            **super().state(),
            "threshold": round(self.threshold, 4),
            "show_below": self.show_below,
            "show_tiles": self.show_tiles,
        }

    def restore(self, state: dict) -> None:
        super().restore(state)
        if "threshold" in state:
            self.set_threshold(float(state["threshold"]))
        if "show_below" in state:
            self.set_show_below(bool(state["show_below"]))
        if "show_tiles" in state:
            self.set_show_tiles(bool(state["show_tiles"]))

    # -- edits (after the cache has stored them) ---------------------------------------------
    def set_review(self, instance_id: int, review: str) -> None:
        rec = self.records.get(instance_id)
        if rec is None or rec.review == review:
            return
        self.records[instance_id] = rec.with_review(review)
        self._order_cache.clear()
        self.instanceChanged.emit(instance_id)

    def add_record(self, rec: _io.InstanceRecord) -> None:
        self.records[rec.id] = rec
        self._by_tile.setdefault(rec.tile_id, set()).add(rec.id)
        self._order_cache.clear()
        self.instanceAdded.emit(rec)

    def remove_record(self, instance_id: int) -> None:
        rec = self.records.pop(instance_id, None)
        if rec is None:
            return
        self._by_tile.get(rec.tile_id, set()).discard(instance_id)
        self._order_cache.clear()
        self.instanceRemoved.emit(instance_id)

    # -- queries --------------------------------------------------------------------------------
    def review_order(self, pending_only: bool = True) -> list[int]:
        """Instance ids, most uncertain first: closest to the threshold, then by id."""
        cached = self._order_cache.get(pending_only)
        if cached is not None:
            return cached
        recs = [r for r in self.records.values() if not pending_only or r.review == "pending"]
        if not recs:
            order: list[int] = []
        else:
            ids = np.fromiter((r.id for r in recs), np.int64, len(recs))
            conf = np.fromiter((r.confidence for r in recs), np.float64, len(recs))
            order = ids[np.lexsort((ids, np.abs(conf - self.threshold)))].tolist()
        self._order_cache[pending_only] = order
        return order

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(REVIEW_STATES, 0)
        above = 0
        for r in self.records.values():
            out[r.review] += 1
            above += r.confidence >= self.threshold
        out["above_threshold"] = above
        out["total"] = len(self.records)
        return out

    def extent(self) -> tuple[float, float, float, float] | None:
        return self.raster.extent()


# --------------------------------------------------------------------------------------------
_VECTOR_COLOURS = ["#00e5ff", "#ff4081", "#ffd740", "#69f0ae", "#b388ff", "#ff6e40"]


class VectorLayer(Layer):
    """A GeoPackage, Shapefile or GeoJSON file reprojected to the map CRS."""

    kind = "vector"
    dataReady = Signal()
    _next_colour = 0

    def __init__(
        self,
        path: str | Path,
        runner: JobRunner,
        colour: str | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(Path(path).name, runner, parent)
        self.path = Path(path)
        if colour is None:
            colour = _VECTOR_COLOURS[VectorLayer._next_colour % len(_VECTOR_COLOURS)]
            VectorLayer._next_colour += 1
        self.colour = colour
        self.data: _io.VectorData | None = None

    @property
    def key(self) -> str:
        return f"vector:{self.path}"

    def load(self, map_crs_wkt: str | None) -> None:
        self._set_loading(True)
        self.error = None
        job = self.runner.submit(
            lambda: call(_io.load_vector, self.path, map_crs_wkt), f"Open {self.path.name}"
        )
        job.finished.connect(self._on_data)
        job.errored.connect(self._on_error)

    @Slot(object)
    def _on_data(self, data: _io.VectorData) -> None:
        self.data = data
        self._set_loading(False)
        self.dataReady.emit()

    def extent(self) -> tuple[float, float, float, float] | None:
        return self.data.bounds if self.data else None

    def state(self) -> dict:
        return {**super().state(), "colour": self.colour}

    def restore(self, state: dict) -> None:
        super().restore(state)
        if isinstance(state.get("colour"), str):
            self.colour = state["colour"]
            self.changed.emit()


# --------------------------------------------------------------------------------------------
class LayerList(QObject):
    """The ordered layers of the map (index 0 on top) and the map CRS."""

    inserted = Signal(object, int)
    removed = Signal(object)
    moved = Signal()
    crsChanged = Signal()
    activeChanged = Signal(object)

    def __init__(self, runner: JobRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.layers: list[Layer] = []
        self.crs_wkt: str | None = None
        self.crs_known = False  #: set once a raster (or vector) has fixed the map CRS
        #: the raster whose CRS the map takes: the first added while it was unknown (not the
        #: first to finish opening: reopening a project gave another CRS each time)
        self._crs_from: RasterLayer | None = None
        self._waiting: list[RasterLayer] = []  #: rasters to open once the CRS is known
        self.active: Layer | None = None

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def of_kind(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == kind]

    def find(self, key: str) -> Layer | None:
        return next((layer for layer in self.layers if getattr(layer, "key", None) == key), None)

    def insert(self, layer: Layer, index: int = 0) -> Layer:
        index = max(0, min(index, len(self.layers)))
        self.layers.insert(index, layer)
        self.inserted.emit(layer, index)
        return layer

    def remove(self, layer: Layer) -> None:
        if layer not in self.layers:
            return
        self.layers.remove(layer)
        if self.active is layer:
            self.set_active(None)
        self.removed.emit(layer)
        if layer is self._crs_from and not self.crs_known:
            self._next_crs_source()
        # Pseudo-label layers cannot outlive their raster.
        for other in list(self.layers):
            if isinstance(other, PseudoLabelLayer) and other.raster is layer:
                self.remove(other)
        layer.deleteLater()

    def clear(self) -> None:
        for layer in list(self.layers):
            self.remove(layer)
        self.crs_wkt = None
        self.crs_known = False
        self._crs_from = None
        self._waiting = []
        self.crsChanged.emit()

    def move(self, layer: Layer, index: int) -> None:
        if layer not in self.layers:
            return
        index = max(0, min(index, len(self.layers) - 1))
        self.layers.remove(layer)
        self.layers.insert(index, layer)
        self.moved.emit()

    def set_active(self, layer: Layer | None) -> None:
        if layer is not self.active:
            self.active = layer
            self.activeChanged.emit(layer)

    # -- adding files ---------------------------------------------------------------------------
    def add_raster(self, path: str | Path) -> RasterLayer:
        key = f"raster:{Path(path)}"
        existing = self.find(key)
        if isinstance(existing, RasterLayer):
            return existing
        layer = RasterLayer(path, self.runner, self)
        layer.sourceReady.connect(self._on_raster_ready)
        layer.failed.connect(self._on_raster_failed)
        if not self.crs_known and self._crs_from is None:
            self._crs_from = layer
        # Rasters go below vectors and pseudo-labels: under the lowest non-raster layer.
        rasters = [i for i, existing in enumerate(self.layers) if existing.kind == "raster"]
        self.insert(layer, rasters[0] if rasters else len(self.layers))
        if self.crs_known:
            layer.load(self.crs_wkt)
        elif layer is self._crs_from:
            layer.load(None)
        else:
            # Opened once the first raster has set the map's CRS, straight into it: opened
            # now, it would be shown (and its labels read) in its own CRS meanwhile.
            self._waiting.append(layer)
        return layer

    @Slot()
    def _on_raster_ready(self) -> None:
        layer = self.sender()
        if not isinstance(layer, RasterLayer) or layer.source is None:
            return
        if not self.crs_known:
            self.crs_wkt = layer.source.map_crs_wkt
            self.crs_known = True
            self.crsChanged.emit()
            waiting, self._waiting = self._waiting, []
            for other in waiting:
                if other in self.layers:
                    other.load(self.crs_wkt)
            # Rasters and vectors opened before the CRS was known are placed again in it.
            for other in self.layers:
                if other is layer:
                    continue
                if isinstance(other, RasterLayer) and other.source is not None:
                    if not _io._same_crs(other.source.map_crs_wkt, self.crs_wkt):
                        other.load(self.crs_wkt)
                elif isinstance(other, VectorLayer) and other.data is not None:
                    other.load(self.crs_wkt)
        elif not _io._same_crs(layer.source.map_crs_wkt, self.crs_wkt):
            layer.load(self.crs_wkt)  # opened while the CRS was unknown: warp it now

    @Slot(str)
    def _on_raster_failed(self, _message: str) -> None:
        if not self.crs_known and self.sender() is self._crs_from:
            self._next_crs_source()

    def _next_crs_source(self) -> None:
        """The raster meant to set the map CRS failed to open or was removed: the earliest
        added of the waiting ones is opened to set it instead."""
        self._waiting = [lay for lay in self._waiting if lay in self.layers]
        self._crs_from = self._waiting.pop(0) if self._waiting else None
        if self._crs_from is not None:
            self._crs_from.load(None)

    @Slot()
    def _on_vector_ready(self) -> None:
        layer = self.sender()
        if not isinstance(layer, VectorLayer) or layer.data is None or self.crs_known:
            return
        if any(isinstance(other, RasterLayer) and not other.error for other in self.layers):
            return  # a raster is still opening: it sets the CRS and this layer is reloaded
        self.crs_wkt = layer.data.crs_wkt
        self.crs_known = True
        self.crsChanged.emit()

    def add_pseudo_labels(
        self, cache_path: str | Path, raster: RasterLayer, threshold: float = 0.85
    ) -> PseudoLabelLayer:
        key = f"pseudo:{Path(cache_path)}:{raster.path}"
        existing = self.find(key)
        if isinstance(existing, PseudoLabelLayer):
            return existing
        layer = PseudoLabelLayer(cache_path, raster, self.runner, threshold, self)
        above = self.layers.index(raster) if raster in self.layers else 0
        self.insert(layer, above)
        return layer

    def add_vector(self, path: str | Path, colour: str | None = None) -> VectorLayer:
        key = f"vector:{Path(path)}"
        existing = self.find(key)
        if isinstance(existing, VectorLayer):
            existing.load(self.crs_wkt)  # reloaded: the file may have been rewritten
            return existing
        layer = VectorLayer(path, self.runner, colour, self)
        layer.dataReady.connect(self._on_vector_ready)
        self.insert(layer, 0)
        layer.load(self.crs_wkt if self.crs_known else None)
        return layer

"""Review: accept, reject, delete, draw and split instances; every change goes to the cache.

The queue is the active pseudo-label layer's instances ordered by uncertainty (closest to
the threshold first), pending ones by default; past its end, next and previous go on to the
queue of the next (or previous) raster's layer, so a folder of rasters is one pass. Keys:
**A** accept, **R** reject, **U** back to pending, **Delete** delete, **N**/**P**
next/previous, **D** draw a polygon (click the corners on the map, double-click or Enter to
finish, Esc to cancel), **S** split the selected instance (click a line across it on the
map, double-click or Enter to finish). A drawn polygon is rasterised into the tile that
holds it and stored with provenance "human", accepted; the parts of a split instance keep
its confidence and review state, the largest keeps its id, and all become provenance
"human".

Edits run one at a time on the ``edits`` runner, each with its own writing connection; the
layer (and so the map and this list) changes when the cache has stored the edit, so what the
screen shows is what the cache holds.
"""

from __future__ import annotations

import contextlib

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPointF,
    QSize,
    Qt,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import QColor, QKeySequence, QPainter, QPen, QPixmap, QPolygonF, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from solardesk.gui import _io
from solardesk.gui.context import AppContext
from solardesk.gui.layers import PseudoLabelLayer
from solardesk.gui.map_view import (
    ACCEPTED_COLOUR,
    REJECTED_COLOUR,
    SELECTED_COLOUR,
    _pixmap,
    confidence_colour,
)
from solardesk.gui.workers import call

_COLUMNS = ("#", "Confidence", "Δ threshold", "Review", "Source", "Area")
PREVIEW_PX = 200


class ReviewTableModel(QAbstractTableModel):
    """The review queue of one layer: instance ids in uncertainty order."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.layer: PseudoLabelLayer | None = None
        self.ids: list[int] = []
        self.pending_only = True
        self.gsd: float | None = None

    def set_layer(self, layer: PseudoLabelLayer | None) -> None:
        self.layer = layer
        self.reload()

    def count_for(self, layer: PseudoLabelLayer) -> int:
        """How long ``layer``'s queue would be under this model's filter."""
        return len(layer.review_order(self.pending_only))

    def reload(self) -> None:
        self.beginResetModel()
        self.ids = self.layer.review_order(self.pending_only) if self.layer else []
        src = self.layer.raster.source if self.layer else None
        self.gsd = src.info.ground_resolution_m if src is not None else None
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.ids)

    def columnCount(self, parent: QModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(_COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return _COLUMNS[section]
        return None

    def record(self, row: int) -> _io.InstanceRecord | None:
        if self.layer is None or not 0 <= row < len(self.ids):
            return None
        return self.layer.records.get(self.ids[row])

    def row_of(self, iid: int) -> int:
        try:
            return self.ids.index(iid)
        except ValueError:
            return -1

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        rec = self.record(index.row())
        if rec is None:
            return None
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                return str(rec.id)
            if col == 1:
                return f"{rec.confidence:.3f}"
            if col == 2:
                return f"{rec.confidence - self.layer.threshold:+.3f}"
            if col == 3:
                return rec.review
            if col == 4:
                return rec.provenance
            if col == 5:
                if self.gsd:
                    return f"{rec.area_px * self.gsd * self.gsd:.1f} m²"
                return f"{rec.area_px} px"
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == 3 and rec.review == "accepted":
                return ACCEPTED_COLOUR
            if col == 3 and rec.review == "rejected":
                return REJECTED_COLOUR
        if role == Qt.ItemDataRole.DecorationRole and col == 1:
            return confidence_colour(rec.confidence)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (0, 1, 2, 5):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ReviewDock(QWidget):
    """See the module docstring."""

    currentChanged = Signal(object)  #: the instance id under review, or None

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.layer: PseudoLabelLayer | None = None
        self.current_id: int | None = None
        self._drawing = False
        self._preview_job = None
        self._preview_for: int | None = None

        self.layer_combo = QComboBox()
        self.layer_combo.setObjectName("reviewLayer")
        self.layer_combo.currentIndexChanged.connect(self._on_layer_choice)
        self.pending_only = QCheckBox("Pending only")
        self.pending_only.setChecked(True)
        self.pending_only.toggled.connect(self._on_pending_only)
        self.summary = QLabel("Open a cache (File ▸ Open cache) or run the pre-compute.")
        self.summary.setObjectName("reviewSummary")
        self.summary.setWordWrap(True)

        self.model = ReviewTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("reviewTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().currentRowChanged.connect(self._on_row)

        self.preview = QLabel()
        self.preview.setObjectName("reviewPreview")
        self.preview.setFixedSize(QSize(PREVIEW_PX, PREVIEW_PX))
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setStyleSheet("background: #111; color: #888;")
        self.preview.setText("no instance")
        self.detail = QLabel()
        self.detail.setObjectName("reviewDetail")
        self.detail.setWordWrap(True)
        self.detail.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self.accept_btn = QPushButton("Accept  (A)")
        self.reject_btn = QPushButton("Reject  (R)")
        self.reset_btn = QPushButton("Pending  (U)")
        self.delete_btn = QPushButton("Delete  (Del)")
        self.prev_btn = QPushButton("◀ Previous  (P)")
        self.next_btn = QPushButton("Next  (N) ▶")
        self.draw_btn = QPushButton("Draw polygon  (D)")
        self.draw_btn.setCheckable(True)
        self.split_btn = QPushButton("Split  (S)")
        self.split_btn.setObjectName("splitButton")
        self.split_btn.setCheckable(True)
        self.split_btn.setToolTip(
            "Draw a line across the selected instance on the map: it becomes two or more "
            "instances (for touching arrays the analyser merged)."
        )
        self.accept_btn.setObjectName("acceptButton")
        self.reject_btn.setObjectName("rejectButton")
        self.accept_btn.setStyleSheet(f"color: {ACCEPTED_COLOUR.name()}; font-weight: bold;")
        self.reject_btn.setStyleSheet(f"color: {REJECTED_COLOUR.name()}; font-weight: bold;")
        self.accept_btn.clicked.connect(lambda: self.review("accepted"))
        self.reject_btn.clicked.connect(lambda: self.review("rejected"))
        self.reset_btn.clicked.connect(lambda: self.review("pending"))
        self.delete_btn.clicked.connect(self.delete_current)
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn.clicked.connect(lambda: self.step(1))
        self.draw_btn.clicked.connect(self._on_draw_clicked)
        self.split_btn.clicked.connect(self._on_split_clicked)
        self.status = QLabel()
        self.status.setObjectName("reviewStatus")
        self.status.setWordWrap(True)

        top = QHBoxLayout()
        top.addWidget(QLabel("Layer"))
        top.addWidget(self.layer_combo, 1)
        top.addWidget(self.pending_only)
        grid = QGridLayout()
        grid.addWidget(self.accept_btn, 0, 0)
        grid.addWidget(self.reject_btn, 0, 1)
        grid.addWidget(self.reset_btn, 1, 0)
        grid.addWidget(self.delete_btn, 1, 1)
        grid.addWidget(self.prev_btn, 2, 0)
        grid.addWidget(self.next_btn, 2, 1)
        grid.addWidget(self.draw_btn, 3, 0)
        grid.addWidget(self.split_btn, 3, 1)
        side = QVBoxLayout()
        side.addLayout(grid)
        side.addWidget(self.detail, 1)
        middle = QHBoxLayout()
        middle.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)
        middle.addLayout(side, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.summary)
        lay.addLayout(middle)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.status)

        self._reload_timer = QTimer(self)
        self._reload_timer.setSingleShot(True)
        self._reload_timer.setInterval(250)
        self._reload_timer.timeout.connect(self._reload)

        self._shortcuts = []
        for key, fn in (
            ("A", lambda: self.review("accepted")),
            ("R", lambda: self.review("rejected")),
            ("U", lambda: self.review("pending")),
            (QKeySequence.StandardKey.Delete, self.delete_current),
            ("N", lambda: self.step(1)),
            ("P", lambda: self.step(-1)),
            ("D", self.start_drawing),
            ("S", self.start_splitting),
        ):
            self._add_shortcut(key, fn)

        ctx.layers.inserted.connect(self._refresh_layers)
        ctx.layers.removed.connect(self._refresh_layers)
        ctx.layers.activeChanged.connect(self._on_active_layer)
        if ctx.map_view is not None:
            ctx.map_view.instanceClicked.connect(self.select_from_map)
            ctx.map_view.polygonDrawn.connect(self._on_polygon)
            ctx.map_view.lineDrawn.connect(self._on_line)
            ctx.map_view.toolChanged.connect(self._on_tool)
        self._refresh_layers()
        self._update_buttons()

    def _add_shortcut(self, key, fn) -> None:
        window = self.ctx.map_view.window() if self.ctx.map_view is not None else self
        sc = QShortcut(QKeySequence(key), window)
        sc.setContext(Qt.ShortcutContext.WindowShortcut)
        sc.activated.connect(lambda fn=fn: fn() if self.isVisible() else None)
        self._shortcuts.append(sc)

    # -- layers ------------------------------------------------------------------------------
    @Slot()
    def _refresh_layers(self, *_args) -> None:
        layers = [lay for lay in self.ctx.layers.layers if isinstance(lay, PseudoLabelLayer)]
        current = self.layer if self.layer in layers else (layers[0] if layers else None)
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for lay in layers:
            self.layer_combo.addItem(lay.name, lay)
        if current is not None:
            self.layer_combo.setCurrentIndex(layers.index(current))
        self.layer_combo.blockSignals(False)
        self.set_layer(current)

    @Slot(object)
    def _on_active_layer(self, layer) -> None:
        if isinstance(layer, PseudoLabelLayer) and layer is not self.layer:
            i = self.layer_combo.findData(layer)
            if i >= 0:
                self.layer_combo.setCurrentIndex(i)

    @Slot(int)
    def _on_layer_choice(self, index: int) -> None:
        self.set_layer(self.layer_combo.itemData(index) if index >= 0 else None)

    def set_layer(self, layer: PseudoLabelLayer | None) -> None:
        if layer is self.layer and self.model.layer is layer:
            return
        if self.layer is not None:
            for sig in (
                self.layer.tilesUpdated,
                self.layer.instanceChanged,
                self.layer.instanceAdded,
                self.layer.instanceRemoved,
                self.layer.thresholdChanged,
            ):
                with contextlib.suppress(RuntimeError, TypeError):
                    sig.disconnect(self._schedule_reload)
        self.layer = layer
        if layer is not None:
            for sig in (
                layer.tilesUpdated,
                layer.instanceChanged,
                layer.instanceAdded,
                layer.instanceRemoved,
                layer.thresholdChanged,
            ):
                sig.connect(self._schedule_reload)
            layer.changed.connect(self._on_layer_look)
        self.current_id = None
        self._reload()

    @Slot()
    def _on_layer_look(self) -> None:
        """The selection is drawn only while its layer is shown."""
        if self.sender() is not self.layer or self.ctx.map_view is None:
            return
        rec = self.layer.records.get(self.current_id) if self.current_id is not None else None
        if rec is not None and self.layer.visible:
            self.ctx.map_view.show_selection(rec.ring)
        else:
            self.ctx.map_view.clear_selection()

    @Slot()
    def _schedule_reload(self, *_args) -> None:
        if not self._reload_timer.isActive():
            self._reload_timer.start()

    @Slot(bool)
    def _on_pending_only(self, on: bool) -> None:
        self.model.pending_only = on
        self._reload()

    @Slot()
    def _reload(self) -> None:
        keep = self.current_id
        self.model.set_layer(self.layer)
        if self.layer is None:
            self.summary.setText("Open a cache (File ▸ Open cache) or run the pre-compute.")
        else:
            c = self.layer.counts()
            self.summary.setText(
                f"{c['pending']} pending · {c['accepted']} accepted · {c['rejected']} rejected "
                f"of {c['total']} candidates. Closest to the threshold "
                f"({self.layer.threshold:.2f}) first."
            )
        row = self.model.row_of(keep) if keep is not None else -1
        if row >= 0:
            self._select_row(row, centre=False)
        elif keep is not None and self.layer is not None and keep in self.layer.records:
            self._show_current(keep, centre=False)  # reviewed and filtered out: still shown
        elif self.model.ids and keep is None:
            self._select_row(0, centre=False)
        else:
            self._show_current(None)

    # -- selection ---------------------------------------------------------------------------------
    def _select_row(self, row: int, centre: bool = True) -> None:
        row = max(0, min(row, len(self.model.ids) - 1))
        if not self.model.ids:
            self._show_current(None)
            return
        self._centre_next = centre
        index = self.model.index(row, 0)
        self.table.selectionModel().blockSignals(True)
        self.table.setCurrentIndex(index)
        self.table.selectRow(row)
        self.table.selectionModel().blockSignals(False)
        self.table.scrollTo(index)
        self._show_current(self.model.ids[row], centre=centre)

    @Slot(QModelIndex, QModelIndex)
    def _on_row(self, current: QModelIndex, _prev: QModelIndex) -> None:
        if current.isValid() and 0 <= current.row() < len(self.model.ids):
            self._show_current(self.model.ids[current.row()], centre=True)

    @Slot(object, int)
    def select_from_map(self, layer, iid: int) -> None:
        """An instance clicked on the map becomes the one under review (the map stays put)."""
        if isinstance(layer, PseudoLabelLayer) and layer is not self.layer:
            i = self.layer_combo.findData(layer)
            if i >= 0:
                self.layer_combo.setCurrentIndex(i)
        row = self.model.row_of(iid)
        if row >= 0:
            self._select_row(row, centre=False)
        else:
            self._show_current(iid, centre=False)

    def select_instance(self, iid: int, centre: bool = True) -> None:
        row = self.model.row_of(iid)
        if row >= 0:
            self._select_row(row, centre=centre)
        else:
            self._show_current(iid, centre=centre)

    def _show_current(self, iid: int | None, centre: bool = False) -> None:
        self.current_id = iid
        rec = self.layer.records.get(iid) if (self.layer is not None and iid is not None) else None
        view = self.ctx.map_view
        if rec is None:
            self.current_id = None
            self.detail.setText("")
            self.preview.setPixmap(QPixmap())
            self.preview.setText("no instance")
            if view is not None:
                view.clear_selection()
        else:
            gsd = self.model.gsd
            area = f"{rec.area_px * gsd * gsd:.1f} m²" if gsd else f"{rec.area_px} px"
            self.detail.setText(
                f"<b>Instance {rec.id}</b><br>confidence <b>{rec.confidence:.3f}</b> "
                f"(threshold {self.layer.threshold:.2f})<br>review: <b>{rec.review}</b><br>"
                f"source: {rec.provenance}<br>area: {area}<br>tile: {rec.tile_id}"
            )
            if view is not None:
                if self.layer.visible:
                    view.show_selection(rec.ring)
                else:
                    view.clear_selection()
                if centre:
                    # Enough context to judge a panel: about 400 raster pixels across.
                    pixel = self.layer.raster.source.map_pixel_size
                    view.show_bounds(rec.bounds, min_size=400 * pixel)
            self._request_preview(rec)
        self._update_buttons()
        self.currentChanged.emit(self.current_id)

    def _update_buttons(self) -> None:
        has = self.current_id is not None
        for b in (self.accept_btn, self.reject_btn, self.reset_btn, self.delete_btn):
            b.setEnabled(has)
        n = len(self.model.ids)
        more = n > 0 or self.layer_combo.count() > 1
        self.prev_btn.setEnabled(more)
        self.next_btn.setEnabled(more)
        self.draw_btn.setEnabled(self.layer is not None)
        self.split_btn.setEnabled(self.layer is not None and self.current_id is not None)

    def step(self, delta: int) -> None:
        """The next (``delta`` 1) or previous (-1) instance of the queue. Past either end the
        queue of the next raster's layer (in the layer box's order) that has one follows: a
        project of many rasters is reviewed in one pass. With one layer, the queue wraps."""
        n = len(self.model.ids)
        row = self.model.row_of(self.current_id) if self.current_id is not None else -1
        target = row + delta if row >= 0 else (0 if delta > 0 else n - 1)
        if (n == 0 or not 0 <= target < n) and self._step_layer(1 if delta > 0 else -1):
            return
        if n:
            self._select_row(target % n)

    def _step_layer(self, direction: int) -> bool:
        """Move to the nearest layer in ``direction`` whose queue is not empty, at its first
        (or, going back, last) instance; False when there is none."""
        i = self.layer_combo.currentIndex() + direction
        while 0 <= i < self.layer_combo.count():
            layer = self.layer_combo.itemData(i)
            if isinstance(layer, PseudoLabelLayer) and self.model.count_for(layer):
                self.layer_combo.setCurrentIndex(i)
                n = len(self.model.ids)
                if n:
                    self._select_row(0 if direction > 0 else n - 1)
                    return True
            i += direction
        return False

    # -- preview ---------------------------------------------------------------------------------
    def _request_preview(self, rec: _io.InstanceRecord) -> None:
        src = self.layer.raster.source if self.layer else None
        if src is None:
            return
        minx, miny, maxx, maxy = rec.bounds
        size = max(maxx - minx, maxy - miny) * 1.8
        size = max(size, 24 * src.map_pixel_size)
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        corners = [(cx - size / 2, cy + size / 2), (cx + size / 2, cy - size / 2)]
        corners += [(cx + size / 2, cy + size / 2), (cx - size / 2, cy - size / 2)]
        need = _io.view_window(src, corners, PREVIEW_PX, PREVIEW_PX)
        if need is None:
            return
        window, ow, oh = need
        self._preview_for = rec.id
        job = self.ctx.io.submit(
            lambda: call(_io.read_view, src, window, ow, oh), "Preview instance", notify=False
        )
        job.finished.connect(self._on_preview)

    @Slot(object)
    def _on_preview(self, image: _io.ViewImage) -> None:
        rec = self.layer.records.get(self._preview_for) if self.layer else None
        if rec is None or rec.id != self.current_id:
            return
        pm = _pixmap(image.rgba)
        inv = ~_affine(image.transform)
        pts = [inv * (x, y) for x, y in rec.ring.tolist()]
        scale = min(PREVIEW_PX / pm.width(), PREVIEW_PX / pm.height())
        big = pm.scaled(
            round(pm.width() * scale),
            round(pm.height() * scale),
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        p = QPainter(big)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        colour = {"accepted": ACCEPTED_COLOUR, "rejected": REJECTED_COLOUR}.get(
            rec.review, SELECTED_COLOUR
        )
        outline = QPolygonF([QPointF(x * scale, y * scale) for x, y in pts])
        p.setPen(QPen(QColor(0, 0, 0, 160), 4))
        p.drawPolygon(outline)
        p.setPen(QPen(QColor(colour), 2))
        p.drawPolygon(outline)
        p.end()
        self.preview.setPixmap(big)

    # -- edits -------------------------------------------------------------------------------------
    def review(self, state: str) -> None:
        """Set the current instance's review state in the cache, then move to the next one."""
        layer, iid = self.layer, self.current_id
        if layer is None or iid is None:
            return
        row = self.model.row_of(iid)
        job = self.ctx.edits.submit(
            lambda: call(_io.set_review, layer.cache_path, [iid], state),
            f"Review instance {iid}",
        )
        job.finished.connect(
            lambda ids, layer=layer, iid=iid, state=state, row=row: self._after_review(
                layer, iid, state, row, ids
            )
        )

    def _after_review(
        self,
        layer: PseudoLabelLayer,
        iid: int,
        state: str,
        row: int,
        ids: list[int] | None = None,
    ) -> None:
        # ids: this instance and the copies of its object in overlapping tiles (ADR 0047).
        ids = list(ids) if ids else [iid]
        tiles = []
        for one in ids:
            rec = layer.records.get(one)
            layer.set_review(one, state)
            if rec is not None and rec.tile_id not in tiles:
                tiles.append(rec.tile_id)
        if tiles:
            # A decision hides the look-alikes it stands for; an undone one gives the stage's
            # result back, which may be another instance (ADR 0046): read the tiles again.
            layer.refresh(tile_ids=tiles)
        copies = len(ids) - 1
        if copies == 1:
            also = ", and its copy in the overlapping tile"
        else:
            also = f", and its {copies} copies in overlapping tiles" if copies else ""
        self.status.setText(f"Instance {iid}{also}: {state} (saved to the cache).")
        if layer is not self.layer:
            return
        self.model.reload()
        if self.model.pending_only and state != "pending":
            # The reviewed row left the queue: the next one moved into its place.
            if self.model.ids:
                self._select_row(min(max(row, 0), len(self.model.ids) - 1))
            elif self._step_layer(1):  # this raster is done: on to the next one's queue
                self.status.setText(
                    f"{self.status.text()} {layer.name} is reviewed; on to {self.layer.name}."
                )
            else:
                self._show_current(None)
        else:
            r = self.model.row_of(iid)
            if r >= 0 and r + 1 < len(self.model.ids) and state != "pending":
                self._select_row(r + 1)
            else:
                self._show_current(iid)

    def delete_current(self) -> None:
        layer, iid = self.layer, self.current_id
        if layer is None or iid is None:
            return
        row = self.model.row_of(iid)
        job = self.ctx.edits.submit(
            lambda: call(_io.delete_instances, layer.cache_path, [iid]),
            f"Delete instance {iid}",
        )
        job.finished.connect(
            lambda _ids, layer=layer, iid=iid, row=row: self._after_delete(layer, iid, row)
        )

    def _after_delete(self, layer: PseudoLabelLayer, iid: int, row: int) -> None:
        rec = layer.records.get(iid)
        layer.remove_record(iid)
        if rec is not None:
            # A candidate the deleted instance stood for shows again (ADR 0046), in the
            # tiles beside too.
            layer.refresh(tile_ids=layer.tiles_around(rec.tile_id))
        self.status.setText(f"Instance {iid} deleted from the cache.")
        if layer is self.layer:
            self.current_id = None
            self.model.reload()
            if self.model.ids:
                self._select_row(min(max(row, 0), len(self.model.ids) - 1))
            else:
                self._show_current(None)

    # -- drawing -----------------------------------------------------------------------------------
    @Slot(bool)
    def _on_draw_clicked(self, checked: bool) -> None:
        if checked:
            self.start_drawing()
        elif self.ctx.map_view is not None:
            self.ctx.map_view.set_tool("pan")

    def start_drawing(self) -> None:
        view = self.ctx.map_view
        if view is None or self.layer is None or self.layer.raster.source is None:
            self.draw_btn.setChecked(False)
            self.status.setText("Open a raster and its cache before drawing.")
            return
        self._drawing = True
        view.set_tool("draw")
        self.draw_btn.setChecked(True)
        self.status.setText(
            "Click the corners of the panel on the map; double-click or Enter to finish, "
            "Esc to cancel."
        )

    @Slot(str)
    def _on_tool(self, tool: str) -> None:
        if tool != "draw":
            self.draw_btn.setChecked(False)
            if self._drawing:
                self._drawing = False
        if tool != "split":
            self.split_btn.setChecked(False)

    @Slot(object)
    def _on_polygon(self, ring) -> None:
        layer = self.layer
        if layer is None or layer.raster.source is None:
            return
        self.add_polygon(ring)

    def add_polygon(self, ring) -> None:
        """Store a polygon (map coordinates) as a human instance of the current layer."""
        layer = self.layer
        src = layer.raster.source
        info = src.info
        tiling = self.ctx.project.config.tiling
        placement = _io.placement_of(src)
        tiles = list(layer.tiles.values())
        args = (
            layer.cache_path,
            info.fingerprint,
            list(ring),
            placement,
            (info.width, info.height),
            tiles,
            tiling.tile_size,
            tiling.overlap,
        )
        job = self.ctx.edits.submit(lambda: call(_io.add_drawn, *args), "Add a drawn panel")
        job.finished.connect(lambda rec, layer=layer: self._after_add(layer, rec))
        self.status.setText("Saving the drawn panel…")

    def _after_add(self, layer: PseudoLabelLayer, rec: _io.InstanceRecord) -> None:
        layer.add_record(rec)
        # A candidate the drawn panel covers (mask IoU >= 0.5) is now hidden behind it in the
        # cache (ADR 0046), and its outline in the tiles beside when read: read them again so
        # the map and the queue drop them too.
        layer.refresh(tile_ids=layer.tiles_around(rec.tile_id))
        self.status.setText(f"Drawn panel stored as instance {rec.id} (human, accepted).")
        if layer is self.layer:
            self.model.reload()
            self._show_current(rec.id, centre=False)

    # -- splitting ---------------------------------------------------------------------------------
    @Slot(bool)
    def _on_split_clicked(self, checked: bool) -> None:
        if checked:
            self.start_splitting()
        elif self.ctx.map_view is not None:
            self.ctx.map_view.set_tool("pan")

    def start_splitting(self) -> None:
        view = self.ctx.map_view
        if view is None or self.layer is None or self.layer.raster.source is None:
            self.split_btn.setChecked(False)
            self.status.setText("Open a raster and its cache before splitting.")
            return
        if self.current_id is None:
            self.split_btn.setChecked(False)
            self.status.setText("Select the instance to split first.")
            return
        view.set_tool("split")
        self.split_btn.setChecked(True)
        self.status.setText(
            f"Click a line across instance {self.current_id} on the map, from outside one side "
            "to outside the other; double-click or Enter to finish, Esc to cancel."
        )

    @Slot(object)
    def _on_line(self, line) -> None:
        self.split_current(line)

    def split_current(self, line) -> None:
        """Split the current instance along a line (map coordinates); the parts go to the cache."""
        layer, iid = self.layer, self.current_id
        if layer is None or iid is None or layer.raster.source is None:
            return
        placement = _io.placement_of(layer.raster.source)
        args = (layer.cache_path, iid, list(line), placement)
        job = self.ctx.edits.submit(
            lambda: call(_io.split_instance, *args), f"Split instance {iid}"
        )
        job.finished.connect(lambda recs, layer=layer, iid=iid: self._after_split(layer, iid, recs))
        self.status.setText(f"Splitting instance {iid}…")

    def _after_split(self, layer: PseudoLabelLayer, iid: int, records) -> None:
        layer.remove_record(iid)
        for rec in records:
            layer.add_record(rec)
        if records:  # the parts hide what they cover together (ADR 0046)
            layer.refresh(tile_ids=layer.tiles_around(records[0].tile_id))
        self.status.setText(
            f"Instance {iid} split into {len(records)}: "
            + ", ".join(str(r.id) for r in records)
            + " (human, saved to the cache)."
        )
        if layer is self.layer:
            self.model.reload()
            self._show_current(iid if iid in layer.records else None, centre=False)


def _affine(t):
    from affine import Affine

    return Affine(*t[:6])

"""The layers panel: order, visibility and opacity of the map's layers, and the confidence
threshold of pseudo-label layers. A view of :class:`~solardesk.gui.layers.LayerList`."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QIcon, QLinearGradient, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSizePolicy,
    QSlider,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from solardesk.core.jobs import counted
from solardesk.gui.layers import Layer, LayerList, PseudoLabelLayer
from solardesk.gui.map_view import (
    _CMAP_STOPS,
    ACCEPTED_COLOUR,
    REJECTED_COLOUR,
    confidence_colour,
)

_KIND_LABEL = {"raster": "raster", "pseudo": "pseudo-labels", "vector": "vector"}


class ConfidenceLegend(QWidget):
    """The confidence colour ramp with the threshold marked, and the review colours."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.threshold = 0.85
        self.setMinimumHeight(64)

    def sizeHint(self) -> QSize:
        return QSize(220, 64)

    def set_threshold(self, t: float) -> None:
        self.threshold = t
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = p.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        p.setFont(font)
        fm = p.fontMetrics()
        text = self.palette().windowText().color()
        ramp = QRectF(8, fm.height() + 4, self.width() - 16, 10)
        grad = QLinearGradient(ramp.topLeft(), ramp.topRight())
        for pos, colour in _CMAP_STOPS:
            grad.setColorAt(pos, colour)
        p.fillRect(ramp, grad)
        # The threshold: a tick across the ramp, its value above it.
        x = ramp.left() + ramp.width() * self.threshold
        p.setPen(QPen(QColor("white"), 2))
        p.drawLine(QPointF(x, ramp.top() - 3), QPointF(x, ramp.bottom() + 3))
        p.setPen(text)
        label = f"threshold {self.threshold:.2f}"
        tw = fm.horizontalAdvance(label)
        lx = min(max(x - tw / 2, ramp.left()), ramp.right() - tw)
        p.drawText(QPointF(lx, fm.ascent() + 1), label)
        y = ramp.bottom() + fm.ascent() + 3
        p.drawText(QPointF(ramp.left(), y), "0")
        p.drawText(QPointF(ramp.right() - fm.horizontalAdvance("1"), y), "1")
        y += fm.height() + 2
        x0 = ramp.left()
        for colour, name, style in (
            (ACCEPTED_COLOUR, "accepted", Qt.PenStyle.SolidLine),
            (REJECTED_COLOUR, "rejected", Qt.PenStyle.DashLine),
        ):
            p.setPen(QPen(colour, 2, style))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(x0, y - 9, 14, 8))
            p.setPen(text)
            p.drawText(QPointF(x0 + 19, y), name)
            x0 += 19 + fm.horizontalAdvance(name) + 14
        p.end()


class LayersPanel(QWidget):
    """List of layers (top of the list = drawn on top) and the selected layer's looks."""

    zoomToLayer = Signal(object)

    def __init__(self, layers: LayerList, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layers = layers
        self._syncing = False
        self.list = QListWidget()
        self.list.setObjectName("layerList")
        self.list.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.list.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.currentItemChanged.connect(self._on_current)
        self.list.model().rowsMoved.connect(self._on_rows_moved)
        self.list.itemDoubleClicked.connect(self._on_double_click)

        style = self.style()
        self.up = self._button(style.standardIcon(QStyle.StandardPixmap.SP_ArrowUp), "Raise layer")
        self.down = self._button(
            style.standardIcon(QStyle.StandardPixmap.SP_ArrowDown), "Lower layer"
        )
        self.zoom = self._button(
            style.standardIcon(QStyle.StandardPixmap.SP_FileDialogContentsView), "Zoom to layer"
        )
        self.remove = self._button(
            style.standardIcon(QStyle.StandardPixmap.SP_DialogDiscardButton), "Remove layer"
        )
        self.up.clicked.connect(lambda: self._shift(-1))
        self.down.clicked.connect(lambda: self._shift(1))
        self.zoom.clicked.connect(self._zoom)
        self.remove.clicked.connect(self._remove)
        buttons = QHBoxLayout()
        for b in (self.up, self.down, self.zoom, self.remove):
            buttons.addWidget(b)
        buttons.addStretch(1)

        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setObjectName("opacitySlider")
        self.opacity.setRange(0, 100)
        self.opacity.valueChanged.connect(self._on_opacity)
        self.opacity_label = QLabel("100 %")
        op_row = QHBoxLayout()
        op_row.addWidget(self.opacity, 1)
        op_row.addWidget(self.opacity_label)

        self.pseudo_box = QGroupBox("Pseudo-labels")
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setObjectName("thresholdSlider")
        self.threshold.setRange(0, 100)
        self.threshold.setToolTip(
            "Confidence at or above which a candidate counts as a pseudo-label "
            "(read-time: changing it recomputes nothing)"
        )
        self.threshold.valueChanged.connect(self._on_threshold)
        self.threshold_label = QLabel("0.85")
        th_row = QHBoxLayout()
        th_row.addWidget(self.threshold, 1)
        th_row.addWidget(self.threshold_label)
        self.legend = ConfidenceLegend()
        self.show_below = QCheckBox("Show candidates below the threshold")
        self.show_below.toggled.connect(self._on_show_below)
        self.show_tiles = QCheckBox("Show computed tiles")
        self.show_tiles.toggled.connect(self._on_show_tiles)
        self.counts = QLabel()
        self.counts.setObjectName("pseudoCounts")
        self.counts.setWordWrap(False)
        self.counts.setToolTip(
            "An object in the overlap of two tiles is stored once per tile, so it is a "
            "candidate, and a pseudo-label, of each; the objects count it once."
        )
        # The objects (copies in overlapping tiles once) are counted by the cache on a worker
        # once the records and the threshold have rested for a second and a half: while a
        # pre-compute adds tiles, the count (a pass over the masks near tile edges) waits.
        self._counts_stale = False
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(1500)
        self._count_timer.timeout.connect(self._count_objects)
        form = QFormLayout(self.pseudo_box)
        form.addRow("Threshold", th_row)
        form.addRow(self.legend)
        form.addRow(self.show_below)
        form.addRow(self.show_tiles)
        form.addRow(self.counts)
        self.pseudo_box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

        looks = QFormLayout()
        looks.addRow("Opacity", op_row)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.list, 1)
        lay.addLayout(buttons)
        lay.addLayout(looks)
        lay.addWidget(self.pseudo_box)

        # A layer added or removed changes one row (a folder of 150 rasters is added in well
        # under a second); a reorder rebuilds the list.
        layers.inserted.connect(self._on_inserted)
        layers.removed.connect(self._on_removed)
        layers.moved.connect(self._rebuild)
        self._watched: set[Layer] = set()
        self._items: dict[Layer, QListWidgetItem] = {}
        self._file_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_FileIcon)
        self._swatches: dict[int, QIcon] = {}
        self._rebuild()

    def _button(self, icon, tip: str) -> QToolButton:
        b = QToolButton()
        b.setIcon(icon)
        b.setToolTip(tip)
        b.setAutoRaise(True)
        return b

    # -- list -------------------------------------------------------------------------------
    @Slot()
    def _rebuild(self, *_args) -> None:
        current = self.current_layer()
        self._syncing = True
        self.list.clear()
        self._items.clear()
        for layer in self.layers.layers:
            self.list.addItem(self._new_item(layer))
        self._syncing = False
        self._keep_a_current(current)

    @Slot(object, int)
    def _on_inserted(self, layer: Layer, index: int) -> None:
        current = self.current_layer()
        self._syncing = True
        self.list.insertItem(index, self._new_item(layer))
        self._syncing = False
        self._keep_a_current(current)

    @Slot(object)
    def _on_removed(self, layer: Layer) -> None:
        current = self.current_layer()
        item = self._items.pop(layer, None)
        if item is not None:
            self._syncing = True
            self.list.takeItem(self.list.row(item))
            self._syncing = False
        self._keep_a_current(current)

    def _keep_a_current(self, current: Layer | None) -> None:
        """The layer that was selected stays selected; without one, the top layer is."""
        if current in self.layers.layers:
            if self.current_layer() is not current:
                self.select(current)
            return
        self.select(self.layers.layers[0] if self.layers.layers else None)

    def _new_item(self, layer: Layer) -> QListWidgetItem:
        item = QListWidgetItem()
        item.setFlags(
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsUserCheckable
            | Qt.ItemFlag.ItemIsDragEnabled
        )
        item.setData(Qt.ItemDataRole.UserRole, layer)
        self._decorate(item, layer)
        self._items[layer] = item
        if layer not in self._watched:
            self._watched.add(layer)
            layer.changed.connect(self._on_layer_changed)
            layer.loadingChanged.connect(self._on_layer_changed)
            layer.failed.connect(self._on_layer_changed)
            if isinstance(layer, PseudoLabelLayer):
                layer.tilesUpdated.connect(self._on_records_changed)
                layer.instanceChanged.connect(self._on_records_changed)
                layer.instanceAdded.connect(self._on_records_changed)
                layer.instanceRemoved.connect(self._on_records_changed)
                layer.objectsCounted.connect(self._update_counts)
                layer.thresholdChanged.connect(self._on_layer_threshold)
            layer.destroyed.connect(lambda _=None, lay=layer: self._watched.discard(lay))
        return item

    def _decorate(self, item: QListWidgetItem, layer: Layer) -> None:
        suffix = ""
        if layer.loading:
            suffix = "  (loading…)"
        elif layer.error:
            suffix = "  (failed)"
        item.setText(f"{layer.name}{suffix}")
        item.setCheckState(Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
        tip = f"{_KIND_LABEL.get(layer.kind, layer.kind)}"
        path = getattr(layer, "path", None) or getattr(layer, "cache_path", None)
        if path:
            tip += f"\n{path}"
        if layer.error:
            tip += f"\n{layer.error}"
            item.setForeground(QColor("#ff6e6e"))
        item.setToolTip(tip)
        if isinstance(layer, PseudoLabelLayer):
            item.setIcon(self._swatch(confidence_colour(0.9)))
        elif layer.kind == "vector":
            item.setIcon(self._swatch(QColor(getattr(layer, "colour", "#00e5ff"))))
        else:
            item.setIcon(self._file_icon)

    def _swatch(self, colour: QColor):
        """A layer's colour square, made once per colour (layers are redecorated at every
        change, and a folder brings hundreds)."""
        key = colour.rgba()
        if key not in self._swatches:
            self._swatches[key] = _swatch(colour)
        return self._swatches[key]

    def _item_of(self, layer: Layer) -> QListWidgetItem | None:
        return self._items.get(layer)

    @Slot()
    def _on_layer_changed(self, *_args) -> None:
        layer = self.sender()
        item = self._item_of(layer) if isinstance(layer, Layer) else None
        if item is not None:
            self._syncing = True
            self._decorate(item, layer)
            self._syncing = False
        if layer is self.current_layer():
            self._show_layer(layer)

    def current_layer(self) -> Layer | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def select(self, layer: Layer | None) -> None:
        item = self._item_of(layer) if layer is not None else None
        if item is not None:
            self.list.setCurrentItem(item)
        else:
            self._show_layer(None)

    @Slot(QListWidgetItem)
    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self._syncing:
            return
        layer = item.data(Qt.ItemDataRole.UserRole)
        if isinstance(layer, Layer):
            layer.set_visible(item.checkState() == Qt.CheckState.Checked)

    @Slot(QListWidgetItem, QListWidgetItem)
    def _on_current(self, item, _prev) -> None:
        layer = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        self.layers.set_active(layer)
        self._show_layer(layer)

    @Slot()
    def _on_rows_moved(self, *_args) -> None:
        order = [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]
        self.layers.layers[:] = [layer for layer in order if layer in self.layers.layers]
        self.layers.moved.emit()

    @Slot(QListWidgetItem)
    def _on_double_click(self, item: QListWidgetItem) -> None:
        self.zoomToLayer.emit(item.data(Qt.ItemDataRole.UserRole))

    def _shift(self, delta: int) -> None:
        layer = self.current_layer()
        if layer is None:
            return
        self.layers.move(layer, self.layers.layers.index(layer) + delta)
        self.select(layer)

    def _zoom(self) -> None:
        layer = self.current_layer()
        if layer is not None:
            self.zoomToLayer.emit(layer)

    def _remove(self) -> None:
        layer = self.current_layer()
        if layer is not None:
            self.layers.remove(layer)

    # -- looks of the selected layer ------------------------------------------------------------
    def _show_layer(self, layer: Layer | None) -> None:
        self._syncing = True
        enabled = layer is not None
        for w in (self.opacity, self.up, self.down, self.zoom, self.remove):
            w.setEnabled(enabled)
        if layer is not None:
            self.opacity.setValue(round(layer.opacity * 100))
            self.opacity_label.setText(f"{round(layer.opacity * 100)} %")
        pseudo = isinstance(layer, PseudoLabelLayer)
        self.pseudo_box.setVisible(pseudo)
        if pseudo:
            self.threshold.setValue(round(layer.threshold * 100))
            self.threshold_label.setText(f"{layer.threshold:.2f}")
            self.legend.set_threshold(layer.threshold)
            self.show_below.setChecked(layer.show_below)
            self.show_tiles.setChecked(layer.show_tiles)
        self._syncing = False
        if pseudo:
            self._update_counts()

    @Slot(int)
    def _on_opacity(self, value: int) -> None:
        self.opacity_label.setText(f"{value} %")
        layer = self.current_layer()
        if layer is not None and not self._syncing:
            layer.set_opacity(value / 100)

    @Slot(int)
    def _on_threshold(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self.legend.set_threshold(value / 100)
        layer = self.current_layer()
        if isinstance(layer, PseudoLabelLayer) and not self._syncing:
            layer.set_threshold(value / 100)

    @Slot(bool)
    def _on_show_below(self, on: bool) -> None:
        layer = self.current_layer()
        if isinstance(layer, PseudoLabelLayer) and not self._syncing:
            layer.set_show_below(on)

    @Slot(bool)
    def _on_show_tiles(self, on: bool) -> None:
        layer = self.current_layer()
        if isinstance(layer, PseudoLabelLayer) and not self._syncing:
            layer.set_show_tiles(on)

    @Slot(float)
    def _on_layer_threshold(self, _value: float) -> None:
        layer = self.sender()
        if layer is self.current_layer():
            self._show_layer(layer)

    @Slot()
    def _on_records_changed(self, *_args) -> None:
        if self.sender() is self.current_layer():
            self._counts_stale = True
        self._update_counts()

    @Slot()
    def _count_objects(self) -> None:
        layer = self.current_layer()
        if isinstance(layer, PseudoLabelLayer):
            layer.count_objects()

    @Slot()
    def _update_counts(self, *_args) -> None:
        layer = self.current_layer()
        if not isinstance(layer, PseudoLabelLayer):
            return
        c = layer.counts()
        known = layer.objects  # (threshold, objects) of the last count
        current = known is not None and known[0] == layer.threshold
        if c["above_threshold"] == 0 or (current and known[1] is None):
            objects = ""  # none to count, or the count failed
        elif current:
            # an object in the overlap of tiles is a record, and a pseudo-label, of each
            objects = f" · {counted(known[1], 'object')}"
        else:
            objects = " · counting objects…"
        self.counts.setText(
            f"{counted(c['total'], 'candidate')} in {counted(len(layer.tiles), 'tile')}\n"
            f"{counted(c['above_threshold'], 'pseudo-label')} (≥ {layer.threshold:.2f}){objects}\n"
            f"{c['accepted']} accepted · {c['rejected']} rejected · {c['pending']} pending"
        )
        if c["above_threshold"] and (not current or self._counts_stale):
            self._counts_stale = False
            self._count_timer.start()


def _swatch(colour: QColor):
    from PySide6.QtGui import QPixmap

    pm = QPixmap(14, 14)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setPen(QPen(colour, 2))
    fill = QColor(colour)
    fill.setAlpha(90)
    p.setBrush(fill)
    p.drawRect(1, 1, 12, 12)
    p.end()
    return QIcon(pm)

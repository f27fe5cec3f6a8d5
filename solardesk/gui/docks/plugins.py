"""Plugins: what loaded, what failed (and why), what is disabled; enable or disable each.

The list is the plugin manager's records (one per entry point). Enabling or disabling is
stored in QSettings and applies when SolarDesk next starts: pluggy plugins and the docks
they contributed cannot be unloaded safely from a running process.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from solardesk.gui.context import AppContext

_HOOKS = {
    "solardesk_precompute_stages": "pre-compute stage",
    "solardesk_detectors": "detector",
    "solardesk_trainers": "trainer",
    "solardesk_dock_widgets": "dock",
    "solardesk_cli_commands": "command",
}
_STATUS_COLOUR = {"ok": "#69f0ae", "failed": "#ff6e6e", "disabled": "#9e9e9e"}


class PluginsDock(QWidget):
    enabledChanged = Signal(str, bool)

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self._syncing = False
        self.table = QTableWidget(0, 4)
        self.table.setObjectName("pluginTable")
        self.table.setHorizontalHeaderLabels(["Enabled", "Plugin", "Version", "Status"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.currentCellChanged.connect(self._on_current)
        self.details = QPlainTextEdit()
        self.details.setObjectName("pluginDetails")
        self.details.setReadOnly(True)
        self.note = QLabel()
        self.note.setObjectName("pluginNote")
        self.note.setWordWrap(True)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setSizes([160, 120])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split, 1)
        lay.addWidget(self.note)
        self.reload()

    def reload(self) -> None:
        records = self.ctx.plugin_manager.records
        disabled = self.ctx.settings.disabled_plugins()
        self._syncing = True
        self.table.setRowCount(len(records))
        for row, r in enumerate(records):
            check = QTableWidgetItem()
            check.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            check.setCheckState(
                Qt.CheckState.Unchecked if r.name in disabled else Qt.CheckState.Checked
            )
            check.setData(Qt.ItemDataRole.UserRole, r.name)
            self.table.setItem(row, 0, check)
            self.table.setItem(row, 1, _cell(r.name, r.value))
            version = f"{r.distribution or ''} {r.version or ''}".strip() or "–"
            self.table.setItem(row, 2, _cell(version))
            status = _cell(r.status, r.error or "")
            status.setForeground(QColor(_STATUS_COLOUR.get(r.status, "#ffffff")))
            self.table.setItem(row, 3, status)
        self._syncing = False
        if records and self.table.currentRow() < 0:
            self.table.setCurrentCell(0, 1)
        self._update_note()

    def _update_note(self) -> None:
        disabled = self.ctx.settings.disabled_plugins()
        loaded_disabled = {r.name for r in self.ctx.plugin_manager.records if r.disabled}
        if disabled != loaded_disabled:
            self.note.setText("Changes take effect when SolarDesk restarts.")
        else:
            n_failed = sum(r.status == "failed" for r in self.ctx.plugin_manager.records)
            self.note.setText(
                f"{n_failed} plugin(s) failed to load; select one to see why."
                if n_failed
                else "All enabled plugins loaded."
            )

    def contributions_of(self, name: str) -> list[str]:
        out = []
        for hook, label in _HOOKS.items():
            try:
                items = self.ctx.plugin_manager.contributions(hook)
            except Exception:  # a broken hook is recorded by the manager
                continue
            out += [f"{label}: {c.title} ({c.id})" for plugin, c in items if plugin == name]
        return out

    @Slot(int, int, int, int)
    def _on_current(self, row: int, _col: int, _prow: int, _pcol: int) -> None:
        records = self.ctx.plugin_manager.records
        if not 0 <= row < len(records):
            self.details.clear()
            return
        r = records[row]
        lines = [f"{r.name}  —  {r.status}", f"entry point: {r.value}"]
        if r.distribution:
            lines.append(f"distribution: {r.distribution} {r.version or ''}")
        if r.error:
            lines += ["", "Error:", r.error]
        contributions = self.contributions_of(r.name) if r.ok else []
        if contributions:
            lines += ["", "Contributes:", *[f"  • {c}" for c in contributions]]
        self.details.setPlainText("\n".join(lines))

    @Slot(QTableWidgetItem)
    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._syncing or item.column() != 0:
            return
        name = item.data(Qt.ItemDataRole.UserRole)
        enabled = item.checkState() == Qt.CheckState.Checked
        self.ctx.settings.set_plugin_enabled(name, enabled)
        self._update_note()
        self.enabledChanged.emit(name, enabled)


def _cell(text: str, tip: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if tip:
        item.setToolTip(tip)
    return item

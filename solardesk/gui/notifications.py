"""One place where errors and messages from workers, subprocesses and plugins end up.

:class:`NotificationCenter` is the model (a list of :class:`Notification` records and a
``posted`` signal); :class:`NotificationPanel` lists them with their details and
:class:`NotificationIndicator` counts unread warnings and errors in the status bar. Nothing
that a worker, a subprocess or a plugin does may crash the app: their failures are posted
here, and so is any exception that escapes a Qt slot (through ``sys.excepthook``).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from solardesk.gui.workers import JobError

_log = logging.getLogger("solardesk.gui")

LEVELS = ("info", "warning", "error")
_MAX_KEPT = 500


@dataclass(frozen=True)
class Notification:
    level: str
    source: str
    message: str
    details: str = ""
    time: datetime = field(default_factory=datetime.now)

    def summary(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


class NotificationCenter(QObject):
    """The notification model; post from the GUI thread (workers go through job signals)."""

    posted = Signal(object)
    cleared = Signal()
    unreadChanged = Signal(int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.items: deque[Notification] = deque(maxlen=_MAX_KEPT)
        self.unread = 0
        self._old_excepthook = None

    def post(self, level: str, source: str, message: str, details: str = "") -> Notification:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        n = Notification(level, source, message, details)
        self.items.append(n)
        log = {"info": _log.info, "warning": _log.warning, "error": _log.error}[level]
        log("%s", n.summary())
        if level != "info":
            self.unread += 1
            self.unreadChanged.emit(self.unread)
        self.posted.emit(n)
        return n

    def info(self, source: str, message: str, details: str = "") -> Notification:
        return self.post("info", source, message, details)

    def warning(self, source: str, message: str, details: str = "") -> Notification:
        return self.post("warning", source, message, details)

    def error(self, source: str, message: str, details: str = "") -> Notification:
        return self.post("error", source, message, details)

    @Slot(object)
    def post_job_error(self, error: JobError) -> None:
        """A worker's failure: bad input is a warning, anything else an error with traceback."""
        self.post(
            "warning" if error.user_error else "error", error.job, error.message, error.details
        )

    def mark_read(self) -> None:
        self.unread = 0
        self.unreadChanged.emit(0)

    def clear(self) -> None:
        self.items.clear()
        self.mark_read()
        self.cleared.emit()

    def errors(self) -> list[Notification]:
        return [n for n in self.items if n.level == "error"]

    # -- exceptions that escape Qt slots --------------------------------------------------
    def install_excepthook(self) -> None:
        """Post uncaught exceptions (e.g. raised in a slot) instead of letting them kill the app."""
        if self._old_excepthook is None:
            self._old_excepthook = sys.excepthook
            sys.excepthook = self._excepthook

    def uninstall_excepthook(self) -> None:
        if self._old_excepthook is not None:
            sys.excepthook = self._old_excepthook
            self._old_excepthook = None

    def _excepthook(self, exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self._old_excepthook(exc_type, exc, tb)
            return
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            self.error("SolarDesk", f"{exc_type.__name__}: {exc}", details)
        except Exception:  # the model itself is gone (shutdown): fall back to stderr
            sys.__excepthook__(exc_type, exc, tb)


class NotificationPanel(QWidget):
    """The notification area: one line per message, details of the selected one below."""

    def __init__(self, center: NotificationCenter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.center = center
        self.list = QListWidget()
        self.list.setObjectName("notificationList")
        self.list.setWordWrap(True)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setPlaceholderText("Select a message to see its details.")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.list)
        split.addWidget(self.details)
        split.setSizes([200, 80])
        clear = QPushButton("Clear")
        clear.clicked.connect(center.clear)
        bar = QHBoxLayout()
        bar.addStretch(1)
        bar.addWidget(clear)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)
        lay.addLayout(bar)
        style = self.style()
        self._icons = {
            "info": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxInformation),
            "warning": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning),
            "error": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical),
        }
        for n in center.items:
            self._add(n)
        center.posted.connect(self._add)
        center.cleared.connect(self._on_cleared)
        self.list.currentItemChanged.connect(self._show_details)

    @Slot(object)
    def _add(self, n: Notification) -> None:
        item = QListWidgetItem(self._icons[n.level], f"{n.time:%H:%M:%S}  {n.summary()}")
        item.setData(Qt.ItemDataRole.UserRole, n)
        item.setToolTip(n.message)
        self.list.addItem(item)
        while self.list.count() > _MAX_KEPT:
            self.list.takeItem(0)
        self.list.scrollToBottom()

    @Slot()
    def _on_cleared(self) -> None:
        self.list.clear()
        self.details.clear()

    @Slot(QListWidgetItem, QListWidgetItem)
    def _show_details(self, item: QListWidgetItem | None, _prev=None) -> None:
        if item is None:
            self.details.clear()
            return
        n: Notification = item.data(Qt.ItemDataRole.UserRole)
        text = f"[{n.level}] {n.source}\n{n.message}"
        if n.details:
            text += "\n\n" + n.details
        self.details.setPlainText(text)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.center.mark_read()


class NotificationIndicator(QToolButton):
    """Status-bar button: the number of unread warnings and errors; click to open the area."""

    def __init__(self, center: NotificationCenter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.center = center
        self.setAutoRaise(True)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning))
        self.setToolTip("Messages from jobs, the trainer and plugins")
        center.unreadChanged.connect(self._update)
        self._update(center.unread)

    @Slot(int)
    def _update(self, unread: int) -> None:
        self.setText(f"{unread}" if unread else "")
        self.setVisible(unread > 0)

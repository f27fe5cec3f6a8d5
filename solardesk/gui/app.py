"""``solardesk gui [PROJECT]``: create the application, the main window, and run.

:func:`create_main_window` builds the shared objects (settings, plugin manager, job runners,
notification centre, layers, project) and the window; tests call it with their own settings
and plugin manager. :func:`main` is what ``solardesk gui`` calls.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from solardesk.gui.app_settings import APPLICATION, ORGANIZATION, AppSettings
from solardesk.gui.context import AppContext, default_solardesk_command
from solardesk.gui.layers import LayerList
from solardesk.gui.main_window import MainWindow
from solardesk.gui.notifications import NotificationCenter
from solardesk.gui.project import ProjectSession
from solardesk.gui.workers import JobRunner

#: ``SOLARDESK_GUI_EXIT_AFTER=SECONDS`` closes the window after that long, prints the errors
#: and warnings posted meanwhile to stderr, and makes :func:`main` return 1 if any was an
#: error (install smoke tests and the GUI tests use it).
EXIT_AFTER_ENV = "SOLARDESK_GUI_EXIT_AFTER"


def application(argv: list[str] | None = None) -> QApplication:
    """The process's QApplication (created once, with SolarDesk's names and look)."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(argv if argv is not None else sys.argv[:1])
        app.setOrganizationName(ORGANIZATION)
        app.setApplicationName(APPLICATION)
        app.setApplicationDisplayName("SolarDesk")
        app.setDesktopFileName("solardesk")
        apply_theme(app)
    return app


def apply_theme(app: QApplication) -> None:
    """Fusion with a dark palette: imagery reads best on a dark frame."""
    app.setStyle("Fusion")
    p = QPalette()
    base, window, text = QColor("#232427"), QColor("#2d2f33"), QColor("#e6e6e6")
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, window)
    p.setColor(QPalette.ColorRole.ToolTipBase, QColor("#3a3d42"))
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, window)
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.BrightText, QColor("#ff5252"))
    p.setColor(QPalette.ColorRole.Highlight, QColor("#2f7fd1"))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    p.setColor(QPalette.ColorRole.Link, QColor("#64b5f6"))
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor("#8a8d93"))
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
        QPalette.ColorRole.WindowText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#777a80"))
    app.setPalette(p)
    # Fusion draws an unchecked box in a dark frame that vanishes on a dark palette.
    icons = Path(__file__).with_name("icons").as_posix()
    app.setStyleSheet(
        "QCheckBox::indicator, QAbstractItemView::indicator, QGroupBox::indicator "
        "{ width: 14px; height: 14px; }"
        f"QCheckBox::indicator:unchecked, QAbstractItemView::indicator:unchecked, "
        f"QGroupBox::indicator:unchecked {{ image: url({icons}/unchecked.svg); }}"
        f"QCheckBox::indicator:checked, QAbstractItemView::indicator:checked, "
        f"QGroupBox::indicator:checked {{ image: url({icons}/check.svg); }}"
    )


def create_main_window(
    *,
    settings: AppSettings | None = None,
    plugin_manager=None,
    solardesk_command: list[str] | None = None,
) -> MainWindow:
    """Build the app's shared objects and its main window (not shown)."""
    application()
    settings = settings or AppSettings(
        QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)
    )
    if plugin_manager is None:
        from solardesk.plugin_api import PluginManager

        plugin_manager = PluginManager()
        plugin_manager.discover(disabled=settings.disabled_plugins())
    notifications = NotificationCenter()
    cores = os.cpu_count() or 2
    jobs = JobRunner("jobs", max_threads=2, on_error=notifications.post_job_error)
    io = JobRunner("io", max_threads=max(2, min(4, cores)), on_error=notifications.post_job_error)
    edits = JobRunner("edits", max_threads=1, on_error=notifications.post_job_error)
    ctx = AppContext(
        settings=settings,
        plugin_manager=plugin_manager,
        notifications=notifications,
        jobs=jobs,
        io=io,
        edits=edits,
        layers=LayerList(io),
        project=ProjectSession(),
        solardesk_command=solardesk_command or default_solardesk_command(),
    )
    window = MainWindow(ctx)
    # The long-lived QObjects live as long as the window.
    for obj in (notifications, jobs, io, edits, ctx.layers, ctx.project):
        obj.setParent(window)
    return window


def main(paths: Sequence[str | Path] | str | Path = ()) -> int:
    """Run the desktop app, optionally opening ``paths`` (a .json project, rasters, folders,
    vector files, a mask cache: :meth:`MainWindow.open_paths`)."""
    app = application()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C in the terminal quits
    window = create_main_window()
    window.ctx.notifications.install_excepthook()
    window.show()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if paths:
        window.open_paths(paths)
    exit_after = os.environ.get(EXIT_AFTER_ENV)
    if exit_after:
        window.confirm_unsaved = False
        QTimer.singleShot(int(float(exit_after) * 1000), window.close)
    code = app.exec()
    window.ctx.notifications.uninstall_excepthook()
    if exit_after:
        # A timed run (tests, screenshots) reports what the Messages panel held.
        for n in window.ctx.notifications.items:
            if n.level in ("error", "warning"):
                print(f"{n.level}: {n.summary()}", file=sys.stderr)
        if window.ctx.notifications.errors():
            return 1
    return code

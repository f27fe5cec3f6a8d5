"""The plugins dock (loaded / failed / disabled, persisted) and the one notification area."""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt, QTimer

from solardesk.gui.workers import call
from solardesk.plugin_api import DockWidget, hookimpl
from tests.gui.conftest import until


def test_plugins_dock_lists_records_and_persists_enable(qtbot, window, app_settings):
    dock = window.plugins
    table = dock.table
    names = [table.item(r, 1).text() for r in range(table.rowCount())]
    assert names == ["fake", "broken"]
    assert table.item(0, 3).text() == "ok"
    assert table.item(1, 3).text() == "failed"
    table.setCurrentCell(1, 1)
    assert "No module named 'torch'" in dock.details.toPlainText()
    table.setCurrentCell(0, 1)
    assert "pre-compute stage: Checkerboard (tests) (fake)" in dock.details.toPlainText()
    table.item(0, 0).setCheckState(Qt.CheckState.Unchecked)
    assert app_settings.disabled_plugins() == {"fake"}
    assert "restarts" in dock.note.text()
    table.item(0, 0).setCheckState(Qt.CheckState.Checked)
    assert app_settings.disabled_plugins() == set()


def test_disabled_plugins_are_not_loaded_at_start(app_settings, qtbot):
    from solardesk.gui.app import create_main_window

    app_settings.set_plugin_enabled("spectral", False)
    w = create_main_window(settings=app_settings)  # real discovery of the entry points
    qtbot.addWidget(w)
    w.confirm_unsaved = False
    rec = next(r for r in w.ctx.plugin_manager.records if r.name == "spectral")
    assert rec.status == "disabled"
    w.close()


def test_failed_plugin_worker_error_and_slot_exception_reach_the_notification_area(qtbot, window):
    center = window.ctx.notifications
    # A plugin that failed to load was reported when the window opened.
    assert any(n.source == "plugin broken" and n.level == "warning" for n in center.items)

    def boom():
        raise ZeroDivisionError("division by zero in a worker")

    job = window.ctx.jobs.submit(lambda: call(boom), "Failing job")
    with qtbot.waitSignal(job.errored, timeout=5000):
        pass
    until(lambda: any("division by zero" in n.message for n in center.items))
    n = next(n for n in center.items if "division by zero" in n.message)
    assert n.level == "error" and "Traceback" in n.details
    panel = window.messages
    assert any("division by zero" in panel.list.item(i).text() for i in range(panel.list.count()))
    assert window.indicator.isVisibleTo(window) and int(window.indicator.text()) >= 1
    panel.list.setCurrentRow(panel.list.count() - 1)
    assert "ZeroDivisionError" in panel.details.toPlainText()

    # An exception escaping a slot is posted instead of killing the app.
    old = sys.excepthook
    center.install_excepthook()
    try:
        sys.excepthook(ValueError, ValueError("bad slot"), None)
    finally:
        center.uninstall_excepthook()
    assert sys.excepthook is old
    assert any("bad slot" in n.message for n in center.items)


class _DockPlugin:
    @hookimpl
    def solardesk_dock_widgets(self):
        return [
            DockWidget(id="hello", title="Hello", target="tests.gui.test_plugins_messages:hello"),
            DockWidget(id="bad", title="Broken dock", target="tests.gui.test_plugins_messages:bad"),
        ]


def hello(ctx):
    from PySide6.QtWidgets import QLabel

    return QLabel(f"{len(ctx.layers)} layers")


def bad():
    raise RuntimeError("this dock cannot be built")


def test_plugin_docks_are_added_and_a_broken_one_is_reported(qtbot, make_window, plugin_manager):
    plugin_manager.register(_DockPlugin(), "docks")
    w = make_window()
    assert "docks.hello" in w.docks
    assert w.docks["docks.hello"].widget().text() == "0 layers"
    assert "docks.bad" not in w.docks
    assert any("cannot be built" in n.message for n in w.ctx.notifications.items)
    QTimer.singleShot(0, lambda: None)

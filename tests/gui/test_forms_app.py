"""Forms generated from pydantic settings, the job runner, and ``solardesk gui`` itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from solardesk.config import RasterSettings, TilingSettings
from solardesk.errors import ConfigError
from solardesk.gui.forms import SettingsForm
from solardesk.gui.workers import JobRunner
from tests.gui.conftest import until
from tests.gui.fake_stage import FakeSettings


def test_form_from_settings_has_bounds_tooltips_and_validates(qtbot):
    form = SettingsForm(TilingSettings)
    qtbot.addWidget(form)
    size = form.editors["tile_size"].widget
    assert (size.minimum(), size.maximum(), size.value()) == (32, 8192, 512)
    assert form.labels["tile_size"].text() == "Tile size (px)"
    assert "Square tile side" in size.toolTip()
    form.set_values({"tile_size": 256, "overlap": 300})
    with pytest.raises(ConfigError):
        form.model()
    assert form.error_label.isVisibleTo(form) and "overlap" in form.error_label.text()
    form.set_values({"tile_size": 256, "overlap": 32})
    assert form.model() == TilingSettings(tile_size=256, overlap=32)


def test_form_optional_tuple_and_read_time(qtbot):
    form = SettingsForm(RasterSettings)
    qtbot.addWidget(form)
    assert form.values()["bands"] is None
    form.editors["bands"].set([4, 3, 2])
    assert form.editors["bands"].widget.text() == "4, 3, 2"
    assert form.model().bands == (4, 3, 2)
    fake = SettingsForm(FakeSettings, {"size": 12})
    qtbot.addWidget(fake)
    assert fake.values() == {"threshold": 0.6, "size": 12, "work_ms": 20.0}
    assert fake.labels["threshold"].font().italic() and not fake.labels["size"].font().italic()
    assert "read-time" in fake.editors["threshold"].widget.toolTip()


def test_a_schema_version_is_a_constant_not_an_editor(qtbot):
    from solardesk.config import ProjectConfig

    form = SettingsForm(ProjectConfig)
    qtbot.addWidget(form)
    assert "version" not in form.editors and "version" not in form.labels
    assert form.values()["version"] == 1 and form.model().version == 1
    form.set_values({"version": 1, "name": "Bolzano"})
    assert form.model().name == "Bolzano"


def test_job_runner_progress_is_throttled_and_cancel_closes_the_generator(qtbot):
    runner = JobRunner("test", 1)
    closed = []

    def job():
        try:
            yield from range(100000)
        finally:
            closed.append(True)

    seen = []
    j = runner.submit(job, "fast", progress_interval=0.05)
    j.progress.connect(seen.append)
    with qtbot.waitSignal(j.finished, timeout=10000):
        pass
    assert seen[-1] == 99999 and len(seen) < 1000  # coalesced, the last one kept

    def slow():
        try:
            i = 0
            while True:
                i += 1
                yield i
        finally:
            closed.append("slow")

    j2 = runner.submit(slow, "slow")
    until(lambda: j2.last_progress is not None, timeout=5000)
    with qtbot.waitSignal(j2.cancelled, timeout=5000):
        j2.cancel()
    assert "slow" in closed and j2.state == "cancelled"
    assert runner.shutdown(2000)


def test_ended_comes_after_every_receiver_of_the_last_signal(qtbot):
    """A dock's "finished" slot runs before the job's "ended", also when the worker is held up
    between posting one receiver's call and the next (a loaded machine; here a direct receiver
    that sleeps). Before, "ended" came from a zero timer started by the job's own "finished"
    slot and could run first: the pre-compute dock then read "ended" with its status still at
    the last progress line."""
    import time

    from PySide6.QtCore import QObject, Qt, Slot

    order = []

    class Dock(QObject):
        @Slot(object)
        def on_finished(self, _result) -> None:
            order.append("finished")

    dock = Dock()
    runner = JobRunner("order", 1)

    def job():
        yield 1
        return "done"

    j = runner.submit(job, "order")
    j.finished.connect(lambda _r: time.sleep(0.3), Qt.ConnectionType.DirectConnection)
    j.finished.connect(dock.on_finished)
    j.ended.connect(lambda: order.append("ended"))
    until(lambda: len(order) == 2, timeout=5000)
    assert order == ["finished", "ended"]
    assert runner.shutdown(2000)


def test_solardesk_gui_command_opens_what_it_is_given_and_exits_cleanly(scene_dir, tmp_path):
    """A raster and a vector file, as `solardesk gui A B`: an error would exit with 1, and a
    timed run prints its warnings (a file it could not open is one, naming the file)."""
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "SOLARDESK_GUI_EXIT_AFTER": "2",
        "XDG_CONFIG_HOME": str(tmp_path),
        "HOME": str(tmp_path),
    }
    out = subprocess.run(
        [
            sys.executable,
            *("-m", "solardesk", "gui"),
            *(str(scene_dir / name) for name in ("truth.geojson", "scene.tif")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert "scene.tif" not in out.stderr and "truth.geojson" not in out.stderr, out.stderr


def test_emitting_signals_keeps_true_alive():
    """PySide6 6.12.0's ``SignalInstance.emit()`` returned True and gave back a reference to it
    that it never took: a GUI session aborted ("Fatal Python error: bool_dealloc") after about
    as many emits as True had references (some 10 000: a pre-compute's progress at 20 a
    second, in minutes), and the GUI tests at exit. pyproject.toml keeps that release out;
    this catches a later one that does the same."""
    import gc

    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        changed = Signal()
        value = Signal(int)

    e = Emitter()
    e.changed.connect(lambda: None)
    gc.collect()
    before = sys.getrefcount(True)
    for i in range(200):
        e.changed.emit()
        e.value.emit(i)
    gc.collect()
    assert sys.getrefcount(True) - before > -50, "emit() gives back references to True"

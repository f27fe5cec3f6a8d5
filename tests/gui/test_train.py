"""The train dock against the JSON-lines contract of ``solardesk train`` (a fake trainer)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.gui.conftest import STALL_LIMIT_S, StallMeter, pause, until


def _config(tmp_path, **kw):
    cfg = {"epochs": 3, "steps": 20, "sleep": 0.005, **kw}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    return path


def test_training_runs_plots_and_stays_responsive(qtbot, window, tmp_path):
    dock = window.train
    window.show_dock("train")
    pause(300)  # the dock's first paint is not part of training
    dock.config_edit.setText(str(_config(tmp_path, epochs=4, steps=50, sleep=0.002)))
    # 200 progress events in about a second, plotted live.
    meter = StallMeter()
    meter.start()
    assert dock.start()
    until(lambda: not dock.running, timeout=30000)
    worst, at = meter.stop(), meter.worst_at
    print(f"training: worst stall {worst * 1000:.0f} ms at {at:.2f} s")
    assert worst < STALL_LIMIT_S, (
        f"the event loop stalled {worst * 1000:.0f} ms, {at:.2f} s into training"
    )
    assert dock.fields["device"].text() == "cpu"
    assert dock.fields["epoch"].text() == "4 / 4"
    assert len(dock.loss_x) == 200 and dock.loss_y[-1] < dock.loss_y[0]
    x, _y = dock.loss_curve.getData()
    assert len(x) == 200
    assert set(dock.metrics) == {"val_loss", "ap50"}
    assert dock.curves["ap50"].getData()[1].tolist() == [0.2, 0.4, 0.6000000000000001, 0.8]
    assert dock.fields["checkpoint"].text() == "ckpt_epoch4.pt"
    assert dock.status.text() == "Training finished."
    assert dock.progress.value() == dock.progress.maximum() == 200
    assert window.ctx.project.gui("train_config").endswith("train.json")


def test_a_trainer_that_fails_while_stopping_is_an_error(qtbot, window, tmp_path, monkeypatch):
    """Asked to stop, the trainer failed to save (a full disk) and exited 1: that was shown
    as a clean stop ("Press Resume"), with no message at all."""
    dock = window.train
    monkeypatch.setenv("FAKE_TRAIN_FAIL_ON_STOP", "1")
    dock.config_edit.setText(str(_config(tmp_path, epochs=3, steps=40, sleep=0.01)))
    dock.start()
    until(lambda: len(dock.loss_x) >= 5, timeout=20000)
    dock.stop()
    until(lambda: not dock.running, timeout=10000)
    assert dock.status.text().startswith("Training stopped unexpectedly (exited with code 1)")
    err = window.ctx.notifications.errors()[-1]
    assert "without finishing" in err.message and "No space left" in err.details


def test_stop_then_resume(qtbot, window, tmp_path):
    dock = window.train
    dock.config_edit.setText(str(_config(tmp_path, epochs=3, steps=40, sleep=0.01)))
    dock.start()
    until(lambda: len(dock.loss_x) >= 45, timeout=20000)
    dock.stop()
    assert dock.stop_btn.text() == "Force stop"
    until(lambda: not dock.running, timeout=10000)
    finished = [e for e in dock.events if e["event"] == "finished"]
    assert finished and finished[-1]["stopped"] is True
    assert "Resume" in dock.status.text()
    assert dock.resume_btn.isEnabled() and dock.start_btn.isEnabled()
    dock.start(resume=True)
    until(lambda: not dock.running, timeout=20000)
    started = [e for e in dock.events if e["event"] == "started"]
    assert started[-1]["resumed_from"] == "epoch 1"
    assert dock.status.text() == "Training finished."
    # The loss curve kept the first run's steps and went on from the resumed epoch.
    assert dock.loss_x[-1] == 120


def test_closing_during_a_long_step_stops_the_training_cleanly(
    qtbot, window, tmp_path, monkeypatch
):
    """Closing the window while a step runs asks first; "Cancel" keeps the window and the
    training, "Yes" waits for the step to end and the checkpoint to be saved, however long the
    step (before, the trainer was killed after 3 s, losing the epoch; a CPU step of Mask R-CNN
    can take longer)."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QMessageBox

    asked = []
    answers = {"Training in progress": [QMessageBox.StandardButton.Cancel,
                                        QMessageBox.StandardButton.Yes]}  # fmt: skip

    def question(parent, title, text, *args, **kwargs):
        asked.append(title)
        return answers[title].pop(0)

    monkeypatch.setattr(QMessageBox, "question", question)
    dock = window.train
    dock.config_edit.setText(str(_config(tmp_path, epochs=1, steps=20, sleep=3.5)))
    assert dock.start()
    until(lambda: len(dock.loss_x) >= 1, timeout=20000)
    window.confirm_unsaved = True
    window.ctx.project.dirty = False  # (no "Save the project?" question first)
    assert not window.close()  # Cancel
    assert dock.running and asked == ["Training in progress"]
    from PySide6.QtCore import QTimer
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    dismissed = []

    def dismiss() -> None:  # Esc and the close button: the trainer goes on stopping
        dialog = QApplication.activeModalWidget()
        dismissed.append(type(dialog).__name__)
        QTest.keyClick(dialog, Qt.Key.Key_Escape)
        dialog.close()
        dismissed.append(dialog.isVisible())

    QTimer.singleShot(500, dismiss)
    waited = time.monotonic()
    assert window.close()  # Yes: the step ends (up to 3.5 s here) and a checkpoint is saved
    assert dismissed == ["_StoppingDialog", True]
    waited = time.monotonic() - waited
    assert not dock.running and asked == ["Training in progress"] * 2
    finished = [e for e in dock.events if e["event"] == "finished"]
    assert finished and finished[-1]["stopped"] is True
    assert any(e["event"] == "checkpoint" for e in dock.events)
    assert waited < 15


def test_trainer_crash_is_reported_and_the_app_lives_on(qtbot, window, tmp_path):
    dock = window.train
    dock.config_edit.setText(str(_config(tmp_path, crash_at=30)))
    dock.start()
    until(lambda: not dock.running, timeout=20000)
    assert "unexpectedly" in dock.status.text()
    errors = window.ctx.notifications.errors()
    assert errors and errors[-1].source == "Training"
    assert "illegal memory access" in errors[-1].details
    assert dock.resume_btn.isEnabled()
    assert window.isVisible()


def test_missing_config_and_unstartable_trainer(qtbot, window, tmp_path):
    dock = window.train
    dock._on_trainer(-1)  # a trainer without a settings model: a config file only
    assert dock.form is None and not dock.form_area.isVisibleTo(dock)
    dock.config_edit.setText(str(tmp_path / "nope.json"))
    assert not dock.start()
    assert "No training config" in dock.status.text()
    dock.process.command = [str(tmp_path / "no-such-program")]
    dock.config_edit.setText(str(_config(tmp_path)))
    assert dock.start()
    until(lambda: not dock.running and "did not start" in dock.status.text(), timeout=5000)
    assert window.ctx.notifications.errors()[-1].source == "Training"


def test_config_form_from_the_trainer_settings_filled_from_the_project(
    qtbot, window, scene_tif, tmp_path
):
    from tests.gui.conftest import wait_raster

    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    window.ctx.project.set_cache(tmp_path / "cache.sqlite")
    window.open_cache(tmp_path / "cache.sqlite")
    window.ctx.layers.of_kind("pseudo")[0].set_threshold(0.66)
    from solardesk.config import RasterSettings

    window.ctx.project.set_raster_settings(RasterSettings(bands=(3, 2, 1), stretch_low=1))
    dock = window.train
    assert dock.form is not None and dock.form_area.isVisibleTo(dock)
    dock.config_edit.setText("")
    dock.fill_from_project()
    values = dock.form.values()
    assert values["cache"] == str((tmp_path / "cache.sqlite").resolve())
    assert values["rasters"] == [str(scene_tif.resolve())]
    assert values["data"]["threshold"] == 0.66
    assert values["raster"]["bands"] in ([3, 2, 1], (3, 2, 1))
    assert values["raster"]["stretch_low"] == 1
    assert dock.config_edit.text().endswith("train.json")
    dock.form.editors["epochs"].set(2)
    dock.form.editors["steps"].set(5)
    dock.form.editors["sleep"].set(0.0)
    assert dock.start()
    until(lambda: not dock.running, timeout=20000)
    saved = json.loads(Path(dock.config_edit.text()).read_text())
    assert saved["epochs"] == 2 and saved["data"]["threshold"] == 0.66
    assert len(dock.loss_x) == 10

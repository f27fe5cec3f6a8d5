"""The train dock with the real ``solardesk train`` (not the fake): a tiny Mask R-CNN on a
synthetic project starts, plots its loss, stops on request with a checkpoint, and resumes."""

from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import Qt

pytest.importorskip("torch")

from tests.gui.conftest import STALL_LIMIT_S, StallMeter, until
from tests.plugins.test_maskrcnn_data import make_project, write_config


@pytest.fixture
def real_window(qtbot, app_settings):
    """The app with the installed plugins (the Mask R-CNN trainer's form) and the real command."""
    from solardesk.gui.app import create_main_window

    w = create_main_window(
        settings=app_settings,
        plugin_manager=None,
        solardesk_command=[sys.executable, "-m", "solardesk"],
    )
    w.confirm_unsaved = False
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


def test_real_training_starts_stops_and_resumes(real_window, tmp_path):
    cache, _ = make_project(tmp_path / "project", n_scenes=2, size=256)
    config = write_config(
        tmp_path,
        cache,
        optim={"epochs": 2},
        run={"max_steps_per_epoch": 4, "threads": 1},
    )
    dock = real_window.train
    real_window.show_dock("train")
    index = dock.trainer_combo.findText("maskrcnn", flags=Qt.MatchFlag.MatchContains)
    assert index >= 0, [dock.trainer_combo.itemText(i) for i in range(dock.trainer_combo.count())]
    dock.trainer_combo.setCurrentIndex(index)
    dock.config_edit.setText(str(config))  # loads it into the trainer's form
    assert dock.form is not None and dock.form.values()["optim"]["epochs"] == 2
    meter = StallMeter()
    meter.start()
    assert dock.start()
    # Stop as soon as the first step is reported: the trainer finishes the step and saves.
    until(lambda: len(dock.loss_x) >= 1 or not dock.running, timeout=240000)
    assert dock.running, [e.get("event") for e in dock.events]
    dock.stop()
    until(lambda: not dock.running, timeout=120000)
    worst = meter.stop()
    print(f"real training: worst stall {worst * 1000:.0f} ms at {meter.worst_at:.2f} s")
    assert worst < STALL_LIMIT_S, (
        f"the event loop stalled {worst * 1000:.0f} ms during real training"
    )
    kinds = [e["event"] for e in dock.events]
    assert kinds[0] == "started" and "checkpoint" in kinds, kinds
    assert dock.events[0]["device"] == "cpu" and dock.fields["device"].text() == "cpu"
    finished = [e for e in dock.events if e["event"] == "finished"]
    assert finished and finished[-1]["stopped"] is True
    assert dock.resume_btn.isEnabled()
    ckpts = sorted((tmp_path / "run").glob("*.pt"))
    assert ckpts, list((tmp_path / "run").iterdir())

    # Resume runs to the end of epoch 2 from the saved checkpoint.
    assert dock.start(resume=True)
    until(lambda: not dock.running, timeout=240000)
    started = [e for e in dock.events if e["event"] == "started"]  # this run's events
    assert started and started[0].get("resumed_from"), started
    assert dock.status.text() == "Training finished."
    assert dock.fields["epoch"].text() == "2 / 2"
    assert all(y == y for y in dock.loss_y)  # every plotted loss is a number (no NaN)

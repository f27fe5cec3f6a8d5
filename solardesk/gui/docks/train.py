"""Train: run ``solardesk train CONFIG`` in a subprocess and follow its JSON-lines events.

Events read (one JSON object per stdout line; ``"event"`` names it, other keys optional):

=============  ==========================================================================
``started``    ``device``, ``epochs``, ``steps_per_epoch`` (or ``steps``), ``resumed_from``
``progress``   ``epoch``, ``step``, ``steps``, ``global_step``, ``total_steps``, ``loss``,
               ``lr``, ``eta_s``
``metrics``    ``epoch`` and any numeric values (``val_loss``, ``ap50``…), plotted per epoch
``checkpoint`` ``path``, ``epoch``
``finished``   ``stopped`` (true when asked to stop), ``checkpoint``
``error``      ``message``
=============  ==========================================================================

``warning`` events go to the notification area, ``stop_requested`` to the status line, and
anything else to the log. The config is a JSON file; when the trainer contribution names its
pydantic settings model (``settings="module:Model"``), the dock generates a form for it,
prefilled from the project (cache, rasters, output folder, threshold) and saved to the file
before the run.

Stop writes ``stop`` to the trainer's stdin (it finishes the step and saves a checkpoint);
pressing it again kills the process. Resume starts ``solardesk train CONFIG --resume``.
The window never waits on the trainer, and a trainer that crashes is reported in the
notification area with its last lines of output; the dock is ready to resume.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from solardesk.gui.context import AppContext
from solardesk.gui.docks.precompute import format_duration
from solardesk.gui.forms import SettingsForm
from solardesk.gui.process import CommandProcess, ExitInfo

PLOT_INTERVAL_MS = 200
#: Pixels of the plots' value axes (tick labels such as "0.0012" or "1500").
PLOT_AXIS_WIDTH = 52
_METRIC_COLOURS = ["#ffd740", "#69f0ae", "#40c4ff", "#ff80ab", "#b388ff", "#ff9e80"]


def _legend_below(plot: pg.PlotWidget, columns: int = 2) -> pg.LegendItem:
    """A legend in the row under the plot's x axis, so that it never covers a curve."""
    legend = pg.LegendItem(colCount=columns, labelTextSize="8pt", verSpacing=-6, frame=False)
    plot.plotItem.layout.addItem(legend, 4, 1)
    return legend


class TrainDock(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.process = CommandProcess(ctx.solardesk_command, self)
        self.process.event.connect(self.on_event)
        self.process.log.connect(self._log)
        self.process.exited.connect(self._on_exited)
        self.events: list[dict] = []
        self.loss_x: list[float] = []
        self.loss_y: list[float] = []
        self.metrics: dict[str, tuple[list[float], list[float]]] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.steps_per_epoch: int | None = None
        self.total_steps: int | None = None
        self.epochs: int | None = None
        self._rate_start: tuple[float, float] | None = None
        self._dirty = False
        self._progress_shown: tuple | None = None  #: the latest progress, not shown yet
        self._counter = 0
        self.last_checkpoint: str | None = None

        self.form: SettingsForm | None = None
        self.trainer_combo = QComboBox()
        self.trainer_combo.setObjectName("trainerCombo")
        for plugin, trainer in ctx.plugin_manager.contributions("solardesk_trainers"):
            self.trainer_combo.addItem(f"{trainer.title}  [{plugin}]", (plugin, trainer))
        self.trainer_combo.currentIndexChanged.connect(self._on_trainer)
        self.form_area = QScrollArea()
        self.form_area.setWidgetResizable(True)
        self.form_area.setFrameShape(QScrollArea.Shape.NoFrame)
        self.form_area.setMinimumHeight(160)
        self.form_area.hide()
        self.from_project_btn = QPushButton("Fill from project")
        self.from_project_btn.setToolTip(
            "Cache, rasters, threshold and an output folder taken from the open project"
        )
        self.from_project_btn.clicked.connect(self.fill_from_project)
        self.save_btn = QPushButton("Save config")
        self.save_btn.clicked.connect(self.save_config)
        form_buttons = QHBoxLayout()
        form_buttons.addWidget(self.from_project_btn)
        form_buttons.addWidget(self.save_btn)
        form_buttons.addStretch(1)
        self.form_buttons = QWidget()
        self.form_buttons.setLayout(form_buttons)
        self.form_buttons.hide()

        self.config_edit = QLineEdit()
        self.config_edit.setObjectName("trainConfig")
        self.config_edit.setPlaceholderText("training config (.json)")
        self.config_edit.setText(str(ctx.project.gui("train_config", "")))
        self.config_edit.editingFinished.connect(self._remember_config)
        self.config_edit.textChanged.connect(self._load_config_into_form)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.config_edit, 1)
        row.addWidget(browse)

        self.start_btn = QPushButton("Start")
        self.start_btn.setObjectName("trainStart")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setObjectName("trainStop")
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.setObjectName("trainResume")
        self.start_btn.clicked.connect(lambda: self.start(resume=False))
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        self.stop_btn.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        for b in (self.start_btn, self.stop_btn, self.resume_btn):
            buttons.addWidget(b)

        self.fields: dict[str, QLabel] = {}
        grid = QGridLayout()
        for i, (key, title) in enumerate(
            (
                ("device", "Device"),
                ("epoch", "Epoch"),
                ("step", "Step"),
                ("loss", "Loss"),
                ("eta", "ETA"),
                ("checkpoint", "Checkpoint"),
            )
        ):
            label = QLabel("–")
            label.setObjectName(f"train_{key}")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            # A new value never resizes the dock (and the plots under it, repainted for
            # each resize): a long checkpoint name is cut; its tooltip holds the path.
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            self.fields[key] = label
            grid.addWidget(QLabel(title), i // 2, (i % 2) * 2)
            grid.addWidget(label, i // 2, (i % 2) * 2 + 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        self.progress = QProgressBar()
        self.progress.setObjectName("trainProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Choose a training config and press Start.")
        self.status.setObjectName("trainStatus")
        self.status.setWordWrap(True)

        pg.setConfigOptions(antialias=True)
        self.loss_plot = pg.PlotWidget(title="Training loss")
        self.loss_plot.setObjectName("lossPlot")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.25)
        self.loss_legend = _legend_below(self.loss_plot)
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen("#ff9100", width=2))
        self.loss_legend.addItem(self.loss_curve, "step")
        # The epoch means (``train_*`` of the metrics events) sit on the loss plot, at the
        # step where each epoch ended; the validation plot keeps the 0-1 metrics readable.
        self.epoch_loss_curve = self.loss_plot.plot(
            [],
            [],
            pen=pg.mkPen("#ffe082", width=2, style=Qt.PenStyle.DashLine),
            symbol="o",
            symbolSize=6,
            symbolBrush="#ffe082",
        )
        self.loss_legend.addItem(self.epoch_loss_curve, "epoch mean")
        self.epoch_loss: tuple[list[float], list[float]] = ([], [])
        self.metric_plot = pg.PlotWidget(title="Validation, against the pseudo-labels")
        self.metric_plot.setObjectName("metricPlot")
        self.metric_plot.setToolTip(
            "Object precision, recall and F1 (IoU ≥ 0.5) and COCO AP on the validation tiles, "
            "against their pseudo-labels at the training threshold and the panels accepted or "
            "drawn in review: agreement with the pre-compute, not accuracy against hand-made "
            "labels (solardesk evaluate --truth measures that)."
        )
        self.metric_plot.setLabel("bottom", "epoch")
        self.metric_plot.showGrid(x=True, y=True, alpha=0.25)
        self.metric_legend = _legend_below(self.metric_plot, columns=3)
        for plot in (self.loss_plot, self.metric_plot):
            plot.setMinimumHeight(170)
            # Wider tick labels as the curve grows would relayout the plot, and each layout
            # pass repaints both plots: a fixed axis width keeps an update to one paint.
            plot.getAxis("left").setWidth(PLOT_AXIS_WIDTH)
        self.log_view = QPlainTextEdit()
        self.log_view.setObjectName("trainLog")
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setPlaceholderText("Trainer output")

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.loss_plot)
        split.addWidget(self.metric_plot)
        split.addWidget(self.log_view)
        split.setSizes([220, 160, 90])

        form = QFormLayout()
        form.addRow("Trainer", self.trainer_combo)
        form.addRow("Config", row)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(form)
        lay.addWidget(self.form_area, 2)
        lay.addWidget(self.form_buttons)
        lay.addLayout(buttons)
        lay.addLayout(grid)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(split, 1)

        self.plot_timer = QTimer(self)
        self.plot_timer.setInterval(PLOT_INTERVAL_MS)
        self.plot_timer.timeout.connect(self._update_plots)
        ctx.project.loaded.connect(self._from_project)
        if self.trainer_combo.count():
            self._on_trainer(0)
        self._update_buttons()

    # -- config --------------------------------------------------------------------------------
    @Slot(int)
    def _on_trainer(self, index: int) -> None:
        """Build the config form when the trainer names its settings model."""
        data = self.trainer_combo.itemData(index)
        if self.form is not None:
            self.form.deleteLater()
            self.form = None
        self.form_area.hide()
        self.form_buttons.hide()
        target = getattr(data[1], "settings", "") if data else ""
        if not target:
            return  # a config file only
        try:
            from solardesk.plugin_api import resolve

            model = resolve(target)
        except Exception as e:
            self.ctx.notifications.warning(f"plugin {data[0]}", f"no config form: {e}")
            return
        self.form = SettingsForm(model)
        self.form.setObjectName("trainForm")
        self.form_area.setWidget(self.form)
        self.form_area.show()
        self.form_buttons.show()
        self._load_config_into_form()

    @Slot()
    def _load_config_into_form(self, *_args) -> None:
        path = Path(self.config_edit.text().strip()) if self.config_edit.text().strip() else None
        if self.form is None or path is None or not path.is_file():
            return
        try:
            self.form.set_values(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            self.status.setText(f"Cannot read {path.name} into the form: {e}")

    def fill_from_project(self) -> None:
        """Prefill the form with the project's cache, rasters, threshold and output folder."""
        if self.form is None:
            return
        project = self.ctx.project
        values = dict(self.form.values())
        folder = project.folder or (
            project.config.rasters[0].parent if project.config.rasters else Path.cwd()
        )
        if "cache" in values and project.config.cache:
            values["cache"] = str(project.config.cache)
        if "rasters" in values:
            values["rasters"] = [str(p) for p in project.config.rasters]
        if "output_dir" in values:
            values["output_dir"] = str(folder / "training")
        if isinstance(values.get("raster"), dict):
            # The band mapping and stretch the project's pseudo-labels were computed on.
            values["raster"] = project.config.raster.model_dump(mode="json")
        pseudo = self.ctx.layers.of_kind("pseudo")
        data = values.get("data")
        if pseudo and isinstance(data, dict) and "threshold" in data:
            values["data"] = {**data, "threshold": round(pseudo[0].threshold, 3)}
        self.form.set_values(values)
        if not self.config_edit.text().strip():
            self.config_edit.setText(str(folder / "train.json"))
            self._remember_config()

    def save_config(self) -> bool:
        """Validate the form and write it to the config path (a form-less trainer: no-op)."""
        if self.form is None:
            return True
        text = self.config_edit.text().strip()
        if not text:
            self.status.setText("Choose where to save the config (Config ▸ Browse…).")
            return False
        try:
            model = self.form.model()
        except Exception as e:
            self.status.setText(f"Fix the config first: {e}")
            return False
        path = Path(text)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            self.status.setText(f"Cannot save {path}: {e}")
            return False
        self._remember_config()
        self.status.setText(f"Config saved to {path}.")
        return True

    @Slot()
    def _from_project(self) -> None:
        self.config_edit.setText(str(self.ctx.project.gui("train_config", "")))

    def _browse(self) -> None:
        if self.form is not None:
            path, _ = QFileDialog.getSaveFileName(
                self,
                "Training config",
                self.config_edit.text(),
                "JSON (*.json);;All files (*)",
                options=QFileDialog.Option.DontConfirmOverwrite,
            )
        else:
            path, _ = QFileDialog.getOpenFileName(
                self, "Training config", self.config_edit.text(), "JSON (*.json);;All files (*)"
            )
        if path:
            self.config_edit.setText(path)
            self._remember_config()
            self._load_config_into_form()

    @Slot()
    def _remember_config(self) -> None:
        text = self.config_edit.text().strip()
        if text:
            self.ctx.project.set_gui("train_config", text)

    # -- running ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process.running

    def start(self, resume: bool = False) -> bool:
        config = self.config_edit.text().strip()
        if self.running:
            return False
        if self.form is not None and not self.save_config():
            return False
        if not config or not Path(config).is_file():
            self.status.setText(f"No training config at '{config}'. Choose a .json config.")
            return False
        self._remember_config()
        if not resume:
            self._reset_plots()
        self._rate_start = None
        self._progress_shown = None
        self.events.clear()
        args = ["train", config] + (["--resume"] if resume else [])
        self.process.start(args, cwd=str(Path(config).parent))
        self.status.setText("Resuming training…" if resume else "Starting training…")
        self.stop_btn.setText("Stop")
        self.plot_timer.start()
        self._update_buttons()
        return True

    def stop(self) -> None:
        if not self.running:
            return
        if self.stop_btn.text() == "Stop":
            self.process.request_stop()
            self.stop_btn.setText("Force stop")
            self.status.setText("Stopping after the current step (a checkpoint is saved)…")
        else:
            self.process.kill()
            self.status.setText("Trainer killed.")

    def _update_buttons(self) -> None:
        running = self.running
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        self.config_edit.setEnabled(not running)
        self.trainer_combo.setEnabled(not running)
        self.form_area.setEnabled(not running)
        self.form_buttons.setEnabled(not running)

    def _reset_plots(self) -> None:
        self.loss_x.clear()
        self.loss_y.clear()
        self.metrics.clear()
        for curve in self.curves.values():
            self.metric_plot.removeItem(curve)
        self.curves.clear()
        self.metric_legend.clear()
        self.loss_curve.setData([], [])
        self.epoch_loss = ([], [])
        self.epoch_loss_curve.setData([], [])
        self._counter = 0
        self.last_checkpoint = None
        for label in self.fields.values():
            label.setText("–")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    # -- events ------------------------------------------------------------------------------------
    @Slot(dict)
    def on_event(self, ev: dict) -> None:
        self.events.append(ev)
        kind = ev.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            self._log(json.dumps(ev))
            return
        handler(ev)

    def _on_started(self, ev: dict) -> None:
        self.fields["device"].setText(str(ev.get("device", "?")))
        self.epochs = _int(ev.get("epochs"))
        self.steps_per_epoch = _int(ev.get("steps_per_epoch", ev.get("steps")))
        self.total_steps = _int(ev.get("total_steps"))
        if self.total_steps is None and self.epochs and self.steps_per_epoch:
            self.total_steps = self.epochs * self.steps_per_epoch
        if self.total_steps:
            self.progress.setRange(0, self.total_steps)
        resumed = ev.get("resumed_from") or ev.get("resume")
        self.status.setText(
            f"Training on {ev.get('device', '?')}"
            + (f", resumed from {resumed}" if resumed else "")
            + "."
        )

    def _global_step(self, ev: dict) -> float:
        g = _num(ev.get("global_step"))
        if g is not None:
            return g
        epoch, step = _num(ev.get("epoch")), _num(ev.get("step"))
        steps = _int(ev.get("steps", ev.get("steps_per_epoch"))) or self.steps_per_epoch
        if epoch is not None and step is not None and steps:
            # Epochs count from 1 in the events; a 0-based trainer only shifts the curve.
            return max(epoch - 1, 0) * steps + step
        self._counter += 1
        return float(self._counter)

    def _on_progress(self, ev: dict) -> None:
        """Take in one step's event. The labels and the bar show the latest with the plots
        (:meth:`_show_progress`, every ``PLOT_INTERVAL_MS``): a trainer may send hundreds a
        second, and setting five widgets for each kept the event loop from the map."""
        g = self._global_step(ev)
        steps = _int(ev.get("steps", ev.get("steps_per_epoch")))
        if steps:
            self.steps_per_epoch = steps
        total = _int(ev.get("total_steps"))
        if total:
            self.total_steps = total
        elif self.epochs and self.steps_per_epoch:
            self.total_steps = self.epochs * self.steps_per_epoch
        loss = _num(ev.get("loss"))
        if loss is not None:
            self.loss_x.append(g)
            self.loss_y.append(loss)
            self._dirty = True
        now = time.monotonic()
        if self._rate_start is None:
            self._rate_start = (now, g)
        eta = _num(ev.get("eta_s"))
        if eta is None and self.total_steps:
            t0, g0 = self._rate_start
            if now > t0 and g > g0:
                eta = (self.total_steps - g) / ((g - g0) / (now - t0))
        prev = self._progress_shown or (None, None, None, None, None)
        # (an event without a loss, epoch or step keeps the last one not shown yet)
        epoch, step = ev.get("epoch"), ev.get("step")
        self._progress_shown = (
            loss if loss is not None else prev[0],
            epoch if epoch is not None else prev[1],
            step if step is not None else prev[2],
            g,
            eta,
        )

    def _show_progress(self) -> None:
        """Show the latest progress event's loss, epoch, step, ETA and bar."""
        latest, self._progress_shown = self._progress_shown, None
        if latest is None:
            return
        loss, epoch, step, g, eta = latest
        if loss is not None:
            self.fields["loss"].setText(f"{loss:.4f}")
        if epoch is not None:
            self.fields["epoch"].setText(f"{epoch}" + (f" / {self.epochs}" if self.epochs else ""))
        if step is not None:
            self.fields["step"].setText(
                f"{step}" + (f" / {self.steps_per_epoch}" if self.steps_per_epoch else "")
            )
        self.fields["eta"].setText(format_duration(eta))
        if self.total_steps:
            self.progress.setRange(0, self.total_steps)
            self.progress.setValue(min(int(g), self.total_steps))

    def _on_metrics(self, ev: dict) -> None:
        epoch = _num(ev.get("epoch"))
        if epoch is None:
            epoch = float(len(next(iter(self.metrics.values()), ([], []))[0]) + 1)
        for key, value in ev.items():
            if key in ("event", "type", "epoch", "step", "global_step", "time"):
                continue
            v = _num(value)
            if v is None:
                continue
            if key == "train_loss":
                at = _num(ev.get("global_step"))
                if at is None and self.steps_per_epoch:
                    at = epoch * self.steps_per_epoch
                if at is not None:
                    self.epoch_loss[0].append(at)
                    self.epoch_loss[1].append(v)
                continue
            xs, ys = self.metrics.setdefault(key, ([], []))
            xs.append(epoch)
            ys.append(v)
        self._dirty = True

    def _on_checkpoint(self, ev: dict) -> None:
        path = str(ev.get("path", ""))
        self.last_checkpoint = path
        self.fields["checkpoint"].setText(Path(path).name if path else "saved")
        self.fields["checkpoint"].setToolTip(path)

    def _on_finished(self, ev: dict) -> None:
        self._show_progress()
        if ev.get("checkpoint"):
            self._on_checkpoint({"path": ev["checkpoint"]})
        stopped = bool(ev.get("stopped"))
        self.status.setText(
            "Training stopped; press Resume to continue." if stopped else "Training finished."
        )
        if not stopped and self.total_steps:
            self.progress.setValue(self.total_steps)

    def _on_warning(self, ev: dict) -> None:
        message = str(ev.get("message", ev))
        self._log(f"warning: {message}")
        self.ctx.notifications.warning("Training", message)

    def _on_stop_requested(self, ev: dict) -> None:
        self.status.setText(
            f"Stop requested ({ev.get('by', 'app')}): finishing the step and saving a checkpoint…"
        )

    def _on_error(self, ev: dict) -> None:
        message = str(ev.get("message") or ev.get("error") or "unknown error")
        self.status.setText(f"Training failed: {message}")
        self.ctx.notifications.error("Training", message, json.dumps(ev, indent=2))

    @Slot()
    def _update_plots(self) -> None:
        self._show_progress()
        if not self._dirty:
            return
        self._dirty = False
        self.loss_curve.setData(self.loss_x, self.loss_y)
        self.epoch_loss_curve.setData(*self.epoch_loss)
        for i, (key, (xs, ys)) in enumerate(sorted(self.metrics.items())):
            curve = self.curves.get(key)
            if curve is None:
                colour = _METRIC_COLOURS[i % len(_METRIC_COLOURS)]
                curve = self.metric_plot.plot(
                    [],
                    [],
                    pen=pg.mkPen(colour, width=2),
                    symbol="o",
                    symbolSize=6,
                    symbolBrush=colour,
                )
                self.metric_legend.addItem(curve, key.removeprefix("val_"))
                self.curves[key] = curve
            curve.setData(xs, ys)

    @Slot(str)
    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(text)

    @Slot(object)
    def _on_exited(self, info: ExitInfo) -> None:
        self.plot_timer.stop()
        self._dirty = True
        self._update_plots()
        self._update_buttons()
        self.stop_btn.setText("Stop")
        if info.error:
            self.status.setText(f"The trainer did not start: {info.error}")
            self.ctx.notifications.error("Training", info.error, info.tail)
            return
        if info.ok and info.finished_event:
            return  # the finished event said it all
        if info.error_event:
            return  # already reported by the error event (also after a stop: it failed)
        if info.stopped and (info.ok or info.crashed):
            # Asked to stop: it exited cleanly, or was killed for not stopping in time. One
            # that failed while stopping (a full disk at its last checkpoint) is an error.
            self.status.setText("Trainer stopped. Press Resume to continue from its checkpoint.")
            return
        how = "crashed" if info.crashed else f"exited with code {info.code}"
        message = f"the trainer {how} without finishing"
        self.status.setText(
            f"Training stopped unexpectedly ({how}). The app is fine; "
            "fix the cause (see Messages) and press Resume."
        )
        self.ctx.notifications.error("Training", message, info.tail)

    def stop_and_wait(self, parent: QWidget | None = None) -> bool:
        """Ask the trainer to stop and wait, with a dialog, until it has saved its checkpoint
        and exited (a CPU step can take minutes). Only the dialog's "Kill it now" kills it:
        Esc and the window's close button do not (the epoch would be lost). True when it
        stopped by itself."""
        if not self.running:
            return True
        from PySide6.QtCore import QEventLoop

        self.process.request_stop()
        self.stop_btn.setText("Force stop")
        self.status.setText("Stopping after the current step (a checkpoint is saved)…")
        dialog = _StoppingDialog(parent or self)
        loop = QEventLoop()
        kill = []
        dialog.kill_btn.clicked.connect(lambda: (kill.append(True), loop.quit()))
        self.process.exited.connect(loop.quit)
        dialog.show()
        if self.running:
            loop.exec()
        self.process.exited.disconnect(loop.quit)
        killed = bool(kill) and self.running
        if killed:
            self.process.kill()
            self.process.wait(1000)
        dialog.done(0)
        dialog.deleteLater()
        return not killed

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """Ask a running trainer to stop, and kill it if it does not within ``timeout_ms``."""
        if not self.running:
            return
        self.process.request_stop()
        if not self.process.wait(timeout_ms):
            self.process.kill()
            self.process.wait(1000)


class _StoppingDialog(QDialog):
    """ "Stopping the training…" while the trainer ends its step: no Esc, no close button;
    its one button kills the trainer."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setWindowTitle("Stopping the training")
        self.setWindowModality(Qt.WindowModality.ApplicationModal)  # no second close meanwhile
        self.setWindowFlag(Qt.WindowType.WindowCloseButtonHint, False)
        lay = QVBoxLayout(self)
        text = QLabel(
            "Training stops after its current step and saves a checkpoint (Resume continues "
            "from it)…"
        )
        text.setWordWrap(True)
        busy = QProgressBar()
        busy.setRange(0, 0)
        self.kill_btn = QPushButton("Kill it now")
        self.kill_btn.setAutoDefault(False)
        lay.addWidget(text)
        lay.addWidget(busy)
        lay.addWidget(self.kill_btn, 0, Qt.AlignmentFlag.AlignRight)

    def reject(self) -> None:  # Esc: the trainer is stopping; only the button kills it
        pass

    def closeEvent(self, event) -> None:
        event.ignore()


def _num(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v) if v == v else None
    return None


def _int(v) -> int | None:
    n = _num(v)
    return int(n) if n is not None else None

"""Pre-compute: run a plugin's per-tile stage over the project's rasters into the cache.

The stage comes from the plugin manager (``solardesk_precompute_stages``); its parameter form
is generated from the stage's own pydantic settings model, and the tiling form from
:class:`solardesk.config.TilingSettings`. The job is :func:`solardesk.core.pipeline.precompute`,
the generator the CLI drives, run on the long-jobs pool: a progress bar with rate and ETA,
and Cancel closes the generator at its next tile (finished tiles are kept; a rerun resumes).
Tiles appear on the map as they are committed: the pseudo-label layers poll the cache.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from solardesk.config import TilingSettings
from solardesk.core.jobs import Progress, counted, default_workers
from solardesk.gui.context import AppContext
from solardesk.gui.forms import SettingsForm
from solardesk.gui.layers import PseudoLabelLayer, RasterLayer
from solardesk.plugin_api import resolve

#: How often the map re-reads the cache while a run goes on.
MAP_REFRESH_S = 0.7


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "–"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PrecomputeDock(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.job = None
        self.form: SettingsForm | None = None
        self.stage = None
        self.stage_plugin: str | None = None
        self._last_refresh = 0.0
        self._layers: list[PseudoLabelLayer] = []

        self.stage_combo = QComboBox()
        self.stage_combo.setObjectName("stageCombo")
        self.stage_combo.currentIndexChanged.connect(self._on_stage)
        self.stage_error = QLabel()
        self.stage_error.setWordWrap(True)
        self.stage_error.setStyleSheet("color: #ff6e6e;")
        self.stage_error.hide()
        self.form_box = QGroupBox("Parameters")
        self.form_lay = QVBoxLayout(self.form_box)
        self.form_note = QLabel("<i>Italic</i>: read-time, changing it recomputes nothing.")
        self.form_note.setStyleSheet("color: #9a9da3;")
        self.form_lay.addWidget(self.form_note)
        self.tiling_form = SettingsForm(TilingSettings)
        tiling_box = QGroupBox("Tiling")
        QVBoxLayout(tiling_box).addWidget(self.tiling_form)

        self.rasters = QListWidget()
        self.rasters.setObjectName("precomputeRasters")
        self.rasters.setMaximumHeight(90)
        self.cache_edit = QLineEdit()
        self.cache_edit.setObjectName("cachePath")
        self.cache_edit.setReadOnly(True)
        cache_btn = QPushButton("Choose…")
        cache_btn.clicked.connect(self._choose_cache)
        cache_row = QHBoxLayout()
        cache_row.addWidget(self.cache_edit, 1)
        cache_row.addWidget(cache_btn)
        self.workers = QSpinBox()
        self.workers.setObjectName("workers")
        # Auto, as `solardesk precompute` (ADR 0057): a process per core for a long job, the
        # app's own thread for a short one (under 64 tiles, where a pool's start-up costs
        # more than it saves).
        self.workers.setRange(0, max(1, default_workers()))
        self.workers.setSpecialValueText("Auto")
        self.workers.setValue(0)
        self.workers.setToolTip(
            "Worker processes. Auto: one per core for a long job, none for a short one. 1 runs "
            "the stage on a thread of the app; more start a pool of processes (each tile is "
            "independent)."
        )
        io = QFormLayout()
        io.addRow("Rasters", self.rasters)
        io.addRow("Cache", cache_row)
        io.addRow("Workers", self.workers)

        self.run_btn = QPushButton("Run pre-compute")
        self.run_btn.setObjectName("runPrecompute")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("cancelPrecompute")
        self.cancel_btn.setEnabled(False)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn, 1)
        buttons.addWidget(self.cancel_btn)
        self.progress = QProgressBar()
        self.progress.setObjectName("precomputeProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Ready.")
        self.status.setObjectName("precomputeStatus")
        self.status.setWordWrap(True)

        inner = QWidget()
        inner_lay = QVBoxLayout(inner)
        inner_lay.setContentsMargins(0, 0, 0, 0)
        stage_row = QFormLayout()
        stage_row.addRow("Stage", self.stage_combo)
        inner_lay.addLayout(stage_row)
        inner_lay.addWidget(self.stage_error)
        inner_lay.addWidget(self.form_box)
        inner_lay.addWidget(tiling_box)
        inner_lay.addLayout(io)
        inner_lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(inner)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(scroll, 1)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)

        self._load_stages()
        ctx.project.loaded.connect(self._from_project)
        ctx.project.changed.connect(self._sync_project_lists)
        self._from_project()

    # -- stages -------------------------------------------------------------------------------
    def _load_stages(self) -> None:
        self.stage_combo.blockSignals(True)
        self.stage_combo.clear()
        for plugin, stage in self.ctx.plugin_manager.contributions("solardesk_precompute_stages"):
            self.stage_combo.addItem(f"{stage.title}  [{plugin}]", (plugin, stage))
        self.stage_combo.blockSignals(False)
        if self.stage_combo.count():
            self.stage_combo.setCurrentIndex(self._default_stage_index())
            self._on_stage(self.stage_combo.currentIndex())
        else:
            self._show_stage_error("No plugin provides a pre-compute stage (see the Plugins dock).")

    def _default_stage_index(self) -> int:
        """The stage used last in this project, else the label-free one, else the first."""
        ids = [self.stage_combo.itemData(i)[1].id for i in range(self.stage_combo.count())]
        for wanted in (self.ctx.project.gui("precompute_stage"), "spectral"):
            if wanted in ids:
                return ids.index(wanted)
        return 0

    def _show_stage_error(self, text: str) -> None:
        self.stage_error.setText(text)
        self.stage_error.setVisible(bool(text))

    @Slot(int)
    def _on_stage(self, index: int) -> None:
        data = self.stage_combo.itemData(index)
        if self.form is not None:
            self.form.setParent(None)
            self.form.deleteLater()
            self.form = None
        self.stage = None
        if data is None:
            return
        plugin, stage = data
        try:
            model = resolve(stage.settings)
        except Exception as e:
            self._show_stage_error(f"{stage.title}: its settings cannot be loaded: {e}")
            self.ctx.notifications.error(f"plugin {plugin}", str(e))
            self.run_btn.setEnabled(False)
            return
        self._show_stage_error("")
        self.stage, self.stage_plugin = stage, plugin
        saved = self.ctx.project.plugin_settings(plugin).get(stage.id, {})
        self.form = SettingsForm(model, saved)
        self.form.setObjectName("stageForm")
        self.form_lay.addWidget(self.form)
        self.form_box.setTitle(f"Parameters · {stage.title}")
        if "threshold" in self.form.editors:
            self.form.editors["threshold"].changed(self._on_form_threshold)
        self.run_btn.setEnabled(self.job is None)

    def _on_form_threshold(self, *_args) -> None:
        value = self.form.values().get("threshold") if self.form else None
        if isinstance(value, int | float):
            for layer in self.ctx.layers.of_kind("pseudo"):
                layer.set_threshold(float(value))

    # -- project -------------------------------------------------------------------------------
    @Slot()
    def _from_project(self) -> None:
        cfg = self.ctx.project.config
        self.tiling_form.set_values(cfg.tiling.model_dump())
        index = self._default_stage_index() if self.stage_combo.count() else -1
        if index >= 0 and index != self.stage_combo.currentIndex():
            self.stage_combo.setCurrentIndex(index)
        if self.form is not None and self.stage is not None:
            saved = self.ctx.project.plugin_settings(self.stage_plugin).get(self.stage.id, {})
            self.form.set_values(saved)
        self._sync_project_lists()

    @Slot()
    def _sync_project_lists(self) -> None:
        cfg = self.ctx.project.config
        checked = {
            self.rasters.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.rasters.count())
            if self.rasters.item(i).checkState() == Qt.CheckState.Unchecked
        }
        self.rasters.clear()
        for path in cfg.rasters:
            item = QListWidgetItem(path.name)
            item.setToolTip(str(path))
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Unchecked if str(path) in checked else Qt.CheckState.Checked
            )
            self.rasters.addItem(item)
        cache = cfg.cache or self.ctx.project.default_cache_path()
        self.cache_edit.setText(str(cache))
        self.cache_edit.setToolTip(
            str(cache) if cfg.cache else f"{cache} (default; created on the first run)"
        )

    def _choose_cache(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Mask cache",
            self.cache_edit.text(),
            "SolarDesk cache (*.sqlite);;All files (*)",
            options=QFileDialog.Option.DontConfirmOverwrite,
        )
        if path:
            self.ctx.project.set_cache(path)

    def selected_rasters(self) -> list[str]:
        return [
            self.rasters.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.rasters.count())
            if self.rasters.item(i).checkState() == Qt.CheckState.Checked
        ]

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Validate the forms and start the pre-compute job."""
        if self.job is not None or self.stage is None or self.form is None:
            return
        try:
            settings = self.form.model().model_dump(mode="json")
            tiling = self.tiling_form.model()
        except Exception as e:
            self.status.setText(f"Fix the parameters first: {e}")
            return
        rasters = self.selected_rasters()
        if not rasters:
            self.status.setText("Add a raster to the project (File ▸ Add raster) and tick it.")
            return
        project = self.ctx.project
        if project.config.cache is None:
            project.set_cache(project.default_cache_path())
        cache = project.config.cache
        project.set_plugin_settings(
            self.stage_plugin,
            {**project.plugin_settings(self.stage_plugin), self.stage.id: settings},
        )
        project.set_tiling(tiling)
        project.set_gui("precompute_stage", self.stage.id)
        threshold = settings.get("threshold")
        if not isinstance(threshold, int | float):
            pseudo = self.ctx.layers.of_kind("pseudo")
            threshold = pseudo[0].threshold if pseudo else 0.85
        self._layers = []
        for path in rasters:
            raster = self.ctx.layers.add_raster(path)
            assert isinstance(raster, RasterLayer)
            layer = self.ctx.layers.add_pseudo_labels(cache, raster, threshold)
            layer.set_threshold(threshold)
            self._layers.append(layer)

        from solardesk.core.pipeline import precompute

        stage_id, pm = self.stage.id, self.ctx.plugin_manager
        raster_settings, workers = project.config.raster, (self.workers.value() or None)

        def job():
            return precompute(
                rasters,
                cache,
                stage_id=stage_id,
                settings=settings,
                tiling=tiling,
                raster_settings=raster_settings,
                workers=workers,
                plugin_manager=pm,
            )

        self.job = self.ctx.jobs.submit(job, f"Pre-compute ({self.stage.title})")
        self.job.progress.connect(self._on_progress)
        self.job.finished.connect(self._on_finished)
        self.job.cancelled.connect(self._on_cancelled)
        self.job.errored.connect(self._on_errored)
        self.job.ended.connect(self._on_ended)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the plan is known
        self.status.setText("Opening the rasters and the cache…")
        self._last_refresh = time.monotonic()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.cancel_btn.setEnabled(False)
            self.status.setText("Cancelling after the current tile…")

    @Slot(object)
    def _on_progress(self, p: Progress) -> None:
        if self.job is None or not self.job.running:
            # A record that reached the GUI thread after the job's end (seen once on a loaded
            # machine) must not overwrite "Done" or "Cancelled".
            return
        self.progress.setRange(0, max(p.total, 1))
        self.progress.setValue(p.done)
        rate = p.rate
        parts = [f"{p.done}/{p.total} tiles"]
        if p.skipped:
            parts.append(f"{p.skipped} already cached")
        if rate > 0:
            parts.append(f"{rate:.1f} tiles/s")
        parts.append(f"ETA {format_duration(p.eta_s)}")
        if p.message:
            parts.append(p.message)
        self.status.setText(" · ".join(parts))
        now = time.monotonic()
        if now - self._last_refresh >= MAP_REFRESH_S:
            self._last_refresh = now
            for layer in self._layers:
                layer.refresh()

    @Slot(object)
    def _on_finished(self, summary) -> None:
        self.progress.setRange(0, max(summary.tiles, 1))
        self.progress.setValue(summary.tiles)
        text = (
            f"Done: {counted(summary.computed, 'tile')} computed, "
            f"{summary.skipped} already cached, "
            f"{counted(summary.instances, 'candidate')} in {format_duration(summary.seconds)} "
            f"({summary.tiles_per_second:.1f} tiles/s)."
        )
        self.status.setText(text)
        self.ctx.notifications.info("Pre-compute", text)

    @Slot()
    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled. Finished tiles are kept; run again to resume.")
        self.progress.setRange(0, 1)

    @Slot(object)
    def _on_errored(self, error) -> None:
        self.status.setText(f"Failed: {error.message}")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    @Slot()
    def _on_ended(self) -> None:
        self.job = None
        self.run_btn.setEnabled(self.stage is not None)
        self.cancel_btn.setEnabled(False)
        for layer in self._layers:
            # In full: a rerun may have chosen earlier rows again (ADR 0046), which are older
            # than what the layer has read.
            layer.refresh(full=True)

    @property
    def running(self) -> bool:
        return self.job is not None

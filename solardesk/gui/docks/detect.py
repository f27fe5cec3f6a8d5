"""Detect & export: run ``solardesk detect`` over a raster and show the polygons it writes.

The detector is a plugin contribution (``solardesk_detectors``): the spectral analyser needs
no model (``--spectral``), a model runtime takes a file (``--model model.onnx``). The extent
is the whole raster, the map's visible extent (written as a temporary AOI GeoPackage) or an
AOI file. The output format follows the extension: GeoPackage, Shapefile or GeoJSON. The
command runs in its own process; its progress bar (stderr) drives the dock's. While it runs,
the detections appear on the map as its tiles finish: ``solardesk detect`` stores each tile's
instances in its cache (beside the output) before it writes polygons, and a "Detecting…"
layer of that cache is refreshed with the progress. When the command ends, that layer gives
way to the output, added to the map as a vector layer.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QTemporaryDir, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from solardesk.core.jobs import counted
from solardesk.gui import _io
from solardesk.gui.context import AppContext
from solardesk.gui.process import CommandProcess, ExitInfo

#: Seconds between refreshes of the "Detecting…" layer while the command runs.
LIVE_REFRESH_S = 0.5
#: The raster box's entry for every raster of the project.
ALL_RASTERS = "*all rasters*"

FORMATS = {
    ".gpkg": "GeoPackage (*.gpkg)",
    ".shp": "Shapefile (*.shp)",
    ".geojson": "GeoJSON (*.geojson)",
}


@dataclass(frozen=True)
class _ModelFile:
    """The detector offered when no plugin contributes one that takes a model file."""

    id: str = "model"
    title: str = "ONNX model"
    formats: tuple[str, ...] = (".onnx",)


MODEL_FILE = _ModelFile()


class DetectDock(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.process = CommandProcess(ctx.solardesk_command, self)
        self.process.progressText.connect(self._on_progress_text)
        self.process.event.connect(self._on_event)
        self.process.log.connect(self._log)
        self.process.exited.connect(self._on_exited)
        self._tmp = QTemporaryDir()
        self.output: Path | None = None
        self.results: list[Path] = []
        self.live = None  #: the "Detecting…" pseudo-label layer of the running command's cache
        #: the project's layer of the cache the command fills, when it has one (refreshed only)
        self._shared_live = None
        self._run_rasters: list[str] = []
        self._live_refreshed = 0.0

        self.detector = QComboBox()
        self.detector.setObjectName("detectorCombo")
        self.detector.currentIndexChanged.connect(self._update_model_row)
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("modelCombo")
        self.model_combo.setEditable(False)
        add_model = QPushButton("Add…")
        add_model.clicked.connect(self._add_model)
        self.model_row = QWidget()
        mr = QHBoxLayout(self.model_row)
        mr.setContentsMargins(0, 0, 0, 0)
        mr.addWidget(self.model_combo, 1)
        mr.addWidget(add_model)

        self.raster = QComboBox()
        self.raster.setObjectName("detectRaster")
        self.extent_whole = QRadioButton("Whole raster")
        self.extent_view = QRadioButton("Visible extent")
        self.extent_aoi = QRadioButton("AOI file")
        self.extent_whole.setChecked(True)
        group = QButtonGroup(self)
        for b in (self.extent_whole, self.extent_view, self.extent_aoi):
            group.addButton(b)
        self.aoi_edit = QLineEdit()
        self.aoi_edit.setPlaceholderText("polygon file (GPKG, SHP, GeoJSON)")
        aoi_btn = QPushButton("Browse…")
        aoi_btn.clicked.connect(self._browse_aoi)
        extent = QVBoxLayout()
        row = QHBoxLayout()
        row.addWidget(self.extent_whole)
        row.addWidget(self.extent_view)
        row.addWidget(self.extent_aoi)
        extent.addLayout(row)
        aoi_row = QHBoxLayout()
        aoi_row.addWidget(self.aoi_edit, 1)
        aoi_row.addWidget(aoi_btn)
        extent.addLayout(aoi_row)

        self.out_edit = QLineEdit()
        self.out_edit.setObjectName("detectOutput")
        self.format_combo = QComboBox()
        for ext, label in FORMATS.items():
            self.format_combo.addItem(label.split(" (")[0], ext)
        self.format_combo.currentIndexChanged.connect(self._on_format)
        out_btn = QPushButton("Browse…")
        out_btn.clicked.connect(self._browse_out)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(self.format_combo)
        out_row.addWidget(out_btn)
        self.overwrite = QCheckBox("Replace an existing file")
        self.overwrite.setChecked(True)

        form = QFormLayout()
        form.addRow("Detector", self.detector)
        form.addRow("Model", self.model_row)
        form.addRow("Raster", self.raster)
        form.addRow("Extent", extent)
        form.addRow("Output", out_row)
        form.addRow("", self.overwrite)

        self.run_btn = QPushButton("Detect and export")
        self.run_btn.setObjectName("runDetect")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn, 1)
        buttons.addWidget(self.cancel_btn)
        self.progress = QProgressBar()
        self.progress.setObjectName("detectProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Choose a detector and a raster.")
        self.status.setObjectName("detectStatus")
        self.status.setWordWrap(True)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(1000)
        self.log_view.setPlaceholderText("Output of solardesk detect")

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.log_view, 1)

        self._load_detectors()
        ctx.project.loaded.connect(self._from_project)
        ctx.project.changed.connect(self._from_project)
        self._from_project()

    # -- choices ------------------------------------------------------------------------------
    def _load_detectors(self) -> None:
        self.detector.clear()
        seen = set()
        for plugin, det in self.ctx.plugin_manager.contributions("solardesk_detectors"):
            if det.id in seen:
                continue
            seen.add(det.id)
            self.detector.addItem(f"{det.title}  [{plugin}]", det)
        if not any(getattr(self.detector.itemData(i), "formats", ()) for i in range(len(seen))):
            # `solardesk detect --model` takes any exported ONNX model, whichever plugin
            # registers the runtime.
            self.detector.addItem("ONNX model (--model)", MODEL_FILE)
        if not seen:
            self.status.setText("No plugin provides a detector (see the Plugins dock).")
        self.detector.setCurrentIndex(self._default_detector_index())
        self._update_model_row()

    def _default_detector_index(self) -> int:
        """The detector used last in this project, else the first that needs no model."""
        items = [self.detector.itemData(i) for i in range(self.detector.count())]
        last = self.ctx.project.gui("detector")
        for i, det in enumerate(items):
            if det.id == last:
                return i
        for i, det in enumerate(items):
            if not getattr(det, "formats", ()):
                return i
        return 0

    def current_detector(self):
        return self.detector.currentData()

    def _needs_model(self) -> bool:
        det = self.current_detector()
        return bool(det is not None and getattr(det, "formats", ()))

    @Slot()
    def _update_model_row(self, *_args) -> None:
        self.model_row.setEnabled(self._needs_model())

    @Slot()
    def _from_project(self) -> None:
        project = self.ctx.project
        current = self.raster.currentData()
        self.raster.blockSignals(True)
        self.raster.clear()
        rasters = project.config.rasters
        if len(rasters) > 1:
            # A project of a folder is detected in one run, into one file (the command
            # takes several rasters).
            self.raster.addItem(f"All {len(rasters)} rasters of the project", ALL_RASTERS)
        for p in rasters:
            self.raster.addItem(p.name, str(p))
        i = self.raster.findData(current)
        self.raster.setCurrentIndex(max(i, 0))
        self.raster.blockSignals(False)
        model = self.model_combo.currentData()
        self.model_combo.clear()
        for m in project.models():
            self.model_combo.addItem(m.name, str(m))
        i = self.model_combo.findData(model)
        if i >= 0:
            self.model_combo.setCurrentIndex(i)
        if not self.out_edit.text() and project.config.rasters:
            first = project.config.rasters[0]
            folder = project.folder or first.parent
            self.out_edit.setText(str(folder / f"{first.stem}_panels.gpkg"))

    def _add_model(self) -> None:
        det = self.current_detector()
        exts = " ".join(f"*{e}" for e in getattr(det, "formats", ()) or (".onnx",))
        path, _ = QFileDialog.getOpenFileName(self, "Model", "", f"Models ({exts})")
        if path:
            self.ctx.project.add_model(path)
            self.model_combo.setCurrentIndex(self.model_combo.findData(str(Path(path).resolve())))

    def _browse_aoi(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Area of interest", "", "Vector files (*.gpkg *.shp *.geojson *.json)"
        )
        if path:
            self.aoi_edit.setText(path)
            self.extent_aoi.setChecked(True)

    def _browse_out(self) -> None:
        path, _chosen = QFileDialog.getSaveFileName(
            self, "Export panels", self.out_edit.text(), ";;".join(FORMATS.values())
        )
        if path:
            self.out_edit.setText(path)
            self._sync_format()

    @Slot(int)
    def _on_format(self, _index: int) -> None:
        text = self.out_edit.text().strip()
        if text:
            ext = self.format_combo.currentData()
            self.out_edit.setText(str(Path(text).with_suffix(ext)))

    def _sync_format(self) -> None:
        ext = Path(self.out_edit.text()).suffix.lower()
        i = self.format_combo.findData(ext)
        if i >= 0:
            self.format_combo.blockSignals(True)
            self.format_combo.setCurrentIndex(i)
            self.format_combo.blockSignals(False)

    # -- running --------------------------------------------------------------------------------
    def build_args(self) -> list[str]:
        """The ``solardesk detect`` arguments for the current choices (``ValueError`` if not)."""
        rasters = self.selected_rasters()
        if not rasters:
            raise ValueError("add a raster to the project first (File ▸ Add raster)")
        det = self.current_detector()
        args = ["detect", *rasters]
        if self._needs_model():
            model = self.model_combo.currentData()
            if not model:
                raise ValueError(f"{det.title} needs a model file: press Add… beside Model")
            args += ["--model", model]
        else:
            args.append(f"--{det.id}" if det is not None else "--spectral")
        out = self.out_edit.text().strip()
        if not out:
            raise ValueError("choose an output file")
        out_path = Path(out)
        if out_path.suffix.lower() not in FORMATS:
            out_path = out_path.with_suffix(self.format_combo.currentData())
            self.out_edit.setText(str(out_path))
        args += ["--out", str(out_path)]
        args += self.ctx.project.config.raster.command_args()
        if not self._needs_model():
            # A model is run with its own tile size and overlap (its metadata), as the CLI does.
            tiling = self.ctx.project.config.tiling
            args += ["--tile", str(tiling.tile_size), "--overlap", str(tiling.overlap)]
            args += self._project_cache_args(det.id if det is not None else "spectral", rasters[0])
        if self.extent_view.isChecked():
            crs = self.ctx.layers.crs_wkt
            view = self.ctx.map_view
            if crs is None or view is None:
                raise ValueError("the visible extent needs a georeferenced map")
            aoi = Path(self._tmp.path()) / "visible_extent.gpkg"
            _io.write_extent_aoi(aoi, view.visible_extent(), crs)
            args += ["--aoi", str(aoi)]
        elif self.extent_aoi.isChecked():
            aoi = self.aoi_edit.text().strip()
            if not aoi:
                raise ValueError("choose an AOI file, or another extent")
            args += ["--aoi", aoi]
        if self.overwrite.isChecked():
            args.append("--overwrite")
        return args

    def selected_rasters(self) -> list[str]:
        """The rasters the run is for: the one chosen, or all of the project's."""
        data = self.raster.currentData()
        if data == ALL_RASTERS:
            return [str(p) for p in self.ctx.project.config.rasters]
        return [data] if data else []

    def _project_cache_args(self, stage_id: str, raster: str) -> list[str]:
        """The project's cache, with the stage's settings as pre-computed and the layer's
        threshold: the review's decisions and drawn panels are in that cache, and detect
        honours them there (a cache of its own beside the output knew none of them)."""
        from solardesk.gui.project import GUI_SECTION

        cfg = self.ctx.project.config
        if cfg.cache is None:
            return []
        if not _io._cache_exists(Path(cfg.cache)):
            raise ValueError(
                f"the project's mask cache {cfg.cache} is not there (moved, deleted, or not "
                "made yet): open it where it is (File ▸ Open mask cache) or run the pre-compute"
            )
        args = ["--cache", str(cfg.cache)]
        saved: dict = {}
        for name, section in cfg.plugins.items():
            if (
                name != GUI_SECTION
                and isinstance(section, dict)
                and isinstance(section.get(stage_id), dict)
            ):
                saved = section[stage_id]
                break
        for key, value in saved.items():
            if key != "threshold":  # read-time: --threshold below
                args += ["--set", f"{key}={json.dumps(value)}"]
        threshold = saved.get("threshold")
        for layer in self.ctx.layers.of_kind("pseudo"):
            same_cache = Path(layer.cache_path) == Path(cfg.cache)
            if same_cache and str(layer.raster.path) == str(raster):
                threshold = layer.threshold  # what the user sees on the map
                break
        if isinstance(threshold, int | float):
            args += ["--threshold", f"{threshold:g}"]
        return args

    def run(self) -> bool:
        if self.process.running:
            return False
        try:
            args = self.build_args()
        except Exception as e:
            self.status.setText(f"Cannot run: {e}")
            return False
        self.output = Path(args[args.index("--out") + 1])
        det = self.current_detector()
        if det is not None:
            self.ctx.project.set_gui("detector", det.id)
        self.progress.setRange(0, 0)
        self.status.setText(f"Detecting panels → {self.output.name}…")
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        cache = Path(args[args.index("--cache") + 1]) if "--cache" in args else None
        rasters = self.selected_rasters()
        # Tiles are shown as they come for the first raster (all of them at the end).
        self._run_rasters = rasters
        self._show_live(Path(rasters[0]), self.output, cache)
        self.process.start(args)
        return True

    # -- detections as tiles finish ----------------------------------------------------------------
    def _show_live(self, raster_path: Path, output: Path, cache: Path | None = None) -> None:
        """A layer of the command's cache (the project's, else the CLI's default beside the
        output) on the map."""
        from solardesk.core.detect import default_cache_path
        from solardesk.gui.layers import RasterLayer

        self._drop_live()
        raster = self.ctx.layers.add_raster(raster_path)
        if not isinstance(raster, RasterLayer):
            return
        threshold = 0.5 if self._needs_model() else 0.85
        cache = cache or default_cache_path(output)
        if self.ctx.layers.find(f"pseudo:{cache}:{raster.path}") is not None:
            # The project's own layer of that cache shows the tiles as they come: refreshed,
            # never renamed or removed (it is the user's review layer).
            self._shared_live = self.ctx.layers.find(f"pseudo:{cache}:{raster.path}")
            self._live_refreshed = time.monotonic()
            return
        self.live = self.ctx.layers.add_pseudo_labels(cache, raster, threshold)
        self.live.set_name(f"Detecting… → {output.name}")
        self._live_refreshed = time.monotonic()

    def _refresh_live(self) -> None:
        now = time.monotonic()
        shown = self.live if self.live is not None else self._shared_live
        if shown is not None and now - self._live_refreshed >= LIVE_REFRESH_S:
            self._live_refreshed = now
            shown.refresh()

    def _drop_live(self) -> None:
        if self._shared_live is not None:
            # (the command's last tiles, and those of the other rasters of the run)
            cache = self._shared_live.cache_path
            ran = {str(Path(r)) for r in self._run_rasters}
            for layer in self.ctx.layers.of_kind("pseudo"):
                if layer.cache_path == cache and str(layer.raster.path) in ran:
                    layer.refresh(full=True)
            self._shared_live = None
        if self.live is not None:
            self.ctx.layers.remove(self.live)
            self.live = None

    def cancel(self) -> None:
        if self.process.running:
            self.process.terminate()
            self.status.setText("Cancelling…")

    @Slot(int, int)
    def _on_progress_text(self, n: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(n)
        self.status.setText(f"Detecting panels: {n}/{total} tiles")
        self._refresh_live()

    @Slot(dict)
    def _on_event(self, ev: dict) -> None:
        if ev.get("event") == "progress":
            done, total = ev.get("done", ev.get("step")), ev.get("total", ev.get("steps"))
            if isinstance(done, int) and isinstance(total, int):
                self._on_progress_text(done, total)
        elif ev.get("event") == "error":
            self.ctx.notifications.error("Detect", str(ev.get("message", ev)))

    @Slot(str)
    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(text)

    @Slot(object)
    def _on_exited(self, info: ExitInfo) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setRange(0, 1)
        self._drop_live()
        if info.ok and self.output is not None and self.output.exists():
            self.progress.setValue(1)
            self.results.append(self.output)
            layer = self.ctx.layers.add_vector(self.output)
            layer.dataReady.connect(self._on_layer_ready)
            self.status.setText(f"Written {self.output}. Loading it on the map…")
            return
        self.progress.setValue(0)
        if info.stopped:
            self.status.setText("Detection cancelled; nothing was written.")
            return
        why = (
            info.error
            or info.error_event
            or (f"exit code {info.code}" if not info.crashed else "crashed")
        )
        if info.ok:
            why = f"it finished but {self.output} does not exist"
        self.status.setText(f"Detection failed: {why}")
        self.ctx.notifications.error("Detect", f"solardesk detect failed: {why}", info.tail)

    @Slot()
    def _on_layer_ready(self) -> None:
        layer = self.sender()
        data = getattr(layer, "data", None)
        if data is not None:
            text = f"{counted(data.count, 'panel')} written to {Path(data.path).name}."
            self.status.setText(text)
            self.ctx.notifications.info("Detect", text)
            with contextlib.suppress(RuntimeError, TypeError):
                layer.dataReady.disconnect(self._on_layer_ready)

    def shutdown(self) -> None:
        if self.process.running:
            self.process.kill()
            self.process.wait(2000)

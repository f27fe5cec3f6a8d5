"""The main window: the map in the middle, the layers on the left, a dock per step on the right,
messages at the bottom, coordinates and scale in the status bar.

The window wires models to views and the project file to the layers; it holds no pipeline
logic (the docks call the core and the ``solardesk`` command line, like the CLI does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QEventLoop, Qt, QTimer, Slot
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QProgressDialog,
    QStyle,
    QToolBar,
    QWidget,
)

from solardesk import __version__
from solardesk.core.jobs import counted
from solardesk.gui import _io
from solardesk.gui.context import AppContext
from solardesk.gui.docks.detect import DetectDock
from solardesk.gui.docks.plugins import PluginsDock
from solardesk.gui.docks.precompute import PrecomputeDock
from solardesk.gui.docks.review import ReviewDock
from solardesk.gui.docks.train import TrainDock
from solardesk.gui.layers import Layer, PseudoLabelLayer, RasterLayer, VectorLayer
from solardesk.gui.layers_panel import LayersPanel
from solardesk.gui.map_view import MapView
from solardesk.gui.notifications import NotificationIndicator, NotificationPanel
from solardesk.gui.workers import Job, call

log = logging.getLogger(__name__)

#: How long a closing window waits for the review's queued cache edits to be written.
EDITS_CLOSE_TIMEOUT_MS = 30000
#: How long it waits for them before it says so (an edit takes milliseconds; a cache another
#: program holds locked can take seconds).
EDITS_QUIET_WAIT_MS = 300

RASTER_FILTER = "Rasters (*.tif *.tiff *.vrt *.jpg *.jpeg *.png *.jp2 *.img);;All files (*)"
VECTOR_FILTER = "Vector files (*.gpkg *.shp *.geojson *.json);;All files (*)"
PROJECT_FILTER = "SolarDesk project (*.json)"
_RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jpg", ".jpeg", ".png", ".jp2", ".img"}
_VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson"}
_CACHE_SUFFIXES = {".sqlite", ".db"}


class MainWindow(QMainWindow):
    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.confirm_unsaved = True
        self._closing = False
        self.setObjectName("SolarDeskMainWindow")
        self.resize(1400, 900)
        self.setDockOptions(
            QMainWindow.DockOption.AnimatedDocks
            | QMainWindow.DockOption.AllowTabbedDocks
            | QMainWindow.DockOption.AllowNestedDocks
        )
        # Files and folders dropped anywhere on the window are opened (open_paths).
        self.setAcceptDrops(True)
        self._listing = 0  # folders and caches being listed on the io thread
        self.map_view = MapView(ctx.layers, ctx.io, self)
        ctx.map_view = self.map_view
        self.setCentralWidget(self.map_view)

        self.docks: dict[str, QDockWidget] = {}
        self.layers_panel = LayersPanel(ctx.layers)
        self.layers_panel.zoomToLayer.connect(self._zoom_to_layer)
        self._add_dock("layers", "Layers", self.layers_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.messages = NotificationPanel(ctx.notifications)
        self._add_dock("messages", "Messages", self.messages, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.precompute = PrecomputeDock(ctx)
        self.review = ReviewDock(ctx)
        self.train = TrainDock(ctx)
        self.detect = DetectDock(ctx)
        self.plugins = PluginsDock(ctx)
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self._add_dock("precompute", "Pre-compute", self.precompute, right)
        self._add_dock("review", "Review", self.review, right)
        self._add_dock("train", "Train", self.train, right)
        self._add_dock("detect", "Detect / export", self.detect, right)
        self._add_dock("plugins", "Plugins", self.plugins, right)
        first = self.docks["precompute"]
        for key in ("review", "train", "detect", "plugins"):
            self.tabifyDockWidget(first, self.docks[key])
        self.splitDockWidget(self.docks["layers"], self.docks["messages"], Qt.Orientation.Vertical)
        first.raise_()
        self.resizeDocks(
            [self.docks["layers"], self.docks["messages"]], [520, 180], Qt.Orientation.Vertical
        )
        self.resizeDocks([self.docks["layers"]], [280], Qt.Orientation.Horizontal)
        self.resizeDocks([first], [430], Qt.Orientation.Horizontal)
        self._add_plugin_docks()

        self._build_actions()
        self._build_status_bar()

        project = ctx.project
        project.loaded.connect(self._on_project_loaded)
        project.changed.connect(self._update_title)
        project.saved.connect(self._on_saved)
        ctx.layers.crsChanged.connect(self._on_crs)
        ctx.jobs.jobStarted.connect(self._on_job_started)
        ctx.jobs.jobEnded.connect(self._on_job_ended)
        ctx.notifications.posted.connect(self._on_notification)
        self.map_view.cursorMoved.connect(self._on_cursor)
        self.map_view.scaleChanged.connect(self._on_scale)
        self._restore_window()
        self._update_title()
        self._report_failed_plugins()

    # -- construction -------------------------------------------------------------------------
    def _add_dock(self, key: str, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock_{key}")
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(area, dock)
        self.docks[key] = dock
        return dock

    def _add_plugin_docks(self) -> None:
        """Docks contributed by plugins; one that fails is reported and skipped."""
        import inspect

        pm = self.ctx.plugin_manager
        try:
            contributed = pm.contributions("solardesk_dock_widgets")
        except Exception as e:
            self.ctx.notifications.error("plugins", f"listing plugin docks failed: {e}")
            return
        for plugin, contribution in contributed:
            try:
                factory = contribution.load()
                takes_ctx = bool(inspect.signature(factory).parameters)
                widget = factory(self.ctx) if takes_ctx else factory()
                if not isinstance(widget, QWidget):
                    raise TypeError(f"{contribution.target} returned {type(widget).__name__}")
            except Exception as e:
                self.ctx.notifications.error(
                    f"plugin {plugin}", f"dock '{contribution.title}' failed to load: {e}"
                )
                continue
            area = {
                "left": Qt.DockWidgetArea.LeftDockWidgetArea,
                "bottom": Qt.DockWidgetArea.BottomDockWidgetArea,
            }.get(contribution.area, Qt.DockWidgetArea.RightDockWidgetArea)
            dock = self._add_dock(f"{plugin}.{contribution.id}", contribution.title, widget, area)
            if area == Qt.DockWidgetArea.RightDockWidgetArea:
                self.tabifyDockWidget(self.docks["precompute"], dock)

    def _action(self, text: str, slot, shortcut=None, icon=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if icon is not None:
            action.setIcon(self.style().standardIcon(icon))
        if tip:
            action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        return action

    def _build_actions(self) -> None:
        sp = QStyle.StandardPixmap
        self.act_new = self._action("&New project", self.new_project, QKeySequence.StandardKey.New)
        self.act_open = self._action(
            "&Open project…",
            self.open_project_dialog,
            QKeySequence.StandardKey.Open,
            sp.SP_DialogOpenButton,
        )
        self.act_save = self._action(
            "&Save project",
            self.save_project,
            QKeySequence.StandardKey.Save,
            sp.SP_DialogSaveButton,
        )
        self.act_save_as = self._action(
            "Save project &as…", self.save_project_as, QKeySequence.StandardKey.SaveAs
        )
        self.act_add_raster = self._action(
            "Add &raster…",
            self.add_raster_dialog,
            "Ctrl+Shift+R",
            sp.SP_FileIcon,
            "Add a GeoTIFF, COG, VRT or JPEG/PNG with a world file",
        )
        self.act_add_folder = self._action(
            "Add raster &folder…",
            self.add_raster_folder_dialog,
            None,
            sp.SP_DirIcon,
            "Add every raster directly inside a folder (as `solardesk precompute FOLDER` reads it)",
        )
        self.act_add_vector = self._action(
            "Add &vector layer…",
            self.add_vector_dialog,
            "Ctrl+Shift+V",
            sp.SP_FileLinkIcon,
            "Add a GeoPackage, Shapefile or GeoJSON",
        )
        self.act_open_cache = self._action(
            "Open mask &cache…",
            self.open_cache_dialog,
            None,
            sp.SP_DriveHDIcon,
            "Show the pseudo-labels of a SolarDesk cache",
        )
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_zoom_full = self._action(
            "Zoom to &full extent", self.map_view.zoom_full, "Ctrl+0", sp.SP_DesktopIcon
        )
        self.act_zoom_in = self._action("Zoom &in", lambda: self.map_view.zoom_by(1.25), "Ctrl++")
        self.act_zoom_out = self._action("Zoom &out", lambda: self.map_view.zoom_by(0.8), "Ctrl+-")
        menu = self.menuBar()
        m_file = menu.addMenu("&File")
        for a in (self.act_new, self.act_open):
            m_file.addAction(a)
        self.recent_menu = m_file.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        for a in (self.act_save, self.act_save_as):
            m_file.addAction(a)
        m_file.addSeparator()
        for a in (self.act_add_raster, self.act_add_folder, self.act_add_vector):
            m_file.addAction(a)
        m_file.addAction(self.act_open_cache)
        m_file.addSeparator()
        m_file.addAction(self.act_quit)
        m_view = menu.addMenu("&View")
        for a in (self.act_zoom_full, self.act_zoom_in, self.act_zoom_out):
            m_view.addAction(a)
        m_view.addSeparator()
        for dock in self.docks.values():
            m_view.addAction(dock.toggleViewAction())
        m_help = menu.addMenu("&Help")
        m_help.addAction(self._action("&About SolarDesk", self._about))

        tb = QToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        for a in (
            self.act_open,
            self.act_save,
            None,
            self.act_add_raster,
            self.act_add_vector,
            self.act_open_cache,
            None,
            self.act_zoom_full,
        ):
            if a is None:
                tb.addSeparator()
            else:
                tb.addAction(a)
        self.addToolBar(tb)

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.coords_label = QLabel()
        self.coords_label.setObjectName("coordsLabel")
        self.lonlat_label = QLabel()
        self.lonlat_label.setObjectName("lonlatLabel")
        self.scale_label = QLabel()
        self.scale_label.setObjectName("scaleLabel")
        self.crs_label = QLabel("no CRS")
        self.crs_label.setObjectName("crsLabel")
        self.job_label = QLabel()
        self.job_bar = QProgressBar()
        self.job_bar.setMaximumWidth(140)
        self.job_bar.setMaximumHeight(14)
        self.job_bar.setTextVisible(False)
        self.job_label.hide()
        self.job_bar.hide()
        self.indicator = NotificationIndicator(self.ctx.notifications)
        self.indicator.clicked.connect(self._show_messages)
        for w in (self.job_label, self.job_bar):
            sb.addWidget(w)
        for w in (self.coords_label, self.lonlat_label, self.scale_label, self.crs_label):
            sb.addPermanentWidget(w)
        sb.addPermanentWidget(self.indicator)

    # -- project --------------------------------------------------------------------------------
    def new_project(self) -> None:
        if not self._maybe_save():
            return
        self.ctx.project.new()

    def open_project_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", "", PROJECT_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> bool:
        """Open a project file; or start a project from a raster, a folder of rasters or a
        vector file; or show a mask cache's pseudo-labels (and, when no raster is open yet,
        the rasters it was computed on)."""
        p = Path(path)
        suffix = p.suffix.lower()
        try:
            if p.is_dir():
                self.add_raster_folder(p)
            elif _is_project_file(p):
                if not self._maybe_save():
                    return False
                self.ctx.project.open(p)
                self.ctx.settings.add_recent_project(p)
            elif suffix in _RASTER_SUFFIXES:
                self._name_new_project(p.stem)
                self.add_raster(p)
            elif suffix in _VECTOR_SUFFIXES or suffix == ".json":
                self.add_vector(p)
            elif suffix in _CACHE_SUFFIXES:
                self.open_cache(p)
                self._add_rasters_of_cache(p)
            elif not p.exists():
                raise FileNotFoundError(f"{p}: no such file or folder")
            else:
                raise ValueError(
                    f"{p}: not a project (.json), raster, folder of rasters, vector file or "
                    "mask cache (.sqlite)"
                )
        except Exception as e:
            self.ctx.notifications.error("Open", str(e))
            return False
        return True

    def open_paths(self, paths: Iterable[str | Path]) -> bool:
        """Open several paths at once (dropped on the window, or named on the command line):
        a project first, since it replaces the session; then rasters, folders and vector files
        in the order given; a mask cache last, its layers being the rasters'. Only one project
        can be opened at a time."""
        ps = [Path(p) for p in paths]
        projects = [p for p in ps if _is_project_file(p)]
        ok = True
        if len(projects) > 1:
            self.ctx.notifications.error(
                "Open",
                f"{len(projects)} project files at once ({', '.join(p.name for p in projects)})"
                f": one project is open at a time, so only {projects[0].name} is opened.",
            )
            ps = [p for p in ps if p not in projects[1:]]
            ok = False

        def order(p: Path) -> int:
            if p in projects:
                return 0
            return 2 if p.suffix.lower() in _CACHE_SUFFIXES and p.is_file() else 1

        for p in sorted(ps, key=order):
            ok = self.open_path(p) and ok
        return ok

    def _name_new_project(self, name: str) -> None:
        """An unsaved session without rasters takes the name of the first raster or folder
        added to it, keeping what it holds (a vector file or a cache opened just before)."""
        project = self.ctx.project
        if not project.config.rasters and project.path is None and project.name != name:
            project.set_name(name)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        _offer_local_files(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        _offer_local_files(event)

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.activateWindow()
        self.open_paths(paths)

    def save_project(self) -> bool:
        if self.ctx.project.path is None:
            return self.save_project_as()
        return self._save(None)

    def save_project_as(self) -> bool:
        start = str(self.ctx.project.path or Path.cwd() / f"{self.ctx.project.name}.json")
        path, _ = QFileDialog.getSaveFileName(self, "Save project", start, PROJECT_FILTER)
        return self._save(path) if path else False

    def _save(self, path) -> bool:
        self._store_layer_state()
        try:
            saved = self.ctx.project.save(path)
        except Exception as e:
            self.ctx.notifications.error("Save", str(e))
            return False
        self.ctx.settings.add_recent_project(saved)
        return True

    def _store_layer_state(self) -> None:
        layers = self.ctx.layers.layers
        self.ctx.project.set_gui("layers", {layer.key: layer.state() for layer in layers})
        self.ctx.project.set_gui("order", [layer.key for layer in layers])

    def _maybe_save(self) -> bool:
        if not (self.confirm_unsaved and self.ctx.project.dirty):
            return True
        answer = QMessageBox.question(
            self,
            "Unsaved project",
            f"Save the changes to {self.ctx.project.name}?",
            QMessageBox.StandardButton.Save
            | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Save:
            return self.save_project()
        return answer == QMessageBox.StandardButton.Discard

    def _maybe_stop_training(self) -> bool:
        """A training run in progress when the window closes: stop it cleanly (its current
        step ends and a checkpoint is saved, however long that takes) or keep the window.
        Without asking (``confirm_unsaved`` off), :meth:`shutdown` stops it within 3 s."""
        if not (self.confirm_unsaved and self.train.running):
            return True
        answer = QMessageBox.question(
            self,
            "Training in progress",
            "A training run is in progress. Stop it and close? It finishes its current step "
            "and saves a checkpoint first; Resume continues from there.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.train.stop_and_wait(self)
        return True

    @Slot()
    def _on_project_loaded(self) -> None:
        project = self.ctx.project
        layers = self.ctx.layers
        layers.clear()
        self.map_view.clear_selection()
        states = project.gui("layers", {}) or {}
        threshold = self._project_threshold()
        cache = project.config.cache
        if cache is not None and not Path(cache).exists():
            # Moved or deleted (or never made): say so. (Review edits refuse a missing cache
            # rather than make a new, empty one at the old path.)
            self.ctx.notifications.warning(
                "Project",
                f"The project's mask cache {cache} is not there (moved, deleted, or not made "
                "yet): no pseudo-labels or review to show. Open it where it is now with File ▸ "
                "Open mask cache, or run the pre-compute to make it.",
            )
        for path in project.config.rasters:
            raster = layers.add_raster(path)
            if cache is not None:
                layers.add_pseudo_labels(cache, raster, threshold)
        for path in project.vectors():
            layers.add_vector(path)
        for layer in layers.layers:
            if layer.key in states:
                layer.restore(states[layer.key])
        order = project.gui("order", [])
        if order:
            rank = {key: i for i, key in enumerate(order)}
            layers.layers.sort(key=lambda lay: rank.get(lay.key, len(rank)))
            layers.moved.emit()
        project.dirty = False
        self._update_title()

    def _project_threshold(self) -> float:
        for settings in self.ctx.project.config.plugins.values():
            for value in settings.values():
                if isinstance(value, dict) and isinstance(value.get("threshold"), int | float):
                    return float(value["threshold"])
        return 0.85

    @Slot(str)
    def _on_saved(self, path: str) -> None:
        self.statusBar().showMessage(f"Project saved to {path}", 5000)
        self._update_title()

    @Slot()
    def _update_title(self) -> None:
        project = self.ctx.project
        where = f" — {project.path}" if project.path else ""
        self.setWindowTitle(f"{project.name}[*]{where} — SolarDesk")
        self.setWindowModified(project.dirty)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.ctx.settings.recent_projects()
        if not recent:
            a = self.recent_menu.addAction("(none)")
            a.setEnabled(False)
            return
        for p in recent:
            a = self.recent_menu.addAction(str(p))
            a.setEnabled(p.exists())
            a.triggered.connect(lambda _=False, p=p: self.open_path(p))
        self.recent_menu.addSeparator()
        self.recent_menu.addAction("Clear the list").triggered.connect(
            self.ctx.settings.clear_recent_projects
        )

    # -- adding data ----------------------------------------------------------------------------
    def add_raster_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add raster", "", RASTER_FILTER)
        if paths:
            self.add_rasters(paths)

    def add_raster_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add the rasters of a folder")
        if folder:
            self.add_raster_folder(folder)

    def add_raster_folder(self, folder: str | Path) -> Job:
        """Add the rasters directly inside ``folder``: listed on the io thread (a network
        share can be slow), added when the list comes back; what the listing leaves out (a
        JPEG without a world file) is said in Messages."""
        folder = Path(folder)
        return self._list_rasters(
            _io.rasters_in_folder, folder, folder.name, f"Add the rasters of {folder}"
        )

    def _add_rasters_of_cache(self, cache: Path) -> Job | None:
        """With no raster open (nor coming from a folder), a cache opened on its own shows
        the rasters it was computed on, where they still are."""
        if self.ctx.layers.of_kind("raster") or self._listing:
            return None
        return self._list_rasters(
            _io.rasters_of_cache, cache, cache.stem, f"Open the rasters of {cache}", alone=True
        )

    def _list_rasters(
        self, lister, source: Path, name: str, job_name: str, *, alone: bool = False
    ) -> Job:
        """Run ``lister(source)`` (an :class:`_io.FoundRasters`) on the io thread and add what
        it found, as project ``name``; ``alone``: only if no raster has been opened meanwhile.
        ``_listing`` counts the listings under way."""
        job = self.ctx.io.submit(lambda: call(lister, source), job_name)
        self._listing += 1

        def add(found: _io.FoundRasters) -> None:
            if not (alone and self.ctx.layers.of_kind("raster")):
                self._add_found(found, name)

        job.finished.connect(add)
        job.ended.connect(self._listing_ended)
        return job

    def _listing_ended(self, *_args) -> None:
        self._listing -= 1

    def _add_found(self, found: _io.FoundRasters, name: str) -> None:
        for note in found.notes:
            self.ctx.notifications.warning("Add rasters", note)
        if found.paths:
            self._name_new_project(name)
        layers = self.add_rasters(found.paths)
        self.statusBar().showMessage(f"{counted(len(layers), 'raster')} added from {name}", 5000)

    def add_raster(self, path: str | Path) -> RasterLayer:
        return self.add_rasters([path])[0]

    def add_rasters(self, paths: Iterable[str | Path]) -> list[RasterLayer]:
        """Add rasters to the project (one edit) and to the map (each opens on the io thread
        and reports its own failure), with pseudo-labels when the project has a cache."""
        project = self.ctx.project
        resolved = [Path(p).resolve() for p in paths]
        project.add_rasters(resolved)
        threshold = self._project_threshold()
        layers = []
        for p in resolved:
            layer = self.ctx.layers.add_raster(p)
            if project.config.cache is not None:
                self.ctx.layers.add_pseudo_labels(project.config.cache, layer, threshold)
            layers.append(layer)
        return layers

    def add_vector_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add vector layer", "", VECTOR_FILTER)
        for p in paths:
            self.add_vector(p)

    def add_vector(self, path: str | Path) -> VectorLayer:
        self.ctx.project.add_vector(path)
        return self.ctx.layers.add_vector(Path(path).resolve())

    def open_cache_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open mask cache", "", "SolarDesk cache (*.sqlite *.db);;All files (*)"
        )
        if path:
            self.open_cache(path)

    def open_cache(self, path: str | Path) -> list[PseudoLabelLayer]:
        self.ctx.project.set_cache(path)
        cache = self.ctx.project.config.cache
        threshold = self._project_threshold()
        return [
            self.ctx.layers.add_pseudo_labels(cache, layer, threshold)
            for layer in self.ctx.layers.of_kind("raster")
        ]

    # -- status bar --------------------------------------------------------------------------------
    @Slot(object)
    def _on_cursor(self, xy) -> None:
        if xy is None:
            self.coords_label.setText("")
            self.lonlat_label.setText("")
            return
        x, y = xy
        frame = self.map_view.frame
        if frame.crs_wkt is None:
            self.coords_label.setText(f"x {x:.1f}  y {y:.1f} px")
            self.lonlat_label.setText("")
            return
        self.coords_label.setText(f"E {x:,.2f}  N {y:,.2f}")
        ll = frame.lonlat(x, y)
        if ll is None:
            self.lonlat_label.setText("")
        else:
            lon, lat = ll
            self.lonlat_label.setText(
                f"{abs(lat):.6f}° {'N' if lat >= 0 else 'S'}  "
                f"{abs(lon):.6f}° {'E' if lon >= 0 else 'W'}"
            )

    @Slot(object)
    def _on_scale(self, mpp) -> None:
        if mpp is None:
            self.scale_label.setText("")
            return
        denom = self.map_view.scale_denominator()
        if denom is None:
            self.scale_label.setText(f"{mpp:.3g} px/px")
        else:
            self.scale_label.setText(f"1:{denom:,.0f} · {mpp:.3g} m/px")

    @Slot()
    def _on_crs(self) -> None:
        self.crs_label.setText(self.map_view.frame.crs_name if self.ctx.layers.crs_known else "")

    @Slot(object)
    def _on_job_started(self, job: Job) -> None:
        self.job_label.setText(job.name)
        self.job_label.show()
        self.job_bar.setRange(0, 0)
        self.job_bar.show()
        job.progress.connect(self._on_job_progress)

    @Slot(object)
    def _on_job_progress(self, p) -> None:
        total = getattr(p, "total", 0)
        if total:
            self.job_bar.setRange(0, total)
            self.job_bar.setValue(getattr(p, "done", 0))

    @Slot(object)
    def _on_job_ended(self, _job: Job) -> None:
        active = self.ctx.jobs.active_jobs
        if active:
            self.job_label.setText(active[-1].name)
        else:
            self.job_label.hide()
            self.job_bar.hide()

    @Slot(object)
    def _on_notification(self, n) -> None:
        if n.level != "info":
            self.statusBar().showMessage(f"{n.source}: {n.message}", 8000)

    def _show_messages(self) -> None:
        dock = self.docks["messages"]
        dock.show()
        dock.raise_()
        self.ctx.notifications.mark_read()

    @Slot(object)
    def _zoom_to_layer(self, layer: Layer) -> None:
        extent = layer.extent() if layer is not None else None
        if extent is not None:
            self.map_view.zoom_to(extent)

    def show_dock(self, key: str) -> QDockWidget:
        dock = self.docks[key]
        dock.show()
        dock.raise_()
        return dock

    def _report_failed_plugins(self) -> None:
        for r in self.ctx.plugin_manager.records:
            if r.status == "failed":
                self.ctx.notifications.warning(f"plugin {r.name}", r.error or "failed to load")

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About SolarDesk",
            f"<b>SolarDesk {__version__}</b><br>Maps solar panels on aerial imagery "
            "without hand-made labels.",
        )

    # -- window state ------------------------------------------------------------------------------
    def _restore_window(self) -> None:
        geometry = self.ctx.settings.window_geometry()
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.ctx.settings.window_state()
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:  # (a second request while the first one waits for the edits)
            event.ignore()
            return
        if not self._maybe_save() or not self._maybe_stop_training():
            event.ignore()
            return
        self.ctx.settings.save_window(self.saveGeometry(), self.saveState())
        self._closing = True
        try:
            self.shutdown()
        finally:
            self._closing = False
        event.accept()

    def shutdown(self) -> None:
        """Stop every job and child process; wait for worker threads (called on close)."""
        self.train.shutdown()
        self.detect.shutdown()
        self.map_view.feeder.tasks.clear()
        for runner in (self.ctx.jobs, self.ctx.io):
            runner.shutdown()
        # The review's decisions and drawings still queued are written, not dropped.
        pending = self.ctx.edits.unfinished()
        if not self._write_queued_edits(pending):
            left = self.ctx.edits.unfinished()
            log.warning(
                "closing: %d of %d review edits were still being written to the project "
                "cache after %d s; they may be lost",
                left,
                pending,
                EDITS_CLOSE_TIMEOUT_MS // 1000,
            )
        # Queued results of the jobs that just ended must not reach half-destroyed widgets.
        QTimer.singleShot(0, lambda: None)

    def _write_queued_edits(self, pending: int) -> bool:
        """Wait for the review's queued cache edits (all started now, in order); after
        ``EDITS_QUIET_WAIT_MS`` say so in a dialog that counts them down, with no cancel
        button (an edit left unwritten is a decision lost). False if some were still being
        written after ``EDITS_CLOSE_TIMEOUT_MS``."""
        edits = self.ctx.edits
        deadline = time.monotonic() + EDITS_CLOSE_TIMEOUT_MS / 1000
        if edits.shutdown(EDITS_QUIET_WAIT_MS, finish=True):
            return True
        dialog = QProgressDialog(self)
        dialog.setWindowTitle("Closing SolarDesk")
        dialog.setCancelButton(None)
        dialog.setRange(0, max(1, pending))
        dialog.setMinimumDuration(0)
        dialog.setWindowModality(Qt.WindowModality.ApplicationModal)
        ok = False
        try:
            while not ok and time.monotonic() < deadline:
                left = edits.unfinished()
                dialog.setLabelText(f"Writing {counted(left, 'review edit')} to the project cache…")
                dialog.setValue(max(0, pending - left))
                dialog.show()
                # Painting and timers only: no click reaches the closing window meanwhile.
                QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents, 50)
                ok = edits.shutdown(100, finish=True)
        finally:
            dialog.close()
            dialog.deleteLater()
        return ok


def _offer_local_files(event: QDragMoveEvent) -> None:
    """Take a drag that carries local files or folders (what :meth:`MainWindow.open_paths`
    opens); leave any other to the widgets below."""
    if any(u.isLocalFile() for u in event.mimeData().urls()):
        event.acceptProposedAction()
    else:
        event.ignore()


def _is_project_file(p: Path) -> bool:
    return p.suffix.lower() == ".json" and p.is_file() and not _looks_like_geojson(p)


def _looks_like_geojson(p: Path) -> bool:
    try:
        with open(p, encoding="utf-8") as f:
            head = f.read(2048)
    except OSError:
        return False
    return '"FeatureCollection"' in head or '"Feature"' in head

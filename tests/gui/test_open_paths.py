"""Opening several things at once: a folder of rasters (File ▸ Add raster folder), files and
folders dropped on the window, a mask cache opened on its own, ``solardesk gui PATHS...``."""

from __future__ import annotations

import json
import shutil

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from solardesk.core.cache import MaskCache
from solardesk.gui.layers import PseudoLabelLayer, RasterLayer, VectorLayer
from tests.gui.conftest import until, wait_raster


def _folder_of_rasters(scene_dir, tmp_path):
    """Two copies of the scene, a PNG without a world file (a preview) and a text file."""
    d = tmp_path / "area"
    d.mkdir()
    shutil.copy(scene_dir / "scene.tif", d / "a.tif")
    shutil.copy(scene_dir / "scene.tif", d / "b.tif")
    (d / "preview.png").write_bytes(b"\x89PNG not read")
    (d / "notes.txt").write_text("not a raster")
    return d


def _rasters(window):
    return sorted(lay.path.name for lay in window.ctx.layers if isinstance(lay, RasterLayer))


def _messages(window, level):
    """The window's messages of ``level``, but the fake broken plugin's."""
    items = window.ctx.notifications.items
    return [n.message for n in items if n.level == level and not n.source.startswith("plugin ")]


def test_a_folder_adds_its_rasters_and_says_what_it_left_out(qtbot, window, scene_dir, tmp_path):
    d = _folder_of_rasters(scene_dir, tmp_path)
    assert window.open_path(d)
    until(lambda: len(_rasters(window)) == 2, timeout=10000)
    assert _rasters(window) == ["a.tif", "b.tif"]
    wait_raster(qtbot, window)
    project = window.ctx.project
    assert project.name == "area"  # an empty session takes the folder's name
    assert [p.name for p in project.config.rasters] == ["a.tif", "b.tif"]
    (note,) = _messages(window, "warning")
    assert "preview.png" in note and "world file" in note
    # Its cache is named after the folder (one raster's would be named after the raster).
    assert project.default_cache_path() == d / "area.solardesk.sqlite"
    project.set_name('roofs: 2023/"east"')
    assert project.default_cache_path() == d / "roofs_ 2023_east.solardesk.sqlite"

    # The layers panel follows additions and removals row by row, keeping the selection.
    panel = window.layers_panel

    def rows():
        return [
            panel.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(panel.list.count())
        ]

    assert rows() == window.ctx.layers.layers
    top, bottom = window.ctx.layers.layers
    panel.select(bottom)
    window.ctx.layers.remove(top)
    assert rows() == [bottom] and panel.current_layer() is bottom
    window.ctx.layers.remove(bottom)
    assert rows() == [] and panel.current_layer() is None
    window.add_rasters([d / "a.tif", d / "b.tif"])
    assert rows() == window.ctx.layers.layers and len(rows()) == 2
    assert panel.current_layer().path.name == "a.tif"  # the first one in, then kept

    # A folder whose images are all in subfolders stands for them (a drop has no pattern).
    nested = tmp_path / "nested"
    for sub in ("2023", "2024/east"):
        (nested / sub).mkdir(parents=True)
        shutil.copy(scene_dir / "scene.tif", nested / sub / "n.tif")
    window.open_path(nested)
    until(lambda: len(_rasters(window)) == 4, timeout=10000)
    assert any(
        "no image directly inside; the 2 in its subfolders" in m
        for m in _messages(window, "warning")
    )

    # The File menu has the same, and a folder with no image in it is a clear message.
    assert window.act_add_folder.text() == "Add raster &folder…"
    empty = tmp_path / "empty"
    empty.mkdir()
    window.add_raster_folder(empty)
    until(lambda: any("no image in it" in m for m in _messages(window, "warning")))
    assert len(_rasters(window)) == 4
    assert len(project.config.rasters) == 4  # each added once


def _drop(target, paths, kind=QDropEvent):
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    actions = Qt.DropAction.CopyAction
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    if kind is QDragEnterEvent:
        event = QDragEnterEvent(QPoint(50, 50), actions, data, buttons, mods)
    else:
        event = QDropEvent(QPointF(50, 50), actions, data, buttons, mods)
    QApplication.sendEvent(target, event)
    return event


def test_files_and_folders_dropped_on_the_map_are_opened(qtbot, window, scene_dir, tmp_path):
    d = _folder_of_rasters(scene_dir, tmp_path)
    truth = scene_dir / "truth.geojson"
    viewport = window.map_view.viewport()
    # A drag of local files over the map is taken (the map passes it up to the window) ...
    assert _drop(viewport, [d, truth], QDragEnterEvent).isAccepted()
    # (and over the layers list, which itself only reorders its own rows)
    assert _drop(window.layers_panel.list.viewport(), [d], QDragEnterEvent).isAccepted()
    # ... one of no local file is not.
    data = QMimeData()
    data.setText("just text")
    no_files = QDragEnterEvent(
        QPoint(5, 5),
        Qt.DropAction.CopyAction,
        data,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(viewport, no_files)
    assert not no_files.isAccepted()

    cache = tmp_path / "c.sqlite"
    MaskCache(cache).close()
    # The cache is named first but opened last, so that each raster gets its layer.
    assert _drop(viewport, [cache, d, truth]).isAccepted()  # dropped on the map
    until(lambda: len(_rasters(window)) == 2, timeout=10000)
    kinds = sorted(type(lay).__name__ for lay in window.ctx.layers)
    assert kinds == ["PseudoLabelLayer", "PseudoLabelLayer", "RasterLayer", "RasterLayer",
                     "VectorLayer"]  # fmt: skip
    assert window.ctx.project.config.cache == cache.resolve()
    pseudo = [lay for lay in window.ctx.layers if isinstance(lay, PseudoLabelLayer)]
    assert sorted(p.raster.path.name for p in pseudo) == ["a.tif", "b.tif"]
    assert any(isinstance(lay, VectorLayer) for lay in window.ctx.layers)


def test_a_cache_opened_alone_shows_the_rasters_it_was_computed_on(
    qtbot, window, scene_tif, tmp_path
):
    cache = tmp_path / "project.sqlite"
    with MaskCache(cache) as c:
        c.put_raster("fp-scene", path=scene_tif)
        c.put_raster("fp-gone", path=tmp_path / "moved" / "gone.tif")
    assert window.open_path(cache)
    until(lambda: _rasters(window) == ["scene.tif"], timeout=10000)
    wait_raster(qtbot, window)
    assert window.ctx.project.name == "project"
    assert [type(lay) for lay in window.ctx.layers] == [PseudoLabelLayer, RasterLayer]
    (note,) = _messages(window, "warning")
    assert "1 of the cache's 2 rasters is not at its last known path" in note
    assert "gone.tif" in note

    # With a raster open, a cache adds its layers to it and opens nothing else.
    window.ctx.notifications.clear()
    other = tmp_path / "other.sqlite"
    with MaskCache(other) as c:
        c.put_raster("fp-x", path=scene_tif.parent / "truth.geojson")
    window.open_path(other)
    until(lambda: window.ctx.project.config.cache == other.resolve())
    assert _rasters(window) == ["scene.tif"]

    # Not a cache: a clear message, not a traceback.
    window.ctx.layers.clear()
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not sqlite")
    window.open_path(bad)
    until(lambda: any("bad.sqlite" in m for m in _messages(window, "warning")), timeout=10000)
    assert not _rasters(window)


def test_two_projects_at_once_open_the_first_and_say_so(qtbot, window, scene_tif, tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    for p in (first, second):
        window.ctx.project.new(p.stem)
        window.ctx.project.save(p)
    window.ctx.project.new("empty")
    assert not window.open_paths([second, first, scene_tif])
    assert window.ctx.project.path == second.resolve()
    errors = _messages(window, "error")
    assert len(errors) == 1 and "only second.json is opened" in errors[0]
    # The raster named with them went into the opened project.
    until(lambda: _rasters(window) == ["scene.tif"])
    assert [p.name for p in window.ctx.project.config.rasters] == ["scene.tif"]
    json.loads(second.read_text())  # (the project file is untouched JSON)


def test_nothing_there_or_unknown_is_a_clear_message(window, tmp_path):
    assert not window.open_path(tmp_path / "missing.tif.gz")
    odd = tmp_path / "table.csv"
    odd.write_text("a,b\n")
    assert not window.open_path(odd)
    errors = _messages(window, "error")
    assert "missing.tif.gz: no such file or folder" in errors[0]
    assert "table.csv: not a project (.json), raster, folder of rasters" in errors[1]


def test_the_open_folder_benchmark_prints_both_ways(qtbot, monkeypatch, capsys):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_gui_open_folder

    assert bench_gui_open_folder.main(["--count", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 rasters in" in out
    for label in ("the folder, in one batch", "one add_raster per file"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(label)]
        seconds, stall_ms = (float(v) for v in line[len(label) :].split())
        assert 0 < seconds < 300 and stall_ms > 0
    assert "shorter in one batch" in out

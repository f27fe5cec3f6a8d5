"""The pre-compute dock: a form from the stage's settings, a real run into the cache, tiles
on the map as they finish, cancel and resume, and an event loop that never stalls."""

from __future__ import annotations

from solardesk.core.cache import MaskCache
from solardesk.core.jobs import Progress
from solardesk.core.tiling import make_grid
from solardesk.gui.layers import PseudoLabelLayer
from solardesk.gui.map_view import PseudoLabelRenderer
from tests.gui.conftest import STALL_LIMIT_S, StallMeter, until, wait_raster


def _prepare(qtbot, window, scene_tif, tmp_path, work_ms=20.0, tile=256):
    window.open_path(scene_tif)
    wait_raster(qtbot, window)
    dock = window.precompute
    window.show_dock("precompute")
    assert dock.stage is not None and dock.stage.id == "fake"
    # The form is generated from FakeSettings: bounds and read-time marks come from it.
    assert set(dock.form.editors) == {"threshold", "size", "work_ms"}
    assert dock.form.editors["size"].widget.maximum() == 60
    assert dock.form.labels["threshold"].font().italic()
    dock.form.set_values({"work_ms": work_ms, "threshold": 0.6})
    dock.tiling_form.set_values({"tile_size": tile, "overlap": 32})
    window.ctx.project.set_cache(tmp_path / "cache.sqlite")
    return dock


def _n_tiles(tile=256, overlap=32):
    from affine import Affine

    return len(make_grid(640, 640, Affine.identity(), tile, overlap))


def test_precompute_fills_the_cache_and_the_map(qtbot, window, scene_tif, tmp_path):
    dock = _prepare(qtbot, window, scene_tif, tmp_path)
    meter = StallMeter()
    meter.start()
    dock.run()
    assert dock.running
    until(lambda: not dock.running, timeout=30000)
    worst = meter.stop()
    print(f"pre-compute: worst stall {worst * 1000:.0f} ms at {meter.worst_at:.2f} s")
    assert worst < STALL_LIMIT_S, (
        f"the event loop stalled {worst * 1000:.0f} ms, {meter.worst_at:.2f} s into the pre-compute"
    )

    n = _n_tiles()
    assert dock.progress.value() == dock.progress.maximum() == n
    assert "Done" in dock.status.text()
    # A progress record that reaches the GUI thread after the end changes nothing.
    dock._on_progress(Progress(1, n, 0.1, "late"))
    assert "Done" in dock.status.text() and dock.progress.value() == n
    with MaskCache(tmp_path / "cache.sqlite", readonly=True) as cache:
        st = cache.stats()
        assert st["tiles"] == n
        assert st["instances"] == 8 * n  # 8 squares per 256-px tile (see fake_stage)
    # The stage's settings were kept in the project.
    assert window.ctx.project.plugin_settings("fake")["fake"]["work_ms"] == 20.0

    layer = next(lay for lay in window.ctx.layers if isinstance(lay, PseudoLabelLayer))
    until(lambda: len(layer.records) == 8 * n, timeout=10000)
    assert len(layer.tiles) == n
    assert layer.threshold == 0.6
    renderer = window.map_view.renderers[layer]
    assert isinstance(renderer, PseudoLabelRenderer)
    until(lambda: len(renderer.item.polys) == 8 * n, timeout=10000)
    # Each square is 40 px at 0.15 m: 6 m on a side on the map.
    rec = next(iter(layer.records.values()))
    minx, miny, maxx, maxy = rec.bounds
    assert abs((maxx - minx) - 6.0) < 0.2 and abs((maxy - miny) - 6.0) < 0.2


def test_tiles_appear_while_the_job_runs(qtbot, window, scene_tif, tmp_path):
    dock = _prepare(qtbot, window, scene_tif, tmp_path, work_ms=150.0, tile=128)
    dock.run()
    layer = None

    def some_tiles_shown():
        nonlocal layer
        layer = next(lay for lay in window.ctx.layers if isinstance(lay, PseudoLabelLayer))
        assert layer.tiles

    until(some_tiles_shown, timeout=20000)
    assert dock.running, "tiles must show up before the job ends"
    assert len(layer.tiles) < _n_tiles(128)
    dock.cancel()
    until(lambda: not dock.running, timeout=20000)


def test_cancel_keeps_finished_tiles_and_a_rerun_resumes(qtbot, window, scene_tif, tmp_path):
    dock = _prepare(qtbot, window, scene_tif, tmp_path, work_ms=120.0, tile=128)
    dock.run()
    until(lambda: dock.progress.value() >= 3, timeout=20000)
    dock.cancel()
    until(lambda: not dock.running, timeout=20000)
    assert "Cancelled" in dock.status.text()
    with MaskCache(tmp_path / "cache.sqlite", readonly=True) as cache:
        kept = cache.stats()["tiles"]
    total = _n_tiles(128)
    assert 3 <= kept < total

    dock.run()  # the same parameters: the finished tiles are skipped
    until(lambda: not dock.running, timeout=60000)
    assert f"{kept} already cached" in dock.status.text()
    with MaskCache(tmp_path / "cache.sqlite", readonly=True) as cache:
        assert cache.stats()["tiles"] == total


def test_a_failing_stage_is_reported_not_fatal(qtbot, window, scene_tif, tmp_path):
    dock = _prepare(qtbot, window, scene_tif, tmp_path)
    notes_file = tmp_path / "notes.sqlite"  # a "cache" that is no SQLite file
    notes_file.write_text("not a database\n" * 50)
    window.ctx.project.set_cache(notes_file)
    dock.run()
    until(lambda: not dock.running, timeout=20000)
    assert dock.status.text().startswith("Failed")
    notes = list(window.ctx.notifications.items)
    assert any("not a SolarDesk cache" in n.message for n in notes), [n.message for n in notes]
    assert dock.run_btn.isEnabled()


def test_workers_default_to_auto_as_on_the_command_line(
    qtbot, window, scene_tif, tmp_path, monkeypatch
):
    """Auto (ADR 0057) is passed on as workers=None; a number as itself."""
    import solardesk.core.pipeline as pipeline

    dock = _prepare(qtbot, window, scene_tif, tmp_path)
    assert dock.workers.value() == 0 and dock.workers.text() == "Auto"
    seen = []
    real = pipeline.precompute

    def recording(rasters, cache, **kw):
        seen.append(kw["workers"])
        return real(rasters, cache, **kw)  # (the fake stage is not parallel: in process)

    monkeypatch.setattr(pipeline, "precompute", recording)
    for value in (0, 1):
        dock.workers.setValue(value)
        dock.run()
        until(lambda: not dock.running, timeout=10000)
    assert seen == [None, 1]

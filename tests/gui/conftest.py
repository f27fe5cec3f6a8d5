"""Fixtures of the GUI tests: synthetic rasters, a fake stage and trainer, a main window.

Every test gets its own QSettings file (nothing touches the user's settings) and a plugin
manager holding only the fake plugin, so the tests depend neither on the builtin plugins'
progress nor on the network or a GPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QEventLoop, QSettings, QTimer

HERE = Path(__file__).parent
FAKE_SOLARDESK = HERE / "fake_solardesk.py"


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory) -> Path:
    """A 640×640 synthetic aerial scene at 0.15 m in UTM 32N, with its truth GeoJSON."""
    from solardesk.synthetic import SceneSpec, generate_scene, write_scene

    d = tmp_path_factory.mktemp("scene")
    scene = generate_scene(SceneSpec(height=640, width=640, gsd=0.15, seed=3))
    write_scene(scene, d / "scene.tif", d / "truth.geojson")
    return d


@pytest.fixture(scope="session")
def scene_tif(scene_dir) -> Path:
    return scene_dir / "scene.tif"


@pytest.fixture(scope="session")
def big_tif(tmp_path_factory) -> Path:
    """A 6000×6000 tiled GeoTIFF without overviews (a gradient: cheap to write)."""
    d = tmp_path_factory.mktemp("big")
    path = d / "big.tif"
    n, block = 6000, 512
    profile = dict(
        driver="GTiff",
        width=n,
        height=n,
        count=3,
        dtype="uint8",
        crs="EPSG:32632",
        transform=Affine(0.1, 0, 680000.0, 0, -0.1, 5150000.0),
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
    )
    from rasterio.windows import Window

    with rasterio.open(path, "w", **profile) as ds:
        for r in range(0, n, block):
            for c in range(0, n, block):
                h, w = min(block, n - r), min(block, n - c)
                yy, xx = np.mgrid[r : r + h, c : c + w]
                data = np.stack([(xx // 4) % 256, (yy // 4) % 256, ((xx + yy) // 64) % 256]).astype(
                    np.uint8
                )
                ds.write(data, window=Window(c, r, w, h))
    return path


@pytest.fixture
def app_settings(tmp_path):
    from solardesk.gui.app_settings import AppSettings

    return AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))


@pytest.fixture
def plugin_manager():
    from solardesk.plugin_api import PluginManager, PluginRecord
    from tests.gui.fake_stage import FakePlugin

    pm = PluginManager()
    pm.register(FakePlugin(), "fake")
    pm.records.append(
        PluginRecord(
            "broken",
            "broken_plugin",
            "broken-plugin",
            "0.1",
            ok=False,
            error="ModuleNotFoundError: No module named 'torch' — install the package that "
            "provides 'torch'",
        )
    )
    return pm


@pytest.fixture
def make_window(qtbot, app_settings, plugin_manager):
    """Build main windows (shown, 1280×800) that are shut down cleanly after the test."""
    from solardesk.gui.app import create_main_window

    made = []

    def make(settings=None):
        w = create_main_window(
            settings=settings or app_settings,
            plugin_manager=plugin_manager,
            solardesk_command=[sys.executable, str(FAKE_SOLARDESK)],
        )
        w.confirm_unsaved = False
        qtbot.addWidget(w)
        w.resize(1280, 800)
        w.show()
        qtbot.waitExposed(w)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture
def window(make_window):
    return make_window()


# Waiting: PySide6's QTest.qWait (which pytest-qt's qtbot.wait and waitUntil use) keeps the
# GIL while it runs the event loop, so worker threads barely run and a pre-compute takes 30×
# longer than in the app. QEventLoop.exec() releases the GIL, as QApplication.exec() does in
# the app: the helpers below wait that way (see docs/adr/0021-worker-threads.md).
def pause(ms: int) -> None:
    """Run the event loop for ``ms`` milliseconds (releasing the GIL)."""
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def until(condition, timeout: int = 10000, interval: int = 20) -> None:
    """Run the event loop until ``condition()`` is true (or returns None without an
    AssertionError, as in pytest-qt); raise ``TimeoutError`` after ``timeout`` ms."""
    deadline = time.monotonic() + timeout / 1000
    error: AssertionError | None = None
    while True:
        try:
            result = condition()
            if result is None or result:
                return
            error = None
        except AssertionError as e:
            error = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} ms") from error
        pause(interval)


def wait_raster(qtbot, window, timeout=15000):
    """Wait until every raster layer has opened and drawn its thumbnail."""
    from solardesk.gui.layers import RasterLayer

    def ready():
        layers = [lay for lay in window.ctx.layers if isinstance(lay, RasterLayer)]
        assert layers and all(lay.source is not None for lay in layers)

    until(ready, timeout=timeout)


#: The longest the event loop may stall in the responsiveness tests. They catch work done on
#: the GUI thread that belongs on a worker: a tile's analysis, a raster's read, thousands of
#: outlines built at once (seconds, as the folder and outline fixes of stop 39 measured:
#: 3.6 s and 4.5 s). The first stop set 100 ms; a slow CI host then measured 106 ms for the
#: training plot's first paint (pyqtgraph's axes and legend, 60–90 ms on this VM), work that
#: belongs on the GUI thread. A quarter of a second still fails any of those faults and stays
#: under what a user reads as a hang.
STALL_LIMIT_S = 0.25


class StallMeter:
    """Measures the event loop's longest stall with a timer ticking every 10 ms."""

    def __init__(self, interval_ms: int = 10) -> None:
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last: float | None = None
        self.worst = 0.0
        self.worst_at = 0.0  #: seconds after start() when the worst stall ended
        self.ticks = 0
        self.t0 = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None and now - self.last > self.worst:
            self.worst = now - self.last
            self.worst_at = now - self.t0
        self.last = now
        self.ticks += 1

    def start(self) -> None:
        self.last = None
        self.worst = 0.0
        self.ticks = 0
        self.t0 = time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.worst

"""How long the desktop app takes to open a folder of rasters, and how long its GUI thread
stalls meanwhile.

    QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui_open_folder.py [--folder DIR]
        [--count 150]

Without ``--folder`` it writes COUNT small georeferenced GeoTIFFs (64², UTM 32N) into a
temporary folder. It opens the folder as File ▸ Add raster folder does (listed on the io
thread, added in one batch) and waits until every raster layer has opened; then, in a fresh
window, it adds the same rasters one call at a time (``MainWindow.add_raster`` per file, as a
script or an older build would) as the baseline. It prints, for each, the seconds until all
layers are open and the event loop's longest stall (a 10 ms timer's longest gap): the GUI
thread must never hold the app for long, whatever the number of rasters.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_rasters(folder: Path, count: int) -> None:
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    for i in range(count):
        x0, y0 = 680000.0 + (i % 20) * 100, 5150000.0 - (i // 20) * 100
        with rasterio.open(
            folder / f"r{i:04d}.tif",
            "w",
            driver="GTiff",
            width=64,
            height=64,
            count=3,
            dtype="uint8",
            crs="EPSG:32632",
            transform=Affine(0.5, 0, x0, 0, -0.5, y0),
        ) as ds:
            ds.write(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))


def measure(open_them, settings_path: Path, expected: int) -> tuple[float, float]:
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    from solardesk.gui.app import create_main_window
    from solardesk.gui.app_settings import AppSettings

    def pause(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    window = create_main_window(
        settings=AppSettings(QSettings(str(settings_path), QSettings.Format.IniFormat))
    )
    window.confirm_unsaved = False
    window.resize(1280, 800)
    window.show()
    pause(300)
    last = [time.perf_counter()]
    worst = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    pause(50)
    worst[0] = 0.0
    t0 = time.perf_counter()
    open_them(window)
    rasters = window.ctx.layers.of_kind

    def ready() -> bool:
        layers = rasters("raster")
        return len(layers) == expected and all(
            lay.source is not None or lay.error for lay in layers
        )

    while not ready():
        if time.perf_counter() - t0 > 300:
            raise SystemExit("the rasters did not open within 300 s")
        pause(20)
    seconds = time.perf_counter() - t0
    timer.stop()
    window.close()
    return seconds, worst[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="a folder of rasters (default: write some)")
    ap.add_argument("--count", type=int, default=150, help="rasters to write (default 150)")
    args = ap.parse_args(argv)

    from solardesk.gui import _io
    from solardesk.gui.app import application

    application()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = Path(tmp) / "rasters"
            folder.mkdir()
            write_rasters(folder, args.count)
        paths = _io.rasters_in_folder(folder).paths
        print(f"{len(paths)} rasters in {folder}")
        batch = measure(lambda w: w.add_raster_folder(folder), Path(tmp) / "a.ini", len(paths))

        def one_by_one(window) -> None:
            for p in paths:
                window.add_raster(p)

        single = measure(one_by_one, Path(tmp) / "b.ini", len(paths))
    print(f"{'':28}{'all open (s)':>14}{'longest stall (ms)':>20}")
    print(f"{'the folder, in one batch':28}{batch[0]:14.2f}{batch[1] * 1000:20.0f}")
    print(f"{'one add_raster per file':28}{single[0]:14.2f}{single[1] * 1000:20.0f}")
    print(f"→ the longest stall is {single[1] / max(batch[1], 1e-9):.1f}× shorter in one batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())

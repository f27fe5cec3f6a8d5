"""Screenshots of the SolarDesk desktop app on real imagery, taken from a real X11 window.

Usage (from the repository root; the imagery is read in place, nothing is copied)::

    .venv/bin/python docs/screenshots/make_screenshots.py RASTER [--truth VECTOR] [--out DIR]

Without a display the script runs itself again under ``xvfb-run`` (Debian: ``apt-get install
xvfb libxcb-cursor0``; Qt's xcb plugin will not load without the second). It drives the real
app with the real plugins, step by step, as a user would: opens the raster, runs the spectral
pre-compute, reviews a few pseudo-labels, trains a small Mask R-CNN for a few steps on the CPU
(``solardesk train`` in a subprocess; skip it with ``--no-train``), runs ``solardesk detect
--spectral`` and shows the plugins; after each step it grabs the window into ``DIR/<step>.png``
(palette PNG, under 400 KB). Everything it writes besides the screenshots goes to a temporary
folder (``--work`` to keep it), and the app's settings go there too, so the user's own settings
are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_BYTES = 380_000  # the brief's limit is 400 KB; keep a margin
WINDOW = (1600, 980)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raster", type=Path, help="a georeferenced aerial image (GeoTIFF)")
    p.add_argument("--truth", type=Path, help="reference polygons to show as a vector layer")
    p.add_argument("--out", type=Path, default=HERE, help="where the PNGs go (default: here)")
    p.add_argument("--work", type=Path, help="keep the project, cache and outputs here")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="skip the (slow) real training and keep the train.png there is",
    )
    p.add_argument("--train-steps", type=int, default=5, help="steps per epoch (3 epochs)")
    return p.parse_args(argv)


def rerun_under_xvfb() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("SOLARDESK_SCREENSHOTS_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit(
            "No display and no xvfb-run: install Debian's xvfb and Qt's xcb dependency "
            "(apt-get install xvfb libxcb-cursor0)."
        )
    env = {**os.environ, "SOLARDESK_SCREENSHOTS_XVFB": "1"}
    screen = f"-screen 0 {WINDOW[0] + 80}x{WINDOW[1] + 80}x24"
    cmd = [xvfb, "-a", "-s", screen, sys.executable, __file__, *sys.argv[1:]]
    sys.exit(subprocess.call(cmd, env=env))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rerun_under_xvfb()
    os.environ["QT_QPA_PLATFORM"] = "xcb"  # a real X11 window, not the offscreen plugin
    work = args.work or Path(tempfile.mkdtemp(prefix="solardesk-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    raster = args.raster.resolve()
    truth = args.truth.resolve() if args.truth else _default_truth(raster)

    from PySide6.QtCore import QEventLoop, QPoint, QSettings, Qt, QTimer
    from PySide6.QtGui import QCursor
    from PySide6.QtTest import QTest

    from solardesk.gui.app import application, create_main_window
    from solardesk.gui.app_settings import AppSettings

    app = application()
    settings = AppSettings(QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat))
    window = create_main_window(settings=settings)
    window.confirm_unsaved = False
    window.resize(*WINDOW)
    window.move(20, 20)
    window.show()
    QTest.qWaitForWindowExposed(window)
    ctx = window.ctx
    view = window.map_view

    # QTest.qWait keeps the GIL while it spins (PySide6): worker threads would crawl. A
    # QEventLoop releases it, as the app's own event loop does.
    def pause(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def wait(cond, timeout: float = 60.0, what: str = "") -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what or cond}")
            pause(50)

    def settle(ms: int = 600) -> None:
        pause(ms)
        wait(lambda: not view.feeder.busy and not ctx.io.active_jobs, 30, "the map to draw")
        pause(150)

    def shoot(name: str) -> Path:
        settle()
        app.processEvents()
        pixmap = app.primaryScreen().grabWindow(window.winId())
        path = args.out / f"{name}.png"
        save_small_png(pixmap.toImage(), path)
        print(f"{path}: {path.stat().st_size // 1024} KB")
        return path

    def hover(x: float, y: float) -> None:
        pos = view.mapFromScene(view.frame.to_scene(x, y))
        QCursor.setPos(view.viewport().mapToGlobal(pos))
        QTest.mouseMove(view.viewport(), pos)

    # 1. The map: open the raster, zoom into a neighbourhood, cursor coordinates.
    project = ctx.project
    project.new("South Tyrol demo")
    window.add_raster(raster)
    wait(lambda: all(lay.source for lay in ctx.layers.of_kind("raster")), 60, "the raster")
    project.set_cache(work / "demo.sqlite")
    window._save(work / "demo.json")
    src = ctx.layers.of_kind("raster")[0]
    minx, miny, maxx, maxy = src.extent()
    settle()
    cx, cy = minx + 0.62 * (maxx - minx), miny + 0.55 * (maxy - miny)
    view.zoom_to((cx - 80, cy - 80, cx + 80, cy + 80))
    hover(cx + 10, cy + 5)
    window.show_dock("layers")
    shoot("map")

    # 2. Pre-compute with the spectral analyser; the pseudo-labels appear tile by tile.
    window.show_dock("precompute")
    pre = window.precompute
    view.zoom_full()
    pre.run()
    wait(lambda: not pre.running, 600, "the pre-compute")
    pseudo = ctx.layers.of_kind("pseudo")[0]
    wait(lambda: pseudo.records and not pseudo.loading, 60, "the pseudo-labels")
    shoot("precompute")

    # 3. Layers: the reference panels beside the pseudo-labels, threshold and legend.
    reference = solar_reference(truth, work) if truth is not None and truth.exists() else None
    if reference is not None:
        vec = window.add_vector(reference)
        vec.set_name("Reference panels (hand-drawn)")
        wait(lambda: vec.data is not None, 60, "the reference polygons")
    best = pick_instance(
        pseudo.records.values(), reference, (minx, miny, maxx, maxy), ctx.layers.crs_wkt
    )
    bx0, by0, bx1, by1 = best.bounds
    bx, by = (bx0 + bx1) / 2, (by0 + by1) / 2
    view.zoom_to((bx - 90, by - 90, bx + 90, by + 90))
    window.layers_panel.select(pseudo)
    pseudo.set_threshold(0.7)
    window.layers_panel.select(pseudo)
    hover(bx, by)
    shoot("layers")

    # 4. Review: decisions around a reference panel — candidates on a panel accepted, the
    # others rejected — then the next pending candidate there selected (white).
    window.show_dock("review")
    review = window.review
    wait(lambda: review.model.ids, 30, "the review queue")
    area, decisions = plan_review(pseudo, reference, ctx.layers.crs_wkt, (minx, miny, maxx, maxy))
    for iid, state in decisions:
        review.select_instance(iid, centre=False)
        review.review(state)
        wait(lambda iid=iid, state=state: pseudo.records[iid].review == state, 30, "an edit")
    view.zoom_to(area)
    pending = [
        r for r in pseudo.records.values() if r.review == "pending" and _inside(r.bounds, area)
    ]
    if pending:
        ax, ay = (area[0] + area[2]) / 2, (area[1] + area[3]) / 2
        nearest = min(pending, key=lambda r: (r.bounds[0] - ax) ** 2 + (r.bounds[1] - ay) ** 2)
        review.select_from_map(pseudo, nearest.id)
    pause(300)
    shoot("review")

    # 5. Train: a real `solardesk train` run, a few CPU steps of the small pretrained backbone.
    window.show_dock("train")
    train = window.train
    if not args.no_train:
        config = work / "train.json"
        config.write_text(
            json.dumps(
                {
                    "cache": str(work / "demo.sqlite"),
                    "output_dir": str(work / "training"),
                    "rasters": [str(raster)],
                    "data": {"threshold": 0.7},
                    "model": {
                        "backbone": "efficientnet_lite0_fpn",
                        "weights": "imagenet",
                        "tile_size": 256,
                    },
                    "optim": {"epochs": 3, "batch_size": 2},
                    "run": {
                        "device": "cpu",
                        "max_steps_per_epoch": args.train_steps,
                        "log_every": 1,
                        "num_workers": 0,
                    },
                },
                indent=2,
            )
        )
        train.config_edit.setText(str(config))
        train.start()
        wait(lambda: not train.running, 900, "the training")
    view.zoom_to((cx - 130, cy - 130, cx + 130, cy + 130))
    if not args.no_train:  # else the train.png of the last real run stays
        shoot("train")

    # 6. Detect & export: `solardesk detect --spectral` → a GeoPackage shown on the map.
    window.show_dock("detect")
    det = window.detect
    det.out_edit.setText(str(work / "panels.gpkg"))
    det.run()
    wait(lambda: not det.process.running, 600, "solardesk detect")
    wait(
        lambda: any(
            lay.kind == "vector" and lay.path.name == "panels.gpkg" and lay.data
            for lay in ctx.layers
        ),
        60,
        "the detections",
    )
    for lay in ctx.layers:
        if lay.kind == "vector" and lay.path.name != "panels.gpkg":
            lay.set_visible(False)
    pseudo.set_visible(False)
    view.zoom_to((bx - 100, by - 100, bx + 100, by + 100))
    shoot("detect")

    # 7. Plugins (one switched off: applies at the next start), and the message area.
    window.show_dock("plugins")
    table = window.plugins.table
    names = [table.item(r, 1).text() for r in range(table.rowCount())]
    if "onnx" in names:
        table.item(names.index("onnx"), 0).setCheckState(Qt.CheckState.Unchecked)
    row = names.index("spectral") if "spectral" in names else 0
    table.setCurrentCell(row, 1)
    pseudo.set_visible(True)
    QCursor.setPos(QPoint(0, 0))
    window.map_view.setFocus(Qt.FocusReason.OtherFocusReason)
    shoot("plugins")

    window.close()
    app.processEvents()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def solar_reference(truth: Path, work: Path) -> Path | None:
    """The solar polygons of a labelled file (class_name "solar" when it has classes)."""
    data = json.loads(truth.read_text(encoding="utf-8"))
    feats = data.get("features", [])
    solar = [f for f in feats if str(f.get("properties", {}).get("class_name", "solar")) == "solar"]
    if not solar:
        return None
    out = work / "reference_solar.geojson"
    out.write_text(json.dumps({**data, "features": solar}), encoding="utf-8")
    return out


def pick_instance(records, reference: Path | None, extent, map_crs):
    """A confident pseudo-label on a reference panel, away from the raster's edges."""
    import shapely
    from shapely.geometry import Polygon, box

    from solardesk.core.vector import read_geometries

    minx, miny, maxx, maxy = extent
    inner = box(minx + 110, miny + 110, maxx - 110, maxy - 110)
    candidates = [r for r in records if inner.contains(Polygon(r.ring))] or list(records)
    if reference is not None:
        geoms, _ = read_geometries(reference, dst_crs=map_crs)
        panels = shapely.union_all(geoms)
        hits = [r for r in candidates if Polygon(r.ring).intersects(panels)]
        if hits:
            candidates = hits
    return max(candidates, key=lambda r: (r.confidence, r.area_px))


def plan_review(pseudo, reference: Path | None, map_crs, extent, radius: float = 60.0):
    """An area rich in candidates that touch reference panels, and review decisions in it:
    candidates on a reference panel are accepted, confident ones off the panels rejected."""
    import shapely
    from shapely.geometry import Polygon

    from solardesk.core.vector import read_geometries

    records = list(pseudo.records.values())
    minx, miny, maxx, maxy = extent
    m = radius + 10

    def inner(r) -> bool:
        x0, y0, x1, y1 = r.bounds
        return minx + m < x0 and x1 < maxx - m and miny + m < y0 and y1 < maxy - m

    hits: list = []
    if reference is not None:
        geoms, _ = read_geometries(reference, dst_crs=map_crs)
        panels = shapely.union_all(geoms)
        hits = [r for r in records if Polygon(r.ring).intersects(panels)]
    seeds = [r for r in hits if inner(r)] or [r for r in records if inner(r)] or records

    def near(r, c) -> bool:
        return abs(r.bounds[0] - c.bounds[0]) < radius and abs(r.bounds[1] - c.bounds[1]) < radius

    centre = max(
        seeds, key=lambda c: (sum(near(h, c) for h in hits), sum(near(r, c) for r in records))
    )
    cx, cy = (centre.bounds[0] + centre.bounds[2]) / 2, (centre.bounds[1] + centre.bounds[3]) / 2
    area = (cx - radius, cy - radius, cx + radius, cy + radius)
    local = [r for r in records if _inside(r.bounds, area)]
    hit_ids = {r.id for r in hits}
    decisions = [(r.id, "accepted") for r in local if r.id in hit_ids][:4]
    false_pos = [r for r in local if r.id not in hit_ids and r.confidence >= pseudo.threshold]
    decisions += [(r.id, "rejected") for r in false_pos[:4]]
    return area, decisions


def _inside(bounds, area) -> bool:
    return (
        area[0] <= bounds[0]
        and area[1] <= bounds[1]
        and bounds[2] <= area[2]
        and bounds[3] <= area[3]
    )


def _default_truth(raster: Path) -> Path | None:
    """The dissolved reference polygons the shared data keeps beside a mosaic, if any."""
    stem = raster.stem
    for folder in (raster.parent, raster.parent.parent):
        for cand in sorted(folder.glob(f"{stem}_dissolved_*.geojson")):
            return cand
    return None


def save_small_png(image, path: Path) -> None:
    """Save a screenshot as a palette PNG under ``MAX_BYTES`` (imagery needs dithering)."""
    from io import BytesIO

    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buf, "PNG")
    rgb = Image.open(BytesIO(bytes(buf.data()))).convert("RGB")
    for colors, scale in ((256, 1.0), (192, 1.0), (128, 1.0), (128, 0.85), (96, 0.75)):
        img = (
            rgb
            if scale == 1.0
            else rgb.resize(
                (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
            )
        )
        pal = img.quantize(
            colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG
        )
        out = BytesIO()
        pal.save(out, "PNG", optimize=True)
        if out.tell() <= MAX_BYTES:
            path.write_bytes(out.getvalue())
            return
    path.write_bytes(out.getvalue())


if __name__ == "__main__":
    sys.exit(main())

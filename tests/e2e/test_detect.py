"""detect: raster in, polygons out, in every format, once per panel across seams."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from affine import Affine

from solardesk.config import TilingSettings
from solardesk.core.cache import Instance, MaskCache
from solardesk.core.detect import detect
from solardesk.errors import TilesFailedError
from solardesk.plugin_api import PluginManager, PrecomputeStage, hookimpl
from tests.conftest import write_damaged_block, write_raster

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample" / "sample_scene.tif"


def ogrinfo(path: Path) -> str:
    exe = shutil.which("ogrinfo")
    assert exe, "GDAL's ogrinfo is needed (Debian gdal-bin; scripts/system-deps.sh installs it)"
    out = subprocess.run([exe, "-so", "-al", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def run(job):
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "solardesk", *args], capture_output=True, text=True, check=False
    )


def square_stage(rgb, valid, gsd, params):
    """A stage that finds exactly the pixels whose red value is 250: seam logic is tested
    apart from the analyser's quality."""
    m = rgb[..., 0] == 250
    return [Instance.from_full_mask(m, confidence=0.95)] if m.any() else []


class StagePlugin:
    """A plugin that contributes one test stage (``target``: a function of this module)."""

    def __init__(self, stage_id: str, target: str, tiling: str = "") -> None:
        self.stage = PrecomputeStage(
            id=stage_id,
            title="test",
            target=f"tests.e2e.test_detect:{target}",
            settings="solardesk_spectral.settings:SpectralSettings",
            tiling=tiling and f"tests.e2e.test_detect:{tiling}",
        )

    @hookimpl
    def solardesk_precompute_stages(self):
        return [self.stage]


def test_panel_on_a_seam_is_one_polygon(tmp_path: Path) -> None:
    data = np.full((3, 600, 600), 100, np.uint8)
    data[0, 200:260, 230:420] = 250  # 190 × 60 px panel straddling the seam near x = 288
    raster = write_raster(tmp_path / "seam.tif", data)
    pm = PluginManager()
    pm.register(StagePlugin("square", "square_stage"), "square")
    out = tmp_path / "p.gpkg"
    tiling = TilingSettings(tile_size=256, overlap=64)
    job = detect([raster], out, stage_id="square", plugin_manager=pm, tiling=tiling)
    messages = []
    while True:
        try:
            messages.append(next(job).message)
        except StopIteration as stop:
            summary = stop.value
            break
    assert summary.tiles == 9
    # the progress ends on the count written, the panel on the seam included
    assert summary.panels == 1 and messages[-1] == "vectorise: 1 panel"
    with fiona.open(out) as src:
        feats = list(src)
    assert len(feats) == 1
    area = feats[0]["properties"]["area_m2"]
    assert area == pytest.approx(190 * 60 * 0.04, rel=0.02)


def _seam_scene(tmp_path: Path):
    """A 600 px raster holding one computed panel (80 × 60 px, red 250) across the first
    vertical seam of a 256/64 grid, and ``export(name)``: detect into that one cache, the
    areas of the polygons written, largest first."""
    data = np.full((3, 600, 600), 100, np.uint8)
    data[0, 100:160, 190:270] = 250
    raster = write_raster(tmp_path / "seam.tif", data)
    pm = PluginManager()
    pm.register(StagePlugin("square", "square_stage"), "square")
    cache = tmp_path / "c.sqlite"
    tiling = TilingSettings(tile_size=256, overlap=64)

    def export(name: str) -> list[float]:
        out = tmp_path / name
        run(detect([raster], out, stage_id="square", plugin_manager=pm, tiling=tiling,
                   cache_path=cache))  # fmt: skip
        with fiona.open(out) as src:
            return sorted((f["properties"]["area_m2"] for f in src), reverse=True)

    return cache, export


def test_a_drawn_panel_across_a_seam_is_written_whole(tmp_path: Path) -> None:
    """A panel a person draws lives in one tile; detect cut it to that tile's core, so the
    part across the seam was lost (and the tile beside wrote its own computed piece of the
    same panel there). Now it is written whole, and a computed instance of another tile that
    it covers at least half of is left out."""
    from solardesk.core.tiling import make_grid

    cache, export = _seam_scene(tmp_path)
    assert export("before.gpkg") == [pytest.approx(80 * 60 * 0.04, rel=0.02)]
    grid = make_grid(600, 600, Affine.identity(), 256, 64)
    left = next(t for t in grid if t.col_off == 0 and t.row_off == 0)
    seam = int(left.core.col_off + left.core.width)  # the cut between it and the next tile
    assert 200 < seam < 226
    with MaskCache(cache) as c:
        fp = next(t.raster_fp for t in c.iter_tiles())
        window = (left.col_off, left.row_off, left.width, left.height)
        # A panel drawn where nothing was found, 30 px either side of the seam.
        c.add_instance(fp, left.id, Instance(bbox=(seam - 30, 20, seam + 30, 60),
                       mask=np.ones((40, 60), bool), confidence=1.0, review="accepted"),
                       "human", window=window)  # fmt: skip
        # The computed panel redrawn tighter by a person, in the left tile: its right part
        # lies in the next tile's core, whose computed copy it covers.
        c.add_instance(fp, left.id, Instance(bbox=(192, 102, 254, 158),
                       mask=np.ones((56, 62), bool), confidence=1.0, review="accepted"),
                       "human", window=window)  # fmt: skip
    areas = export("after.gpkg")
    assert areas == [
        pytest.approx(62 * 56 * 0.04, rel=0.02),  # whole, and no computed piece beside it
        pytest.approx(60 * 40 * 0.04, rel=0.02),  # both sides of the seam
    ]


def test_a_person_s_panel_that_is_not_written_hides_nothing(tmp_path: Path) -> None:
    """Only the people's panels the export writes stand for computed ones across tiles: a
    split part under the threshold (pending, at its candidate's confidence), or one stored
    in a tile of another grid (the review done at 256 px, detect run at a model's 300 px),
    is not written, and must not take the computed panel out of the output with it."""
    from solardesk.core.tiling import make_grid

    cache, export = _seam_scene(tmp_path)
    whole = pytest.approx(80 * 60 * 0.04, rel=0.02)
    assert export("before.gpkg") == [whole]
    other = next(t for t in make_grid(600, 600, Affine.identity(), 300, 64) if t.col_off == 0
                 and t.row_off == 0)  # fmt: skip
    with MaskCache(cache) as c:
        fp = next(t.raster_fp for t in c.iter_tiles())
        c.add_instance(fp, other.id, Instance(bbox=(192, 102, 254, 158),
                       mask=np.ones((56, 62), bool), confidence=1.0, review="accepted"),
                       "human", window=(0, 0, 300, 300))  # fmt: skip
    assert export("other_grid.gpkg") == [whole]
    grid = make_grid(600, 600, Affine.identity(), 256, 64)
    left = next(t for t in grid if t.col_off == 0 and t.row_off == 0)
    seam = int(left.core.col_off + left.core.width)
    with MaskCache(cache) as c:
        # A part under the threshold, where the left tile's copy was: that copy is hidden in
        # its own tile (ADR 0046), the right tile's copy still writes its core's piece.
        c.add_instance(fp, left.id, Instance(bbox=(192, 102, 254, 158),
                       mask=np.ones((56, 62), bool), confidence=0.3),
                       "human", window=(0, 0, 256, 256))  # fmt: skip
    assert export("low_part.gpkg") == [pytest.approx((270 - seam) * 60 * 0.04, rel=0.03)]


def component_stage(rgb, valid, gsd, params):
    """One instance per 4-connected patch of red 250 (several panels per tile)."""
    import cv2

    n, labels = cv2.connectedComponents((rgb[..., 0] == 250).astype(np.uint8), connectivity=4)
    return [Instance.from_full_mask(labels == i, confidence=0.95) for i in range(1, n)]


def test_rotated_panels_across_seams_and_corners_are_one_polygon_each(tmp_path: Path) -> None:
    """Pieces of a panel on a seam were simplified before they were merged: their vertices on
    the seam moved apart, and a rotated panel came out as two or three polygons. Two panels
    meeting only at a corner of the tile cores are two polygons (one was dropped)."""
    import cv2

    from solardesk.core.tiling import make_grid

    size, tile, overlap = 600, 128, 32
    seams = sorted(
        {t.core.col_off for t in make_grid(size, size, Affine.identity(), tile, overlap)} - {0}
    )  # [112, 208, 304, 400, 492]: cores meet there, on both axes
    data = np.full((3, size, size), 100, np.uint8)
    red = np.ascontiguousarray(data[0])
    rng = np.random.default_rng(4)
    areas = []
    for k in range(16):  # rotated rectangles centred on a seam (and, every fourth, a corner)
        cx = seams[k % 4] + rng.uniform(-3, 3)
        cy = seams[(k // 4) % 4] + (0 if k % 4 == 0 else rng.uniform(-40, 40))
        box = ((cx, cy), (rng.uniform(24, 48), rng.uniform(9, 16)), rng.uniform(10, 80))
        pts = cv2.boxPoints(box)
        before = int((red == 250).sum())
        cv2.fillPoly(red, [np.round(pts).astype(np.int32)], 250)
        areas.append(int((red == 250).sum()) - before)
    # Two squares meeting only at the corner of four cores.
    c = seams[4]
    red[c - 12 : c, c - 12 : c] = 250
    red[c : c + 12, c : c + 12] = 250
    areas += [144, 144]
    data[0] = red
    raster = write_raster(tmp_path / "rotated.tif", data)
    pm = PluginManager()
    pm.register(StagePlugin("components", "component_stage"), "components")
    out = tmp_path / "p.gpkg"
    summary = run(
        detect([raster], out, stage_id="components", plugin_manager=pm,
               tiling=TilingSettings(tile_size=tile, overlap=overlap))
    )  # fmt: skip
    with fiona.open(out) as src:
        got = sorted(f["properties"]["area_m2"] for f in src)
    px = 0.2 * 0.2  # write_raster's ground resolution
    assert summary.panels == len(areas) == len(got)
    assert got == pytest.approx(sorted(a * px for a in areas), rel=0.06)


def model_tiling(settings) -> tuple[int, int]:
    return 128, 32  # what a model trained on 128 px tiles recommends


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, (128, 32)), ({"overlap": 16}, (128, 16)), ({"tile_size": 200}, (200, 32))],
)
def test_tile_or_overlap_alone_keeps_the_model_s_other_value(
    tmp_path: Path, given: dict, expected: tuple[int, int]
) -> None:
    """``--overlap`` alone made the tile 512 (the default), not the model's 128: the model
    then ran in windows inside each tile, or the raster was refused as too small."""
    raster = write_raster(tmp_path / "r.tif", np.full((3, 300, 260), 100, np.uint8))
    pm = PluginManager()
    pm.register(StagePlugin("modellike", "square_stage", "model_tiling"), "modellike")
    out = tmp_path / "p.gpkg"
    run(detect([raster], out, stage_id="modellike", plugin_manager=pm, **given))
    with MaskCache(default_cache_path_of(out), readonly=True) as cache:
        sizes = {(t.window.width, t.window.height) for t in cache.iter_tiles()}
    assert sizes == {(expected[0], expected[0])}
    from solardesk.core.tiling import axis_starts

    n = len(axis_starts(260, expected[0], expected[1])) * len(
        axis_starts(300, expected[0], expected[1])
    )
    with MaskCache(default_cache_path_of(out), readonly=True) as cache:
        assert len(list(cache.iter_tiles())) == n


def scaled_tiling(settings, gsd) -> tuple[int, int]:
    """A model trained on 128 px tiles at 0.2 m: its tile in a raster's own pixels."""
    gsd = gsd or 0.2
    return round(128 * 0.2 / gsd), round(32 * 0.2 / gsd)


def test_a_model_s_tile_is_scaled_to_each_raster_s_resolution(tmp_path: Path) -> None:
    """A stage whose tiling hook takes the ground resolution is asked per raster: a raster
    twice as fine gets tiles twice as large in pixels (the same ground, one model input once
    resampled), instead of the model's 128 px shrunk to 64 and padded (4× the model runs)."""
    coarse = write_raster(tmp_path / "a.tif", np.full((3, 300, 260), 100, np.uint8))
    fine = write_raster(tmp_path / "b.tif", np.full((3, 600, 520), 100, np.uint8),
                        transform=Affine(0.1, 0, 680000.0, 0, -0.1, 5150000.0))  # fmt: skip
    pm = PluginManager()
    pm.register(StagePlugin("modellike", "square_stage", "scaled_tiling"), "modellike")
    for given, want in (({}, {0.2: 128, 0.1: 256}), ({"tile_size": 200}, {0.2: 200, 0.1: 200})):
        out = tmp_path / f"p{len(given)}.gpkg"
        run(detect([coarse, fine], out, stage_id="modellike", plugin_manager=pm, **given))
        with MaskCache(default_cache_path_of(out), readonly=True) as cache:
            gsd_of = {r: round(cache.get_raster(r).transform[0], 3)
                      for r in {t.raster_fp for t in cache.iter_tiles()}}  # fmt: skip
            sizes = {(gsd_of[t.raster_fp], t.window.width) for t in cache.iter_tiles()}
        assert sizes == set(want.items()), given


def default_cache_path_of(out: Path) -> Path:
    from solardesk.core.detect import default_cache_path

    return default_cache_path(out)


def test_a_damaged_tile_leaves_the_panels_of_every_other_tile(tmp_path: Path) -> None:
    """`detect` on a raster with one damaged block: the panels of the other tiles are written
    (a complete, readable file), and then the run ends with the error naming the tile left
    out and where the panels are."""
    data = np.full((3, 1024, 1024), 100, np.uint8)
    data[0, 600:640, 600:660] = 250  # a panel in tile c512_r512
    data[0, 40:80, 700:760] = 250  # and one in tile c512_r0; the damage is in c256_r256
    raster = write_damaged_block(tmp_path / "bad.tif", block=(2, 2), data=data)
    pm = PluginManager()
    pm.register(StagePlugin("square", "square_stage"), "square")
    out = tmp_path / "p.gpkg"
    tiling = TilingSettings(tile_size=256, overlap=0)
    with pytest.raises(TilesFailedError) as ei:
        run(detect([raster], out, stage_id="square", plugin_manager=pm, tiling=tiling))
    message = str(ei.value)
    assert "1 of 16 tiles could not be computed (bad.tif)" in message
    assert "c256_r256" in message and f"every other tile (2 panels) are in {out}" in message
    with fiona.open(out) as src:
        areas = sorted(f["properties"]["area_m2"] for f in src)
    assert areas == pytest.approx([40 * 60 * 0.0225, 40 * 60 * 0.0225], rel=0.02)


@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".geojson", ".SHP"])
def test_detect_sample_in_every_format(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"panels{ext}"
    res = cli(
        "detect", str(SAMPLE), "--spectral", "--out", str(out), "--quiet", "--threshold", "0.5"
    )
    assert res.returncode == 0, res.stderr
    if ext == ".SHP":  # written as GDAL writes a shapefile, and said so
        out, ext = out.with_suffix(".shp"), ".shp"
        assert f"written to {out} in" in res.stdout, res.stdout
        assert sorted(p.suffix for p in tmp_path.glob("panels.*")) == [
            ".cpg", ".dbf", ".prj", ".shp", ".shx"
        ]  # fmt: skip
    n = int(re.match(r"(\d+) panels? from \d+ tiles? of \d+ rasters? ", res.stdout).group(1))
    assert n > 0
    info = ogrinfo(out)
    assert f"Feature Count: {n}" in info
    with fiona.open(out) as src:
        assert len(src) == n
        props = src.schema["properties"]
        if ext == ".geojson":
            assert src.crs.to_epsg() == 4326
            lon, lat = src[0]["geometry"]["coordinates"][0][0]
            assert 11 < lon < 12 and 46 < lat < 47.5  # near Bolzano, lon/lat order
        else:
            assert src.crs.to_epsg() == 32632
        if ext == ".shp":
            assert all(len(k) <= 10 for k in props)
            assert out.with_suffix(".prj").exists() and out.with_suffix(".cpg").exists()
        else:
            assert {"score", "area_m2", "perimeter_m", "azimuth_deg", "centroid_lon"} <= set(props)
            for f in src:
                assert f["properties"]["area_m2"] > 2.0
                assert 0 <= f["properties"]["azimuth_deg"] < 180


def test_rerun_resumes_from_the_cache(tmp_path: Path) -> None:
    out = tmp_path / "p.gpkg"
    first = cli("detect", str(SAMPLE), "--spectral", "--out", str(out), "--quiet")
    assert first.returncode == 0
    again = cli("detect", str(SAMPLE), "--spectral", "--out", str(out), "--quiet", "--overwrite")
    assert "0 tiles computed, 9 reused" in again.stdout, again.stdout


def test_bands_and_stretch_of_the_precompute_are_reused_by_detect(tmp_path: Path) -> None:
    """The GUI pre-computes with the project's band mapping and stretch, and runs ``solardesk
    detect`` on the project's cache with them (``--bands``, ``--stretch``): the same keys,
    nothing computed again. Without them detect would analyse other pixels (its defaults)."""
    from solardesk.config import RasterSettings
    from solardesk.core.pipeline import precompute

    with rasterio.open(SAMPLE) as src:
        rgb = src.read()
        profile = {"transform": src.transform, "crs": src.crs.to_string()}
    deep = write_raster(tmp_path / "deep.tif", (rgb.astype(np.uint16) * 40 + 500), **profile)
    cache = tmp_path / "c.sqlite"
    settings = RasterSettings(bands=(3, 2, 1), stretch_low=1, stretch_high=99)
    assert settings.command_args() == ["--bands", "3,2,1", "--stretch", "1,99"]
    assert RasterSettings().command_args() == []
    # every digit kept (the stretch is in the cache key: a rounded one recomputes)
    odd = RasterSettings(stretch_low=1.2345678, stretch_high=98.5)
    assert odd.command_args() == ["--stretch", "1.2345678,98.5"]
    run(precompute([deep], cache, raster_settings=settings))
    out = tmp_path / "p.gpkg"
    base = ["detect", str(deep), "--spectral", "--cache", str(cache), "--out", str(out)]
    same = cli(*base, *settings.command_args(), "--quiet")
    assert same.returncode == 0, same.stderr
    assert "0 tiles computed, 9 reused" in same.stdout, same.stdout
    other = cli(*base, "--bands", "3,2,1", "--quiet", "--overwrite")  # stretch 2,98
    assert "9 tiles computed, 0 reused" in other.stdout, other.stdout
    bad = cli(*base, "--stretch", "1", "--overwrite")
    assert bad.returncode == 2 and "two percentiles" in bad.stderr, bad.stderr
    bad = cli(*base, "--stretch", "60,99", "--overwrite")
    assert bad.returncode == 2 and "stretch_low" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_geographic_raster_gives_areas_in_square_metres(tmp_path: Path) -> None:
    data = np.full((3, 600, 600), 100, np.uint8)
    data[0, 100:150, 100:200] = 250  # 100 × 50 px
    # 2.7e-6 degrees per pixel at 36°N: ≈ 0.243 m east-west, 0.300 m north-south.
    t = Affine(2.7e-6, 0, -115.23, 0, -2.7e-6, 36.14)
    raster = write_raster(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=t)
    pm = PluginManager()
    pm.register(StagePlugin("square", "square_stage"), "square")
    out = tmp_path / "geo.geojson"
    run(detect([raster], out, stage_id="square", plugin_manager=pm))
    with fiona.open(out) as src:
        (f,) = list(src)
    assert f["properties"]["area_m2"] == pytest.approx(100 * 0.2431 * 50 * 0.2997, rel=0.02)


def test_empty_result_is_a_valid_empty_layer(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "flat.tif", np.full((3, 300, 300), 90, np.uint8))
    out = tmp_path / "none.gpkg"
    res = cli("detect", str(raster), "--spectral", "--out", str(out), "--quiet", "--tile", "256")
    assert res.returncode == 0 and res.stdout.startswith("0 panels")
    assert "Feature Count: 0" in ogrinfo(out)


def test_output_errors(tmp_path: Path) -> None:
    existing = tmp_path / "there.gpkg"
    existing.write_bytes(b"x")
    cases = [
        (["--out", str(tmp_path / "missing" / "p.gpkg")], "does not exist"),
        (["--out", str(existing)], "--overwrite"),
        (["--out", str(tmp_path / "p.kml")], "supported"),
        (
            ["--out", str(tmp_path / "p.gpkg"), "--model", str(tmp_path / "m.onnx")],
            "choose one detector",
        ),
    ]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text("my area")
    cache = tmp_path / "project.gpkg"
    cache.write_text("my cache")
    nocrs = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 256, 256), np.uint8), crs=None)
    cases += [
        (["--out", "."], "unsupported vector format"),  # (not a traceback from the cache name)
        # an input of the job is never the output, even with --overwrite
        (["--out", str(aoi), "--aoi", str(aoi), "--overwrite"], "is an input of this job"),
        (["--out", str(cache), "--cache", str(cache), "--overwrite"], "is an input of this job"),
        # a cache not made yet at the output's path: refused before the job makes it
        (["--out", str(tmp_path / "x.gpkg"), "--cache", str(tmp_path / "x.gpkg")], "an input"),
        # a raster without a CRS beside a georeferenced one: refused before any tile
        ([str(nocrs), "--gsd", "0.15", "--out", str(tmp_path / "mix.gpkg")], "has no CRS"),
    ]
    for extra, expected in cases:
        res = cli("detect", str(SAMPLE), "--spectral", *extra, "--quiet")
        assert res.returncode == 2, (extra, res.stderr)
        assert expected in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert existing.read_bytes() == b"x"
    assert (aoi.read_text(), cache.read_text()) == ("my area", "my cache")
    assert not (tmp_path / ".mix.gpkg.solardesk-cache.sqlite").exists()  # nothing computed
    assert not (tmp_path / "x.gpkg").exists()


def test_rejected_instances_are_not_written_accepted_ones_are(tmp_path: Path) -> None:
    # One tile (no seams, no overlap): every instance at or above the threshold is one polygon.
    import rasterio
    from rasterio.windows import Window

    raster = tmp_path / "one_tile.tif"
    with rasterio.open(SAMPLE) as src:
        win = Window(0, 0, 512, 512)
        profile = {**src.profile, "width": 512, "height": 512}
        profile["transform"] = src.window_transform(win)
        with rasterio.open(raster, "w", **profile) as dst:
            dst.write(src.read(window=win))
    cache = tmp_path / "c.sqlite"
    out = tmp_path / "a.gpkg"
    # A low threshold: the point is the review state, not the analyser's confidence.
    args = ("--spectral", "--cache", str(cache), "--out", str(out), "--quiet", "--threshold", "0.3")
    res = cli("detect", str(raster), *args)
    n = int(res.stdout.split()[0])
    assert n >= 1
    with MaskCache(cache) as c:
        # The largest one: its polygon is surely written (a tiny one might be dropped).
        first = max(
            (i for _, i in c.iter_instances(min_confidence=0.3)), key=lambda i: i.mask.sum()
        )
        c.set_review(first.id, "rejected")
    res = cli("detect", str(raster), *args, "--overwrite")
    assert int(res.stdout.split()[0]) == n - 1
    # People outrank the stage: an accepted instance is written at any confidence.
    with MaskCache(cache) as c:
        low = max(
            (i for _, i in c.iter_instances() if i.confidence < 0.3), key=lambda i: i.mask.sum()
        )
        c.set_review(low.id, "accepted")
    res = cli("detect", str(raster), *args, "--overwrite")
    assert int(res.stdout.split()[0]) == n


def test_a_rejected_object_on_a_seam_leaves_no_piece(tmp_path: Path) -> None:
    """The sample's tiles overlap: an object near a seam is a candidate of several tiles, and
    detect writes each tile's part inside its core. Rejecting the object once (in any tile)
    leaves no piece of it in the output (ADR 0047); before, the other tiles' copies kept
    theirs."""
    from solardesk.core.geometry import instance_polygon
    from solardesk.core.vector import read_geometries

    cache = tmp_path / "c.sqlite"
    out = tmp_path / "a.gpkg"
    args = ("--spectral", "--cache", str(cache), "--out", str(out), "--quiet", "--threshold", "0.3")
    res = cli("detect", str(SAMPLE), *args)
    assert res.returncode == 0, res.stderr
    with MaskCache(cache) as c:
        info = c.get_raster(next(t.raster_fp for t in c.iter_tiles()))
        transform = Affine(*info.transform[:6])
        # the largest candidate whose object other tiles hold too
        chosen, copies = None, []
        for tile, inst in sorted(
            c.iter_instances(min_confidence=0.3), key=lambda ti: -ti[1].area_px
        ):
            copies = c.set_review(inst.id, "rejected")[1:]
            if copies:
                chosen = (tile, inst)
                break
            c.set_review(inst.id, "pending")
        assert chosen is not None, "the sample has no candidate on a seam"
        tile, inst = chosen
        x0, y0 = inst.bbox[:2]
        footprint = instance_polygon(
            inst.mask,
            transform * Affine.translation(tile.window.col_off + x0, tile.window.row_off + y0),
        )
        assert {c.get_instance(i)[1].review for i in copies} == {"rejected"}
    before = read_geometries(out)[0]
    assert sum(g.intersection(footprint).area for g in before) > 0.5 * footprint.area
    res = cli("detect", str(SAMPLE), *args, "--overwrite")
    assert res.returncode == 0, res.stderr
    after = read_geometries(out)[0]
    # (before the copies shared the decision, a sliver of 2 % of it stayed, as one polygon)
    overlap = sum(g.intersection(footprint).area for g in after)
    assert overlap < 0.001 * footprint.area, (overlap, footprint.area)
    assert len(after) == len(before) - 1


def test_review_from_the_command_line(tmp_path: Path) -> None:
    """`cache instances` lists what the cache shows, `cache review` decides as the review dock
    does (copies included), refuses unknown ids before changing anything, and undoes."""
    import json

    cache = tmp_path / "c.sqlite"
    args = ("--spectral", "--cache", str(cache), "--out", str(tmp_path / "a.gpkg"), "--quiet")
    assert cli("detect", str(SAMPLE), *args, "--threshold", "0.3").returncode == 0
    res = cli("cache", "instances", str(cache), "--min-confidence", "0.3", "--json")
    assert res.returncode == 0, res.stderr
    listed = [json.loads(line) for line in res.stdout.splitlines()]
    assert listed and all(r["confidence"] >= 0.3 and r["review"] == "pending" for r in listed)
    assert [r["id"] for r in listed] == sorted(r["id"] for r in listed)
    big = max(listed, key=lambda r: r["area_px"])["id"]
    res = cli("cache", "review", str(cache), "rejected", str(big), "999999")
    assert res.returncode == 2 and "no instance 999999 among" in res.stderr
    assert "nothing was changed" in res.stderr
    with MaskCache(cache) as c:
        assert c.stats()["by_review"]["rejected"] == 0
    res = cli("cache", "review", str(cache), "rejected", str(big))
    assert res.returncode == 0, res.stderr
    with MaskCache(cache) as c:
        rejected = {i.id for _, i in c.iter_instances(review="rejected")}
    assert big in rejected
    copies = len(rejected) - 1
    assert (
        (f"and {copies} cop" in res.stdout) if copies else res.stdout.strip().endswith("rejected")
    )
    res = cli("cache", "instances", str(cache), "--review", "rejected")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1 + len(rejected)
    assert cli("cache", "review", str(cache), "pending", str(big)).returncode == 0
    with MaskCache(cache) as c:
        assert c.stats()["by_review"]["rejected"] == 0


def test_cache_review_sets_only_what_the_cache_shows(tmp_path: Path) -> None:
    """Hidden ids (behind a decision, or of a row no longer current), unknown, huge or
    non-numeric ids and an empty file are refused with exit 2 and nothing changed; two
    look-alikes of one tile given together give one decided instance, as the dock does."""
    from solardesk.core.cache import TileKey

    path = tmp_path / "c.sqlite"

    def box(x0: int, conf: float) -> Instance:
        return Instance(bbox=(x0, 10, x0 + 20, 30), mask=np.ones((20, 20), bool), confidence=conf)

    with MaskCache(path) as c:
        c.write_tile(
            TileKey("fp", "t0", "s", "1", "p"), (0, 0, 64, 64), [box(10, 0.9), box(11, 0.8)]
        )
        a, b = (i.id for i in c.read_tile("fp", "t0"))
        c.write_tile(TileKey("fp", "t1", "s", "1", "p"), (0, 100, 64, 64), [box(10, 0.9)])
        (old,) = (i.id for i in c.read_tile("fp", "t1"))
        c.write_tile(TileKey("fp", "t1", "s", "1", "q"), (0, 100, 64, 64), [box(40, 0.9)])
    res = cli("cache", "review", str(path), "accepted", str(a), str(b))
    assert res.returncode == 0 and res.stdout.strip() == f"instance {a}: accepted", res.stdout
    with MaskCache(path) as c:
        assert [(i.id, i.review) for i in c.read_tile("fp", "t0")] == [(a, "accepted")]
    before = path.read_bytes()
    for bad, says in [
        ((str(b),), f"no instance {b} among those the cache shows"),  # hidden behind a
        ((str(old),), f"no instance {old} among"),  # of a row that is no longer current
        (("424242",), "no instance 424242 among"),
        (("99999999999999999999999",), "not in the range"),
        (("0",), "not in the range"),
        (("x1",), "is not a valid integer"),
    ]:
        res = cli("cache", "review", str(path), "rejected", *bad)
        assert res.returncode == 2 and says in res.stderr, (bad, res.stderr)
        assert "Traceback" not in res.stderr and "Internal error" not in res.stderr
    assert path.read_bytes() == before
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    res = cli("cache", "review", str(empty), "rejected", "1")
    assert res.returncode == 2 and "empty" in res.stderr and empty.stat().st_size == 0
    res = cli("cache", "instances", str(path), "--min-confidence", "nan")
    assert res.returncode == 2 and "--min-confidence" in res.stderr


def test_a_listing_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """`solardesk cache instances ... | head` stops like a Unix tool (exit 141), no traceback."""
    from solardesk.core.cache import TileKey, TileResult

    cache = tmp_path / "big.sqlite"
    one = Instance(bbox=(0, 0, 4, 4), mask=np.ones((4, 4), bool), confidence=0.5)
    with MaskCache(cache) as c:
        c.write_tiles(
            TileResult(TileKey("fp", f"t{k}", "s", "1", "p"), (k * 64, 0, 64, 64), [one] * 20)
            for k in range(1000)
        )  # 20 000 lines, far more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "solardesk", "cache", "instances", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().split()[0] == b"id"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Error" not in err, err
    # any command: its reader gone before it writes a line (`solardesk info X | head -0`)
    proc = subprocess.Popen(
        [sys.executable, "-m", "solardesk", "info", str(SAMPLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Error" not in err, err


def test_detect_plans_each_raster_once(tmp_path: Path) -> None:
    """detect vectorises with the pre-compute's plans: a raster is opened and planned once,
    so a warning about it is printed once."""
    out = tmp_path / "g.gpkg"
    res = cli("detect", str(SAMPLE), "--spectral", "--out", str(out), "--gsd", "0.5", "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("overrides the raster's own ground resolution") == 1, res.stderr


def test_a_folder_of_images_is_detected_as_its_images(tmp_path: Path) -> None:
    """`detect FOLDER` reads the images in it; `detect FOLDER/*` (what a shell gives) leaves
    out their sidecar files instead of failing on the first world file."""
    folder = tmp_path / "flight"
    folder.mkdir()
    for k in range(2):
        data = np.full((3, 200, 200), 100, np.uint8)
        data[0, 50:80, 40 + 30 * k : 120] = 250
        write_raster(
            folder / f"scene{k}.tif",
            data,
            transform=Affine(0.2, 0, 680000.0 + 100 * k, 0, -0.2, 5150000.0),
        )
        (folder / f"scene{k}.tfw").write_text(f"0.2\n0\n0\n-0.2\n{680000.1 + 100 * k}\n5149999.9\n")
    (folder / "flight-log.txt").write_text("two passes")
    pm = PluginManager()
    pm.register(StagePlugin("square", "square_stage"), "square")
    areas = {}
    for name, given in (("folder", [folder]), ("listing", sorted(folder.iterdir()))):
        out = tmp_path / f"{name}.gpkg"
        given = [g for g in given if g.suffix != ".txt"]
        tiling = TilingSettings(tile_size=128, overlap=16)
        summary = run(detect(given, out, stage_id="square", plugin_manager=pm, tiling=tiling))
        assert summary.rasters == 2 and summary.panels == 2
        with fiona.open(out) as src:
            areas[name] = sorted(round(f["properties"]["area_m2"], 1) for f in src)
    assert areas["folder"] == areas["listing"] == [30 * 50 * 0.04, 30 * 80 * 0.04]
    res = cli("detect", str(folder / "scene0.tfw"), "--spectral", "--out", str(tmp_path / "w.gpkg"))
    assert res.returncode != 0 and "is a world file" in res.stderr
    assert f"name {folder / 'scene0.tif'}" in res.stderr and "Traceback" not in res.stderr

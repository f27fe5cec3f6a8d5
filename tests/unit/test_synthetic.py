"""Synthetic scenes: the truth must agree with the pixels, the georeferencing and the files.

Scenes here are small (≤ 768²) so the whole module runs in a few seconds. Seeds were checked to
give both roof and ground arrays where a test needs both; the tests assert it rather than
trusting it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import fiona
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from shapely.geometry import shape

from solardesk.errors import ConfigError, RasterOpenError, VectorWriteError
from solardesk.synthetic import (
    Scene,
    SceneClass,
    SceneSpec,
    generate_scene,
    write_large_raster,
    write_scene,
)

GSD = 0.2


@pytest.fixture(scope="module")
def scene() -> Scene:
    """102 × 77 m at 0.2 m, forced to hold a ground-mounted field besides the roof arrays."""
    sc = generate_scene(SceneSpec(height=384, width=512, gsd=GSD, seed=2, n_ground_fields=1))
    kinds = {info.kind for info in sc.panel_info}
    assert kinds == {"roof", "ground"}, "the fixture's seed no longer gives both kinds of array"
    return sc


@pytest.fixture(scope="module")
def written(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scene")
    tif, truth = folder / "scene.tif", folder / "scene.geojson"
    write_scene(scene, tif, truth)
    return tif, truth


# --- georeferencing ---------------------------------------------------------------------------
def test_geotiff_round_trips_crs_transform_gsd_and_pixels(scene: Scene, written) -> None:
    tif, _ = written
    with rasterio.open(tif) as ds:
        assert ds.crs.to_epsg() == 32632
        assert ds.crs == scene.crs
        assert ds.transform == scene.transform
        assert ds.res == (GSD, GSD)
        assert ds.bounds == pytest.approx(scene.bounds)
        assert (ds.width, ds.height, ds.count) == (512, 384, 3)
        assert ds.block_shapes == [(256, 256)] * 3
        assert ds.compression.name.lower() == "deflate"
        assert ds.descriptions == ("red", "green", "blue")
        assert ds.tags()["SOLARDESK_SYNTHETIC"] == "1"
        np.testing.assert_array_equal(ds.read(), scene.image)
    # The default origin is in South Tyrol, in UTM 32N.
    lon, lat = Transformer.from_crs(scene.crs, "EPSG:4326", always_xy=True).transform(
        scene.transform.c, scene.transform.f
    )
    assert 10.5 < lon < 12.5 and 46.2 < lat < 47.1


def test_other_crs_gets_an_origin_inside_its_area_of_use(tmp_path: Path) -> None:
    sc = generate_scene(SceneSpec(height=64, width=80, gsd=0.3, crs="EPSG:32633", seed=1))
    left, bottom, right, top = sc.bounds
    assert (right - left, top - bottom) == pytest.approx((80 * 0.3, 64 * 0.3))
    lon, _ = Transformer.from_crs(sc.crs, "EPSG:4326", always_xy=True).transform(left, top)
    assert 12 <= lon <= 18  # UTM zone 33
    write_scene(sc, tmp_path / "a.tif")
    with rasterio.open(tmp_path / "a.tif") as ds:
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == sc.transform


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crs": "EPSG:4326"},  # degrees, not metres
        {"bands": 2},
        {"dtype": "float32"},
        {"panel_style": "shiny"},
        {"nodata": 300},  # does not fit uint8
        {"height": 8},
    ],
)
def test_spec_rejects_what_it_cannot_make(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SceneSpec(**kwargs)


# --- truth ------------------------------------------------------------------------------------
def test_instance_mask_is_the_rasterised_polygons(scene: Scene) -> None:
    n = len(scene.panels)
    assert n >= 2
    assert set(np.unique(scene.instance_mask)) == set(range(n + 1))
    for i, poly in enumerate(scene.panels, start=1):
        burnt = rasterize(
            [(poly, 1)], out_shape=scene.instance_mask.shape, transform=scene.transform
        ).astype(bool)
        mine = scene.instance_mask == i
        iou = (burnt & mine).sum() / (burnt | mine).sum()
        assert iou > 0.9, f"array {i}: IoU {iou:.3f}"
    # The semantic map says "panel" exactly where an instance is.
    np.testing.assert_array_equal(scene.classes == SceneClass.PANEL, scene.instance_mask > 0)


def test_polygons_are_valid_ccw_and_disjoint(scene: Scene) -> None:
    for poly in scene.panels:
        assert poly.is_valid and poly.geom_type == "Polygon"
        assert poly.exterior.is_ccw
    for i, a in enumerate(scene.panels):
        for b in scene.panels[i + 1 :]:
            assert a.intersection(b).area < 1e-6


def test_panel_areas_agree_with_pixels_and_modules(scene: Scene) -> None:
    counts = np.bincount(scene.instance_mask.ravel(), minlength=len(scene.panels) + 1)
    for i, (poly, info) in enumerate(zip(scene.panels, scene.panel_info, strict=True), start=1):
        pixel_area = counts[i] * GSD**2
        assert abs(pixel_area - poly.area) / poly.area < 0.1, f"array {i}"
        # Modules are ≈ 1.0 × 1.7 m, foreshortened by tilt or roof slope (≤ 40°) seen from above.
        per_module = poly.area / info.n_modules
        assert 1.2 < per_module < 2.1, f"array {i}: {per_module:.2f} m² per module"


def test_layout_is_in_metres_whatever_the_gsd() -> None:
    fine = generate_scene(SceneSpec(height=720, width=720, gsd=0.1, seed=5))
    coarse = generate_scene(SceneSpec(height=240, width=240, gsd=0.3, seed=5))
    assert len(fine.panels) == len(coarse.panels) > 0
    for a, b in zip(fine.panels, coarse.panels, strict=True):
        assert a.equals_exact(b, tolerance=1e-6)
    # The same arrays cover nine times as many pixels at a third of the gsd.
    ratio = (fine.instance_mask > 0).sum() / (coarse.instance_mask > 0).sum()
    assert 8.0 < ratio < 10.0


def test_classes_hold_the_lookalikes() -> None:
    sc = generate_scene(SceneSpec(height=768, width=768, gsd=0.2, seed=1))
    present = set(np.unique(sc.classes).tolist())
    wanted = {
        SceneClass.GROUND,
        SceneClass.ROOF,
        SceneClass.PANEL,
        SceneClass.VEGETATION,
        SceneClass.ROAD,
        SceneClass.SHADOW,
        SceneClass.ORCHARD,
    }
    assert wanted <= present
    # Shadows are darker than the ground they fall on.
    lum = sc.image.astype(np.float32).mean(axis=0)
    assert lum[sc.classes == SceneClass.SHADOW].mean() < 0.7 * lum[sc.classes == 0].mean()


def _hsv_median(scene: Scene, ids: list[int]) -> np.ndarray:
    mask = np.isin(scene.instance_mask, ids)
    rgb = scene.image[:3, mask].T[None].astype(np.uint8)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0].astype(np.float32)
    return np.median(hsv, axis=0) * np.array([2.0, 1 / 255, 1 / 255])


@pytest.mark.parametrize("style", ["bright", "dark"])
def test_panel_styles_look_as_calibrated(style: str) -> None:
    sc = generate_scene(SceneSpec(height=512, width=512, seed=3, panel_style=style))
    ids = [i for i, info in enumerate(sc.panel_info, start=1) if info.style == style]
    assert ids and len(ids) == len(sc.panels)
    hue, sat, value = _hsv_median(sc, ids)
    if style == "bright":  # South Tyrol 2023: value ≈ 0.65, low saturation, blue-cyan
        assert 0.45 < value < 0.9 and sat < 0.35 and 170 < hue < 240
    else:
        assert value < 0.5


# --- determinism and variants -----------------------------------------------------------------
def test_same_seed_same_scene_other_seed_other_scene() -> None:
    spec = SceneSpec(height=200, width=240, seed=7)
    a, b = generate_scene(spec), generate_scene(SceneSpec(height=200, width=240, seed=7))
    c = generate_scene(SceneSpec(height=200, width=240, seed=8))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instance_mask, b.instance_mask)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert [p.wkb for p in a.panels] == [p.wkb for p in b.panels]
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize(
    ("bands", "dtype"), [(1, "uint8"), (3, "uint16"), (4, "uint8"), (4, "uint16")]
)
def test_band_and_dtype_variants(bands: int, dtype: str, tmp_path: Path) -> None:
    sc = generate_scene(SceneSpec(height=200, width=256, gsd=0.3, seed=4, bands=bands, dtype=dtype))
    assert sc.image.shape == (bands, 200, 256)
    assert sc.image.dtype == np.dtype(dtype)
    if dtype == "uint16":
        assert 255 < sc.image.max() <= sc.spec.uint16_max  # 12-bit, not a stretched 8-bit
    if bands == 4:
        veg = np.isin(sc.classes, [SceneClass.GROUND, SceneClass.VEGETATION])
        panel = sc.instance_mask > 0
        red, nir = sc.image[0].astype(float), sc.image[3].astype(float)
        assert nir[veg].mean() > 1.3 * red[veg].mean()  # vegetation is bright in NIR
        assert nir[panel].mean() < nir[veg].mean()  # panels are not
    write_scene(sc, tmp_path / "v.tif")
    with rasterio.open(tmp_path / "v.tif") as ds:
        assert ds.count == bands and ds.dtypes[0] == dtype
        if bands == 4:
            assert ds.descriptions[3] == "nir"
            assert ds.colorinterp[3] != ColorInterp.alpha
        np.testing.assert_array_equal(ds.read(), sc.image)


@pytest.mark.parametrize(("dtype", "nodata"), [("uint8", 0), ("uint16", 65535)])
def test_nodata_corner(dtype: str, nodata: int, tmp_path: Path) -> None:
    sc = generate_scene(SceneSpec(height=256, width=256, seed=6, dtype=dtype, nodata=nodata))
    outside = sc.classes == SceneClass.NODATA
    assert 0.01 < outside.mean() < 0.15
    assert (sc.image[:, outside] == nodata).all()
    assert (sc.image[:, ~outside] != nodata).all()  # no valid pixel looks like nodata
    assert not (sc.instance_mask[outside]).any()
    corners = outside[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.sum() == 1
    write_scene(sc, tmp_path / "nd.tif")
    with rasterio.open(tmp_path / "nd.tif") as ds:
        assert ds.nodata == nodata
        np.testing.assert_array_equal(ds.dataset_mask() == 0, outside)


def test_jpeg_compression_refuses_nodata(tmp_path: Path) -> None:
    sc = generate_scene(SceneSpec(height=64, width=64, nodata=0))
    with pytest.raises(ConfigError, match="JPEG"):
        write_scene(sc, tmp_path / "j.tif", compress="jpeg")


# --- GeoJSON ----------------------------------------------------------------------------------
def test_geojson_is_rfc7946_lonlat_and_opens_with_fiona(scene: Scene, written) -> None:
    _, truth = written
    doc = json.loads(truth.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    to_map = Transformer.from_crs("EPSG:4326", scene.crs, always_xy=True)
    with fiona.open(truth) as src:
        assert src.crs.to_epsg() == 4326
        features = list(src)
    assert len(features) == len(scene.panels)
    for feat, poly, info in zip(features, scene.panels, scene.panel_info, strict=True):
        geom = shape(feat["geometry"])
        lon, lat = np.asarray(geom.exterior.coords).T
        assert ((lon > 10.5) & (lon < 12.5) & (lat > 46.2) & (lat < 47.1)).all()
        assert geom.exterior.is_ccw  # right-hand rule
        props = feat["properties"]
        assert props["kind"] == info.kind in ("roof", "ground")
        assert props["area_m2"] == pytest.approx(poly.area, abs=1e-3)
        back = shapely.transform(geom, lambda xy: np.column_stack(to_map.transform(*xy.T)))
        assert back.hausdorff_distance(poly) < 0.01  # metres
    assert [f["properties"]["id"] for f in features] == list(range(1, len(features) + 1))


def test_missing_folders_raise_and_write_nothing(scene: Scene, tmp_path: Path) -> None:
    with pytest.raises(RasterOpenError, match="does not exist"):
        write_scene(scene, tmp_path / "missing" / "a.tif")
    with pytest.raises(VectorWriteError, match="does not exist"):
        write_scene(scene, tmp_path / "a.tif", tmp_path / "missing" / "a.geojson")
    assert not (tmp_path / "a.tif").exists()
    with pytest.raises(RasterOpenError):
        write_large_raster(tmp_path / "missing" / "big.tif", 100, 100)


# --- large rasters ----------------------------------------------------------------------------
def _peak_bytes(path: Path, size: int) -> int:
    tracemalloc.start()
    try:
        write_large_raster(path, size, size, seed=3, blocksize=256, n_sources=3)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_write_large_raster_memory_does_not_grow_with_size(tmp_path: Path) -> None:
    small = _peak_bytes(tmp_path / "small.tif", 1024)
    big = _peak_bytes(tmp_path / "big.tif", 4096)
    raw = 4096 * 4096 * 3
    # Sixteen times the pixels, the same memory: a few source scenes and one block.
    assert big < small + 4e6, (small, big)
    assert big < raw / 3, f"peak {big / 1e6:.0f} MB for a {raw / 1e6:.0f} MB raster"
    with rasterio.open(tmp_path / "big.tif") as ds:
        assert (ds.width, ds.height, ds.count) == (4096, 4096, 3)
        assert ds.block_shapes == [(256, 256)] * 3
        assert ds.compression.name.lower() == "deflate"
        assert ds.crs.to_epsg() == 32632 and ds.res == (0.15, 0.15)
        corner = ds.read(window=((3840, 4096), (3840, 4096)))
        assert corner.std() > 5  # content, not an empty block


def test_write_large_raster_is_deterministic(tmp_path: Path) -> None:
    for name in ("a.tif", "b.tif"):
        write_large_raster(tmp_path / name, 700, 500, seed=9, blocksize=256, n_sources=2)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.shape == (500, 700)


# --- boundaries -------------------------------------------------------------------------------
def test_module_imports_no_qt_torch_or_onnxruntime() -> None:
    code = (
        "import sys, solardesk.synthetic; "
        "heavy = ('PySide6', 'torch', 'torchvision', 'onnxruntime'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bundled_sample_is_what_make_sample_makes() -> None:
    folder = Path(__file__).resolve().parents[2] / "resources" / "sample"
    spec = importlib.util.spec_from_file_location("make_sample", folder / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tif, truth = folder / "sample_scene.tif", folder / "sample_scene_panels.geojson"
    assert tif.stat().st_size < 2_000_000
    with rasterio.open(tif) as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (1024, 1024, 3, "uint8")
        assert ds.crs.to_epsg() == 32632 and ds.res == (0.15, 0.15)
    expected = generate_scene(module.SAMPLE_SPEC)
    with fiona.open(truth) as src:
        areas = [f["properties"]["area_m2"] for f in src]
    assert areas == [round(p.area, 3) for p in expected.panels], (
        "the sample is stale: run resources/sample/make_sample.py"
    )

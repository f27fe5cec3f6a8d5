"""Raster I/O: opening, facts, ground resolution, fingerprints and normalised reads."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from solardesk.core.raster import (
    RasterReader,
    describe,
    estimate_normalisation,
    expand_rasters,
    fingerprint,
    open_raster,
    resolve_bands,
)
from solardesk.errors import (
    NotGeoreferencedError,
    NotGeoreferencedWarning,
    RasterBandError,
    RasterOpenError,
    SolarDeskError,
)
from tests.conftest import write_damaged_inside, write_raster


def test_describe_projected(rgb_tif: Path) -> None:
    facts = describe(rgb_tif)
    assert (facts.width, facts.height, facts.count) == (300, 200, 3)
    assert facts.crs == "EPSG:32632"
    assert facts.georeferenced
    # UTM map units are metres up to the scale factor (0.9996 on the central meridian).
    assert facts.ground_resolution_m == pytest.approx(0.2, rel=2e-3)
    assert facts.to_dict()["ground_resolution_m"] == facts.ground_resolution_m


def test_web_mercator_ground_resolution_scales_by_cos_latitude(tmp_path: Path) -> None:
    # 0.2 map units at 46.4°N (South Tyrol): about 0.2·cos(46.4°) ≈ 0.138 m on the ground.
    data = np.zeros((3, 64, 64), np.uint8)
    t = Affine(0.2, 0, 1248532.0, 0, -0.2, 5845000.0)
    p = write_raster(tmp_path / "merc.tif", data, crs="EPSG:3857", transform=t)
    facts = describe(p)
    lat = 46.4
    assert facts.pixel_size == (0.2, 0.2)
    assert facts.ground_resolution_m == pytest.approx(0.2 * np.cos(np.radians(lat)), rel=0.01)


def test_geographic_ground_resolution_in_metres(tmp_path: Path) -> None:
    data = np.zeros((1, 64, 64), np.uint16)
    t = Affine(2.7e-6, 0, -115.23, 0, -2.7e-6, 36.14)
    p = write_raster(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=t)
    gx, gy = describe(p).ground_resolution_xy_m
    assert gy == pytest.approx(2.7e-6 * 110_950, rel=0.01)  # a degree of latitude ≈ 110.95 km
    assert gx == pytest.approx(gy * np.cos(np.radians(36.14)), rel=0.01)


def test_jpeg_with_world_file_and_prj(tmp_path: Path) -> None:
    data = np.full((3, 64, 64), 128, np.uint8)
    p = write_raster(tmp_path / "a.jpg", data, crs=None, driver="JPEG")
    for aux in tmp_path.glob("a.jpg.aux.xml"):
        aux.unlink()
    (tmp_path / "a.jgw").write_text("0.2\n0\n0\n-0.2\n1248532.1\n5819736.9\n")
    (tmp_path / "a.prj").write_text(rasterio.crs.CRS.from_epsg(3857).to_wkt())
    facts = describe(p)
    assert facts.crs == "EPSG:3857"
    assert facts.transform[0] == pytest.approx(0.2)
    assert facts.ground_resolution_m == pytest.approx(0.138, abs=0.002)


def test_jpeg_without_world_file_warns_and_uses_pixels(tmp_path: Path) -> None:
    p = write_raster(tmp_path / "b.jpg", np.zeros((3, 32, 32), np.uint8), crs=None, driver="JPEG")
    for aux in tmp_path.glob("b.jpg.aux.xml"):
        aux.unlink()
    with pytest.warns(NotGeoreferencedWarning, match=r"b\.jpg.*world file.*\.jgw"):
        facts = describe(p)
    assert not facts.georeferenced
    assert facts.ground_resolution_m is None
    with pytest.raises(NotGeoreferencedError, match=r"b\.jpg"):
        facts.require_georeferenced("an area of interest")


def test_geotiff_without_crs_warns(tmp_path: Path) -> None:
    p = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 32, 32), np.uint8), crs=None)
    with pytest.warns(NotGeoreferencedWarning, match="no CRS"):
        assert describe(p).crs is None


def _crs_without_transform(path: Path) -> Path:
    from rasterio.crs import CRS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(
            path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
            crs=CRS.from_epsg(32632),
        ) as ds:  # fmt: skip
            ds.write(np.zeros((1, 8, 8), np.uint8))
    return path


def test_a_crs_without_geotransform_warns_in_solardesks_words_only(tmp_path: Path) -> None:
    """rasterio's bare "Dataset has no geotransform" is replaced by SolarDesk's warning naming
    the file (rasterio's own is filtered out, not caught: see the next test)."""
    p = _crs_without_transform(tmp_path / "crs-no-transform.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        open_raster(p).close()
    kinds = [(w.category, str(w.message)) for w in caught]
    assert any(
        c is NotGeoreferencedWarning and "crs-no-transform.tif" in m and "no geotransform" in m
        for c, m in kinds
    )
    assert not [m for c, m in kinds if issubclass(c, rasterio.errors.NotGeoreferencedWarning)]


def test_opening_a_raster_leaves_other_threads_warning_filters_alone(
    recwarn, monkeypatch, rgb_tif: Path, tmp_path: Path
) -> None:
    """``warnings.catch_warnings`` swaps the process's filters and is not thread-safe: a worker
    opening a raster inside one while another thread traced a mask (rasterio silences its
    no-geotransform warning there the same way) let rasterio's warning through. Opening uses
    a lasting filter instead, installed once."""
    bare = _crs_without_transform(tmp_path / "c.tif")

    entered = []
    real = warnings.catch_warnings

    def spy(*args, **kwargs):
        entered.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(warnings, "catch_warnings", spy)
    open_raster(rgb_tif).close()
    n = len(warnings.filters)
    open_raster(bare).close()
    monkeypatch.undo()
    assert entered == []  # opening never swapped the filters
    assert len(warnings.filters) == n  # installed once, not on every open
    assert ("ignore", None, rasterio.errors.NotGeoreferencedWarning, None, 0) in warnings.filters


def _write(p: Path, content: bytes) -> Path:
    p.write_bytes(content)
    return p


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda d: d / "missing.tif", "no such file"),
        (lambda d: _write(d / "empty.tif", b""), "empty"),
        (lambda d: _write(d / "text.tif", b"just some notes\n" * 10), "cannot be read as a raster"),
        (lambda d: d, "is a folder"),
    ],
    ids=["missing", "zero-bytes", "text-named-tif", "folder"],
)
def test_bad_files_name_the_file(tmp_path: Path, make, pattern: str) -> None:
    p = make(tmp_path)
    with pytest.raises(RasterOpenError, match=pattern) as ei:
        open_raster(p)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, SolarDeskError) and isinstance(ei.value, OSError)


def test_truncated_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    full = write_raster(tmp_path / "full.tif", rng.integers(0, 255, (3, 256, 256), dtype=np.uint8))
    raw = full.read_bytes()
    cut = tmp_path / "cut.tif"
    # Uncompressed strips: the header sits at the start, so half the file keeps it readable.
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RasterOpenError, match=r"cut\.tif.*(damaged|truncated|cannot be read)"):
        open_raster(cut)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["8-bit", "16-bit"])
def test_a_block_damaged_inside_the_file_is_named_with_its_remedy(tmp_path, dtype) -> None:
    """The fingerprint, the 16-bit stretch estimate and a tile read each meet the damaged
    blocks: each reports the file, that it is damaged and what to do — not rasterio's "Read
    failed" (which the command line showed as an internal error, exit 3)."""
    bad = write_damaged_inside(tmp_path, dtype)
    with open_raster(bad) as ds:  # opens: the last block is whole
        assert ds.width == 512
    with pytest.raises(RasterOpenError, match=r"bad\.tif: reading .* damaged\. Copy or download"):
        fingerprint(bad)
    if dtype is np.uint16:
        with open_raster(bad) as ds, pytest.raises(RasterOpenError, match=r"bad\.tif.*damaged"):
            estimate_normalisation(ds)
    with pytest.raises(RasterOpenError, match=r"bad\.tif.*damaged"), RasterReader(bad) as r:
        r.read_rgb(Window(192, 192, 128, 128))  # (16-bit: the reader's stretch estimate meets it)


def test_fingerprint_survives_copy_and_changes_with_content(tmp_path: Path, rgb_tif: Path) -> None:
    copy = tmp_path / "elsewhere" / "renamed.tif"
    copy.parent.mkdir()
    shutil.copy(rgb_tif, copy)
    assert fingerprint(copy) == fingerprint(rgb_tif)
    with rasterio.open(copy, "r+") as ds:
        ds.write(np.full((3, 200, 300), 7, np.uint8))
    assert fingerprint(copy) != fingerprint(rgb_tif)


def test_resolve_bands() -> None:
    assert resolve_bands(1, None) == (1, 1, 1)
    assert resolve_bands(4, None) == (1, 2, 3)
    assert resolve_bands(4, (4, 3, 2)) == (4, 3, 2)
    with pytest.raises(RasterBandError, match=r"band\(s\) \[5\]"):
        resolve_bands(4, (5, 3, 2), "x.tif")


def test_uint8_rgb_read_is_unchanged(rgb_tif: Path) -> None:
    with RasterReader(rgb_tif) as r, rasterio.open(rgb_tif) as ds:
        rgb, valid = r.read_rgb(Window(10, 20, 64, 32))
        raw = ds.read(window=Window(10, 20, 64, 32))
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
    assert valid.all()
    np.testing.assert_array_equal(rgb, np.moveaxis(raw, 0, -1))


def test_uint16_single_band_stretch_and_nodata(tmp_path: Path) -> None:
    data = np.linspace(1000, 3000, 256 * 256).reshape(1, 256, 256).astype(np.uint16)
    data[0, :16, :16] = 0  # nodata corner
    p = write_raster(tmp_path / "u16.tif", data, nodata=0)
    with RasterReader(p) as r:
        n = r.normalisation
        assert n.bands == (1, 1, 1)
        assert 1000 <= n.lo[0] < 1200 and 2800 < n.hi[0] <= 3000
        rgb, valid = r.read_rgb(Window(0, 0, 256, 256))
    assert not valid[:16, :16].any() and valid[16:, 16:].all()
    assert (rgb[:16, :16] == 0).all()
    # Grey replicated, and the stretch spans nearly the full 8-bit range.
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[valid, 0].min() == 0 and rgb[valid, 0].max() == 255
    assert np.percentile(rgb[valid, 0], 50) == pytest.approx(128, abs=8)


def test_four_band_mapping(tmp_path: Path) -> None:
    data = np.stack([np.full((32, 32), v, np.uint8) for v in (10, 20, 30, 40)])
    p = write_raster(tmp_path / "rgbn.tif", data)
    with RasterReader(p, bands=(4, 3, 2)) as r:
        rgb, _ = r.read_rgb(Window(0, 0, 32, 32))
    assert tuple(rgb[0, 0]) == (40, 30, 20)


def test_stretch_uses_overviews_when_present(tmp_path: Path) -> None:
    data = np.linspace(0, 10000, 1024 * 1024).reshape(1, 1024, 1024).astype(np.uint16)
    p = write_raster(tmp_path / "ovr.tif", data, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(p, "r+") as ds:
        ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    with rasterio.open(p) as ds:
        n = estimate_normalisation(ds)
    assert n.lo[0] == pytest.approx(200, rel=0.1)
    assert n.hi[0] == pytest.approx(9800, rel=0.02)


def test_all_nodata_raster_reads_without_nan(tmp_path: Path) -> None:
    p = write_raster(tmp_path / "nd.tif", np.full((1, 64, 64), -9999, np.int16), nodata=-9999)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with RasterReader(p) as r:
            rgb, valid = r.read_rgb(Window(0, 0, 64, 64))
    assert not valid.any() and (rgb == 0).all()


def test_cog_and_vrt_open_like_geotiff(tmp_path: Path, rgb_tif: Path) -> None:
    cog = tmp_path / "cog.tif"
    with rasterio.open(rgb_tif) as src:
        profile = src.profile | {"driver": "COG", "blocksize": 128}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with rasterio.open(cog, "w", **profile) as dst:
            dst.write(src.read())
    vrt = tmp_path / "mosaic.vrt"
    with rasterio.open(rgb_tif) as src:
        t = src.transform
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{rgb_tif}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
            for b in (1, 2, 3)
        )
        vrt.write_text(
            f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
            f"<SRS>{src.crs.to_wkt()}</SRS>"
            f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{bands}"
            "</VRTDataset>"
        )
    base = describe(rgb_tif)
    for path, driver in ((cog, "GTiff"), (vrt, "VRT")):
        facts = describe(path)
        assert facts.driver == driver
        assert facts.crs == base.crs and facts.transform == pytest.approx(base.transform)
        assert facts.fingerprint == base.fingerprint  # same pixels, same georeferencing
        with RasterReader(path) as r:
            rgb, _ = r.read_rgb(Window(100, 50, 60, 30))
        assert (rgb == 230).all()


def test_a_local_engineering_crs_in_metres_has_its_pixel_size_as_ground_resolution(
    tmp_path,
) -> None:
    """A LOCAL_CS cannot be placed on the Earth (no way to longitude and latitude): its
    ground resolution is the pixel size in its linear unit, not a ProjError traceback."""
    from rasterio.crs import CRS

    from solardesk.core.raster import describe

    local = CRS.from_wkt(
        'LOCAL_CS["arbitrary",UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
        'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    )
    path = write_raster(tmp_path / "local.tif", np.zeros((3, 64, 64), np.uint8), crs=local)
    info = describe(path)
    assert info.georeferenced and info.ground_resolution_m == pytest.approx(0.2)


def _jpeg_with_sidecars(folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    p = write_raster(folder / f"{name}.jpg", np.full((3, 32, 32), 90, np.uint8), driver="JPEG")
    (folder / f"{name}.jgw").write_text("0.2\n0\n0\n-0.2\n680000\n5150000\n")
    return p


def test_a_folder_stands_for_its_images_and_sidecars_are_left_out(tmp_path: Path) -> None:
    d = tmp_path / "images"
    b = _jpeg_with_sidecars(d, "b")
    a = _jpeg_with_sidecars(d, "a")
    write_raster(d / "c.TIF", np.zeros((1, 8, 8), np.uint8))
    (d / "notes.txt").write_text("flight log")
    write_raster(d / ".hidden.tif", np.zeros((1, 8, 8), np.uint8))
    assert (d / "a.jpg.aux.xml").exists()  # GDAL wrote the CRS beside the JPEG
    assert expand_rasters([d]) == [a, b, d / "c.TIF"]
    # A PNG with nothing beside it to georeference it is a mask or a preview: left out, said.
    write_raster(d / "a_mask.png", np.zeros((1, 32, 32), np.uint8), crs=None, driver="PNG")
    (d / "a_mask.png.aux.xml").unlink(missing_ok=True)
    with pytest.warns(NotGeoreferencedWarning, match=r"1 image without a world file.*a_mask\.png"):
        assert expand_rasters([d]) == [a, b, d / "c.TIF"]
    (d / "a_mask.png").unlink()
    # What a shell's images/* names: the world files and .aux.xml of named images drop out.
    listed = sorted(d.iterdir())
    assert expand_rasters([str(f) for f in listed if f.suffix != ".txt"]) == [
        d / ".hidden.tif",
        a,
        b,
        d / "c.TIF",
    ]
    # A file named twice (or by another spelling) counts once; order is the user's.
    assert expand_rasters([b, d / ".." / "images" / "a.jpg", b]) == [
        b,
        d / ".." / "images" / "a.jpg",
    ]


def test_a_vrt_in_a_folder_reads_its_sources_once(tmp_path: Path) -> None:
    d = tmp_path / "flight"
    d.mkdir()
    left = write_raster(d / "left.tif", np.zeros((1, 16, 16), np.uint8))
    right = write_raster(
        d / "right.tif",
        np.zeros((1, 16, 16), np.uint8),
        transform=Affine(0.2, 0, 680003.2, 0, -0.2, 5150000.0),
    )
    other = write_raster(d / "other.tif", np.zeros((1, 16, 16), np.uint8))
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="1">{f.name}</SourceFilename>'
        f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="16" ySize="16"/>'
        f'<DstRect xOff="{x}" yOff="0" xSize="16" ySize="16"/></SimpleSource>'
        for f, x in ((left, 0), (right, 16))
    )
    with rasterio.open(left) as ds:
        wkt = ds.crs.to_wkt()
    (d / "mosaic.vrt").write_text(
        f'<VRTDataset rasterXSize="32" rasterYSize="16"><SRS>{wkt}</SRS>'
        "<GeoTransform>680000, 0.2, 0, 5150000, 0, -0.2</GeoTransform>"
        f'<VRTRasterBand dataType="Byte" band="1">{sources}</VRTRasterBand></VRTDataset>'
    )
    with rasterio.open(d / "mosaic.vrt") as ds:
        assert ds.width == 32  # a valid mosaic of the two
    # The mosaic stands for left and right: read through it, not again on their own.
    assert expand_rasters([d]) == [d / "mosaic.vrt", other]


def test_a_sidecar_alone_names_its_image(tmp_path: Path) -> None:
    d = tmp_path / "images"
    a = _jpeg_with_sidecars(d, "a")
    for side, kind in ((d / "a.jgw", "world file"), (d / "a.jpg.aux.xml", "GDAL metadata")):
        for call in (lambda q=side: expand_rasters([q]), lambda q=side: open_raster(q)):
            with pytest.raises(RasterOpenError, match=kind) as ei:
                call()
            assert str(side) in str(ei.value) and f"name {a}" in str(ei.value)
    # An overview file is a TIFF GDAL opens, but it is never a scene of its own.
    ovr = write_raster(tmp_path / "b.tif.ovr", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(RasterOpenError, match="overview file"):
        open_raster(ovr)
    bare = tmp_path / "previews"
    bare.mkdir()
    write_raster(bare / "p.png", np.zeros((3, 8, 8), np.uint8), crs=None, driver="PNG")
    for aux in bare.glob("*.aux.xml"):
        aux.unlink()
    with pytest.warns(NotGeoreferencedWarning), pytest.raises(RasterOpenError, match="none of"):
        expand_rasters([bare])
    assert expand_rasters([bare / "p.png"]) == [bare / "p.png"]  # named: read in pixels
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no imagery yet")
    with pytest.raises(RasterOpenError, match="no image in it") as ei:
        expand_rasters([tmp_path / "empty"])
    assert str(tmp_path / "empty") in str(ei.value)


def test_a_pattern_stands_for_the_images_it_matches_at_any_depth(tmp_path: Path) -> None:
    root = tmp_path / "delivery"
    for sub in ("2023/east", "2024", ".trash"):
        (root / sub).mkdir(parents=True)
    a = _jpeg_with_sidecars(root / "2023", "a")
    b = write_raster(root / "2023" / "east" / "b.tif", np.zeros((1, 8, 8), np.uint8))
    c = write_raster(root / "2024" / "c.tif", np.zeros((1, 8, 8), np.uint8))
    write_raster(root / ".trash" / "old.tif", np.zeros((1, 8, 8), np.uint8))
    (root / "2024" / "c.tif.ovr").write_bytes(b"overviews")
    write_raster(
        root / "2024" / "preview.png", np.zeros((1, 8, 8), np.uint8), crs=None, driver="PNG"
    )
    for aux in (root / "2024").glob("*.png.aux.xml"):
        aux.unlink()

    # The folder itself holds no image: the error says where they are and how to name them.
    with pytest.raises(RasterOpenError, match="no image in it") as ei:
        expand_rasters([root])
    assert str(a) in str(ei.value) and f"'{root}/**/*.jpg' (quoted)" in str(ei.value)

    # `**` at any depth, hidden folders aside; sidecars and overviews are no images; a
    # bare PNG is left out with a warning, as in a folder.
    with pytest.warns(NotGeoreferencedWarning, match="preview.png"):
        assert expand_rasters([f"{root}/**/*"]) == [a, b, c]
    assert expand_rasters([str(root / "**" / "*.tif")]) == [b, c]
    assert expand_rasters([root / "202?" / "*.tif"]) == [c]  # (a Path works too)
    # With names and folders, each once, in the order named.
    assert expand_rasters([c, str(root / "**" / "*.tif"), root / "2023"]) == [c, b, a]
    # A file whose name only looks like a pattern is that file.
    odd = write_raster(tmp_path / "scan[1].tif", np.zeros((1, 8, 8), np.uint8))
    assert expand_rasters([odd]) == [odd]

    with pytest.raises(RasterOpenError, match="no image matches this pattern") as ei:
        expand_rasters([str(root / "**" / "*.jp2")])
    assert "quote it" in str(ei.value)

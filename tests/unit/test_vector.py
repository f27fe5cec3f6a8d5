"""Vector output checked by an outside reader (GDAL's ``ogrinfo``) and read back with fiona.

``ogrinfo`` comes from Debian's ``gdal-bin`` (GDAL 3.6), a different GDAL build from the ones
inside the fiona and rasterio wheels: a file it reads is a file QGIS reads. CI installs it;
where it is missing these tests fail rather than skip, so a green run always means the files
were validated.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import fiona
import pytest
import shapely
from shapely.geometry import Polygon, box, shape

from solardesk.core.geometry import reproject_geometry
from solardesk.core.vector import (
    PANEL_FIELDS,
    SUPPORTED_EXTENSIONS,
    VectorWriter,
    read_geometries,
    shapefile_field_names,
)
from solardesk.errors import AOIError, SolarDeskError, VectorWriteError

UTM = "EPSG:32632"
X0, Y0 = 678000.0, 5150000.0  # Bolzano, about 11.3°E 46.5°N
FIELDS = {**PANEL_FIELDS, "reviewed": bool, "n_parts": int}


# --- ogrinfo ------------------------------------------------------------------------------------
def ogrinfo(path: Path) -> dict:
    """``ogrinfo -so -al`` of ``path``, parsed: layer name, feature count, EPSG, fields."""
    exe = shutil.which("ogrinfo")
    if exe is None:
        pytest.fail(
            "ogrinfo is not on PATH: install GDAL's command-line tools (apt-get install gdal-bin)"
        )
    run = subprocess.run([exe, "-so", "-al", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"ogrinfo cannot open {path}:\n{run.stdout}\n{run.stderr}"
    out = run.stdout
    assert "ERROR" not in run.stderr, run.stderr
    layers = re.findall(r"^Layer name: (.+)$", out, re.M)
    assert len(layers) == 1, out
    count = int(re.search(r"^Feature Count: (\d+)$", out, re.M).group(1))
    srs = out.split("Layer SRS WKT:", 1)[1].split("Data axis to CRS axis mapping", 1)[0]
    ids = re.findall(r'ID\["EPSG",(\d+)\]\]\s*$', srs.strip() + "\n", re.M)
    fields = dict(re.findall(r"^(\w+): (\w+(?:\(\w+\))?) \(", out, re.M))
    geometry = re.search(r"^Geometry: (.+)$", out, re.M).group(1)
    return {
        "layer": layers[0],
        "count": count,
        "epsg": int(ids[-1]) if ids else None,
        "fields": fields,
        "geometry": geometry,
    }


def panels(n=3):
    """``n`` 2 m × 1 m panels in UTM with attributes of every type."""
    feats = []
    for i in range(n):
        geom = box(X0 + 5 * i, Y0, X0 + 5 * i + 2, Y0 + 1)
        props = {
            "score": 0.5 + i / 10,
            "area_m2": 2.0,
            "perimeter_m": 6.0,
            "azimuth_deg": 90.0,
            "centroid_lon": 11.3 + i / 1e4,
            "centroid_lat": 46.5,
            "source_raster": f"Bozen_Ü_{i}.tif",  # non-ASCII must survive (.cpg UTF-8)
            "tile_id": f"r0c{i}",
            "model_name": "tiny",
            # "model_version" left out: written as null
            "reviewed": i % 2 == 0,
            "n_parts": i,
        }
        feats.append((geom, props))
    return feats


def write(path, feats=(), *, batches=1, **kw):
    feats = list(feats)
    with VectorWriter(path, UTM, schema_fields=FIELDS, **kw) as w:
        for b in range(batches):
            w.write(feats[b::batches])
    return w


OGR_TYPES = {
    "GPKG": {float: "Real", str: "String", int: "Integer64", bool: "Integer(Boolean)"},
    "ESRI Shapefile": {float: "Real", str: "String", int: "Integer64", bool: "Integer"},
    "GeoJSON": {float: "Real", str: "String", int: "Integer", bool: "Integer(Boolean)"},
}
FIONA_TYPES = {float: "float", str: "str", int: "int", bool: "bool"}


@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".geojson"])
def test_each_format_is_valid_for_ogrinfo_and_reads_back(tmp_path, ext):
    path = tmp_path / f"panels{ext}"
    feats = panels(3)
    w = write(path, feats, batches=2)
    driver = SUPPORTED_EXTENSIONS[ext]
    names = w.field_map
    assert w.count == 3

    info = ogrinfo(path)
    assert info["count"] == 3
    assert info["epsg"] == (4326 if ext == ".geojson" else 32632)
    assert info["geometry"] == "Polygon"
    assert list(info["fields"]) == [names[f] for f in FIELDS]
    for field, kind in FIELDS.items():
        assert info["fields"][names[field]] == OGR_TYPES[driver][kind], field

    with fiona.open(path) as src:
        assert src.crs.to_epsg() == (4326 if ext == ".geojson" else 32632)
        assert len(src) == 3
        schema = src.schema["properties"]
        assert list(schema) == [names[f] for f in FIELDS]
        for field, kind in FIELDS.items():
            fiona_type = schema[names[field]].split(":")[0]
            if kind is bool and ext == ".shp":
                assert fiona_type.startswith("int")  # DBF has no boolean: 0/1
            else:
                assert fiona_type.startswith(FIONA_TYPES[kind]), (field, fiona_type)
        records = sorted(src, key=lambda f: f.properties[names["tile_id"]])
        got = records[1].properties
        assert got[names["source_raster"]] == "Bozen_Ü_1.tif"
        assert got[names["score"]] == pytest.approx(0.6)
        assert got[names["n_parts"]] == 1
        assert got[names["model_version"]] is None  # not given: null
        assert bool(got[names["reviewed"]]) is False

    geoms, crs = read_geometries(path, UTM)
    assert crs.to_epsg() == 32632
    tol = 0.02 if ext == ".geojson" else 1e-6  # GeoJSON: 7 decimals of a degree ≈ 1 cm
    for g in geoms:
        assert min(g.hausdorff_distance(f[0]) for f in feats) < tol
    assert not list(tmp_path.glob(".*partial*")), "temporary files left behind"


def test_shapefile_has_prj_cpg_and_short_names(tmp_path):
    path = tmp_path / "panels.shp"
    w = write(path, panels(2))
    assert {p.suffix for p in tmp_path.iterdir()} == {".shp", ".shx", ".dbf", ".prj", ".cpg"}
    assert (tmp_path / "panels.cpg").read_text().strip().upper() in ("UTF-8", "UTF8")
    assert "utm_zone_32n" in (tmp_path / "panels.prj").read_text().lower()
    assert all(len(n.encode()) <= 10 for n in w.field_map.values())
    assert w.field_map["centroid_lon"] != w.field_map["centroid_lat"]
    assert set(ogrinfo(path)["fields"]) == set(w.field_map.values())


def test_shapefile_name_map_is_deterministic_and_collision_free():
    names = [
        "centroid_lon",
        "centroid_lonx",
        "CENTRO_LON",
        "aaaaaaaaaaaa",
        "aaaaaaaaaab",
        "b",
        "größenklasse",
    ]
    with pytest.raises(VectorWriteError):  # "centro_lon" is taken case-insensitively below
        shapefile_field_names([*names, "centro_lon"])
    first = shapefile_field_names(names)
    assert first == shapefile_field_names(names)
    assert list(first) == names
    shorts = list(first.values())
    assert all(len(s.encode()) <= 10 for s in shorts)
    assert len({s.lower() for s in shorts}) == len(shorts)
    assert first["b"] == "b" and first["CENTRO_LON"] == "CENTRO_LON"  # short names never change
    assert shapefile_field_names(PANEL_FIELDS)["centroid_lat"] == "centro_lat"


def test_geojson_is_rfc7946_lon_lat(tmp_path):
    path = tmp_path / "panels.geojson"
    clockwise = Polygon([(X0, Y0), (X0, Y0 + 1), (X0 + 2, Y0 + 1), (X0 + 2, Y0)])
    assert not clockwise.exterior.is_ccw
    with VectorWriter(path, UTM, schema_fields={"score": float}) as w:
        w.write([(clockwise, {"score": 0.9})])
    doc = json.loads(path.read_text())
    assert "crs" not in doc
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    lon, lat = ring[0]
    assert 11.0 < lon < 11.6 and 46.3 < lat < 46.6  # lon/lat order, not lat/lon, not metres
    assert shapely.LinearRing(ring).is_ccw  # right-hand rule
    assert all(len(repr(c).split(".")[1]) <= 7 for xy in ring for c in xy)
    expected = reproject_geometry(clockwise, UTM, "EPSG:4326")
    assert shape(doc["features"][0]["geometry"]).hausdorff_distance(expected) < 1e-6


@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".geojson", ".json"])
def test_an_empty_result_is_a_valid_empty_layer(tmp_path, ext):
    path = tmp_path / f"none{ext}"
    w = write(path, [])
    assert w.count == 0
    info = ogrinfo(path)
    assert info["count"] == 0
    if ext in (".gpkg", ".shp"):  # GeoJSON cannot hold a schema without features
        assert info["epsg"] == 32632
        assert list(info["fields"]) == list(w.field_map.values())
    with fiona.open(path) as src:
        assert len(src) == 0


def test_nothing_reaches_the_final_path_until_a_clean_close(tmp_path):
    path = tmp_path / "panels.gpkg"
    write(path, panels(1))
    before = path.read_bytes()
    with (
        pytest.raises(RuntimeError),
        VectorWriter(path, UTM, schema_fields=FIELDS, overwrite=True) as w,
    ):
        w.write(panels(3))
        assert path.read_bytes() == before  # still the old file while the job runs
        assert len(list(tmp_path.glob(".panels.partial-*.gpkg"))) == 1
        raise RuntimeError("job interrupted")
    assert path.read_bytes() == before
    assert ogrinfo(path)["count"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
    path = tmp_path / "panels.shp"
    write(path, panels(1))
    with pytest.raises(VectorWriteError, match="--overwrite"):
        VectorWriter(path, UTM, schema_fields=FIELDS)
    (tmp_path / "panels.qix").write_bytes(b"stale index")
    write(path, panels(3), overwrite=True)
    assert ogrinfo(path)["count"] == 3
    assert not (tmp_path / "panels.qix").exists()


def test_a_vrt_s_sources_are_inputs_too(tmp_path):
    """``detect mosaic.vrt --out a.shp --overwrite`` would write a.prj over the CRS of the
    mosaic's source a.tif (a .prj beside it), and ``--out b.gpkg`` over a GeoPackage source."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from solardesk.core.vector import job_inputs

    for name, driver, x0 in (("a.tif", "GTiff", 0), ("b.gpkg", "GPKG", 64)):
        with rasterio.open(
            tmp_path / name,
            "w",
            driver=driver,
            width=64,
            height=64,
            count=4,
            dtype="uint8",
            crs=UTM,
            transform=from_origin(X0 + x0, Y0, 1, 1),
        ) as ds:
            ds.write(np.full((4, 64, 64), 90, np.uint8))
    (tmp_path / "a.prj").write_text("a.tif's CRS")
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(
        ["gdalbuildvrt", "-q", str(vrt), str(tmp_path / "a.tif"), str(tmp_path / "b.gpkg")],
        check=True,
    )
    inputs = job_inputs([vrt])
    for out in (tmp_path / "a.shp", tmp_path / "b.gpkg"):
        with pytest.raises(VectorWriteError, match="is an input of this job"):
            VectorWriter(out, UTM, schema_fields=FIELDS, overwrite=True, inputs=inputs)
    assert (tmp_path / "a.prj").read_text() == "a.tif's CRS"
    VectorWriter(tmp_path / "panels.shp", UTM, schema_fields=FIELDS, inputs=inputs)  # fine
    # A raster without georeferencing is listed without rasterio's warning on the console.
    import warnings

    import cv2

    cv2.imwrite(str(tmp_path / "plain.png"), np.zeros((8, 8, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert job_inputs([tmp_path / "plain.png"])[0] == tmp_path / "plain.png"
    # A VRT of VRTs: the sources of its sources count too.
    outer = tmp_path / "outer.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(outer), str(vrt)], check=True)
    nested = job_inputs([outer])
    with pytest.raises(VectorWriteError, match=r"is an input of this job \(.*a\.prj\)"):
        VectorWriter(tmp_path / "a.shp", UTM, schema_fields=FIELDS, overwrite=True, inputs=nested)


def test_a_shapefile_replaced_and_killed_midway_is_never_a_mixed_set(
    tmp_path, monkeypatch, journal
):
    """No rename moves a shapefile's files together. Killed after the new sidecars but before
    the new ``.shp``, the older ``.shp`` is already gone: a reader gets an error, never the old
    geometries with the new attributes. Every new file is flushed to disk before the older
    shapefile is touched, and the folder after the renames."""
    import os

    path = tmp_path / "panels.shp"
    write(path, panels(1))
    events, real_replace = journal, os.replace  # (the journal's: it records the renames)

    def killed_before_the_shp(src, dst):
        if Path(dst).suffix == ".shp":
            raise KeyboardInterrupt  # the kill
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_shp)
    with pytest.raises(KeyboardInterrupt):
        write(path, panels(3), overwrite=True)
    assert not path.exists() and (tmp_path / "panels.dbf").exists()
    with pytest.raises(Exception):  # noqa: B017 - GDAL's own error for a missing .shp
        fiona.open(path)
    first_rename = next(i for i, e in enumerate(events) if e[0] == "rename")
    flushed = [e[1] for e in events[:first_rename]]
    assert {Path(f).suffix for f in flushed} >= {".shp", ".dbf", ".shx", ".prj", ".cpg"}
    assert all(".partial-" in f for f in flushed)
    # The rerun writes a whole shapefile again, and syncs the folder after its renames.
    monkeypatch.setattr(os, "replace", real_replace)
    events.clear()
    write(path, panels(3), overwrite=True)
    assert ogrinfo(path)["count"] == 3
    assert events[-1] == ("fsync", str(tmp_path))


def test_a_shapefile_that_cannot_be_flushed_leaves_the_older_one_whole(tmp_path, monkeypatch):
    """A disk error while flushing the new files: a clear error naming where the results
    are, and the older shapefile untouched (nothing of it goes before the new files are safe)."""
    import os

    path = tmp_path / "panels.shp"
    write(path, panels(1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(VectorWriteError, match=r"Input/output error; the finished results are in"):
        write(path, panels(3), overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert ogrinfo(path)["count"] == 1


def test_what_a_killed_job_left_is_cleared_once_stale(tmp_path):
    """A killed detect leaves its hidden partial output (a whole run's GeoPackage, or a
    shapefile's set). The next write of that name clears it once its process is gone and it
    has not been written for an hour; a running job's, and another name's, stay."""
    import os
    import time

    from solardesk.core.files import STALE_AFTER_S

    old = time.time() - 2 * STALE_AFTER_S
    dead, live = 999999999, os.getppid()
    left = [tmp_path / f".panels.partial-{dead}-0123abcd{e}" for e in (".shp", ".dbf", ".shx")]
    kept = [
        tmp_path / f".panels.partial-{live}-4567abcd.gpkg",
        tmp_path / f".roofs.partial-{dead}-0123abcd.gpkg",
    ]
    for p in (*left, *kept):
        p.write_bytes(b"a killed run's features")
        os.utime(p, (old, old))
    write(tmp_path / "panels.shp", panels(2))
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)
    assert ogrinfo(tmp_path / "panels.shp")["count"] == 2


def test_a_shapefile_is_its_sidecars_too(tmp_path):
    """Another dataset's ``.prj`` or ``.dbf`` of the output's name (a JPEG's own ``.prj``, a
    shapefile without its ``.shp``) is an existing output: refused without --overwrite. An
    upper-case ``.SHP`` is written as GDAL writes it, ``.shp``, not as a second file."""
    path = tmp_path / "scene.shp"
    (tmp_path / "scene.prj").write_text("the JPEG's CRS")
    with pytest.raises(VectorWriteError, match=r"scene\.prj already exists; pass --overwrite"):
        VectorWriter(path, UTM, schema_fields=FIELDS)
    assert (tmp_path / "scene.prj").read_text() == "the JPEG's CRS"
    upper = VectorWriter(tmp_path / "Q.SHP", UTM, schema_fields=FIELDS)
    assert upper.path == tmp_path / "Q.shp"
    write(tmp_path / "Q.shp", panels(1))
    with pytest.raises(VectorWriteError, match="already exists"):
        VectorWriter(tmp_path / "Q.SHP", UTM, schema_fields=FIELDS)
    with VectorWriter(tmp_path / "Q.SHP", UTM, schema_fields=FIELDS, overwrite=True) as w:
        w.write(panels(2))
    assert ogrinfo(tmp_path / "Q.shp")["count"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.stem == "Q")[0] == "Q.cpg"


def test_an_input_of_the_job_is_never_replaced(tmp_path):
    """Even with overwrite: the job's raster, what georeferences it, its AOI, its cache."""
    from solardesk.core.vector import job_inputs

    raster, aoi, cache = tmp_path / "ortho.gpkg", tmp_path / "aoi.geojson", tmp_path / "c.gpkg"
    for p in (raster, aoi, cache, tmp_path / "photo.jpg", tmp_path / "photo.prj"):
        p.write_text("input")
    inputs = job_inputs([raster, tmp_path / "photo.jpg"], [aoi], cache)
    for out in (raster, aoi, cache, tmp_path / "photo.shp"):  # (photo.shp: its .prj)
        with pytest.raises(VectorWriteError, match="is an input of this job"):
            VectorWriter(out, UTM, schema_fields=FIELDS, overwrite=True, inputs=inputs)
    (tmp_path / "link.gpkg").symlink_to(raster)
    with pytest.raises(VectorWriteError, match="is an input of this job"):
        VectorWriter(
            tmp_path / "link.gpkg", UTM, schema_fields=FIELDS, overwrite=True, inputs=inputs
        )
    assert all(p.read_text() == "input" for p in (raster, aoi, cache, tmp_path / "photo.prj"))
    VectorWriter(tmp_path / "panels.gpkg", UTM, schema_fields=FIELDS, inputs=inputs)  # fine
    # a GeoTIFF has no .prj: a shapefile named after it may write one, and replace it later
    (tmp_path / "scene.tif").write_text("input")
    named = job_inputs([tmp_path / "scene.tif"])
    write(tmp_path / "scene.shp", panels(1), inputs=named)
    assert (tmp_path / "scene.prj").is_file()
    again = job_inputs([tmp_path / "scene.tif"])
    write(tmp_path / "scene.shp", panels(2), inputs=again, overwrite=True)
    assert ogrinfo(tmp_path / "scene.shp")["count"] == 2


def test_a_missing_output_folder_is_named(tmp_path):
    folder = tmp_path / "no" / "such"
    with pytest.raises(VectorWriteError, match="create it") as err:
        VectorWriter(folder / "panels.gpkg", UTM, schema_fields=FIELDS)
    assert str(folder) in str(err.value)
    assert isinstance(err.value, OSError)


@pytest.mark.parametrize("name", ["panels.kml", "panels"])
def test_an_unsupported_extension_lists_the_supported_ones(tmp_path, name):
    with pytest.raises(VectorWriteError) as err:
        VectorWriter(tmp_path / name, UTM, schema_fields=FIELDS)
    for ext in (".gpkg", ".shp", ".geojson"):
        assert ext in str(err.value)


def test_multipolygons_need_a_multipolygon_layer(tmp_path):
    two = shapely.MultiPolygon([box(X0, Y0, X0 + 1, Y0 + 1), box(X0 + 3, Y0, X0 + 4, Y0 + 1)])
    with (
        pytest.raises(VectorWriteError, match="MultiPolygon"),
        VectorWriter(tmp_path / "a.gpkg", UTM, schema_fields={}) as w,
    ):
        w.write([(two, {})])
    assert not list(tmp_path.iterdir())
    path = tmp_path / "b.gpkg"
    with VectorWriter(path, UTM, schema_fields={}, geometry_type="MultiPolygon") as w:
        w.write([(two, {}), (box(X0, Y0, X0 + 1, Y0 + 1), {})])
    info = ogrinfo(path)
    assert (info["count"], info["geometry"]) == (2, "Multi Polygon")


# --- reading --------------------------------------------------------------------------------------
def test_read_geometries_reprojects_and_assumes_wgs84_for_plain_geojson(tmp_path):
    path = tmp_path / "aoi.geojson"
    ring = [[11.3, 46.5], [11.301, 46.5], [11.301, 46.501], [11.3, 46.501], [11.3, 46.5]]
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    (geom,), crs = read_geometries(path)
    assert crs.to_epsg() == 4326
    assert geom.bounds == pytest.approx((11.3, 46.5, 11.301, 46.501))
    (utm,), crs = read_geometries(path, UTM)
    assert crs.to_epsg() == 32632
    assert 600000 < utm.centroid.x < 700000 and 5_100_000 < utm.centroid.y < 5_200_000
    assert utm.area == pytest.approx(77 * 111, rel=0.02)  # 0.001° × 0.001° at 46.5°N, m²


def test_read_geometries_errors_are_clear(tmp_path):
    with pytest.raises(AOIError, match="no such file"):
        read_geometries(tmp_path / "missing.gpkg")

    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("this is not json")
    with pytest.raises(AOIError, match=r"cannot be read.*Give a polygon file") as ei:
        read_geometries(garbage)
    assert "flags=" not in str(ei.value)  # GDAL's internals stay out of the message

    zero = tmp_path / "zero.geojson"
    zero.touch()
    with pytest.raises(AOIError, match=r"zero\.geojson: the file is empty.*Give a polygon"):
        read_geometries(zero)

    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(AOIError, match="no geometry"):
        read_geometries(empty)

    shp = tmp_path / "noprj.shp"
    write(shp, panels(1))
    (tmp_path / "noprj.prj").unlink()
    with pytest.raises(SolarDeskError, match=r"\.prj"):
        read_geometries(shp)


def test_an_output_on_a_read_only_file_system_is_refused_before_any_work(read_only_mount) -> None:
    from solardesk.core.vector import PANEL_FIELDS, VectorWriter
    from solardesk.errors import VectorWriteError

    where, remount_ro = read_only_mount
    remount_ro()
    with pytest.raises(VectorWriteError, match="is not writable; choose another output path"):
        VectorWriter(where / "panels.gpkg", "EPSG:4326", schema_fields=PANEL_FIELDS)

"""Vector files in and out: GeoPackage, Shapefile and GeoJSON through fiona.

Writing (:class:`VectorWriter`): the format follows the extension.

* ``.gpkg``: GeoPackage, the default format of SolarDesk; layer ``panels`` unless told
  otherwise; the CRS as given.
* ``.shp``: ESRI Shapefile with ``.shx``, ``.dbf``, ``.prj`` (the CRS) and ``.cpg`` (``UTF-8``).
  DBF field names hold at most 10 bytes; longer names are shortened by
  :func:`shapefile_field_names` (deterministic, collision-free, documented there) and the
  writer's :attr:`VectorWriter.field_map` tells which name each field got. Booleans are
  written as integers 0/1 and strings as ``String(254)`` (the DBF maximum), since DBF has no
  boolean type and fiona's default string width (80) would cut long paths.
* ``.geojson`` / ``.json``: RFC 7946: coordinates reprojected to WGS84 longitude/latitude,
  exteriors counter-clockwise (right-hand rule), no ``crs`` member, 7 decimals (about 1 cm).
  An empty GeoJSON file cannot carry a schema: it is a valid, empty ``FeatureCollection``.

Crash safety: features go into a hidden temporary file in the output folder,
``.<name>.partial-<pid>-<random><ext>`` (plus sidecars for a shapefile), and are renamed onto
the final path only when the writer closes without an error. An interrupted or failed job
therefore never leaves a truncated file at the final path (an existing output stays intact
until the very end); an exception inside the ``with`` block deletes the temporary files, and
a killed process leaves only ``.*.partial-*`` files that are safe to delete. Resuming a
large job is the mask cache's business: finished tiles are cached, so a rerun re-vectorises
them quickly and rewrites the file in one pass. (Writing in place and appending on resume
would need to know which features a dead process had flushed; a rename is simpler and
correct.) The rename is atomic for the single-file formats; for a shapefile the sidecars are
renamed first and the ``.shp`` last, so a ``.shp`` at the final path is always complete.

Reading (:func:`read_geometries`): any of the three formats, reprojected on request; used for
areas of interest and ground-truth polygons.

fiona carries its own GDAL (3.9 in fiona 1.10.1) and rasterio another (3.10 in rasterio
1.4.4). Both load in one process, but no GDAL object crosses between them here: geometries
are shapely objects or GeoJSON-like dicts and CRSs travel as WKT.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from solardesk.core.files import (
    SameFiles,
    flush_folder,
    flush_to_disk,
    remove_stale_temporaries,
)
from solardesk.core.geometry import as_pyproj_crs, orient_ccw, reproject_geometry
from solardesk.errors import AOIError, VectorWriteError

__all__ = [
    "PANEL_FIELDS",
    "SUPPORTED_EXTENSIONS",
    "VectorWriter",
    "read_geometries",
    "shapefile_field_names",
    "vector_format",
]

#: Extension (lower case) → OGR driver name.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
}

#: The attributes of a detected panel, in the order SolarDesk writes them.
PANEL_FIELDS: dict[str, type] = {
    "score": float,
    "area_m2": float,
    "perimeter_m": float,
    "azimuth_deg": float,
    "centroid_lon": float,
    "centroid_lat": float,
    "source_raster": str,
    "tile_id": str,
    "model_name": str,
    "model_version": str,
}

_SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml")
_DBF_NAME_BYTES = 10
_DBF_STRING_BYTES = 254


def vector_format(path: str | os.PathLike[str]) -> str:
    """The OGR driver for ``path``'s extension; :class:`VectorWriteError` if unsupported."""
    ext = Path(path).suffix.lower()
    try:
        return SUPPORTED_EXTENSIONS[ext]
    except KeyError:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise VectorWriteError(
            f"{path}: unsupported vector format {ext or '(no extension)'!r}; "
            f"use one of {supported} (.gpkg is the default)."
        ) from None


# --- shapefile field names ------------------------------------------------------------------
def _truncate_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def shapefile_field_names(names: Iterable[str]) -> dict[str, str]:
    """Map each field name to a DBF-safe name of at most 10 bytes, deterministically.

    Rules, applied in order, comparing names case-insensitively (as DBF readers do):

    1. A name of at most 10 bytes is kept as it is. These are reserved first, so a short name
       never changes because of a long one.
    2. A longer name, in the order given, keeps its last ``_``-separated word whole and cuts
       the words before it to fit: ``centroid_lon`` → ``centro_lon``, ``perimeter_m`` →
       ``perimete_m``, ``azimuth_deg`` → ``azimut_deg``. When that would leave fewer than 3
       characters before the last word (or there is no ``_``), the name is simply cut to 10
       bytes: ``model_version`` → ``model_vers``.
    3. If the result is already taken, its tail is replaced by the smallest number that makes
       it unique: ``centroid_lon`` and ``centroid_lonx`` → ``centro_lon``, ``centro_lo1``.

    The same names in the same order always give the same map.
    """
    names = list(names)
    taken: set[str] = set()
    result: dict[str, str] = {}
    for name in names:
        if _nbytes(name) <= _DBF_NAME_BYTES:
            if name.lower() in taken:
                raise VectorWriteError(f"Field names {name!r} collide in a shapefile (case).")
            result[name] = name
            taken.add(name.lower())
    for name in names:
        if name in result:
            continue
        head, sep, last = name.rpartition("_")
        budget = _DBF_NAME_BYTES - _nbytes(last) - 1
        if sep and head and budget >= 3:
            short = _truncate_bytes(head, budget) + "_" + last
        else:
            short = _truncate_bytes(name, _DBF_NAME_BYTES)
        n = 0
        candidate = short
        while candidate.lower() in taken:
            n += 1
            suffix = str(n)
            candidate = _truncate_bytes(short, _DBF_NAME_BYTES - len(suffix)) + suffix
        result[name] = candidate
        taken.add(candidate.lower())
    return {name: result[name] for name in names}


# --- writing --------------------------------------------------------------------------------
def _fiona_type(kind: type | str, driver: str) -> str:
    if isinstance(kind, str):
        return kind
    if kind is bool:
        return "int32" if driver == "ESRI Shapefile" else "bool"
    if kind is int or (isinstance(kind, type) and issubclass(kind, np.integer)):
        return "int"
    if kind is float or (isinstance(kind, type) and issubclass(kind, np.floating)):
        return "float"
    if kind is str:
        return f"str:{_DBF_STRING_BYTES}" if driver == "ESRI Shapefile" else "str"
    raise TypeError(f"unsupported field type {kind!r}; use int, float, str or bool")


def _plain_value(value: Any, kind: type | str, driver: str) -> Any:
    """A property value as fiona can store it: Python scalars, no NaN, short DBF strings."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN is not JSON, and GPKG/DBF store it inconsistently.
    if kind is bool and driver == "ESRI Shapefile":
        return int(bool(value))
    if kind is str:
        text = str(value)
        if driver == "ESRI Shapefile":
            text = _truncate_bytes(text, _DBF_STRING_BYTES)
        return text
    return value


class VectorWriter:
    """Write polygons and their attributes to a GeoPackage, Shapefile or GeoJSON, in batches.

    ``path``'s extension picks the format (see the module docstring); ``crs`` is the CRS of the
    geometries passed to :meth:`write` (a rasterio or pyproj ``CRS``, ``"EPSG:xxxx"``, WKT;
    ``None`` only for pixel-coordinate results in GeoPackage/Shapefile); ``schema_fields``
    maps attribute names to ``int``, ``float``, ``str`` or ``bool`` (or a fiona type string
    such as ``"str:40"``); ``layer`` names the GeoPackage layer and the GeoJSON ``name``
    member (a shapefile's layer is its file name). ``geometry_type`` is ``"Polygon"`` or
    ``"MultiPolygon"``; polygons are promoted in a MultiPolygon layer.

    Use as a context manager::

        with VectorWriter("out/panels.gpkg", raster.crs, schema_fields=PANEL_FIELDS) as w:
            for tile in tiles:
                w.write([(poly, {"score": 0.9, ...}), ...])

    Each :meth:`write` appends and flushes one batch, so memory does not grow with the
    number of features. The file appears at ``path`` only when the block ends without an
    error (temporary file + rename); with no features at all a valid empty layer is written.

    Raises :class:`VectorWriteError` for an unsupported extension, a missing output folder,
    or an existing output when ``overwrite`` is false — checked when the writer is created
    (before any work is done) and again before the final rename.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        crs: Any,
        *,
        schema_fields: Mapping[str, type | str],
        overwrite: bool = False,
        layer: str = "panels",
        geometry_type: str = "Polygon",
        inputs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.path = Path(path)
        self.driver = vector_format(self.path)
        if self.driver == "ESRI Shapefile" and self.path.suffix != ".shp":
            # GDAL writes a shapefile's main file as .shp whatever the case asked: name it so,
            # else the .SHP asked for and the .shp written would be two files.
            self.path = self.path.with_suffix(".shp")
        self.inputs = [Path(p) for p in inputs]
        self.crs = crs
        self.overwrite = overwrite
        self.layer = layer
        if geometry_type not in ("Polygon", "MultiPolygon"):
            raise ValueError(
                f"geometry_type must be 'Polygon' or 'MultiPolygon', not {geometry_type!r}"
            )
        self.geometry_type = geometry_type
        self.schema_fields = dict(schema_fields)
        if self.driver == "ESRI Shapefile":
            self.field_map = shapefile_field_names(self.schema_fields)
        else:
            self.field_map = {name: name for name in self.schema_fields}
        self.count = 0
        self._collection: Any = None
        self._tmp_path: Path | None = None
        self._closed = False
        if self.driver == "GeoJSON" and crs is None:
            raise VectorWriteError(
                f"{self.path}: GeoJSON needs georeferenced geometries (it is always WGS84 "
                "longitude/latitude); write pixel-coordinate results to .gpkg or .shp."
            )
        self._check_target()

    # -- checks --
    def _check_target(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise VectorWriteError(
                f"{self.path}: the output folder {folder} does not exist; create it first "
                f"(mkdir -p {folder})."
            )
        if self.path.is_dir():
            raise VectorWriteError(
                f"{self.path} is a folder; give a file name such as panels.gpkg."
            )
        if not os.access(folder, os.W_OK):  # also a read-only file system, even for root
            raise VectorWriteError(
                f"{self.path}: the output folder {folder} is not writable; choose another "
                "output path (--out)."
            )
        taken = SameFiles(self.inputs)
        for target in self.files():
            source = taken.holds(target)
            if source is not None:
                raise VectorWriteError(
                    f"{target} is an input of this job ({source}); writing the output "
                    "there would destroy it. Choose another output path (--out)."
                )
        existing = [p for p in self.files() if p.exists()]
        if existing and not self.overwrite:
            raise VectorWriteError(
                f"{existing[0]} already exists; pass --overwrite (overwrite=True) to replace "
                f"{'it' if existing[0] == self.path else 'the shapefile ' + str(self.path)}, "
                "or choose another name."
            )

    def files(self) -> list[Path]:
        """The files the output is: the path, and a shapefile's sidecars beside it (a
        ``.dbf`` or ``.prj`` of that name belongs to whatever shapefile is there)."""
        if self.driver != "ESRI Shapefile":
            return [self.path]
        return [self.path, *(self.path.with_name(self.path.stem + e) for e in _SHAPEFILE_SIDECARS)]

    # -- opening --
    def __enter__(self) -> VectorWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temporary file (done by ``with``; call it yourself otherwise)."""
        import fiona
        from fiona.crs import CRS as FionaCRS

        if self._collection is not None:
            return
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._tmp_path = self.path.with_name(f".{self.path.stem}.partial-{token}{self.path.suffix}")
        # What a killed job left (a GeoPackage of a whole run, a shapefile's set of files).
        remove_stale_temporaries(
            self.path, pattern=rf"\.{re.escape(self.path.stem)}\.partial-(\d+)-[0-9a-f]{{8}}\..*"
        )
        out_crs = "EPSG:4326" if self.driver == "GeoJSON" else self.crs
        schema = {
            "geometry": self.geometry_type,
            "properties": {
                self.field_map[name]: _fiona_type(kind, self.driver)
                for name, kind in self.schema_fields.items()
            },
        }
        kwargs: dict[str, Any] = {}
        if self.driver == "GPKG":
            kwargs["layer"] = self.layer
        elif self.driver == "GeoJSON":
            kwargs.update(layer=self.layer, RFC7946="YES", COORDINATE_PRECISION=7)
        elif self.driver == "ESRI Shapefile":
            kwargs["encoding"] = "utf-8"  # also writes the .cpg
        if out_crs is not None:
            kwargs["crs"] = FionaCRS.from_wkt(_pyproj_wkt(out_crs))
        try:
            self._collection = fiona.open(
                self._tmp_path, "w", driver=self.driver, schema=schema, **kwargs
            )
        except Exception as e:
            self._remove_tmp()
            raise VectorWriteError(f"{self.path}: cannot create the output file: {e}") from e

    # -- writing --
    def _geometry(self, geom: Any) -> dict[str, Any] | None:
        if geom is None:
            return None
        if not isinstance(geom, BaseGeometry):
            geom = shape(geom)
        if geom.is_empty:
            return None
        if self.driver == "GeoJSON":
            geom = orient_ccw(reproject_geometry(geom, self.crs, "EPSG:4326"))
        if self.geometry_type == "MultiPolygon" and isinstance(geom, Polygon):
            geom = MultiPolygon([geom])
        elif self.geometry_type == "Polygon" and not isinstance(geom, Polygon):
            raise VectorWriteError(
                f"{self.path}: a {geom.geom_type} cannot go into a Polygon layer; create the "
                "writer with geometry_type='MultiPolygon'."
            )
        return mapping(geom)

    def write(self, features: Iterable[tuple[Any, Mapping[str, Any]]]) -> int:
        """Append ``(geometry, properties)`` pairs and flush them to disk; returns how many.

        Geometries are shapely objects or GeoJSON-like dicts in the writer's CRS (``None``
        writes a feature without geometry). Properties are keyed by the schema's (long)
        names; missing ones are written as null, unknown ones raise ``ValueError``.
        """
        from fiona.model import Feature, Geometry, Properties

        if self._closed:
            raise VectorWriteError(f"{self.path}: the writer is already closed.")
        if self._collection is None:
            self.open()
        records = []
        for geom, props in features:
            unknown = set(props) - self.schema_fields.keys()
            if unknown:
                raise ValueError(
                    f"properties {sorted(unknown)} are not in the schema {list(self.schema_fields)}"
                )
            values = {
                self.field_map[name]: _plain_value(props.get(name), kind, self.driver)
                for name, kind in self.schema_fields.items()
            }
            g = self._geometry(geom)
            records.append(
                Feature(
                    geometry=Geometry.from_dict(g) if g is not None else None,
                    properties=Properties.from_dict(values),
                )
            )
        if not records:
            return 0
        try:
            self._collection.writerecords(records)
            self._collection.flush()
        except Exception as e:
            raise VectorWriteError(f"{self.path}: writing features failed: {e}") from e
        self.count += len(records)
        return len(records)

    # -- closing --
    def _tmp_files(self) -> list[Path]:
        """The temporary file and, for a shapefile, its sidecars."""
        if self._tmp_path is None:
            return []
        folder, stem = self._tmp_path.parent, self._tmp_path.stem
        return [p for p in folder.iterdir() if p.name.startswith(stem + ".")]

    def _remove_tmp(self) -> None:
        for p in self._tmp_files():
            p.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish the file and move it to its final path; returns that path."""
        if self._closed:
            return self.path
        if self._collection is None:
            self.open()  # no write at all: an empty layer
        try:
            self._collection.close()
        except Exception as e:
            self._remove_tmp()
            raise VectorWriteError(f"{self.path}: finishing the file failed: {e}") from e
        finally:
            self._closed = True
        if any(p.exists() for p in self.files()) and not self.overwrite:
            kept = self._tmp_path
            raise VectorWriteError(
                f"{self.path} appeared while the job ran; the results are in {kept}. Pass "
                "--overwrite to replace an existing file."
            )
        self._move_into_place()
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file; the final path is left as it was."""
        if self._collection is not None and not self._closed:
            # The error that stopped the job matters, not one from closing after it.
            with contextlib.suppress(Exception):
                self._collection.close()
        self._closed = True
        self._remove_tmp()

    def _move_into_place(self) -> None:
        """Rename the finished temporary file(s) to the output's name, flushed to disk first.

        A shapefile is several files, and no rename moves them together. So every new file
        is flushed before anything of the older shapefile goes; then the older ``.shp`` goes
        first and the new ``.shp`` comes last: a kill in between leaves sidecars without a
        ``.shp``, which GDAL refuses to open, never an older ``.shp`` read with the newer
        ``.dbf`` (a wrong attribute per feature, silently).
        """
        assert self._tmp_path is not None
        tmp_stem = self._tmp_path.stem
        sidecars = [p for p in self._tmp_files() if p != self._tmp_path]
        try:
            for p in (*sidecars, self._tmp_path):
                flush_to_disk(p)
            if self.driver == "ESRI Shapefile":
                self.path.unlink(missing_ok=True)  # only with overwrite: checked at the start
            new_names = set()
            for p in sidecars:
                final = self.path.with_name(self.path.stem + p.name[len(tmp_stem) :])
                os.replace(p, final)
                new_names.add(final.name)
            if self.driver == "ESRI Shapefile":
                # Sidecars of an older shapefile (a stale spatial index, say) must not survive.
                for ext in _SHAPEFILE_SIDECARS:
                    old = self.path.with_name(self.path.stem + ext)
                    if old.name not in new_names and old.exists():
                        old.unlink()
            os.replace(self._tmp_path, self.path)
        except OSError as e:
            left = [p for p in self._tmp_files() if p.exists()]
            where = f"; the finished results are in {left[0]}" if left else ""
            raise VectorWriteError(
                f"{self.path}: moving the finished file into place failed: {e}{where}. Free "
                "disk space or check the folder, and run again."
            ) from e
        flush_folder(self.path.parent)


#: Files beside a raster that belong to it: its georeferencing (world files, a .prj beside a
#: JPEG or PNG) and GDAL's auxiliary files.
_RASTER_COMPANION_SUFFIXES = (".prj", ".wld", ".tfw", ".tifw", ".jgw", ".jpgw", ".pgw", ".pngw")


def job_inputs(
    rasters: Iterable[str | os.PathLike[str]] = (),
    others: Iterable[str | os.PathLike[str] | None] = (),
    cache: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """The files a job reads, which its output must never replace: each raster (and, for a
    VRT, each of its sources) with the files that georeference it, the ``others`` (an AOI),
    and a cache with its -wal, -shm and -journal files."""
    files: list[Path] = []
    for r in _with_sources(map(Path, rasters)):
        companions = [Path(f"{r}.aux.xml"), Path(f"{r}.ovr")]
        companions += [r.with_suffix(e) for e in _RASTER_COMPANION_SUFFIXES]
        # Only those there (`detect scene.tif --out scene.shp` may write scene.prj), and a
        # .prj beside a shapefile of that name is the shapefile's (an earlier run's output).
        shapefile = r.with_suffix(".shp").exists()
        files += [r]
        files += [c for c in companions if c.exists() and not (c.suffix == ".prj" and shapefile)]
    files += [Path(o) for o in others if o is not None]
    if cache is not None:
        files += [Path(f"{cache}{s}") for s in ("", "-wal", "-shm", "-journal")]
    return files


def _with_sources(rasters: Iterable[Path]) -> list[Path]:
    """The rasters and the files GDAL reads for each: a VRT's sources (whose own world files
    and ``.prj`` must survive as much as the VRT), and theirs in turn (a VRT of VRTs), a
    GeoTIFF's external overviews. GDAL's virtual paths (``/vsizip/...``) are not opened."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    out: list[Path] = []
    seen: set[Path] = set()
    todo = [(r, True) for r in rasters]
    while todo:
        r, given = todo.pop(0)
        key = Path(os.path.abspath(r))
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
        if not given and r.suffix.lower() != ".vrt":
            continue  # a source: only a VRT lists further rasters (companions: job_inputs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(r) as ds:
                    listed = [Path(f) for f in ds.files]
        except Exception:  # not readable here: its own name is protected all the same
            continue
        todo += [(f, False) for f in listed if not str(f).startswith("/vsi")]
    return out


def _pyproj_wkt(crs: Any) -> str:
    return as_pyproj_crs(crs).to_wkt()


def _gdal_reason(e: BaseException) -> str:
    """GDAL's message without its internal detail (open flags), on one line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"\s*\(flags=\d+\)", "", text)[:200]


# --- reading --------------------------------------------------------------------------------
def read_geometries(
    path: str | os.PathLike[str], dst_crs: Any = None, *, layer: str | int | None = None
) -> tuple[list[BaseGeometry], CRS]:
    """The geometries of a GeoJSON, GeoPackage or Shapefile, and their CRS.

    With ``dst_crs`` (rasterio/pyproj ``CRS``, ``"EPSG:xxxx"``, WKT) the geometries are
    reprojected to it and it is the CRS returned; otherwise the file's CRS is returned (as a
    rasterio ``CRS``). Geometries are 2-D (Z dropped), invalid ones are repaired with
    ``shapely.make_valid`` and features without geometry are skipped. A GeoJSON file without
    a ``crs`` member is WGS84 longitude/latitude (RFC 7946). ``layer`` (name or index) is
    required only for a file with several layers.

    Raises :class:`AOIError` for a missing or unreadable file, an unknown or ambiguous layer,
    a file with no geometry, and a non-GeoJSON file without a CRS (e.g. a shapefile whose
    ``.prj`` is missing).
    """
    import fiona
    from fiona.errors import FionaError

    p = Path(path)
    remedy = (
        "Give a polygon file in one of these formats (a Shapefile with its .shx, .dbf and "
        ".prj beside it), e.g. one saved from QGIS."
    )
    if not p.exists():
        raise AOIError(f"{p}: no such file. Check the path.")
    if p.is_file() and p.stat().st_size == 0:
        raise AOIError(f"{p}: the file is empty (0 bytes). {remedy}")
    try:
        layers = fiona.listlayers(p)
    except (FionaError, OSError) as e:
        raise AOIError(
            f"{p}: cannot be read as a vector file (GeoJSON, GeoPackage, Shapefile; the reader "
            f"said: {_gdal_reason(e)}). {remedy}"
        ) from e
    if layer is None and len(layers) > 1:
        raise AOIError(f"{p} has several layers ({', '.join(layers)}); say which one to use.")
    if layer is not None and not isinstance(layer, int) and layer not in layers:
        raise AOIError(f"{p} has no layer {layer!r}; its layers are: {', '.join(layers)}.")
    try:
        with fiona.open(p, layer=layer) as src:
            driver = src.driver
            wkt = src.crs.to_wkt() if src.crs else ""
            geoms = []
            for feature in src:
                if feature.geometry is None:
                    continue
                geom = shapely.force_2d(shape(feature.geometry))
                if geom.is_empty:
                    continue
                if not geom.is_valid:
                    geom = shapely.make_valid(geom)
                geoms.append(geom)
    except (FionaError, OSError, ValueError) as e:
        raise AOIError(
            f"{p}: cannot be read as a vector file (the reader said: {_gdal_reason(e)}). {remedy}"
        ) from e

    if not geoms:
        raise AOIError(f"{p}: holds no geometry.")
    if wkt:
        src_crs = CRS.from_wkt(wkt)
    elif driver == "GeoJSON":
        src_crs = CRS.from_epsg(4326)  # RFC 7946
    else:
        raise AOIError(
            f"{p}: has no CRS (for a shapefile, the .prj file is missing); assign one in a GIS "
            "or save it as GeoJSON in WGS84."
        )
    if dst_crs is None:
        return geoms, src_crs
    out = [reproject_geometry(g, src_crs, dst_crs) for g in geoms]
    out_crs = dst_crs if isinstance(dst_crs, CRS) else CRS.from_user_input(_pyproj_wkt(dst_crs))
    return out, out_crs

"""Open georeferenced imagery, describe it, fingerprint it and read normalised RGB windows.

Everything here reads through rasterio windows: no function loads a whole scene. Any input
(uint8/uint16/int16/float, 1, 3 or 4+ bands, with or without nodata) is normalised to 8-bit
RGB for processing by a per-band percentile stretch that is estimated once per raster from
overviews or a sample of windows, so every tile of one raster sees the same stretch.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
import rasterio.crs
import rasterio.enums
import rasterio.env
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning as _RioNotGeoreferencedWarning
from rasterio.errors import RasterioError
from rasterio.windows import Window

from solardesk.errors import (
    NotGeoreferencedError,
    NotGeoreferencedWarning,
    RasterBandError,
    RasterOpenError,
)

#: Samples taken for the fingerprint: a grid of this many windows per side.
_FINGERPRINT_GRID = 3
_FINGERPRINT_WINDOW = 64
#: Windows sampled to estimate the stretch when the raster has no overviews.
_STRETCH_GRID = 5
_STRETCH_WINDOW = 256

#: GDAL's block cache defaults to 5 % of RAM and counts as the process's memory: a tile loop
#: over a large raster would grow to that size. SolarDesk reads each block about once, so a
#: small cache loses nothing. A user's own GDAL_CACHEMAX wins.
GDAL_CACHE_MB = 16


def limit_gdal_cache(mb: int = GDAL_CACHE_MB) -> None:
    """Cap GDAL's block cache at ``mb`` megabytes unless GDAL_CACHEMAX is set by the user."""
    import os

    if "GDAL_CACHEMAX" not in os.environ:
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", mb * 1024 * 1024)


_WORLD_FILE_SUFFIXES = {
    ".jpg": (".jgw", ".jpgw", ".wld"),
    ".jpeg": (".jgw", ".jpegw", ".wld"),
    ".png": (".pgw", ".pngw", ".wld"),
    ".tif": (".tfw", ".tifw", ".wld"),
    ".tiff": (".tfw", ".tiffw", ".wld"),
}


#: The files a folder named as a raster contributes (case aside): images GDAL reads with their
#: georeferencing inside or beside them.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jpg", ".jpeg", ".png", ".jp2", ".img")

#: Files that only describe an image beside them: never a raster of their own, though GDAL
#: opens some (an ``.ovr`` or ``.msk`` is a TIFF of the image's overviews or mask).
_SIDECARS = {
    ".jgw": "world file",
    ".jpgw": "world file",
    ".jpegw": "world file",
    ".pgw": "world file",
    ".pngw": "world file",
    ".tfw": "world file",
    ".tifw": "world file",
    ".tiffw": "world file",
    ".wld": "world file",
    ".prj": "projection file",
    ".aux.xml": "GDAL metadata file",
    ".ovr": "overview file",
    ".msk": "mask file",
}


def _sidecar_kind(p: Path) -> tuple[str, list[Path]] | None:
    """``(what it is, the images it may belong to)`` when ``p`` is a sidecar file, else None.

    A world or projection file belongs to the image of its stem (``a.jgw``: ``a.jpg``), an
    ``.aux.xml``, ``.ovr`` or ``.msk`` to the file it extends (``a.jpg.aux.xml``: ``a.jpg``)."""
    name = p.name.lower()
    if name.endswith(".aux.xml"):
        return _SIDECARS[".aux.xml"], [p.with_name(p.name[: -len(".aux.xml")])]
    kind = _SIDECARS.get(p.suffix.lower())
    if kind is None:
        return None
    if p.suffix.lower() in (".ovr", ".msk"):
        return kind, [p.with_suffix("")]
    return kind, [
        p.with_suffix(s) for s in RASTER_SUFFIXES + tuple(x.upper() for x in RASTER_SUFFIXES)
    ]


def _sidecar_error(p: Path, kind: str, owners: list[Path]) -> RasterOpenError:
    there = [o for o in owners if o.is_file()]
    image = f": name {there[0]}" if there else " (which is not there): name the image itself"
    return RasterOpenError(
        f"{p}: is a {kind}, which describes an image beside it, not an image{image}, or the "
        "folder that holds the images."
    )


def expand_rasters(paths: Sequence[str | Path]) -> list[Path]:
    """The raster files that ``paths`` (files or folders, as a user names them) stand for.

    - A folder stands for the images directly inside it (:data:`RASTER_SUFFIXES`, hidden files
      aside), by name. Where one of them is a VRT, the folder's files it mosaics are read
      through it only, not a second time on their own. A JPEG or PNG in it without a world
      file or ``.aux.xml`` (a mask, a preview) is left out, with a warning.
    - A sidecar of an image also named (``images/*`` names ``a.jgw`` and ``a.jpg.aux.xml``
      beside ``a.jpg``) is left out; one named without its image is a
      :class:`RasterOpenError` that names the image to give instead.
    - A pattern (``tiles/**/*.tif``; ``**`` is any depth of folders, hidden ones aside) that
      is not itself a file stands for the image files it matches, by name, under the folder
      rules above (for a shell that does not expand patterns, and for nested folders). One
      that matches no image is a :class:`RasterOpenError`.
    - A file named twice counts once. Anything else is passed on as it is: opening it reports
      what is wrong with it.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += _folder_rasters(p)
        elif not p.exists() and glob.has_magic(str(raw)):
            out += _pattern_rasters(str(raw))
        else:
            out.append(p)
    named = {_same(p) for p in out}
    kept: list[Path] = []
    seen: set[Path] = set()
    for p in out:
        side = _sidecar_kind(p)
        if side is not None:
            kind, owners = side
            if any(_same(o) in named for o in owners):
                continue
            raise _sidecar_error(p, kind, owners)
        if _same(p) not in seen:
            seen.add(_same(p))
            kept.append(p)
    return kept


def _same(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:  # (a path that cannot be resolved is compared as given)
        return p.absolute()


_NEEDS_SIDECAR = (".jpg", ".jpeg", ".png")


def _georeferenced_beside(image: Path, near: set[str]) -> bool:
    """Whether a world file or an ``.aux.xml`` is among ``near`` (the lower-case names of the
    files beside ``image``)."""
    worlds = (*_WORLD_FILE_SUFFIXES.get(image.suffix.lower(), ()), ".wld")
    names = {image.with_suffix(w).name.lower() for w in worlds}
    names.add(f"{image.name}.aux.xml".lower())
    return bool(names & near)


def _is_image_file(f: Path) -> bool:
    return f.is_file() and not f.name.startswith(".") and f.suffix.lower() in RASTER_SUFFIXES


def _folder_rasters(folder: Path) -> list[Path]:
    listing = list(folder.iterdir())
    found = sorted(f for f in listing if _is_image_file(f))
    if not found:
        deeper = _an_image_below(folder)
        hint = (
            f" Its subfolders hold images ({deeper}): name them, or a pattern such as "
            f"'{folder / '**' / ('*' + deeper.suffix)}' (quoted) for all of them."
            if deeper is not None
            else " Name the raster files, or a folder that holds them."
        )
        raise RasterOpenError(
            f"{folder}: a folder with no image in it (SolarDesk looks for "
            f"{', '.join(RASTER_SUFFIXES)} files directly inside it).{hint}"
        )
    return _georeferenced_images(folder, found, {f.name.lower() for f in listing})


def _an_image_below(folder: Path, most_entries: int = 10_000) -> Path | None:
    """An image in a subfolder of ``folder`` (hidden ones aside), looking at no more than
    ``most_entries`` names: enough for a hint, bounded on a huge tree."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if Path(root) != folder and _is_image_file(Path(root) / name):
                return Path(root) / name
        seen += len(files) + len(dirs)
        if seen > most_entries:
            return None
    return None


def _pattern_rasters(pattern: str) -> list[Path]:
    matched = sorted({Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True)})
    images = [m for m in matched if _is_image_file(m)]
    if not images:
        raise RasterOpenError(
            f"{pattern}: no image matches this pattern ({len(matched)} "
            f"file{'s' * (len(matched) != 1)} or folder{'s' * (len(matched) != 1)} did; "
            f"SolarDesk reads {', '.join(RASTER_SUFFIXES)} files, and `**` matches folders at "
            "any depth). Check the pattern, and quote it so that the shell passes it on."
        )
    by_folder: dict[Path, list[Path]] = {}
    for m in images:
        by_folder.setdefault(m.parent, []).append(m)
    out: list[Path] = []
    for folder, found in by_folder.items():
        names = {n.lower() for n in os.listdir(folder)}
        out += _georeferenced_images(folder, found, names, raise_if_none=False)
    if not out:
        raise RasterOpenError(
            f"{pattern}: none of the {len(images)} JPEG/PNG images it matches has a world "
            "file or .aux.xml beside it, so none is georeferenced. Add the world files (and "
            ".prj), or name the images themselves to work in pixel coordinates."
        )
    return out


def _georeferenced_images(
    folder: Path, found: list[Path], near: set[str], raise_if_none: bool = True
) -> list[Path]:
    """The images of ``found`` (in ``folder``, whose lower-case names are ``near``) a project
    reads: a JPEG or PNG without georeferencing beside it is left out with a warning, and the
    files a VRT among them mosaics are read through it only."""
    # A JPEG or PNG carries no georeferencing of its own: without a world file or GDAL's
    # .aux.xml beside it, it is a mask, a preview or a thumbnail, not a scene of the project.
    bare = [
        f
        for f in found
        if f.suffix.lower() in _NEEDS_SIDECAR and not _georeferenced_beside(f, near)
    ]
    if bare:
        left_out = set(bare)
        found = [f for f in found if f not in left_out]
        warnings.warn(
            f"{folder}: {len(bare)} image{'s' * (len(bare) != 1)} without a world file or "
            f".aux.xml left out ({', '.join(f.name for f in bare[:3])}{', …' * (len(bare) > 3)});"
            " name such a file itself to read it in pixel coordinates.",
            NotGeoreferencedWarning,
            stacklevel=4,
        )
        if not found and raise_if_none:
            raise RasterOpenError(
                f"{folder}: none of its {len(bare)} JPEG/PNG images has a world file or .aux.xml "
                "beside it, so none is georeferenced. Add the world files (and .prj), or name "
                "the images themselves to work in pixel coordinates."
            )
    mosaicked: set[Path] = set()
    for vrt in (f for f in found if f.suffix.lower() == ".vrt"):
        try:
            with rasterio.open(vrt) as ds:
                mosaicked |= {_same(Path(f)) for f in ds.files[1:]}
        except RasterioError:
            continue  # opening it later says what is wrong with it
    return [f for f in found if _same(f) not in mosaicked]


# --------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------
#: The filter :func:`_quiet_rasterio_georeferencing` installs, as ``warnings.filters`` holds it.
_QUIET_RIO = ("ignore", None, _RioNotGeoreferencedWarning, None, 0)


def _quiet_rasterio_georeferencing() -> None:
    """Ignore rasterio's own :class:`rasterio.errors.NotGeoreferencedWarning` process-wide.

    :func:`open_raster` says what is missing itself, naming the file and the remedy, so
    rasterio's bare "Dataset has no geotransform" adds nothing. It is ignored by a lasting
    filter, not inside ``warnings.catch_warnings`` around each open: that context manager
    swaps the process's filter list and is not thread-safe, and rasterio silences the same
    warning the same way while it traces masks (``rasterio.features.shapes``), so a thread
    opening a raster while another traced one let rasterio's warning through (seen in the GUI's
    cancel-and-resume test). Checked on every open and installed when missing, because a
    filter added inside someone else's ``catch_warnings`` (a test runner's, say) is dropped
    when that one ends.
    """
    if _QUIET_RIO not in warnings.filters:
        warnings.filterwarnings("ignore", category=_RioNotGeoreferencedWarning)


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open ``path`` for reading, turning every failure into a :class:`RasterOpenError`.

    The file is checked for existence and size, opened by GDAL, and its last block is read
    so that a truncated file fails here with a clear message rather than mid-job. A raster
    without georeferencing opens with a :class:`NotGeoreferencedWarning` (pixel coordinates).
    """
    p = Path(path)
    limit_gdal_cache()
    if not p.exists():
        raise RasterOpenError(f"{p}: no such file. Check the path, or the project's raster list.")
    if p.is_dir():
        raise RasterOpenError(f"{p}: is a folder, not a raster file. Name an image file inside it.")
    side = _sidecar_kind(p)
    if side is not None:
        raise _sidecar_error(p, *side)
    if p.stat().st_size == 0:
        raise RasterOpenError(
            f"{p}: the file is empty (0 bytes); it was probably not fully copied or downloaded. "
            "Copy it again."
        )
    _quiet_rasterio_georeferencing()
    try:
        ds = rasterio.open(p)
    except RasterioError as e:
        raise RasterOpenError(
            f"{p}: cannot be read as a raster ({_short(e)}). SolarDesk reads GeoTIFF/COG, VRT "
            "and JPEG/PNG with a world file; check that the file is an image of one of these "
            "formats and is complete."
        ) from e
    try:
        _check_last_block(ds)
    except RasterioError as e:
        ds.close()
        raise RasterOpenError(
            f"{p}: the file is damaged or truncated ({_short(e)}); its last block cannot be read. "
            "Copy or download it again."
        ) from e
    if dataset_crs(ds) is None:
        hint = _georef_hint(p)
        warnings.warn(
            f"{p}: {hint} SolarDesk will work in pixel coordinates; areas in m² and map output "
            "need georeferencing.",
            NotGeoreferencedWarning,
            stacklevel=2,
        )
    elif ds.transform.is_identity and not ds.gcps[0] and ds.rpcs is None:
        warnings.warn(
            f"{p}: has a CRS but no geotransform; SolarDesk will work in pixel coordinates.",
            NotGeoreferencedWarning,
            stacklevel=2,
        )
    return ds


def dataset_crs(ds: rasterio.DatasetReader) -> rasterio.crs.CRS | None:
    """The dataset's CRS, falling back to a sidecar ``.prj`` (GDAL ignores it for JPEG/PNG)."""
    if ds.crs is not None:
        return ds.crs
    if ds.transform.is_identity:
        return None
    prj = Path(ds.name).with_suffix(".prj")
    if prj.is_file():
        try:
            return rasterio.crs.CRS.from_wkt(prj.read_text(encoding="utf-8", errors="replace"))
        except RasterioError:
            return None
    return None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _check_last_block(ds: rasterio.DatasetReader) -> None:
    h, w = ds.block_shapes[0]
    row_off = max(0, ds.height - h)
    col_off = max(0, ds.width - w)
    win = Window(col_off, row_off, min(w, ds.width), min(h, ds.height))
    ds.read(1, window=win)


def _georef_hint(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix in (".jpg", ".jpeg", ".png"):
        worlds = "/".join(_WORLD_FILE_SUFFIXES[suffix][:1])
        if not any(p.with_suffix(s).exists() for s in _WORLD_FILE_SUFFIXES[suffix]):
            return (
                f"has no world file ({p.with_suffix(worlds).name}) and no CRS: add the world "
                f"file and a .prj (or .aux.xml) beside it to georeference it."
            )
        return f"has a world file but no CRS: add {p.with_suffix('.prj').name} beside it."
    return "has no CRS: assign one (e.g. gdal_edit.py -a_srs EPSG:XXXX) to georeference it."


# --------------------------------------------------------------------------------------------
# Facts about a raster
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterInfo:
    """The facts SolarDesk needs about one raster, JSON-serialisable through :meth:`to_dict`."""

    path: str
    driver: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    crs: str | None
    crs_name: str | None
    crs_units: str | None
    transform: tuple[float, float, float, float, float, float]
    bounds: tuple[float, float, float, float]
    pixel_size: tuple[float, float]
    ground_resolution_xy_m: tuple[float, float] | None
    georeferenced: bool
    overviews: tuple[int, ...]
    block_shape: tuple[int, int]
    fingerprint: str

    @property
    def ground_resolution_m(self) -> float | None:
        """Mean true ground distance covered by one pixel, in metres (None without a CRS)."""
        if self.ground_resolution_xy_m is None:
            return None
        return float(sum(self.ground_resolution_xy_m) / 2)

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    def require_georeferenced(self, what: str) -> None:
        """Raise :class:`NotGeoreferencedError` when ``what`` needs map coordinates."""
        if not self.georeferenced:
            raise NotGeoreferencedError(
                f"{self.path}: {what} needs a georeferenced raster, and this one has no CRS. "
                "Add a world file and .prj (or assign a CRS) and try again."
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ground_resolution_m"] = self.ground_resolution_m
        return d


def describe(path: str | Path) -> RasterInfo:
    """Open ``path`` and return its :class:`RasterInfo` (CRS, transform, ground resolution...)."""
    with open_raster(path) as ds:
        return describe_dataset(ds)


def describe_dataset(ds: rasterio.DatasetReader) -> RasterInfo:
    """:class:`RasterInfo` of an already open dataset."""
    crs = dataset_crs(ds)
    georef = crs is not None
    t = ds.transform
    units = None
    crs_name = None
    crs_str = None
    if georef:
        crs_str = crs.to_string()
        try:
            from pyproj import CRS as ProjCRS

            pcrs = ProjCRS.from_user_input(crs.to_wkt())
            crs_name = pcrs.name
            units = pcrs.axis_info[0].unit_name if pcrs.axis_info else None
        except Exception:  # pyproj cannot parse every GDAL WKT; the name is cosmetic
            crs_name = crs_str
    return RasterInfo(
        path=str(ds.name),
        driver=ds.driver,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtypes=tuple(ds.dtypes),
        nodata=None if ds.nodata is None else float(ds.nodata),
        crs=crs_str,
        crs_name=crs_name,
        crs_units=units,
        transform=tuple(float(v) for v in t[:6]),
        bounds=tuple(float(v) for v in ds.bounds),
        pixel_size=(math.hypot(t.a, t.d), math.hypot(t.b, t.e)),
        ground_resolution_xy_m=ground_resolution(ds) if georef else None,
        georeferenced=georef,
        overviews=tuple(ds.overviews(1)),
        block_shape=tuple(ds.block_shapes[0]),
        fingerprint=fingerprint_dataset(ds),
    )


@lru_cache(maxsize=32)
def _to_lonlat(crs_wkt: str):
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    return Transformer.from_crs(ProjCRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)


def ground_resolution(ds: rasterio.DatasetReader) -> tuple[float, float]:
    """True ground size (metres) of one pixel along columns and rows at the raster centre.

    Measured geodesically on WGS84 between the centre pixel and its neighbours, so the
    answer is right for projected CRSs, Web Mercator (whose map units shrink by cos(lat)),
    geographic CRSs and rotated transforms alike.
    """
    from pyproj import Geod

    crs = dataset_crs(ds)
    if crs is None:
        raise NotGeoreferencedError(f"{ds.name}: has no CRS, so its ground resolution is unknown.")
    t = ds.transform
    cx, cy = ds.width / 2, ds.height / 2
    pts = [t @ (cx, cy), t @ (cx + 1, cy), t @ (cx, cy + 1)]
    try:
        tr = _to_lonlat(crs.to_wkt())
    except Exception as e:  # an engineering (local) CRS has no way to the globe
        try:
            from pyproj import CRS as ProjCRS

            axis = ProjCRS.from_wkt(crs.to_wkt()).axis_info[0]
            angular = axis.unit_name in ("degree", "radian", "grad", "arc-second")
            factor = None if angular else axis.unit_conversion_factor
        except Exception:
            factor = None
        if not factor:
            raise NotGeoreferencedError(
                f"{ds.name}: its CRS ({crs.to_string() or 'a local one'}) cannot be placed on "
                "the Earth and has no linear unit, so its ground resolution is unknown. Assign "
                "a map CRS, or give the ground resolution (--gsd METRES)."
            ) from e
        # a local CRS in metres (or feet...): the pixel's size in its units is the ground's
        return float(math.hypot(t.a, t.d) * factor), float(math.hypot(t.b, t.e) * factor)
    lon, lat = tr.transform([p[0] for p in pts], [p[1] for p in pts])
    geod = Geod(ellps="WGS84")
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    return float(dx), float(dy)


def fingerprint_dataset(ds: rasterio.DatasetReader) -> str:
    """A content fingerprint that survives moving or copying the file.

    Hashes size, band count, dtypes, transform, CRS and the pixels of a 3×3 grid of small
    windows — not the path or the modification time — so a project moved to another machine
    keeps its cache. Two rasters that differ only outside the sampled windows share a
    fingerprint; that trade keeps fingerprinting a 20000² raster to a few milliseconds.
    """
    h = hashlib.sha256()
    head = {
        "size": [ds.width, ds.height, ds.count],
        "dtypes": list(ds.dtypes),
        "transform": [round(v, 9) for v in ds.transform[:6]],
        "crs": crs.to_wkt() if (crs := dataset_crs(ds)) else None,
        "nodata": ds.nodata,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for win in _grid_windows(ds.width, ds.height, _FINGERPRINT_GRID, _FINGERPRINT_WINDOW):
        with _damaged_file(ds.name, win):
            h.update(np.ascontiguousarray(ds.read(window=win)).tobytes())
    return h.hexdigest()[:20]


@contextlib.contextmanager
def _damaged_file(name: str, window: Window | None = None) -> Iterator[None]:
    """Turn a read that fails inside the file (a damaged block: the open-time check reads
    only the last one) into a :class:`RasterOpenError` that names the file and the remedy."""
    try:
        yield
    except RasterioError as e:
        where = f"reading window {window}" if window is not None else "reading it"
        raise RasterOpenError(
            f"{name}: {where} failed ({_short(e)}); the file is damaged. Copy or download it again."
        ) from e


def fingerprint(path: str | Path) -> str:
    """Content fingerprint of the raster at ``path`` (see :func:`fingerprint_dataset`)."""
    with open_raster(path) as ds:
        return fingerprint_dataset(ds)


def _grid_windows(width: int, height: int, n: int, size: int) -> list[Window]:
    """``n``×``n`` windows of at most ``size`` pixels spread evenly over the raster."""
    ws, hs = min(size, width), min(size, height)
    out = []
    for i in range(n):
        for j in range(n):
            row = round((height - hs) * i / max(n - 1, 1))
            col = round((width - ws) * j / max(n - 1, 1))
            out.append(Window(col, row, ws, hs))
    # Small rasters give repeated windows; hashing them twice would be harmless but wasteful.
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------
# Normalised reading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalisation:
    """How raw bands become 8-bit RGB: which bands, and each one's stretch (lo, hi).

    ``lo``/``hi`` are ``None`` for uint8 input, which is used as it is. Plain data, so it can
    be sent to worker processes and stored in a cache key.
    """

    bands: tuple[int, int, int]
    lo: tuple[float, float, float] | None = None
    hi: tuple[float, float, float] | None = None

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self)).encode()).hexdigest()[:12]


def resolve_bands(count: int, bands: Sequence[int] | None, path: str = "") -> tuple[int, int, int]:
    """The three 1-based bands read as R, G, B.

    One band is grey replicated to RGB; two bands use the first as grey; three or more use
    ``bands`` (default 1, 2, 3).
    """
    if bands is None:
        if count < 3:
            return (1, 1, 1)
        return (1, 2, 3)
    bands = tuple(int(b) for b in bands)
    if len(bands) == 1:
        bands = bands * 3
    if len(bands) != 3:
        raise RasterBandError(f"{path}: a band mapping names 1 or 3 bands, got {list(bands)}.")
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise RasterBandError(
            f"{path}: has {count} band(s), so band(s) {bad} do not exist. "
            f"Choose bands between 1 and {count} (e.g. --bands 1,2,3)."
        )
    return bands  # type: ignore[return-value]


def estimate_normalisation(
    ds: rasterio.DatasetReader,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> Normalisation:
    """Choose bands and estimate a per-band percentile stretch without reading the whole raster.

    Uses the smallest overview at least 256 px on a side when the raster has overviews,
    otherwise a 5×5 grid of 256² windows. Nodata pixels are excluded.
    """
    rgb = resolve_bands(ds.count, bands, str(ds.name))
    if all(ds.dtypes[b - 1] == "uint8" for b in rgb):
        return Normalisation(rgb)
    samples = _stretch_samples(ds, rgb)
    lo, hi = [], []
    for b, values in zip(rgb, samples, strict=True):
        if values.size == 0:  # all nodata in the sample: a neutral stretch
            low, high = 0.0, 1.0
        else:
            low, high = (float(v) for v in np.percentile(values, percentiles))
        if high <= low:
            high = low + 1.0
        lo.append(low)
        hi.append(high)
        del b
    return Normalisation(rgb, tuple(lo), tuple(hi))


def _stretch_samples(ds: rasterio.DatasetReader, bands: tuple[int, int, int]) -> list[np.ndarray]:
    unique = sorted(set(bands))
    ovr = [f for f in ds.overviews(unique[0]) if min(ds.width // f, ds.height // f) >= 256]
    if ovr:
        f = max(ovr)
        shape = (len(unique), max(1, ds.height // f), max(1, ds.width // f))
        with _damaged_file(ds.name):
            chunks = [ds.read(unique, out_shape=shape, masked=True)]
    else:
        chunks = []
        for w in _grid_windows(ds.width, ds.height, _STRETCH_GRID, _STRETCH_WINDOW):
            with _damaged_file(ds.name, w):
                chunks.append(ds.read(unique, window=w, masked=True))
    per_band = {}
    for i, b in enumerate(unique):
        vals = [np.ma.compressed(c[i]) for c in chunks]
        v = np.concatenate(vals).astype(np.float64)
        per_band[b] = v[np.isfinite(v)]
    return [per_band[b] for b in bands]


class RasterReader:
    """Reads windows of one raster as 8-bit RGB plus a validity mask.

    Create one per process (rasterio datasets must not cross processes or threads). Pass the
    :class:`Normalisation` estimated once for the raster so all tiles share one stretch.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bands: Sequence[int] | None = None,
        normalisation: Normalisation | None = None,
    ) -> None:
        self.path = Path(path)
        self.ds = open_raster(self.path)
        if normalisation is None:
            normalisation = estimate_normalisation(self.ds, bands)
        else:
            resolve_bands(self.ds.count, normalisation.bands, str(self.path))
        self.normalisation = normalisation
        self._all_valid = self.ds.nodata is None and all(
            flags == [rasterio.enums.MaskFlags.all_valid] for flags in self.ds.mask_flag_enums
        )

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ds.close()

    def read_rgb(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` as ``(rgb, valid)``: (H, W, 3) uint8 and (H, W) bool.

        Invalid (nodata or masked) pixels are 0 in ``rgb`` and False in ``valid``.
        """
        n = self.normalisation
        unique = sorted(set(n.bands))
        with _damaged_file(self.path, window):
            raw = self.ds.read(unique, window=window)
            masks = None if self._all_valid else self.ds.read_masks(unique, window=window)
        index = {b: i for i, b in enumerate(unique)}
        h, w = raw.shape[1:]
        valid = np.ones((h, w), bool) if masks is None else np.all(masks > 0, axis=0)
        channels = []
        for c, b in enumerate(n.bands):
            band = raw[index[b]]
            if n.lo is None:
                channels.append(band.astype(np.uint8, copy=False))
            else:
                lo, hi = n.lo[c], n.hi[c]
                scaled = (band.astype(np.float32) - lo) * (255.0 / (hi - lo))
                np.clip(scaled, 0, 255, out=scaled)
                scaled = np.nan_to_num(scaled, nan=0.0)
                channels.append((scaled + 0.5).astype(np.uint8))
        import cv2  # (not at module level: the CLI's start-up does not pay for it)

        rgb = cv2.merge(channels)  # (H, W, 3) in one pass (NumPy's strided copies: 10× slower)
        if masks is not None:
            rgb[~valid] = 0
        return rgb, valid

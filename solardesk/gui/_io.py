"""What the GUI's worker threads do: read display windows, cached instances and vector files.

Everything here is Qt-free and returns plain data (numpy arrays, dataclasses), so it can run on
any thread of a ``QThreadPool`` and its results can cross to the GUI thread (DESIGN.md §3).
Nothing here reads a whole raster at full resolution: the map asks for the visible extent at
screen resolution (GDAL picks overviews when the file has them) and keeps one small
thumbnail per raster for zoomed-out views.

rasterio datasets must not be shared between threads, so each worker thread keeps its own
small cache of open datasets (GDAL's block cache then survives from one pan to the next).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from solardesk.core.raster import Normalisation
from solardesk.errors import EditError

#: Longest side of the thumbnail kept in memory per raster (pixels).
THUMBNAIL_MAX = 1024
#: Open datasets kept per worker thread.
_DATASETS_PER_THREAD = 8

_local = threading.local()


# --------------------------------------------------------------------------------------------
# Rasters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterSource:
    """A raster as the map shows it, in the map's CRS (warped on the fly when it differs)."""

    path: str
    info: Any  #: :class:`solardesk.core.raster.RasterInfo` of the file itself
    map_crs_wkt: str | None  #: CRS the map shows it in (``None``: pixel coordinates)
    warped: bool  #: read through a ``WarpedVRT`` because its CRS is not the map's
    width: int  #: of the displayed grid (the VRT's when warped)
    height: int
    transform: tuple[float, ...]  #: displayed grid pixel → map coordinates
    normalisation: Normalisation
    thumbnail: np.ndarray  #: (h, w, 4) uint8 RGBA of the whole raster
    thumbnail_transform: tuple[float, ...]  #: thumbnail pixel → map coordinates

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def map_pixel_size(self) -> float:
        """A displayed pixel's size in the map's units (degrees on a geographic map): the
        file's own pixel size is in the file's units, which a warped raster does not share."""
        a = self.affine
        return abs(a.a * a.e - a.b * a.d) ** 0.5

    @property
    def thumbnail_factor(self) -> float:
        """Raster pixels per thumbnail pixel."""
        return self.width / self.thumbnail.shape[1]


@dataclass(frozen=True)
class ViewImage:
    """A window of a raster read at reduced resolution for the screen."""

    rgba: np.ndarray  #: (h, w, 4) uint8
    window: tuple[int, int, int, int]  #: (col_off, row_off, width, height) of the displayed grid
    transform: tuple[float, ...]  #: image pixel → map coordinates


def _datasets() -> OrderedDict:
    cache = getattr(_local, "datasets", None)
    if cache is None:
        cache = _local.datasets = OrderedDict()
    return cache


def _open(path: str, map_crs_wkt: str | None, warped: bool):
    """A dataset for this thread (a ``WarpedVRT`` into the map CRS when ``warped``)."""
    from solardesk.core.raster import open_raster

    key = (path, map_crs_wkt if warped else None)
    cache = _datasets()
    ds = cache.get(key)
    if ds is not None and not ds.closed:
        cache.move_to_end(key)
        return ds
    src = open_raster(path)
    if warped:
        from rasterio.crs import CRS
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        ds = WarpedVRT(src, crs=CRS.from_wkt(map_crs_wkt), resampling=Resampling.bilinear)
        ds._solardesk_src = src  # keep the source open as long as the VRT
    else:
        ds = src
    cache[key] = ds
    while len(cache) > _DATASETS_PER_THREAD:
        _, old = cache.popitem(last=False)
        _close(old)
    return ds


def _close(ds) -> None:
    src = getattr(ds, "_solardesk_src", None)
    ds.close()
    if src is not None:
        src.close()


def forget_dataset(path: str) -> None:
    """Close this thread's handles on ``path`` (after the file changed on disk)."""
    cache = _datasets()
    for key in [k for k in cache if k[0] == path]:
        _close(cache.pop(key))


def _same_crs(a_wkt: str | None, b_wkt: str | None) -> bool:
    if a_wkt is None or b_wkt is None:
        return True  # pixel coordinates: nothing to reproject to or from
    if a_wkt == b_wkt:
        return True
    from solardesk.core.geometry import as_pyproj_crs

    return as_pyproj_crs(a_wkt) == as_pyproj_crs(b_wkt)


def open_source(path: str | Path, map_crs_wkt: str | None = None) -> RasterSource:
    """Describe ``path``, estimate its display stretch and read its thumbnail.

    ``map_crs_wkt`` is the map's CRS; a raster in another CRS is warped into it on the fly.
    ``None`` shows the raster in its own CRS (the first raster of a map sets the map's CRS).
    """
    from solardesk.core.raster import describe_dataset, estimate_normalisation, open_raster

    path = str(path)
    with open_raster(path) as ds:
        info = describe_dataset(ds)
        norm = estimate_normalisation(ds)
    own_wkt = _crs_wkt(info)
    if map_crs_wkt is None:
        map_crs_wkt = own_wkt
    warped = not _same_crs(own_wkt, map_crs_wkt)
    ds = _open(path, map_crs_wkt, warped)
    scale = max(1.0, max(ds.width, ds.height) / THUMBNAIL_MAX)
    tw, th = max(1, round(ds.width / scale)), max(1, round(ds.height / scale))
    rgba = _read_rgba(ds, norm, (0, 0, ds.width, ds.height), tw, th)
    t = ds.transform
    thumb_t = t * Affine.scale(ds.width / tw, ds.height / th)
    return RasterSource(
        path=path,
        info=info,
        map_crs_wkt=map_crs_wkt,
        warped=warped,
        width=ds.width,
        height=ds.height,
        transform=tuple(t)[:6],
        normalisation=norm,
        thumbnail=rgba,
        thumbnail_transform=tuple(thumb_t)[:6],
    )


def _crs_wkt(info) -> str | None:
    if not info.georeferenced:
        return None
    from solardesk.core.geometry import as_pyproj_crs

    return as_pyproj_crs(info.crs).to_wkt()


def read_view(
    source: RasterSource, window: tuple[int, int, int, int], out_width: int, out_height: int
) -> ViewImage:
    """Read ``window`` of the displayed grid resampled to ``out_width`` × ``out_height``."""
    ds = _open(source.path, source.map_crs_wkt, source.warped)
    rgba = _read_rgba(ds, source.normalisation, window, out_width, out_height)
    col, row, w, h = window
    t = source.affine * Affine.translation(col, row) * Affine.scale(w / out_width, h / out_height)
    return ViewImage(rgba, tuple(int(v) for v in window), tuple(t)[:6])


def view_window(
    source: RasterSource,
    corners: Sequence[tuple[float, float]],
    screen_width: int,
    screen_height: int,
) -> tuple[tuple[int, int, int, int], int, int] | None:
    """The window of the displayed grid under a view and the output size it needs.

    ``corners`` are the view's corners in map coordinates; ``screen_*`` its size in device
    pixels. Returns ``(window, out_width, out_height)`` clamped to the raster, or ``None``
    when the view does not touch it. The output never has more pixels than the screen shows
    of the raster (nor more than the window itself): reads cost what the screen needs,
    whatever the raster's size.
    """
    inv = ~source.affine
    px = [inv * c for c in corners]
    cols = [p[0] for p in px]
    rows = [p[1] for p in px]
    c0 = max(0, math.floor(min(cols)))
    r0 = max(0, math.floor(min(rows)))
    c1 = min(source.width, math.ceil(max(cols)))
    r1 = min(source.height, math.ceil(max(rows)))
    if c1 <= c0 or r1 <= r0:
        return None
    span_c = max(max(cols) - min(cols), 1e-9)
    span_r = max(max(rows) - min(rows), 1e-9)
    # Raster pixels per screen pixel along each axis (rotation makes the bbox larger: fine).
    per_px = max(span_c / max(screen_width, 1), span_r / max(screen_height, 1))
    w, h = c1 - c0, r1 - r0
    factor = max(1.0, per_px)
    out_w = max(1, min(w, math.ceil(w / factor)))
    out_h = max(1, min(h, math.ceil(h / factor)))
    return (c0, r0, w, h), out_w, out_h


def _read_rgba(ds, norm: Normalisation, window, out_w: int, out_h: int) -> np.ndarray:
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.windows import Window

    win = Window(*window)
    unique = sorted(set(norm.bands))
    decimating = out_w < window[2] or out_h < window[3]
    resampling = Resampling.average if decimating else Resampling.nearest
    raw = ds.read(unique, window=win, out_shape=(len(unique), out_h, out_w), resampling=resampling)
    rgba = np.empty((out_h, out_w, 4), np.uint8)
    index = {b: i for i, b in enumerate(unique)}
    for c, b in enumerate(norm.bands):
        band = raw[index[b]]
        if norm.lo is None:
            rgba[..., c] = band
        else:
            lo, hi = norm.lo[c], norm.hi[c]
            scaled = (band.astype(np.float32) - lo) * (255.0 / (hi - lo))
            np.clip(scaled, 0, 255, out=scaled)
            rgba[..., c] = (np.nan_to_num(scaled, nan=0.0) + 0.5).astype(np.uint8)
    all_valid = ds.nodata is None and all(
        flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums
    )
    if all_valid and not hasattr(ds, "_solardesk_src"):
        rgba[..., 3] = 255
    else:
        mask = ds.dataset_mask(window=win, out_shape=(out_h, out_w), resampling=Resampling.nearest)
        rgba[..., 3] = np.where(mask > 0, 255, 0).astype(np.uint8)
    return rgba


@dataclass(frozen=True)
class FoundRasters:
    """The raster files a folder or a mask cache stands for, and what was left out and why."""

    paths: list[Path]
    notes: list[str] = field(default_factory=list)


def rasters_in_folder(folder: str | Path) -> FoundRasters:
    """The images a folder stands for (:func:`solardesk.core.raster.expand_rasters`): its
    warnings (bare JPEG/PNG left out) come back as notes for the Messages panel. A folder
    with no image directly inside stands for those in its subfolders, at any depth (the
    command line's ``'FOLDER/**/*'``): a drop or a folder dialog has no other way to say so."""
    import glob
    import warnings

    from solardesk.core.raster import expand_rasters
    from solardesk.errors import RasterOpenError

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            paths = expand_rasters([folder])
        except RasterOpenError as direct:
            below = Path(glob.escape(str(folder))) / "**" / "*"
            try:
                paths = expand_rasters([str(below)])
            except RasterOpenError:
                raise direct from None
            notes.append(
                f"{folder}: no image directly inside; the {len(paths)} in its subfolders "
                "were added."
            )
    return FoundRasters(paths, [str(w.message) for w in caught] + notes)


def rasters_of_cache(path: str | Path) -> FoundRasters:
    """The rasters a mask cache was computed on, at their last known paths; those no longer
    there are named in a note."""
    from solardesk.core.cache import MaskCache
    from solardesk.core.jobs import counted

    with MaskCache(path, readonly=True) as cache:
        records = cache.list_rasters()
    there: list[Path] = []
    gone: list[str] = []
    for r in records:
        if r.path and Path(r.path).is_file():
            there.append(Path(r.path))
        else:
            gone.append(r.path or r.fingerprint)
    notes = []
    if gone:
        one = len(gone) == 1
        shown = ", ".join(gone[:3]) + (", …" if len(gone) > 3 else "")
        notes.append(
            f"{path}: {len(gone)} of the cache's {counted(len(records), 'raster')} "
            f"{'is' if one else 'are'} not at "
            f"{'its' if one else 'their'} last "
            f"known path ({shown}). Add {'it' if one else 'them'} from where "
            f"{'it is' if one else 'they are'} now with File ▸ Add raster: the cache knows a "
            "raster by its content, so a moved one keeps its pseudo-labels."
        )
    return FoundRasters(there, notes)


# --------------------------------------------------------------------------------------------
# Cached instances
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One cached instance as the map and the review dock need it (no mask)."""

    id: int
    tile_id: str
    confidence: float
    review: str
    provenance: str
    area_px: int
    ring: np.ndarray  #: (n, 2) exterior in map coordinates
    bounds: tuple[float, float, float, float]  #: (minx, miny, maxx, maxy) in map coordinates

    def with_review(self, review: str) -> InstanceRecord:
        return InstanceRecord(
            self.id,
            self.tile_id,
            self.confidence,
            review,
            self.provenance,
            self.area_px,
            self.ring,
            self.bounds,
        )


@dataclass(frozen=True, slots=True)
class TileRecord:
    tile_id: str
    pk: int
    window: tuple[int, int, int, int]  #: in raster pixels
    footprint: np.ndarray  #: (5, 2) closed ring in map coordinates


@dataclass(frozen=True)
class TilesUpdate:
    """Tiles of one raster that changed in a cache since row ``since_pk``, with their instances.

    ``instances`` hold the *current* instances of each tile in ``tiles`` (they replace what the
    map had for those tiles).
    """

    raster_fp: str
    tiles: list[TileRecord] = field(default_factory=list)
    instances: list[InstanceRecord] = field(default_factory=list)
    max_pk: int = 0


@dataclass(frozen=True)
class Placement:
    """How a raster's pixels land on the map: its own transform and CRS, and the map's CRS."""

    transform: tuple[float, ...]
    crs_wkt: str | None
    map_crs_wkt: str | None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    def to_map(self, geom):
        """A shapely geometry in the raster's CRS, in the map's."""
        if _same_crs(self.crs_wkt, self.map_crs_wkt):
            return geom
        from solardesk.core.geometry import reproject_geometry

        return reproject_geometry(geom, self.crs_wkt, self.map_crs_wkt)

    def to_raster(self, geom):
        if _same_crs(self.crs_wkt, self.map_crs_wkt):
            return geom
        from solardesk.core.geometry import reproject_geometry

        return reproject_geometry(geom, self.map_crs_wkt, self.crs_wkt)


def placement_of(source: RasterSource) -> Placement:
    return Placement(tuple(source.info.transform), _crs_wkt(source.info), source.map_crs_wkt)


def _cache_exists(path: Path) -> bool:
    """Whether a pre-compute has created the cache at ``path`` yet (a file, not empty)."""
    return path.is_file() and path.stat().st_size > 0


def count_objects(cache_path: str | Path, raster_fp: str, threshold: float) -> int:
    """How many objects of ``raster_fp`` the cache holds at confidence >= ``threshold``, the
    copies of one object in overlapping tiles counted once (``MaskCache.count_objects``); 0
    for a cache that does not exist yet. Its own read-only connection (a worker thread)."""
    from solardesk.core.cache import MaskCache

    path = Path(cache_path)
    if not _cache_exists(path):
        return 0
    with MaskCache(path, readonly=True) as cache:
        return cache.count_objects(threshold, raster_fp)


def load_tiles(
    cache_path: str | Path,
    raster_fp: str,
    placement: Placement,
    since_pk: int = 0,
    tile_ids: Iterable[str] | None = None,
) -> TilesUpdate:
    """Tiles of ``raster_fp`` written after row ``since_pk`` (or those named), as map outlines.

    Opens its own read-only connection (this runs on a worker thread). A cache that does not
    exist yet gives an empty update.
    """
    from shapely.geometry import box

    from solardesk.core.cache import MaskCache

    path = Path(cache_path)
    if not _cache_exists(path):
        return TilesUpdate(raster_fp, max_pk=since_pk)
    wanted = set(tile_ids) if tile_ids is not None else None
    tiles: list[TileRecord] = []
    instances: list[InstanceRecord] = []
    max_pk = since_pk
    base = placement.affine
    with MaskCache(path, readonly=True) as cache:
        changed = []
        for t in cache.iter_tiles(raster_fp):
            max_pk = max(max_pk, t.pk)
            if t.pk > since_pk or (wanted is not None and t.tile_id in wanted):
                changed.append(t)
        seen = set()
        for t in changed:
            if t.tile_id in seen:  # a computed row and an edits row of one tile
                continue
            seen.add(t.tile_id)
            col, row, w, h = t.window
            foot = placement.to_map(
                _transform_geom(box(0, 0, w, h), base * Affine.translation(col, row))
            )
            tiles.append(
                TileRecord(t.tile_id, t.pk, tuple(t.window), np.asarray(foot.exterior.coords))
            )
            # A panel drawn in the tile beside hides this tile's outline of it too.
            for inst in cache.read_tile(raster_fp, t.tile_id, drawn_nearby="hide"):
                rec = record_of(inst, t.tile_id, (col, row), placement)
                if rec is not None:
                    instances.append(rec)
    return TilesUpdate(raster_fp, tiles, instances, max_pk)


def record_of(
    inst, tile_id: str, offset: tuple[int, int], placement: Placement
) -> InstanceRecord | None:
    """The :class:`InstanceRecord` of a stored instance of the tile at ``offset`` (col, row)."""
    from solardesk.core.geometry import instance_polygon

    x0, y0 = inst.bbox[:2]
    poly = instance_polygon(
        inst.mask,
        placement.affine * Affine.translation(offset[0] + x0, offset[1] + y0),
        min_area_px=1,
    )
    if poly is None:
        return None
    poly = placement.to_map(poly)
    return InstanceRecord(
        id=int(inst.id),
        tile_id=tile_id,
        confidence=float(inst.confidence),
        review=inst.review,
        provenance=inst.provenance,
        area_px=inst.area_px,
        ring=np.asarray(poly.exterior.coords),
        bounds=tuple(float(v) for v in poly.bounds),
    )


def _transform_geom(geom, affine: Affine):
    from shapely import affinity

    return affinity.affine_transform(
        geom, [affine.a, affine.b, affine.d, affine.e, affine.c, affine.f]
    )


# --------------------------------------------------------------------------------------------
# Drawing an instance
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawnInstance:
    """A polygon a person drew, rasterised into the tile that holds it."""

    tile_id: str
    window: tuple[int, int, int, int]
    instance: Any  #: :class:`solardesk.core.cache.Instance` (bbox-cropped mask, tile pixels)


def rasterise_drawn(
    ring: Sequence[tuple[float, float]],
    placement: Placement,
    raster_size: tuple[int, int],
    tiles: Sequence[TileRecord],
    tile_size: int,
    overlap: int,
) -> DrawnInstance:
    """Rasterise a polygon drawn on the map (map coordinates) into one tile's mask.

    The tile is a stored tile of the raster whose window holds the whole polygon (the one
    whose centre is nearest the polygon's when several do), else the tile of the project's
    grid whose core holds the polygon's centroid; the polygon is clipped to that tile.
    Raises :class:`~solardesk.errors.EditError` for a polygon with no area or outside the
    raster.
    """
    from rasterio.features import rasterize
    from shapely.geometry import Polygon, box

    from solardesk.core.cache import Instance
    from solardesk.core.tiling import make_grid

    poly = Polygon(ring)
    if not poly.is_valid:
        import shapely

        poly = shapely.make_valid(poly)
    if poly.is_empty or poly.area <= 0:
        raise EditError("the drawn polygon has no area; click at least three distinct points")
    inv = ~placement.affine
    px = _transform_geom(placement.to_raster(poly), inv)  # raster pixel coordinates
    width, height = raster_size
    px = px.intersection(box(0, 0, width, height))
    if px.is_empty or px.area <= 0:
        raise EditError("the drawn polygon lies outside the raster")
    minx, miny, maxx, maxy = px.bounds
    holding = [
        t
        for t in tiles
        if t.window[0] <= minx
        and t.window[1] <= miny
        and maxx <= t.window[0] + t.window[2]
        and maxy <= t.window[1] + t.window[3]
    ]
    c = px.centroid
    if holding:
        tile = min(
            holding,
            key=lambda t: (
                (t.window[0] + t.window[2] / 2 - c.x) ** 2
                + (t.window[1] + t.window[3] / 2 - c.y) ** 2
            ),
        )
        tile_id, window = tile.tile_id, tile.window
    else:
        size = min(tile_size, width, height)
        grid = make_grid(width, height, Affine.identity(), size, min(overlap, size - 1))
        found = next(
            (
                t
                for t in grid
                if t.core.col_off <= c.x < t.core.col_off + t.core.width
                and t.core.row_off <= c.y < t.core.row_off + t.core.height
            ),
            grid.tiles[0],
        )
        tile_id = found.id
        window = (found.col_off, found.row_off, found.width, found.height)
    col, row, w, h = window
    local = _transform_geom(px, Affine.translation(-col, -row)).intersection(box(0, 0, w, h))
    if local.is_empty:
        raise EditError("the drawn polygon does not overlap the tile that should hold it")
    mask = rasterize([(local, 1)], out_shape=(h, w), fill=0, dtype="uint8").astype(bool)
    if not mask.any():
        # A sliver thinner than a pixel's centre: take every pixel it touches.
        mask = rasterize(
            [(local, 1)], out_shape=(h, w), fill=0, dtype="uint8", all_touched=True
        ).astype(bool)
    if not mask.any():
        raise EditError("the drawn polygon covers no pixel")
    inst = Instance.from_full_mask(mask, confidence=1.0, provenance="human", review="accepted")
    return DrawnInstance(tile_id, tuple(int(v) for v in window), inst)


# --------------------------------------------------------------------------------------------
# Review edits (each opens its own writing connection on the edits thread)
# --------------------------------------------------------------------------------------------
def _edited_cache(cache_path: str | Path) -> Path:
    """The cache an edit writes to, which must exist: opening a missing one would make a new,
    empty cache at a moved cache's old path and put the user's review there."""
    from solardesk.errors import CacheError

    path = Path(cache_path)
    if not _cache_exists(path):
        raise CacheError(
            f"{path}: the mask cache is not there (moved or deleted?), so this edit was not "
            "saved. Open the cache where it is now (File ▸ Open mask cache), or run the "
            "pre-compute first."
        )
    return path


def set_review(cache_path: str | Path, instance_ids: Sequence[int], state: str) -> list[int]:
    """Set the review state of instances; returns the ids set: those given, then the copies of
    their objects in overlapping tiles that got the same state (ADR 0047)."""
    from solardesk.core.cache import MaskCache

    done: list[int] = []
    with MaskCache(_edited_cache(cache_path)) as cache:
        for iid in instance_ids:
            done += [i for i in cache.set_review(int(iid), state) if i not in done]
    return done


def delete_instances(cache_path: str | Path, instance_ids: Sequence[int]) -> list[int]:
    from solardesk.core.cache import MaskCache

    with MaskCache(_edited_cache(cache_path)) as cache:
        for iid in instance_ids:
            cache.delete_instance(int(iid))
    return list(instance_ids)


def add_drawn(
    cache_path: str | Path,
    raster_fp: str,
    ring: Sequence[tuple[float, float]],
    placement: Placement,
    raster_size: tuple[int, int],
    tiles: Sequence[TileRecord],
    tile_size: int,
    overlap: int,
) -> InstanceRecord:
    """Rasterise a drawn polygon, store it (provenance "human", accepted), return its record."""
    from solardesk.core.cache import MaskCache

    drawn = rasterise_drawn(ring, placement, raster_size, tiles, tile_size, overlap)
    with MaskCache(_edited_cache(cache_path)) as cache:
        iid = cache.add_instance(
            raster_fp, drawn.tile_id, drawn.instance, "human", window=drawn.window
        )
        _, stored = cache.get_instance(iid)
    rec = record_of(stored, drawn.tile_id, drawn.window[:2], placement)
    if rec is None:
        raise EditError("the drawn polygon is too small to keep")
    return rec


def split_mask(
    mask: np.ndarray, line: Sequence[tuple[float, float]], min_part_px: int = 4
) -> list[np.ndarray]:
    """Cut a tile mask along a polyline in tile pixel coordinates; the parts, largest first.

    The line is rasterised one pixel wide (8-connected) and the rest of the mask is split
    into 4-connected parts, so a line across the mask always separates it; the pixels under
    the line then go to the nearest part, so the parts cover the mask exactly. Parts smaller
    than ``min_part_px`` stay with their nearest neighbour. Raises
    :class:`~solardesk.errors.EditError` when the line does not cut the mask in two.
    """
    import cv2
    from scipy import ndimage

    full = np.asarray(mask, dtype=bool)
    pts = np.asarray(line, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        raise EditError("a split line needs at least two points")
    canvas = np.zeros(full.shape, dtype=np.uint8)
    # Pixel (c, r) covers [c, c + 1) x [r, r + 1): OpenCV's integer points are pixel centres.
    shift = 4
    fixed = np.round((pts - 0.5) * (1 << shift)).astype(np.int32)
    cv2.polylines(canvas, [fixed.reshape(-1, 1, 2)], False, 1, 1, cv2.LINE_8, shift)
    cut = full & (canvas == 0)
    labels, n = ndimage.label(cut)  # 4-connectivity
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        small = np.flatnonzero(sizes < min_part_px)
        small = small[small > 0]
        if small.size:
            labels[np.isin(labels, small)] = 0
    kept = np.unique(labels[labels > 0])
    if kept.size < 2:
        raise EditError(
            "the line does not cut the instance in two: draw it across the instance, "
            "from outside one side to outside the other"
        )
    # Every mask pixel without a part (under the line, or in a tiny piece) joins the nearest.
    _, (ri, ci) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    filled = np.where(full, labels[ri, ci], 0)
    parts = [filled == k for k in kept]
    parts.sort(key=lambda m: -int(m.sum()))
    return parts


def split_instance(
    cache_path: str | Path,
    instance_id: int,
    line: Sequence[tuple[float, float]],
    placement: Placement,
) -> list[InstanceRecord]:
    """Split a stored instance along a line drawn on the map (map coordinates).

    The largest part keeps the instance's id (its outline replaced, provenance "human"); each
    other part becomes a new instance of the same tile with the original's confidence, channel
    scores and review state, provenance "human". Returns the records, the kept id first.
    """
    from shapely.geometry import LineString

    from solardesk.core.cache import MaskCache

    with MaskCache(_edited_cache(cache_path)) as cache:
        tile, inst = cache.get_instance(int(instance_id))
        col, row, w, h = tile.window
        geom = placement.to_raster(LineString(list(line)))
        local = _transform_geom(geom, Affine.translation(-col, -row) * ~placement.affine)
        parts = split_mask(inst.full_mask(h, w), list(local.coords))
        first = _part_instance(parts[0], inst)
        cache.replace_mask(int(instance_id), first.bbox, first.mask)
        ids = [int(instance_id)]
        for part in parts[1:]:
            new = _part_instance(part, inst)
            ids.append(cache.add_instance(tile.raster_fp, tile.tile_id, new, "human"))
        records = []
        for iid in ids:
            t, stored = cache.get_instance(iid)
            rec = record_of(stored, t.tile_id, t.window[:2], placement)
            if rec is not None:
                records.append(rec)
    return records


def _part_instance(part: np.ndarray, like: Any) -> Any:
    """An instance of ``part`` (a tile mask) with the confidence, scores and review of ``like``."""
    from solardesk.core.cache import Instance

    return Instance.from_full_mask(
        part,
        confidence=like.confidence,
        scores=like.scores,
        provenance="human",
        review=like.review,
    )


# --------------------------------------------------------------------------------------------
# Vector files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorData:
    """The geometries of a vector file in the map CRS, as rings and lines ready to draw."""

    path: str
    crs_wkt: str | None  #: the CRS of the coordinates (the map's, or the file's when none)
    polygons: list[list[np.ndarray]]  #: per polygon: exterior then holes, (n, 2) arrays
    lines: list[np.ndarray]
    points: np.ndarray  #: (n, 2)
    bounds: tuple[float, float, float, float] | None
    count: int


def load_vector(path: str | Path, map_crs_wkt: str | None) -> VectorData:
    """Read a GeoPackage, Shapefile or GeoJSON into map coordinates (see ``read_geometries``)."""
    import shapely

    from solardesk.core.vector import read_geometries

    geoms, crs = read_geometries(path, dst_crs=map_crs_wkt)
    polygons: list[list[np.ndarray]] = []
    lines: list[np.ndarray] = []
    points: list[tuple[float, float]] = []
    for g in geoms:
        for part in shapely.get_parts(g):
            kind = part.geom_type
            if kind == "Polygon":
                rings = [np.asarray(part.exterior.coords)]
                rings += [np.asarray(r.coords) for r in part.interiors]
                polygons.append(rings)
            elif kind == "LineString":
                lines.append(np.asarray(part.coords))
            elif kind == "Point":
                points.append((part.x, part.y))
            elif kind == "GeometryCollection":
                continue
    bounds = shapely.total_bounds(np.asarray(geoms, dtype=object)) if geoms else None
    from solardesk.core.geometry import as_pyproj_crs

    return VectorData(
        path=str(path),
        crs_wkt=map_crs_wkt or (as_pyproj_crs(crs).to_wkt() if crs is not None else None),
        polygons=polygons,
        lines=lines,
        points=np.asarray(points, float).reshape(-1, 2),
        bounds=tuple(float(v) for v in bounds) if bounds is not None else None,
        count=len(geoms),
    )


def write_extent_aoi(
    path: str | Path, bounds: tuple[float, float, float, float], crs_wkt: str
) -> Path:
    """Write a rectangle (map coordinates) as a one-feature GeoPackage, for ``--aoi``."""
    from shapely.geometry import box

    from solardesk.core.vector import VectorWriter

    with VectorWriter(
        path, crs_wkt, schema_fields={"name": str}, overwrite=True, layer="aoi"
    ) as writer:
        writer.write([(box(*bounds), {"name": "visible extent"})])
    return Path(path)

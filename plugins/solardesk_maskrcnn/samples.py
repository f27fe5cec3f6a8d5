"""Training tiles from the mask cache: which tiles, which split, which instances, read lazily.

No torch here (the dataset wrapper in :mod:`solardesk_maskrcnn.dataset` adds it), so listing and
splitting can be tested and used from the core's side of the fence.

* A *target* is a cached instance with confidence ≥ the threshold or accepted by a reviewer,
  and never one a reviewer rejected. Candidates below the threshold that were not rejected are
  *uncertain*: the noise-aware loss neither rewards nor penalises proposals on them.
* The train/validation split is spatial: the ground is cut into square blocks of
  ``split_block_m`` metres and each block goes to one side as a whole. Tiles whose split is
  already recorded in the cache keep it; new tiles are assigned and recorded
  (:meth:`MaskCache.set_splits`), so the split is fixed once made. A train tile that shares
  ground with a validation tile is a *buffer* tile: recorded as train, but not trained on, so
  that no ground is both trained on and validated on. Within a raster that is a pixel overlap
  (tiles overlap by design); across rasters (two flights over one town, overlapping scenes) an
  overlap of the tiles' ground footprints, compared in one frame whatever each raster's CRS.
* :class:`TileSource` reads one tile (RGB, validity, instances) per call and opens its own cache
  connection and raster datasets on first use in each process, so DataLoader workers never
  share a handle opened by their parent.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from solardesk.core.cache import Instance, MaskCache, TileWindow
from solardesk.errors import RasterOpenError, TrainingError

__all__ = [
    "RasterLocator",
    "TileSample",
    "TileSource",
    "assign_splits",
    "instance_weight",
    "list_samples",
    "select_samples",
    "split_targets",
]


@dataclass(frozen=True, slots=True)
class TileSample:
    """One cached tile: where it is and how many targets it holds (plain data, picklable)."""

    raster_fp: str
    tile_id: str
    window: TileWindow
    n_targets: int


def split_targets(
    instances: Iterable[Instance], threshold: float
) -> tuple[list[Instance], list[Instance]]:
    """``(targets, uncertain)`` of one tile's instances (see the module docstring)."""
    targets, uncertain = [], []
    for inst in instances:
        if inst.review == "rejected":
            continue
        if inst.review == "accepted" or inst.confidence >= threshold:
            targets.append(inst)
        else:
            uncertain.append(inst)
    return targets, uncertain


def instance_weight(inst: Instance, threshold: float, floor: float) -> float:
    """Loss weight of a target: ``floor`` at the threshold rising linearly to 1 at confidence 1.

    Instances a person drew or accepted weigh 1: their label is not a guess.
    """
    if inst.review == "accepted" or inst.provenance == "human" or threshold >= 1.0:
        return 1.0
    t = (inst.confidence - threshold) / (1.0 - threshold)
    return float(min(1.0, max(floor, floor + (1.0 - floor) * t)))


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------
def list_samples(
    cache: MaskCache, threshold: float, stage_id: str | None = None
) -> list[TileSample]:
    """Every current tile of the cache with its number of targets, in a stable order.

    Streams the cache (instances are decoded one at a time); memory holds one small record per
    tile, never the masks.
    """
    windows: dict[tuple[str, str], TileWindow] = {}
    for t in cache.iter_tiles(stage_id=stage_id):
        windows.setdefault((t.raster_fp, t.tile_id), t.window)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for tile, _ in cache.iter_instances(
        min_confidence=threshold, review=("pending", "accepted"), stage_id=stage_id
    ):
        counts[(tile.raster_fp, tile.tile_id)] += 1
    for tile, inst in cache.iter_instances(review="accepted", stage_id=stage_id):
        if inst.confidence < threshold:
            counts[(tile.raster_fp, tile.tile_id)] += 1
    # A panel drawn in one tile is a target of the tiles beside that it reaches too: they
    # read it (read_tile(drawn_nearby="add")), cut to their window.
    for key, n in cache.drawn_reach(rejected=False).items():
        if key in windows:
            counts[key] += n
    return [
        TileSample(fp, tid, w, counts.get((fp, tid), 0)) for (fp, tid), w in sorted(windows.items())
    ]


def _unit_hash(*parts: Any) -> float:
    """A number in [0, 1) from the parts: a stable, seedable coin."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def select_samples(
    samples: Sequence[TileSample], empty_fraction: float, seed: int = 0
) -> list[TileSample]:
    """Tiles with targets, plus a deterministic ``empty_fraction`` of those without."""
    return [
        s
        for s in samples
        if s.n_targets > 0 or _unit_hash("empty", seed, s.raster_fp, s.tile_id) < empty_fraction
    ]


# --------------------------------------------------------------------------------------------
# Spatial split
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _to_lonlat(crs_wkt: str):
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_user_input(crs_wkt), "EPSG:4326", always_xy=True)


def _block_key(sample: TileSample, record: Any, block_m: float) -> tuple:
    """The ground block holding the tile's centre."""
    w = sample.window
    cx, cy = w.col_off + w.width / 2, w.row_off + w.height / 2
    if record is not None and record.crs_wkt and record.transform:
        from affine import Affine

        x, y = Affine(*record.transform[:6]) * (cx, cy)
        try:
            lon, lat = _to_lonlat(record.crs_wkt).transform(x, y)
        except Exception:  # an unusual CRS pyproj cannot use: fall back to pixels
            lon = lat = float("nan")
        if math.isfinite(lon) and math.isfinite(lat):
            # Local equirectangular metres: blocks of about block_m on the ground anywhere.
            xm, ym = _local_metres(lon, lat)
            return ("geo", math.floor(xm / block_m), math.floor(ym / block_m))
    gsd = (record.gsd_m if record is not None else None) or 1.0
    return (
        "px",
        sample.raster_fp,
        math.floor(cx * gsd / block_m),
        math.floor(cy * gsd / block_m),
    )


def _overlaps(a: TileWindow, b: TileWindow) -> bool:
    return (
        a.col_off < b.col_off + b.width
        and b.col_off < a.col_off + a.width
        and a.row_off < b.row_off + b.height
        and b.row_off < a.row_off + a.height
    )


#: Footprints of two rasters that share less than this fraction of the smaller one's area
#: only touch: the rasters of a mosaic abut on an edge that reprojection draws a hair apart.
#: (A shared strip one pixel wide is about 1/512 of a tile, twenty times more.)
_GROUND_TOLERANCE = 1e-4


def _local_metres(lon: Any, lat: Any) -> tuple[Any, Any]:
    """Local equirectangular metres: one frame for every CRS, good to a tile's accuracy."""
    return lon * 111_320.0 * np.cos(np.radians(lat)), lat * 111_320.0


def _georeferenced(record: Any) -> bool:
    """A CRS and a transform that is not the identity GDAL reports for a raster without one
    (such rasters would all seem to lie at 0°, 4.5° E, over each other)."""
    if record is None or not record.crs_wkt or not record.transform:
        return False
    return tuple(record.transform[:6]) != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _ground_footprint(sample: TileSample, record: Any) -> Any:
    """The tile's footprint as a shapely (multi)polygon in local metres, or ``None``.

    ``None`` when the raster is not georeferenced (or pyproj cannot use its CRS, or the tile
    covers a pole): its tiles can then be compared with its own tiles only, in pixels. A tile
    across the antimeridian has its longitudes unwrapped around its first corner and a second
    copy on the other side, so that the same ground given as 179.9° or as −180.1° meets.
    """
    if not _georeferenced(record):
        return None
    from affine import Affine
    from shapely.geometry import MultiPolygon, Polygon

    a = Affine(*record.transform[:6])
    w = sample.window
    # Corners and edge midpoints: a footprint's sides bend a little in another CRS.
    fc = np.array([0, 0.5, 1, 1, 1, 0.5, 0, 0])
    fr = np.array([0, 0, 0, 0.5, 1, 1, 1, 0.5])
    cols, rows = w.col_off + fc * w.width, w.row_off + fr * w.height
    x = a.c + a.a * cols + a.b * rows
    y = a.f + a.d * cols + a.e * rows
    try:
        lon, lat = _to_lonlat(record.crs_wkt).transform(x, y)
    except Exception:  # an unusual CRS pyproj cannot use
        return None
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        return None
    lon0 = (lon[0] + 180.0) % 360.0 - 180.0
    lon = lon0 + (lon - lon0 + 180.0) % 360.0 - 180.0  # unwrapped around the first corner
    parts = []
    for shift in (0.0, -360.0, 360.0):
        if shift == 0.0 or (shift < 0 and lon.max() > 180.0) or (shift > 0 and lon.min() < -180):
            xs, ys = _local_metres(lon + shift, lat)
            poly = Polygon(zip(xs.tolist(), ys.tolist(), strict=True))
            if not poly.is_valid or poly.area <= 0:  # (around a pole)
                return None
            parts.append(poly)
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _buffer_tiles(
    samples: Sequence[TileSample],
    split: dict[tuple[str, str], str],
    records: dict[str, Any] | None = None,
) -> set[tuple[str, str]]:
    """Train tiles that share ground with a validation tile.

    Within one raster that is a pixel overlap (tiles overlap by design). Across rasters (two
    flights over one town, overlapping scenes of a mosaic) it is an overlap of their ground
    footprints, compared in one frame whatever each raster's CRS: a train tile of one scene
    must not show the ground a validation tile of the other shows. Footprints are looked up
    in an R-tree, so rasters of very different tile sizes cost no more than alike ones.
    """
    records = records or {}
    size = max((max(s.window.width, s.window.height) for s in samples), default=1)
    val_cells: dict[tuple[str, int, int], list[TileWindow]] = defaultdict(list)
    for s in samples:
        if split.get((s.raster_fp, s.tile_id)) == "val":
            cell = (s.raster_fp, s.window.col_off // size, s.window.row_off // size)
            val_cells[cell].append(s.window)
    out = set()
    for s in samples:
        k = (s.raster_fp, s.tile_id)
        if split.get(k) != "train":
            continue
        c0, r0 = s.window.col_off // size, s.window.row_off // size
        near = (
            w
            for dc in (-1, 0, 1)
            for dr in (-1, 0, 1)
            for w in val_cells.get((s.raster_fp, c0 + dc, r0 + dr), ())
        )
        if any(_overlaps(s.window, w) for w in near):
            out.add(k)
    georeferenced = {fp for fp, r in records.items() if _georeferenced(r)}
    if len(georeferenced) < 2:
        return out  # nothing to compare across rasters
    return out | _buffer_tiles_across(samples, split, records, georeferenced, out)


def _buffer_tiles_across(samples, split, records, georeferenced, already) -> set:
    """Train tiles (not in ``already``) whose footprint shares ground with a validation tile
    of another georeferenced raster."""
    import shapely

    train: list[tuple[tuple[str, str], Any]] = []
    val: list[tuple[tuple[str, str], Any]] = []
    for s in samples:
        k = (s.raster_fp, s.tile_id)
        side = split.get(k)
        if s.raster_fp not in georeferenced or side not in ("train", "val") or k in already:
            continue
        shape = _ground_footprint(s, records[s.raster_fp])
        if shape is not None:
            (train if side == "train" else val).append((k, shape))
    if not train or not val:
        return set()
    tg = np.array([g for _, g in train], dtype=object)
    vg = np.array([g for _, g in val], dtype=object)
    ti, vi = shapely.STRtree(vg).query(tg, predicate="intersects")
    across = np.array([train[i][0][0] != val[j][0][0] for i, j in zip(ti, vi, strict=True)], bool)
    ti, vi = ti[across], vi[across]
    if not len(ti):
        return set()
    shared = shapely.area(shapely.intersection(tg[ti], vg[vi]))
    smaller = np.minimum(shapely.area(tg[ti]), shapely.area(vg[vi]))
    return {train[i][0] for i in np.unique(ti[shared > _GROUND_TOLERANCE * smaller])}


def assign_splits(
    cache: MaskCache,
    samples: Sequence[TileSample],
    *,
    val_fraction: float,
    block_m: float,
    seed: int = 0,
) -> dict[tuple[str, str], str]:
    """The split of every sample: ``"train"``, ``"val"`` or ``"buffer"`` (used by neither).

    Recorded splits are kept; unrecorded tiles are assigned by ground block and recorded in the
    cache (``cache`` must then be writable). Buffer tiles are train tiles that share ground
    with a validation tile, of their own raster or another (:func:`_buffer_tiles`); the cache
    records them as train (it knows only train and val) and they are derived again,
    identically, from the recorded split each time.
    """
    recorded = cache.get_splits()
    records: dict[str, Any] = {}
    keys: dict[tuple[str, str], tuple] = {}
    for s in samples:
        if s.raster_fp not in records:
            records[s.raster_fp] = cache.get_raster(s.raster_fp)
        keys[(s.raster_fp, s.tile_id)] = _block_key(s, records[s.raster_fp], block_m)
    split: dict[tuple[str, str], str] = {}
    block_split: dict[tuple, str] = {}
    for k, b in keys.items():
        if k in recorded:
            split[k] = recorded[k]
            block_split.setdefault(b, recorded[k])
    new = [k for k in keys if k not in recorded]
    new_blocks = sorted({keys[k] for k in new} - set(block_split), key=repr)
    coin = {b: _unit_hash("split", seed, b) for b in new_blocks}
    for b in new_blocks:
        block_split[b] = "val" if coin[b] < val_fraction else "train"
    # Small projects: make sure both sides exist when there are two blocks or more.
    all_blocks = set(keys.values())
    if len(all_blocks) >= 2 and val_fraction > 0 and new_blocks:
        sides = {block_split[b] for b in all_blocks}
        if "val" not in sides:
            block_split[min(new_blocks, key=coin.__getitem__)] = "val"
        elif "train" not in sides:
            block_split[max(new_blocks, key=coin.__getitem__)] = "train"
    to_record = {}
    for k in new:
        split[k] = to_record[k] = block_split[keys[k]]
    if to_record:
        cache.set_splits(to_record)
    for k in _buffer_tiles(samples, split, records):
        split[k] = "buffer"
    return split


# --------------------------------------------------------------------------------------------
# Finding the rasters
# --------------------------------------------------------------------------------------------
class RasterLocator:
    """Finds the current file of a cached raster by its content fingerprint.

    The cache remembers the path each raster had at pre-compute time; a project moved to
    another folder or machine names the new places in the config's ``rasters`` list (files, or
    folders of them), which are fingerprinted (a few milliseconds each) only when a remembered
    path no longer fits.
    """

    def __init__(self, cache: MaskCache, extra_paths: Sequence[str | os.PathLike] = ()) -> None:
        self.cache_path = cache.path
        self._cache = cache
        self._extra = [Path(p) for p in extra_paths]
        self._extra_fps: dict[str, Path] | None = None
        self.found: dict[str, Path] = {}

    def _fingerprint_extras(self) -> dict[str, Path]:
        from solardesk.core.raster import expand_rasters, fingerprint

        if self._extra_fps is None:
            self._extra_fps = {}
            for p in expand_rasters(self._extra):  # (a folder: the images in it)
                self._extra_fps.setdefault(fingerprint(p), p)
        return self._extra_fps

    def locate(self, raster_fp: str) -> Path:
        """The file of raster ``raster_fp`` (a :class:`RasterOpenError` with the remedy)."""
        if raster_fp in self.found:
            return self.found[raster_fp]
        record = self._cache.get_raster(raster_fp)
        known = Path(record.path) if record is not None and record.path else None
        if known is not None and known.is_file():
            from solardesk.core.raster import fingerprint

            try:
                if fingerprint(known) == raster_fp:
                    self.found[raster_fp] = known
                    return known
            except RasterOpenError:
                pass
        path = self._fingerprint_extras().get(raster_fp)
        if path is None:
            where = f"last seen at {known}" if known else "no path recorded"
            raise RasterOpenError(
                f"raster {raster_fp} of cache {self.cache_path} ({where}) cannot be found or "
                "has changed. Add its current path to 'rasters' in the training config (it "
                "is matched by content), or rerun the pre-compute on it."
            )
        self.found[raster_fp] = path
        return path


# --------------------------------------------------------------------------------------------
# Reading one tile
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileData:
    """One tile as read for training or evaluation."""

    rgb: np.ndarray  # (H, W, 3) uint8
    valid: np.ndarray  # (H, W) bool
    gsd: float
    targets: list[Instance]
    uncertain: list[Instance]


class TileSource:
    """Reads tiles of the cache's rasters, opening everything lazily in the calling process.

    Picklable (for DataLoader workers): it carries paths and settings only, and a process that
    receives it opens its own read-only cache connection and raster datasets. At most
    ``max_open`` rasters stay open per process.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike,
        raster_paths: dict[str, str],
        *,
        threshold: float,
        stage_id: str | None = None,
        bands: Sequence[int] | None = None,
        stretch: tuple[float, float] = (2.0, 98.0),
        gsd: dict[str, float] | None = None,
        max_open: int = 16,
    ) -> None:
        self.cache_path = str(cache_path)
        self.raster_paths = dict(raster_paths)
        self.threshold = float(threshold)
        self.stage_id = stage_id
        self.bands = tuple(bands) if bands else None
        self.stretch = stretch
        self.gsd = dict(gsd or {})
        self.max_open = max_open
        self._pid: int | None = None
        self._cache: MaskCache | None = None
        self._readers: OrderedDict[str, Any] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pid=None, _cache=None, _readers=OrderedDict())
        return state

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            # A new process (or the first call): forget handles inherited from a parent.
            self._pid = os.getpid()
            self._cache = MaskCache(self.cache_path, readonly=True)
            self._readers = OrderedDict()

    def _reader(self, raster_fp: str):
        from solardesk.core.raster import RasterReader, estimate_normalisation, open_raster

        reader = self._readers.get(raster_fp)
        if reader is not None:
            self._readers.move_to_end(raster_fp)
            return reader
        path = self.raster_paths.get(raster_fp)
        if path is None:
            raise TrainingError(f"no raster file known for fingerprint {raster_fp}")
        with open_raster(path) as ds:
            norm = estimate_normalisation(ds, self.bands, self.stretch)
        reader = RasterReader(path, normalisation=norm)
        self._readers[raster_fp] = reader
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def read(self, sample: TileSample) -> TileData:
        """Read one tile's pixels and instances."""
        from rasterio.windows import Window

        self._ensure_open()
        assert self._cache is not None
        # A panel drawn in the tile beside is a target here too, where it reaches.
        instances = self._cache.read_tile(
            sample.raster_fp, sample.tile_id, self.stage_id, drawn_nearby="add"
        )
        targets, uncertain = split_targets(instances, self.threshold)
        rgb, valid = self._reader(sample.raster_fp).read_rgb(Window(*sample.window))
        gsd = self.gsd.get(sample.raster_fp) or 0.0
        return TileData(rgb, valid, float(gsd), targets, uncertain)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        self._pid = None

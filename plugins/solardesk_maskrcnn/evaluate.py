"""``solardesk evaluate``: a checkpoint against pseudo-labels or against ground truth.

Tiles come from the mask cache (its validation split by default) or, without a cache, from a
tile grid over the rasters named. The truth is, in this order of preference:

* a vector file (GeoJSON, GeoPackage, Shapefile; any CRS): each polygon, reprojected to the
  raster's CRS and rasterised with the tile's transform, is one instance; ``where`` keeps the
  features whose property equals a value (e.g. ``class_name=solar``);
* a folder of mask PNGs named like the rasters (``<raster stem>.png``, raster-sized): the
  connected components (8-connected) of the pixels equal to ``truth_value`` (any non-zero
  pixel by default) are the instances — touching panels merge, which favours neither side;
* otherwise the cache's own pseudo-labels at the checkpoint's threshold (how well the model
  learned what it was taught, not how right it is).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solardesk.core.metrics import Evaluation
from solardesk.errors import AOIError, ConfigError, TrainingError
from solardesk_maskrcnn.dataset import to_tensors
from solardesk_maskrcnn.predict import EvalItem, evaluate_items
from solardesk_maskrcnn.samples import TileSample, TileSource

__all__ = ["Truth", "cache_items", "evaluate", "raster_items"]


def cache_items(
    source: TileSource, samples: Sequence[TileSample], *, spectral: bool
) -> Iterator[EvalItem]:
    """Tiles of the cache with their pseudo-labels (targets at the source's threshold)."""
    for s in samples:
        tile = source.read(s)
        image, masks, _, _ = to_tensors(
            tile, spectral=spectral, threshold=source.threshold, weight_floor=1.0, noise_aware=False
        )
        yield EvalItem(
            torch.from_numpy(image), masks, f"{s.raster_fp}/{s.tile_id}", tile.gsd or None
        )


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------
def _read_vector(path: Path, crs: Any, where: tuple[str, str] | None) -> list:
    """Polygons of a vector file in ``crs``, optionally only features with ``key == value``."""
    from solardesk.core.vector import read_geometries

    if where is None:
        geoms, _ = read_geometries(path, crs)
        return geoms
    import fiona
    import shapely
    from fiona.errors import FionaError
    from rasterio.crs import CRS
    from shapely.geometry import shape

    from solardesk.core.geometry import reproject_geometry

    key, value = where
    try:
        with fiona.open(path) as src:
            if key not in src.schema["properties"]:
                raise ConfigError(
                    f"{path}: has no property {key!r} (it has "
                    f"{', '.join(src.schema['properties']) or 'none'}); fix --truth-where."
                )
            wkt = src.crs.to_wkt() if src.crs else ""
            driver = src.driver
            geoms = []
            for f in src:
                if f.geometry is None or str(f.properties.get(key)) != value:
                    continue
                g = shapely.force_2d(shape(f.geometry))
                if not g.is_empty:
                    geoms.append(g if g.is_valid else shapely.make_valid(g))
    except (FionaError, OSError) as e:
        raise AOIError(f"{path}: cannot be read as a vector file: {e}") from e
    if wkt:
        src_crs = CRS.from_wkt(wkt)
    elif driver == "GeoJSON":
        src_crs = CRS.from_epsg(4326)
    else:
        raise AOIError(f"{path}: has no CRS; assign one in a GIS or save it as GeoJSON.")
    return [reproject_geometry(g, src_crs, crs) for g in geoms]


class Truth:
    """Ground-truth instances of any tile of any raster (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        where: tuple[str, str] | None = None,
        value: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"{self.path}: no such truth file or folder.")
        self.where = where
        self.value = value
        self._vectors: dict[str, tuple[list, Any]] = {}

    def masks(self, raster: str | os.PathLike, info: Any, window: Sequence[int]) -> np.ndarray:
        """``(N, H, W)`` bool instance masks of the truth inside ``window`` of ``raster``."""
        col, row, w, h = (int(v) for v in window)
        if self.path.is_dir():
            return self._png_masks(Path(raster), col, row, w, h)
        return self._vector_masks(info, col, row, w, h)

    def _png_masks(self, raster: Path, col: int, row: int, w: int, h: int) -> np.ndarray:
        import warnings

        import cv2
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.windows import Window

        png = self.path / (raster.stem + ".png")
        if not png.is_file():
            raise ConfigError(
                f"no truth mask {png} for raster {raster}: the folder must hold one PNG per "
                "raster, named like it."
            )
        with warnings.catch_warnings():
            # A mask PNG needs no georeferencing: it is aligned with its raster pixel by pixel.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(png) as ds:
                lab = ds.read(1, window=Window(col, row, w, h), boundless=True, fill_value=0)
        hit = lab == self.value if self.value is not None else lab != 0
        n, comp = cv2.connectedComponents(hit.astype(np.uint8), connectivity=8)
        return np.stack([comp == i for i in range(1, n)]) if n > 1 else np.zeros((0, h, w), bool)

    def _vector_masks(self, info: Any, col: int, row: int, w: int, h: int) -> np.ndarray:
        from affine import Affine
        from rasterio.features import rasterize
        from shapely import STRtree, box

        if info.crs is None:
            raise ConfigError(
                f"{info.path}: has no CRS, so truth polygons cannot be placed on it; use a "
                "folder of mask PNGs as truth, or georeference the raster."
            )
        if info.crs not in self._vectors:
            geoms = _read_vector(self.path, info.crs, self.where)
            self._vectors[info.crs] = (geoms, STRtree(geoms))
        geoms, tree = self._vectors[info.crs]
        tr = Affine(*info.transform) * Affine.translation(col, row)
        corners = [tr * (0, 0), tr * (w, h)]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        hits = tree.query(box(min(xs), min(ys), max(xs), max(ys)))
        out = []
        for i in sorted(int(k) for k in hits):
            m = rasterize([(geoms[i], 1)], out_shape=(h, w), transform=tr, dtype="uint8")
            if m.any():
                out.append(m.astype(bool))
        return np.stack(out) if out else np.zeros((0, h, w), bool)


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RasterTile:
    path: Path
    info: Any
    window: tuple[int, int, int, int]
    tile_id: str


def raster_items(
    tiles: Sequence[_RasterTile],
    truth: Truth,
    *,
    spectral: bool,
    bands: Sequence[int] | None = None,
    stretch: tuple[float, float] = (2.0, 98.0),
) -> Iterator[EvalItem]:
    """Tiles read from rasters (with the band mapping and stretch of training), with truth."""
    from rasterio.windows import Window

    from solardesk.core.raster import RasterReader, estimate_normalisation, open_raster

    readers: dict[Path, RasterReader] = {}
    try:
        for t in tiles:
            reader = readers.get(t.path)
            if reader is None:
                for r in readers.values():
                    r.close()
                with open_raster(t.path) as ds:
                    norm = estimate_normalisation(ds, bands, stretch)
                readers = {t.path: (reader := RasterReader(t.path, normalisation=norm))}
            rgb, valid = reader.read_rgb(Window(*t.window))
            gsd = t.info.ground_resolution_m
            image = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
            if spectral:
                from solardesk_maskrcnn.dataset import spectral_channels

                if not gsd:
                    raise TrainingError(
                        f"{t.path}: has no CRS, so the spectral channels cannot be computed; "
                        "georeference it or evaluate an RGB model."
                    )
                image = np.concatenate([image, spectral_channels(rgb, gsd, valid)])
            yield EvalItem(
                torch.from_numpy(image),
                truth.masks(t.path, t.info, t.window),
                f"{t.path.name}/{t.tile_id}",
                gsd,
            )
    finally:
        for r in readers.values():
            r.close()


def _grid_tiles(rasters: Sequence[Path], tile_size: int) -> list[_RasterTile]:
    from solardesk.core.raster import describe
    from solardesk.core.tiling import make_grid

    out = []
    for p in rasters:
        info = describe(p)
        size = min(tile_size, info.width, info.height)
        grid = make_grid(info.width, info.height, info.affine, size, 0, source=str(p))
        out.extend(
            _RasterTile(Path(p), info, (t.col_off, t.row_off, t.width, t.height), t.id)
            for t in grid
        )
    return out


def evaluate(
    checkpoint: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    rasters: Sequence[str | os.PathLike] = (),
    truth: str | os.PathLike | None = None,
    truth_where: tuple[str, str] | None = None,
    truth_value: int | None = None,
    split: str = "val",
    threshold: float | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_tiles: int | None = None,
    device: str = "auto",
    batch_size: int = 2,
    on_tile: Any = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """Evaluate ``checkpoint``; returns the :class:`Evaluation` and a description of the run.

    With ``cache``, its tiles of ``split`` ("val", "train" or "all") are evaluated and
    ``rasters`` only help find moved rasters; without, the rasters are tiled at the model's
    tile size and ``truth`` is required.
    """
    from solardesk_maskrcnn.checkpoint import model_from_checkpoint
    from solardesk_maskrcnn.train import select_device

    dev, why = select_device(device)
    if why:
        import warnings

        from solardesk_maskrcnn.train import CudaUnavailableWarning

        warnings.warn(why, CudaUnavailableWarning, stacklevel=2)
    model, data, config = model_from_checkpoint(checkpoint, dev)
    spectral = config.model.channels != "rgb"
    tile_size = int(data["model_meta"]["tile_size"])
    thr = config.data.threshold if threshold is None else threshold
    truth_obj = Truth(truth, where=truth_where, value=truth_value) if truth else None
    reading = {
        "bands": config.raster.bands,
        "stretch": (config.raster.stretch_low, config.raster.stretch_high),
    }
    about: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "backbone": config.model.backbone,
        "channels": config.model.channels,
        "epoch": data["epoch"],
        "step": data["step"],
        "truth": str(truth) if truth else f"pseudo-labels at confidence >= {thr}",
    }
    if cache is not None:
        from solardesk.core.cache import MaskCache
        from solardesk.core.raster import describe
        from solardesk_maskrcnn.samples import RasterLocator, list_samples

        cache_path = Path(cache)
        if not cache_path.is_file():
            raise ConfigError(f"cache {cache_path} does not exist; check --cache.")
        with MaskCache(cache_path, readonly=True) as c:
            samples = list_samples(c, thr, config.data.stage_id)
            recorded = c.get_splits()
            if split != "all":
                samples = [s for s in samples if recorded.get((s.raster_fp, s.tile_id)) == split]
            if max_tiles:
                samples = samples[:max_tiles]
            if not samples:
                raise TrainingError(
                    f"cache {cache_path} has no {split} tiles: train once (it records the split) "
                    "or use --split all."
                )
            locator = RasterLocator(c, [str(p) for p in rasters])
            paths = {fp: locator.locate(fp) for fp in sorted({s.raster_fp for s in samples})}
            gsd = {fp: (c.get_raster(fp).gsd_m or 0.0) for fp in paths}
        about["tiles_from"] = f"cache {cache_path} ({split} split)"
        if truth_obj is None:
            source = TileSource(
                cache_path,
                {k: str(v) for k, v in paths.items()},
                threshold=thr,
                stage_id=config.data.stage_id,
                gsd=gsd,
                **reading,
            )
            items: Any = cache_items(source, samples, spectral=spectral)
        else:
            infos = {fp: describe(p) for fp, p in paths.items()}
            tiles = [
                _RasterTile(paths[s.raster_fp], infos[s.raster_fp], tuple(s.window), s.tile_id)
                for s in samples
            ]
            items = raster_items(tiles, truth_obj, spectral=spectral, **reading)
    else:
        if not rasters:
            raise ConfigError("name the rasters to evaluate on, or a --cache.")
        if truth_obj is None:
            raise ConfigError(
                "without a cache there are no pseudo-labels: name the ground truth with --truth."
            )
        from solardesk.core.raster import expand_rasters

        rasters = expand_rasters(rasters)  # (a folder: the images in it)
        tiles = _grid_tiles(rasters, tile_size)
        if max_tiles:
            tiles = tiles[:max_tiles]
        about["tiles_from"] = f"{len(rasters)} raster(s), {tile_size} px grid"
        items = raster_items(tiles, truth_obj, spectral=spectral, **reading)
    ev = evaluate_items(
        model,
        items,
        dev,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        batch_size=batch_size,
        on_tile=on_tile,
    )
    return ev, about

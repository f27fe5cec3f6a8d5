"""Detection to polygons: run a per-tile stage into the mask cache, then vectorise the cache.

Detection is the pre-compute job with a detector stage (the spectral analyser, or a model)
followed by vectorisation, so it inherits the cache's resume: an interrupted ``detect`` reruns
only the tiles it had not finished, then writes the vector file in one streaming pass.

Seams: every instance mask is clipped to its tile's *core* (cores partition the raster,
:mod:`solardesk.core.tiling`), so overlapping tiles never report the same pixels twice. A
piece that does not touch its core's boundary is a whole panel and is written at once; a
piece that touches a seam is held until the end and united with the pieces it touches in
neighbouring cores, so a panel cut by seams comes out as one polygon. Memory therefore grows
only with the number of panels lying on seams, not with the scene.

A panel a person drew (or redrew, or split) lives in one tile only, and is written whole,
seam or not; a computed instance of any tile that it covers at least half of
(``SUPERSEDE_SHARE``, the rule that hides its tile's look-alikes, ADR 0046) is left out, so
the tile beside does not write its own piece of the same panel.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from solardesk import __version__
from solardesk.config import RasterSettings, TilingSettings
from solardesk.core.jobs import Clock, Progress, counted
from solardesk.errors import TilesFailedError

#: Douglas-Peucker tolerance of traced outlines, in pixels (removes the 45° stair steps).
SIMPLIFY_PX = 1.0


@dataclass(frozen=True)
class DetectSummary:
    out: Path
    rasters: int
    tiles: int
    panels: int
    seconds: float
    computed_tiles: int
    skipped_tiles: int


@dataclass
class _Piece:
    polygon: Any
    score: float
    tile_id: str
    raster: str
    crs: Any
    pixel: float = 0.0  # a pixel's size in map units (for outlines simplified after merging)


def default_cache_path(out: Path) -> Path:
    """The cache kept beside an output when the user names none (it makes reruns resume)."""
    return out.with_name(f".{out.name}.solardesk-cache.sqlite")


def recommended_tiling(
    stage: Any, settings_model: Any, gsd: float | None = None
) -> TilingSettings | None:
    """The tiling a pre-compute stage recommends for its settings (``PrecomputeStage.tiling``),
    for a raster of ground resolution ``gsd`` when the stage's callable takes it."""
    if not stage.tiling:
        return None
    import inspect

    from solardesk.plugin_api import resolve

    hook = resolve(stage.tiling)
    try:
        per_raster = len(inspect.signature(hook).parameters) >= 2
    except (TypeError, ValueError):  # (a callable without a signature: settings only)
        per_raster = False
    found = hook(settings_model, gsd) if per_raster else hook(settings_model)
    if not found:
        return None
    tile, overlap = found
    return TilingSettings(tile_size=tile, overlap=overlap)


def detect(
    rasters: Sequence[str | Path],
    out: str | Path,
    *,
    stage_id: str = "spectral",
    settings: dict[str, Any] | None = None,
    cache_path: str | Path | None = None,
    tiling: TilingSettings | None = None,
    raster_settings: RasterSettings | None = None,
    aoi: str | Path | None = None,
    gsd: float | None = None,
    workers: int = 1,
    threshold: float | None = None,
    overwrite: bool = False,
    orthogonal: bool = False,
    model_name: str | None = None,
    model_version: str | None = None,
    plugin_manager=None,
    tile_size: int | None = None,
    overlap: int | None = None,
) -> Generator[Progress, None, DetectSummary]:
    """Detect panels on ``rasters`` and write them as polygons to ``out`` (GPKG, SHP, GeoJSON).

    A generator like every long job: it yields :class:`Progress` while tiles are computed and
    while they are vectorised, and returns a :class:`DetectSummary`. Without ``tiling``, the
    stage's recommendation for each raster (a model's own tile size and overlap, scaled to the
    raster's ground resolution) is used, else the defaults; ``tile_size`` or ``overlap`` alone
    replaces that one value of it (``--tile``/``--overlap``).
    """
    from solardesk.config import parse
    from solardesk.core.pipeline import precompute
    from solardesk.core.vector import PANEL_FIELDS, VectorWriter, job_inputs, vector_format
    from solardesk.plugin_api import get_plugin_manager, resolve

    out = Path(out)
    clock = Clock()
    pm = plugin_manager or get_plugin_manager()
    stage = pm.get("solardesk_precompute_stages", stage_id)
    settings_model = parse(resolve(stage.settings), settings or {}, f"{stage_id} settings")
    thr = threshold if threshold is not None else getattr(settings_model, "threshold", 0.5)
    if tiling is None:
        given = {k: v for k, v in {"tile_size": tile_size, "overlap": overlap}.items()
                 if v is not None}  # fmt: skip

        def tiling_for(ground_gsd: float | None) -> TilingSettings:
            # Each raster's: a model's tile is scaled to the raster's ground resolution.
            found = recommended_tiling(stage, settings_model, ground_gsd) or TilingSettings()
            if not given:
                return found
            return parse(TilingSettings, {**found.model_dump(), **given}, "--tile/--overlap")

        tiling_for(None)  # a bad --tile/--overlap is refused before anything is opened
        tiling = tiling_for
    raster_settings = raster_settings or RasterSettings()

    # Creating (not opening) a writer checks the output before any work: a missing folder,
    # an existing file without --overwrite, an unknown extension, an input of the job (a
    # raster or what georeferences it, the AOI, the cache), which is never replaced. The
    # extension first: the default cache is named after the output.
    vector_format(out)
    cache_path = Path(cache_path) if cache_path else default_cache_path(out)
    from solardesk.core.raster import expand_rasters

    rasters = expand_rasters(rasters)  # (folders: the files they hold are inputs too)
    inputs = job_inputs(rasters, [aoi], cache_path)
    VectorWriter(out, "EPSG:4326", schema_fields=PANEL_FIELDS, overwrite=overwrite, inputs=inputs)

    job = precompute(
        rasters,
        cache_path,
        stage_id=stage_id,
        settings=settings,
        tiling=tiling,
        raster_settings=raster_settings,
        aoi=aoi,
        gsd=gsd,
        workers=workers,
        plugin_manager=pm,
        # Polygons need map coordinates: every raster is georeferenced, checked as it is
        # planned, before any tile is computed (a raster without a CRS beside georeferenced
        # ones was written in pixels).
        georeferenced_for="writing polygons",
    )
    left_out: TilesFailedError | None = None
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            pre = stop.value
            break
        except TilesFailedError as e:  # a damaged block: the other tiles still give panels
            pre, left_out = e.summary, e
            break
        yield Progress(p.done, p.total, clock(), f"detect: {p.message}", p.skipped, p.item)

    from solardesk.core.cache import MaskCache

    plans = pre.plans  # the pre-compute's (each raster once): no raster is opened twice
    with MaskCache(cache_path, readonly=True) as cache:
        crs0 = plans[0].info.crs
        meta = {
            "model_name": model_name or stage_id,
            "model_version": model_version or f"{__version__}/{stage.version}",
            "orthogonal": orthogonal,
        }
        n_tiles = sum(len(p.grid) for p in plans)
        done = 0
        panels = 0
        with VectorWriter(
            out, crs0, schema_fields=PANEL_FIELDS, overwrite=overwrite, inputs=inputs
        ) as writer:
            held: list[_Piece] = []
            for plan in plans:
                for batch in _pieces_of(cache, plan, stage_id, stage.version, thr):
                    whole = [pc for pc, on_seam in batch if not on_seam]
                    held.extend(pc for pc, on_seam in batch if on_seam)
                    panels += writer.write([_feature(pc, crs0, meta) for pc in whole])
                    done += 1
                    yield Progress(done, n_tiles, clock(), f"vectorise: {counted(panels, 'panel')}")
            panels += writer.write([_feature(pc, crs0, meta) for pc in _merge_held(held)])
            # the panels on seams are written last: the final count includes them
            yield Progress(done, n_tiles, clock(), f"vectorise: {counted(panels, 'panel')}")
    out = writer.path  # (as written: a shapefile's main file is .shp whatever case was asked)
    if left_out is not None:
        raise TilesFailedError(
            f"{left_out} The panels of every other tile ({counted(panels, 'panel')}) are in {out}."
        ) from left_out
    return DetectSummary(out, len(plans), n_tiles, panels, clock(), pre.computed, pre.skipped)


def _pieces_of(
    cache, plan, stage_id: str, stage_version, threshold: float
) -> Iterator[list[tuple[_Piece, bool]]]:
    """Per tile: its instances clipped to the tile core (a person's whole), as polygons,
    flagged when on a seam."""
    from affine import Affine

    from solardesk.core.geometry import instance_polygon

    info = plan.info
    drawn = _Drawn.of_raster(cache, plan, stage_id, stage_version, threshold)
    for tile in plan.grid:
        # People outrank the stage: an accepted instance is a panel at any confidence (and
        # hides the stage's look-alikes of it), a rejected one never is.
        # (Only those are read and decoded: most stored candidates lie below the threshold.)
        instances = cache.read_tile(
            info.fingerprint,
            tile.id,
            stage_id,
            str(stage_version),
            plan.params_hash,
            min_confidence=threshold,
            accepted_below=True,
        )
        core = tile.core
        cx0 = int(core.col_off) - tile.col_off
        cy0 = int(core.row_off) - tile.row_off
        cx1, cy1 = cx0 + int(core.width), cy0 + int(core.height)
        out = []
        for inst in instances:
            if inst.review == "rejected":
                continue
            x0, y0, x1, y1 = inst.bbox
            if inst.provenance == "human":
                # A person's outline is in this tile only: written whole, not cut to the core.
                ix0, iy0, ix1, iy1 = x0, y0, x1, y1
            elif drawn.covers(inst, tile.col_off, tile.row_off):
                continue  # a person's panel of another tile stands for it
            else:
                # Clip the instance to the core (in tile pixels).
                ix0, iy0, ix1, iy1 = max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            mask = inst.mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            if not mask.any():
                continue
            transform = tile.transform @ Affine.translation(ix0, iy0)
            # On a seam: touches a core edge that is not the raster's edge.
            on_seam = inst.provenance != "human" and bool(
                (ix0 == cx0 and core.col_off > 0 and mask[:, 0].any())
                or (iy0 == cy0 and core.row_off > 0 and mask[0, :].any())
                or (ix1 == cx1 and core.col_off + core.width < info.width and mask[:, -1].any())
                or (iy1 == cy1 and core.row_off + core.height < info.height and mask[-1, :].any())
            )
            # A seam piece keeps its pixel outline until it is merged with its neighbours:
            # simplified first, its vertices on the seam moved and the pieces of one panel no
            # longer met (a rotated panel across a seam came out as two or three polygons).
            poly = instance_polygon(
                np.ascontiguousarray(mask), transform, simplify_px=0.0 if on_seam else SIMPLIFY_PX
            )
            if poly is None:
                continue
            pixel = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
            piece = _Piece(poly, inst.confidence, tile.id, str(plan.path), info.crs, pixel)
            out.append((piece, on_seam))
        yield out


class _Drawn:
    """The panels people drew, redrew or split on one raster that this export writes
    (provenance "human", in a tile of this run's grid, accepted or at the threshold), in
    raster pixels: which computed instances they stand for across tiles. One the export does
    not write (a split part under the threshold, a tile of another grid or outside the AOI)
    hides nothing."""

    def __init__(self, boxes: np.ndarray, masks: list[np.ndarray]) -> None:
        self.boxes = boxes  # (n, 4) x0, y0, x1, y1 in raster pixels
        self.masks = masks

    @classmethod
    def of_raster(cls, cache, plan, stage_id: str, stage_version, threshold: float) -> _Drawn:
        boxes, masks = [], []
        grid = {t.id for t in plan.grid}
        for tile, inst in cache.iter_instances(
            provenance="human",
            review=("pending", "accepted"),
            raster_fp=plan.info.fingerprint,
            stage_id=stage_id,
            stage_version=str(stage_version),
            params_hash=plan.params_hash,
        ):
            if tile.tile_id not in grid:
                continue
            if inst.review != "accepted" and inst.confidence < threshold:
                continue
            x0, y0, x1, y1 = inst.bbox
            c, r = tile.window.col_off, tile.window.row_off
            boxes.append((x0 + c, y0 + r, x1 + c, y1 + r))
            masks.append(inst.mask)
        return cls(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), masks)

    def covers(self, inst, col_off: int, row_off: int) -> bool:
        """Whether the drawn panels together cover at least ``SUPERSEDE_SHARE`` of ``inst``
        (a computed instance of the tile at ``col_off, row_off``)."""
        if not self.masks:
            return False
        from solardesk.core.cache import _is_covered  # the cache's own rule (ADR 0046)

        x0, y0, x1, y1 = inst.bbox
        x0, x1, y0, y1 = x0 + col_off, x1 + col_off, y0 + row_off, y1 + row_off
        b = self.boxes
        near = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
        if near.size == 0:
            return False
        others = [(tuple(int(v) for v in b[k]), self.masks[k]) for k in near]
        return _is_covered((x0, y0, x1, y1), inst.mask, others)


def _merge_held(held: list[_Piece]) -> list[_Piece]:
    """Unite seam pieces that touch; a merged panel keeps the highest score of its pieces."""
    from solardesk.core.geometry import merge_touching, touching_groups

    if not held:
        return []
    # Pieces of different rasters never merge (their pixels are in different files).
    out = []
    by_raster: dict[str, list[_Piece]] = {}
    for pc in held:
        by_raster.setdefault(pc.raster, []).append(pc)
    for pieces in by_raster.values():
        for group in touching_groups([pc.polygon for pc in pieces]):
            members = [pieces[i] for i in group]
            # merge_touching snaps the few-ulp gaps that separate pieces along a seam.
            (geom,) = merge_touching([m.polygon for m in members])
            # Pieces meeting only at a corner are two panels (diagonal neighbours across a
            # seam's corner): each is written, with the best score of its own pieces.
            pixel = max(m.pixel for m in members)
            for part in getattr(geom, "geoms", [geom]):
                own = [m for m in members if m.polygon.intersection(part).area > m.polygon.area / 2]
                best = max(own or members, key=lambda m: m.score)
                # Simplified once whole, as the other panels were traced (stair steps off).
                simple = part.simplify(SIMPLIFY_PX * pixel, preserve_topology=True)
                if simple.is_valid and not simple.is_empty:
                    part = simple
                out.append(_Piece(part, best.score, best.tile_id, best.raster, best.crs, pixel))
    return out


def _feature(pc: _Piece, crs0: Any, meta: dict) -> tuple[Any, dict]:
    """A piece as a (geometry in the output CRS, attributes) pair."""
    from solardesk.core.geometry import orthogonalize, polygon_attributes, reproject_geometry

    geom = pc.polygon
    if meta["orthogonal"]:
        geom = orthogonalize(geom, preserve_area=True)
    if pc.crs is not None and crs0 is not None and str(pc.crs) != str(crs0):
        geom = reproject_geometry(geom, pc.crs, crs0)
    attrs = polygon_attributes(geom, crs0)
    props = {
        "score": round(float(pc.score), 4),
        "area_m2": attrs["area_m2"],
        "perimeter_m": attrs["perimeter_m"],
        "azimuth_deg": attrs["azimuth_deg"],
        "centroid_lon": attrs["centroid_lon"],
        "centroid_lat": attrs["centroid_lat"],
        "source_raster": Path(pc.raster).name,
        "tile_id": pc.tile_id,
        "model_name": meta["model_name"],
        "model_version": meta["model_version"],
    }
    return geom, props

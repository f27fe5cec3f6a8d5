"""The pre-compute job: run a per-tile stage over rasters into the mask cache, resumably.

The stage is a plugin contribution (:class:`~solardesk.plugin_api.PrecomputeStage`); the core
never imports it, it only passes its ``"module:attr"`` name to the worker processes, which
import it themselves. The parent process is the cache's only writer; workers read their own
windows. Tiles whose key (raster fingerprint, tile id, stage id, stage version, parameter
hash) is already in the cache are skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solardesk.config import RasterSettings, TilingSettings
from solardesk.core.jobs import Clock, Progress, counted, map_unordered
from solardesk.errors import (
    NotGeoreferencedError,
    NotGeoreferencedWarning,
    ResolutionError,
    SolarDeskError,
    SolarDeskWarning,
    TilesFailedError,
)

#: Read-time settings (confidence threshold...) never change what is computed: they are
#: marked ``json_schema_extra={"recompute": False}`` and left out of the cache key.
RECOMPUTE_FLAG = "recompute"
#: An opt-in setting added to a stage after its version was fixed, whose default computes what
#: that version computed, is marked ``json_schema_extra={"keyed": "when set"}``: it enters the
#: cache key only at another value, so adding it recomputes nothing that is cached (ADR 0004).
#: Changing such a setting's default means bumping the stage's version.
KEYED_FLAG, KEYED_WHEN_SET = "keyed", "when set"


@dataclass(frozen=True)
class TileTask:
    """Everything a worker needs for one tile: plain data, cheap to send to a process."""

    raster: str
    tile_id: str
    window: tuple[int, int, int, int]
    normalisation: Any
    gsd: float
    stage_target: str
    params: dict[str, Any]


@dataclass(frozen=True)
class TileOutcome:
    raster: str
    tile_id: str
    window: tuple[int, int, int, int]
    instances: list
    seconds: float
    #: The user-facing error that stopped this tile (e.g. a damaged block of the raster); its
    #: instances are then empty and nothing is stored for it.
    error: SolarDeskError | None = None


@dataclass
class RasterPlan:
    """One raster's share of a pre-compute run."""

    path: Path
    info: Any
    grid: Any
    normalisation: Any
    gsd: float
    params_hash: str
    todo: list = field(default_factory=list)
    #: Ids of the grid's tiles already stored under this plan's key.
    done: set = field(default_factory=set)

    def mark_done(self, cache: Any, stage_id: str, stage_version: int | str) -> None:
        """Split the grid into the tiles ``cache`` holds under this plan's key and the rest."""
        stored = cache.done_tile_ids(
            self.info.fingerprint, stage_id, str(stage_version), self.params_hash
        )
        self.todo = [t for t in self.grid if t.id not in stored]
        self.done = {t.id for t in self.grid if t.id in stored}


@dataclass(frozen=True)
class PrecomputeSummary:
    rasters: int
    tiles: int
    computed: int
    skipped: int
    instances: int
    seconds: float
    #: The run's plans, one per distinct raster (``detect`` vectorises with them).
    plans: tuple[RasterPlan, ...] = field(default=(), repr=False, compare=False)
    #: The stage's pseudo-label threshold as the run's settings gave it (its default when not
    #: set; None for a stage without one).
    threshold: float | None = None
    #: Worker processes the run used (1: in process).
    workers: int = 1

    @property
    def tiles_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Worker side (runs in the worker processes; one reader per raster per process and thread)
# --------------------------------------------------------------------------------------------
# Readers are per thread: in-process runs (one worker) may run on two GUI threads at once (a
# pre-compute and a detection), and a rasterio dataset must not be shared between threads.
_local = threading.local()
_stages: dict[str, Any] = {}


def _thread_readers() -> dict[tuple[str, Any], Any]:
    readers = getattr(_local, "readers", None)
    if readers is None:
        readers = _local.readers = {}
    return readers


def _init_worker(stage_initializer: str = "") -> None:
    """Run in each worker process before its first tile: the stage's own set-up.

    A raster without georeferencing is reported once, by the parent when it plans the job;
    a worker opening it again stays quiet (else each worker printed the warning a second
    time, raw, through the progress bar)."""
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    if stage_initializer:
        from solardesk.plugin_api import resolve

        resolve(stage_initializer)()


def run_tile(task: TileTask) -> TileOutcome:
    """Read one tile and run the stage on it (in a worker process or in-process)."""
    from rasterio.windows import Window

    from solardesk.core.raster import RasterReader
    from solardesk.plugin_api import resolve

    t0 = time.perf_counter()
    key = (task.raster, task.normalisation)
    readers = _thread_readers()
    reader = readers.get(key)
    if reader is None:
        reader = readers[key] = RasterReader(task.raster, normalisation=task.normalisation)
    fn = _stages.get(task.stage_target)
    if fn is None:
        fn = _stages[task.stage_target] = resolve(task.stage_target)
    rgb, valid = reader.read_rgb(Window(*task.window))
    instances = fn(rgb, valid, task.gsd, task.params) if valid.any() else []
    return TileOutcome(task.raster, task.tile_id, task.window, instances, time.perf_counter() - t0)


def run_tiles(tasks: Sequence[TileTask]) -> list[TileOutcome]:
    """Run a chunk of tiles in one worker call (fewer round trips to the pool).

    A tile that fails on bad input (a :class:`SolarDeskError`: a damaged block of the raster)
    comes back as an outcome carrying the error, so the chunk's other tiles are still stored
    and the run goes on; any other exception is a bug and stops the run."""
    out = []
    for t in tasks:
        try:
            out.append(run_tile(t))
        except SolarDeskError as e:
            out.append(TileOutcome(t.raster, t.tile_id, t.window, [], 0.0, error=e))
    return out


#: A worker process takes about a second to start (imports, the stage's set-up), the time of
#: 25-35 tiles of 512² at 0.15-0.3 m: a job gives a worker at least this many tiles.
MIN_TILES_PER_WORKER = 32


def auto_workers(n_tasks: int, cores: int | None = None) -> int:
    """Workers for a job of ``n_tasks`` tiles when the user does not say: one per available
    core (``cores``, default :func:`~solardesk.core.jobs.default_workers`), but no more than
    give each :data:`MIN_TILES_PER_WORKER` tiles; 1 (in process) for a small job."""
    from solardesk.core.jobs import default_workers

    cores = default_workers() if cores is None else cores
    return max(1, min(cores, n_tasks // MIN_TILES_PER_WORKER))


def auto_chunk_size(n_tasks: int, workers: int, most: int = 8) -> int:
    """Tiles per worker call: up to ``most``, keeping at least four chunks per worker so the
    last ones still balance across workers, and a cancel waits for at most one chunk."""
    return max(1, min(most, n_tasks // max(1, 4 * workers)))


def close_worker_readers() -> None:
    """Close the readers this thread opened (in-process runs call it when they end)."""
    readers = _thread_readers()
    for r in readers.values():
        r.close()
    readers.clear()


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Worker processes get one BLAS/OpenMP thread each: the pool is the parallelism."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for n, v in old.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------
def stage_params(settings_model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(all settings, the part that changes what is computed)`` of a settings model: every
    setting but the read-time ones (:data:`RECOMPUTE_FLAG`), and but those marked
    :data:`KEYED_WHEN_SET` while they hold their default."""
    data = settings_model.model_dump(mode="json")
    keyed = {}
    for name, f in type(settings_model).model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if not extra.get(RECOMPUTE_FLAG, True):
            continue
        if extra.get(KEYED_FLAG) == KEYED_WHEN_SET and data[name] == f.get_default(
            call_default_factory=True
        ):
            continue
        keyed[name] = data[name]
    return data, keyed


def plan_raster(
    path: str | Path,
    *,
    stage_id: str,
    keyed_params: dict[str, Any],
    tiling: TilingSettings | Callable[[float], TilingSettings],
    raster_settings: RasterSettings,
    aoi_path: str | Path | None = None,
    gsd: float | None = None,
    max_gsd_m: float = 0.0,
    georeferenced_for: str | None = None,
) -> RasterPlan:
    """Describe, tile and key one raster (:meth:`RasterPlan.mark_done` then lists the tiles
    still to compute).

    ``max_gsd_m``: the stage's coarsest ground resolution (0: none); a coarser raster raises
    :class:`ResolutionError` before anything is computed. ``georeferenced_for``: what the
    caller needs map coordinates for (``"writing polygons"``); a raster without a CRS then
    raises :class:`NotGeoreferencedError` before anything is computed, ``--gsd`` or not."""
    from solardesk.core.aoi import load_aoi
    from solardesk.core.cache import hash_params
    from solardesk.core.raster import describe_dataset, estimate_normalisation, open_raster
    from solardesk.core.tiling import make_grid

    with open_raster(path) as ds:
        info = describe_dataset(ds)
        norm = estimate_normalisation(
            ds, raster_settings.bands, (raster_settings.stretch_low, raster_settings.stretch_high)
        )
    if georeferenced_for:
        info.require_georeferenced(georeferenced_for)
    ground = gsd if gsd is not None else info.ground_resolution_m
    own = info.ground_resolution_m
    if gsd is not None and own is not None and abs(gsd / own - 1) > 0.05:
        warnings.warn(
            f"{path}: --gsd {gsd:g} m overrides the raster's own ground resolution "
            f"({own:.3g} m per pixel); leave --gsd out to use the raster's.",
            SolarDeskWarning,
            stacklevel=2,
        )
    if ground is None:
        raise NotGeoreferencedError(
            f"{path}: has no CRS, so its ground resolution is unknown; pass it with "
            "--gsd METRES (e.g. --gsd 0.3), or georeference the raster."
        )
    if max_gsd_m and ground > max_gsd_m:
        raise ResolutionError(
            f"{path}: {ground:.3g} m per pixel is too coarse for the '{stage_id}' stage, which"
            f" works at {max_gsd_m:g} m per pixel or finer (a panel array of a few m² must span"
            " several pixels). Use aerial or very-high-resolution satellite imagery of the area"
            " (if --gsd was given, check its value)."
        )
    aoi = load_aoi(aoi_path, info) if aoi_path else None
    if callable(tiling):  # the raster's own (a model's tile at this ground resolution)
        tiling = tiling(float(ground))
    tiling = fit_tiling(tiling, info.width, info.height)
    grid = make_grid(
        info.width,
        info.height,
        info.affine,
        tiling.tile_size,
        tiling.overlap,
        aoi=aoi,
        source=str(path),
    )
    # The stretch and the ground resolution change the input of every stage: part of the key.
    phash = hash_params({"params": keyed_params, "norm": norm.key(), "gsd": round(ground, 6)})
    return RasterPlan(Path(path), info, grid, norm, float(ground), phash, list(grid))


def fit_tiling(tiling: TilingSettings, width: int, height: int) -> TilingSettings:
    """``tiling``, or for a raster narrower than its tile (a chip of a dataset, a small scene)
    tiles as wide as the raster's shorter side, overlapping by at most an eighth of that: a
    raster of 256 × 256 px is one tile of 256 px. A raster under the smallest tile
    (``MIN_TILE_PX``) is left as it is, for :func:`~solardesk.core.tiling.make_grid` to
    refuse."""
    from solardesk.core.tiling import MIN_TILE_PX

    side = min(width, height)
    if tiling.tile_size <= side or side < MIN_TILE_PX:
        return tiling
    return TilingSettings(tile_size=side, overlap=min(tiling.overlap, side // 8))


def plan_rasters(
    rasters: Sequence[str | Path],
    *,
    stage: Any,
    keyed_params: dict[str, Any],
    tiling: TilingSettings | Callable[[float], TilingSettings],
    raster_settings: RasterSettings,
    aoi: str | Path | None,
    gsd: float | None,
    georeferenced_for: str | None = None,
) -> list[RasterPlan]:
    """:func:`plan_raster` for each raster of a run, each raster once: a second path with the
    same fingerprint (the same file twice, or a copy) is skipped, with a warning. A folder
    stands for the images in it (:func:`~solardesk.core.raster.expand_rasters`)."""
    from solardesk.core.raster import expand_rasters

    plans: list[RasterPlan] = []
    seen: dict[str, Path] = {}
    for path in expand_rasters(rasters):
        plan = plan_raster(
            path,
            stage_id=stage.id,
            keyed_params=keyed_params,
            tiling=tiling,
            raster_settings=raster_settings,
            aoi_path=aoi,
            gsd=gsd,
            max_gsd_m=stage.max_gsd_m,
            georeferenced_for=georeferenced_for,
        )
        fp = plan.info.fingerprint
        if fp in seen:
            warnings.warn(
                f"{path}: the same raster as {seen[fp]} (equal fingerprints); its tiles are "
                "computed once.",
                SolarDeskWarning,
                stacklevel=3,
            )
            continue
        seen[fp] = plan.path
        plans.append(plan)
    return plans


def precompute(
    rasters: Sequence[str | Path],
    cache_path: str | Path,
    *,
    stage_id: str = "spectral",
    settings: dict[str, Any] | None = None,
    tiling: TilingSettings | Callable[[float], TilingSettings] | None = None,
    raster_settings: RasterSettings | None = None,
    aoi: str | Path | None = None,
    gsd: float | None = None,
    workers: int | None = 1,
    plugin_manager=None,
    flush_every_s: float = 0.5,
    chunk_size: int | None = None,
    georeferenced_for: str | None = None,
) -> Generator[Progress, None, PrecomputeSummary]:
    """Run the pre-compute stage ``stage_id`` over ``rasters`` into the cache at ``cache_path``.

    A generator (DESIGN.md §4): it yields a :class:`Progress` per finished tile and returns a
    :class:`PrecomputeSummary`. Results are committed at least every ``flush_every_s``
    seconds, each tile atomically; closing the generator (cancel, Ctrl-C) commits what has
    finished and stops the workers. A rerun computes only the tiles not in the cache. A tile
    that cannot be computed for bad input (a damaged block of the raster) is left out and the
    run goes on; at its end, after every other tile is stored, :class:`TilesFailedError`
    names the tiles left out and the first reason.

    With ``workers > 1`` each worker task is a chunk of ``chunk_size`` tiles (default
    :func:`auto_chunk_size`): one round trip to the pool per chunk instead of per tile took
    two-worker scaling from 1.77× to 1.84–2.0× one worker (benchmarks/bench_precompute.py).
    ``workers=None`` chooses by the tiles left to compute (:func:`auto_workers`) for a stage
    marked ``parallel``, else runs in process; the summary says how many ran.
    ``georeferenced_for``: see :func:`plan_raster` (``detect`` writes polygons).
    ``tiling`` may be a callable of a raster's ground resolution, asked once per raster.
    """
    from solardesk.config import parse
    from solardesk.core.cache import MaskCache, TileKey, TileResult
    from solardesk.plugin_api import get_plugin_manager, resolve

    pm = plugin_manager or get_plugin_manager()
    stage = pm.get("solardesk_precompute_stages", stage_id)
    settings_model = parse(resolve(stage.settings), settings or {}, f"{stage_id} settings")
    all_params, keyed = stage_params(settings_model)
    tiling = tiling or TilingSettings()
    raster_settings = raster_settings or RasterSettings()
    clock = Clock()

    # Every raster is planned (and bad input refused) before the cache is opened: a run that
    # fails there leaves no cache file behind.
    plans = plan_rasters(
        rasters,
        stage=stage,
        keyed_params=keyed,
        tiling=tiling,
        raster_settings=raster_settings,
        aoi=aoi,
        gsd=gsd,
        georeferenced_for=georeferenced_for,
    )

    with MaskCache(cache_path) as cache:
        for plan in plans:
            plan.mark_done(cache, stage_id, stage.version)
            cache.put_raster_info(plan.info)
            # Tiles already stored under this key become current again (a rerun with earlier
            # parameters shows their results, not the later ones').
            cache.choose(
                plan.info.fingerprint, stage_id, str(stage.version), plan.params_hash, plan.done
            )
        total = sum(len(p.grid) for p in plans)
        skipped = total - sum(len(p.todo) for p in plans)
        plan_of = {str(p.path): p for p in plans}
        tasks = [
            TileTask(
                raster=str(plan.path),
                tile_id=t.id,
                window=(t.col_off, t.row_off, t.width, t.height),
                normalisation=plan.normalisation,
                gsd=plan.gsd,
                stage_target=stage.target,
                params=all_params,
            )
            for plan in plans
            for t in plan.todo
        ]
        if workers is None:  # (one process per core only for a stage that wants it)
            workers = auto_workers(len(tasks)) if stage.parallel else 1
        done = skipped
        n_instances = 0
        yield Progress(done, total, clock(), "starting", skipped=skipped)
        buffer: list = []
        last_flush = time.perf_counter()

        def flush() -> None:
            nonlocal last_flush
            if buffer:
                cache.write_tiles(list(buffer))
                buffer.clear()
            last_flush = time.perf_counter()

        def outcomes() -> Iterator[TileOutcome]:
            k = 1 if workers <= 1 else chunk_size or auto_chunk_size(len(tasks), workers)
            chunks = [tasks[i : i + k] for i in range(0, len(tasks), k)]
            with _single_threaded_children():
                results = map_unordered(
                    run_tiles,
                    chunks,
                    workers=workers,
                    initializer=_init_worker,
                    initargs=(stage.initializer,),
                )
                try:
                    for chunk in results:
                        yield from chunk
                finally:
                    results.close()
                    if workers <= 1:
                        close_worker_readers()

        failed: list[TileOutcome] = []
        stream = outcomes()
        try:
            for out in stream:
                plan = plan_of[out.raster]
                if out.error is not None:
                    failed.append(out)
                    yield Progress(
                        done,
                        total,
                        clock(),
                        f"{counted(n_instances, 'candidate')}; tile {out.tile_id} of "
                        f"{plan.path.name} left out: {out.error}",
                        skipped=skipped,
                    )
                    continue
                key = TileKey(
                    plan.info.fingerprint,
                    out.tile_id,
                    stage_id,
                    str(stage.version),
                    plan.params_hash,
                )
                buffer.append(TileResult(key, out.window, out.instances))
                done += 1
                n_instances += len(out.instances)
                if len(buffer) >= 64 or time.perf_counter() - last_flush >= flush_every_s:
                    flush()
                yield Progress(
                    done,
                    total,
                    clock(),
                    counted(n_instances, "candidate"),
                    skipped=skipped,
                    item=out.tile_id,
                    extra={"raster": str(plan.path), "instances": len(out.instances)},
                )
        finally:
            stream.close()
            flush()
    threshold = getattr(settings_model, "threshold", None)
    summary = PrecomputeSummary(
        len(plans),
        total,
        done - skipped,
        skipped,
        n_instances,
        clock(),
        tuple(plans),
        None if threshold is None else float(threshold),
        max(1, workers or 1),
    )
    if failed:
        rasters_hit = sorted({Path(f.raster).name for f in failed})
        err = TilesFailedError(
            f"{len(failed)} of {total} tiles could not be computed ({', '.join(rasters_hit)}); "
            f"the other {done} are in {cache_path}, and a rerun computes only what is missing. "
            f"First reason, tile {failed[0].tile_id}: {failed[0].error}"
        )
        err.summary = summary  # what was done: a caller may go on with the stored tiles
        raise err
    return summary

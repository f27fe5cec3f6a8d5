"""The ``solardesk`` command line: every step of the pipeline, headless.

The commands call the same core functions and plugin contributions as the GUI. Errors a
user can cause (:class:`SolarDeskError`) are printed as one clear message with exit code 2;
anything else prints a one-line internal error unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

from solardesk import __version__
from solardesk.errors import SolarDeskError, SolarDeskWarning

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


class SolarDeskGroup(click.Group):
    """A click group that turns SolarDesk errors into clean messages."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except SolarDeskError as e:
            if debug:
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # its reader stopped reading (`... | head`): quietly, as Unix
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except KeyboardInterrupt as e:
            from solardesk.core.jobs import Terminated

            stopped = isinstance(e, Terminated)
            what = "Terminated" if stopped else "Interrupted"
            click.echo(f"{what}; finished work is kept and a rerun resumes.", err=True)
            ctx.exit(143 if stopped else 130)
        except Exception as e:
            if debug:
                raise
            click.echo(
                f"Internal error: {type(e).__name__}: {e}\n"
                "This is a bug in SolarDesk; rerun with --debug and report the traceback.",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL_ERROR)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SolarDeskWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _orig_showwarning(message, category, filename, lineno, file, line)


_orig_showwarning = warnings.showwarning


@click.group(cls=SolarDeskGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="solardesk")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """SolarDesk maps solar panels on aerial imagery without hand-made labels.

    Run `solardesk COMMAND --help` for the help of one command.
    """
    warnings.showwarning = _show_warning


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def info(rasters: tuple[Path, ...], as_json: bool) -> None:
    """Describe RASTER: size, bands, CRS, transform, nodata and true ground resolution.

    Several RASTERS, a folder of them or a quoted pattern ('tiles/**/*.tif') are listed one
    line each (JSON: a list), with a summary of their CRSs and ground resolutions: a quick
    check of a delivery before a run.
    """
    from solardesk.core.raster import describe, expand_rasters

    if len(rasters) > 1 or not rasters[0].is_file():  # (a folder, a pattern)
        _info_table([describe(r) for r in expand_rasters(rasters)], as_json)
        return
    facts = describe(rasters[0])
    if as_json:
        click.echo(json.dumps(facts.to_dict(), indent=2))
        return
    gsd = facts.ground_resolution_xy_m
    rows = [
        ("file", facts.path),
        ("driver", facts.driver),
        ("size", f"{facts.width} × {facts.height} px, {facts.count} band(s)"),
        ("data type", ", ".join(sorted(set(facts.dtypes)))),
        ("nodata", "none" if facts.nodata is None else f"{facts.nodata:g}"),
        ("CRS", f"{facts.crs} ({facts.crs_name})" if facts.crs else "none (pixel coordinates)"),
        (
            "pixel size",
            f"{facts.pixel_size[0]:.6g} × {facts.pixel_size[1]:.6g} {facts.crs_units or 'units'}",
        ),
        (
            "ground resolution",
            f"{facts.ground_resolution_m:.4f} m  (x {gsd[0]:.4f} m, y {gsd[1]:.4f} m)"
            if gsd
            else "unknown (no CRS)",
        ),
        ("bounds", ", ".join(f"{v:.6f}" for v in facts.bounds)),
        ("overviews", ", ".join(map(str, facts.overviews)) or "none"),
        ("block", f"{facts.block_shape[1]} × {facts.block_shape[0]}"),
        ("fingerprint", facts.fingerprint),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _info_table(all_facts: list, as_json: bool) -> None:
    """One line per raster, then what they share and where they differ."""
    from solardesk.core.jobs import counted

    if as_json:
        click.echo(json.dumps([f.to_dict() for f in all_facts], indent=2))
        return

    def crs(f) -> str:  # (a CRS without a code is written as WKT: too long for a column)
        if not f.crs:
            return "none"
        return f.crs if len(f.crs) <= 24 else f"{(f.crs_name or 'custom')[:24]} (WKT)"

    rows = [("file", "size (px)", "bands", "type", "CRS", "m/px")]
    for f in all_facts:
        rows.append(
            (
                Path(f.path).name,
                f"{f.width} × {f.height}",
                str(f.count),
                ",".join(sorted(set(f.dtypes))),
                crs(f),
                f"{f.ground_resolution_m:.4f}" if f.ground_resolution_m else "unknown",
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    crss = sorted({crs(f) for f in all_facts})
    gsds = [f.ground_resolution_m for f in all_facts if f.ground_resolution_m]
    spread = f"{min(gsds):.4f}–{max(gsds):.4f} m" if gsds else "unknown"
    click.echo(
        f"{counted(len(all_facts), 'raster')}; CRS {', '.join(crss)}; ground resolution {spread}"
    )


# --------------------------------------------------------------------------------------------
# tiles
# --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("raster", type=click.Path(path_type=Path))
@click.option("--tile", "tile_size", default=512, show_default=True, help="Tile size in pixels.")
@click.option("--overlap", default=64, show_default=True, help="Overlap in pixels.")
@click.option(
    "--aoi",
    type=click.Path(path_type=Path),
    help="Keep tiles touching this polygon file (GeoJSON, GPKG, SHP; any CRS).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write the tile footprints (with ids and windows) to this vector file.",
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def tiles(
    raster: Path, tile_size: int, overlap: int, aoi: Path | None, out: Path | None, overwrite: bool
) -> None:
    """Tile RASTER into overlapping windows and report the grid (and footprints with --out)."""
    from solardesk.config import TilingSettings, parse
    from solardesk.core.aoi import load_aoi
    from solardesk.core.jobs import counted
    from solardesk.core.pipeline import fit_tiling
    from solardesk.core.raster import describe
    from solardesk.core.tiling import make_grid

    facts = describe(raster)
    aoi_geom = load_aoi(aoi, facts) if aoi else None
    # The grid the pre-compute would use: a raster narrower than the tile is tiled at its size.
    asked = parse(TilingSettings, {"tile_size": tile_size, "overlap": overlap}, "--tile/--overlap")
    fitted = fit_tiling(asked, facts.width, facts.height)
    tile_size, overlap = fitted.tile_size, fitted.overlap
    grid = make_grid(
        facts.width,
        facts.height,
        facts.affine,
        tile_size,
        overlap,
        aoi=aoi_geom,
        source=str(raster),
    )
    n_rows = len({t.row for t in grid})
    n_cols = len({t.col for t in grid})
    click.echo(
        f"{raster}: {facts.width} × {facts.height} px → {counted(len(grid), 'tile')} of "
        f"{tile_size} px with {overlap} px overlap ({counted(n_rows, 'row')} × "
        f"{counted(n_cols, 'column')}"
        f"{', AOI applied' if aoi else ''})"
    )
    if out:
        from solardesk.core.vector import job_inputs

        _write_footprints(grid, facts, out, overwrite, job_inputs([raster], [aoi]))
        click.echo(f"footprints written to {out}")


def _write_footprints(grid, facts, out: Path, overwrite: bool, inputs: list[Path]) -> None:
    from solardesk.core.tiling import tile_footprint
    from solardesk.core.vector import VectorWriter

    fields = {
        "tile_id": str,
        "row": int,
        "col": int,
        "col_off": int,
        "row_off": int,
        "width": int,
        "height": int,
    }
    crs = facts.crs
    if crs is None:
        facts.require_georeferenced("writing tile footprints")
    with VectorWriter(
        out, crs, schema_fields=fields, overwrite=overwrite, layer="tiles", inputs=inputs
    ) as w:
        w.write(
            [
                (
                    tile_footprint(t),
                    {
                        "tile_id": t.id,
                        "row": t.row,
                        "col": t.col,
                        "col_off": t.col_off,
                        "row_off": t.row_off,
                        "width": t.width,
                        "height": t.height,
                    },
                )
                for t in grid
            ]
        )


# --------------------------------------------------------------------------------------------
# plugins
# --------------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plugin records as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins: loaded, failed (with the error) or disabled."""
    from dataclasses import asdict

    from solardesk.plugin_api import get_plugin_manager

    pm = get_plugin_manager()
    if as_json:
        click.echo(json.dumps([asdict(r) | {"status": r.status} for r in pm.records], indent=2))
        return
    if not pm.records:
        click.echo("no plugins installed")
    for r in pm.records:
        version = f" {r.version}" if r.version else ""
        line = f"{r.status:<8} {r.name} ({r.value}{version})"
        if r.error:
            line += f"\n         {r.error}"
        click.echo(line)


# --------------------------------------------------------------------------------------------
# precompute
# --------------------------------------------------------------------------------------------
def _check_gsd(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(
            f"{value} is not a ground resolution; give the metres per pixel, e.g. --gsd 0.3"
        )
    return value


_gsd_option = click.option(
    "--gsd",
    type=float,
    callback=_check_gsd,
    help="Ground resolution in metres per pixel, for rasters without a CRS (it overrides a "
    "raster's own).",
)


def _parse_bands(value: str | None) -> list[int] | None:
    """``--bands 3,2,1`` as a list of band numbers (None when not given)."""
    if not value:
        return None
    try:
        bands = [int(b) for b in value.split(",")]
    except ValueError:
        bands = []
    if len(bands) != 3:
        raise click.BadParameter(
            f"'{value}' is not three band numbers; give the bands read as red, green and blue, "
            "separated by commas, e.g. 3,2,1",
            param_hint="--bands",
        )
    return bands


def _parse_stretch(value: str | None) -> dict:
    """``--stretch 1,99`` as the raster settings' stretch percentiles (empty when not given)."""
    if not value:
        return {}
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"'{value}' is not two percentiles; give the low and the high percentile of the "
            "stretch, separated by a comma, e.g. 2,98",
            param_hint="--stretch",
        ) from None
    return {"stretch_low": low, "stretch_high": high}


_stretch_option = click.option(
    "--stretch",
    metavar="LOW,HIGH",
    help="Percentiles of the per-band stretch of 16-bit and float rasters (default 2,98).",
)


def _raster_settings(bands: str | None, stretch: str | None):
    """The raster settings of ``--bands`` and ``--stretch`` (ConfigError names a bad one)."""
    from solardesk.config import RasterSettings, parse

    return parse(
        RasterSettings,
        {"bands": _parse_bands(bands), **_parse_stretch(stretch)},
        "--bands/--stretch",
    )


def _parse_set(values: tuple[str, ...]) -> dict:
    out = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--set")
        try:
            out[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[name.strip()] = raw
    return out


class _Confidence(click.FloatRange):
    """A confidence: a number from 0 to 1 (click's range lets NaN through: refused here)."""

    name = "confidence"

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if math.isnan(rv):
            self.fail("must be a number from 0 to 1, not nan", param, ctx)
        return rv


#: A ``--threshold`` or ``--min-confidence``.
CONFIDENCE = _Confidence()

#: ``--workers`` of the commands that run a tile stage in a pool of processes.
_WORKERS = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes (1: in this process).",
)


class _Workers(click.ParamType):
    """``auto`` (None: one per core, at least 32 tiles each) or a number of workers ≥ 1."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value), 10)
            except ValueError:
                self.fail(f"{value!r} is not 'auto' nor a whole number of workers", param, ctx)
        if number < 1:
            self.fail(f"{number} is not in the range x>=1 (or 'auto')", param, ctx)
        return number


#: ``precompute --workers``: by default as many as the job can use on this machine.
_AUTO_WORKERS = click.option(
    "--workers",
    type=_Workers(),
    default="auto",
    show_default=True,
    help="Worker processes: a number (1: in this process), or auto: one per core, but at "
    "least 32 tiles each (a small job, or a stage that holds a model, runs in this process).",
)


@cli.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--cache",
    "cache_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The project's SQLite mask cache (created if missing).",
)
@_AUTO_WORKERS
@click.option(
    "--threshold",
    type=CONFIDENCE,
    default=None,
    help="Confidence of pseudo-labels (read-time: changing it recomputes nothing). [0.85]",
)
@click.option("--tile", "tile_size", default=512, show_default=True, help="Tile size in pixels.")
@click.option("--overlap", default=64, show_default=True, help="Overlap in pixels.")
@click.option(
    "--aoi", type=click.Path(path_type=Path), help="Only tiles touching this polygon file."
)
@click.option("--bands", help="1-based bands read as R,G,B, e.g. 4,3,2 (default 1,2,3).")
@_stretch_option
@_gsd_option
@click.option("--stage", "stage_id", default="spectral", show_default=True, help="Stage to run.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override one stage setting (repeatable), e.g. --set min_area_m2=4.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def precompute(
    rasters: tuple[Path, ...],
    cache_path: Path,
    workers: int | None,
    threshold: float | None,
    tile_size: int,
    overlap: int,
    aoi: Path | None,
    bands: str | None,
    stretch: str | None,
    gsd: float | None,
    stage_id: str,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Find candidate panels in RASTERS without labels and store them in the mask cache.

    Runs the spectral analyser on every tile in worker processes. Tiles already in the cache
    with the same parameters are skipped, so an interrupted run resumes where it stopped.
    A RASTER may be a folder: the images directly inside it (.tif, .jpg with a world file,
    .vrt...); world files and other sidecars named among RASTERS are left out. A quoted
    pattern ('tiles/**/*.tif') stands for the images it matches, in folders at any depth.
    """
    from solardesk.config import TilingSettings, parse
    from solardesk.core.cache import MaskCache
    from solardesk.core.jobs import drive
    from solardesk.core.pipeline import precompute as job

    settings = _parse_set(overrides)
    if threshold is not None:
        settings["threshold"] = threshold
    tiling = parse(TilingSettings, {"tile_size": tile_size, "overlap": overlap}, "--tile/--overlap")
    raster_settings = _raster_settings(bands, stretch)
    summary = drive(
        job(
            rasters,
            cache_path,
            stage_id=stage_id,
            settings=settings,
            tiling=tiling,
            raster_settings=raster_settings,
            aoi=aoi,
            gsd=gsd,
            workers=workers,
        ),
        show=not quiet,
        label="precompute",
    )
    from solardesk.core.jobs import counted

    where = "in process" if summary.workers == 1 else f"{summary.workers} workers"
    click.echo(
        f"{counted(summary.computed, 'tile')} computed, {summary.skipped} already cached, "
        f"{counted(summary.instances, 'candidate')} in {summary.seconds:.1f} s "
        f"({summary.tiles_per_second:.1f} tiles/s, {where})"
    )
    thr = 0.85 if summary.threshold is None else summary.threshold
    with MaskCache(cache_path, readonly=True) as cache:
        st = cache.stats(threshold=thr, objects=True)
    click.echo(
        f"cache {cache_path}: {counted(st['tiles'], 'tile')}, "
        f"{counted(st['instances'], 'candidate')}, "
        f"{counted(st['instances_above_threshold'], 'pseudo-label')} at confidence >= {thr} "
        f"({_objects(st)})"
    )


def _objects(st: dict) -> str:
    """What the pseudo-labels of ``stats(objects=True)`` are as objects, in words."""
    from solardesk.core.jobs import counted

    n = st["objects_above_threshold"]
    if n == st["instances_above_threshold"]:
        return counted(n, "object")
    return f"{counted(n, 'object')}: one in the overlap of tiles is stored in each"


# --------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output vector file: .gpkg (GeoPackage), .shp (Shapefile) or .geojson (EPSG:4326).",
)
@click.option("--spectral", is_flag=True, help="Use the spectral analyser (no model needed).")
@click.option(
    "--model", type=click.Path(path_type=Path), help="An ONNX model exported by SolarDesk."
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    help="Mask cache to fill and reuse (default: a hidden file beside --out, so reruns resume).",
)
@click.option("--threshold", type=CONFIDENCE, help="Keep panels at or above this confidence.")
@_WORKERS
@click.option(
    "--tile",
    "tile_size",
    type=int,
    help="Tile size in pixels. Default: the model's own (from its metadata), else 512.",
)
@click.option("--overlap", type=int, help="Overlap in pixels. Default: the model's own, else 64.")
@click.option(
    "--aoi", type=click.Path(path_type=Path), help="Only tiles touching this polygon file."
)
@click.option("--bands", help="1-based bands read as R,G,B, e.g. 4,3,2 (default 1,2,3).")
@_stretch_option
@_gsd_option
@click.option("--orthogonal", is_flag=True, help="Square panel outlines into rectangles.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override one detector setting (repeatable).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def detect(
    rasters: tuple[Path, ...],
    out: Path,
    spectral: bool,
    model: Path | None,
    cache_path: Path | None,
    threshold: float | None,
    workers: int,
    tile_size: int | None,
    overlap: int | None,
    aoi: Path | None,
    bands: str | None,
    stretch: str | None,
    gsd: float | None,
    orthogonal: bool,
    overwrite: bool,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Detect solar panels on RASTERS and write them as georeferenced polygons to --out.

    Each polygon carries score, area_m2 (true ground area whatever the CRS), perimeter_m,
    azimuth_deg, centroid lon/lat, source raster, tile id, model name and version. An
    interrupted run resumes: finished tiles are kept in the mask cache. A RASTER may be a
    folder of images, as for precompute.
    """
    from solardesk.core.detect import detect as job
    from solardesk.core.jobs import drive
    from solardesk.errors import ConfigError

    if spectral == (model is not None):
        raise ConfigError("choose one detector: --spectral, or --model MODEL.onnx.")
    settings = _parse_set(overrides)
    model_name = model_version = None
    if model is not None:
        stage_id = "onnx"
        settings["model"] = str(model)
        if model.is_file():  # (a missing or bad file is the stage's to report, clearly)
            from solardesk.plugin_api import resolve

            with contextlib.suppress(SolarDeskError, OSError):
                # the polygons name their model: its file's stem, its content hash and epoch
                identity = resolve("solardesk_onnx.metadata:model_identity")
                model_name, model_version = identity(model)
    else:
        stage_id = "spectral"
    raster_settings = _raster_settings(bands, stretch)
    summary = drive(
        job(
            rasters,
            out,
            stage_id=stage_id,
            settings=settings,
            cache_path=cache_path,
            # the detector's own tiling (a model's), else the defaults; either value given
            # replaces that one
            tile_size=tile_size,
            overlap=overlap,
            raster_settings=raster_settings,
            aoi=aoi,
            gsd=gsd,
            workers=workers,
            threshold=threshold,
            overwrite=overwrite,
            orthogonal=orthogonal,
            model_name=model_name,
            model_version=model_version,
        ),
        show=not quiet,
        label="detect",
    )
    from solardesk.core.jobs import counted

    click.echo(
        f"{counted(summary.panels, 'panel')} from {counted(summary.tiles, 'tile')} of "
        f"{counted(summary.rasters, 'raster')} written to {summary.out} in "
        f"{summary.seconds:.1f} s ({counted(summary.computed_tiles, 'tile')} computed, "
        f"{summary.skipped_tiles} reused)"
    )


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
@cli.group()
def cache() -> None:
    """Inspect and export a project's SQLite mask cache."""


@cache.command("stats")
@click.argument("cache_path", type=click.Path(path_type=Path))
@click.option(
    "--threshold", default=0.85, show_default=True, type=CONFIDENCE, help="Pseudo-label confidence."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def cache_stats(cache_path: Path, threshold: float, as_json: bool) -> None:
    """Tiles, candidates, pseudo-labels above a threshold and size on disk of CACHE_PATH."""
    from solardesk.core.cache import MaskCache
    from solardesk.core.jobs import counted

    _require_file(cache_path, "cache")
    with MaskCache(cache_path, readonly=True) as c:
        st = c.stats(threshold=threshold, objects=True)
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    rows = [
        ("tiles", st["tiles"]),
        ("candidates", st["instances"]),
        (f"pseudo-labels (>= {threshold})", f"{st['instances_above_threshold']} ({_objects(st)})"),
        ("tiles with a pseudo-label", f"{st['share_tiles_above_threshold']:.1%}"),
        ("rasters", st["rasters"]),
        ("review", ", ".join(f"{k} {v}" for k, v in st["by_review"].items()) or "-"),
        ("provenance", ", ".join(f"{k} {v}" for k, v in st["by_provenance"].items()) or "-"),
        ("size on disk", f"{st['size_bytes'] / 1e6:.2f} MB"),
    ]
    earlier = st["earlier_runs"]
    if earlier["tile_rows"]:
        rows.append(
            (
                "earlier runs",
                f"{counted(earlier['tile_rows'], 'tile row')}, "
                f"{counted(earlier['instances'], 'candidate')} of other parameters, kept so "
                "that going back to them computes nothing (`solardesk cache prune` deletes them)",
            )
        )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


@cache.command("prune")
@click.argument("cache_path", type=click.Path(path_type=Path))
def cache_prune(cache_path: Path) -> None:
    """Delete the results of earlier runs from CACHE_PATH and give their space back.

    A run with other parameters (or a newer stage version) keeps the rows of the runs before
    it, so that going back to those parameters computes nothing. This deletes them: for each
    tile and stage only the row of the last run stays, with every review decision and drawn
    panel. What the map, `cache stats`, training and export see does not change.
    """
    from solardesk.core.cache import MaskCache
    from solardesk.core.jobs import counted

    _require_file(cache_path, "cache")
    with MaskCache(cache_path) as c:
        r = c.prune()
    done = (
        f"{cache_path}: deleted {counted(r.tile_rows, 'tile row')} and "
        f"{counted(r.instances, 'candidate')} of earlier runs; "
    )
    if r.compacted:
        click.echo(done + f"{r.bytes_before / 1e6:.2f} MB → {r.bytes_after / 1e6:.2f} MB")
    else:
        click.echo(
            done + "another program (the desktop app?) has the cache open, so the file "
            "shrinks when it closes it, or at the next `solardesk cache prune`."
        )


@cache.command("export-coco")
@click.argument("cache_path", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--threshold", default=0.85, show_default=True, type=CONFIDENCE, help="Pseudo-label confidence."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (never the cache).")
def cache_export_coco(cache_path: Path, out: Path, threshold: float, overwrite: bool) -> None:
    """Write the pseudo-labels of CACHE_PATH as a COCO instances JSON file OUT."""
    from solardesk.core.cache import MaskCache

    _require_file(cache_path, "cache")
    with MaskCache(cache_path, readonly=True) as c:
        res = c.export_coco(out, threshold=threshold, overwrite=overwrite)
    click.echo(f"{out}: {res['images']} images, {res['annotations']} annotations")


@cache.command("instances")
@click.argument("cache_path", type=click.Path(path_type=Path))
@click.option(
    "--min-confidence",
    default=0.0,
    show_default=True,
    type=CONFIDENCE,
    help="Only candidates at least this.",
)
@click.option(
    "--review",
    "states",
    multiple=True,
    type=click.Choice(["pending", "accepted", "rejected"]),
    help="Only this review state (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def cache_instances(
    cache_path: Path, min_confidence: float, states: tuple[str, ...], as_json: bool
) -> None:
    """List the candidates CACHE_PATH shows (ids for `solardesk cache review`), by id."""
    from solardesk.core.cache import MaskCache

    _require_file(cache_path, "cache")
    with MaskCache(cache_path, readonly=True) as c, _quiet_on_closed_pipe():
        rows = c.iter_instances(min_confidence=min_confidence, review=states or None)
        if not as_json:
            click.echo(
                f"{'id':>8}  {'confidence':>10}  {'review':<8}  {'source':<8}  {'px':>7}  tile"
            )
        for tile, inst in rows:
            x0, y0, x1, y1 = inst.bbox
            rec = {
                "id": inst.id,
                "raster": tile.raster_fp,
                "tile": tile.tile_id,
                "confidence": round(inst.confidence, 4),
                "review": inst.review,
                "provenance": inst.provenance,
                "area_px": inst.area_px,
                "bbox_raster_px": [
                    tile.window.col_off + x0,
                    tile.window.row_off + y0,
                    tile.window.col_off + x1,
                    tile.window.row_off + y1,
                ],
            }
            if as_json:
                click.echo(json.dumps(rec))
            else:
                click.echo(
                    f"{inst.id:>8}  {inst.confidence:>10.3f}  {inst.review:<8}  "
                    f"{inst.provenance:<8}  {inst.area_px:>7}  {tile.tile_id}"
                )


@cache.command("review")
@click.argument("cache_path", type=click.Path(path_type=Path))
@click.argument("state", type=click.Choice(["accepted", "rejected", "pending"]))
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(1, 2**63 - 1))
def cache_review(cache_path: Path, state: str, ids: tuple[int, ...]) -> None:
    """Set the review STATE of the instances IDS of CACHE_PATH, as the review dock does.

    A decision reaches the object's copies in the overlapping tiles (ADR 0047); `pending`
    undoes one. Only instances the cache shows (`solardesk cache instances`) can be set, and
    every id is checked before anything is changed.
    """
    from solardesk.core.cache import MaskCache
    from solardesk.errors import CacheError

    _require_file(cache_path, "cache")
    with MaskCache(cache_path) as c:
        missing = sorted(set(ids) - c.shown(ids))
        if missing:
            raise CacheError(
                f"{cache_path}: no instance {', '.join(map(str, missing))} among those the cache "
                "shows (unknown, hidden behind a decision, or of a row that is not current); "
                f"nothing was changed. `solardesk cache instances {cache_path}` lists the ids."
            )
        applied: list[int] = []
        done: set[int] = set()
        for iid in dict.fromkeys(ids):
            if iid in done or not c.shown([iid]):  # set, or hidden, by an earlier one
                continue
            try:
                got = c.set_review(iid, state)
            except KeyError as e:  # another program deleted it meanwhile
                raise CacheError(
                    f"{cache_path}: instance {iid} went away while this command ran (another "
                    f"program edits the cache?); set before it: {applied or 'none'}."
                ) from e
            applied.append(iid)
            done.update(got)
            n = len(got) - 1
            also = f" and {n} cop{'y' if n == 1 else 'ies'} in overlapping tiles" if n else ""
            click.echo(f"instance {iid}{also}: {state}")


def _require_file(path: Path, what: str) -> None:
    from solardesk.errors import CacheError

    if not path.exists():
        raise CacheError(f"{path}: no such {what} file. Run `solardesk precompute` first.")
    if path.is_file() and path.stat().st_size == 0:
        raise CacheError(f"{path}: the {what} file is empty. Run `solardesk precompute` first.")


@contextlib.contextmanager
def _quiet_on_closed_pipe() -> Iterator[None]:
    """A listing whose reader stopped reading (`... | head`) ends quietly with exit 141, as a
    Unix tool killed by SIGPIPE does, instead of an error."""
    try:
        yield
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # (no real stdout: nothing to silence)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


# --------------------------------------------------------------------------------------------
# gui
# --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def gui(paths: tuple[Path, ...]) -> None:
    """Open the desktop app, optionally with PATHS: a .json project file, rasters, folders of
    rasters, vector files or a mask cache (.sqlite), as when they are dropped on its window."""
    import importlib

    # Imported by name at call time: the command line itself never depends on Qt.
    try:
        gui_main = importlib.import_module("solardesk.gui.app").main
    except ImportError as e:
        from solardesk.errors import PluginError

        raise PluginError(
            f"the desktop app needs PySide6 ({e}). Install it with: pip install 'solardesk[gui]'"
        ) from e
    raise SystemExit(gui_main(paths))


def _add_plugin_commands() -> None:
    """Add click commands contributed by plugins; a broken one is reported, not fatal."""
    from solardesk.plugin_api import get_plugin_manager

    try:
        contributed = get_plugin_manager().contributions("solardesk_cli_commands")
    except Exception:  # the manager records failures; the core commands must still work
        return
    for plugin_name, contribution in contributed:
        if contribution.id in cli.commands:
            continue
        try:
            cli.add_command(contribution.load(), name=contribution.id)
        except Exception as e:
            click.echo(f"Warning: plugin {plugin_name}: command {contribution.id}: {e}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _add_plugin_commands()
    cli.main(args=argv, prog_name="solardesk")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

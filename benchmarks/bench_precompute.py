"""Speed of the whole pre-compute per 512² tile, against the reference, and two-worker scaling.

    python benchmarks/bench_precompute.py [--size 6144] [--gsd 0.15] [--reference-tiles 2]
        [--repeats 3] [--stages 16] [--set NAME=VALUE ...] [--baseline REV] [--raster PATH]

Writes a synthetic GeoTIFF (solardesk.synthetic) and runs `solardesk.core.pipeline.precompute`
on it (read, six channels, fusion, segmentation, scoring, cache write) with one worker
process and then two, each into a fresh cache, ``--repeats`` times alternately, and prints
the median tiles per second per core (and the range of the runs), timed in steady state: from
the moment every worker has returned its first chunk to the last tile (start-up and the pool's
shut-down are one-off costs of a job; ``steady_span``). On a few
tiles it also runs the straightforward reference implementation of the same maths
(tests/unit/_reference_spectral.py + tests/plugins/_reference_analyser.py) and prints its
time per tile, the speed-up, and the IoU between the fast and reference candidate masks.
Last, where the analysis spends its time: milliseconds per tile of each analyser stage on
``--stages`` tiles. Targets: ≥ 25 tiles/s per core, two workers ≥ 1.8× one, masks IoU ≥ 0.99.
It also prints the one-worker rate as ground covered (km² per hour per core).
``--set`` changes a stage setting for the timed runs and the stage times (e.g. ``--set
coarse_pass=true``: what ADR 0044's option costs); the reference comparison runs the same
settings but the coarser pass, which the oracle does not implement (e.g. ``--set
contrast_segmentation=true`` is compared mask for mask, ADR 0056).
``--baseline REV`` also times another version of the code (a git revision, checked out into a
temporary worktree) on the same raster, one worker, alternating with this tree run for run,
each in a fresh process, with the stage's default settings (``--set`` is not passed on: the
other version may not have the setting), and prints both rates and their ratio per round: this
VM's speed drifts by 10-20 % within an hour, so only alternated runs compare two versions.
``--raster PATH`` times real imagery instead of the synthetic scene: a raster the pre-compute
reads (its own ground resolution; ``--gsd`` where it has none), or a folder of image chips
(PNG, JPEG, TIFF), laid side by side in file-name order into one ``--size``² GeoTIFF at ``--gsd``
(their seams are edges no real scene has). The reference, the stage times and ``--baseline``
then run on its tiles too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: The sources to time: this tree, or (in a ``--baseline`` run's child process) the worktree
#: named by SOLARDESK_BENCH_SOURCES, whose solardesk and plugins then come first on the path.
SOURCES = Path(os.environ.get("SOLARDESK_BENCH_SOURCES", ROOT))
sys.path.insert(0, str(SOURCES))


#: Under this many tiles the two-worker scaling rests on few chunks (printed with it).
FEW_TILES = 64


#: Stage settings the oracle (tests/plugins/_reference_analyser.py) does not implement: the
#: reference comparison leaves them at their defaults.
NOT_IN_ORACLE = ("coarse_pass",)


def run(
    raster: Path,
    cache: Path,
    workers: int,
    tile: int,
    settings: dict | None = None,
    gsd: float | None = None,
) -> tuple[float, int]:
    """``(seconds, tiles)``: the tiles done in steady state and the time they took.

    Process start-up and imports, and the pool's shut-down after the last tile (0.36 s with
    two workers here: each process exits), are one-off costs per run, not per-tile ones: the
    clock starts when every worker has returned its first chunk of tiles (one tile in
    process) and stops at the last tile. Those first chunks are not counted: they were
    computed before the clock started."""
    from solardesk.config import TilingSettings
    from solardesk.core.pipeline import auto_chunk_size, precompute

    job = precompute(
        [raster],
        cache,
        workers=workers,
        tiling=TilingSettings(tile_size=tile, overlap=0),
        settings=settings,
        gsd=gsd,
    )
    stamps = []
    while True:
        try:
            p = next(job)
            if p.item is not None:
                stamps.append(time.perf_counter())
        except StopIteration as stop:
            summary = stop.value
            break
    assert len(stamps) == summary.computed
    chunk = 1 if workers <= 1 else auto_chunk_size(len(stamps), workers)
    return steady_span(stamps, workers, chunk)


def steady_span(stamps: list[float], workers: int, chunk: int) -> tuple[float, int]:
    """``(seconds, tiles)`` of a run whose tiles came back at ``stamps`` (in order), from
    the moment each of ``workers`` has returned its first ``chunk`` tiles to the last tile;
    the tiles that came back by then are not counted."""
    if len(stamps) < 2:
        raise SystemExit("the run has fewer than two tiles to time: choose a larger --size")
    start = min(max(1, workers) * chunk, len(stamps) - 1) - 1
    return stamps[-1] - stamps[start], len(stamps) - 1 - start


def _kernel_path() -> str:
    """Which path the analyser's per-label statistics take here (ADR 0037)."""
    from solardesk_spectral.channels import _compiled

    if _compiled("label_sums") is None:
        return "NumPy (numba not installed)"
    import numba

    return f"compiled (numba {numba.__version__})"


def ground_km2_per_hour(tiles_per_second: float, tile: int, gsd: float) -> float:
    """The ground a rate of ``tiles_per_second`` square tiles of ``tile`` pixels at ``gsd``
    metres covers, in km² per hour: what the speed means for a user's area, comparable across
    ground resolutions (a 0.3 m tile holds four times the ground of a 0.15 m one)."""
    return tiles_per_second * (tile * gsd) ** 2 * 3600 / 1e6


def _rate_in_child(raster: Path, tile: int, sources: Path, gsd: float | None = None) -> float:
    """One one-worker run of the code in ``sources`` (a checkout) in a fresh process
    (``gsd``: the ground resolution of a raster that has none)."""
    env = dict(os.environ, SOLARDESK_BENCH_SOURCES=str(sources))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(sources), str(sources / "plugins"), env.get("PYTHONPATH", "")]
    )
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--tile", str(tile), "--time-one-worker", str(raster)]
    if gsd is not None:
        command += ["--gsd", repr(gsd)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the run of {sources} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def compare_with(
    rev: str, raster: Path, tile: int, rounds: int, tmp: Path, gsd: float | None = None
) -> list[float]:
    """Time git revision ``rev`` against this tree, alternated, one worker, ``rounds`` rounds
    (each run in its own process, after one untimed run of each); print the rates and the
    ratios, and return the ratios (this tree over the baseline)."""
    base = tmp / "baseline"
    try:
        add = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), rev],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise SystemExit(f"--baseline {rev}: needs git, which is not installed") from None
    if add.returncode != 0:
        raise SystemExit(f"--baseline {rev}: git could not check it out: {add.stderr.strip()}")
    try:
        _rate_in_child(raster, tile, base, gsd)  # imports, file cache, numba's cache
        _rate_in_child(raster, tile, ROOT, gsd)
        ratios = []
        for k in range(rounds):
            old = _rate_in_child(raster, tile, base, gsd)
            new = _rate_in_child(raster, tile, ROOT, gsd)
            ratios.append(new / old)
            print(
                f"against {rev}, round {k + 1}: {old:.1f} → {new:.1f} tiles/s per core "
                f"({new / old:.3f}×)"
            )
        print(
            f"against {rev}: this tree {float(np.median(ratios)):.3f}× as fast (median of "
            f"{rounds} alternated rounds, {min(ratios):.3f}–{max(ratios):.3f})"
        )
        return ratios
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
            capture_output=True,
            check=False,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=6144)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument(
        "--gsd",
        type=float,
        default=None,
        help="Ground resolution in m (default 0.15): of the synthetic scene, of a folder's "
        "mosaic, of a raster that has none.",
    )
    ap.add_argument("--reference-tiles", type=int, default=2)
    ap.add_argument(
        "--repeats", type=int, default=3, help="Alternated one- and two-worker runs (median)."
    )
    ap.add_argument(
        "--stages",
        type=int,
        default=16,
        metavar="N",
        help="Time each analyser stage on N tiles in this process (0: skip).",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A stage setting for the timed runs, e.g. coarse_pass=true (repeatable).",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="Also time this git revision (one worker), alternated with this tree.",
    )
    ap.add_argument(
        "--raster",
        type=Path,
        metavar="PATH",
        help="Real imagery instead of the synthetic scene: a raster, or a folder of image chips "
        "mosaicked into one --size² raster at --gsd.",
    )
    ap.add_argument("--time-one-worker", metavar="RASTER", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.time_one_worker:  # a --baseline round's child: one timed run, the rate on stdout
        with tempfile.TemporaryDirectory() as tmp:
            raster = Path(args.time_one_worker)
            t, n = run(raster, Path(tmp) / "c.sqlite", 1, args.tile, None, args.gsd)
        print(f"{n / t:.3f}")
        return 0
    from solardesk.config import ConfigError, parse
    from solardesk_spectral.settings import SpectralSettings

    overrides = dict(item.partition("=")[::2] for item in args.set)
    try:
        chosen = parse(SpectralSettings, overrides, "--set").model_dump()
    except ConfigError as exc:
        ap.error(str(exc))

    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        if args.raster is None:
            raster, gsd, tiles, source = synthetic_raster(
                args.size, args.gsd or 0.15, args.tile, Path(tmp)
            )
            given_gsd = None
        else:
            raster, given_gsd, source = real_raster(args.raster, args.size, args.gsd, Path(tmp))
            gsd, tiles = raster_tiles(raster, args.tile, given_gsd)
        run(raster, Path(tmp) / "warm.sqlite", 1, args.tile, chosen, given_gsd)  # imports, cache
        # One worker and two alternate, each into a fresh cache: a shared machine's load drifts,
        # and the median of a few alternated runs is steadier than one run of each.
        rates1, rates2 = [], []
        for k in range(args.repeats):
            t1, n1 = run(raster, Path(tmp) / f"one{k}.sqlite", 1, args.tile, chosen, given_gsd)
            t2, n2 = run(raster, Path(tmp) / f"two{k}.sqlite", 2, args.tile, chosen, given_gsd)
            rates1.append(n1 / t1)
            rates2.append(n2 / t2)
        rate1, rate2 = float(np.median(rates1)), float(np.median(rates2))
        spread1 = f", runs {min(rates1):.1f}–{max(rates1):.1f}" if args.repeats > 1 else ""
        spread2 = f", runs {min(rates2):.1f}–{max(rates2):.1f}" if args.repeats > 1 else ""
        runs = f"median of {args.repeats} alternated runs" if args.repeats > 1 else "one run"
        print(f"{source} at {gsd:.5g} m, {len(tiles)} tiles of {args.tile}² ({runs})")
        if overrides:
            print("stage settings: " + ", ".join(f"{k}={chosen[k]}" for k in overrides))
        print(f"per-label statistics: {_kernel_path()}")
        print(
            f"one worker : {rate1:6.1f} tiles/s per core ({1000 / rate1:.1f} ms per tile, "
            f"all-in{spread1})"
        )
        print(f"two workers: {rate2:6.1f} tiles/s, {rate2 / rate1:.2f}× one worker{spread2}")
        if len(tiles) < FEW_TILES:
            print(
                f"             (only {len(tiles)} tiles: after each worker's first chunk few "
                "chunks are left to time, and the last ones end unevenly; the scaling is "
                f"rough under {FEW_TILES} tiles)"
            )
        print(
            f"ground      : {ground_km2_per_hour(rate1, args.tile, gsd):6.0f} km² per hour "
            f"per core (a tile covers {args.tile * gsd:.1f} m square at {gsd:.3g} m)"
        )
        if args.baseline:
            compare_with(args.baseline, raster, args.tile, args.repeats, Path(tmp), given_gsd)

        # The reference on a few tiles, compared mask for mask.
        from solardesk_spectral import analyser
        from solardesk_spectral.channels import tune_allocator
        from solardesk_spectral.settings import SpectralSettings
        from tests.plugins import _reference_analyser as ref

        cv2.setNumThreads(1)
        tune_allocator()
        # The oracle implements every setting but the coarser pass (ADR 0044): both sides of
        # the comparison run the timed settings with that one at its default.
        compared = [k for k in overrides if k not in NOT_IN_ORACLE]
        settings = SpectralSettings(**{k: chosen[k] for k in compared})
        fusion = analyser.default_fusion()
        # spread over the raster (on real imagery neighbouring tiles are much alike)
        picked = tiles[:: max(1, len(tiles) // max(args.reference_tiles, 1))]
        t_fast = t_ref = 0.0
        inter = union = 0
        for tile in picked[: args.reference_tiles]:
            t0 = time.perf_counter()
            fast = analyser.analyse_tile(tile, None, gsd, settings.model_dump())
            t_fast += time.perf_counter() - t0
            t0 = time.perf_counter()
            slow = ref.analyse_masks(tile, None, gsd, settings, fusion)
            t_ref += time.perf_counter() - t0
            a = np.zeros(tile.shape[:2], bool)
            for inst in fast:
                a |= inst.full_mask(*tile.shape[:2])
            b = np.zeros(tile.shape[:2], bool)
            for _, m in slow:
                b |= m
            inter += int((a & b).sum())
            union += int((a | b).sum())
        n = min(args.reference_tiles, len(picked))
        if n:
            print(
                f"reference  : {t_ref / n * 1000:8.0f} ms per tile (analysis only); fast "
                f"{t_fast / n * 1000:.1f} ms → {t_ref / t_fast:.0f}× faster"
            )
            shown = ", ".join(f"{k}={chosen[k]}" for k in compared)
            under = f" ({shown})" if compared else ""
            print(
                f"candidate masks, fast vs reference{under}: "
                f"IoU {inter / union if union else 1.0:.4f}"
            )
        else:
            print("reference  : not run (--reference-tiles 0)")
        if args.stages:
            chosen_tiles = tiles[: args.stages]
            total, stages = stage_times(chosen_tiles, gsd, chosen)
            print(
                f"where the analysis goes ({len(chosen_tiles)} tiles, ms per tile): total "
                f"{total:.1f}; " + ", ".join(f"{name} {ms:.1f}" for name, ms in stages.items())
            )
    return 0


def synthetic_raster(size: int, gsd: float, tile: int, tmp: Path) -> tuple[Path, float, list, str]:
    """A synthetic scene as a GeoTIFF in ``tmp``: ``(path, gsd, tiles, description)``, the
    tiles as the pre-compute cuts them (:func:`_cut`)."""
    from solardesk.synthetic import SceneSpec, generate_scene, write_scene

    raster = tmp / "scene.tif"
    scene = generate_scene(SceneSpec(height=size, width=size, gsd=gsd, seed=1))
    write_scene(scene, raster)
    img = np.ascontiguousarray(np.moveaxis(scene.image[:3], 0, -1))
    return raster, gsd, _cut(img, tile), f"synthetic raster {size}²"


def _cut(img: np.ndarray, tile: int) -> list:
    """The tiles of ``img`` as the pre-compute's grid (no overlap) cuts them, row by row."""
    from solardesk.core.tiling import axis_starts

    h, w = img.shape[:2]
    return [
        np.ascontiguousarray(img[r : r + tile, c : c + tile])
        for r in axis_starts(h, tile, 0)
        for c in axis_starts(w, tile, 0)
    ]


CHIP_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def real_raster(
    path: Path, size: int, gsd: float | None, tmp: Path
) -> tuple[Path, float | None, str]:
    """``(raster, gsd to pass the pre-compute or None, description)`` of ``--raster``: the
    raster itself, or a folder's image chips mosaicked (:func:`mosaic`)."""
    if path.is_dir():
        if gsd is None:
            raise SystemExit(f"--raster {path}: a folder of chips needs --gsd (metres per pixel)")
        raster, used = mosaic(path, size, gsd, tmp / "mosaic.tif")
        return raster, None, f"mosaic of {used} chips of {path}, {size}²"
    if not path.is_file():
        raise SystemExit(f"--raster {path}: no such file or folder")
    from solardesk.core.raster import describe

    try:
        known = describe(path).ground_resolution_m
    except Exception as exc:  # a clear line, not a traceback
        raise SystemExit(f"--raster {path}: cannot be read as a raster ({exc})") from None
    if known is None and gsd is None:
        raise SystemExit(f"--raster {path} has no ground resolution; give it with --gsd")
    return path, None if known is not None else gsd, f"raster {path.name}"


def mosaic(folder: Path, size: int, gsd: float, out: Path) -> tuple[Path, int]:
    """The image chips of ``folder`` (sorted by name) laid row by row into one ``size``²
    RGB GeoTIFF at ``gsd`` (UTM zone 10 N, by its central meridian), cut off at ``size``;
    returns the path and how many chips it holds. Chips of other sizes than the first are
    resized to it; grey chips are spread to three bands."""
    import cv2
    import rasterio
    from rasterio.transform import from_origin

    chips = sorted(p for p in folder.iterdir() if p.suffix.lower() in CHIP_SUFFIXES)
    if not chips:
        raise SystemExit(f"--raster {folder}: no image chips ({', '.join(CHIP_SUFFIXES)})")

    def read(chip: Path) -> np.ndarray:
        img = cv2.imread(str(chip), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"--raster {folder}: {chip.name} is not an image")
        return img

    ch, cw = read(chips[0]).shape[:2]
    places = [(y, x) for y in range(0, size, ch) for x in range(0, size, cw)]
    if len(places) > len(chips):
        raise SystemExit(
            f"--raster {folder}: {len(chips)} chips of {cw} × {ch} do not fill {size}²; "
            "choose a smaller --size"
        )
    canvas = np.zeros((size, size, 3), np.uint8)
    for (y, x), chip in zip(places, chips, strict=False):
        img = read(chip)
        if img.shape[:2] != (ch, cw):
            img = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_AREA)
        part = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[: size - y, : size - x]
        canvas[y : y + part.shape[0], x : x + part.shape[1]] = part
    used = len(places)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32610",
        "transform": from_origin(500000.0 - size * gsd / 2, 4000000.0, gsd, gsd),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.moveaxis(canvas, -1, 0))
    return out, used


def raster_tiles(raster: Path, tile: int, gsd: float | None) -> tuple[float, list]:
    """``(gsd, tiles)``: the raster's ground resolution (``gsd`` where it has none) and its
    tiles of ``tile``² as the pre-compute reads them (8-bit RGB, row by row)."""
    from rasterio.windows import Window

    from solardesk.core.raster import RasterReader, describe
    from solardesk.core.tiling import axis_starts

    known = describe(raster).ground_resolution_m
    with RasterReader(raster) as reader:
        h, w = reader.ds.height, reader.ds.width
        tiles = [
            reader.read_rgb(Window(c, r, min(tile, w), min(tile, h)))[0]
            for r in axis_starts(h, tile, 0)
            for c in axis_starts(w, tile, 0)
        ]
    return (known if known is not None else float(gsd)), tiles


#: The analyser's stages, outermost calls only (a stage called inside another counts there).
STAGES = (
    "pixel_features",
    "score_map",
    "strong_edges",
    "segmentation_maps",
    "segment",
    "instance_stats",
    "suppress",
    "_with_fine_power",
    "merge_fragments",
    "split_candidates",
    "split_by_module_grid",
    "fill_outlines",
    "_fill_means",
)


def stage_times(tiles: list, gsd: float, params: dict) -> tuple[float, dict[str, float]]:
    """Milliseconds per tile of the whole analysis and of each of :data:`STAGES` (by wrapping
    the analyser's module functions with a clock for the run; the rest of ``analyse`` — the
    frame context, the grey tile, the shape limits — is the difference)."""
    from solardesk_spectral import analyser

    spent = dict.fromkeys(STAGES, 0.0)
    depth = [0]
    originals = {name: getattr(analyser, name) for name in STAGES}

    def clocked(name, fn):
        def wrapper(*a, **k):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if depth[0] == 1:
                    spent[name] += time.perf_counter() - t0
                depth[0] -= 1

        return wrapper

    analyser.analyse_tile(tiles[0], None, gsd, params)  # warm
    try:
        for name, fn in originals.items():
            setattr(analyser, name, clocked(name, fn))
        t0 = time.perf_counter()
        for tile in tiles:
            analyser.analyse_tile(tile, None, gsd, params)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(analyser, name, fn)
    n = len(tiles)
    return total / n * 1000, {k: v / n * 1000 for k, v in spent.items()}


if __name__ == "__main__":
    sys.exit(main())

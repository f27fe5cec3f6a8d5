"""The pre-compute job end to end: cache keys, resume after kill -9, bad input."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from solardesk.config import TilingSettings
from solardesk.core.cache import MaskCache
from solardesk.core.jobs import Progress
from solardesk.core.pipeline import precompute
from solardesk.synthetic import SceneSpec, generate_scene, write_large_raster, write_scene
from tests.conftest import write_damaged_block, write_raster

TILING = TilingSettings(tile_size=256, overlap=32)


@pytest.fixture(scope="module")
def scene_tif(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    write_scene(
        generate_scene(SceneSpec(height=768, width=768, gsd=0.15, seed=24, n_roofs=12)), path
    )
    return path


def run_job(rasters, cache, **kw):
    job = precompute(rasters, cache, tiling=kw.pop("tiling", TILING), **kw)
    records = []
    while True:
        try:
            records.append(next(job))
        except StopIteration as stop:
            return stop.value, records


def test_precompute_fills_cache_and_rerun_computes_nothing(tmp_path: Path, scene_tif: Path) -> None:
    cache = tmp_path / "p.sqlite"
    summary, records = run_job([scene_tif], cache)
    assert summary.tiles == 16 and summary.computed == 16 and summary.skipped == 0
    assert all(isinstance(r, Progress) for r in records)
    assert records[-1].done == 16 and records[-1].total == 16
    assert summary.instances > 0
    with MaskCache(cache, readonly=True) as c:
        st = c.stats(threshold=0.85)
        assert st["tiles"] == 16 and st["instances"] == summary.instances
        assert c.integrity_ok()
    again, _ = run_job([scene_tif], cache)
    assert again.computed == 0 and again.skipped == 16
    # The threshold is read-time: changing it recomputes nothing.
    thr, _ = run_job([scene_tif], cache, settings={"threshold": 0.5})
    assert thr.computed == 0
    # the summary says which cut the run's settings chose (the CLI reports with it)
    assert (summary.threshold, thr.threshold) == (0.85, 0.5)
    # An opt-in setting left at its default is not part of the key: nothing recomputes.
    same, _ = run_job([scene_tif], cache, settings={"contrast_segmentation": False})
    assert same.computed == 0
    # A parameter that changes what is computed recomputes every tile of this stage.
    changed, _ = run_job([scene_tif], cache, settings={"min_area_m2": 6.0})
    assert changed.computed == 16


def test_two_workers_give_the_same_cache(tmp_path: Path, scene_tif: Path) -> None:
    one, _ = run_job([scene_tif], tmp_path / "one.sqlite", workers=1)
    two, _ = run_job([scene_tif], tmp_path / "two.sqlite", workers=2)
    assert one.instances == two.instances

    def content(path):
        with MaskCache(path, readonly=True) as c:
            return sorted(
                (t.tile_id, i.bbox, round(i.confidence, 6), i.mask.tobytes())
                for t, i in c.iter_instances()
            )

    assert content(tmp_path / "one.sqlite") == content(tmp_path / "two.sqlite")
    # Chunks of tiles per worker call (16 tiles by 3: the last chunk is short), same cache.
    three, records = run_job([scene_tif], tmp_path / "three.sqlite", workers=2, chunk_size=3)
    assert three.computed == 16 and [r.done for r in records][-1] == 16
    assert content(tmp_path / "three.sqlite") == content(tmp_path / "one.sqlite")


def test_auto_chunk_size_keeps_four_chunks_per_worker() -> None:
    from solardesk.core.pipeline import auto_chunk_size

    assert auto_chunk_size(16, 2) == 2
    assert auto_chunk_size(5, 2) == 1 and auto_chunk_size(0, 4) == 1
    assert auto_chunk_size(10_000, 2) == 8  # capped: a cancel waits for one chunk at most
    assert auto_chunk_size(100, 1) == 8 and auto_chunk_size(100, 4) == 6


def test_auto_workers_use_the_cores_a_job_can_keep_busy(tmp_path: Path) -> None:
    """Unless told, a job runs one worker per core, but gives each at least 32 tiles (a
    worker takes about a second to start): a small job runs in process."""
    from solardesk.core.jobs import default_workers
    from solardesk.core.pipeline import MIN_TILES_PER_WORKER, auto_workers

    assert MIN_TILES_PER_WORKER == 32
    assert [auto_workers(n, cores=4) for n in (0, 31, 63, 64, 100, 10_000)] == [1, 1, 1, 2, 3, 4]
    assert auto_workers(10_000, cores=1) == 1
    big = tmp_path / "big.tif"
    write_large_raster(big, 1024, 1024, seed=2)  # 64 tiles of 128 px
    tiling = TilingSettings(tile_size=128, overlap=0)
    summary, _ = run_job([big], tmp_path / "auto.sqlite", tiling=tiling, workers=None)
    assert summary.computed == 64 and summary.workers == min(default_workers(), 2)
    one, _ = run_job([big], tmp_path / "one.sqlite", tiling=tiling)
    assert one.workers == 1  # the API's default stays in process
    again, _ = run_job([big], tmp_path / "auto.sqlite", tiling=tiling, workers=None)
    assert again.computed == 0 and again.workers == 1  # nothing left to compute
    # a stage that does not say it is parallel (a model's: N copies in memory) stays in
    # process unless told
    from solardesk.plugin_api import PluginManager
    from tests.e2e.test_detect import StagePlugin

    pm = PluginManager()
    pm.register(StagePlugin("square", "square_stage"), "square")
    square, _ = run_job(
        [big], tmp_path / "square.sqlite", tiling=tiling, workers=None, stage_id="square",
        plugin_manager=pm,
    )  # fmt: skip
    assert square.computed == 64 and square.workers == 1


def test_cancel_keeps_finished_tiles(tmp_path: Path, scene_tif: Path) -> None:
    cache = tmp_path / "c.sqlite"
    job = precompute([scene_tif], cache, tiling=TILING)
    for _ in range(6):  # "starting" + 5 tiles
        next(job)
    job.close()
    with MaskCache(cache, readonly=True) as c:
        assert c.stats()["tiles"] == 5
    summary, _ = run_job([scene_tif], cache)
    assert summary.skipped == 5 and summary.computed == 11


def _children(pid: int) -> list[int]:
    """Pids of the live (not zombie) processes whose parent is ``pid``, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_minus_nine_resumes(tmp_path: Path, workers: int) -> None:
    big = tmp_path / "big.tif"
    write_large_raster(big, 2048, 2048, seed=1)  # 256 tiles of 128 px: seconds of work
    cache = tmp_path / "k.sqlite"
    cmd = [
        sys.executable, "-m", "solardesk", "precompute", str(big), "--cache", str(cache),
        "--tile", "128", "--overlap", "0", "--quiet", "--workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if cache.exists():
            try:
                with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as con:
                    stored = con.execute("select count(*) from tiles").fetchone()[0]
            except sqlite3.Error:
                stored = 0
            if stored >= 4:
                break
    assert proc.poll() is None, "the run finished before it could be killed"
    workers_pids = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Its worker processes notice that their parent is gone and exit (kill -9 runs no
    # clean-up in the parent): none is left computing, orphaned.
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers_pids):
        time.sleep(0.2)
    assert not [p for p in workers_pids if _alive(p)]
    with MaskCache(cache) as c:
        assert c.integrity_ok()
        before = c.stats()["tiles"]
        for tile in c.iter_tiles():
            assert tile.n_instances == len(c.read_tile(tile.raster_fp, tile.tile_id))
    assert 4 <= before < 256
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    computed = f"{256 - before} tile{'s' if 256 - before != 1 else ''} computed"
    assert f"{computed}, {before} already cached" in out.stdout
    with MaskCache(cache, readonly=True) as c:
        assert c.stats()["tiles"] == 256 and c.integrity_ok()


@pytest.mark.parametrize(
    ("how", "code", "said"),
    [("kill", 143, "Terminated"), ("ctrl-c", 130, "Interrupted")],
)
def test_sigterm_and_ctrl_c_stop_cleanly(tmp_path: Path, how: str, code: int, said: str) -> None:
    """`kill PID` (SIGTERM) or Ctrl-C in a terminal (SIGINT to the whole process group, the
    workers too) of a run with two workers: it commits what has finished, shuts its workers
    down and exits 143 or 130 saying so — before, SIGTERM's default action ended it at once
    and the resource tracker printed a warning about leaked semaphores. The rerun resumes."""
    big = tmp_path / "big.tif"
    write_large_raster(big, 2048, 2048, seed=1)
    cache = tmp_path / "t.sqlite"
    cmd = [
        sys.executable, "-m", "solardesk", "precompute", str(big), "--cache", str(cache),
        "--tile", "128", "--overlap", "0", "--quiet", "--workers", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as con:
                if con.execute("select count(*) from tiles").fetchone()[0] >= 4:
                    break
        except sqlite3.Error:
            pass
    assert proc.poll() is None, "the run finished before it could be stopped"
    workers = _children(proc.pid)
    if how == "kill":
        proc.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C reaches every process of the foreground group
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"{said}; finished work is kept and a rerun resumes." in err
    assert "leaked" not in err and "Traceback" not in err, err
    deadline = time.time() + 10  # (a worker may still be on its way out)
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]
    with MaskCache(cache, readonly=True) as c:
        assert c.integrity_ok()
        before = c.stats()["tiles"]
    assert 4 <= before < 256
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{before} already cached" in out.stdout


def test_sixteen_bit_single_band_and_nodata(tmp_path: Path) -> None:
    scene = generate_scene(
        SceneSpec(height=512, width=512, gsd=0.15, seed=3, dtype="uint16", bands=1, nodata=0)
    )
    path = tmp_path / "u16.tif"
    write_scene(scene, path)
    summary, _ = run_job([path], tmp_path / "u16.sqlite")
    assert summary.computed == 9  # starts 0, 224, 256 on each axis


def test_all_black_and_all_nodata_rasters(tmp_path: Path) -> None:
    black = write_raster(tmp_path / "black.tif", np.zeros((3, 256, 256), np.uint8))
    nodata = write_raster(tmp_path / "nd.tif", np.zeros((3, 256, 256), np.uint8), nodata=0)
    summary, _ = run_job([black, nodata], tmp_path / "b.sqlite")
    assert summary.computed == 2 and summary.instances == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "solardesk", *args], capture_output=True, text=True, check=False
    )


def test_a_raster_narrower_than_the_tile_is_tiled_at_its_own_size(tmp_path: Path) -> None:
    """A dataset's 256 px chip is one tile of 256 px; a 300 px strip is a row of 300 px tiles
    (it was refused: "tile size 512 is larger than the raster")."""
    rng = np.random.default_rng(3)
    chip = write_raster(tmp_path / "chip.tif", rng.integers(0, 255, (3, 256, 256), np.uint8))
    strip = write_raster(tmp_path / "strip.tif", rng.integers(0, 255, (3, 300, 1000), np.uint8))
    cache = tmp_path / "c.sqlite"
    summary, _ = run_job([chip, strip], cache, tiling=TilingSettings(tile_size=512, overlap=64))
    with MaskCache(cache, readonly=True) as c:
        windows = {}
        for t in c.iter_tiles():
            windows.setdefault(c.get_raster(t.raster_fp).path, []).append(tuple(t.window))
    assert sorted(windows[str(chip)]) == [(0, 0, 256, 256)]
    strips = sorted(windows[str(strip)])
    assert [w[2:] for w in strips] == [(300, 300)] * 4 and strips[-1][0] == 700
    assert all(b[0] - a[0] <= 300 - 37 for a, b in itertools.pairwise(strips))
    assert summary.tiles == 5
    out = subprocess.run(
        [sys.executable, "-m", "solardesk", "tiles", str(strip)], capture_output=True, text=True
    )
    assert "4 tiles of 300 px with 37 px overlap (1 row × 4 columns)" in out.stdout, out.stderr


def test_bad_input_is_reported_and_nothing_half_written(tmp_path: Path, scene_tif: Path) -> None:
    notes = tmp_path / "notes.sqlite"
    notes.write_text("not a database\n" * 50)
    small = write_raster(tmp_path / "small.tif", np.zeros((3, 20, 100), np.uint8))
    nocrs = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 256, 256), np.uint8), crs=None)
    landsat = write_raster(  # 30 m per pixel: no rooftop array spans a pixel
        tmp_path / "landsat.tif",
        np.zeros((3, 256, 256), np.uint8),
        transform=Affine(30.0, 0, 680000.0, 0, -30.0, 5150000.0),
    )
    cases = [
        (["precompute", str(scene_tif), "--cache", str(notes)], "not a SolarDesk cache"),
        (["precompute", str(small), "--cache", str(tmp_path / "s.sqlite")], "smaller than the smallest tile"),
        (["precompute", str(nocrs), "--cache", str(tmp_path / "n.sqlite"), "--tile", "256"], "--gsd"),
        (["precompute", str(landsat), "--cache", str(tmp_path / "l.sqlite"), "--tile", "256"], "landsat.tif: 30 m per pixel is too coarse"),
        (["precompute", str(nocrs), "--cache", str(tmp_path / "g.sqlite"), "--tile", "256", "--gsd", "5"], "1 m per pixel or finer"),
        (["detect", "--spectral", str(landsat), "--out", str(tmp_path / "l.gpkg"), "--tile", "256"], "too coarse"),
        (["precompute", str(scene_tif), "--cache", str(tmp_path / "x.sqlite"), "--set", "floor=7"], "floor"),
        (["cache", "stats", str(tmp_path / "none.sqlite")], "no such cache"),
        (["precompute", str(nocrs), "--cache", str(tmp_path / "z.sqlite"), "--tile", "256", "--gsd", "0"], "--gsd 0.3"),
        (["precompute", str(scene_tif), "--cache", str(tmp_path / "b.sqlite"), "--bands", "1,x"], "--bands"),
        (["precompute", str(scene_tif), "--cache", str(tmp_path / "b.sqlite"), "--bands", "1,2"], "three band numbers"),
        (["detect", "--spectral", str(scene_tif), "--out", str(tmp_path / "b.gpkg"), "--bands", "1,x"], "--bands"),
    ]  # fmt: skip
    for args, expected in cases:
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert expected in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert notes.read_text().startswith("not a database")
    assert not (tmp_path / "l.gpkg").exists()
    # a run refused before any tile leaves no cache file behind
    for name in ("s", "n", "l", "z", "b"):
        assert not (tmp_path / f"{name}.sqlite").exists(), name


@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_block_leaves_out_its_tile_and_nothing_else(tmp_path: Path, workers) -> None:
    """A raster with one damaged block, then a sound one: every tile that can be read is
    computed and stored — the damaged raster's others, the tiles in the same worker chunk, the
    next raster — and the run then exits 2 naming the tile left out and why. A rerun computes
    nothing again and says the same."""
    bad = write_damaged_block(tmp_path / "bad.tif", block=(2, 2))  # pixels 256-384
    cache = tmp_path / "c.sqlite"
    args = ["precompute", str(bad), str(tmp_path / "scene.tif"), "--cache", str(cache)]
    write_scene(generate_scene(SceneSpec(height=512, width=512, gsd=0.15, seed=3)), args[2])
    args += ["--tile", "256", "--overlap", "0", "--workers", str(workers)]
    out = _cli(*args)
    assert out.returncode == 2, out.stderr
    assert "1 of 20 tiles could not be computed (bad.tif)" in out.stderr, out.stderr
    assert "tile c256_r256" in out.stderr and "damaged. Copy or download" in out.stderr
    assert "Traceback" not in out.stderr and "Internal error" not in out.stderr
    with MaskCache(cache, readonly=True) as c:
        assert c.stats()["tiles"] == 19 and c.integrity_ok()
    again = _cli(*args)
    assert again.returncode == 2 and "the other 19 are in" in again.stderr, again.stderr
    with MaskCache(cache, readonly=True) as c:
        assert c.stats()["tiles"] == 19


def test_cache_commands(tmp_path: Path, scene_tif: Path) -> None:
    cache = tmp_path / "p.sqlite"
    run_job([scene_tif], cache)
    out = _cli("cache", "stats", str(cache), "--threshold", "0.5")
    assert out.returncode == 0 and "candidates" in out.stdout and "size on disk" in out.stdout
    with MaskCache(cache, readonly=True) as c:
        st = c.stats(threshold=0.5, objects=True)
    n, objects = st["instances_above_threshold"], st["objects_above_threshold"]
    assert 0 < objects < n  # the tiles overlap: some objects are stored in two
    assert re.search(rf"pseudo-labels \(>= 0.5\) +{n} \({objects} objects: ", out.stdout), (
        out.stdout
    )
    assert re.search(r"^tiles +16$", out.stdout, re.M), out.stdout
    share = f"{st['share_tiles_above_threshold']:.1%}"
    assert re.search(rf"^tiles with a pseudo-label +{re.escape(share)}$", out.stdout, re.M)
    assert 0 < st["share_tiles_above_threshold"] <= 1
    size = re.search(r"^size on disk +([\d.]+) MB$", out.stdout, re.M)
    assert size and float(size.group(1)) == round(st["size_bytes"] / 1e6, 2) > 0
    coco = tmp_path / "coco.json"
    out = _cli("cache", "export-coco", str(cache), str(coco), "--threshold", "0.3")
    assert out.returncode == 0, out.stderr
    data = json.loads(coco.read_text())
    assert len(data["images"]) == 16 and data["annotations"]
    # an existing OUT is replaced only when asked; the cache itself never
    again = _cli("cache", "export-coco", str(cache), str(coco))
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    assert _cli("cache", "export-coco", str(cache), str(coco), "--overwrite").returncode == 0
    onto = _cli("cache", "export-coco", str(cache), str(cache), "--overwrite")
    assert onto.returncode == 2, onto.stderr
    assert f"{cache} is the cache" in onto.stderr and "Traceback" not in onto.stderr
    assert _cli("cache", "stats", str(cache)).returncode == 0

    # Another parameter keeps the first run's rows (going back is free): stats says so and
    # prune deletes them, leaving what readers see as it was.
    assert "earlier runs" not in _cli("cache", "stats", str(cache)).stdout
    run_job([scene_tif], cache, settings={"min_area_m2": 6.0})
    out = _cli("cache", "stats", str(cache), "--json")
    st = json.loads(out.stdout)
    earlier = st["earlier_runs"]
    assert earlier["tile_rows"] == 16 and earlier["instances"] > 0
    text = _cli("cache", "stats", str(cache)).stdout
    assert re.search(rf"^earlier runs +16 tile rows, {earlier['instances']} candidates", text, re.M)
    out = _cli("cache", "prune", str(cache))
    assert out.returncode == 0, out.stderr
    assert (
        f"deleted 16 tile rows and {earlier['instances']} candidates of earlier runs" in out.stdout
    )
    after = json.loads(_cli("cache", "stats", str(cache), "--json").stdout)
    assert after["earlier_runs"] == {"tile_rows": 0, "instances": 0}
    assert (after["tiles"], after["instances"]) == (st["tiles"], st["instances"])
    assert after["size_bytes"] < st["size_bytes"]
    assert "earlier runs" not in _cli("cache", "stats", str(cache)).stdout


def test_a_raster_without_georeferencing_is_reported_once_with_two_workers(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(5)
    pngs = []
    for name in ("a.png", "b.png"):
        pngs.append(tmp_path / name)
        cv2.imwrite(str(pngs[-1]), rng.integers(0, 255, (160, 160, 3), dtype=np.uint8))
    out = _cli(
        "precompute", *map(str, pngs), "--cache", str(tmp_path / "c.sqlite"), "--gsd", "0.3",
        "--workers", "2", "--tile", "128", "--overlap", "0", "--quiet",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tiles/s, 2 workers)" in out.stdout, out.stdout
    for png in pngs:
        lines = [line for line in out.stderr.splitlines() if png.name in line]
        assert len(lines) == 1 and lines[0].startswith("Warning: "), out.stderr
        assert "world file" in lines[0]
    assert "NotGeoreferencedWarning" not in out.stderr and "open_raster" not in out.stderr


def test_summary_counts_read_as_english(tmp_path: Path) -> None:
    black = write_raster(tmp_path / "black.tif", np.zeros((3, 256, 256), np.uint8))
    cache = tmp_path / "one.sqlite"
    out = _cli("precompute", str(black), "--cache", str(cache), "--tile", "256", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "1 tile computed, 0 already cached, 0 candidates in" in out.stdout, out.stdout
    assert "tiles/s, in process)" in out.stdout  # --workers auto: one tile needs no pool
    assert ": 1 tile, 0 candidates, 0 pseudo-labels at confidence" in out.stdout, out.stdout


def test_a_disk_that_fills_during_a_run_keeps_what_was_stored(
    tmp_path: Path, scene_tif: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after a few tiles of `solardesk precompute`: it stops with a clear
    message naming the cache and the remedy (exit 2, no traceback), the tiles stored before
    stay, the file is sound, and once there is space the rerun computes only the rest."""
    from click.testing import CliRunner

    from solardesk import cli as cli_module
    from solardesk.core import pipeline

    write_batch = MaskCache._write_batch
    batches = []

    def filling_up(self: MaskCache, batch):
        if len(batches) >= 3:  # no room left: the next page cannot be had
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            self._conn.execute(f"PRAGMA max_page_count = {pages}")
        out = write_batch(self, batch)
        batches.append(len(batch))  # stored
        return out

    monkeypatch.setattr(MaskCache, "_write_batch", filling_up)
    real = pipeline.precompute
    monkeypatch.setattr(pipeline, "precompute", lambda *a, **kw: real(*a, flush_every_s=0, **kw))
    cache = tmp_path / "full.sqlite"
    args = ["precompute", str(scene_tif), "--cache", str(cache), "--tile", "256", "--quiet"]
    result = CliRunner().invoke(cli_module.cli, args)
    assert result.exit_code == 2, result.output
    assert f"Disk full while writing cache {cache}" in result.output
    assert "Free disk space" in result.output and "Traceback" not in result.output
    monkeypatch.setattr(MaskCache, "_write_batch", write_batch)  # space freed
    with MaskCache(cache, readonly=True) as c:
        assert c.integrity_ok()
        kept = c.stats()["tiles"]
    assert kept == sum(batches) and 3 <= kept < 16
    result = CliRunner().invoke(cli_module.cli, args)
    assert result.exit_code == 0, result.output
    assert f"{16 - kept} tiles computed, {kept} already cached" in result.output


def test_the_threshold_is_read_time_and_the_aoi_limits_the_tiles(
    tmp_path: Path, scene_tif: Path
) -> None:
    import json

    import rasterio

    cache = tmp_path / "t.sqlite"
    common = ("--tile", "256", "--overlap", "32", "--quiet")
    with rasterio.open(scene_tif) as ds:
        t, crs = ds.transform, ds.crs
    # a square over the raster's top-left 100 px: only the tiles that touch it
    (x0, y0), (x1, y1) = t * (10, 10), t * (100, 100)
    aoi = tmp_path / "aoi.geojson"
    square = {
        "type": "Polygon",
        "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
    }
    aoi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": crs.to_string()}},
                "features": [{"type": "Feature", "properties": {}, "geometry": square}],
            }
        )
    )
    out = _cli("precompute", str(scene_tif), "--cache", str(cache), "--aoi", str(aoi), *common)
    assert out.returncode == 0, out.stderr
    assert "1 tile computed, 0 already cached" in out.stdout, out.stdout
    with MaskCache(cache, readonly=True) as c:
        assert c.stats()["tiles"] == 1

    def summary(*args: str) -> tuple[str, float, int]:
        out = _cli("precompute", str(scene_tif), "--cache", str(cache), *args, *common)
        assert out.returncode == 0, out.stderr
        m = re.search(r"(\d+) pseudo-labels? at confidence >= ([\d.]+)", out.stdout)
        assert m, out.stdout
        return out.stdout, float(m.group(2)), int(m.group(1))

    text, thr, n = summary("--threshold", "0.3")  # the whole raster: 15 more tiles
    assert "15 tiles computed, 1 already cached" in text, text
    with MaskCache(cache, readonly=True) as c:
        low = c.stats(threshold=0.3)["instances_above_threshold"]
        high = c.stats(threshold=0.95)["instances_above_threshold"]
        floor = min(i.confidence for _t, i in c.iter_instances())
    assert (thr, n) == (0.3, low) and low > high
    assert floor < 0.85  # candidates under the default cut are stored: the cut is a query
    # another threshold, by the option or as a stage setting, recomputes nothing
    again = ((("--threshold", "0.95"), (0.95, high)), (("--set", "threshold=0.3"), (0.3, low)))
    for args, expected in again:
        text, thr, n = summary(*args)
        assert "0 tiles computed, 16 already cached" in text, text
        assert (thr, n) == expected


def test_going_back_to_earlier_parameters_shows_their_results(
    tmp_path: Path, scene_tif: Path
) -> None:
    cache = tmp_path / "back.sqlite"
    first, _ = run_job([scene_tif], cache)
    other, _ = run_job([scene_tif], cache, settings={"min_area_m2": 40.0})
    assert other.computed == 16 and other.instances < first.instances
    back, _ = run_job([scene_tif], cache)
    assert back.computed == 0
    with MaskCache(cache, readonly=True) as c:
        assert c.stats()["instances"] == first.instances


def test_the_same_raster_twice_is_computed_once(tmp_path: Path, scene_tif: Path) -> None:
    import shutil

    copy = tmp_path / "copy.tif"
    shutil.copy(scene_tif, copy)
    with pytest.warns(UserWarning, match="the same raster as"):
        summary, _ = run_job([scene_tif, copy], tmp_path / "twice.sqlite")
    assert (summary.rasters, summary.tiles, summary.computed) == (1, 16, 16)
    with MaskCache(tmp_path / "twice.sqlite", readonly=True) as c:
        assert c.stats()["instances"] == summary.instances


def test_two_in_process_jobs_on_two_threads_keep_their_own_readers(
    tmp_path: Path, scene_tif: Path
) -> None:
    """A GUI may run a pre-compute and a detection (one worker: in-process) on two threads at
    once on one raster: each thread reads through its own dataset (a rasterio dataset must
    not be shared between threads), and one job ending closes only its own."""
    import threading

    from solardesk.core import pipeline

    results: dict[str, object] = {}
    opened: dict[str, list] = {}

    def job(name: str) -> None:
        try:
            gen = precompute([scene_tif], tmp_path / f"{name}.sqlite", tiling=TILING)
            next(gen)
            next(gen)  # one tile read: this thread's reader is open
            opened[name] = list(pipeline._thread_readers().values())
            results[name] = [*gen]
        except Exception as e:  # reported by the assertion below
            results[name] = e

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, list) and len(r) == 15 for r in results.values()), results
    (ra,), (rb,) = opened["a"], opened["b"]
    assert ra is not rb
    with (
        MaskCache(tmp_path / "a.sqlite", readonly=True) as a,
        MaskCache(tmp_path / "b.sqlite", readonly=True) as b,
    ):
        assert a.stats()["instances"] == b.stats()["instances"] > 0


def test_a_gsd_unlike_the_raster_s_own_is_warned(tmp_path: Path, scene_tif: Path) -> None:
    with pytest.warns(UserWarning, match=r"--gsd 0.5 m overrides the raster's own"):
        run_job([scene_tif], tmp_path / "g.sqlite", gsd=0.5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_job([scene_tif], tmp_path / "h.sqlite", gsd=0.15)  # its own: no warning

"""The mask cache: round trips, keyed work, atomic tiles (a real kill -9), bad files, reports."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from solardesk.core.cache import (
    APPLICATION_ID,
    CHANNELS,
    EDITS_STAGE_ID,
    SCHEMA_VERSION,
    ChannelScores,
    Instance,
    MaskCache,
    TileKey,
    TileResult,
    hash_params,
)
from solardesk.core.masks import coco_rle_to_mask
from solardesk.errors import CacheError, CacheSchemaError

ROOT = Path(__file__).resolve().parents[2]
TILE = (0, 0, 64, 48)  # col_off, row_off, width, height
P1 = hash_params({"threshold": 0.45, "min_area_m2": 3.0})
P2 = hash_params({"threshold": 0.50, "min_area_m2": 3.0})


def key(tile: str = "t0", params: str = P1, stage: str = "spectral", raster: str = "fp") -> TileKey:
    return TileKey(raster, tile, stage, 1, params)


def inst(x0=0, y0=0, w=5, h=4, conf=0.9, seed=0, **kw) -> Instance:
    mask = np.random.default_rng(seed).random((h, w)) < 0.6
    mask[0, 0] = True
    kw.setdefault("scores", ChannelScores(*np.linspace(0.1, 0.6, 6)))
    return Instance(bbox=(x0, y0, x0 + w, y0 + h), mask=mask, confidence=conf, **kw)


def same(a: Instance, b: Instance) -> bool:
    return (
        a.bbox == b.bbox
        and np.array_equal(a.mask, b.mask)
        and a.confidence == b.confidence
        and a.scores == b.scores
        and a.provenance == b.provenance
        and a.review == b.review
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path: Path):
    with MaskCache(tmp_path / "project.sqlite") as c:
        yield c


# --- instances -------------------------------------------------------------------------------
def test_instance_validates_and_protects_its_mask() -> None:
    mask = np.ones((4, 5), bool)
    i = Instance(bbox=(1, 2, 6, 6), mask=mask, confidence=1, scores=dict.fromkeys(CHANNELS, 0.5))
    assert i.scores == ChannelScores(*[0.5] * 6) and i.area_px == 20 and i.id is None
    assert not i.mask.flags.writeable and mask.flags.writeable  # the caller's array is untouched
    full = i.full_mask(8, 10)
    assert full.sum() == 20 and full[2:6, 1:6].all()
    back = Instance.from_full_mask(full, confidence=0.5)
    assert back.bbox == i.bbox and np.array_equal(back.mask, i.mask)
    for bad in [
        {"bbox": (0, 0, 5, 5)},  # mask shape does not match
        {"bbox": (3, 0, 3, 4)},  # empty bbox
        {"confidence": 1.5},
        {"confidence": float("nan")},
        {"provenance": "guess"},
        {"review": "maybe"},
        {"scores": (1, 2, 3)},
        {"scores": {"lbp": 1}},
    ]:
        args = {"bbox": (1, 2, 6, 6), "mask": mask, "confidence": 0.5} | bad
        with pytest.raises(ValueError):
            Instance(**args)
    with pytest.raises(ValueError, match="does not fit"):
        i.full_mask(4, 4)


# --- round trips -----------------------------------------------------------------------------
def test_round_trip_of_odd_shapes_empty_and_full_tiles(cache: MaskCache) -> None:
    w, h = TILE[2], TILE[3]
    instances = [
        inst(0, 0, 1, 1, conf=0.31),  # 1 x 1
        inst(5, 7, 13, 3, conf=0.5, seed=1),  # odd shape
        inst(63, 47, 1, 1, conf=0.6, scores=None, provenance="model"),  # last pixel, no scores
        Instance(bbox=(0, 0, w, h), mask=np.ones((h, w), bool), confidence=1.0),  # whole tile
        Instance(bbox=(2, 2, 9, 9), mask=np.zeros((7, 7), bool), confidence=0.4),  # empty mask
    ]
    cache.write_tile(key("t0"), TILE, instances)
    cache.write_tile(key("t1"), (64, 0, 64, 48), [])  # a tile without instances is done too
    got = cache.read_tile("fp", "t0")
    assert len(got) == len(instances) and all(g.id is not None for g in got)
    assert all(same(a, b) for a, b in zip(got, instances, strict=True))
    assert got[2].scores is None and got[2].provenance == "model"
    assert cache.read_tile("fp", "t1") == [] and cache.is_done(key("t1"))
    assert cache.read_tile("fp", "nope") == []
    assert [i.confidence for i in cache.read_tile("fp", "t0", min_confidence=0.5)] == [0.5, 0.6, 1]
    weak = got[-1]  # 0.4: accepted, it is read below the cut when asked for
    cache.set_review(weak.id, "accepted")
    assert [i.confidence for i in cache.read_tile("fp", "t0", min_confidence=0.5)] == [0.5, 0.6, 1]
    both = cache.read_tile("fp", "t0", min_confidence=0.5, accepted_below=True)
    assert sorted(i.confidence for i in both) == [0.4, 0.5, 0.6, 1]
    with pytest.raises(ValueError, match="outside"):
        cache.write_tile(key("t2"), (0, 0, 8, 8), [inst(5, 5, 5, 5)])


def test_rasters_are_recorded(cache: MaskCache) -> None:
    cache.put_raster(
        "fp", path="/data/a.tif", width=100, height=80, transform=(0.2, 0, 5, 0, -0.2, 9, 0, 0, 1)
    )
    cache.put_raster("fp", gsd_m=0.2)  # None leaves the other fields alone
    r = cache.get_raster("fp")
    assert (r.path, r.width, r.height, r.gsd_m) == ("/data/a.tif", 100, 80, 0.2)
    assert r.transform == (0.2, 0.0, 5.0, 0.0, -0.2, 9.0)
    assert cache.get_raster("unknown") is None
    cache.write_tile(key(raster="other"), TILE, [])  # tiles of an unregistered raster still work
    assert cache.get_raster("other").path is None
    cache.put_raster("fp0", path="/data/0.tif")
    listed = cache.list_rasters()  # by path, the pathless last
    assert [(r.fingerprint, r.path) for r in listed] == [
        ("fp0", "/data/0.tif"),
        ("fp", "/data/a.tif"),
        ("other", None),
    ]
    assert listed[1] == r


# --- keys ------------------------------------------------------------------------------------
def test_same_key_is_done_and_a_changed_parameter_recomputes_only_its_stage(
    cache: MaskCache,
) -> None:
    grid = [f"t{i}" for i in range(6)]
    calls: list[str] = []

    def run(stage: str, params: str) -> None:
        todo = set(grid) - cache.done_tile_ids("fp", stage, 1, params)

        def compute():
            for tid in sorted(todo):
                calls.append(f"{stage}/{tid}")
                yield TileResult(key(tid, params, stage), TILE, [inst(conf=0.9)])

        cache.write_tiles(compute(), batch_size=4)

    run("spectral", P1)
    run("edges2", P1)
    assert len(calls) == 12
    calls.clear()
    run("spectral", P1)  # same key: nothing to compute
    run("edges2", P1)
    assert calls == []
    assert cache.is_done(key("t3")) and cache.is_done(TileKey("fp", "t3", "spectral", "1", P1))
    assert not cache.is_done(key("t3", P2)) and not cache.is_done(key("t9"))
    run("spectral", P2)  # a changed parameter of one stage
    assert sorted(calls) == sorted(f"spectral/{t}" for t in grid)
    assert cache.done_tile_ids("fp", "edges2", "1", P1) == set(grid)
    assert cache.done_tile_ids("fp", "spectral", 2, P1) == set()  # another version


def test_rewriting_a_key_replaces_it_and_readers_see_the_newest_row(cache: MaskCache) -> None:
    cache.write_tile(key("t0", P1), TILE, [inst(conf=0.5), inst(conf=0.6)])
    cache.write_tile(key("t0", P2), TILE, [inst(conf=0.7)])
    assert [i.confidence for i in cache.read_tile("fp", "t0")] == [0.7]  # newest row
    assert [i.confidence for i in cache.read_tile("fp", "t0", params_hash=P1)] == [0.5, 0.6]
    cache.write_tile(key("t0", P1), TILE, [inst(conf=0.8)])  # forced recompute replaces
    assert [i.confidence for i in cache.read_tile("fp", "t0", params_hash=P1)] == [0.8]
    assert [i.confidence for i in cache.read_tile("fp", "t0")] == [0.8]  # now the newest
    assert cache.stats()["tile_rows"] == 2
    with pytest.raises(ValueError, match="reserved"):
        cache.write_tile(key("t0", stage=EDITS_STAGE_ID), TILE, [])


# --- atomicity -------------------------------------------------------------------------------
def _fail_on_x0(cache: MaskCache, x0: int) -> None:
    """Make SQLite itself fail mid-transaction when an instance with this x0 is inserted."""
    cache._conn.execute(
        f"CREATE TEMP TRIGGER boom BEFORE INSERT ON instances WHEN NEW.x0 = {x0} "
        "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
    )


def test_a_failure_inside_a_tile_write_leaves_nothing_of_it(cache: MaskCache) -> None:
    cache.write_tile(key("ok"), TILE, [inst(1)])
    _fail_on_x0(cache, 13)
    with pytest.raises(CacheError, match="simulated failure") as exc:
        cache.write_tile(key("t0"), TILE, [inst(1), inst(2), inst(13), inst(4)])
    assert isinstance(exc.value.__cause__, sqlite3.Error)
    assert not cache.is_done(key("t0")) and cache.read_tile("fp", "t0") == []
    # in a batch, the failing batch is rolled back whole; earlier batches stay
    items = [TileResult(key(f"b{i}"), TILE, [inst(13 if i == 5 else 1)]) for i in range(8)]
    with pytest.raises(CacheError):
        cache.write_tiles(items, batch_size=4)
    assert cache.done_tile_ids("fp", "spectral", 1, P1) == {"ok", "b0", "b1", "b2", "b3"}
    assert cache.stats()["instances"] == 5 and cache.integrity_ok()


class _InterruptingConnection:
    """Wraps the sqlite3 connection and raises KeyboardInterrupt after the instance insert."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def executemany(self, sql, rows):
        self._conn.executemany(sql, rows)
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_ctrl_c_mid_write_rolls_the_tile_back(cache: MaskCache) -> None:
    real = cache._conn
    cache._conn = _InterruptingConnection(real)
    with pytest.raises(KeyboardInterrupt):
        cache.write_tile(key("t0"), TILE, [inst(1), inst(2)])
    cache._conn = real
    assert not real.in_transaction and not cache.is_done(key("t0"))
    assert cache.stats()["instances"] == 0


def test_a_failing_generator_keeps_the_tiles_it_yielded(cache: MaskCache) -> None:
    def compute():
        for i in range(3):
            yield TileResult(key(f"t{i}"), TILE, [inst()])
        raise RuntimeError("tile 3 failed")

    with pytest.raises(RuntimeError, match="tile 3"):
        cache.write_tiles(compute(), batch_size=10)
    assert cache.done_tile_ids("fp", "spectral", 1, P1) == {"t0", "t1", "t2"}


_WRITER = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from solardesk.core.cache import Instance, MaskCache, TileKey, TileResult

def tile(t):
    rng = np.random.default_rng(t)
    insts = [Instance(bbox=(i, i, i + 40, i + 30), mask=rng.random((30, 40)) < 0.5,
                      confidence=0.5) for i in range(1 + t % 7) for _ in range(8)]
    return TileResult(TileKey("fp", f"t{{t}}", "spectral", "1", "p"), (0, 0, 64, 48), insts)

def pause():
    print("inside", flush=True)
    time.sleep(60)
    return 0

cache = MaskCache(sys.argv[1])
if sys.argv[2] == "inside":
    # Stop inside the write transaction of tile 48, its row and 3 instances inserted, with a
    # page cache so small that the uncommitted pages have spilled into the WAL.
    cache._conn.execute("PRAGMA cache_size = 4")
    cache._conn.create_function("pause", 0, pause)
    cache._conn.execute(
        "CREATE TEMP TRIGGER stop AFTER INSERT ON instances WHEN NEW.tile_pk > 48 AND "
        "(SELECT count(*) FROM instances WHERE tile_pk = NEW.tile_pk) = 3 BEGIN SELECT pause(); END"
    )
for start in range(0, {n}, 8):
    cache.write_tiles([tile(t) for t in range(start, min(start + 8, {n}))], batch_size=8)
    print(min(start + 8, {n}), flush=True)
"""


@pytest.mark.parametrize("moment", ["inside", "anywhere"])
def test_kill_9_mid_run_leaves_whole_tiles_and_a_rerun_resumes(tmp_path: Path, moment: str) -> None:
    """A real SIGKILL: inside a tile's transaction, or wherever the writer happens to be."""
    path, n = tmp_path / "killed.sqlite", 400
    code = _WRITER.format(root=str(ROOT), n=n)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path), moment], stdout=subprocess.PIPE, text=True
    )
    committed = 0
    for line in proc.stdout:
        if line.strip() == "inside":
            break
        committed = int(line)
        if moment == "anywhere" and committed >= 48:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert committed < n, "the writer finished before the kill: make it slower"
    if moment == "inside":
        assert committed == 48
        assert Path(f"{path}-wal").stat().st_size > 0

    with MaskCache(path) as cache:
        assert cache.integrity_ok()
        tiles = list(cache.iter_tiles())
        assert len(tiles) >= committed
        by_tile = {}
        for info in tiles:
            t = int(info.tile_id[1:])
            stored = cache.read_tile("fp", info.tile_id)
            # every stored tile is complete: as many rows as it says, as many as were written
            assert info.n_instances == len(stored) == 8 * (1 + t % 7)
            by_tile[info.tile_id] = info.pk
        done = cache.done_tile_ids("fp", "spectral", "1", "p")
        assert done == set(by_tile)
        if moment == "inside":  # the tile being written when killed left nothing behind
            assert done == {f"t{t}" for t in range(48)}
        universe = {f"t{t}" for t in range(n)}
        missing = universe - done
        assert missing, "nothing left to resume"
        # the rerun computes only what is missing
        computed = []

        def compute():
            for tid in sorted(missing):
                computed.append(tid)
                t = int(tid[1:])
                yield TileResult(
                    TileKey("fp", tid, "spectral", "1", "p"),
                    (0, 0, 64, 48),
                    [inst(conf=0.5)] * (1 + t % 7),
                )

        cache.write_tiles(compute())
        assert set(computed) == missing
        assert cache.done_tile_ids("fp", "spectral", "1", "p") == universe
        assert {t.tile_id: t.pk for t in cache.iter_tiles() if t.tile_id in by_tile} == by_tile
        assert cache.integrity_ok()


# --- bad files and places --------------------------------------------------------------------
def test_a_new_cache_is_marked_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()  # a zero-length file is an empty database: it becomes a cache
    MaskCache(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with MaskCache(path, readonly=True) as reader:
        assert reader.schema_version == SCHEMA_VERSION and reader.integrity_ok()


def test_a_version_1_cache_is_upgraded_keeping_its_rows_and_decisions(tmp_path: Path) -> None:
    """A cache written before schema 2: its newest rows stay current, and their decisions
    (kept on computed rows in version 1) move to the edits rows and hide their look-alikes;
    an older row keeps its own (shown again when it is chosen, where no newer one covers
    them)."""
    from solardesk.core.cache import MIGRATIONS
    from solardesk.core.masks import encode_mask

    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(MIGRATIONS[0])
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO rasters (fingerprint) VALUES ('fp')")
    blob = encode_mask(np.ones((4, 4), bool))
    rows = {
        1: (P1, [(10, "accepted"), (40, "pending")]),
        2: (P2, [(10, "pending"), (60, "rejected"), (80, "pending")]),
    }
    for pk, (params, instances) in rows.items():
        conn.execute(
            "INSERT INTO tiles (id, raster_fp, tile_id, stage_id, stage_version, params_hash, "
            "col_off, row_off, width, height, n_instances, max_confidence, computed_at) "
            "VALUES (?, 'fp', 't0', 'spectral', '1', ?, 0, 0, 128, 48, ?, 0.9, 'then')",
            (pk, params, len(instances)),
        )
        for x0, review in instances:
            conn.execute(
                "INSERT INTO instances (tile_pk, x0, y0, x1, y1, mask, area_px, confidence, "
                "provenance, review, created_at, updated_at) "
                "VALUES (?, ?, 0, ?, 4, ?, 16, 0.9, 'spectral', ?, 'then', 'then')",
                (pk, x0, x0 + 4, blob, review),
            )
    conn.close()
    with MaskCache(path) as cache:
        assert cache.schema_version == SCHEMA_VERSION == 2
        shown = [(i.bbox[0], i.review) for i in cache.read_tile("fp", "t0")]
        # what version 1 showed: P2's rows with their decisions (P1's stay with P1's row)
        assert sorted(shown) == [(10, "pending"), (60, "rejected"), (80, "pending")]
        assert cache.stats()["by_review"] == {"pending": 2, "accepted": 0, "rejected": 1}
        (rejected,) = [i for i in cache.read_tile("fp", "t0") if i.review == "rejected"]
        assert cache.get_instance(rejected.id)[0].stage_id == EDITS_STAGE_ID  # it moved
        assert cache.choose("fp", "spectral", 1, P1, ["t0"]) == 1
        shown = [(i.bbox[0], i.review) for i in cache.read_tile("fp", "t0")]
        assert shown == [(10, "accepted"), (40, "pending"), (60, "rejected")]
        assert cache.integrity_ok()


def test_a_cache_from_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    MaskCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    conn.commit()
    conn.close()
    before = digest(path)
    for readonly in (False, True):
        with pytest.raises(CacheSchemaError) as exc:
            MaskCache(path, readonly=readonly)
        msg = str(exc.value)
        assert str(path) in msg and str(SCHEMA_VERSION + 3) in msg
        assert f"schema version {SCHEMA_VERSION})" in msg and "Upgrade SolarDesk" in msg
        assert isinstance(exc.value, OSError)  # CacheError mixes in OSError
    assert digest(path) == before


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 40, bytes(range(256)) * 8])
def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(CacheError, match="not a SolarDesk cache") as exc:
            MaskCache(path, readonly=readonly)
        assert str(path) in str(exc.value) and "choose another path" in str(exc.value)
        assert isinstance(exc.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == content
    assert not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("app_id", [0, 0x47504B47])  # none; GeoPackage's "GPKG"
def test_another_applications_database_is_refused_untouched(tmp_path: Path, app_id: int) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {app_id}")
    conn.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, geom BLOB)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(CacheSchemaError, match="another application") as exc:
        MaskCache(path)
    assert str(path) in str(exc.value) and "features" in str(exc.value)
    assert digest(path) == before  # not even switched to WAL


def test_read_only_and_missing_locations(tmp_path: Path) -> None:
    # /proc refuses new files even to root: an honest read-only location wherever tests run.
    if Path("/proc/self").is_dir():
        with pytest.raises(CacheError, match="writable") as exc:
            MaskCache("/proc/self/solardesk-cache.sqlite")
        assert "/proc/self/solardesk-cache.sqlite" in str(exc.value)
    with pytest.raises(CacheError, match="does not exist"):
        MaskCache(tmp_path / "no" / "such" / "folder" / "c.sqlite")
    with pytest.raises(CacheError, match="does not exist"):
        MaskCache(tmp_path / "absent.sqlite", readonly=True)
    with pytest.raises(CacheError, match="is a folder"):
        MaskCache(tmp_path)


def test_a_read_only_file_system(read_only_mount) -> None:
    where, remount_ro = read_only_mount
    with MaskCache(where / "c.sqlite") as writer:
        writer.write_tile(key("t0"), TILE, [inst()])
    remount_ro()
    with pytest.raises(CacheError, match="read-only") as exc:  # even root cannot write here
        MaskCache(where / "c.sqlite")
    assert "writable location" in str(exc.value)
    with pytest.raises(CacheError, match="read-only"):
        MaskCache(where / "new.sqlite")
    # readers still work: no -shm file can be made there, so the checkpointed cache is
    # opened immutable
    with MaskCache(where / "c.sqlite", readonly=True) as reader:
        assert len(reader.read_tile("fp", "t0")) == 1 and reader.integrity_ok()
        with pytest.raises(CacheError, match="read-only"):
            reader.set_review(1, "accepted")
        # an export into the read-only place says where and what to do
        with pytest.raises(CacheError, match="choose a writable path"):
            reader.export_coco(where / "out.json")


def test_writing_through_a_read_only_cache_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with MaskCache(path) as writer:
        iid = writer.add_instance("fp", "t0", inst(), window=TILE)
    before = digest(path)
    with MaskCache(path, readonly=True) as reader:
        for write in (
            lambda: reader.write_tile(key("t1"), TILE, [inst()]),
            lambda: reader.set_review(iid, "accepted"),
            lambda: reader.put_raster("fp", path="/x.tif"),
        ):
            with pytest.raises(CacheError, match="read-only") as exc:
                write()
            assert exc.value.__cause__.sqlite_errorname == "SQLITE_READONLY"
        assert reader.read_tile("fp", "t0")[0].review == "pending"
    assert digest(path) == before


def test_a_reader_leaves_no_wal_files_behind(tmp_path: Path) -> None:
    """A reader in a writable place is a query-only read-write connection: the last one to
    close removes the -wal and -shm files (a mode=ro one leaves them beside the cache), and
    the cache's bytes are those the writer left."""
    path = tmp_path / "c.sqlite"
    side = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    with MaskCache(path) as writer:
        writer.write_tile(key("t0"), TILE, [inst()])
    before = digest(path)
    assert not any(f.exists() for f in side)
    with MaskCache(path, readonly=True) as reader:
        assert all(f.exists() for f in side)  # WAL mode: a reader needs its index
        assert len(reader.read_tile("fp", "t0")) == 1
        with pytest.raises(CacheError, match="read-only") as exc:
            reader.set_review(1, "accepted")
        assert exc.value.__cause__.sqlite_errorname == "SQLITE_READONLY"
    assert not any(f.exists() for f in side) and digest(path) == before
    # beside a writer, a reader's close leaves the writer's files; the writer's close removes
    # them, and what it wrote meanwhile is there
    with MaskCache(path) as writer:
        with MaskCache(path, readonly=True) as reader:
            writer.write_tile(key("t1"), TILE, [inst()])
            assert len(reader.read_tile("fp", "t1")) == 1
        assert all(f.exists() for f in side)
    assert not any(f.exists() for f in side)
    with MaskCache(path, readonly=True) as reader:
        assert len(reader.read_tile("fp", "t1")) == 1 and reader.integrity_ok()


def test_a_damaged_mask_is_reported_as_a_damaged_cache(cache: MaskCache) -> None:
    cache.write_tile(key("t0"), TILE, [inst()])
    cache._conn.execute("UPDATE instances SET mask = x'00ff'")
    with pytest.raises(CacheError, match="damaged"):
        cache.read_tile("fp", "t0")


def test_a_full_disk_rolls_the_tile_back(cache: MaskCache) -> None:
    cache.write_tile(key("t0"), TILE, [inst()])
    pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
    cache._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk is nearly full
    rng = np.random.default_rng(0)
    big = [  # incompressible masks: far more than two pages
        Instance(bbox=(0, 0, 64, 48), mask=rng.random((48, 64)) < 0.5, confidence=0.9)
        for _ in range(60)
    ]
    with pytest.raises(CacheError, match="Disk full") as exc:
        cache.write_tile(key("t1"), TILE, big)
    assert str(cache.path) in str(exc.value) and "rolled back" in str(exc.value)
    assert exc.value.__cause__.sqlite_errorname == "SQLITE_FULL"
    assert not cache.is_done(key("t1")) and cache.read_tile("fp", "t1") == []
    assert len(cache.read_tile("fp", "t0")) == 1 and cache.integrity_ok()
    cache._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed: the rerun works
    cache.write_tile(key("t1"), TILE, big)
    assert len(cache.read_tile("fp", "t1")) == 60


def test_a_full_disk_while_creating_the_cache_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk full while a new cache is made: the error says the cache could not be created
    (not "upgrade" nor "finished tiles are kept"), whether the schema or the first pragma
    fails, and a rerun with space uses the file as it is. The file is not deleted: another
    writer may be creating the same cache at that moment."""
    migrate = MaskCache._migrate

    def on_a_full_disk(self: MaskCache, *args: object) -> None:
        self._conn.execute("PRAGMA max_page_count = 1")  # no room for the first table
        migrate(self, *args)

    monkeypatch.setattr(MaskCache, "_migrate", on_a_full_disk)
    path = tmp_path / "new.sqlite"
    with pytest.raises(CacheError, match="could not create the cache; no tile was written"):
        MaskCache(path)

    def full_at_once(self: MaskCache, conn: sqlite3.Connection) -> None:
        full = sqlite3.OperationalError("database or disk is full")
        full.sqlite_errorcode = 13  # SQLITE_FULL, as PRAGMA journal_mode = WAL raises it
        raise full

    with monkeypatch.context() as m:  # no room even for the file's header
        m.setattr(MaskCache, "_use_wal", full_at_once)
        with pytest.raises(CacheError, match="could not create the cache; no tile was written"):
            MaskCache(tmp_path / "other.sqlite")
    monkeypatch.setattr(MaskCache, "_migrate", migrate)  # space freed: the rerun creates it
    with MaskCache(path) as c:
        c.write_tile(key("t0"), TILE, [inst()])
        assert c.integrity_ok()


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    MaskCache(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with MaskCache(path, timeout=0.05) as second, pytest.raises(CacheError, match="locked"):
            second.write_tile(key(), TILE, [])
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_readers_have_their_own_connections(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with MaskCache(path) as writer:
        writer.write_tile(key("t0"), TILE, [inst()])
        results = []

        def read() -> None:  # a reader in another thread opens its own cache
            with MaskCache(path, readonly=True) as reader:
                results.append(len(reader.read_tile("fp", "t0")))

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        assert results == [1]
        errors = []

        def misuse() -> None:  # sharing the writer across threads is refused
            try:
                writer.is_done(key("t0"))
            except sqlite3.ProgrammingError as e:
                errors.append(e)

        thread = threading.Thread(target=misuse)
        thread.start()
        thread.join()
        assert errors


def test_close_checkpoints_and_a_closed_cache_says_so(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = MaskCache(path)
    cache.write_tile(key(), TILE, [inst()])
    assert Path(f"{path}-wal").stat().st_size > 0
    cache.close()
    cache.close()  # idempotent
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with pytest.raises(CacheError, match="closed"):
        cache.read_tile("fp", "t0")


# --- review ----------------------------------------------------------------------------------
def test_review_edits_survive_a_recompute(cache: MaskCache) -> None:
    cache.write_tile(
        key("t0"), TILE, [inst(conf=0.9), inst(x0=20, conf=0.4), inst(x0=40, conf=0.2)]
    )
    a, b, c = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "accepted")
    with pytest.raises(ValueError):
        cache.set_review(a.id, "maybe")
    with pytest.raises(KeyError):
        cache.set_review(10_000, "rejected")
    drawn = Instance(bbox=(10, 10, 14, 13), mask=np.ones((3, 4), bool), confidence=1.0)
    new_id = cache.add_instance("fp", "t0", drawn)
    cache.replace_mask(b.id, (20, 0, 23, 2), np.array([[1, 1, 0], [0, 1, 1]], bool))
    cache.delete_instance(c.id)
    with pytest.raises(KeyError):
        cache.delete_instance(c.id)
    got = {i.id: i for i in cache.read_tile("fp", "t0")}
    assert set(got) == {a.id, b.id, new_id}
    assert got[a.id].review == "accepted"
    assert got[new_id].provenance == "human" and got[new_id].bbox == (10, 10, 14, 13)
    assert (
        got[b.id].provenance == "human" and got[b.id].area_px == 4 and got[b.id].confidence == 0.4
    )
    # every decision (accepted, redrawn, drawn) now lives in the tile's edits row
    infos = {t.stage_id: t for t in cache.iter_tiles()}
    assert infos["spectral"].n_instances == 0 and infos[EDITS_STAGE_ID].n_instances == 3
    # recomputing the stage replaces its own row only: the edits stay
    cache.write_tile(key("t0"), TILE, [inst(x0=50, conf=0.95)])
    assert sorted(i.provenance for i in cache.read_tile("fp", "t0")) == [
        "human",
        "human",
        "spectral",  # the accepted one, still accepted
        "spectral",  # the recomputed one
    ]
    assert len(cache.read_tile("fp", "t0", include_edits=False)) == 1
    with pytest.raises(KeyError, match="not in cache"):
        cache.add_instance("fp", "never-computed", drawn)
    cache.add_instance("fp", "never-computed", drawn, window=(128, 0, 64, 48))
    # ids are never reused, so a UI holding an id never edits the wrong instance
    last = cache.add_instance("fp", "t0", drawn)
    cache.delete_instance(last)
    assert cache.add_instance("fp", "t0", drawn) > last


def test_decisions_survive_a_recompute_with_other_parameters(
    cache: MaskCache, tmp_path: Path
) -> None:
    """Accepted, rejected and redrawn instances stay what a person made them when the stage
    is recomputed with other parameters; the recomputed look-alikes (mask IoU >= 0.5) are
    hidden behind them, the other new candidates show, and deleting a person's instance shows
    its look-alike again."""
    cache.write_tile(key("t0", P1), TILE, [inst(x0=0), inst(x0=20), inst(x0=40, conf=0.5)])
    a, b, _ = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "accepted")
    cache.set_review(b.id, "rejected")
    # P2 finds a and b again (same outlines), c slightly moved, and one more candidate
    cache.write_tile(
        key("t0", P2),
        TILE,
        [inst(x0=0, conf=0.97), inst(x0=20, conf=0.96), inst(x0=41, conf=0.5), inst(x0=55)],
    )
    got = cache.read_tile("fp", "t0")
    assert [(i.bbox[0], i.review) for i in got] == [
        (0, "accepted"),
        (20, "rejected"),
        (41, "pending"),
        (55, "pending"),
    ]
    assert [i.id for i in got[:2]] == [a.id, b.id]
    st = cache.stats(threshold=0.85)
    assert st["instances"] == 4 and st["by_review"] == {
        "pending": 2,
        "accepted": 1,
        "rejected": 1,
    }
    assert [i.bbox[0] for _, i in cache.iter_instances(min_confidence=0.9)] == [0, 20, 55]
    counts = cache.export_coco(tmp_path / "coco.json", threshold=0.85)
    assert counts["annotations"] == 2  # a (accepted) and the new one; never b (rejected)
    # a person's instance hides the computed look-alikes of every row, not only the newest
    lookalike = inst(x0=20)
    redraw_id = cache.read_tile("fp", "t0")[3].id
    cache.replace_mask(redraw_id, (55, 0, 60, 4), np.ones((4, 5), bool))
    assert [i.bbox[0] for i in cache.read_tile("fp", "t0")] == [0, 20, 41, 55]
    # deleting the rejected one lets its look-alike (P2's) show again
    cache.delete_instance(b.id)
    again = [i for i in cache.read_tile("fp", "t0") if i.bbox[0] == 20]
    assert len(again) == 1 and again[0].review == "pending" and again[0].confidence == 0.96
    assert again[0].bbox == lookalike.bbox
    assert cache.integrity_ok()


def rect(x0: int, w: int, conf: float = 0.9, h: int = 8) -> Instance:
    return Instance(bbox=(x0, 0, x0 + w, h), mask=np.ones((h, w), bool), confidence=conf)


def shown(cache: MaskCache) -> list[tuple[int, int, str]]:
    return [(i.bbox[0], i.bbox[2], i.review) for i in cache.read_tile("fp", "t0")]


def test_what_people_made_hides_what_it_covers(cache: MaskCache) -> None:
    """A computed instance is hidden when people's instances together cover half of it —
    two people's over one, the parts of a split — and shows again when they no longer do
    (one deleted, a redraw moved away); a large candidate merely holding a small decided one
    stays."""
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10)])
    p = cache.add_instance("fp", "t0", rect(0, 9, 1.0))
    q = cache.add_instance("fp", "t0", rect(0, 10, 1.0))
    assert [x[:2] for x in shown(cache)] == [(0, 9), (0, 10)]  # the computed one hidden
    cache.delete_instance(q)
    assert [x[:2] for x in shown(cache)] == [(0, 9)]  # still covered by p
    cache.replace_mask(p, (40, 0, 49, 8), np.ones((8, 9), bool))  # moved away
    assert [x[:2] for x in shown(cache)] == [(0, 10), (40, 49)]
    cache.write_tile(key("t0", P2), TILE, [rect(0, 10, 0.93)])
    assert sorted(x[:2] for x in shown(cache)) == [(0, 10), (40, 49)]  # new rows alike

    # a candidate split into three parts by a person stays hidden after a recompute
    cache.write_tile(key("t1", P1), TILE, [rect(0, 30)])
    (whole,) = cache.read_tile("fp", "t1")
    cache.replace_mask(whole.id, (0, 0, 10, 8), np.ones((8, 10), bool))
    for x0 in (10, 20):
        cache.add_instance("fp", "t1", rect(x0, 10, 0.9), provenance="human")
    cache.write_tile(key("t1", P2), TILE, [rect(0, 30, 0.97)])
    assert [(i.bbox[0], i.provenance) for i in cache.read_tile("fp", "t1")] == [
        (0, "human"),
        (10, "human"),
        (20, "human"),
    ]

    # a roof-sized candidate holding a small accepted panel is not hidden by it
    cache.write_tile(key("t2", P1), TILE, [rect(0, 4)])
    (small,) = cache.read_tile("fp", "t2")
    cache.set_review(small.id, "accepted")
    cache.write_tile(key("t2", P2), TILE, [rect(0, 40, 0.6)])
    assert [(i.bbox[2], i.review) for i in cache.read_tile("fp", "t2")] == [
        (4, "accepted"),
        (40, "pending"),
    ]
    assert cache.integrity_ok()


def test_undoing_a_decision_gives_the_stage_result_back(cache: MaskCache) -> None:
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10, 0.5), rect(20, 10, 0.6)])
    a, b = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "accepted")
    cache.write_tile(key("t0", P2), TILE, [rect(0, 10, 0.95)])  # a found again, more confident
    assert shown(cache) == [(0, 10, "accepted")]
    cache.set_review(a.id, "pending")  # back to P1's row, which is not current
    assert [(i.bbox[0], i.confidence) for i in cache.read_tile("fp", "t0")] == [(0, 0.95)]
    assert cache.choose("fp", "spectral", 1, P1, ["t0"]) == 1
    assert [(i.id, i.review) for i in cache.read_tile("fp", "t0")] == [
        (a.id, "pending"),
        (b.id, "pending"),
    ]
    # where its row has been recomputed since, the undone instance gives way to the new one
    cache.set_review(b.id, "rejected")
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10, 0.5), rect(20, 10, 0.65)])  # forced
    assert sorted((i.bbox[0], i.review) for i in cache.read_tile("fp", "t0")) == [
        (0, "pending"),
        (20, "rejected"),
    ]
    cache.set_review(b.id, "pending")
    assert sorted((i.bbox[0], i.confidence) for i in cache.read_tile("fp", "t0")) == [
        (0, 0.5),
        (20, 0.65),
    ]
    with pytest.raises(KeyError):
        cache.get_instance(b.id)
    # a redrawn one stays a person's outline
    (c,) = [i for i in cache.read_tile("fp", "t0") if i.bbox[0] == 0]
    cache.set_review(c.id, "accepted")
    cache.replace_mask(c.id, (0, 0, 9, 8), np.ones((8, 9), bool))
    cache.set_review(c.id, "pending")
    assert cache.get_instance(c.id)[0].stage_id == EDITS_STAGE_ID
    assert cache.integrity_ok()


def test_prune_deletes_earlier_runs_and_changes_nothing_readers_see(cache: MaskCache) -> None:
    """Rows of other parameters go (per tile and stage, all but the one chosen last); what
    readers see, decisions and drawn panels stay; an undone decision whose row was pruned
    joins the current row; going back to pruned parameters computes them again."""
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10, 0.5), rect(20, 10, 0.6)])
    cache.write_tile(key("t1", P1), TILE, [rect(0, 6, 0.9)])
    a, _ = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "accepted")
    cache.add_instance("fp", "t1", rect(30, 5, 1.0), provenance="human")
    cache.write_tile(key("t0", P2), TILE, [rect(0, 10, 0.95), rect(40, 8, 0.7)])
    cache.write_tile(key("t1", P2), TILE, [rect(2, 6, 0.8)])
    cache.write_tile(key("t0", P1, stage="selftrain"), TILE, [rect(5, 5, 0.9)])  # another stage
    # P1's rows of t0 and t1; of their instances only b is still in them (a decided and t1's
    # candidate beside a drawn panel live in the edits rows now)
    assert cache.earlier_runs() == (2, 1)
    seen = {t: cache.read_tile("fp", t) for t in ("t0", "t1")}
    before = cache.stats()

    report = cache.prune()
    assert (report.tile_rows, report.instances) == (2, 1)
    assert report.bytes_after <= report.bytes_before
    assert cache.earlier_runs() == (0, 0)
    for t, instances in seen.items():
        assert [(i.id, i.bbox, i.review) for i in cache.read_tile("fp", t)] == [
            (i.id, i.bbox, i.review) for i in instances
        ]
    after = cache.stats()
    for k in ("tiles", "instances", "by_review", "by_provenance", "instances_above_threshold"):
        assert after[k] == before[k], k
    assert after["earlier_runs"] == {"tile_rows": 0, "instances": 0}
    assert after["tile_rows"] == before["tile_rows"] - 2
    assert not cache.is_done(key("t0", P1)) and cache.is_done(key("t0", P2))
    assert cache.is_done(key("t0", P1, stage="selftrain"))  # each stage keeps its last run
    # The accepted instance came from a pruned row: undone, it joins t0's current row (the
    # self-training one, chosen last) unless a look-alike there covers half of it, as the
    # 5-px square does: then it gives way, its own row being gone.
    cache.set_review(a.id, "pending")
    assert [(i.bbox[0], i.confidence) for i in cache.read_tile("fp", "t0")] == [(5, 0.9)]
    with pytest.raises(KeyError):
        cache.get_instance(a.id)
    assert cache.prune().tile_rows == 0 and cache.integrity_ok()

    # Another program reading (the desktop app): the rows go, the space comes back later.
    cache.write_tile(key("t1", P1), TILE, [rect(0, 6, 0.9)])  # P1 chosen again: P2 is earlier
    reader = sqlite3.connect(cache.path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tiles").fetchone()
    cache._live().execute("PRAGMA busy_timeout = 50")  # (the test need not wait 5 s)
    busy = cache.prune()
    assert (busy.tile_rows, busy.compacted) == (1, False)
    reader.rollback()
    reader.close()
    assert cache.prune().compacted and cache.earlier_runs() == (0, 0)


def test_a_person_s_instance_is_never_hidden(cache: MaskCache) -> None:
    """An instance hidden behind a decision (a GUI may still hold its id) that a person then
    decides or redraws shows, and stays shown when the other decision goes."""
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10), rect(1, 10)])
    a, b = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "accepted")
    assert [i.id for i in cache.read_tile("fp", "t0")] == [a.id]  # b is a's look-alike
    cache.set_review(b.id, "rejected")
    assert [(i.id, i.review) for i in cache.read_tile("fp", "t0")] == [
        (a.id, "accepted"),
        (b.id, "rejected"),
    ]
    assert cache.stats()["by_review"]["rejected"] == 1
    cache.delete_instance(a.id)
    cache.replace_mask(b.id, (30, 0, 40, 8), np.ones((8, 10), bool))
    assert [(i.id, i.bbox[0]) for i in cache.read_tile("fp", "t0")] == [(b.id, 30)]


def test_an_undone_decision_rejoins_a_row_made_without_it(cache: MaskCache) -> None:
    """Self-training makes its row from the current computed row, which lacks what people
    decided; undoing such a decision shows the candidate again, in that row."""
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10, 0.6), rect(20, 10, 0.95), rect(40, 10)])
    a, b, _ = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "accepted")
    cache.set_review(b.id, "rejected")
    base = cache.read_tile("fp", "t0", include_edits=False)
    cache.write_tile(key("t0", "relabel", stage="selftrain"), TILE, base)
    cache.set_review(a.id, "pending")
    cache.set_review(b.id, "pending")
    got = cache.read_tile("fp", "t0")
    assert sorted((i.bbox[0], i.review) for i in got) == [
        (0, "pending"),
        (20, "pending"),
        (40, "pending"),
    ]
    assert {a.id, b.id} <= {i.id for i in got}
    assert cache.stats()["instances"] == 3


def test_rows_written_together_are_all_marked(cache: MaskCache) -> None:
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10)])
    (a,) = cache.read_tile("fp", "t0")
    cache.set_review(a.id, "rejected")
    p3 = hash_params({"threshold": 0.55})
    cache.write_tiles(
        [
            TileResult(key("t0", P2), TILE, [rect(0, 10)]),
            TileResult(key("t0", p3), TILE, [rect(0, 10)]),
        ]
    )
    for params in (P2, p3):
        cache.choose("fp", "spectral", 1, params, ["t0"])
        assert [i.id for i in cache.read_tile("fp", "t0")] == [a.id]


# Two tiles of one raster overlapping on raster columns 48-63 (as a 16 px tiling overlap).
LEFT, RIGHT = (0, 0, 64, 48), (48, 0, 64, 48)


def at(x0: int, w: int, conf: float = 0.9, y0: int = 0, h: int = 8) -> Instance:
    return Instance(bbox=(x0, y0, x0 + w, y0 + h), mask=np.ones((h, w), bool), confidence=conf)


def reviews(cache: MaskCache, tile: str) -> list[tuple[int, str]]:
    return sorted((i.bbox[0], i.review) for i in cache.read_tile("fp", tile))


def test_a_decision_reaches_the_copies_of_the_object_in_overlapping_tiles(
    cache: MaskCache, tmp_path: Path
) -> None:
    """An object in the overlap is a candidate of both tiles: rejecting it in one rejects it in
    the other (else detect keeps the other's half and training its pseudo-label), undoing
    gives both back, and one cut by a tile's edge is still the same object."""
    cache.write_tile(key("left"), LEFT, [at(50, 10), at(56, 8, y0=20), at(0, 10, 0.95)])
    # right: the first object again (raster 50-60), the second whole (raster 56-72, the left
    # tile sees only its part up to 64), and one of its own
    cache.write_tile(key("right"), RIGHT, [at(2, 10), at(8, 16, y0=20), at(30, 10)])
    first, cut, own = cache.read_tile("fp", "left")
    r_first, r_whole, r_own = cache.read_tile("fp", "right")
    assert cache.set_review(first.id, "rejected") == [first.id, r_first.id]
    assert reviews(cache, "right") == [(2, "rejected"), (8, "pending"), (30, "pending")]
    counts = cache.export_coco(tmp_path / "coco.json", threshold=0.85)
    assert counts["annotations"] == 4  # six, less both copies of the rejected object
    assert cache.set_review(r_whole.id, "accepted") == [r_whole.id, cut.id]
    assert reviews(cache, "left") == [(0, "pending"), (50, "rejected"), (56, "accepted")]
    assert cache.set_review(first.id, "pending") == [first.id, r_first.id]
    assert reviews(cache, "right") == [(2, "pending"), (8, "accepted"), (30, "pending")]
    # an object of one tile only has no copy
    assert cache.set_review(own.id, "rejected") == [own.id]
    assert cache.set_review(r_own.id, "accepted") == [r_own.id]
    assert cache.integrity_ok()


def test_what_is_not_the_same_object_keeps_its_own_state(cache: MaskCache) -> None:
    """A small object in the overlap is no copy of a large candidate holding it there, nor of
    an object of the other tile beside it; a person's drawn instance is nobody's copy."""
    cache.write_tile(key("left"), LEFT, [at(50, 6), at(50, 4, y0=30, h=4)])
    cache.write_tile(key("right"), RIGHT, [at(0, 40, 0.6, h=16), at(10, 6, y0=30, h=4)])
    small, beside = cache.read_tile("fp", "left")
    assert cache.set_review(small.id, "accepted") == [small.id]
    assert cache.set_review(beside.id, "rejected") == [beside.id]
    assert [i.review for i in cache.read_tile("fp", "right")] == ["pending", "pending"]
    drawn = cache.add_instance("fp", "right", at(2, 10, 1.0, y0=40, h=4))
    cache.write_tile(key("left", P2), LEFT, [at(50, 10, y0=40, h=4)])
    assert cache.set_review(drawn, "rejected") == [drawn]
    assert [i.review for i in cache.read_tile("fp", "left") if i.bbox[1] == 40] == ["pending"]


def test_stats_count_the_copies_of_an_object_once(cache: MaskCache) -> None:
    """An object in the overlap of two tiles is a pseudo-label of each; as objects it counts
    once (also when one tile sees only part of it), a person's drawn instance beside a
    computed one is its own, and another raster's objects are others."""
    # left: A in the overlap, B cut by the tile's edge, C and D of its own (D under the
    # person's drawing of the right tile)
    cache.write_tile(key("left"), LEFT, [at(50, 10), at(56, 8, y0=20), at(0, 10, 0.95)])
    cache.add_instance("fp", "left", at(20, 10, 1.0, y0=40, h=4))  # drawn: nobody's copy
    # right: A again, B whole, E of its own, a weak candidate under the threshold
    cache.write_tile(
        key("right"), RIGHT, [at(2, 10), at(8, 16, y0=20), at(30, 10), at(40, 6, 0.5, y0=30)]
    )
    cache.write_tile(key("t0", raster="fp2"), LEFT, [at(50, 10)])  # same window, other raster
    st = cache.stats(threshold=0.85, objects=True)
    assert st["instances_above_threshold"] == 8
    assert st["objects_above_threshold"] == 6  # A, B, C, drawn, E and fp2's
    # the same count alone, and one raster's (the GUI's layer panel shows it)
    assert cache.count_objects(0.85) == 6
    assert (cache.count_objects(0.85, "fp"), cache.count_objects(0.85, "fp2")) == (5, 1)
    assert cache.count_objects(0.85, "no such raster") == 0
    assert cache.stats(threshold=0.85)["objects_above_threshold"] is None  # not asked for
    assert cache.stats(threshold=0.3, objects=True)["objects_above_threshold"] == 7
    assert cache.stats(threshold=0.99, objects=True)["objects_above_threshold"] == 1
    # tiles one above the other, past the first 256 rows of the raster: an object that
    # starts above row 256 in the upper tile is still found beside its copy in the lower one
    up, down = (0, 230, 64, 48), (0, 262, 64, 48)
    cache.write_tile(TileKey("fp3", "up", "spectral", 1, P1), up, [at(0, 8, y0=20, h=25)])
    cache.write_tile(TileKey("fp3", "down", "spectral", 1, P1), down, [at(0, 8, y0=0, h=13)])
    st = cache.stats(threshold=0.85, objects=True)
    assert (st["instances_above_threshold"], st["objects_above_threshold"]) == (10, 7)
    # an object across three tiles, the outer two not overlapping: the middle tile's copy,
    # under the threshold, still joins them (as set_review follows it)
    for tid, col, piece in (("l", 0, at(40, 24)), ("m", 48, at(0, 64, 0.5)), ("r", 96, at(0, 24))):
        cache.write_tile(TileKey("fp4", tid, "spectral", 1, P1), (col, 0, 64, 48), [piece])
    st = cache.stats(threshold=0.85, objects=True)
    assert (st["instances_above_threshold"], st["objects_above_threshold"]) == (12, 8)
    # a person's drawing over the right tile's copy of A hides that copy, and the left tile's
    # A too (it covers all of it: the review layer hides it, stop 38): still one object A
    cache.add_instance("fp", "right", at(2, 10, 1.0))
    st = cache.stats(threshold=0.85, objects=True)
    assert (st["instances_above_threshold"], st["objects_above_threshold"]) == (12, 8)


def test_counting_objects_holds_one_band_of_a_raster_however_large_the_cache(
    tmp_path: Path,
) -> None:
    """``cache stats`` counts objects (copies in overlapping tiles once) in memory that does
    not grow with the cache: the same count per tile and the same peak for 4× the tiles."""
    import tracemalloc

    def count(n_tiles: int) -> tuple[int, int]:
        # one column of overlapping tiles down a tall raster, an object in each overlap
        path = tmp_path / f"c{n_tiles}.sqlite"
        with MaskCache(path) as c:
            c.write_tiles(
                TileResult(
                    key(f"t{i}"),
                    (0, 40 * i, 64, 48),
                    [at(0, 8), at(0, 8, y0=40), at(20, 8, y0=16), at(40, 8, 0.5, y0=16)],
                )
                for i in range(n_tiles)
            )
        with MaskCache(path, readonly=True) as c:
            tracemalloc.start()
            n = c.count_objects(0.85)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return n, peak

    (small, small_peak), (large, large_peak) = count(500), count(2000)
    # rows 40-48 of tile i are rows 0-8 of tile i + 1: one object, stored in both; the top of
    # the first tile and the bottom of the last are seen once; each tile has one of its own
    assert (small, large) == (2 * 500 + 1, 2 * 2000 + 1)
    assert large_peak < 1.25 * small_peak, (small_peak, large_peak)


def test_copies_computed_after_the_decision_take_it(cache: MaskCache) -> None:
    """A tile computed (or recomputed with other parameters) after a person decided on an
    object of the tile beside it shows that decision on its copy of the object."""
    cache.write_tile(key("left"), LEFT, [at(50, 10), at(52, 10, y0=20)])
    rejected, accepted = cache.read_tile("fp", "left")
    cache.set_review(rejected.id, "rejected")
    cache.set_review(accepted.id, "accepted")
    cache.write_tile(key("right"), RIGHT, [at(2, 10), at(4, 10, y0=20), at(30, 10)])
    assert reviews(cache, "right") == [(2, "rejected"), (4, "accepted"), (30, "pending")]
    cache.write_tile(key("right", P2), RIGHT, [at(2, 11, 0.97), at(30, 10)])
    assert reviews(cache, "right") == [(2, "rejected"), (4, "accepted"), (30, "pending")]
    st = cache.stats()
    assert st["by_review"] == {"pending": 1, "accepted": 2, "rejected": 2}
    # undoing on either side gives both copies back to the stage
    (r_copy,) = [i for i in cache.read_tile("fp", "right") if i.review == "rejected"]
    assert set(cache.set_review(r_copy.id, "pending")) == {r_copy.id, rejected.id}
    assert [r for _, r in reviews(cache, "left")] == ["pending", "accepted"]
    assert cache.integrity_ok()


def test_a_decision_travels_along_an_object_longer_than_the_overlap(cache: MaskCache) -> None:
    """An object across three tiles of a row, the first and the third not overlapping: a
    decision on the first reaches the third through the second, in set_review, in a batch
    written after it (in any order) and in an undo."""
    a_win, b_win, c_win = (0, 0, 64, 48), (48, 0, 64, 48), (96, 0, 64, 48)
    # raster columns 40-110: A holds 40-63, B all of it, C 96-109
    cache.write_tile(key("A"), a_win, [at(40, 24)])
    cache.write_tile(key("B"), b_win, [at(0, 62)])
    cache.write_tile(key("C"), c_win, [at(0, 14)])
    (a,) = cache.read_tile("fp", "A")
    assert len(cache.set_review(a.id, "rejected")) == 3
    assert [r for t in "BC" for _, r in reviews(cache, t)] == ["rejected", "rejected"]
    assert len(cache.set_review(a.id, "pending")) == 3
    assert [r for t in "ABC" for _, r in reviews(cache, t)] == ["pending"] * 3
    assert cache.integrity_ok()


@pytest.mark.parametrize("order", ["BC", "CB"])
def test_a_batch_passes_a_decision_along_an_object_in_any_order(tmp_path: Path, order: str) -> None:
    """B and C written together after a decision on A: C (which does not overlap A) takes it
    through B's copy, whichever comes first — also when C takes another object's decision
    (from D, below it) in the same pass."""
    a_win, b_win, c_win = (0, 0, 64, 48), (48, 0, 64, 48), (96, 0, 64, 48)
    d_win = (96, 32, 64, 48)
    with MaskCache(tmp_path / "c.sqlite") as c:
        c.write_tile(key("A"), a_win, [at(40, 24)])
        c.write_tile(key("D"), d_win, [at(30, 10, y0=2)])  # another object, decided too
        for t in "AD":
            (i,) = c.read_tile("fp", t)
            c.set_review(i.id, "accepted")
        rows = {
            "B": TileResult(key("B"), b_win, [at(0, 62, 0.8)]),
            "C": TileResult(key("C"), c_win, [at(0, 14, 0.8), at(30, 10, y0=34)]),
        }
        c.write_tiles([rows[t] for t in order])
        assert [i.review for t in "BC" for i in c.read_tile("fp", t)] == ["accepted"] * 3


def test_shown_tells_which_ids_readers_see(cache: MaskCache) -> None:
    cache.write_tile(key("t0", P1), TILE, [rect(0, 10), rect(20, 10)])
    old_a, old_b = cache.read_tile("fp", "t0")
    cache.write_tile(key("t0", P2), TILE, [rect(0, 10, 0.95), rect(40, 10)])
    new_a, new_c = cache.read_tile("fp", "t0")
    assert cache.shown([old_a.id, old_b.id, new_a.id, new_c.id, 10_000]) == {new_a.id, new_c.id}
    cache.set_review(new_c.id, "rejected")
    cache.add_instance("fp", "t0", rect(0, 10, 1.0))  # hides new_a
    assert cache.shown([new_a.id, new_c.id]) == {new_c.id} and cache.shown([]) == set()


def test_copies_shown_again_take_the_decision(cache: MaskCache) -> None:
    """Rows chosen again, and a computed copy shown again when the decided instance that hid
    it is deleted, take the decision made on the tile beside; two look-alikes of one tile that
    are both copies give one decided instance, not two."""
    cache.write_tile(key("right", P1), RIGHT, [at(2, 10)])
    cache.write_tile(key("right", P2), RIGHT, [at(30, 10)])  # lacks the object
    cache.write_tile(key("left"), LEFT, [at(50, 10)])
    (x,) = cache.read_tile("fp", "left")
    assert cache.set_review(x.id, "rejected") == [x.id]  # the right tile shows no copy
    assert cache.choose("fp", "spectral", 1, P1, ["right"]) == 1
    assert reviews(cache, "right") == [(2, "rejected")]
    # the decided copy hides the right tile's recomputed look-alike; deleting it shows that
    # one, which takes the left tile's decision
    cache.write_tile(key("right", P2), RIGHT, [at(2, 10, 0.95)])
    (decided,) = cache.read_tile("fp", "right")
    cache.delete_instance(decided.id)
    (again,) = cache.read_tile("fp", "right")
    assert again.id != decided.id and again.review == "rejected"
    # two look-alikes in one tile, both copies of the object beside
    cache.write_tile(key("l2"), LEFT, [at(50, 10, y0=30)])
    cache.write_tile(key("r2"), RIGHT, [at(2, 10, y0=30), at(2, 10, 0.8, y0=31, h=7)])
    (y,) = cache.read_tile("fp", "l2")
    assert len(cache.set_review(y.id, "accepted")) == 2
    assert [r for _, r in reviews(cache, "r2")] == ["accepted"]


def test_a_key_given_twice_in_one_batch_is_written_once_with_decisions_around(
    cache: MaskCache,
) -> None:
    cache.write_tile(key("left"), LEFT, [at(50, 10)])
    (x,) = cache.read_tile("fp", "left")
    cache.set_review(x.id, "rejected")
    cache.write_tiles([TileResult(key("right"), RIGHT, [at(2, 10)])] * 2)
    assert reviews(cache, "right") == [(2, "rejected")]
    assert cache.integrity_ok()


def test_choosing_earlier_parameters_shows_their_rows_again(cache: MaskCache) -> None:
    cache.write_tile(key("t0", P1), TILE, [inst(x0=0), inst(x0=20)])
    cache.write_tile(key("t1", P1), TILE, [inst(x0=0)])
    cache.write_tile(key("t0", P2), TILE, [inst(x0=30)])
    assert [i.bbox[0] for i in cache.read_tile("fp", "t0")] == [30]
    assert cache.choose("fp", "spectral", 1, P1, ["t0", "t1"]) == 1  # t1 was current already
    assert [i.bbox[0] for i in cache.read_tile("fp", "t0")] == [0, 20]
    assert cache.stats()["instances"] == 3
    assert {t.params_hash for t in cache.iter_tiles()} == {P1}
    assert cache.choose("fp", "spectral", 1, P1, ["t0", "t1"]) == 0  # nothing to change
    # and writing P2 again (or choosing it) makes it current once more
    assert cache.choose("fp", "spectral", 1, P2, ["t0"]) == 1
    assert [i.bbox[0] for i in cache.read_tile("fp", "t0")] == [30]
    # what a run ran is what readers see, also over another stage's row made since
    cache.write_tile(key("t0", stage="selftrain"), TILE, [inst(x0=40)])
    assert [i.bbox[0] for i in cache.read_tile("fp", "t0")] == [40]
    assert cache.choose("fp", "spectral", 1, P1, ["t0"]) == 1
    assert [i.bbox[0] for i in cache.read_tile("fp", "t0")] == [0, 20]


def test_closing_the_writer_does_not_wait_for_a_reader(tmp_path: Path) -> None:
    import time

    path = tmp_path / "c.sqlite"
    writer = MaskCache(path)
    writer.write_tiles([TileResult(key(f"t{i}"), TILE, [inst()]) for i in range(50)])
    with MaskCache(path, readonly=True) as reader:
        scan = reader.iter_instances()
        next(scan)  # a reader mid-scan holds its snapshot of the WAL
        t0 = time.perf_counter()
        writer.close()
        assert time.perf_counter() - t0 < 1.0  # the busy timeout is 5 s
        assert sum(1 for _ in scan) == 49
    with MaskCache(path) as again:  # the next writer finishes the checkpoint
        assert again.stats()["instances"] == 50


class _CommitBetweenStatements:
    """A connection that lets another writer commit just before its statement containing
    ``when`` runs: a commit that a concurrent pre-compute or edit can make at that moment."""

    def __init__(self, conn, when: str, hook) -> None:
        self.conn, self.when, self.hook = conn, when, hook

    def execute(self, sql, params=()):
        if self.hook is not None and self.when in sql:
            hook, self.hook = self.hook, None
            hook()
        return self.conn.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_readers_see_one_state_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with MaskCache(path) as writer, MaskCache(path, readonly=True) as reader:
        writer.write_tile(key("t0"), TILE, [inst()])
        real = reader._conn
        reader._conn = _CommitBetweenStatements(
            real, "CROSS JOIN", lambda: writer.write_tile(key("t1"), TILE, [inst(x0=8)])
        )
        reader.export_coco(tmp_path / "coco.json", threshold=0.5)
        data = json.loads((tmp_path / "coco.json").read_text())
        images = {i["id"] for i in data["images"]}
        assert images and all(a["image_id"] in images for a in data["annotations"])
        assert len(data["annotations"]) == 1  # what the file held when the export began
        (i0,) = writer.read_tile("fp", "t0")
        reader._conn = _CommitBetweenStatements(
            real,
            "FROM instances i WHERE",
            lambda: writer.replace_mask(i0.id, (0, 0, 2, 2), np.ones((2, 2), bool)),
        )
        assert [i.id for i in reader.read_tile("fp", "t0")] == [i0.id]  # not [] mid-redraw
        reader._conn = real
        assert reader.read_tile("fp", "t0")[0].bbox == (0, 0, 2, 2)


def test_iter_instances_filters_and_streams(cache: MaskCache) -> None:
    cache.write_tile(key("t0"), TILE, [inst(conf=0.9), inst(x0=10, conf=0.5)])
    cache.write_tile(key("t1", raster="fp2"), TILE, [inst(conf=0.95, provenance="model")])
    newer = [inst(x0=20, conf=0.86), inst(x0=30, conf=0.3)]
    cache.write_tile(key("t0", P2), TILE, newer)  # newer params
    (first,) = cache.read_tile("fp", "t0", min_confidence=0.8)
    cache.set_review(first.id, "rejected")  # moves to the edits row
    it = cache.iter_instances()
    assert iter(it) is it  # a generator, not a list
    confs = [i.confidence for _, i in it]
    assert confs == [0.95, 0.86, 0.3]  # the current rows only, by id
    assert len(list(cache.iter_instances(current_only=False))) == 5
    assert [i.confidence for _, i in cache.iter_instances(0.85)] == [0.95, 0.86]
    assert [i.confidence for _, i in cache.iter_instances(provenance="model")] == [0.95]
    assert [i.confidence for _, i in cache.iter_instances(review=["pending"])] == [0.95, 0.3]
    assert [t.raster_fp for t, _ in cache.iter_instances(raster_fp="fp2")] == ["fp2"]
    by_p1 = [i.confidence for _, i in cache.iter_instances(params_hash=P1)]
    assert by_p1 == [0.9, 0.5, 0.95, 0.86]  # P1's rows and the edits
    tile, _ = next(cache.iter_instances(raster_fp="fp", include_edits=False))
    assert tile.key == key("t0", P2) and tile.window == TILE
    with pytest.raises(ValueError):
        next(cache.iter_instances(review="maybe"))


# --- reports ---------------------------------------------------------------------------------
def test_stats(cache: MaskCache) -> None:
    cache.write_tile(key("t0", P1), TILE, [inst(conf=0.9), inst(conf=0.2)])
    cache.write_tile(key("t1"), TILE, [inst(conf=0.5)])
    cache.write_tile(key("t2"), TILE, [])
    cache.write_tile(key("t0", P2), TILE, [inst(conf=0.95), inst(conf=0.9), inst(conf=0.1)])
    s = cache.stats(threshold=0.85)
    assert (s["tiles"], s["tile_rows"], s["instances"]) == (3, 4, 4)
    assert (s["instances_above_threshold"], s["tiles_above_threshold"]) == (2, 1)
    assert s["share_tiles_above_threshold"] == pytest.approx(1 / 3)
    assert s["by_provenance"] == {"spectral": 4, "model": 0, "human": 0}
    assert s["rasters"] == 1 and s["schema_version"] == SCHEMA_VERSION
    files = [Path(f"{cache.path}{x}") for x in ("", "-wal", "-shm")]
    assert s["size_bytes"] == sum(f.stat().st_size for f in files if f.exists()) > 0
    assert [st["tile_rows"] for st in s["stages"]] == [3, 1]
    cache.add_instance("fp", "t2", inst(conf=1.0, scores=None))
    s = cache.stats(threshold=0.85)
    assert (s["tiles"], s["instances"], s["instances_above_threshold"]) == (3, 5, 3)
    assert s["share_tiles_above_threshold"] == pytest.approx(2 / 3)
    assert s["by_provenance"]["human"] == 1
    assert cache.stats(threshold=0.0)["share_tiles_above_threshold"] == 1.0
    json.dumps(s)  # the CLI prints it as JSON


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_export_coco(cache: MaskCache, tmp_path: Path) -> None:
    cache.put_raster("fp", path="/data/scene.tif")
    rng = np.random.default_rng(5)
    shapes = [(0, 0, 64, 48), (3, 4, 17, 9), (60, 40, 4, 8), (10, 10, 1, 1)]
    instances = [
        Instance(
            bbox=(x, y, x + w, y + h),
            mask=(rng.random((h, w)) < 0.7) | (np.arange(w) == 0),
            confidence=c,
        )
        for (x, y, w, h), c in zip(shapes, [0.9, 0.95, 0.99, 0.2], strict=True)
    ]
    cache.write_tile(key("t0"), TILE, instances)
    cache.write_tile(key("t1"), (64, 0, 64, 48), [inst(conf=0.3)])  # nothing kept: a negative
    low, rejected = cache.read_tile("fp", "t0")[3], cache.read_tile("fp", "t0")[1]
    cache.set_review(low.id, "accepted")  # accepted below threshold: exported
    cache.set_review(rejected.id, "rejected")  # rejected above threshold: not exported
    out = tmp_path / "coco.json"
    assert cache.export_coco(out, threshold=0.85) == {"images": 2, "annotations": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if "coco" in p.name) == ["coco.json"]
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "solar_panel", "supercategory": "solar"}]
    images = {im["tile_id"]: im for im in coco["images"]}
    assert images["t1"]["col_off"] == 64 and images["t0"]["file_name"] == "/data/scene.tif"
    assert (images["t0"]["width"], images["t0"]["height"], images["t0"]["raster_fp"]) == (
        64,
        48,
        "fp",
    )
    stored = {i.id: i for i in cache.read_tile("fp", "t0")}
    assert {a["id"] for a in coco["annotations"]} == {i.id for i in stored.values()} - {rejected.id}
    for ann in coco["annotations"]:
        i = stored[ann["id"]]
        assert ann["image_id"] == images["t0"]["id"] and ann["category_id"] == 1
        np.testing.assert_array_equal(coco_rle_to_mask(ann["segmentation"]), i.full_mask(48, 64))
        x0, y0, x1, y1 = i.bbox
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["area"] == i.area_px
        assert ann["score"] == i.confidence and ann["iscrowd"] == 0
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError:
        return
    gt = COCO(str(out))
    for ann in coco["annotations"]:
        expected = stored[ann["id"]].full_mask(48, 64)
        np.testing.assert_array_equal(gt.annToMask(gt.anns[ann["id"]]).astype(bool), expected)
        rle = mask_utils.frPyObjects(ann["segmentation"], 48, 64)
        assert list(mask_utils.toBbox(rle)) == ann["bbox"]


def test_an_export_never_replaces_the_cache_nor_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with MaskCache(path) as writer:
        writer.write_tile(key("t0"), TILE, [inst(conf=0.9)])
        before = writer.stats()["instances"]
        (tmp_path / "alias.sqlite").symlink_to(path)
        names = [
            path,  # the cache itself
            Path(f"{path}-wal"),  # its write-ahead log, open right now
            tmp_path / "sub" / ".." / "c.sqlite",  # the same file by another path
            tmp_path / "alias.sqlite",  # a link to it
        ]
        for out in names:
            with pytest.raises(CacheError, match="would destroy it"):
                writer.export_coco(out, overwrite=True)
        (tmp_path / "sub").mkdir()
        with pytest.raises(CacheError, match="would destroy it"):
            writer.export_coco(tmp_path / "sub" / ".." / "c.sqlite", overwrite=True)
        # an existing file is kept unless the caller asks to replace it
        other = tmp_path / "coco.json"
        other.write_text("my notes")
        with pytest.raises(CacheError, match="already exists; pass --overwrite"):
            writer.export_coco(other)
        assert other.read_text() == "my notes"
        assert writer.export_coco(other, overwrite=True)["annotations"] == 1
        assert json.loads(other.read_text())["annotations"]
        with pytest.raises(CacheError, match="is a folder"):
            writer.export_coco(tmp_path / "sub", overwrite=True)
    # opened through a link, the files SQLite writes beside the link's target are the cache's
    with MaskCache(tmp_path / "alias.sqlite", readonly=True) as reader:
        assert Path(f"{path}-wal").exists()
        with pytest.raises(CacheError, match="is a file of the cache"):
            reader.export_coco(Path(f"{path}-wal"), overwrite=True)
    with MaskCache(path, readonly=True) as reader:
        assert reader.stats()["instances"] == before and reader.integrity_ok()
    # the export writes a new file of its own before renaming it: a cache named as a
    # temporary file once was ("x.part") is not touched, and nothing is left behind
    MaskCache(path).close()
    os.replace(path, tmp_path / "x.part")
    with MaskCache(tmp_path / "x.part") as cache:
        cache.export_coco(tmp_path / "x")
        assert cache.integrity_ok() and cache.stats()["instances"] == before
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith((".x", "x"))} == {
        "x",
        "x.part",
    }


def test_splits(cache: MaskCache) -> None:
    cache.set_splits({("fp", "t0"): "train", ("fp", "t1"): "val"})
    cache.set_splits([("fp", "t1", "train")])
    assert cache.get_splits() == {("fp", "t0"): "train", ("fp", "t1"): "train"}
    with pytest.raises(ValueError):
        cache.set_splits([("fp", "t2", "test")])


def test_hash_params_is_canonical() -> None:
    assert hash_params({"a": 1, "b": [0.5, 2]}) == hash_params({"b": [0.5, 2], "a": 1})
    assert hash_params({"a": 1}) != hash_params({"a": 1.0000001})
    assert len(hash_params({})) == 16


def test_a_drawn_panel_is_read_in_the_tiles_beside_it(cache: MaskCache) -> None:
    """A person's panel lives in one tile's edits row; with ``drawn_nearby`` the overlapping
    tile reads it too, cut to its window, and its own computed outline of that panel is left
    out (as in the panel's own tile). Without, nothing changes."""
    left, right = (0, 0, 64, 48), (48, 0, 64, 48)  # overlapping by 16 columns
    # The right tile's own (computed) outline of the panel, and an unrelated candidate.
    outline = Instance(bbox=(0, 10, 8, 20), mask=np.ones((10, 8), bool), confidence=0.9)
    cache.write_tile(key("tl"), left, [])
    cache.write_tile(key("tr"), right, [outline, inst(x0=40, y0=30, conf=0.95)])
    # Drawn in the left tile: columns 40..57 of the raster, rows 10..20 (seen by this
    # connection and by a reader's, though each read before it)
    drawn = Instance(bbox=(40, 10, 58, 20), mask=np.ones((10, 18), bool), confidence=1.0)
    reader = MaskCache(cache.path, readonly=True)
    for c in (cache, reader):
        assert len(c.read_tile("fp", "tr", drawn_nearby="hide")) == 2
    did = cache.add_instance("fp", "tl", drawn)
    for c in (cache, reader):
        assert len(c.read_tile("fp", "tr", drawn_nearby="hide")) == 1
    reader.close()
    plain = cache.read_tile("fp", "tr")
    assert [i.provenance for i in plain] == ["spectral", "spectral"]
    near = cache.read_tile("fp", "tr", drawn_nearby="add")
    assert [(i.provenance, i.bbox) for i in near] == [
        ("spectral", (40, 30, 45, 34)),  # the unrelated candidate stays
        ("human", (0, 10, 10, 20)),  # raster columns 48..57, in the right tile's pixels
    ]
    assert near[1].id == did and near[1].mask.all()
    # "hide": what the review layer shows of the tile beside, the outline gone, nothing added
    assert [i.bbox for i in cache.read_tile("fp", "tr", drawn_nearby="hide")] == [(40, 30, 45, 34)]
    with pytest.raises(ValueError, match="drawn_nearby"):
        cache.read_tile("fp", "tr", drawn_nearby="yes")
    # The left tile reads its own panel once, and a tile the panel does not reach is as it was.
    assert [i.id for i in cache.read_tile("fp", "tl", drawn_nearby="add")] == [did]
    cache.write_tile(key("far"), (200, 0, 64, 48), [inst(conf=0.9)])
    assert len(cache.read_tile("fp", "far", drawn_nearby="add")) == 1
    # The COCO export writes each tile as training reads it: the piece in the tile beside
    # is an annotation of its own (a new id), the outline it covers is not written.
    out = cache.path.parent / "coco.json"
    assert cache.export_coco(out, threshold=0.85) == {"images": 3, "annotations": 4}
    coco = json.loads(out.read_text())
    image = {im["tile_id"]: im["id"] for im in coco["images"]}
    by_image = {
        tid: sorted((a["provenance"], tuple(a["bbox"])) for a in coco["annotations"]
                    if a["image_id"] == image[tid])
        for tid in image
    }  # fmt: skip
    assert by_image["tl"] == [("human", (40, 10, 18, 10))]
    assert by_image["tr"] == [("human", (0, 10, 10, 10)), ("spectral", (40, 30, 5, 4))]
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids) and did in ids
    # Another raster's tile at the same pixels is another place.
    cache.write_tile(key("tr", raster="other"), right, [outline])
    assert [i.provenance for i in cache.read_tile("other", "tr", drawn_nearby="add")] == [
        "spectral"
    ]
    # Counted as objects as the layer shows them: the drawn panel, the unrelated candidate,
    # the far tile's and the other raster's; the hidden outline is the drawn panel's object.
    assert cache.count_objects(0.85) == 4
    # A decision is a person's too: an outline accepted in the tile beside stays in view.
    cache.set_review(plain[0].id, "accepted")
    assert plain[0].id in {i.id for i in cache.read_tile("fp", "tr", drawn_nearby="hide")}
    assert cache.count_objects(0.85) == 5

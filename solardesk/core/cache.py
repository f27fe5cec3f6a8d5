"""The mask cache: one SQLite file per project holding pseudo-label instances per tile.

What it guarantees
------------------
* **Keyed work.** A computed tile is stored under a :class:`TileKey` = raster fingerprint + tile
  id + stage id + stage version + parameter hash. Rerunning with the same key computes nothing
  (:meth:`MaskCache.done_tile_ids` answers for a whole raster in one query); a changed parameter
  hashes to another key (:func:`hash_params`), so only the stages it touches recompute.
* **Atomic tiles.** A tile row and all its instances are written in one transaction: a crash or
  ``kill -9`` leaves the whole tile or nothing, and a tile row is what "done" means. A full disk
  rolls the transaction back and raises :class:`~solardesk.errors.CacheError`.
* **One writer.** WAL journal, ``synchronous=NORMAL`` (a killed process loses nothing committed;
  a power cut may lose the last transactions but never corrupts the file), foreign keys on.
  One :class:`MaskCache` opened for writing per file, used by one thread at a time. Readers,
  in any thread or process, open their own ``MaskCache(path, readonly=True)``; connections are
  never shared between threads (``check_same_thread`` stays on and says so if one is). A
  reader also opens a cache on read-only media (opened immutable once its WAL is merged).
  Where the cache's place is writable a reader's connection is a query-only read-write one:
  no statement can write through it, and as the last connection to close it removes the
  ``-wal`` and ``-shm`` files, which a ``mode=ro`` connection would leave beside the cache
  (merging first what a killed writer committed to the WAL, as the next writer would).
* **Lazy reads.** :meth:`MaskCache.read_tile` decodes one tile's masks (well under a millisecond
  for a typical tile); :meth:`MaskCache.iter_instances` and :meth:`MaskCache.export_coco` stream
  rows, and :meth:`MaskCache.stats` with ``objects`` holds one band of a raster at a time, so
  memory does not grow with the cache.
* **Versioned schema.** ``PRAGMA application_id`` marks SolarDesk caches and ``PRAGMA
  user_version`` holds the schema version; :data:`MIGRATIONS` are applied in order, each run in
  the transaction that records the new version. A newer schema, a file that is not SQLite or
  another application's database raises a clear error and the file is left untouched.

Rows, current rows and edits
----------------------------
A physical tile (raster fingerprint + tile id) may hold several rows: one per computed
stage/version/parameter set, plus at most one *edits* row (stage :data:`EDITS_STAGE_ID`) that
holds what people decided, added or redrew. Readers that do not name a stage see a tile's
*current* rows: the computed row chosen last (written, or chosen again with
:meth:`MaskCache.choose` when a run finds it done; optionally restricted to a stage, version or
parameter hash) plus its edits row. Old rows stay until deleted, so going back to earlier
parameters costs nothing. Rewriting a key that is already stored replaces that row and its
instances (a forced recompute); the edits row is never replaced by a computation (ADR 0046).

An instance a person accepts, rejects or redraws moves to its tile's edits row, and
the edits row's instances hide (``superseded_by``) the instances of the tile's computed rows
that they stand for — together they cover at least :data:`SUPERSEDE_SHARE` of the computed
mask — also those of rows written later: a decision outlives any recompute, and a recomputed
look-alike never shows beside it. Tiles overlap, so an object near a seam is a candidate of each
tile that holds it: a decision on one of those *copies* (:data:`COPY_IOU`) is given to the
others, also to those computed later (ADR 0047).

Masks are stored cropped to their bounding box with :func:`solardesk.core.masks.encode_mask`
(bit-packed + zlib); nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import sqlite_utils

from solardesk import __version__
from solardesk.core.files import (
    remove_stale_temporaries,
    replace_durably,
    same_file,
    temporary_beside,
)
from solardesk.core.masks import crop_to_coco_rle, cropped_mask_overlap, decode_mask, encode_mask
from solardesk.errors import CacheError, CacheSchemaError

_log = logging.getLogger(__name__)

__all__ = [
    "APPLICATION_ID",
    "CHANNELS",
    "EDITS_STAGE_ID",
    "MIGRATIONS",
    "PROVENANCES",
    "REVIEW_STATES",
    "SCHEMA_VERSION",
    "SPLITS",
    "ChannelScores",
    "Instance",
    "MaskCache",
    "RasterRecord",
    "TileInfo",
    "TileKey",
    "TileResult",
    "TileWindow",
    "hash_params",
]

#: ``PRAGMA application_id`` of every SolarDesk cache: the bytes ``b"SOLD"``.
APPLICATION_ID = int.from_bytes(b"SOLD", "big")

#: The six spectral channels, in the order of :class:`ChannelScores` and of the table columns.
CHANNELS = ("periodicity", "lbp", "gabor_energy", "gabor_coherence", "photometric", "edges")
PROVENANCES = ("spectral", "model", "human")
REVIEW_STATES = ("pending", "accepted", "rejected")
SPLITS = ("train", "val")

#: Stage id of the per-tile row that holds instances people added or redrew. No computation
#: writes or replaces it.
EDITS_STAGE_ID = "edits"
_EDITS_VERSION = "1"
_EDITS_PARAMS = ""

# Numbered migrations: MIGRATIONS[i] takes the schema from version i to version i + 1. Never edit
# a released one; append a new script instead.
_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE rasters (
    fingerprint TEXT PRIMARY KEY,
    path        TEXT,             -- last known path; the fingerprint survives moves
    width       INTEGER,
    height      INTEGER,
    crs_wkt     TEXT,
    transform   TEXT,             -- JSON [a, b, c, d, e, f] in rasterio Affine order
    gsd_m       REAL,             -- ground resolution, metres per pixel
    updated_at  TEXT
);
CREATE TABLE tiles (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the newest row wins
    raster_fp      TEXT NOT NULL REFERENCES rasters(fingerprint) ON DELETE CASCADE,
    tile_id        TEXT NOT NULL,
    stage_id       TEXT NOT NULL,
    stage_version  TEXT NOT NULL,
    params_hash    TEXT NOT NULL,
    col_off        INTEGER NOT NULL,
    row_off        INTEGER NOT NULL,
    width          INTEGER NOT NULL CHECK (width > 0),
    height         INTEGER NOT NULL CHECK (height > 0),
    n_instances    INTEGER NOT NULL CHECK (n_instances >= 0),
    max_confidence REAL,
    computed_at    TEXT NOT NULL,
    UNIQUE (raster_fp, tile_id, stage_id, stage_version, params_hash)
);
CREATE TABLE instances (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: safe to hold in a UI
    tile_pk         INTEGER NOT NULL REFERENCES tiles(id) ON DELETE CASCADE,
    x0              INTEGER NOT NULL,
    y0              INTEGER NOT NULL,
    x1              INTEGER NOT NULL,   -- exclusive
    y1              INTEGER NOT NULL,   -- exclusive
    mask            BLOB NOT NULL,      -- bbox-cropped, np.packbits + zlib (solardesk.core.masks)
    area_px         INTEGER NOT NULL,
    confidence      REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    periodicity     REAL,
    lbp             REAL,
    gabor_energy    REAL,
    gabor_coherence REAL,
    photometric     REAL,
    edges           REAL,
    provenance      TEXT NOT NULL CHECK (provenance IN ('spectral', 'model', 'human')),
    review          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (review IN ('pending', 'accepted', 'rejected')),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CHECK (x0 >= 0 AND y0 >= 0 AND x1 > x0 AND y1 > y0)
);
-- (tile_pk, confidence) serves tile reads, the cascade and "any instance above t in this tile".
CREATE INDEX instances_by_tile ON instances (tile_pk, confidence);
CREATE INDEX instances_by_confidence ON instances (confidence);
CREATE TABLE splits (
    raster_fp TEXT NOT NULL REFERENCES rasters(fingerprint) ON DELETE CASCADE,
    tile_id   TEXT NOT NULL,
    split     TEXT NOT NULL CHECK (split IN ('train', 'val')),
    PRIMARY KEY (raster_fp, tile_id)
) WITHOUT ROWID;
"""

# Version 2 (ADR 0046): which computed row of a tile is current is recorded (``chosen``, the
# largest wins; a rerun with earlier parameters chooses their row again); a computed instance
# that a person's instance of its tile stands for (SUPERSEDE_SHARE) is marked ``superseded_by``
# it and hidden from readers; a decided instance, moved to the edits row, keeps the row it came
# from (``origin_tile``) so that undoing the decision can put it back. ``MaskCache._migrate``
# then moves the decisions of version 1's current rows into the edits rows and marks what they
# stand for.
_V2 = """
ALTER TABLE tiles ADD COLUMN chosen INTEGER;
UPDATE tiles SET chosen = id;
CREATE INDEX tiles_by_chosen ON tiles (chosen);
ALTER TABLE instances ADD COLUMN superseded_by INTEGER;
ALTER TABLE instances ADD COLUMN origin_tile INTEGER;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)

_SCORE_COLS = ", ".join(CHANNELS)
_INSTANCE_COLS = (
    "i.id, i.x0, i.y0, i.x1, i.y1, i.mask, i.confidence, "
    + ", ".join(f"i.{c}" for c in CHANNELS)
    + ", i.provenance, i.review"
)
_TILE_COLS = (
    "t.id, t.raster_fp, t.tile_id, t.stage_id, t.stage_version, t.params_hash, "
    "t.col_off, t.row_off, t.width, t.height, t.n_instances, t.max_confidence, t.computed_at"
)
_N_TILE_COLS = _TILE_COLS.count(",") + 1
# Streaming scans walk instances in rowid order with each tile looked up by its key: CROSS JOIN
# pins that join order and "+i.confidence" keeps the planner off the confidence index, so
# "ORDER BY i.id" needs no temporary sort of every row (and its mask).
_STREAM_FROM = "FROM instances i CROSS JOIN tiles t ON t.id = i.tile_pk WHERE"
_INSERT_INSTANCE = (
    "INSERT INTO instances (tile_pk, x0, y0, x1, y1, mask, area_px, confidence, "
    + _SCORE_COLS
    + ", provenance, review, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: People's instances (the edits row) stand for a computed one of their tile when together they
#: cover at least this share of its pixels (its own outline decided or redrawn, a piece of a
#: panel a person drew, a candidate a person split): the computed one is hidden
#: (``superseded_by``), in every row. Any match at IoU >= 0.5 covers that much; a large
#: candidate merely holding a small decided one does not.
SUPERSEDE_SHARE = 0.5
#: Tiles overlap, so an object near a tile's edge is a candidate of each tile that holds it:
#: two computed instances of overlapping tiles of one raster are *copies* of one object when
#: their masks, each cut to the pixels both tiles hold, match at IoU >= COPY_IOU. A decision
#: (accept, reject, undo) is about the object: its copies get it too (ADR 0047).
COPY_IOU = 0.5
_NEXT_CHOSEN = "(SELECT coalesce(max(chosen), 0) + 1 FROM tiles)"
_RECOUNT = (
    "UPDATE tiles SET "
    "n_instances = (SELECT count(*) FROM instances WHERE tile_pk = tiles.id), "
    "max_confidence = (SELECT max(confidence) FROM instances WHERE tile_pk = tiles.id) "
    "WHERE id = ?"
)

# Primary result codes (sqlite3.h); extended codes carry them in their low byte.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_IOERR_SHMSIZE = _SQLITE_IOERR | (19 << 8)  # the shared-memory file could not grow
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def hash_params(params: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a stage's parameters, for :attr:`TileKey.params_hash`.

    Canonical JSON (sorted keys, no spaces, floats in ``repr`` form), so equal parameters always
    hash alike and any changed value gives another key. Values must be JSON-serialisable.
    """
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Value types
class ChannelScores(NamedTuple):
    """Per-instance scores of the six spectral channels (see :data:`CHANNELS`)."""

    periodicity: float
    lbp: float
    gabor_energy: float
    gabor_coherence: float
    photometric: float
    edges: float


def _as_scores(scores: Any) -> ChannelScores | None:
    if scores is None or isinstance(scores, ChannelScores):
        return scores
    if isinstance(scores, Mapping):
        unknown = set(scores) - set(CHANNELS)
        missing = set(CHANNELS) - set(scores)
        if unknown or missing:
            raise ValueError(
                f"channel scores need exactly {CHANNELS}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return ChannelScores(*(float(scores[c]) for c in CHANNELS))
    values = tuple(scores)
    if len(values) != len(CHANNELS):
        raise ValueError(
            f"channel scores need {len(CHANNELS)} values {CHANNELS}, got {len(values)}"
        )
    return ChannelScores(*(float(v) for v in values))


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class Instance:
    """One pseudo-label instance in tile pixel coordinates.

    ``bbox = (x0, y0, x1, y1)`` with ``x1``, ``y1`` exclusive; ``mask`` is a read-only boolean
    array of the bbox's shape ``(y1 - y0, x1 - x0)``. ``confidence`` is in [0, 1]; ``scores`` are
    the six channel scores (a :class:`ChannelScores`, built from a mapping or a sequence too) or
    ``None`` when the instance did not come from the spectral stage. ``id`` is the cache's row
    id, ``None`` before the instance is stored. Equality is identity (masks are arrays).
    """

    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    confidence: float
    scores: ChannelScores | None = None
    provenance: str = "spectral"
    review: str = "pending"
    id: int | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = (int(v) for v in self.bbox)
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"bbox {tuple(self.bbox)} must satisfy 0 <= x0 < x1 and 0 <= y0 < y1")
        mask = np.asarray(self.mask)
        if mask.dtype != np.bool_:
            mask = mask.astype(bool)
        if mask.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"mask shape {mask.shape} does not match bbox {(x0, y0, x1, y1)}")
        if mask.flags.writeable:
            mask = mask.view()  # a read-only view: the caller's array stays writable
            mask.flags.writeable = False
        confidence = float(self.confidence)
        if not (0.0 <= confidence <= 1.0):  # also rejects NaN
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence!r}")
        if self.provenance not in PROVENANCES:
            raise ValueError(f"provenance must be one of {PROVENANCES}, got {self.provenance!r}")
        if self.review not in REVIEW_STATES:
            raise ValueError(f"review must be one of {REVIEW_STATES}, got {self.review!r}")
        object.__setattr__(self, "bbox", (x0, y0, x1, y1))
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "scores", _as_scores(self.scores))

    @classmethod
    def from_full_mask(cls, full_mask: np.ndarray, **kwargs: Any) -> Instance:
        """Instance cropped to the tight bounding box of ``full_mask`` (a tile-sized mask).

        ``kwargs`` are the other fields (``confidence``, ``scores``, ``provenance``...).
        Raises ``ValueError`` for an empty mask.
        """
        full = np.asarray(full_mask, dtype=bool)
        tight = _tight_box(full)
        if tight is None:
            raise ValueError("an instance needs at least one mask pixel")
        x0, y0, x1, y1 = tight
        return cls(bbox=tight, mask=full[y0:y1, x0:x1].copy(), **kwargs)

    @property
    def area_px(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))

    def full_mask(self, tile_height: int, tile_width: int) -> np.ndarray:
        """The mask pasted into a ``(tile_height, tile_width)`` boolean array."""
        x0, y0, x1, y1 = self.bbox
        if x1 > tile_width or y1 > tile_height:
            raise ValueError(f"bbox {self.bbox} does not fit a {tile_height} x {tile_width} tile")
        out = np.zeros((tile_height, tile_width), dtype=bool)
        out[y0:y1, x0:x1] = self.mask
        return out

    def replace(self, **changes: Any) -> Instance:
        """A copy with some fields changed (``dataclasses.replace``)."""
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return Instance(**values)


@dataclass(frozen=True, slots=True)
class TileKey:
    """What identifies a computed tile: rerunning the same key computes nothing.

    ``stage_version`` is stored as text (``1`` and ``"1"`` are the same key). Use
    :func:`hash_params` for ``params_hash``.
    """

    raster_fp: str
    tile_id: str
    stage_id: str
    stage_version: str
    params_hash: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_version", str(self.stage_version))
        for name in ("raster_fp", "tile_id", "stage_id", "params_hash"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"TileKey.{name} must be a str, got {getattr(self, name)!r}")
        if not (self.raster_fp and self.tile_id and self.stage_id):
            raise ValueError(f"TileKey needs a raster fingerprint, tile id and stage id: {self}")


class TileWindow(NamedTuple):
    """A tile's pixel window in its raster (rasterio ``Window`` order)."""

    col_off: int
    row_off: int
    width: int
    height: int


class _WindowLike(Protocol):
    col_off: Any
    row_off: Any
    width: Any
    height: Any


def _as_window(window: _WindowLike | Sequence[int]) -> TileWindow:
    """Accept a TileWindow, a 4-sequence, a rasterio ``Window`` or a tiling ``Tile``."""
    if hasattr(window, "col_off"):
        values = (window.col_off, window.row_off, window.width, window.height)  # type: ignore[union-attr]
    else:
        values = tuple(window)  # type: ignore[arg-type]
        if len(values) != 4:
            raise ValueError(f"a window is (col_off, row_off, width, height), got {window!r}")
    w = TileWindow(*(int(v) for v in values))
    if w.width <= 0 or w.height <= 0:
        raise ValueError(f"window {w} must have a positive width and height")
    return w


class TileResult(NamedTuple):
    """One computed tile for :meth:`MaskCache.write_tiles`."""

    key: TileKey
    window: Any  # TileWindow, (col_off, row_off, width, height), rasterio Window or Tile
    instances: Sequence[Instance]


@dataclass(frozen=True, slots=True)
class TileInfo:
    """One stored tile row (``pk`` is its row id)."""

    pk: int
    raster_fp: str
    tile_id: str
    stage_id: str
    stage_version: str
    params_hash: str
    window: TileWindow
    n_instances: int
    max_confidence: float | None
    computed_at: str

    @property
    def key(self) -> TileKey:
        return TileKey(
            self.raster_fp, self.tile_id, self.stage_id, self.stage_version, self.params_hash
        )


@dataclass(frozen=True, slots=True)
class RasterRecord:
    """What the cache remembers about a raster (all but the fingerprint may be unknown)."""

    fingerprint: str
    path: str | None = None
    width: int | None = None
    height: int | None = None
    crs_wkt: str | None = None
    transform: tuple[float, ...] | None = None
    gsd_m: float | None = None


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What :meth:`MaskCache.prune` deleted, and the cache's size before and after."""

    tile_rows: int
    instances: int
    bytes_before: int
    bytes_after: int
    #: False when another program had the cache open: the space comes back when it closes it.
    compacted: bool = True


def _raster_record(row: Sequence[Any]) -> RasterRecord:
    transform = tuple(json.loads(row[5])) if row[5] else None
    return RasterRecord(row[0], row[1], row[2], row[3], row[4], transform, row[6])


def _tile_info(row: Sequence[Any]) -> TileInfo:
    return TileInfo(
        pk=row[0],
        raster_fp=row[1],
        tile_id=row[2],
        stage_id=row[3],
        stage_version=row[4],
        params_hash=row[5],
        window=TileWindow(row[6], row[7], row[8], row[9]),
        n_instances=row[10],
        max_confidence=row[11],
        computed_at=row[12],
    )


class _DamagedRow(Exception):
    """A stored row that cannot be decoded (reported as a damaged cache)."""


def _instance(row: Sequence[Any]) -> Instance:
    """Build an Instance from the columns of ``_INSTANCE_COLS``."""
    iid, x0, y0, x1, y1, blob, conf = row[:7]
    raw = row[7:13]
    scores = None if all(v is None for v in raw) else ChannelScores(*raw)
    try:
        mask = decode_mask(blob, y1 - y0, x1 - x0)
    except (ValueError, TypeError) as e:
        raise _DamagedRow(f"the mask of instance {iid} cannot be decoded: {e}") from e
    return Instance(
        bbox=(x0, y0, x1, y1),
        mask=mask,
        confidence=conf,
        scores=scores,
        provenance=row[13],
        review=row[14],
        id=iid,
    )


def _is_covered(box: Sequence[int], mask: np.ndarray, others: Iterable[tuple]) -> bool:
    """Whether the ``(box, mask)`` pairs ``others`` together cover SUPERSEDE_SHARE of the
    mask cropped to ``box`` (all boxes in one tile's pixels)."""
    covered = np.zeros_like(mask)
    for obox, omask in others:
        _paint(covered, box, obox, omask)
    return np.count_nonzero(covered & mask) >= SUPERSEDE_SHARE * max(np.count_nonzero(mask), 1)


def _paint(canvas: np.ndarray, box: Sequence[int], pbox: Sequence[int], pmask: np.ndarray) -> None:
    """OR the mask ``pmask`` cropped to ``pbox`` into ``canvas``, which covers ``box``."""
    x0, y0, x1, y1 = _intersection(box, pbox)
    if x1 > x0 and y1 > y0:
        canvas[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]] |= pmask[
            y0 - pbox[1] : y1 - pbox[1], x0 - pbox[0] : x1 - pbox[0]
        ]


def _crop(box: Sequence[int], mask: np.ndarray, region: Sequence[int]):
    """``(box, mask)`` cut to ``region`` (all ``(x0, y0, x1, y1)`` in one image's pixels)."""
    x0, y0, x1, y1 = _intersection(box, region)
    if x1 <= x0 or y1 <= y0:
        return (x0, y0, x0, y0), mask[:0, :0]
    return (x0, y0, x1, y1), mask[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]


def _intersection(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int]:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _window_box(w: Sequence[int]) -> tuple[int, int, int, int]:
    """A ``(col_off, row_off, width, height)`` window as an ``(x0, y0, x1, y1)`` box."""
    return (w[0], w[1], w[0] + w[2], w[1] + w[3])


def _shifted(box: Sequence[int], dx: int, dy: int) -> tuple[int, int, int, int]:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def _are_copies(
    a: tuple[Sequence[int], np.ndarray], b: tuple[Sequence[int], np.ndarray], region: Sequence[int]
) -> bool:
    """Whether two masks (boxes in raster pixels) cut to ``region`` match at IoU >= COPY_IOU."""
    abox, amask = _crop(*a, region)
    bbox, bmask = _crop(*b, region)
    overlap, area_a, area_b = cropped_mask_overlap(abox, amask, bbox, bmask)
    return overlap > 0 and overlap >= COPY_IOU * (area_a + area_b - overlap)


def _decoded(item: list) -> np.ndarray:
    """The mask of a ``_count_objects`` item, decoded once: the blob is replaced by it."""
    if isinstance(item[4], tuple):
        blob, box = item[4]
        item[4] = decode_mask(blob, *_box_shape(box))
    return item[4]


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the pixels set in ``mask`` (exclusive ends); None if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


_PEOPLE_CELL = 256


def _cells(box: Sequence[int], size: int) -> Iterator[tuple[int, int]]:
    """The cells of ``size`` pixels that a box (raster pixels) meets."""
    for cy in range(box[1] // size, (box[3] - 1) // size + 1):
        for cx in range(box[0] // size, (box[2] - 1) // size + 1):
            yield cx, cy


def _covered_by_people_beside(
    people: dict[tuple[int, int], list[list]] | None,
    tile_id: str,
    gbox: Sequence[int],
    blob: bytes,
) -> bool:
    """Whether the people's instances of tiles other than ``tile_id`` (by cell, items ``[tile
    id, box, mask or (blob, box)]``, boxes in raster pixels) cover SUPERSEDE_SHARE of the
    mask ``blob`` of box ``gbox``; their masks are decoded once, in place."""
    if not people:
        return False
    meeting = {
        id(p): p
        for c in _cells(gbox, _PEOPLE_CELL)
        for p in people.get(c, ())
        if p[0] != tile_id and _boxes_meet(p[1], gbox)
    }.values()
    if not meeting:
        return False
    for p in meeting:
        if isinstance(p[2], tuple):
            p[2] = decode_mask(p[2][0], *_box_shape(p[2][1]))
    mask = decode_mask(blob, *_box_shape(gbox))
    return _is_covered(gbox, mask, [(p[1], p[2]) for p in meeting])


def _box_shape(box: Sequence[int]) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    return int(y1) - int(y0), int(x1) - int(x0)


def _boxes_meet(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_in(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


def _in_clause(
    column: str, value: str | Iterable[str] | None, allowed: tuple[str, ...], what: str
) -> tuple[str, list[Any]]:
    if value is None:
        return "", []
    values = [value] if isinstance(value, str) else list(value)
    for v in values:
        _check_in(v, allowed, what)
    return f" AND {column} IN ({', '.join('?' * len(values))})", values


# --------------------------------------------------------------------------------------------
class MaskCache:
    """A project's mask cache (see the module docstring for the guarantees).

    ``MaskCache(path)`` opens or creates the cache for writing (only one writer per file at a
    time; a second one waits ``timeout`` seconds for the lock, then raises ``CacheError``).
    ``MaskCache(path, readonly=True)`` opens an existing cache for reading only; any number of
    readers may run beside the writer. Each object belongs to the thread that opened it.

    Raises :class:`~solardesk.errors.CacheError` for a file that is not SQLite, a missing or
    read-only location, a locked or damaged file, a full disk; and
    :class:`~solardesk.errors.CacheSchemaError` for a cache from a newer SolarDesk or another
    application's database. The file is never modified in those cases.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, readonly: bool = False, timeout: float = 5.0
    ):
        self.path = Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        #: raster: (file state, its edits rows' windows) (see :meth:`_edits_windows`)
        self._edits_memo: dict[str, tuple[tuple, list]] = {}
        conn = self._connect(timeout)
        try:
            self._db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            self._conn = conn
            self._open_schema()
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # ----------------------------------------------------------------------------- opening
    def _connect(self, timeout: float) -> sqlite3.Connection:
        p = self.path
        if p.is_dir():
            raise CacheError(
                f"Cache path {p} is a folder; choose a file name such as {p / 'cache.sqlite'}"
            )
        if self.readonly:
            if not p.is_file():
                raise CacheError(
                    f"Cache {p} does not exist; run `solardesk precompute` with --cache {p} "
                    "first, or choose another path."
                )
            # Query-only read-write where the place allows it: read-only SQL, yet the last
            # connection to close may remove the -wal and -shm files (mode=ro cannot).
            writable = os.access(p, os.W_OK) and os.access(p.resolve().parent, os.W_OK)
            mode = "rw" if writable else "ro"
            target, uri = p.resolve().as_uri() + f"?mode={mode}", True
        else:
            folder = p.parent if str(p.parent) else Path(".")
            if not folder.is_dir():
                raise CacheError(
                    f"Cannot create cache {p}: folder {folder} does not exist; create it or "
                    "choose another path."
                )
            # access() sees modes and read-only file systems; root passes the modes, and
            # SQLite's own errors (mapped in _error) cover what remains.
            if (p.exists() and not os.access(p, os.W_OK)) or not os.access(folder, os.W_OK):
                raise CacheError(self._readonly_message("the file or its folder is not writable"))
            target, uri = str(p), False
        try:
            conn = sqlite3.connect(target, uri=uri, timeout=timeout, isolation_level=None)
            if self.readonly:
                conn.execute("PRAGMA query_only = ON")
                conn = self._readable(conn, target, timeout)
        except sqlite3.Error as e:
            raise self._error(e, "open the cache") from e
        return conn

    def _readable(self, conn: sqlite3.Connection, uri: str, timeout: float) -> sqlite3.Connection:
        """A reader's connection that works on read-only media too.

        A WAL reader needs the ``-shm`` file, which a read-only folder or file system cannot
        hold. A cache whose WAL was checkpointed (a writer closed it) is then opened as
        immutable: nothing can change it in such a place.
        """
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as e:
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            if code not in (_SQLITE_CANTOPEN, _SQLITE_READONLY):
                conn.close()
                raise
            conn.close()
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise CacheError(
                    f"Cache {self.path} lies in a read-only place and has changes not yet "
                    f"merged into it ({wal.name}); open it once for writing where it is "
                    "writable (a writer merges them on close), then read it here."
                ) from e
            conn = sqlite3.connect(
                uri.replace("?mode=rw", "?mode=ro") + "&immutable=1",
                uri=True,
                timeout=timeout,
                isolation_level=None,
            )
            conn.execute("PRAGMA query_only = ON")
            return conn

    def _open_schema(self) -> None:
        conn = self._conn
        assert conn is not None
        new = False  # an empty file: this call creates the cache
        try:
            app_id, version, tables = self._header(conn)
            self._check_header(app_id, version, tables)
            new = version == 0 and not tables
            if not self.readonly:
                # Only now that the file is known to be ours (or empty) may it be changed.
                self._use_wal(conn)
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as e:
            raise self._error(e, "create the cache" if new else "open the cache") from e
        if not self.readonly and version < SCHEMA_VERSION:
            self._migrate("create the cache" if new else "upgrade the cache schema")
        self.schema_version = SCHEMA_VERSION

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """WAL and ``synchronous = NORMAL``: the first write to a new file (its header)."""
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # e.g. some network file systems: still safe, less concurrent
            _log.warning("cache %s: WAL unavailable, journal mode %s", self.path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")

    def _header(self, conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [t for t in self._db.table_names() if not t.startswith("sqlite_")]
        return app_id, version, tables

    def _check_header(self, app_id: int, version: int, tables: list[str]) -> None:
        if app_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise CacheSchemaError(
                    f"Cache {self.path} has schema version {version}{self._written_by()}, newer "
                    f"than this SolarDesk {__version__} understands (schema version "
                    f"{SCHEMA_VERSION}). Upgrade SolarDesk to open it, or choose another "
                    "cache path."
                )
            if version < SCHEMA_VERSION and self.readonly:
                raise CacheSchemaError(
                    f"Cache {self.path} has the older schema version {version} (this SolarDesk "
                    f"uses {SCHEMA_VERSION}); open it once for writing to upgrade it."
                )
            return
        if app_id == 0 and version == 0 and not tables:
            if self.readonly:
                raise CacheError(
                    f"{self.path} is empty, not a SolarDesk cache yet; run `solardesk "
                    "precompute` with this cache first, or choose another path."
                )
            return  # a new (or zero-length) file: migrations create everything
        owner = f"application_id 0x{app_id & 0xFFFFFFFF:08X}" if app_id else "no application_id"
        listed = ", ".join(tables[:6]) + (", ..." if len(tables) > 6 else "")
        raise CacheSchemaError(
            f"{self.path} is an SQLite database of another application ({owner}; tables: "
            f"{listed or 'none'}), not a SolarDesk cache; choose another path."
        )

    def _written_by(self) -> str:
        try:
            row = self._live().execute("SELECT value FROM meta WHERE key = 'written_by'").fetchone()
        except sqlite3.Error:
            return ""
        return f" (written by SolarDesk {row[0]})" if row else ""

    def _migrate(self, action: str) -> None:
        with self._transaction(action) as conn:
            # Re-read inside the write lock: another writer may have migrated meanwhile.
            app_id, version, tables = self._header(conn)
            self._check_header(app_id, version, tables)
            for script in MIGRATIONS[version:]:
                # sqlite-utils runs a script statement by statement inside the open transaction
                # (sqlite3's executescript would COMMIT first and break atomicity).
                self._db.executescript(script)
            if version < 2:
                self._adopt_decisions(conn)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            now = _now()
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [("written_by", __version__), (f"schema_{SCHEMA_VERSION}_at", now)],
            )
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)", (now,))

    def _adopt_decisions(self, conn: sqlite3.Connection) -> None:
        """Schema 1 → 2: decisions that version 1 kept on its current computed rows move to their
        tiles' edits rows (as ``set_review`` now does), then every tile with edits marks what
        they stand for."""
        # Only the current rows' decisions: those are what version 1 showed. An older row's
        # decisions stay with it (as in version 1), hidden where a current one covers them.
        current, params = self._current_sql("t", None, None, None, include_edits=False)
        decided = conn.execute(
            "SELECT i.id, i.tile_pk, t.raster_fp, t.tile_id FROM instances i "
            f"JOIN tiles t ON t.id = i.tile_pk WHERE i.review != 'pending' AND {current}",
            params,
        ).fetchall()
        for iid, tile_pk, fp, tid in decided:
            pk, _ = self._ensure_edits_row(conn, fp, tid, None)
            conn.execute(
                "UPDATE instances SET tile_pk = ?, origin_tile = ? WHERE id = ?", (pk, tile_pk, iid)
            )
            conn.execute(_RECOUNT, (pk,))
            conn.execute(_RECOUNT, (tile_pk,))
        edited = conn.execute(
            "SELECT raster_fp, tile_id FROM tiles WHERE stage_id = ?", (EDITS_STAGE_ID,)
        ).fetchall()
        for fp, tid in edited:
            self._resupersede_tile(conn, fp, tid)

    # ----------------------------------------------------------------------------- errors
    def _readonly_message(self, why: str) -> str:
        return (
            f"Cache {self.path} is read-only ({why}). To change it, copy it to a writable "
            "folder or choose another --cache path (a writable location); reading it where it "
            "is works (e.g. solardesk cache stats, or readonly=True from Python)."
        )

    def _error(self, e: sqlite3.Error, action: str) -> CacheError:
        """The CacheError that explains ``e`` to a user (the caller raises it ``from e``)."""
        code = getattr(e, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        p = self.path
        if primary == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE:
            kept = (
                "no tile was written (the empty file it leaves is used as it is when you rerun)"
                if action == "create the cache"
                else "the transaction was rolled back and finished tiles are kept"
            )
            return CacheError(
                f"Disk full while writing cache {p}: could not {action}; {kept}. Free disk "
                "space (or move the cache to a larger disk) and rerun."
            )
        if primary == _SQLITE_READONLY:
            if self.readonly:
                return CacheError(
                    f"Cache {p} was opened read-only: could not {action}. Open it without "
                    "readonly=True (one writer at a time) to change it."
                )
            return CacheError(self._readonly_message(f"could not {action}: {e}"))
        if primary == _SQLITE_NOTADB:
            return CacheError(
                f"{p} is not a SolarDesk cache (not an SQLite database); choose another path."
            )
        if primary == _SQLITE_CORRUPT:
            return CacheError(
                f"Cache {p} is damaged ({e}). Delete it and rerun the pre-compute (review "
                "edits stored in it are lost), or restore a backup."
            )
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return CacheError(
                f"Cache {p} is locked by another writer: could not {action}. Only one SolarDesk "
                "process may write a cache at a time; wait for the other one or close it."
            )
        if primary == _SQLITE_CANTOPEN:
            return CacheError(
                f"Cannot open cache {p} ({e}): the location is missing or read-only; choose a "
                "writable path."
            )
        if primary == _SQLITE_IOERR:
            return CacheError(f"I/O error on cache {p} ({e}): could not {action}; check the disk.")
        return CacheError(f"Cache {p}: could not {action}: {e}")

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CacheError(f"Cache {self.path} is closed; open it again.")
        return self._conn

    @contextmanager
    def _reading(self, action: str, *, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """Reads; with ``snapshot`` all of them in one read transaction, so that statements
        run one after another see one state of the file (a writer may commit in between)."""
        conn = self._live()
        own = snapshot and not conn.in_transaction
        try:
            if own:
                conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if own and conn.in_transaction:
                    conn.execute("COMMIT")  # ends the read transaction; nothing was written
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # misuse of the API (wrong thread, bad bindings): a bug, not a user error
        except sqlite3.Error as e:
            raise self._error(e, action) from e
        except _DamagedRow as e:
            raise CacheError(
                f"Cache {self.path} is damaged ({e}). Delete it and rerun the pre-compute "
                "(review edits stored in it are lost), or restore a backup."
            ) from e

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; anything raised inside rolls all of it back."""
        conn = self._live()
        if conn.in_transaction:
            raise RuntimeError("MaskCache write transactions do not nest")
        try:
            # IMMEDIATE takes the write lock now, so a second writer waits (busy timeout)
            # instead of failing half-way through.
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # SQLITE_FULL and some I/O errors already rolled back
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error) and not isinstance(
                e, (sqlite3.ProgrammingError, sqlite3.InterfaceError)
            ):
                raise self._error(e, action) from e
            raise

    # ----------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the cache; a writer first checkpoints the WAL into the main file. Idempotent.

        The checkpoint is best effort: if it fails (a full disk, a reader still open) the WAL
        keeps the data and the next writer checkpoints it, so closing never raises for it.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self.readonly:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("PRAGMA optimize")
                # Never wait for readers here: with one mid-scan the checkpoint would wait the
                # whole busy timeout; it reports "busy" instead and the next writer finishes it.
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            _log.warning(
                "cache %s: WAL not checkpointed on close (%s); nothing is lost", self.path, e
            )
        finally:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> MaskCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        state = "closed" if self._conn is None else "open"
        return f"MaskCache({str(self.path)!r}, {mode}, {state})"

    # ----------------------------------------------------------------------------- rasters
    def put_raster(
        self,
        fingerprint: str,
        *,
        path: str | os.PathLike[str] | None = None,
        width: int | None = None,
        height: int | None = None,
        crs_wkt: str | None = None,
        transform: Sequence[float] | None = None,
        gsd_m: float | None = None,
    ) -> None:
        """Record (or update) what is known about a raster. ``None`` leaves a field unchanged.

        ``transform`` is an Affine or any sequence whose first six numbers are a, b, c, d, e, f.
        Writing tiles of an unknown fingerprint also works: it records the fingerprint alone.
        """
        record: dict[str, Any] = {"fingerprint": fingerprint, "updated_at": _now()}
        if path is not None:
            record["path"] = str(path)
        if width is not None:
            record["width"] = int(width)
        if height is not None:
            record["height"] = int(height)
        if crs_wkt is not None:
            record["crs_wkt"] = str(crs_wkt)
        if transform is not None:
            six = [float(v) for v in tuple(transform)[:6]]
            if len(six) != 6:
                raise ValueError(f"transform needs six numbers, got {transform!r}")
            record["transform"] = json.dumps(six)
        if gsd_m is not None:
            record["gsd_m"] = float(gsd_m)
        with self._transaction(f"record raster {fingerprint}"):
            self._db["rasters"].upsert(record, pk="fingerprint")  # type: ignore[union-attr]

    def put_raster_info(self, info: Any) -> None:
        """:meth:`put_raster` from a :class:`solardesk.core.raster.RasterInfo` (duck-typed)."""
        self.put_raster(
            info.fingerprint,
            path=info.path,
            width=info.width,
            height=info.height,
            crs_wkt=getattr(info, "crs", None),
            transform=getattr(info, "transform", None),
            gsd_m=getattr(info, "ground_resolution_m", None),
        )

    def get_raster(self, fingerprint: str) -> RasterRecord | None:
        """What the cache knows about a raster, or ``None``."""
        with self._reading(f"read raster {fingerprint}") as conn:
            row = conn.execute(
                "SELECT fingerprint, path, width, height, crs_wkt, transform, gsd_m "
                "FROM rasters WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
        return None if row is None else _raster_record(row)

    def list_rasters(self) -> list[RasterRecord]:
        """Every raster the cache knows, by last known path (rasters without one last)."""
        with self._reading("list rasters") as conn:
            rows = conn.execute(
                "SELECT fingerprint, path, width, height, crs_wkt, transform, gsd_m "
                "FROM rasters ORDER BY path IS NULL, path, fingerprint"
            ).fetchall()
        return [_raster_record(r) for r in rows]

    # ----------------------------------------------------------------------------- keyed work
    def is_done(self, key: TileKey) -> bool:
        """Whether a tile is stored under exactly this key (all of it: tiles are atomic)."""
        with self._reading("look up a tile") as conn:
            row = conn.execute(
                "SELECT 1 FROM tiles WHERE raster_fp = ? AND tile_id = ? AND stage_id = ? "
                "AND stage_version = ? AND params_hash = ?",
                (key.raster_fp, key.tile_id, key.stage_id, key.stage_version, key.params_hash),
            ).fetchone()
        return row is not None

    def done_tile_ids(
        self, raster_fp: str, stage_id: str, stage_version: str | int, params_hash: str
    ) -> set[str]:
        """Ids of the tiles of one raster already stored for this stage, version and parameters.

        One indexed query: the pre-compute skips these and computes the rest.
        """
        with self._reading("list finished tiles") as conn:
            rows = conn.execute(
                "SELECT tile_id FROM tiles WHERE raster_fp = ? AND stage_id = ? "
                "AND stage_version = ? AND params_hash = ?",
                (raster_fp, stage_id, str(stage_version), params_hash),
            )
            return {r[0] for r in rows}

    def choose(
        self,
        raster_fp: str,
        stage_id: str,
        stage_version: str | int,
        params_hash: str,
        tile_ids: Iterable[str],
    ) -> int:
        """Make the stored rows of these tiles under this stage, version and parameters their
        current rows (what readers see), as writing them did; return how many changed.

        A rerun with earlier parameters computes nothing and calls this, so that their results
        are shown again instead of the later parameters' (current = the row chosen last): what
        a run ran is what readers see, on every tile alike, also over another stage's rows made
        since (self-training's relabelled rows stay stored and come back with the next round).
        """
        ids = list(tile_ids)
        changed = 0
        current = (
            "FROM tiles t2 WHERE t2.raster_fp = tiles.raster_fp "
            f"AND t2.tile_id = tiles.tile_id AND t2.stage_id != '{EDITS_STAGE_ID}'"
        )
        newest = f"SELECT max(t2.chosen) {current}"
        with self._transaction("choose the current tile rows") as conn:
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                chosen = conn.execute(
                    f"UPDATE tiles SET chosen = {_NEXT_CHOSEN} WHERE raster_fp = ? "
                    "AND stage_id = ? AND stage_version = ? AND params_hash = ? "
                    f"AND tile_id IN ({', '.join('?' * len(part))}) AND chosen < ({newest}) "
                    "RETURNING tile_id",
                    (raster_fp, stage_id, str(stage_version), params_hash, *part),
                ).fetchall()
                changed += len(chosen)
                # What shows again takes the decisions made since on its copies (ADR 0047).
                self._inherit_decisions(conn, [(raster_fp, t) for (t,) in chosen])
        return changed

    def write_tile(
        self,
        key: TileKey,
        window: _WindowLike | Sequence[int],
        instances: Iterable[Instance],
    ) -> int:
        """Store one computed tile and all its instances in one transaction; return its row id.

        ``window`` is the tile's (col_off, row_off, width, height) in the raster (a rasterio
        ``Window`` or a tiling ``Tile`` works too); instance boxes must lie inside it. A tile
        with no instances is stored too: it is done. Rewriting an existing key replaces it.
        The instances' ``id`` is ignored (new rows are created).
        """
        return self._write_batch([TileResult(key, window, list(instances))])[0]

    def write_tiles(self, tiles: Iterable[TileResult | tuple], *, batch_size: int = 64) -> int:
        """Store many tiles, ``batch_size`` per transaction; return how many were written.

        Each tile stays atomic. ``tiles`` may be a generator that computes them: it is consumed
        batch by batch and no lock is held while it computes. If it raises (a failed or
        cancelled job), the tiles it yielded before are written, then the error propagates. If
        a write fails, that batch is rolled back as a whole (earlier batches stay) and
        ``CacheError`` is raised; :meth:`done_tile_ids` tells what is stored.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        it = iter(tiles)
        written = 0
        while True:
            batch: list[TileResult] = []
            try:
                for item in it:
                    batch.append(item if isinstance(item, TileResult) else TileResult(*item))
                    if len(batch) >= batch_size:
                        break
            except BaseException:
                if batch:
                    self._write_batch(batch)
                raise
            if not batch:
                return written
            self._write_batch(batch)
            written += len(batch)

    def _write_batch(self, batch: Sequence[TileResult]) -> list[int]:
        # Validate and encode everything before taking the write lock.
        now = _now()
        prepared = []
        for key, window, instances in batch:
            if not isinstance(key, TileKey):
                raise TypeError(f"expected a TileKey, got {key!r}")
            if key.stage_id == EDITS_STAGE_ID:
                raise ValueError(f"stage id {EDITS_STAGE_ID!r} is reserved for review edits")
            w = _as_window(window)
            rows = [self._instance_row(inst, w, now) for inst in instances]
            max_conf = max((r[6] for r in rows), default=None)
            prepared.append((key, w, rows, max_conf))
        pks = []
        what = batch[0].key.tile_id if len(batch) == 1 else f"{len(batch)} tiles"
        with self._transaction(f"write {what}") as conn:
            for key, w, rows, max_conf in prepared:
                conn.execute(
                    "INSERT OR IGNORE INTO rasters (fingerprint) VALUES (?)", (key.raster_fp,)
                )
                conn.execute(
                    "DELETE FROM tiles WHERE raster_fp = ? AND tile_id = ? AND stage_id = ? "
                    "AND stage_version = ? AND params_hash = ?",
                    (key.raster_fp, key.tile_id, key.stage_id, key.stage_version, key.params_hash),
                )
                cur = conn.execute(
                    "INSERT INTO tiles (raster_fp, tile_id, stage_id, stage_version, params_hash, "
                    "col_off, row_off, width, height, n_instances, max_confidence, computed_at, "
                    f"chosen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_NEXT_CHOSEN})",
                    (
                        key.raster_fp,
                        key.tile_id,
                        key.stage_id,
                        key.stage_version,
                        key.params_hash,
                        *w,
                        len(rows),
                        max_conf,
                        now,
                    ),
                )
                pk = cur.lastrowid
                conn.executemany(_INSERT_INSTANCE, [(pk, *r) for r in rows])
                pks.append(pk)
            # (a key given twice in one batch: its second row replaced the first)
            last = {p[0]: pk for p, pk in zip(prepared, pks, strict=True)}
            self._supersede_new(conn, list(last), list(last.values()))
        return pks

    def _supersede_new(self, conn: sqlite3.Connection, keys: list[TileKey], pks: list[int]):
        """Mark the instances of freshly written computed rows that a person's instance of
        their tile stands for (one query finds the few tiles that have edits)."""
        by_tile: dict[tuple[str, str], list[int]] = {}
        for k, pk in zip(keys, pks, strict=True):
            by_tile.setdefault((k.raster_fp, k.tile_id), []).append(pk)
        tiles_of: dict[str, list[str]] = {}
        for fp, tid in by_tile:
            tiles_of.setdefault(fp, []).append(tid)
        for fp, tids in tiles_of.items():
            edited = conn.execute(  # served by the (raster_fp, tile_id, stage_id, ...) index
                "SELECT tile_id, id FROM tiles WHERE raster_fp = ? AND stage_id = ? "
                f"AND n_instances > 0 AND tile_id IN ({', '.join('?' * len(tids))})",
                (fp, EDITS_STAGE_ID, *tids),
            ).fetchall()
            for tid, edits_pk in edited:
                self._supersede(conn, edits_pk, by_tile[(fp, tid)])
        self._inherit_decisions(conn, by_tile)

    def _inherit_decisions(
        self,
        conn: sqlite3.Connection,
        tiles: Iterable[tuple[str, str]],
        keep: Collection[int] = (),
    ):
        """The shown instances of these tiles' current computed rows (just written, chosen, or
        shown again) that are copies of an instance decided on an overlapping tile
        (:data:`COPY_IOU`) take that decision (ADR 0047). Passes repeat while a pass decided
        something, so a decision also travels along an object that spans several tiles
        written together. The instances ``keep`` (those a person just set) are left as
        they are."""
        todo = list(dict.fromkeys(tiles))
        given = True
        while given:  # (each pass re-reads the edits rows the one before may have made)
            given = False
            edits: dict[str, list[tuple]] = {}
            for fp, tid in todo:
                if fp not in edits:
                    edits[fp] = conn.execute(
                        "SELECT id, tile_id, col_off, row_off, width, height FROM tiles "
                        "WHERE raster_fp = ? AND stage_id = ? AND n_instances > 0",
                        (fp, EDITS_STAGE_ID),
                    ).fetchall()
                pk = self._current_pk(conn, fp, tid) if edits[fp] else None
                if pk is not None and self._inherit_into(conn, fp, tid, pk, edits[fp], keep):
                    given = True

    def _inherit_into(
        self,
        conn: sqlite3.Connection,
        fp: str,
        tid: str,
        pk: int,
        edits: Sequence[tuple],
        keep: Collection[int] = (),
    ) -> bool:
        """Give the shown instances of row ``pk`` the decisions of their copies in the edits
        rows ``edits`` of other tiles; whether any was given."""
        window = _window_box(
            conn.execute(
                "SELECT col_off, row_off, width, height FROM tiles WHERE id = ?", (pk,)
            ).fetchone()
        )
        decided = []
        for epk, etid, *ewin in edits:
            ebox = _window_box(ewin)
            if etid == tid or not _boxes_meet(window, ebox):
                continue
            region = _intersection(window, ebox)
            for review, *obox, blob in conn.execute(
                "SELECT review, x0, y0, x1, y1, mask FROM instances WHERE tile_pk = ? "
                "AND review != 'pending' AND provenance != 'human'",
                (epk,),
            ):
                gbox = _shifted(obox, ebox[0], ebox[1])
                if _boxes_meet(gbox, region):
                    decided.append((review, (gbox, decode_mask(blob, *_box_shape(obox))), region))
        if not decided:
            return False
        given = False
        for iid, *box, blob in conn.execute(
            "SELECT id, x0, y0, x1, y1, mask FROM instances WHERE tile_pk = ? "
            "AND superseded_by IS NULL",
            (pk,),
        ).fetchall():
            if iid in keep:
                continue
            gbox = _shifted(box, window[0], window[1])
            mine = (gbox, decode_mask(blob, *_box_shape(box)))
            for review, theirs, region in decided:
                if _boxes_meet(gbox, theirs[0]) and _are_copies(mine, theirs, region):
                    if not self._hidden(conn, iid):  # by a copy decided a moment ago
                        self._decide(conn, iid, review)
                        given = True
                    break
        return given

    @staticmethod
    def _hidden(conn: sqlite3.Connection, iid: int) -> bool:
        row = conn.execute("SELECT superseded_by FROM instances WHERE id = ?", (iid,)).fetchone()
        return row is None or row[0] is not None

    @staticmethod
    def _supersede(
        conn: sqlite3.Connection,
        edits_pk: int | None,
        tile_pks: Sequence[int],
        *,
        clear: bool = False,
    ) -> None:
        """Mark (``superseded_by``) the instances of the computed rows ``tile_pks`` that the
        instances of the edits row ``edits_pk`` stand for: together they cover at least
        SUPERSEDE_SHARE of the computed mask (the most overlapping one is named). ``clear``:
        unmark them all first (the tile's edits changed)."""
        if not tile_pks:
            return
        rows = ", ".join("?" * len(tile_pks))
        if clear:  # (a person's instance is never hidden: the edits row is unmarked too)
            conn.execute(
                f"UPDATE instances SET superseded_by = NULL WHERE tile_pk IN ({rows}, ?) "
                "AND superseded_by IS NOT NULL",
                (*tile_pks, edits_pk),
            )
        people = (
            conn.execute(
                "SELECT id, x0, y0, x1, y1, mask FROM instances WHERE tile_pk = ?", (edits_pk,)
            ).fetchall()
            if edits_pk is not None
            else []
        )
        if not people:
            return
        decoded = [(r[0], r[1:5], decode_mask(r[5], *_box_shape(r[1:5]))) for r in people]
        computed = conn.execute(
            f"SELECT id, x0, y0, x1, y1, mask FROM instances WHERE tile_pk IN ({rows})",
            tuple(tile_pks),
        ).fetchall()
        updates = []
        for cid, *box, blob in computed:
            meeting = [d for d in decoded if _boxes_meet(box, d[1])]
            if not meeting:
                continue
            mask = decode_mask(blob, *_box_shape(box))
            best, most = None, 0
            for pid, pbox, pmask in meeting:
                overlap, _, _ = cropped_mask_overlap(box, mask, pbox, pmask)
                if overlap > most:
                    best, most = pid, overlap
            if best is not None and _is_covered(box, mask, [d[1:] for d in meeting]):
                updates.append((best, cid))
        conn.executemany("UPDATE instances SET superseded_by = ? WHERE id = ?", updates)

    def _resupersede_tile(self, conn: sqlite3.Connection, raster_fp: str, tile_id: str) -> None:
        """Mark again, from scratch, what the tile's people's instances stand for."""
        self._supersede(
            conn,
            self._edits_pk(conn, raster_fp, tile_id),
            self._computed_pks(conn, raster_fp, tile_id),
            clear=True,
        )

    @staticmethod
    def _instance_row(
        inst: Instance, window: TileWindow, now: str, provenance: str | None = None
    ) -> tuple:
        if not isinstance(inst, Instance):
            raise TypeError(f"expected an Instance, got {type(inst).__name__}")
        x0, y0, x1, y1 = inst.bbox
        if x1 > window.width or y1 > window.height:
            raise ValueError(
                f"instance bbox {inst.bbox} lies outside its {window.width} x {window.height} tile"
            )
        s = inst.scores or (None,) * len(CHANNELS)
        return (
            x0,
            y0,
            x1,
            y1,
            encode_mask(inst.mask),
            inst.area_px,
            inst.confidence,
            *s,
            provenance or inst.provenance,
            inst.review,
            now,
            now,
        )

    # ----------------------------------------------------------------------------- reading
    @staticmethod
    def _current_sql(
        t: str,
        stage_id: str | None,
        stage_version: str | int | None,
        params_hash: str | None,
        *,
        current_only: bool = True,
        include_edits: bool = True,
    ) -> tuple[str, list[Any]]:
        """A WHERE condition on tiles alias ``t`` selecting the rows readers see by default."""
        filters, params = [], []
        for col, val in (
            ("stage_id", stage_id),
            ("stage_version", stage_version),
            ("params_hash", params_hash),
        ):
            if val is not None:
                filters.append(col)
                params.append(str(val))
        computed = [f"{t}.stage_id != '{EDITS_STAGE_ID}'"] + [f"{t}.{c} = ?" for c in filters]
        if current_only:
            newest = (
                f"SELECT max(t2.chosen) FROM tiles t2 WHERE t2.raster_fp = {t}.raster_fp "
                f"AND t2.tile_id = {t}.tile_id AND t2.stage_id != '{EDITS_STAGE_ID}'"
                + "".join(f" AND t2.{c} = ?" for c in filters)
            )
            computed.append(f"{t}.chosen = ({newest})")
            params = params + params
        sql = "(" + " AND ".join(computed) + ")"
        if include_edits:
            sql = f"({sql} OR {t}.stage_id = '{EDITS_STAGE_ID}')"
        return sql, params

    def read_tile(
        self,
        raster_fp: str,
        tile_id: str,
        stage_id: str | None = None,
        stage_version: str | int | None = None,
        params_hash: str | None = None,
        *,
        min_confidence: float = 0.0,
        include_edits: bool = True,
        accepted_below: bool = False,
        drawn_nearby: str | None = None,
    ) -> list[Instance]:
        """One tile's instances, masks decoded, ordered by id; ``[]`` for an unknown tile.

        Reads the tile's newest computed row that matches the given stage id / version /
        parameter hash (any stage when none is given) plus, with ``include_edits``, the
        instances people added or redrew on that tile. Only instances of ``min_confidence``
        or more are read (and decoded), with ``accepted_below`` also the accepted ones below
        it.

        ``drawn_nearby`` (with ``include_edits``): a panel a person drew lives in the edits
        row of one tile, but the tiles beside overlap it. With ``"hide"``, this tile's
        undecided computed instances that the people's instances of the raster's overlapping
        tiles cover SUPERSEDE_SHARE of are left out, as that tile's own people's are (ADR 0046):
        what the review layer shows. With ``"add"``, those people's instances are added too,
        cut to this tile's window (in its pixels, under their own ids): what training and
        evaluation see of each tile, so that a drawn panel is not background in the tile
        beside.
        """
        if drawn_nearby not in (None, "add", "hide"):
            raise ValueError(f"drawn_nearby must be None, 'add' or 'hide', got {drawn_nearby!r}")
        with self._reading(f"read tile {tile_id}", snapshot=True) as conn:
            pks = [self._current_pk(conn, raster_fp, tile_id, stage_id, stage_version, params_hash)]
            if include_edits:
                pks.append(self._edits_pk(conn, raster_fp, tile_id))
            pks = [pk for pk in pks if pk is not None]
            if not pks:
                return []
            accepted = " OR i.review = 'accepted'" if accepted_below else ""
            rows = conn.execute(
                f"SELECT {_INSTANCE_COLS} FROM instances i WHERE i.tile_pk IN "
                f"({', '.join('?' * len(pks))}) AND (i.confidence >= ?{accepted}) "
                "AND i.superseded_by IS NULL ORDER BY i.id",
                (*pks, float(min_confidence)),
            ).fetchall()  # one tile: small
            own = [_instance(r) for r in rows]
            if drawn_nearby is None or not include_edits:
                return own
            return self._with_drawn_nearby(
                conn, pks[0], own, float(min_confidence), add=drawn_nearby == "add"
            )

    def _with_drawn_nearby(
        self,
        conn: sqlite3.Connection,
        tile_pk: int,
        own: list[Instance],
        min_confidence: float,
        *,
        add: bool = True,
    ) -> list[Instance]:
        """``own`` (the instances of the tile of row ``tile_pk``) less the computed ones that
        the people's instances of the raster's other tiles cover, and with those (``add``)
        cut to its window; see :meth:`read_tile`."""
        fp, tid, *window = conn.execute(
            "SELECT raster_fp, tile_id, col_off, row_off, width, height FROM tiles WHERE id = ?",
            (tile_pk,),
        ).fetchone()
        box = _window_box(window)
        pks = [
            pk
            for pk, other, w in self._edits_windows(conn, fp)
            if other != tid and _boxes_meet(w, box)
        ]
        if not pks:
            return own
        rows = conn.execute(
            f"SELECT t.col_off, t.row_off, {_INSTANCE_COLS} FROM instances i "
            f"JOIN tiles t ON t.id = i.tile_pk WHERE i.tile_pk IN ({', '.join('?' * len(pks))}) "
            "AND i.provenance = 'human' ORDER BY i.id",
            pks,
        ).fetchall()
        drawn: list[Instance] = []
        for col, row, *cols in rows:
            inst = _instance(cols)
            cut_box, cut = _crop(_shifted(inst.bbox, col, row), inst.mask, box)
            tight = _tight_box(cut)
            if tight is None:
                continue
            tx0, ty0, tx1, ty1 = tight
            local = _shifted(tight, cut_box[0] - box[0], cut_box[1] - box[1])
            drawn.append(inst.replace(bbox=local, mask=cut[ty0:ty1, tx0:tx1].copy()))
        if not drawn:
            return own
        # Only what nobody decided: a person's instance of this tile (drawn, or a decision)
        # is never hidden, as in its own tile (ADR 0046).
        kept = [
            i
            for i in own
            if i.provenance == "human"
            or i.review != "pending"
            or not _is_covered(
                i.bbox, i.mask, [(d.bbox, d.mask) for d in drawn if _boxes_meet(d.bbox, i.bbox)]
            )
        ]
        if not add:
            return kept
        shown = [d for d in drawn if d.confidence >= min_confidence]
        return sorted(kept + shown, key=lambda i: i.id or 0)

    def _edits_windows(
        self, conn: sqlite3.Connection, raster_fp: str
    ) -> list[tuple[int, str, tuple[int, int, int, int]]]:
        """``(row pk, tile id, window box)`` of the raster's edits rows that hold instances.

        Kept between reads while the file is unchanged (SQLite's ``data_version`` for other
        connections' commits, ``total_changes`` for this one's): finding them scans the
        raster's tile rows, which a read of every tile of a large raster would repeat."""
        token = (id(conn), conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        hit = self._edits_memo.get(raster_fp)
        if hit is not None and hit[0] == token:
            return hit[1]
        found = [
            (pk, tid, _window_box(w))
            for pk, tid, *w in conn.execute(
                "SELECT id, tile_id, col_off, row_off, width, height FROM tiles "
                "WHERE raster_fp = ? AND stage_id = ? AND n_instances > 0",
                (raster_fp, EDITS_STAGE_ID),
            )
        ]
        self._edits_memo[raster_fp] = (token, found)
        return found

    @staticmethod
    def _current_pk(
        conn: sqlite3.Connection,
        raster_fp: str,
        tile_id: str,
        stage_id: str | None = None,
        stage_version: str | int | None = None,
        params_hash: str | None = None,
    ) -> int | None:
        """The tile's current computed row (chosen last; among those matching the given stage
        id / version / parameter hash), or None."""
        filters, params = "", [raster_fp, tile_id]
        for col, val in (
            ("stage_id", stage_id),
            ("stage_version", stage_version),
            ("params_hash", params_hash),
        ):
            if val is not None:
                filters += f" AND {col} = ?"
                params.append(str(val))
        row = conn.execute(
            f"SELECT id FROM tiles WHERE raster_fp = ? AND tile_id = ? "
            f"AND stage_id != '{EDITS_STAGE_ID}'{filters} ORDER BY chosen DESC LIMIT 1",
            params,
        ).fetchone()
        return row[0] if row else None

    @staticmethod
    def _edits_pk(conn: sqlite3.Connection, raster_fp: str, tile_id: str) -> int | None:
        row = conn.execute(
            "SELECT id FROM tiles WHERE raster_fp = ? AND tile_id = ? AND stage_id = ? "
            "AND stage_version = ? AND params_hash = ?",
            (raster_fp, tile_id, EDITS_STAGE_ID, _EDITS_VERSION, _EDITS_PARAMS),
        ).fetchone()
        return row[0] if row else None

    def iter_tiles(
        self,
        raster_fp: str | None = None,
        *,
        stage_id: str | None = None,
        stage_version: str | int | None = None,
        params_hash: str | None = None,
        current_only: bool = True,
        include_edits: bool = True,
    ) -> Iterator[TileInfo]:
        """Stream tile rows (current rows by default, see the module docstring), by row id."""
        cond, params = self._current_sql(
            "t",
            stage_id,
            stage_version,
            params_hash,
            current_only=current_only,
            include_edits=include_edits,
        )
        if raster_fp is not None:
            cond += " AND t.raster_fp = ?"
            params.append(raster_fp)
        with self._reading("list tiles") as conn:
            for row in conn.execute(
                f"SELECT {_TILE_COLS} FROM tiles t WHERE {cond} ORDER BY t.id", params
            ):
                yield _tile_info(row)

    def iter_instances(
        self,
        min_confidence: float = 0.0,
        provenance: str | Iterable[str] | None = None,
        review: str | Iterable[str] | None = None,
        raster_fp: str | None = None,
        *,
        stage_id: str | None = None,
        stage_version: str | int | None = None,
        params_hash: str | None = None,
        current_only: bool = True,
        include_edits: bool = True,
    ) -> Iterator[tuple[TileInfo, Instance]]:
        """Stream ``(tile, instance)`` pairs, by instance id, one row at a time.

        Filters: confidence ≥ ``min_confidence``; ``provenance`` and ``review`` a state or a
        collection of states; one raster; the tile rows as in :meth:`iter_tiles`. Memory stays
        flat whatever the cache size. Do not write through this same object while iterating
        (SQLite would see the changes mid-scan): collect ids first, or read through a separate
        ``readonly=True`` cache.
        """
        cond, params = self._current_sql(
            "t",
            stage_id,
            stage_version,
            params_hash,
            current_only=current_only,
            include_edits=include_edits,
        )
        sql = (
            f"SELECT {_TILE_COLS}, {_INSTANCE_COLS} {_STREAM_FROM} {cond} "
            "AND +i.confidence >= ? AND i.superseded_by IS NULL"
        )
        params.append(float(min_confidence))
        prov_sql, prov_params = _in_clause("i.provenance", provenance, PROVENANCES, "provenance")
        rev_sql, rev_params = _in_clause("i.review", review, REVIEW_STATES, "review")
        sql += prov_sql + rev_sql
        params += prov_params + rev_params
        if raster_fp is not None:
            sql += " AND t.raster_fp = ?"
            params.append(raster_fp)
        sql += " ORDER BY i.id"
        n_tile = _N_TILE_COLS
        tile: TileInfo | None = None
        with self._reading("read instances") as conn:
            for row in conn.execute(sql, params):
                if tile is None or tile.pk != row[0]:
                    tile = _tile_info(row[:n_tile])
                yield tile, _instance(row[n_tile:])

    def shown(self, instance_ids: Iterable[int]) -> set[int]:
        """Those of ``instance_ids`` that readers see (:meth:`read_tile`, :meth:`iter_instances`):
        in a tile's current computed row or its edits row, and not hidden behind a person's
        instance. An id of a row that is not current, a hidden or an unknown one is left out."""
        ids = [int(i) for i in instance_ids]
        if not ids:
            return set()
        cond, params = self._current_sql("t", None, None, None)
        out: set[int] = set()
        with self._reading("look up instances", snapshot=True) as conn:
            for k in range(0, len(ids), 500):
                part = ids[k : k + 500]
                out.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT i.id FROM instances i JOIN tiles t ON t.id = i.tile_pk "
                        f"WHERE i.id IN ({', '.join('?' * len(part))}) AND {cond} "
                        "AND i.superseded_by IS NULL",
                        (*part, *params),
                    )
                )
        return out

    def get_instance(self, instance_id: int) -> tuple[TileInfo, Instance]:
        """One instance and its tile row; ``KeyError`` when there is no such id."""
        with self._reading(f"read instance {instance_id}") as conn:
            row = conn.execute(
                f"SELECT {_TILE_COLS}, {_INSTANCE_COLS} FROM instances i "
                "JOIN tiles t ON t.id = i.tile_pk WHERE i.id = ?",
                (int(instance_id),),
            ).fetchone()
            if row is None:
                raise KeyError(f"no instance {instance_id} in cache {self.path}")
            return _tile_info(row[:_N_TILE_COLS]), _instance(row[_N_TILE_COLS:])

    # ----------------------------------------------------------------------------- review
    def set_review(self, instance_id: int, state: str) -> list[int]:
        """Set an instance's review state: ``"pending"``, ``"accepted"`` or ``"rejected"``.

        Accepting or rejecting a computed instance moves it (same id) to its tile's edits row,
        where no recompute replaces it, and hides the tile's computed look-alikes of it
        (module docstring, ADR 0046). Setting such an instance back to pending undoes that
        (:meth:`_undo_decision`; a redrawn one stays a person's).

        A decision is about the object, and an object near a tile's edge is a candidate of
        every tile that holds it: its computed copies in the overlapping tiles (:data:`COPY_IOU`,
        ADR 0047) get the same state, in the same transaction — their copies too — and so do
        copies computed, chosen or shown again later. Returns the ids set: this instance
        first, then its copies.
        """
        _check_in(state, REVIEW_STATES, "review state")
        iid = int(instance_id)
        with self._transaction(f"review instance {instance_id}") as conn:
            if conn.execute("SELECT 1 FROM instances WHERE id = ?", (iid,)).fetchone() is None:
                raise KeyError(f"no instance {instance_id} in cache {self.path}")
            # Copies of copies too: an object longer than a tile's overlap lies in tiles that
            # do not overlap each other.
            found, frontier = [iid], [iid]
            while frontier:
                for other in self._copies(conn, frontier.pop()):
                    if other not in found:
                        found.append(other)
                        frontier.append(other)
            touched = conn.execute(  # (before: an undone instance may be dropped)
                "SELECT DISTINCT t.raster_fp, t.tile_id FROM instances i JOIN tiles t "
                f"ON t.id = i.tile_pk WHERE i.id IN ({', '.join('?' * len(found))})",
                found,
            ).fetchall()
            done = []
            for one in found:
                # (two look-alikes of one tile, both copies: deciding one hides the other)
                if one == iid or not self._hidden(conn, one):
                    self._decide(conn, one, state)
                    done.append(one)
            # An undone decision can show a computed instance again that is a copy of another
            # object's decision on a tile beside (ADR 0047): it takes that decision.
            self._inherit_decisions(conn, [tuple(r) for r in touched], keep=set(done))
        return done

    def _decide(self, conn: sqlite3.Connection, iid: int, state: str) -> None:
        """Set one instance's review state and move it to or from its tile's edits row."""
        tile_pk, fp, tid, stage, origin, provenance = conn.execute(
            "SELECT i.tile_pk, t.raster_fp, t.tile_id, t.stage_id, i.origin_tile, "
            "i.provenance FROM instances i JOIN tiles t ON t.id = i.tile_pk WHERE i.id = ?",
            (iid,),
        ).fetchone()
        conn.execute(
            "UPDATE instances SET review = ?, updated_at = ? WHERE id = ?", (state, _now(), iid)
        )
        if stage != EDITS_STAGE_ID and state != "pending":
            # A decision is a person's: it moves to the edits row, which no recompute
            # replaces, and stands for the tile's computed look-alikes in every row.
            self._move_to_edits(conn, iid, tile_pk, fp, tid)
        elif stage == EDITS_STAGE_ID and state == "pending" and origin is not None:
            if provenance == "human":  # redrawn since: a person's outline stays
                return
            self._undo_decision(conn, iid, tile_pk, origin, fp, tid)
        else:
            return
        self._resupersede_tile(conn, fp, tid)

    def _move_to_edits(
        self, conn: sqlite3.Connection, iid: int, tile_pk: int, fp: str, tid: str
    ) -> None:
        pk, _ = self._ensure_edits_row(conn, fp, tid, None)
        conn.execute(
            "UPDATE instances SET tile_pk = ?, origin_tile = ?, superseded_by = NULL WHERE id = ?",
            (pk, tile_pk, iid),
        )
        conn.execute(_RECOUNT, (pk,))
        conn.execute(_RECOUNT, (tile_pk,))

    def _shown_rows_near(
        self, conn: sqlite3.Connection, raster_fp: str, tile_id: str, box: Sequence[int]
    ) -> list[tuple[int, str, TileWindow]]:
        """``(row pk, tile id, window)`` of the rows readers see (:meth:`_current_sql`: each
        tile's computed row chosen last, and its edits row) of the raster's *other* tiles whose
        windows meet ``box`` (raster pixels)."""
        cond, params = self._current_sql("t", None, None, None)
        rows = conn.execute(
            "SELECT t.id, t.tile_id, t.col_off, t.row_off, t.width, t.height FROM tiles t "
            "WHERE t.raster_fp = ? AND t.tile_id != ? AND t.col_off < ? "
            "AND t.col_off + t.width > ? AND t.row_off < ? AND t.row_off + t.height > ? "
            f"AND {cond}",
            (raster_fp, tile_id, box[2], box[0], box[3], box[1], *params),
        )
        return [(pk, tid, TileWindow(*win)) for pk, tid, *win in rows]

    def _copies(self, conn: sqlite3.Connection, iid: int) -> list[int]:
        """The ids of the computed instances of overlapping tiles that are copies of ``iid``
        (see :data:`COPY_IOU`): shown (not hidden), not drawn by a person, in the rows readers
        see; none for a person's own instance."""
        fp, tid, col, row, width, height, provenance, *box, blob = conn.execute(
            "SELECT t.raster_fp, t.tile_id, t.col_off, t.row_off, t.width, t.height, "
            "i.provenance, i.x0, i.y0, i.x1, i.y1, i.mask FROM instances i "
            "JOIN tiles t ON t.id = i.tile_pk WHERE i.id = ?",
            (iid,),
        ).fetchone()
        if provenance == "human":
            return []
        mine = (_shifted(box, col, row), decode_mask(blob, *_box_shape(box)))
        own_window = _window_box((col, row, width, height))
        found = []
        for pk, _, w in self._shown_rows_near(conn, fp, tid, mine[0]):
            region = _intersection(own_window, _window_box(w))
            for oid, *obox, oblob in conn.execute(
                "SELECT id, x0, y0, x1, y1, mask FROM instances WHERE tile_pk = ? "
                "AND superseded_by IS NULL AND provenance != 'human'",
                (pk,),
            ):
                gbox = _shifted(obox, w.col_off, w.row_off)
                if not _boxes_meet(gbox, mine[0]):
                    continue
                theirs = (gbox, decode_mask(oblob, *_box_shape(obox)))
                if _are_copies(mine, theirs, region):
                    found.append(int(oid))
        return found

    def _undo_decision(
        self, conn: sqlite3.Connection, iid: int, edits_pk: int, origin: int, fp: str, tid: str
    ) -> None:
        """A computed instance set back to pending rejoins the stage's results. Where the
        tile's current computed row holds a look-alike of it (covering SUPERSEDE_SHARE of it),
        that stands for it: it goes back to its own row, or is dropped if that row has been
        recomputed or removed. Otherwise it joins the current row (its own, or one made
        without it while it was decided, as self-training's rows are), so that it shows."""
        current = self._current_pk(conn, fp, tid)
        origin_exists = conn.execute("SELECT 1 FROM tiles WHERE id = ?", (origin,)).fetchone()
        target = current if current is not None else (origin if origin_exists else None)
        if target is not None and target != origin and self._covered(conn, iid, target):
            target = origin if origin_exists else None
        if target is None:
            conn.execute("DELETE FROM instances WHERE id = ?", (iid,))
        else:
            conn.execute(
                "UPDATE instances SET tile_pk = ?, origin_tile = NULL WHERE id = ?", (target, iid)
            )
            conn.execute(_RECOUNT, (target,))
        conn.execute(_RECOUNT, (edits_pk,))

    @staticmethod
    def _covered(conn: sqlite3.Connection, iid: int, tile_pk: int) -> bool:
        """Whether the instances of row ``tile_pk`` cover SUPERSEDE_SHARE of instance ``iid``."""
        x0, y0, x1, y1, blob = conn.execute(
            "SELECT x0, y0, x1, y1, mask FROM instances WHERE id = ?", (iid,)
        ).fetchone()
        box = (x0, y0, x1, y1)
        others = [
            (obox, decode_mask(oblob, *_box_shape(obox)))
            for *obox, oblob in conn.execute(
                "SELECT x0, y0, x1, y1, mask FROM instances WHERE tile_pk = ? AND id != ?",
                (tile_pk, iid),
            )
            if _boxes_meet(box, obox)
        ]
        return _is_covered(box, decode_mask(blob, *_box_shape(box)), others)

    @staticmethod
    def _computed_pks(conn: sqlite3.Connection, raster_fp: str, tile_id: str) -> list[int]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT id FROM tiles WHERE raster_fp = ? AND tile_id = ? AND stage_id != ?",
                (raster_fp, tile_id, EDITS_STAGE_ID),
            )
        ]

    def _ensure_edits_row(
        self, conn: sqlite3.Connection, raster_fp: str, tile_id: str, window: Any
    ) -> tuple[int, TileWindow]:
        # The tile's stored rows define its window (the edits row first, else the newest);
        # ``window`` only places a tile that was never computed.
        row = conn.execute(
            "SELECT col_off, row_off, width, height FROM tiles WHERE raster_fp = ? "
            "AND tile_id = ? ORDER BY stage_id = ? DESC, id DESC LIMIT 1",
            (raster_fp, tile_id, EDITS_STAGE_ID),
        ).fetchone()
        if row is not None:
            w = TileWindow(*row)
        elif window is not None:
            w = _as_window(window)
        else:
            raise KeyError(
                f"tile {tile_id} of raster {raster_fp} is not in cache {self.path}; pass its window"
            )
        pk = self._edits_pk(conn, raster_fp, tile_id)
        if pk is None:
            conn.execute("INSERT OR IGNORE INTO rasters (fingerprint) VALUES (?)", (raster_fp,))
            pk = conn.execute(
                "INSERT INTO tiles (raster_fp, tile_id, stage_id, stage_version, params_hash, "
                "col_off, row_off, width, height, n_instances, max_confidence, computed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)",
                (raster_fp, tile_id, EDITS_STAGE_ID, _EDITS_VERSION, _EDITS_PARAMS, *w, _now()),
            ).lastrowid
        return pk, w

    def add_instance(
        self,
        raster_fp: str,
        tile_id: str,
        instance: Instance,
        provenance: str | None = "human",
        *,
        window: _WindowLike | Sequence[int] | None = None,
    ) -> int:
        """Add one instance (typically drawn by a person) to a tile; return its id.

        It goes to the tile's edits row (stage :data:`EDITS_STAGE_ID`), created on demand with
        the window of the tile's newest row, or ``window`` for a tile never computed. A
        recompute never replaces the edits row. ``provenance`` overrides the instance's own
        (``None`` keeps it).
        """
        if provenance is not None:
            _check_in(provenance, PROVENANCES, "provenance")
        with self._transaction(f"add an instance to tile {tile_id}") as conn:
            pk, w = self._ensure_edits_row(conn, raster_fp, tile_id, window)
            row = self._instance_row(instance, w, _now(), provenance)
            iid = conn.execute(_INSERT_INSTANCE, (pk, *row)).lastrowid
            conn.execute(_RECOUNT, (pk,))
            self._resupersede_tile(conn, raster_fp, tile_id)
        return iid

    def replace_mask(self, instance_id: int, bbox: Sequence[int], mask: np.ndarray) -> None:
        """Replace an instance's outline (a person redrew it).

        The instance keeps its id, confidence, scores and review state; its provenance becomes
        ``"human"`` and it moves to its tile's edits row, so that recomputing the stage that
        produced it does not drop the edit.
        """
        tile, old = self.get_instance(instance_id)
        new = old.replace(bbox=tuple(bbox), mask=mask, provenance="human")
        with self._transaction(f"redraw instance {instance_id}") as conn:
            pk, w = self._ensure_edits_row(conn, tile.raster_fp, tile.tile_id, None)
            x0, y0, x1, y1, blob, area, *_ = self._instance_row(new, w, _now())
            cur = conn.execute(
                "UPDATE instances SET tile_pk = ?, x0 = ?, y0 = ?, x1 = ?, y1 = ?, mask = ?, "
                "area_px = ?, provenance = 'human', superseded_by = NULL, updated_at = ? "
                "WHERE id = ?",
                (pk, x0, y0, x1, y1, blob, area, _now(), int(instance_id)),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no instance {instance_id} in cache {self.path}")
            conn.execute(_RECOUNT, (pk,))
            conn.execute(_RECOUNT, (tile.pk,))
            self._resupersede_tile(conn, tile.raster_fp, tile.tile_id)
            # what shows again takes the decisions on its copies (ADR 0047)
            self._inherit_decisions(conn, [(tile.raster_fp, tile.tile_id)])

    def delete_instance(self, instance_id: int) -> None:
        """Delete one instance (``KeyError`` if absent). Rejecting it keeps a record instead:
        a deleted computed instance comes back when its tile is recomputed with other
        parameters, a rejected one does not. Deleting a person's instance shows the computed
        look-alikes it hid again."""
        with self._transaction(f"delete instance {instance_id}") as conn:
            row = conn.execute(
                "DELETE FROM instances WHERE id = ? RETURNING tile_pk", (int(instance_id),)
            ).fetchone()
            if row is None:
                raise KeyError(f"no instance {instance_id} in cache {self.path}")
            conn.execute(_RECOUNT, (row[0],))
            # What a deleted person's instance stood for shows again (unless another does).
            fp, tid = conn.execute(
                "SELECT raster_fp, tile_id FROM tiles WHERE id = ?", (row[0],)
            ).fetchone()
            self._resupersede_tile(conn, fp, tid)
            # what shows again takes the decisions on its copies (ADR 0047)
            self._inherit_decisions(conn, [(fp, tid)])

    # ----------------------------------------------------------------------------- splits
    def set_splits(
        self, assignments: Mapping[tuple[str, str], str] | Iterable[tuple[str, str, str]]
    ) -> None:
        """Record train/val splits: ``{(raster_fp, tile_id): split}`` or ``(fp, tile, split)``s."""
        items = (
            [(fp, tid, s) for (fp, tid), s in assignments.items()]
            if isinstance(assignments, Mapping)
            else [tuple(a) for a in assignments]
        )
        for _, _, s in items:
            _check_in(s, SPLITS, "split")
        with self._transaction("record train/val splits") as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO rasters (fingerprint) VALUES (?)", {(i[0],) for i in items}
            )
            self._db["splits"].upsert_all(  # type: ignore[union-attr]
                ({"raster_fp": fp, "tile_id": tid, "split": s} for fp, tid, s in items),
                pk=("raster_fp", "tile_id"),
            )

    def get_splits(self, raster_fp: str | None = None) -> dict[tuple[str, str], str]:
        """The recorded splits, ``{(raster_fp, tile_id): "train" | "val"}``."""
        sql, params = "SELECT raster_fp, tile_id, split FROM splits", []
        if raster_fp is not None:
            sql, params = sql + " WHERE raster_fp = ?", [raster_fp]
        with self._reading("read splits") as conn:
            return {(fp, tid): s for fp, tid, s in conn.execute(sql, params)}

    # ----------------------------------------------------------------------------- reports
    def earlier_runs(self) -> tuple[int, int]:
        """``(tile rows, instances)`` of earlier runs: the computed rows no reader sees, for
        each tile and stage every row but the one chosen last (other parameters, an older
        stage version). They make going back to those parameters free;
        :meth:`prune` deletes them."""
        with self._reading("count earlier runs") as conn:
            return self._earlier_runs(conn)

    @staticmethod
    def _earlier_sql() -> str:
        return (
            f"SELECT t.id FROM tiles t WHERE t.stage_id != '{EDITS_STAGE_ID}' AND t.chosen < "
            "(SELECT max(t2.chosen) FROM tiles t2 WHERE t2.raster_fp = t.raster_fp "
            "AND t2.tile_id = t.tile_id AND t2.stage_id = t.stage_id)"
        )

    def _earlier_runs(self, conn: sqlite3.Connection) -> tuple[int, int]:
        rows, instances = conn.execute(
            f"SELECT count(*), (SELECT count(*) FROM instances WHERE tile_pk IN "
            f"({self._earlier_sql()})) FROM ({self._earlier_sql()})"
        ).fetchone()
        return int(rows), int(instances)

    def prune(self) -> PruneReport:
        """Delete the rows of earlier runs (:meth:`earlier_runs`) and give their space back
        to the file system (``VACUUM``).

        What readers see does not change: each tile keeps, per stage, the row chosen last,
        and its edits row. A decision taken on an instance of a deleted row lives in the edits
        row and stays; set back to pending, it joins the tile's current row (ADR 0046). Going
        back to pruned parameters computes their tiles again."""
        before = self.size_bytes()
        with self._transaction("delete the rows of earlier runs") as conn:
            rows, instances = self._earlier_runs(conn)
            if rows:
                conn.execute(f"DELETE FROM tiles WHERE id IN ({self._earlier_sql()})")
        conn = self._live()
        try:
            conn.execute("VACUUM")
            # (busy: another connection still reads the old pages, so the WAL that holds the
            # compacted copy cannot be folded back yet; the file shrinks when it closes)
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as e:
            raise self._error(e, "compact the file after deleting the rows of earlier runs") from e
        return PruneReport(rows, instances, before, self.size_bytes(), compacted=not busy)

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL and shared-memory files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    def stats(self, threshold: float = 0.85, *, objects: bool = False) -> dict[str, Any]:
        """Figures for ``solardesk cache stats``, over the current rows of each tile.

        Keys: ``path``, ``schema_version``, ``threshold``, ``rasters``, ``tiles`` (physical
        tiles), ``tile_rows`` (all rows, every stage and parameter set), ``instances``,
        ``instances_above_threshold`` (confidence ≥ threshold; an object in the overlap of
        tiles is stored, and counted, once per tile), ``objects_above_threshold`` (with
        ``objects``: the same instances with the copies of one object in overlapping tiles,
        :data:`COPY_IOU`, counted once, see :meth:`_count_objects`; it decodes the masks of the
        candidates whose boxes meet another tile's, so it costs a pass over them; else None),
        ``tiles_above_threshold`` and
        ``share_tiles_above_threshold`` (tiles with at least one such instance, and their share
        of ``tiles``), ``by_review``, ``by_provenance`` (all of these over what readers see:
        current rows, hidden instances left out), ``stages`` (an inventory of every stored row,
        per stage id, version and parameter hash: tile rows and the instances they hold,
        hidden ones included), ``earlier_runs`` (``tile_rows`` and ``instances`` that
        :meth:`prune` would delete) and ``size_bytes`` (file + WAL + shm).
        """
        cond, params = self._current_sql("t", None, None, None)
        thr = float(threshold)
        with self._reading("compute statistics", snapshot=True) as conn:
            q = conn.execute
            rasters = q("SELECT count(*) FROM rasters").fetchone()[0]
            tile_rows = q("SELECT count(*) FROM tiles").fetchone()[0]
            tiles = q(
                f"SELECT count(*) FROM (SELECT 1 FROM tiles t WHERE {cond} "
                "GROUP BY t.raster_fp, t.tile_id)",
                params,
            ).fetchone()[0]
            tiles_above = q(
                f"SELECT count(*) FROM (SELECT 1 FROM tiles t WHERE {cond} AND EXISTS "
                "(SELECT 1 FROM instances i WHERE i.tile_pk = t.id AND i.confidence >= ? "
                "AND i.superseded_by IS NULL) "
                "GROUP BY t.raster_fp, t.tile_id)",
                [*params, thr],
            ).fetchone()[0]
            n, above = q(
                f"SELECT count(*), coalesce(sum(i.confidence >= ?), 0) FROM instances i "
                f"JOIN tiles t ON t.id = i.tile_pk WHERE {cond} AND i.superseded_by IS NULL",
                [thr, *params],
            ).fetchone()
            by = {}
            for col in ("review", "provenance"):
                by[col] = dict(
                    q(
                        f"SELECT i.{col}, count(*) FROM instances i "
                        f"JOIN tiles t ON t.id = i.tile_pk WHERE {cond} "
                        f"AND i.superseded_by IS NULL GROUP BY i.{col}",
                        params,
                    ).fetchall()
                )
            n_objects = self._count_objects(conn, thr, cond, params) if objects else None
            earlier_rows, earlier_instances = self._earlier_runs(conn)
            stages = [
                {
                    "stage_id": s,
                    "stage_version": v,
                    "params_hash": h,
                    "tile_rows": nt,
                    "instances": ni,
                }
                for s, v, h, nt, ni in q(
                    "SELECT stage_id, stage_version, params_hash, count(*), sum(n_instances) "
                    "FROM tiles GROUP BY stage_id, stage_version, params_hash ORDER BY min(id)"
                )
            ]
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "threshold": thr,
            "rasters": rasters,
            "tiles": tiles,
            "tile_rows": tile_rows,
            "instances": n,
            "instances_above_threshold": above,
            "objects_above_threshold": n_objects,
            "tiles_above_threshold": tiles_above,
            "share_tiles_above_threshold": tiles_above / tiles if tiles else 0.0,
            "by_review": {s: by["review"].get(s, 0) for s in REVIEW_STATES},
            "by_provenance": {s: by["provenance"].get(s, 0) for s in PROVENANCES},
            "stages": stages,
            "earlier_runs": {"tile_rows": earlier_rows, "instances": earlier_instances},
            "size_bytes": self.size_bytes(),
        }

    def count_objects(self, threshold: float = 0.85, raster_fp: str | None = None) -> int:
        """``stats(threshold, objects=True)["objects_above_threshold"]`` alone, of one raster
        when ``raster_fp`` is given: the instances at confidence >= ``threshold`` with the
        copies of one object in overlapping tiles counted once (:meth:`_count_objects`)."""
        cond, params = self._current_sql("t", None, None, None)
        if raster_fp is not None:
            cond, params = f"({cond}) AND t.raster_fp = ?", [*params, raster_fp]
        with self._reading("count objects", snapshot=True) as conn:
            return self._count_objects(conn, float(threshold), cond, params)

    @staticmethod
    def _count_objects(conn: sqlite3.Connection, thr: float, cond: str, params: list) -> int:
        """How many objects the current instances at confidence >= ``thr`` are: the copies of
        one object in overlapping tiles counted once. Copies are found as :meth:`set_review`
        finds them (masks cut to the pixels both tiles hold match at IoU >= COPY_IOU; a
        person's instance is nobody's copy), and copies of copies join too, also through a
        copy under the threshold (tiles score one object each on their own): an object
        counts when one of its copies reaches ``thr``. An undecided computed instance that a
        person's instances of another tile cover (``read_tile(drawn_nearby="hide")``: what the
        review layer shows) is that person's object, not one of its own."""
        # raster: {cell of _PEOPLE_CELL px: [[tile id, box in the raster, mask or blob]]}
        people: dict[str, dict[tuple[int, int], list[list]]] = {}
        for fp, tid, col, row, *box, blob in conn.execute(
            "SELECT t.raster_fp, t.tile_id, t.col_off, t.row_off, i.x0, i.y0, i.x1, i.y1, "
            f"i.mask FROM instances i JOIN tiles t ON t.id = i.tile_pk WHERE {cond} "
            "AND i.provenance = 'human'",
            params,
        ):
            item = [tid, _shifted(box, col, row), (blob, box)]
            cells = people.setdefault(fp, {})
            for c in _cells(item[1], _PEOPLE_CELL):
                cells.setdefault(c, []).append(item)
        rows = conn.execute(
            "SELECT t.raster_fp, t.tile_id, t.col_off, t.row_off, t.width, t.height, "
            "i.provenance, i.review, i.x0, i.y0, i.x1, i.y1, i.mask, i.confidence >= ? "
            f"FROM instances i JOIN tiles t ON t.id = i.tile_pk WHERE {cond} "
            "AND i.superseded_by IS NULL ORDER BY t.raster_fp, t.row_off + i.y0",
            [thr, *params],
        )
        # Union-find over the instances that may still meet a later one. Instances are compared
        # only within the cells of 256 raster pixels they meet; rows come raster by raster,
        # from the top down, so the cells above the current row of cells can meet no later
        # instance and are let go, and so are their instances: an object whose copies have
        # all been let go is counted and forgotten. Memory holds one band of a raster, however
        # large the cache.
        cell = 256
        parent: dict[int, int] = {}
        members: dict[int, list[int]] = {}  # root: its instances
        live: dict[int, int] = {}  # root: how many of them are still in the grid
        hit: dict[int, bool] = {}  # root: one of them reaches the threshold
        last_row: dict[int, list[int]] = {}  # last row of cells an instance meets: instances
        n_objects = 0

        def root(k: int) -> int:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        def join(a: int, b: int) -> None:
            a, b = root(a), root(b)
            if len(members[a]) < len(members[b]):
                a, b = b, a
            parent[b] = a
            members[a] += members.pop(b)
            live[a] += live.pop(b)
            hit[a] |= hit.pop(b)

        def let_go(rows: list[int]) -> None:
            nonlocal n_objects
            for r in rows:
                for k in last_row.pop(r):
                    top = root(k)
                    live[top] -= 1
                    if live[top] == 0:  # no later instance can join it: one object
                        n_objects += hit.pop(top)
                        del live[top]
                        for m in members.pop(top):
                            del parent[m]

        grid: dict[tuple[int, int], list[tuple]] = {}
        raster, band = None, 0
        for k, row_values in enumerate(rows):
            fp, tid, col, row, width, height, provenance, review, *box, blob, is_above = row_values
            if provenance == "human":  # nobody's copy: an object of its own
                n_objects += bool(is_above)
                continue
            gbox = _shifted(box, col, row)
            if review == "pending" and _covered_by_people_beside(people.get(fp), tid, gbox, blob):
                continue
            if fp != raster:
                let_go(list(last_row))
                raster, band, grid = fp, gbox[1] // cell, {}
            elif gbox[1] // cell > band:
                band = gbox[1] // cell
                grid = {c: items for c, items in grid.items() if c[1] >= band}
                let_go([r for r in last_row if r < band])
            parent[k], members[k], live[k], hit[k] = k, [k], 1, bool(is_above)
            last_row.setdefault((gbox[3] - 1) // cell, []).append(k)
            # [k, tile, window, box in the raster, mask: the blob until first decoded]
            item = [k, tid, _window_box((col, row, width, height)), gbox, (blob, box)]
            near: dict[int, list] = {}  # other tiles' instances whose boxes meet this one's
            x0, y0, x1, y1 = gbox
            for cy in range(y0 // cell, (y1 - 1) // cell + 1):
                for cx in range(x0 // cell, (x1 - 1) // cell + 1):
                    bucket = grid.setdefault((cx, cy), [])
                    for o in bucket:
                        b = o[3]
                        if o[1] != tid and x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1:
                            near[o[0]] = o
                    bucket.append(item)
            for j, other in near.items():
                if root(j) == root(k):
                    continue
                mine, theirs = (gbox, _decoded(item)), (other[3], _decoded(other))
                if _are_copies(mine, theirs, _intersection(item[2], other[2])):
                    join(k, j)
        let_go(list(last_row))
        return n_objects

    def export_coco(
        self,
        out_path: str | os.PathLike[str],
        threshold: float = 0.85,
        *,
        raster_fp: str | None = None,
        stage_id: str | None = None,
        stage_version: str | int | None = None,
        params_hash: str | None = None,
        overwrite: bool = False,
    ) -> dict[str, int]:
        """Write the current instances as a COCO instances JSON; return image/annotation counts.

        Images are tiles (also those without annotations, which are negatives): ``file_name``
        is the raster's last known path (its fingerprint if unknown), ``width``/``height`` the
        tile's, plus ``raster_fp``, ``tile_id``, ``col_off``, ``row_off``. Annotations are the
        instances with confidence ≥ ``threshold`` or accepted by a reviewer, never rejected
        ones: uncompressed RLE segmentation in tile pixels, ``bbox`` [x, y, w, h], ``area``,
        ``score`` (the confidence), ``category_id`` 1 (``solar_panel``), ``iscrowd`` 0, plus
        ``provenance`` and ``review``. Rows are streamed; the file appears only when complete.
        ``out_path`` must not be the cache itself or one of its -wal, -shm or -journal files,
        nor an existing file unless ``overwrite`` (:class:`~solardesk.errors.CacheError`).
        """
        out = Path(out_path)
        self._refuse_own_file(out, "the COCO export")
        if out.is_dir():
            raise CacheError(f"{out} is a folder; give a file name such as {out / 'coco.json'}.")
        if out.exists() and not overwrite:
            raise CacheError(
                f"{out} already exists; pass --overwrite (overwrite=True) to replace it, or "
                "choose another name."
            )
        # A new file of its own (never one that exists: not even a cache named like it),
        # renamed over ``out`` when complete.
        tmp = temporary_beside(out)
        remove_stale_temporaries(out)  # what a kill -9 during an earlier export left
        cond, params = self._current_sql("t", stage_id, stage_version, params_hash)
        if raster_fp is not None:
            cond += " AND t.raster_fp = ?"
            params.append(raster_fp)
        # A tile's image id is its oldest row id: the same for every row of that tile.
        image_id = (
            "(SELECT min(t3.id) FROM tiles t3 "
            "WHERE t3.raster_fp = t.raster_fp AND t3.tile_id = t.tile_id)"
        )
        images_sql = (
            f"SELECT {image_id} AS image_id, t.raster_fp, t.tile_id, t.col_off, t.row_off, "
            "t.width, t.height, coalesce(r.path, t.raster_fp) FROM tiles t "
            f"LEFT JOIN rasters r ON r.fingerprint = t.raster_fp WHERE {cond} "
            "GROUP BY t.raster_fp, t.tile_id ORDER BY image_id"
        )
        kept = "AND (+i.confidence >= ? OR i.review = 'accepted') AND i.review != 'rejected' "
        ann_sql = (
            f"SELECT {image_id}, t.width, t.height, t.raster_fp, t.tile_id, {_INSTANCE_COLS} "
            f"{_STREAM_FROM} {cond} {kept}AND i.superseded_by IS NULL ORDER BY i.id"
        )
        header = {
            "info": {
                "description": f"SolarDesk pseudo-labels from {self.path.name}",
                "version": __version__,
                "date_created": _now(),
                "threshold": float(threshold),
            },
            "licenses": [],
            "categories": [{"id": 1, "name": "solar_panel", "supercategory": "solar"}],
        }
        n_images = n_ann = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with (
                open(fd, "w", encoding="utf-8") as f,
                self._reading("export COCO", snapshot=True) as conn,
            ):
                f.write(json.dumps(header)[:-1] + ', "images": [')
                # Where a person drew a panel, the tiles beside it that it reaches are written
                # as training reads them (read_tile(drawn_nearby="add")), after the rest.
                reached = self._drawn_reach(conn, raster_fp)
                beside: dict[tuple[str, str], tuple[int, int, int]] = {}
                for row in conn.execute(images_sql, params):
                    iid, fp, tid, col, rowo, w, h, fname = row
                    if (fp, tid) in reached:
                        beside[(fp, tid)] = (iid, w, h)
                    image = {
                        "id": iid,
                        "file_name": fname,
                        "width": w,
                        "height": h,
                        "raster_fp": fp,
                        "tile_id": tid,
                        "col_off": col,
                        "row_off": rowo,
                    }
                    f.write(("," if n_images else "") + json.dumps(image))
                    n_images += 1
                f.write('], "annotations": [')

                def write(inst: Instance, img: int, w: int, h: int, ann_id: int) -> None:
                    nonlocal n_ann
                    x0, y0, x1, y1 = inst.bbox
                    ann = {
                        "id": ann_id,
                        "image_id": img,
                        "category_id": 1,
                        "segmentation": crop_to_coco_rle(inst.mask, inst.bbox, h, w),
                        "area": inst.area_px,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "iscrowd": 0,
                        "score": inst.confidence,
                        "provenance": inst.provenance,
                        "review": inst.review,
                    }
                    f.write(("," if n_ann else "") + json.dumps(ann))
                    n_ann += 1

                for row in conn.execute(ann_sql, [*params, float(threshold)]):
                    img, w, h, fp, tid = row[:5]
                    if (fp, tid) not in beside:
                        inst = _instance(row[5:])
                        write(inst, img, w, h, inst.id)
                # A drawn panel's piece in a tile beside its own is a new annotation (its own
                # id is its whole outline's, in its own tile).
                next_id = self._max_instance_id(conn) + 1
                for (fp, tid), (img, w, h) in beside.items():
                    tile_cond = f"{cond} AND t.raster_fp = ? AND t.tile_id = ? "
                    rows = conn.execute(
                        f"SELECT {_INSTANCE_COLS} {_STREAM_FROM} {tile_cond}"
                        "AND i.superseded_by IS NULL ORDER BY i.id",
                        [*params, fp, tid],
                    ).fetchall()  # one tile: small
                    pk = conn.execute(
                        "SELECT id FROM tiles WHERE raster_fp = ? AND tile_id = ? LIMIT 1",
                        (fp, tid),
                    ).fetchone()[0]
                    own = {r[0] for r in rows}
                    for inst in self._with_drawn_nearby(
                        conn, pk, [_instance(r) for r in rows], 0.0
                    ):
                        if inst.review == "rejected" or not (
                            inst.confidence >= threshold or inst.review == "accepted"
                        ):
                            continue
                        if inst.id in own:
                            write(inst, img, w, h, inst.id)
                        else:
                            write(inst, img, w, h, next_id)
                            next_id += 1
                f.write("]}\n")
            replace_durably(tmp, out)
        except OSError as e:
            with suppress(OSError):  # on a read-only file system even this fails
                tmp.unlink(missing_ok=True)
            if isinstance(e, CacheError):
                raise
            raise CacheError(f"Cannot write COCO export {out}: {e}; choose a writable path.") from e
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return {"images": n_images, "annotations": n_ann}

    def drawn_reach(
        self, raster_fp: str | None = None, *, rejected: bool = True
    ) -> dict[tuple[str, str], int]:
        """``(raster, tile id)``: how many instances people drew in *other* tiles reach into
        that tile's window (by box): the tiles whose reads ``drawn_nearby`` changes. Without
        ``rejected``, the rejected ones do not count (a target count)."""
        with self._reading("find the tiles beside drawn panels", snapshot=True) as conn:
            return self._drawn_reach(conn, raster_fp, rejected=rejected)

    @staticmethod
    def _drawn_reach(
        conn: sqlite3.Connection, raster_fp: str | None, *, rejected: bool = True
    ) -> dict[tuple[str, str], int]:
        sql = (
            "SELECT t.raster_fp, t.tile_id, t.col_off, t.row_off, i.x0, i.y0, i.x1, i.y1 "
            "FROM tiles t JOIN instances i ON i.tile_pk = t.id "
            "WHERE t.stage_id = ? AND i.provenance = 'human'"
        )
        args: list[Any] = [EDITS_STAGE_ID]
        if not rejected:
            sql += " AND i.review != 'rejected'"
        if raster_fp is not None:
            sql += " AND t.raster_fp = ?"
            args.append(raster_fp)
        drawn: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {}
        for fp, tid, col, row, *box in conn.execute(sql, args):
            drawn.setdefault(fp, []).append((tid, _shifted(box, col, row)))
        reach: dict[tuple[str, str], int] = {}
        for fp, items in drawn.items():  # few drawn panels, many tiles: one pass per panel
            rows = conn.execute(
                "SELECT DISTINCT tile_id, col_off, row_off, width, height FROM tiles "
                "WHERE raster_fp = ?",
                (fp,),
            ).fetchall()
            tids = [r[0] for r in rows]
            w = np.asarray([r[1:] for r in rows], np.int64).reshape(-1, 4)
            wx1, wy1 = w[:, 0] + w[:, 2], w[:, 1] + w[:, 3]
            for own, (x0, y0, x1, y1) in items:
                meet = (w[:, 0] < x1) & (wx1 > x0) & (w[:, 1] < y1) & (wy1 > y0)
                for k in np.flatnonzero(meet):
                    if tids[k] != own:
                        reach[(fp, tids[k])] = reach.get((fp, tids[k]), 0) + 1
        return reach

    @staticmethod
    def _max_instance_id(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM instances").fetchone()[0])

    def _refuse_own_file(self, out: Path, what: str) -> None:
        """Raise :class:`CacheError` when ``out`` is this cache's file or a companion of it
        (the same file by another name, a link or a relative path included)."""
        bases = dict.fromkeys((self.path, self.path.resolve()))  # a link's target too
        for base in bases:
            for suffix in ("", "-wal", "-shm", "-journal"):
                if same_file(out, f"{base}{suffix}"):
                    which = "a file of the cache" if suffix else "the cache"
                    raise CacheError(
                        f"{out} is {which} {self.path}; writing {what} there would destroy it. "
                        "Choose another output path."
                    )

    # ----------------------------------------------------------------------------- health
    def integrity_ok(self) -> bool:
        """``PRAGMA integrity_check`` says ok and no foreign key is dangling."""
        with self._reading("check integrity") as conn:
            ok = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            return ok and not conn.execute("PRAGMA foreign_key_check").fetchall()

"""Binary mask encodings: the cache's compact blob and COCO run-length encoding.

The cache stores each instance's mask cropped to its bounding box, bit-packed row-major with
:func:`numpy.packbits` and compressed with zlib level 1. At 512 × 512 that measured ≈ 0.06 ms to
encode and 0.05 ms to decode, against 0.47 / 0.22 ms for COCO RLE, and the blobs are about as
small; PNG was far slower and pickle is never used (a cache must not execute code when read).
The blob carries no shape: the caller stores it (the bounding box) and passes it back.

COCO's RLE is produced here with numpy alone, so the core does not need pycocotools.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "coco_rle_to_mask",
    "crop_to_coco_rle",
    "cropped_mask_overlap",
    "decode_mask",
    "encode_mask",
    "mask_to_coco_rle",
]

_ZLIB_LEVEL = 1  # level 1 is ~5x faster than the default and within a few % of its size here


def _as_2d_bool(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        arr = arr.astype(bool)
    return arr


def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a 2-D boolean mask as bit-packed, zlib-compressed bytes (row-major).

    Non-boolean input is converted with ``astype(bool)`` (non-zero is True). The shape is not
    stored: :func:`decode_mask` needs it back. Masks of any shape, including empty ones, work.
    """
    arr = _as_2d_bool(mask)
    return zlib.compress(np.packbits(arr, axis=None).tobytes(), _ZLIB_LEVEL)


def decode_mask(blob: bytes, height: int, width: int) -> np.ndarray:
    """Decode :func:`encode_mask`'s bytes back into a ``(height, width)`` boolean array.

    Raises ``ValueError`` when the blob is corrupt or was not encoded for that shape.
    """
    if height < 0 or width < 0:
        raise ValueError(f"mask shape must not be negative, got ({height}, {width})")
    n = int(height) * int(width)
    try:
        packed = zlib.decompress(blob)
    except zlib.error as e:
        raise ValueError(f"mask blob is corrupt: {e}") from e
    if len(packed) != (n + 7) // 8:
        raise ValueError(
            f"mask blob holds {len(packed)} bytes, a ({height}, {width}) mask needs {(n + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n)
    # unpackbits yields 0/1 bytes, which are valid booleans: view instead of copying.
    return bits.view(np.bool_).reshape(height, width)


def _runs_from_column_major(flat: np.ndarray) -> list[int]:
    """COCO counts of a flat boolean sequence: alternating run lengths, starting with zeros."""
    n = flat.size
    if n == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [n]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs


def mask_to_coco_rle(full_mask: np.ndarray) -> dict:
    """COCO uncompressed RLE ``{"size": [h, w], "counts": [...]}`` of a full-image mask.

    Runs are taken in column-major (Fortran) order and start with the number of zeros, as COCO
    and ``pycocotools.mask.frPyObjects`` expect.
    """
    arr = _as_2d_bool(full_mask, "full_mask")
    h, w = arr.shape
    return {"size": [int(h), int(w)], "counts": _runs_from_column_major(arr.ravel(order="F"))}


def crop_to_coco_rle(
    crop: np.ndarray, bbox: tuple[int, int, int, int], height: int, width: int
) -> dict:
    """COCO uncompressed RLE of ``crop`` placed at ``bbox = (x0, y0, x1, y1)`` in an image.

    Same result as ``mask_to_coco_rle`` of the full ``(height, width)`` mask, but touches only the
    bounding box's columns, so exporting many small instances of big tiles stays cheap.
    """
    arr = _as_2d_bool(crop, "crop")
    x0, y0, x1, y1 = (int(v) for v in bbox)
    if arr.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"crop shape {arr.shape} does not match bbox {bbox}")
    if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
        raise ValueError(f"bbox {bbox} does not fit a {height} x {width} image")
    n = height * width
    if arr.size == 0 or not arr.any():
        return {"size": [int(height), int(width)], "counts": [n] if n else []}
    # The bbox's columns, each padded to the full image height, in column-major order.
    cols = np.zeros((x1 - x0, height), dtype=bool)
    cols[:, y0:y1] = arr.T
    runs = _runs_from_column_major(cols.ravel())
    before = x0 * height
    after = (width - x1) * height
    # The bbox holds at least one True, so the sequence starts and ends with zero runs (possibly
    # of length 0 at the image edge): the padding outside the bbox extends those zero runs.
    runs[0] += before
    if len(runs) % 2 == 1:  # odd count: the last run is a zero run
        runs[-1] += after
    elif after:
        runs.append(after)
    return {"size": [int(height), int(width)], "counts": runs}


def coco_rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO *uncompressed* RLE (``counts`` a list of ints) into a boolean array."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        raise ValueError("compressed COCO RLE strings need pycocotools.mask.decode")
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, size {h} x {w} needs {h * w}")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


def cropped_mask_overlap(
    box_a: Sequence[int], mask_a: np.ndarray, box_b: Sequence[int], mask_b: np.ndarray
) -> tuple[int, int, int]:
    """``(overlap, area_a, area_b)`` in pixels of two masks each cropped to its ``(x0, y0, x1,
    y1)`` box (exclusive ends) in one image, as the cache stores them: compared on the overlap
    of the boxes (IoU is ``overlap / (area_a + area_b - overlap)``)."""
    ax0, ay0, ax1, ay1 = (int(v) for v in box_a)
    bx0, by0, bx1, by1 = (int(v) for v in box_b)
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    area_a, area_b = int(np.count_nonzero(mask_a)), int(np.count_nonzero(mask_b))
    if x1 <= x0 or y1 <= y0:
        return 0, area_a, area_b
    a = mask_a[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    b = mask_b[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    return int(np.count_nonzero(a & b)), area_a, area_b

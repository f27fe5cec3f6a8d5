"""Mask encodings: the cache blob round-trips exactly, and the COCO RLE is what COCO expects."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from solardesk.core.masks import (
    coco_rle_to_mask,
    crop_to_coco_rle,
    decode_mask,
    encode_mask,
    mask_to_coco_rle,
)

SHAPES = [(1, 1), (1, 9), (9, 1), (3, 7), (8, 8), (17, 33), (64, 129), (512, 512)]


def _random_mask(shape: tuple[int, int], seed: int = 0, p: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < p


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["random", "empty", "full"])
def test_blob_round_trip(shape: tuple[int, int], kind: str) -> None:
    mask = {
        "random": _random_mask(shape),
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
    }[kind]
    back = decode_mask(encode_mask(mask), *shape)
    assert back.dtype == np.bool_ and back.shape == shape
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_zero_size_masks_round_trip(shape: tuple[int, int]) -> None:
    assert decode_mask(encode_mask(np.zeros(shape, bool)), *shape).shape == shape


def test_non_contiguous_and_non_bool_input() -> None:
    base = _random_mask((40, 60), seed=3)
    view = base[::3, 5::2]  # a strided view
    np.testing.assert_array_equal(decode_mask(encode_mask(view), *view.shape), view)
    as_uint8 = base.astype(np.uint8) * 255
    np.testing.assert_array_equal(decode_mask(encode_mask(as_uint8), 40, 60), base)


def test_blob_is_compact_for_a_panel_like_mask() -> None:
    mask = np.zeros((512, 512), bool)
    mask[100:220, 50:400] = True
    mask[100:220:12] = False  # module rows
    assert len(encode_mask(mask)) < 512 * 512 / 8 / 20


def test_decode_rejects_a_wrong_shape_or_corrupt_blob() -> None:
    blob = encode_mask(_random_mask((10, 10)))
    with pytest.raises(ValueError, match="needs"):
        decode_mask(blob, 20, 20)
    with pytest.raises(ValueError, match="corrupt"):
        decode_mask(b"not zlib at all", 10, 10)
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 2), bool))


def test_coco_rle_is_column_major_and_starts_with_zeros() -> None:
    # Column-major order reads (0, 1) down column 0, then (1, 1) down column 1.
    mask = np.array([[0, 1], [1, 1]], bool)
    assert mask_to_coco_rle(mask) == {"size": [2, 2], "counts": [1, 3]}
    # A mask starting with a True pixel starts with a zero-length run of zeros.
    assert mask_to_coco_rle(np.array([[1, 0]], bool))["counts"] == [0, 1, 1]
    assert mask_to_coco_rle(np.zeros((3, 4), bool))["counts"] == [12]
    assert mask_to_coco_rle(np.ones((3, 4), bool))["counts"] == [0, 12]


@pytest.mark.parametrize("shape", SHAPES)
def test_coco_rle_round_trip(shape: tuple[int, int]) -> None:
    mask = _random_mask(shape, seed=shape[0], p=0.3)
    rle = mask_to_coco_rle(mask)
    assert sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(coco_rle_to_mask(rle), mask)


@pytest.mark.parametrize(
    "bbox",
    [
        (0, 0, 5, 4),
        (10, 3, 20, 9),
        (25, 0, 30, 12),
        (0, 7, 30, 12),
        (29, 11, 30, 12),
        (0, 0, 30, 12),
    ],
)
def test_crop_rle_equals_full_mask_rle(bbox: tuple[int, int, int, int]) -> None:
    h, w = 12, 30
    x0, y0, x1, y1 = bbox
    rng = np.random.default_rng(sum(bbox))
    for crop in (
        rng.random((y1 - y0, x1 - x0)) < 0.5,
        np.ones((y1 - y0, x1 - x0), bool),
        np.zeros((y1 - y0, x1 - x0), bool),
    ):
        full = np.zeros((h, w), bool)
        full[y0:y1, x0:x1] = crop
        assert crop_to_coco_rle(crop, bbox, h, w) == mask_to_coco_rle(full)


def test_crop_rle_rejects_a_bbox_outside_the_image() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        crop_to_coco_rle(np.ones((2, 2), bool), (9, 9, 11, 11), 10, 10)
    with pytest.raises(ValueError, match="does not match"):
        crop_to_coco_rle(np.ones((2, 3), bool), (0, 0, 2, 2), 10, 10)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_rle_agrees_with_pycocotools() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    for shape in [(1, 1), (7, 13), (128, 96)]:
        mask = _random_mask(shape, seed=1, p=0.2)
        rle = mask_to_coco_rle(mask)
        compressed = mask_utils.frPyObjects(rle, *shape)
        np.testing.assert_array_equal(mask_utils.decode(compressed).astype(bool), mask)
        assert int(mask_utils.area(compressed)) == int(mask.sum())
        # and pycocotools' own encoding decodes to the same runs
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        np.testing.assert_array_equal(mask_utils.decode(theirs).astype(bool), mask)


def test_masks_and_cache_do_not_import_pycocotools_or_heavy_runtimes() -> None:
    code = (
        "import sys, solardesk.core.masks, solardesk.core.cache\n"
        "print(','.join(m for m in ('pycocotools', 'torch', 'PySide6', 'onnxruntime', "
        "'rasterio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

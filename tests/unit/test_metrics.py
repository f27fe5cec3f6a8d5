"""Detection metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from solardesk.core.metrics import (
    Evaluation,
    ObjectCounts,
    coco_ap,
    format_table,
    mask_boxes,
    mask_ious,
    match_greedy,
    object_counts,
)

H = W = 64
#: AP needs pycocotools (the "ml" extra); every other figure is computed without it.
HAVE_COCO = importlib.util.find_spec("pycocotools") is not None
needs_coco = pytest.mark.skipif(not HAVE_COCO, reason="pycocotools is not installed")


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def stack(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, H, W), bool)


A = box(2, 2, 12, 12)  # 100 px
B = box(30, 30, 40, 50)  # 200 px
C = box(50, 2, 60, 12)  # 100 px


def test_mask_ious_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    pred = rng.random((5, H, W)) < 0.05
    gt = rng.random((4, H, W)) < 0.05
    pred[4] = False  # an empty prediction
    ious = mask_ious(pred, gt)
    for i in range(5):
        for j in range(4):
            inter = (pred[i] & gt[j]).sum()
            union = (pred[i] | gt[j]).sum()
            assert ious[i, j] == pytest.approx(inter / union if union else 0.0)
    assert mask_ious(stack(), stack(A)).shape == (0, 1)
    assert mask_boxes(stack(A, B)).tolist() == [[2, 2, 12, 12], [30, 30, 40, 50]]


def test_perfect_match_is_one_everywhere() -> None:
    ev = Evaluation()
    ev.add(stack(A, B, C), [0.9, 0.8, 0.7], stack(A, B, C))
    s = ev.summary()
    assert (s["tp"], s["fp"], s["fn"]) == (3, 0, 0)
    assert s["precision"] == s["recall"] == s["f1"] == 1.0
    assert s["mean_matched_iou"] == 1.0
    assert s["area"]["relative_error"] == 0.0
    if HAVE_COCO:
        assert s["mask_ap"] == pytest.approx(1.0) and s["mask_ap50"] == pytest.approx(1.0)
        assert s["box_ap"] == pytest.approx(1.0)
    else:
        assert s["mask_ap"] is None


def test_one_miss() -> None:
    counts, _ = object_counts(stack(A, B), [0.9, 0.8], stack(A, B, C))
    assert counts == ObjectCounts(tp=2, fp=0, fn=1)
    assert counts.precision == 1.0
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == pytest.approx(0.8)


def test_one_false_positive() -> None:
    counts, _ = object_counts(stack(A, B, C), [0.9, 0.8, 0.7], stack(A, B))
    assert counts == ObjectCounts(tp=2, fp=1, fn=0)
    assert counts.precision == pytest.approx(2 / 3) and counts.recall == 1.0


def test_iou_just_under_and_just_over_half() -> None:
    gt = box(0, 0, 10, 10)  # 100 px
    # Shift a 10 × 10 box right by k columns: IoU = (10 - k) * 10 / (100 + 10 k).
    over = box(3, 0, 13, 10)  # 70 / 130 = 0.538
    under = box(4, 0, 14, 10)  # 60 / 140 = 0.429
    exact = box(0, 0, 20, 10)  # 100 / 200 = 0.5: "at or above" counts
    assert object_counts(stack(over), [1.0], stack(gt))[0].tp == 1
    assert object_counts(stack(under), [1.0], stack(gt))[0].tp == 0
    assert mask_ious(stack(exact), stack(gt))[0, 0] == 0.5
    assert object_counts(stack(exact), [1.0], stack(gt))[0].tp == 1


def test_greedy_matching_is_one_to_one_by_score() -> None:
    gt = box(0, 0, 10, 10)
    near = box(0, 0, 10, 11)  # IoU 0.909
    exact = gt.copy()  # IoU 1
    # The higher-scored prediction takes the truth even though the other overlaps it more.
    counts, matches = object_counts(stack(near, exact), [0.9, 0.3], stack(gt))
    assert counts == ObjectCounts(tp=1, fp=1, fn=0)
    assert matches == [(0, 0, pytest.approx(100 / 110))]
    # Each prediction takes the truth it overlaps most among those still free.
    ious = np.array([[0.6, 0.9], [0.7, 0.0]])
    assert match_greedy(ious, [0.9, 0.8]) == [(0, 1, 0.9), (1, 0, 0.7)]


@needs_coco
def test_score_threshold_filters_object_counts_but_not_ap() -> None:
    ev = Evaluation(score_threshold=0.5)
    ev.add(stack(A, B), [0.9, 0.2], stack(A, B))
    s = ev.summary()
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    assert s["mask_ap50"] == pytest.approx(1.0)  # AP ranks all predictions


def test_empty_images() -> None:
    ev = Evaluation()
    ev.add(stack(), [], stack())
    s = ev.summary()
    # Nothing to find and nothing found measures nothing: not a perfect score.
    assert s["precision"] is s["recall"] is s["f1"] is None
    rows = {line.split("  ")[0]: line.split()[-1] for line in format_table(s).splitlines()}
    assert rows["precision"] == rows["recall"] == rows["F1"] == "n/a"
    assert s["mask_ap"] is None  # COCO AP is undefined without truth
    assert ObjectCounts(0, 0, 3).precision == 0.0 and ObjectCounts(0, 2, 0).recall == 0.0
    ev.add(stack(), [], stack(A))
    s = ev.summary()
    assert s["recall"] == 0.0
    assert s["mask_ap"] == (0.0 if HAVE_COCO else None)


def test_area_error_per_image_and_in_square_metres() -> None:
    ev = Evaluation()
    r = ev.add(stack(box(2, 2, 12, 17)), [0.9], stack(A), gsd=0.5)  # 150 vs 100 px
    assert r.area_error_px == 50 and r.relative_area_error == pytest.approx(0.5)
    ev.add(stack(), [], stack(B), gsd=0.5)  # all 200 px missed
    a = ev.summary()["area"]
    assert a["gt_px"] == 300 and a["pred_px"] == 150
    assert a["relative_error"] == pytest.approx(-0.5)
    assert a["mean_abs_relative_error"] == pytest.approx(0.75)
    assert a["gt_m2"] == pytest.approx(75.0) and a["pred_m2"] == pytest.approx(37.5)
    # Overlapping predictions are not counted twice.
    r = ev.add(stack(A, A), [0.9, 0.8], stack(A))
    assert r.pred_area_px == 100 and r.counts == ObjectCounts(1, 1, 0)


@needs_coco
def test_coco_ap_agrees_with_hand_computed_precision_recall() -> None:
    from solardesk.core.masks import mask_to_coco_rle

    def ann(m, score=None):
        d = {"rle": mask_to_coco_rle(m), "bbox": mask_boxes(stack(m))[0]}
        if score is not None:
            d["score"] = score
        return d

    # Two truths; the top prediction is a false positive, the next one a hit: at recall 0.5
    # precision is 0.5, and recall never reaches 1, so AP50 = 0.5 × (101 points up to 0.5).
    image = {
        "height": H,
        "width": W,
        "gt": [ann(A), ann(B)],
        "pred": [ann(C, 0.9), ann(A, 0.8)],
    }
    ap = coco_ap([image])
    assert ap["ap50"] == pytest.approx(0.5 * 51 / 101, abs=1e-6)


def test_table_lists_every_figure() -> None:
    ev = Evaluation()
    ev.add(stack(A), [0.9], stack(A, B), gsd=0.2)
    text = format_table(ev.summary())
    for label in ("precision", "recall", "F1", "mask AP", "box AP", "area error", "m²"):
        assert label in text


def test_metrics_import_no_torch_and_no_pycocotools() -> None:
    code = (
        "import sys, solardesk.core.metrics\n"
        "print(','.join(m for m in ('torch', 'pycocotools') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

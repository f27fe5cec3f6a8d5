"""Detection quality: COCO AP, object-level precision / recall / F1, and panel area error.

Instances are boolean masks of one image, ``(N, H, W)`` arrays; predictions also carry scores.
Nothing here imports torch; pycocotools is imported only to compute AP, and when it is missing
the AP figures are ``None`` and everything else still works.

Object-level matching (what a GIS analyst counts): predictions at or above ``score_threshold``
are taken in descending score order and each is matched to the still unmatched ground-truth
instance it overlaps most, if that mask IoU is ≥ ``iou_threshold`` (inclusive). Matched
predictions are true positives, the other predictions false positives, the unmatched truths
false negatives. COCO AP uses every prediction (AP ranks them) and pycocotools' own matching.

Area error compares the area covered by panels per image (the union of the masks, so
overlapping instances are not counted twice): what a capacity estimate would be built on.

Conventions for empty cases (counts are summed over images first, the figures come from the
sums): with nothing to find and nothing found, precision, recall and F1 are ``None``: there is
nothing to measure, and a perfect 1.0 there read as a perfect model on a validation set without
a single panel; precision with no prediction (but something to find) is 0, recall with nothing
to find (but predictions) is 0. AP is ``None`` when there is no ground truth at all (COCO leaves
it undefined).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from solardesk.core.masks import mask_to_coco_rle

__all__ = [
    "Evaluation",
    "ImageResult",
    "ObjectCounts",
    "coco_ap",
    "mask_boxes",
    "mask_ious",
    "match_greedy",
    "object_counts",
]


# --------------------------------------------------------------------------------------------
# IoU and matching
# --------------------------------------------------------------------------------------------
def _as_masks(masks: Any, what: str) -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{what} must be (N, H, W) masks, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``(x0, y0, x1, y1)`` boxes (exclusive ends) of ``(N, H, W)`` masks; 0s if empty."""
    masks = _as_masks(masks, "masks")
    out = np.zeros((len(masks), 4), np.int64)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(m.any(axis=0))
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def mask_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mask IoU of every prediction with every truth, ``(P, G)`` float64.

    Only pairs whose boxes overlap are compared, each on the overlap of their boxes, so the
    cost follows the instances' sizes, not the image's. Two empty masks have IoU 0.
    """
    pred = _as_masks(pred, "pred")
    gt = _as_masks(gt, "gt")
    if pred.shape[1:] != gt.shape[1:] and len(pred) and len(gt):
        raise ValueError(f"masks of different images: {pred.shape[1:]} vs {gt.shape[1:]}")
    out = np.zeros((len(pred), len(gt)), np.float64)
    if not len(pred) or not len(gt):
        return out
    pb, gb = mask_boxes(pred), mask_boxes(gt)
    pa = pred.reshape(len(pred), -1).sum(axis=1)
    ga = gt.reshape(len(gt), -1).sum(axis=1)
    x0 = np.maximum(pb[:, None, 0], gb[None, :, 0])
    y0 = np.maximum(pb[:, None, 1], gb[None, :, 1])
    x1 = np.minimum(pb[:, None, 2], gb[None, :, 2])
    y1 = np.minimum(pb[:, None, 3], gb[None, :, 3])
    for i, j in zip(*np.nonzero((x1 > x0) & (y1 > y0)), strict=True):
        ys, xs = slice(y0[i, j], y1[i, j]), slice(x0[i, j], x1[i, j])
        inter = np.count_nonzero(pred[i, ys, xs] & gt[j, ys, xs])
        if inter:
            out[i, j] = inter / (pa[i] + ga[j] - inter)
    return out


def match_greedy(
    ious: np.ndarray, scores: Sequence[float], iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(pred, gt, iou)``: by descending score, each prediction takes the
    unmatched truth it overlaps most if that IoU is ≥ ``iou_threshold``. Ties in score keep the
    input order (a stable sort)."""
    ious = np.asarray(ious, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    taken = np.zeros(ious.shape[1], bool)
    matches = []
    for p in order:
        if not ious.shape[1]:
            break
        row = np.where(taken, -1.0, ious[p])
        g = int(np.argmax(row))
        if row[g] >= iou_threshold:
            taken[g] = True
            matches.append((int(p), g, float(row[g])))
    return matches


@dataclass(frozen=True)
class ObjectCounts:
    """True positives, false positives and false negatives, and what follows from them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def measured(self) -> bool:
        """Whether there was anything to find or anything found (else every figure is None)."""
        return bool(self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float | None:
        if self.tp + self.fp:
            return self.tp / (self.tp + self.fp)
        return 0.0 if self.fn else None

    @property
    def recall(self) -> float | None:
        if self.tp + self.fn:
            return self.tp / (self.tp + self.fn)
        return 0.0 if self.fp else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, float | None]:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def object_counts(
    pred_masks: np.ndarray,
    pred_scores: Sequence[float],
    gt_masks: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> tuple[ObjectCounts, list[tuple[int, int, float]]]:
    """Counts and matches of one image (see the module docstring for the rule)."""
    pred = _as_masks(pred_masks, "pred_masks")
    scores = np.asarray(pred_scores, np.float64).reshape(-1)
    if len(scores) != len(pred):
        raise ValueError(f"{len(pred)} predicted masks but {len(scores)} scores")
    keep = np.flatnonzero(scores >= score_threshold)
    gt = _as_masks(gt_masks, "gt_masks")
    ious = mask_ious(pred[keep], gt)
    matches = match_greedy(ious, scores[keep], iou_threshold)
    matches = [(int(keep[p]), g, iou) for p, g, iou in matches]
    tp = len(matches)
    return ObjectCounts(tp, len(keep) - tp, len(gt) - tp), matches


# --------------------------------------------------------------------------------------------
# COCO AP (pycocotools, imported lazily)
# --------------------------------------------------------------------------------------------
def _bbox_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_ap(
    images: Sequence[dict[str, Any]], iou_type: str = "segm", max_dets: int = 100
) -> dict[str, float | None]:
    """COCO AP, AP50 and AP75 over ``images``.

    Each image is a dict with ``height``, ``width``, ``gt`` (list of ``{"rle", "bbox"}``) and
    ``pred`` (list of ``{"rle", "bbox", "score"}``); ``rle`` is an uncompressed COCO RLE
    (:func:`solardesk.core.masks.mask_to_coco_rle`), ``bbox`` is ``x0, y0, x1, y1``. Returns
    ``None`` values without ground truth, or when pycocotools is not installed.
    """
    none: dict[str, float | None] = {"ap": None, "ap50": None, "ap75": None}
    if not any(im["gt"] for im in images):
        return none
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        return none
    if not any(im["pred"] for im in images):
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    gt_images, gt_anns, dts = [], [], []
    for image_id, im in enumerate(images, start=1):
        h, w = int(im["height"]), int(im["width"])
        gt_images.append({"id": image_id, "height": h, "width": w})
        for ann in im["gt"]:
            rle = mask_utils.frPyObjects(ann["rle"], h, w)
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": _bbox_xywh(ann["bbox"]),
                    "iscrowd": 0,
                }
            )
        for det in im["pred"]:
            rle = mask_utils.frPyObjects(det["rle"], h, w)
            dts.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "bbox": _bbox_xywh(det["bbox"]),
                    "score": float(det["score"]),
                }
            )
    # pycocotools prints progress on stdout, which may be a JSON-lines channel: silence it.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": gt_images,
            "annotations": gt_anns,
            "categories": [{"id": 1, "name": "solar_panel"}],
        }
        gt.createIndex()
        dt = gt.loadRes(dts)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.maxDets = [1, 10, max(100, int(max_dets))]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:3]]
    return {k: (None if v < 0 else v) for k, v in zip(("ap", "ap50", "ap75"), stats, strict=True)}


# --------------------------------------------------------------------------------------------
# Accumulating over images
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageResult:
    """The figures of one image."""

    image_id: str
    counts: ObjectCounts
    gt_instances: int
    pred_instances: int
    gt_area_px: int
    pred_area_px: int
    gsd: float | None = None
    matched_ious: tuple[float, ...] = ()

    @property
    def area_error_px(self) -> int:
        """Predicted minus true panel area (pixels covered)."""
        return self.pred_area_px - self.gt_area_px

    @property
    def relative_area_error(self) -> float | None:
        """``area_error_px / gt_area_px``; ``None`` for an image without panels."""
        return self.area_error_px / self.gt_area_px if self.gt_area_px else None


@dataclass
class Evaluation:
    """Accumulates images and summarises them (object counts, AP, area error).

    ``add`` keeps the object counts and each mask as a compact RLE, never the arrays, so memory
    grows with the number of instances, not pixels.
    """

    iou_threshold: float = 0.5
    score_threshold: float = 0.5
    max_dets: int = 100
    images: list[ImageResult] = field(default_factory=list)
    _coco: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def add(
        self,
        pred_masks: np.ndarray,
        pred_scores: Sequence[float],
        gt_masks: np.ndarray,
        *,
        pred_boxes: np.ndarray | None = None,
        image_id: str | None = None,
        gsd: float | None = None,
        shape: tuple[int, int] | None = None,
    ) -> ImageResult:
        """Add one image: predicted masks and scores (all of them: AP ranks them) and truths.

        ``pred_boxes`` (x0, y0, x1, y1) are the model's boxes for box AP (default: the masks'
        boxes). ``shape`` (H, W) is needed only when both mask stacks are empty arrays without
        a shape. ``gsd`` (metres per pixel) adds areas in m² to the summary.
        """
        pred = _as_masks(pred_masks, "pred_masks")
        gt = _as_masks(gt_masks, "gt_masks")
        h, w = shape or (gt.shape[1:] if len(gt) else pred.shape[1:])
        if pred.shape[1:] != (h, w) and len(pred):
            raise ValueError(f"pred_masks {pred.shape[1:]} do not match the image {(h, w)}")
        if gt.shape[1:] != (h, w) and len(gt):
            raise ValueError(f"gt_masks {gt.shape[1:]} do not match the image {(h, w)}")
        scores = np.asarray(pred_scores, np.float64).reshape(-1)
        counts, matches = object_counts(
            pred,
            scores,
            gt,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
        )
        kept = scores >= self.score_threshold
        pred_union = pred[kept].any(axis=0) if kept.any() else np.zeros((h, w), bool)
        gt_union = gt.any(axis=0) if len(gt) else np.zeros((h, w), bool)
        result = ImageResult(
            image_id=image_id if image_id is not None else str(len(self.images)),
            counts=counts,
            gt_instances=len(gt),
            pred_instances=int(kept.sum()),
            gt_area_px=int(gt_union.sum()),
            pred_area_px=int(pred_union.sum()),
            gsd=gsd,
            matched_ious=tuple(iou for _, _, iou in matches),
        )
        self.images.append(result)
        pboxes = mask_boxes(pred) if pred_boxes is None else np.asarray(pred_boxes)
        self._coco.append(
            {
                "height": h,
                "width": w,
                "gt": [
                    {"rle": mask_to_coco_rle(m), "bbox": b}
                    for m, b in zip(gt, mask_boxes(gt), strict=True)
                ],
                "pred": [
                    {"rle": mask_to_coco_rle(m), "bbox": b, "score": s}
                    for m, b, s in zip(pred, pboxes, scores, strict=True)
                ],
            }
        )
        return result

    @property
    def counts(self) -> ObjectCounts:
        total = ObjectCounts()
        for im in self.images:
            total = total + im.counts
        return total

    def summary(self, with_ap: bool = True) -> dict[str, Any]:
        """All figures as a JSON-serialisable dict (see ``solardesk evaluate --json``)."""
        c = self.counts
        gt_px = sum(im.gt_area_px for im in self.images)
        pred_px = sum(im.pred_area_px for im in self.images)
        rel = [im.relative_area_error for im in self.images if im.relative_area_error is not None]
        ious = [v for im in self.images for v in im.matched_ious]
        with_gsd = [im for im in self.images if im.gsd]
        out: dict[str, Any] = {
            "images": len(self.images),
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "gt_instances": sum(im.gt_instances for im in self.images),
            "pred_instances": sum(im.pred_instances for im in self.images),
            **c.to_dict(),
            "mean_matched_iou": float(np.mean(ious)) if ious else None,
            "area": {
                "gt_px": gt_px,
                "pred_px": pred_px,
                "relative_error": (pred_px - gt_px) / gt_px if gt_px else None,
                "mean_abs_relative_error": float(np.mean(np.abs(rel))) if rel else None,
                "gt_m2": sum(im.gt_area_px * im.gsd**2 for im in with_gsd) if with_gsd else None,
                "pred_m2": (
                    sum(im.pred_area_px * im.gsd**2 for im in with_gsd) if with_gsd else None
                ),
            },
        }
        for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
            ap = (
                coco_ap(self._coco, iou_type, self.max_dets)
                if with_ap
                else dict.fromkeys(("ap", "ap50", "ap75"))
            )
            for k, v in ap.items():
                out[f"{prefix}_{k}"] = v
        return out


def format_table(summary: dict[str, Any]) -> str:
    """The summary as an aligned two-column text table."""

    def num(v: Any, fmt: str = ".3f") -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return format(v, fmt)

    a = summary["area"]
    rows = [
        ("images", str(summary["images"])),
        ("truth instances", str(summary["gt_instances"])),
        (f"predictions (score ≥ {summary['score_threshold']:g})", str(summary["pred_instances"])),
        (
            f"TP / FP / FN (IoU ≥ {summary['iou_threshold']:g})",
            "{tp} / {fp} / {fn}".format(**summary),
        ),
        ("precision", num(summary["precision"])),
        ("recall", num(summary["recall"])),
        ("F1", num(summary["f1"])),
        ("mean IoU of matches", num(summary["mean_matched_iou"])),
        (
            "mask AP / AP50 / AP75",
            " / ".join(num(summary[f"mask_{k}"]) for k in ("ap", "ap50", "ap75")),
        ),
        (
            "box AP / AP50 / AP75",
            " / ".join(num(summary[f"box_{k}"]) for k in ("ap", "ap50", "ap75")),
        ),
        ("panel area, truth / predicted (px)", f"{a['gt_px']} / {a['pred_px']}"),
        ("area error (total, relative)", num(a["relative_error"], "+.1%")),
        ("area error (mean |per image|)", num(a["mean_abs_relative_error"], ".1%")),
    ]
    if a.get("gt_m2") is not None:
        rows.append(
            ("panel area, truth / predicted (m²)", f"{a['gt_m2']:.1f} / {a['pred_m2']:.1f}")
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

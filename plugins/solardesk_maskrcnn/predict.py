"""Running a trained model on tiles, and scoring it with :mod:`solardesk.core.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from solardesk.core.metrics import Evaluation

__all__ = ["EvalItem", "Prediction", "evaluate_items", "predict"]

#: Mask probability above which a pixel belongs to a predicted instance (torchvision's 0.5).
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class Prediction:
    """A model's instances on one tile: boxes (N, 4) xyxy, scores (N,), masks (N, H, W) bool."""

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


@dataclass(frozen=True)
class EvalItem:
    """One tile to evaluate on: the model's input and the truth to compare with."""

    image: torch.Tensor  # (C, H, W) float32 in [0, 1]
    gt_masks: np.ndarray  # (G, H, W) bool
    image_id: str
    gsd: float | None = None


@torch.inference_mode()
def predict(model: torch.nn.Module, images: list[torch.Tensor], device: Any) -> list[Prediction]:
    """Instances the model finds on ``images`` (every score; filter them as needed)."""
    model.eval()
    outputs = model([im.to(device, non_blocking=True) for im in images])
    preds = []
    for im, out in zip(images, outputs, strict=True):
        h, w = im.shape[-2:]
        masks = out["masks"]
        masks = (
            (masks[:, 0] >= MASK_THRESHOLD).cpu().numpy()
            if len(masks)
            else np.zeros((0, h, w), bool)
        )
        preds.append(
            Prediction(
                boxes=out["boxes"].float().cpu().numpy().reshape(-1, 4),
                scores=out["scores"].float().cpu().numpy().reshape(-1),
                masks=masks,
            )
        )
    return preds


def _batches(items: Iterable[EvalItem], size: int) -> Iterator[list[EvalItem]]:
    batch: list[EvalItem] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_items(
    model: torch.nn.Module,
    items: Iterable[EvalItem],
    device: Any,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    batch_size: int = 2,
    on_tile: Callable[[int], None] | None = None,
) -> Evaluation:
    """Predict every item and add it to an :class:`Evaluation` (call ``summary()`` on it)."""
    ev = Evaluation(
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        max_dets=getattr(getattr(model, "roi_heads", None), "detections_per_img", 100),
    )
    done = 0
    for batch in _batches(items, batch_size):
        for item, pred in zip(batch, predict(model, [b.image for b in batch], device), strict=True):
            ev.add(
                pred.masks,
                pred.scores,
                item.gt_masks,
                pred_boxes=pred.boxes,
                image_id=item.image_id,
                gsd=item.gsd,
                shape=tuple(item.image.shape[-2:]),
            )
            done += 1
            if on_tile is not None:
                on_tile(done)
    return ev

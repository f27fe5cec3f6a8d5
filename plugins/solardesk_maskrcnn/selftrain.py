"""Self-training: the model relabels the training tiles, then training starts again from it.

One round:

1. the checkpoint predicts every tile of the training split (validation tiles are never
   relabelled, so validation keeps measuring against the same pseudo-labels);
2. each detection scoring at least ``min_score`` is compared (mask IoU ≥ 0.5) with the tile's
   current instances:

   * it matches a target (confident or accepted) — nothing changes: the labels agree;
   * it matches a weak spectral candidate (below the threshold, not reviewed) — the candidate is
     *replaced* by the model's instance;
   * it matches an instance a reviewer rejected — it is dropped: people outrank models;
   * it matches nothing — it is *added*;

   model instances carry provenance ``"model"`` and their score as confidence;
3. the changed tiles are written as a new cache row (stage ``"selftrain"``): the newest row is
   what training reads, the spectral rows stay in the cache (going back costs nothing), and
   review edits, which live in their own row, are untouched;
4. training restarts from the checkpoint's weights (a fresh optimiser and schedule) into
   ``output_dir/selftrain-N``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solardesk.core.cache import Instance, MaskCache, TileKey, hash_params
from solardesk.core.metrics import mask_ious
from solardesk.errors import TrainingError
from solardesk_maskrcnn.config import TrainConfig

__all__ = ["SELFTRAIN_STAGE", "relabel_tiles", "self_train"]

SELFTRAIN_STAGE = "selftrain"
SELFTRAIN_VERSION = "1"


def relabel_tiles(
    model: torch.nn.Module,
    device: Any,
    cache_path: str | Path,
    source: Any,
    samples: list[Any],
    *,
    min_score: float,
    threshold: float,
    spectral: bool,
    tag: str,
    iou_threshold: float = 0.5,
    on_tile: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Relabel ``samples`` with ``model`` (see the module docstring); returns the counts.
    ``stop``, once set, ends it before the next tile (each tile's row is written whole)."""
    from solardesk_maskrcnn.dataset import to_tensors
    from solardesk_maskrcnn.predict import predict

    counts = dict.fromkeys(("tiles", "changed", "added", "replaced", "agreed", "vetoed"), 0)
    params = hash_params({"tag": tag, "min_score": min_score, "threshold": threshold})
    with MaskCache(cache_path) as cache:
        for n, s in enumerate(samples, start=1):
            if stop is not None and stop.is_set():
                break
            tile = source.read(s)
            image, *_ = to_tensors(
                tile, spectral=spectral, threshold=threshold, weight_floor=1.0, noise_aware=False
            )
            (pred,) = predict(model, [torch.from_numpy(image)], device)
            h, w = tile.rgb.shape[:2]
            current = cache.read_tile(s.raster_fp, s.tile_id)
            base = cache.read_tile(s.raster_fp, s.tile_id, include_edits=False)
            cur_masks = (
                np.stack([i.full_mask(h, w) for i in current])
                if current
                else np.zeros((0, h, w), bool)
            )
            keep = [
                i
                for i in np.argsort(-pred.scores, kind="stable")
                if pred.scores[i] >= min_score and pred.masks[i].any()
            ]
            ious = mask_ious(pred.masks[keep], cur_masks) if keep else np.zeros((0, 0))
            removed: set[int] = set()
            added: list[Instance] = []
            added_masks: list[np.ndarray] = []
            for row, i in enumerate(keep):
                mask = pred.masks[i]
                if added_masks and mask_ious(mask[None], np.stack(added_masks)).max() >= 0.5:
                    continue  # the model found this one already
                j = int(np.argmax(ious[row])) if ious.shape[1] else -1
                if j >= 0 and ious[row, j] >= iou_threshold:
                    other = current[j]
                    if other.review == "rejected":
                        counts["vetoed"] += 1
                        continue
                    if other.review == "accepted" or other.confidence >= threshold:
                        counts["agreed"] += 1
                        continue
                    if other.provenance == "human" or other.id in removed:
                        continue
                    removed.add(other.id)
                    counts["replaced"] += 1
                else:
                    counts["added"] += 1
                added.append(
                    Instance.from_full_mask(
                        mask, confidence=float(pred.scores[i]), provenance="model"
                    )
                )
                added_masks.append(mask)
            counts["tiles"] += 1
            if added:
                counts["changed"] += 1
                row_instances = [b for b in base if b.id not in removed] + added
                cache.write_tile(
                    TileKey(s.raster_fp, s.tile_id, SELFTRAIN_STAGE, SELFTRAIN_VERSION, params),
                    s.window,
                    row_instances,
                )
            if on_tile is not None:
                on_tile(n, len(samples))
    return counts


def self_train(
    config: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    rounds: int = 1,
    min_score: float = 0.9,
    epochs: int | None = None,
    emit: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run ``rounds`` of relabel-and-retrain; returns what happened (see the module docstring)."""
    from solardesk_maskrcnn.checkpoint import check_compatible, model_from_checkpoint
    from solardesk_maskrcnn.events import now
    from solardesk_maskrcnn.train import plan_data, select_device, train

    stop = stop or threading.Event()
    send = emit or (lambda _e: None)
    ckpt = Path(checkpoint) if checkpoint else Path(config.output_dir) / "last.pt"
    # Training must read each tile's newest row, which is where the relabelled tiles go.
    config = config.model_copy(update={"data": config.data.model_copy(update={"stage_id": None})})
    device, _ = select_device(config.run.device)
    history = []
    reason = "completed"
    for r in range(1, rounds + 1):
        if stop.is_set():
            reason = "stopped"
            break
        model, data, _ = model_from_checkpoint(ckpt, device)
        check_compatible(data, config.model, ckpt)
        plan = plan_data(config)
        samples = plan.train_all
        if not samples:
            raise TrainingError(f"cache {config.cache} has no training tiles to relabel.")
        counts = relabel_tiles(
            model,
            device,
            config.cache,
            plan.source,
            samples,
            min_score=min_score,
            threshold=config.data.threshold,
            spectral=config.model.channels != "rgb",
            tag=f"{ckpt.resolve()}:{data['step']}",
            on_tile=lambda n, total, r=r: (
                send({"event": "relabel", "time": now(), "round": r, "tile": n, "tiles": total})
                if n % 20 == 0 or n == total
                else None
            ),
            stop=stop,
        )
        send(
            {
                "event": "selftrain_round",
                "time": now(),
                "round": r,
                "checkpoint": str(ckpt),
                **counts,
            }
        )
        del model
        if stop.is_set():  # asked while relabelling: no training round on half the tiles
            reason = "stopped"
            break
        out = Path(config.output_dir) / f"selftrain-{r}"
        cfg_r = config.model_copy(
            update={
                "output_dir": out,
                "model": config.model.model_copy(update={"weights": ckpt}),
                "optim": config.optim.model_copy(update={"epochs": epochs or config.optim.epochs}),
            }
        )
        result = train(cfg_r, emit=emit, stop=stop)
        history.append({"round": r, **counts, "checkpoint": str(result.checkpoint)})
        if result.checkpoint is not None:
            ckpt = result.checkpoint
        if result.reason == "stopped":
            reason = "stopped"
            break
    return {"reason": reason, "rounds": len(history), "checkpoint": str(ckpt), "history": history}

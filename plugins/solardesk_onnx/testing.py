"""Small Mask R-CNNs with known behaviour, for tests and benchmarks (imports torch).

An untrained Mask R-CNN gives every box about the same score, so torch and onnxruntime keep
different top-k sets and cannot be compared (ENVIRONMENT.md). :func:`spread_scores` gives the
box classifier weights that make scores depend on the RoI's features, calibrated on an image:
distinct scores, about half of them above 0.5, on textured input.

:func:`tiny_maskrcnn` builds a network small enough to export in about a second, without biases
before the classifier, so that an image of the normalisation mean (which the graph maps to 0)
yields all-zero features and no detection at all: the "empty tile".
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "export_tiny", "spread_scores", "tiny_maskrcnn"]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class _TinyBackbone(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()

        def conv(a: int, b: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(a, b, 3, 2, 1, bias=False), nn.ReLU())

        self.stem = nn.Sequential(conv(in_channels, width), conv(width, width), conv(width, width))
        self.down = conv(width, width)
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> OrderedDict:
        a = self.stem(x)  # stride 8
        return OrderedDict([("0", a), ("1", self.down(a))])  # strides 8, 16


def tiny_maskrcnn(
    tile_size: int,
    *,
    in_channels: int = 3,
    width: int = 16,
    detections_per_img: int = 20,
    seed: int = 0,
) -> MaskRCNN:
    """A two-class Mask R-CNN of ~60 k parameters with distinct scores, in eval mode.

    ``in_channels`` 3 (RGB, ImageNet normalisation) or 9 (RGB + six spectral channels, normalised
    with 0.25 / 0.25 like :mod:`solardesk_maskrcnn.model`). Anchors of 16 and 32 px.
    """
    torch.manual_seed(seed)
    mean = list(IMAGE_MEAN) + [0.25] * (in_channels - 3)
    std = list(IMAGE_STD) + [0.25] * (in_channels - 3)
    model = MaskRCNN(
        _TinyBackbone(in_channels, width),
        num_classes=None,
        min_size=tile_size,
        max_size=tile_size,
        image_mean=mean,
        image_std=std,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2),
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=100,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=14, sampling_ratio=2),
        box_head=TwoMLPHead(width * 49, 32),
        box_predictor=FastRCNNPredictor(32, 2),
        mask_head=MaskRCNNHeads(width, [width, width], 1),
        mask_predictor=MaskRCNNPredictor(width, width, 2),
        box_detections_per_img=detections_per_img,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                module.bias.zero_()
    g = torch.Generator().manual_seed(seed)
    texture = torch.rand(in_channels, tile_size, tile_size, generator=g)
    spread_scores(model.eval(), texture)
    return model


@torch.no_grad()
def spread_scores(
    model: MaskRCNN, image: torch.Tensor, *, spread: float = 1.0, seed: int = 1
) -> None:
    """Make detection scores depend on each RoI's features (distinct scores), and masks cover
    part of each box.

    The box classifier's foreground logit becomes ``spread × (f·u − μ) / σ`` for a random
    positive direction ``u``, where μ and σ are the mean and deviation of ``f·u`` over the
    RoIs of ``image`` (C, H, W in [0, 1]): on such images about half the boxes score above 0.5,
    all differently; a featureless RoI (f = 0) scores ``sigmoid(−spread × μ / σ)``. Then the
    foreground mask logits are standardised the same way on the detections of ``image`` (×2,
    +0.5), so pasted masks hold about 60 % of their box instead of nothing.
    """
    g = torch.Generator().manual_seed(seed)
    cls = model.roi_heads.box_predictor.cls_score
    u = torch.rand(cls.weight.shape[1], generator=g) + 0.5
    seen: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        hook = model.roi_heads.box_head.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            model([image])
        finally:
            hook.remove()
        v = seen[0] @ u
        mu, sigma = float(v.mean()), float(v.std().clamp_min(1e-12))
        cls.weight.zero_()
        cls.weight[1:] = spread * u / sigma
        cls.bias.zero_()
        cls.bias[1:] = -spread * mu / sigma

        seen.clear()
        predictor = model.roi_heads.mask_predictor
        hook = predictor.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            model([image])
        finally:
            hook.remove()
        if seen and seen[0].shape[0] > 0:
            logits = seen[0][:, 1:]
            mu, sigma = float(logits.mean()), float(logits.std().clamp_min(1e-12))
            last = predictor.mask_fcn_logits
            last.weight[1:] *= 2.0 / sigma
            last.bias[1:] = (last.bias[1:] - mu) * (2.0 / sigma) + 0.5
    finally:
        model.train(was_training)


def export_tiny(
    path: str | Path,
    tile_size: int = 128,
    *,
    in_channels: int = 3,
    fixed_shape: bool = False,
    gsd_m: float = 0.15,
    overlap: int = 32,
    score_threshold: float = 0.5,
    detections_per_img: int = 20,
    seed: int = 0,
    channels: list[str] | None = None,
) -> MaskRCNN:
    """Export a :func:`tiny_maskrcnn` with SolarDesk metadata to ``path``; returns the model."""
    from solardesk_onnx.export import export_model

    model = tiny_maskrcnn(
        tile_size, in_channels=in_channels, detections_per_img=detections_per_img, seed=seed
    )
    if channels is None:
        channels = ["red", "green", "blue"]
        if in_channels == 9:
            from solardesk_spectral.channels import CHANNEL_NAMES

            channels += list(CHANNEL_NAMES)
        channels += [f"band{i}" for i in range(len(channels), in_channels)]
    export_model(
        model,
        path,
        tile_size=tile_size,
        channels=channels,
        classes=["background", "solar_panel"],
        gsd_m=gsd_m,
        overlap=overlap,
        score_threshold=score_threshold,
        fixed_shape=fixed_shape,
    )
    return model

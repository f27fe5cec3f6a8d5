"""Builtin plugin: ONNX export and onnxruntime inference (imported only when used).

Contributes the ``onnx`` pre-compute stage (what ``solardesk detect --model M.onnx`` runs), the
``onnx`` detector, and the ``export-onnx`` and ``onnx-info`` commands. Importing this module must
stay cheap: torch and onnxruntime are imported by the contributions when they are used.
"""

from __future__ import annotations

from solardesk.plugin_api import CliCommand, Detector, PrecomputeStage, hookimpl

#: Bump when the stage's output changes for the same model and tile: the cache recomputes it.
STAGE_VERSION = 2  # 2: pieces of one object cut by window borders are joined


@hookimpl
def solardesk_precompute_stages() -> list[PrecomputeStage]:
    return [
        PrecomputeStage(
            id="onnx",
            title="ONNX model (onnxruntime)",
            target="solardesk_onnx.stage:analyse_tile",
            version=STAGE_VERSION,
            settings="solardesk_onnx.settings:OnnxSettings",
            initializer="solardesk_onnx.stage:init_worker",
            tiling="solardesk_onnx.settings:recommended_tiling",
        )
    ]


@hookimpl
def solardesk_detectors() -> list[Detector]:
    return [
        Detector(
            id="onnx",
            title="ONNX model (onnxruntime)",
            target="solardesk_onnx.stage:analyse_tile",
            formats=(".onnx",),
        )
    ]


@hookimpl
def solardesk_cli_commands() -> list[CliCommand]:
    return [
        CliCommand(
            id="export-onnx",
            title="Export a training checkpoint to ONNX with its metadata",
            target="solardesk_onnx.cli:export_onnx",
        ),
        CliCommand(
            id="onnx-info",
            title="Describe an ONNX model and the provider it runs on",
            target="solardesk_onnx.cli:onnx_info",
        ),
    ]

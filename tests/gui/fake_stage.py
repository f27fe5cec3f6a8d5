"""A tiny pre-compute stage and plugin for the GUI tests (the real analyser is not needed).

The stage puts a square instance in every other 64-pixel cell of a tile (a checkerboard),
with a confidence that cycles through 0.30…1.00 by cell position, after spending
``work_ms`` of numpy work (which releases the GIL, as the real analyser's OpenCV calls do).
So a 256-pixel tile holds 8 instances and its results are known without reading pixels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from solardesk.config import RasterSettings, Settings
from solardesk.core.cache import Instance
from solardesk.plugin_api import Detector, PrecomputeStage, Trainer, hookimpl

CELL = 64


class FakeSettings(Settings):
    threshold: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Pseudo-label confidence",
            description="Read-time threshold.",
            json_schema_extra={"recompute": False},
        ),
    ] = 0.6
    size: Annotated[
        int, Field(ge=4, le=60, title="Square size (px)", description="Side of each square.")
    ] = 40
    work_ms: Annotated[
        float,
        Field(ge=0, le=5000, title="Work per tile (ms)", description="Busy numpy time."),
    ] = 20.0


def analyse(rgb: np.ndarray, valid: np.ndarray, gsd: float, params: dict) -> list[Instance]:
    deadline = time.perf_counter() + params.get("work_ms", 20.0) / 1000
    a = rgb[..., 0].astype(np.float32)
    while time.perf_counter() < deadline:
        a = np.sqrt(a * a + 1.0)
    h, w = rgb.shape[:2]
    size = int(params.get("size", 40))
    out = []
    for r in range(h // CELL):
        for c in range(w // CELL):
            if (r + c) % 2:
                continue
            conf = 0.3 + 0.7 * (((r * 3 + c * 5) % 8) / 7)
            x0, y0 = c * CELL + 8, r * CELL + 8
            mask = np.ones((size, size), bool)
            out.append(Instance(bbox=(x0, y0, x0 + size, y0 + size), mask=mask, confidence=conf))
    return out


class FakeData(Settings):
    threshold: Annotated[
        float, Field(ge=0, le=1, title="Pseudo-label confidence", description="Targets.")
    ] = 0.85


class FakeTrainConfig(Settings):
    """What tests/gui/fake_solardesk.py reads (a stand-in for the Mask R-CNN config)."""

    cache: Annotated[Path | None, Field(title="Mask cache", description="Cache.")] = None
    rasters: Annotated[tuple[Path, ...], Field(title="Rasters", description="Imagery.")] = ()
    output_dir: Annotated[Path, Field(title="Output folder", description="Checkpoints.")] = Path(
        "training"
    )
    epochs: Annotated[int, Field(ge=1, le=100, title="Epochs", description="Passes.")] = 3
    steps: Annotated[int, Field(ge=1, le=1000, title="Steps", description="Per epoch.")] = 20
    sleep: Annotated[float, Field(ge=0, le=5, title="Sleep (s)", description="Per step.")] = 0.01
    crash_at: Annotated[
        int | None, Field(title="Crash at step", description="Abort there (tests).")
    ] = None
    data: FakeData = FakeData()
    raster: RasterSettings = RasterSettings()


class FakePlugin:
    @hookimpl
    def solardesk_trainers(self) -> list[Trainer]:
        return [
            Trainer(
                id="fake",
                title="Fake trainer (tests)",
                target="x:y",
                settings="tests.gui.fake_stage:FakeTrainConfig",
            )
        ]

    @hookimpl
    def solardesk_precompute_stages(self) -> list[PrecomputeStage]:
        return [
            PrecomputeStage(
                id="fake",
                title="Checkerboard (tests)",
                target="tests.gui.fake_stage:analyse",
                version=1,
                settings="tests.gui.fake_stage:FakeSettings",
            )
        ]

    @hookimpl
    def solardesk_detectors(self) -> list[Detector]:
        return [
            Detector(id="spectral", title="Spectral analyser (no model)", target="x:y"),
            Detector(id="onnx", title="ONNX model", target="x:y", formats=(".onnx",)),
        ]

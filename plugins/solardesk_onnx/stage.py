"""The ``onnx`` pre-compute stage: a model's detections of one tile, for the mask cache.

Runs in the pre-compute worker processes (or in-process with one worker). The session is
created on a process's first tile and reused (:func:`solardesk_onnx.runtime.get_model`).
Scores are stored as the instances' confidence, down to the settings' storage floor; the score
threshold is applied when the cache is read, so changing it recomputes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["analyse_tile", "init_worker", "model_for"]


def init_worker() -> None:
    """Per-process set-up: one OpenCV thread (the pool, or onnxruntime, is the parallelism)."""
    import cv2

    cv2.setNumThreads(1)


def model_for(settings: Any):
    """The process's cached :class:`~solardesk_onnx.runtime.OnnxModel` for ``settings``."""
    from solardesk_onnx.runtime import get_model

    return get_model(
        settings.model,
        settings.model_sha256,
        providers=settings.providers,
        threads=settings.threads,
        optimization=settings.optimization,
    )


def analyse_tile(
    rgb: np.ndarray, valid: np.ndarray | None, gsd: float, params: dict[str, Any]
) -> list:
    """The pre-compute stage: the model's instances on one tile (provenance ``"model"``).

    ``params`` are :class:`~solardesk_onnx.settings.OnnxSettings` as a dict.
    """
    from solardesk_onnx.settings import OnnxSettings

    settings = OnnxSettings.model_validate(params)
    if valid is not None and not valid.any():
        return []
    return model_for(settings).detect_tile(
        rgb,
        valid,
        gsd,
        floor=settings.floor,
        mask_threshold=settings.mask_threshold,
        resample_tolerance=settings.resample_tolerance,
    )

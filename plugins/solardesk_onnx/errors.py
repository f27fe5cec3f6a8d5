"""What can be wrong with an ONNX model, each naming the file and what to do about it.

All are :class:`~solardesk.errors.ModelError` (a :class:`~solardesk.errors.SolarDeskError` and a
``ValueError``), so the command line prints them as one clear message, never a traceback.
"""

from __future__ import annotations

from solardesk.errors import ModelError

__all__ = ["ModelFileError", "ModelInputError", "ModelMetadataError", "ModelRuntimeError"]


class ModelFileError(ModelError):
    """The model file is missing, unreadable, or not an ONNX model at all."""


class ModelMetadataError(ModelError):
    """The model carries no metadata SolarDesk can use (neither its own nor Deepness keys),
    or metadata that contradicts the graph."""


class ModelInputError(ModelError):
    """The model expects input SolarDesk cannot give it (channel count, layout)."""


class ModelRuntimeError(ModelError):
    """onnxruntime cannot load or run the model (an operator it lacks, a damaged graph)."""

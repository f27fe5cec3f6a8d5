"""Settings of the ONNX inference stage (a pydantic model: the GUI builds its form from it).

The cache key holds what changes the stored instances: the model's *content* hash (filled in
from the file when not given, so a changed model recomputes and a moved or renamed one does
not), the storage floor, the mask threshold and the resampling tolerance. The path, the
read-time score threshold and how the model is run (provider, threads, graph optimisation) are
left out of the key (``recompute: False``).

No onnxruntime here: validation reads the model's header only
(:func:`solardesk_onnx.metadata.inspect_model`), so a bad model is refused in the parent process,
with a :class:`~solardesk.errors.ModelError` naming the file, before any tile is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from solardesk.config import Settings
from solardesk.errors import ModelError

_READ_TIME = {"recompute": False}


class OnnxSettings(Settings):
    """Parameters of ONNX model inference on tiles."""

    model: Annotated[
        Path,
        Field(
            title="ONNX model",
            description="A model exported by `solardesk export-onnx` (or carrying Deepness "
            "metadata). Moving it recomputes nothing: its content hash is the key.",
            json_schema_extra=_READ_TIME,
        ),
    ]
    model_sha256: Annotated[
        str | None,
        Field(
            title="Model content hash",
            description="SHA-256 of the model file; filled in from the file when empty.",
            pattern=r"^[0-9a-f]{64}$",
        ),
    ] = None
    threshold: Annotated[
        float | None,
        Field(
            ge=0,
            le=1,
            title="Score threshold",
            description="Detections at or above this score become panels (read-time: changing "
            "it recomputes nothing). Default: the threshold stored in the model.",
            json_schema_extra=_READ_TIME,
        ),
    ] = None
    floor: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Storage floor",
            description="Detections below this score are not stored at all (the model also has "
            "a floor of its own, fixed at export).",
        ),
    ] = 0.05
    mask_threshold: Annotated[
        float | None,
        Field(
            gt=0,
            lt=1,
            title="Mask threshold",
            description="Mask probability above which a pixel belongs to a detection. "
            "Default: the model's (0.5).",
        ),
    ] = None
    resample_tolerance: Annotated[
        float,
        Field(
            ge=0,
            le=10,
            title="Resampling tolerance",
            description="Tiles are resampled to the model's ground resolution when theirs "
            "differs by more than this share (0.2 = 20 %).",
        ),
    ] = 0.2
    providers: Annotated[
        Literal["auto", "cpu", "cuda"],
        Field(
            title="Execution provider",
            description="'auto': CUDA when onnxruntime-gpu is installed and a GPU is present, "
            "else CPU. The CPU provider is always the fallback.",
            json_schema_extra=_READ_TIME,
        ),
    ] = "auto"
    threads: Annotated[
        int,
        Field(
            ge=0,
            le=256,
            title="Threads",
            description="onnxruntime threads per process (0: one per worker process when "
            "several run, else onnxruntime's choice, one per physical core).",
            json_schema_extra=_READ_TIME,
        ),
    ] = 0
    optimization: Annotated[
        Literal["disable", "basic", "extended", "all"],
        Field(
            title="Graph optimisation",
            description="onnxruntime graph optimisation level.",
            json_schema_extra=_READ_TIME,
        ),
    ] = "all"

    @model_validator(mode="before")
    @classmethod
    def _fill_from_model(cls, data: Any) -> Any:
        try:
            return complete(data)
        except ModelError as e:
            # pydantic reports it as a field error; OnnxSettings.model_validate raises it as is.
            raise ValueError(str(e)) from e

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> OnnxSettings:
        """Validate, raising a bad model file as its own :class:`ModelError` (not a
        :class:`~solardesk.errors.ConfigError` about a field), so the user reads what is wrong
        with the file and what to do."""
        return super().model_validate(complete(obj), *args, **kwargs)


def complete(data: Any) -> Any:
    """``data`` with the model's content hash, default score and mask thresholds filled in.

    Only a mapping naming a model without its hash is checked (header and hash); one with a
    hash is taken as checked (worker processes get it so), and the runtime verifies that hash
    against the bytes it loads.
    """
    if not isinstance(data, Mapping) or not data.get("model"):
        return data
    needs = [k for k in ("model_sha256", "threshold", "mask_threshold") if data.get(k) is None]
    if not needs:
        return data
    from solardesk_onnx.metadata import file_sha256, inspect_model

    path = Path(data["model"])
    spec = inspect_model(path)
    out = dict(data)
    if out.get("model_sha256") is None:
        out["model_sha256"] = file_sha256(path)
    if out.get("threshold") is None:
        out["threshold"] = spec.score_threshold
    if out.get("mask_threshold") is None:
        out["mask_threshold"] = spec.mask_threshold
    return out


def recommended_tiling(settings: OnnxSettings, gsd: float | None = None) -> tuple[int, int] | None:
    """The tile size and overlap recorded in the model's metadata (``None``: none recorded),
    in the pixels of a raster of ground resolution ``gsd``: scaled by the model's resolution
    over the raster's when they differ by more than 20 % (:func:`metadata.suggested_tiling`),
    so that each tile, resampled to the model's resolution, is one input of the model.

    ``solardesk detect --model M`` tiles each raster this way unless ``--tile``/``--overlap``
    say otherwise (before, a 0.075 m raster under a 0.15 m model was cut into tiles of the
    model's 512 px, each shrunk to 256 px and padded: four times the model runs). Reads the
    model's header only.
    """
    from solardesk_onnx.metadata import inspect_model, scaled_tiling

    spec = inspect_model(settings.model)  # (its header read once)
    if not spec.tile_size:
        return None
    if gsd:
        found = scaled_tiling(spec, gsd)
        if found is not None:
            tile, overlap = found
            return tile, max(0, min(overlap, tile // 2))
    # (another tool's model may record any overlap: at most half a tile, else the tiles
    # would step by a pixel or two)
    return int(spec.tile_size), int(min(max(spec.overlap, 0), spec.tile_size // 2))

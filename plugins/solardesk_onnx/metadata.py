"""What an ONNX model says about itself, read without onnx or onnxruntime.

A SolarDesk model carries its facts in the ONNX ``metadata_props`` (string key → string value,
every value JSON-encoded, as Deepness and GeoDeep expect):

* SolarDesk's own keys, prefixed ``solardesk.``: the format and its version, the SolarDesk
  version, classes, input channels and their normalisation (applied *inside* the graph), tile
  size and overlap, training ground resolution, score and mask thresholds, outputs.
* The keys the Deepness QGIS plugin and GeoDeep read: ``model_type``, ``class_names``,
  ``resolution`` (cm/px), ``tiles_size``, ``tiles_overlap`` (percent of the tile),
  ``standardization_mean``/``standardization_std`` (what a tool must apply to input already
  scaled to [0, 1]: zeros and ones, as the graph normalises itself), ``det_conf``,
  ``det_iou_thresh``, ``det_type``.

:func:`read_header` reads the metadata and the graph's input/output signatures straight from
the protobuf wire format through a memory map, seeking past the weights: under a millisecond
for a 170 MB model and no memory, so settings can be validated (and a file that is not ONNX
refused) in the parent process before any runtime is imported. :func:`inspect_model` turns a
header into a :class:`ModelSpec`, or a :class:`~solardesk_onnx.errors.ModelError` subclass.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solardesk_onnx.errors import ModelFileError, ModelInputError, ModelMetadataError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "OUTPUTS",
    "ModelHeader",
    "ModelSpec",
    "TensorSig",
    "file_sha256",
    "inspect_model",
    "metadata_props",
    "model_identity",
    "read_header",
    "scaled_tiling",
    "suggested_tiling",
]

FORMAT = "solardesk.maskrcnn.onnx"
FORMAT_VERSION = 1
#: Graph outputs, in this order (GeoDeep's "retinanet" layout reads the first three).
OUTPUTS = ("boxes", "scores", "labels", "mask_logits")
#: Keys of the Deepness / GeoDeep convention that a model may carry instead of ours.
DEEPNESS_KEYS = (
    "model_type",
    "class_names",
    "resolution",
    "tiles_size",
    "tiles_overlap",
    "standardization_mean",
    "standardization_std",
    "det_conf",
)
#: Channel counts SolarDesk can feed: RGB, or RGB plus the six spectral channels.
RGB = ("red", "green", "blue")
SUPPORTED_CHANNELS = (3, 9)
P = "solardesk."


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def metadata_props(
    *,
    classes: list[str],
    channels: list[str],
    image_mean: list[float],
    image_std: list[float],
    tile_size: int,
    overlap: int,
    gsd_m: float,
    score_threshold: float,
    min_score: float,
    mask_threshold: float,
    nms_threshold: float,
    detections_per_img: int,
    fixed_shape: bool,
    solardesk_version: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Every metadata key of a SolarDesk model, values JSON-encoded."""
    n = len(channels)
    objects = [c for c in classes if c != "background"]
    ours = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": solardesk_version,
        "classes": list(classes),
        "channels": list(channels),
        "in_channels": n,
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
        "input": "float32 (1, C, H, W): RGB / 255 and spectral channels, all in [0, 1]; "
        "normalised by image_mean/image_std inside the graph",
        "tile_size": int(tile_size),
        "tile_overlap": int(overlap),
        "gsd_m": float(gsd_m),
        "score_threshold": float(score_threshold),
        "min_score": float(min_score),
        "mask_threshold": float(mask_threshold),
        "nms_threshold": float(nms_threshold),
        "detections_per_img": int(detections_per_img),
        "fixed_shape": bool(fixed_shape),
        "size_divisible": 32,
        "outputs": list(OUTPUTS),
        "masks": "mask_logits: (N, 28, 28) logits of each detection's class in its box; "
        "paste sigmoid(logits) into the box like torchvision's paste_masks_in_image",
        **dict(extra or {}),
    }
    props = {P + k: json.dumps(v) for k, v in ours.items()}
    props.update(
        {
            "model_type": json.dumps("Detector"),
            # GeoDeep's "retinanet" layout: outputs[0] boxes xyxy, [1] scores, [2] labels.
            "det_type": json.dumps("retinanet"),
            # Detection tools number object classes from 0 (no background).
            "class_names": json.dumps({str(i): c for i, c in enumerate(objects)}),
            "resolution": json.dumps(round(float(gsd_m) * 100.0, 4)),
            "tiles_size": json.dumps(int(tile_size)),
            "tiles_overlap": json.dumps(round(100.0 * overlap / tile_size)),
            "standardization_mean": json.dumps([0.0] * n),
            "standardization_std": json.dumps([1.0] * n),
            "det_conf": json.dumps(float(score_threshold)),
            "det_iou_thresh": json.dumps(float(nms_threshold)),
        }
    )
    return props


# --------------------------------------------------------------------------------------------
# Reading the protobuf wire format (only what we need, seeking past everything else)
# --------------------------------------------------------------------------------------------
class _ProtoError(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint too long")


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)``; length-delimited values are ``(start, end)``."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + n), pos + n
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise _ProtoError(f"wire type {wire}")
        if pos > end:
            raise _ProtoError("field runs past its message")
        yield number, wire, value


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8")


@dataclass(frozen=True)
class TensorSig:
    """A graph input or output: name, ONNX element type and dims (int, a name, or None)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]


@dataclass(frozen=True)
class ModelHeader:
    """What :func:`read_header` finds: versions, producer, metadata, inputs and outputs."""

    ir_version: int
    opsets: dict[str, int]
    producer: str
    metadata: dict[str, str]
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]


def _value_info(buf, span) -> TensorSig:
    name, elem, dims = "", 0, []
    for num, wire, val in _fields(buf, *span):
        if num == 1 and wire == 2:
            name = _text(buf, val)
        elif num == 2 and wire == 2:  # TypeProto
            for n2, w2, v2 in _fields(buf, *val):
                if n2 == 1 and w2 == 2:  # tensor_type
                    for n3, w3, v3 in _fields(buf, *v2):
                        if n3 == 1 and w3 == 0:
                            elem = v3
                        elif n3 == 2 and w3 == 2:  # shape
                            for n4, w4, v4 in _fields(buf, *v3):
                                if n4 == 1 and w4 == 2:  # dim
                                    dim: int | str | None = None
                                    for n5, w5, v5 in _fields(buf, *v4):
                                        if n5 == 1 and w5 == 0:
                                            dim = v5
                                        elif n5 == 2 and w5 == 2:
                                            dim = _text(buf, v5)
                                    dims.append(dim)
    return TensorSig(name, elem, tuple(dims))


def _tensor_name(buf, span) -> str:
    for num, wire, val in _fields(buf, *span):
        if num == 8 and wire == 2:
            return _text(buf, val)
    return ""


def _parse_header(buf) -> ModelHeader:
    ir_version = None
    producer = ""
    opsets: dict[str, int] = {}
    metadata: dict[str, str] = {}
    graph = None
    for num, wire, val in _fields(buf, 0, len(buf)):
        if num == 1 and wire == 0:
            ir_version = val
        elif num == 2 and wire == 2:
            producer = _text(buf, val)
        elif num == 7 and wire == 2:
            graph = val
        elif num == 8 and wire == 2:
            domain, version = "", 0
            for n2, w2, v2 in _fields(buf, *val):
                if n2 == 1 and w2 == 2:
                    domain = _text(buf, v2)
                elif n2 == 2 and w2 == 0:
                    version = v2
            opsets[domain] = version
        elif num == 14 and wire == 2:
            key = value = ""
            for n2, w2, v2 in _fields(buf, *val):
                if n2 == 1 and w2 == 2:
                    key = _text(buf, v2)
                elif n2 == 2 and w2 == 2:
                    value = _text(buf, v2)
            metadata[key] = value
    if ir_version is None or graph is None or not opsets:
        raise _ProtoError("no ir_version, graph or opset_import")
    inputs, outputs, initializers = [], [], set()
    for num, wire, val in _fields(buf, *graph):
        if num == 11 and wire == 2:
            inputs.append(_value_info(buf, val))
        elif num == 12 and wire == 2:
            outputs.append(_value_info(buf, val))
        elif num == 5 and wire == 2:
            initializers.add(_tensor_name(buf, val))
    # Before IR 4 initializers were listed as inputs too; they are not what a caller feeds.
    real_inputs = tuple(i for i in inputs if i.name not in initializers)
    return ModelHeader(ir_version, opsets, producer, metadata, real_inputs, tuple(outputs))


def read_header(path: str | os.PathLike) -> ModelHeader:
    """The header of the ONNX model at ``path``.

    Raises:
        ModelFileError: the file is missing, empty, unreadable, or not an ONNX model.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a model file" if p.is_dir() else "no such model file"
        raise ModelFileError(
            f"{p}: {what}. Name an .onnx file exported with `solardesk export-onnx CHECKPOINT`."
        )
    try:
        with open(p, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ModelFileError(
                    f"{p}: the file is empty (0 bytes); it was not fully written or copied. "
                    "Export or copy it again."
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_header(buf)
    except (_ProtoError, UnicodeDecodeError) as e:
        hint = ""
        if p.suffix.lower() in (".pt", ".pth", ".ckpt"):
            hint = " It looks like a torch checkpoint: convert it with `solardesk export-onnx`."
        raise ModelFileError(
            f"{p}: is not an ONNX model ({e}); it may be another kind of file or truncated.{hint} "
            "Export a model with `solardesk export-onnx CHECKPOINT --out model.onnx`."
        ) from e
    except OSError as e:
        raise ModelFileError(f"{p}: cannot be read ({e}). Check its permissions.") from e


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------
_hash_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes, remembered per (path, size, mtime) for this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    digest = _hash_cache.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _hash_cache[key] = h.hexdigest()
    return digest


# --------------------------------------------------------------------------------------------
# The model as SolarDesk uses it
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Everything the inference stage needs to know about a model.

    ``source`` says where the facts came from: ``"solardesk"`` (our keys) or ``"deepness"``
    (a model with only Deepness/GeoDeep keys, fed RGB). ``input_hw`` is the fixed input size, or
    None for dynamic height and width. The input is ``(x - standardization_mean) /
    standardization_std`` of channels ``x`` in [0, 1]; padding uses ``pad_value`` (in that input
    space), which the graph's own normalisation maps to 0, as torchvision pads.
    """

    path: str
    source: str
    input_name: str
    input_hw: tuple[int, int] | None
    channels: tuple[str, ...]
    classes: tuple[str, ...]
    tile_size: int | None
    overlap: int
    gsd_m: float | None
    score_threshold: float
    min_score: float
    mask_threshold: float
    standardization_mean: tuple[float, ...]
    standardization_std: tuple[float, ...]
    pad_value: tuple[float, ...]
    version: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def spectral(self) -> bool:
        """Whether the six spectral channels follow RGB in the input."""
        return self.in_channels == 9


def _json(meta: Mapping[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelMetadataError(
            f"{path}: metadata key '{key}' holds {meta[key][:60]!r}, which is not JSON. "
            "Re-export the model with `solardesk export-onnx`."
        ) from e


def _number(meta: Mapping[str, str], key: str, path: Path, kind=float) -> Any:
    value = _json(meta, key, path)
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ModelMetadataError(
            f"{path}: metadata key '{key}' = {value!r} is not a number. Re-export the model."
        ) from e


def _check_outputs(header: ModelHeader, path: Path) -> None:
    ranks = tuple(len(o.dims) for o in header.outputs)
    if len(header.outputs) != 4 or ranks[:3] != (2, 1, 1) or ranks[3] not in (3, 4):
        got = ", ".join(f"{o.name} (rank {len(o.dims)})" for o in header.outputs) or "none"
        raise ModelMetadataError(
            f"{path}: its outputs ({got}) are not a Mask R-CNN's boxes, scores, labels and mask "
            "logits, so SolarDesk cannot decode them. Run models exported with "
            "`solardesk export-onnx` (YOLO and semantic-segmentation models are for Deepness)."
        )


def inspect_model(path: str | os.PathLike, header: ModelHeader | None = None) -> ModelSpec:
    """Check that SolarDesk can run the model at ``path`` and describe it.

    Raises:
        ModelFileError: not a readable ONNX file.
        ModelMetadataError: no usable metadata, or outputs SolarDesk cannot decode.
        ModelInputError: the input is not one (1, C, H, W) tensor with C = 3 or 9 channels.
    """
    p = Path(path)
    h = header or read_header(p)
    meta = h.metadata
    if len(h.inputs) != 1:
        raise ModelInputError(
            f"{p}: has {len(h.inputs)} inputs ({', '.join(i.name for i in h.inputs)}); SolarDesk "
            "feeds one image tensor. Export the model with `solardesk export-onnx`."
        )
    sig = h.inputs[0]
    if len(sig.dims) != 4 or not isinstance(sig.dims[1], int):
        raise ModelInputError(
            f"{p}: its input '{sig.name}' has shape {list(sig.dims)}; SolarDesk feeds one image "
            "as (1, C, H, W) with a fixed channel count C. Export it with batch 1 "
            "(`solardesk export-onnx`)."
        )
    c = int(sig.dims[1])
    hw = sig.dims[2:]
    input_hw = (int(hw[0]), int(hw[1])) if all(isinstance(d, int) and d > 0 for d in hw) else None

    if P + "format" in meta:
        fmt = _json(meta, P + "format", p)
        version = _json(meta, P + "format_version", p) if P + "format_version" in meta else None
        if fmt != FORMAT or version != FORMAT_VERSION:
            raise ModelMetadataError(
                f"{p}: is a SolarDesk model of format {fmt!r} version {version!r}, which this "
                f"SolarDesk ({FORMAT} version {FORMAT_VERSION}) does not read. Re-export it "
                "with this version's `solardesk export-onnx`."
            )
        required = ("channels", "classes", "tile_size", "gsd_m", "score_threshold")
        missing = [k for k in required if P + k not in meta]
        if missing:
            raise ModelMetadataError(
                f"{p}: its SolarDesk metadata lacks {', '.join(P + k for k in missing)}; the "
                "file was edited or damaged. Re-export it with `solardesk export-onnx`."
            )
        channels = tuple(str(x) for x in _json(meta, P + "channels", p))
        if len(channels) != c:
            raise ModelInputError(
                f"{p}: its metadata names {len(channels)} input channels ({', '.join(channels)}) "
                f"but its input takes {c}. The metadata does not belong to this graph; "
                "re-export the model with `solardesk export-onnx`."
            )
        _check_outputs(h, p)
        gsd = _number(meta, P + "gsd_m", p)
        spec = ModelSpec(
            path=str(p),
            source="solardesk",
            input_name=sig.name,
            input_hw=input_hw,
            channels=channels,
            classes=tuple(str(x) for x in _json(meta, P + "classes", p)),
            tile_size=_number(meta, P + "tile_size", p, int),
            overlap=_number(meta, P + "tile_overlap", p, int) if P + "tile_overlap" in meta else 0,
            gsd_m=gsd if gsd > 0 else None,
            score_threshold=_number(meta, P + "score_threshold", p),
            min_score=_number(meta, P + "min_score", p) if P + "min_score" in meta else 0.0,
            mask_threshold=(
                _number(meta, P + "mask_threshold", p) if P + "mask_threshold" in meta else 0.5
            ),
            standardization_mean=(0.0,) * c,
            standardization_std=(1.0,) * c,
            pad_value=_pad_value(meta, p, c),
            version=_json(meta, P + "version", p) if P + "version" in meta else None,
            metadata=dict(meta),
        )
    elif any(k in meta for k in DEEPNESS_KEYS):
        _check_outputs(h, p)
        if c != 3:
            raise ModelInputError(
                f"{p}: takes {c} input channels, and without SolarDesk metadata SolarDesk can only "
                "feed RGB (3 channels). Export the model with `solardesk export-onnx` so its "
                "metadata names its channels."
            )
        spec = _deepness_spec(p, h, sig.name, input_hw, meta)
    else:
        raise ModelMetadataError(
            f"{p}: carries no metadata, so SolarDesk cannot tell its channels, normalisation, "
            "tile size or ground resolution. Export it with `solardesk export-onnx CHECKPOINT`, "
            "or add the Deepness keys (model_type, class_names, resolution in cm/px, tiles_size, "
            "standardization_mean, standardization_std) to its metadata_props."
        )
    if spec.source == "solardesk":
        _check_channel_names(spec, p)
    if spec.in_channels not in SUPPORTED_CHANNELS:
        raise ModelInputError(
            f"{p}: takes {spec.in_channels} input channels ({', '.join(spec.channels)}); SolarDesk "
            "feeds 3 (RGB) or 9 (RGB and the six spectral channels). Train and export a model "
            "with channels 'rgb' or 'rgb+spectral'."
        )
    return spec


def _check_channel_names(spec: ModelSpec, p: Path) -> None:
    """SolarDesk computes RGB and the six spectral channels, in this order, and nothing else."""
    if spec.in_channels not in SUPPORTED_CHANNELS:
        return  # reported below with the channel count
    expected = RGB
    if spec.in_channels == 9:
        from solardesk_spectral.channels import CHANNEL_NAMES

        expected = RGB + tuple(CHANNEL_NAMES)
    if spec.channels != expected:
        raise ModelInputError(
            f"{p}: expects the channels {', '.join(spec.channels)}, but SolarDesk feeds "
            f"{', '.join(expected)}. Export a model trained on SolarDesk's channels "
            "(model.channels 'rgb' or 'rgb+spectral')."
        )


def _pad_value(meta: Mapping[str, str], p: Path, c: int) -> tuple[float, ...]:
    """Input value that the graph's normalisation maps to 0: torchvision pads with it."""
    if P + "image_mean" not in meta:
        return (0.0,) * c
    mean = _json(meta, P + "image_mean", p)
    if not isinstance(mean, list) or len(mean) != c:
        raise ModelMetadataError(
            f"{p}: metadata image_mean {mean!r} does not give one value per input channel ({c}). "
            "Re-export the model with `solardesk export-onnx`."
        )
    return tuple(float(v) for v in mean)


def _deepness_spec(p: Path, h: ModelHeader, name: str, input_hw, meta) -> ModelSpec:
    """A model carrying only the Deepness/GeoDeep keys (RGB input scaled to [0, 1])."""
    tile = (
        _number(meta, "tiles_size", p, int)
        if "tiles_size" in meta
        else (input_hw[1] if input_hw else None)
    )
    overlap = 0
    if "tiles_overlap" in meta and tile:
        overlap = round(tile * _number(meta, "tiles_overlap", p) / 100.0)
    mean = tuple(_json(meta, "standardization_mean", p)) if "standardization_mean" in meta else ()
    std = tuple(_json(meta, "standardization_std", p)) if "standardization_std" in meta else ()
    mean = tuple(float(v) for v in mean) or (0.0,) * 3
    std = tuple(float(v) for v in std) or (1.0,) * 3
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        raise ModelMetadataError(
            f"{p}: standardization_mean {list(mean)} / standardization_std {list(std)} do not "
            "describe 3 channels with positive deviations. Fix the model's metadata."
        )
    classes: tuple[str, ...] = ("background", "object")
    if "class_names" in meta:
        names = _json(meta, "class_names", p)
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=int)]
        classes = ("background", *(str(n) for n in names))
    return ModelSpec(
        path=str(p),
        source="deepness",
        input_name=name,
        input_hw=input_hw,
        channels=RGB,
        classes=classes,
        tile_size=tile,
        overlap=overlap,
        gsd_m=_number(meta, "resolution", p) / 100.0 if "resolution" in meta else None,
        score_threshold=_number(meta, "det_conf", p) if "det_conf" in meta else 0.5,
        min_score=0.0,
        mask_threshold=0.5,
        standardization_mean=mean,
        standardization_std=std,
        pad_value=(0.0,) * 3,
        metadata=dict(meta),
    )


def model_identity(path: str | os.PathLike) -> tuple[str, str]:
    """``(model name, model version)`` for the attributes of detected polygons: the file's
    stem, and its content hash (with the training epoch when the metadata records it)."""
    p = Path(path)
    version = "sha256:" + file_sha256(p)[:12]
    try:
        meta = read_header(p).metadata
        epoch = json.loads(meta.get(P + "epoch", "null"))
    except (ModelFileError, json.JSONDecodeError):
        epoch = None
    if epoch is not None:
        version += f" epoch {epoch}"
    return p.stem, version


def suggested_tiling(
    path: str | os.PathLike, raster_gsd: float | None = None, tolerance: float = 0.2
) -> tuple[int, int] | None:
    """``(tile size, overlap)`` in raster pixels that give the model its own input size.

    The model's tile size and overlap, scaled by ``model gsd / raster gsd`` when the two differ
    by more than ``tolerance`` (the stage then resamples each tile to exactly the model's size,
    so no tile is cut into windows). None when the model does not say its tile size.
    """
    return scaled_tiling(inspect_model(path), raster_gsd, tolerance)


def scaled_tiling(
    spec: ModelSpec, raster_gsd: float | None = None, tolerance: float = 0.2
) -> tuple[int, int] | None:
    """:func:`suggested_tiling` of a model already inspected."""
    if not spec.tile_size:
        return None
    scale = 1.0
    if raster_gsd and spec.gsd_m and abs(raster_gsd / spec.gsd_m - 1.0) > tolerance:
        scale = spec.gsd_m / raster_gsd
    tile = max(32, round(spec.tile_size * scale))
    overlap = min(round(spec.overlap * scale), tile // 2)
    return tile, overlap

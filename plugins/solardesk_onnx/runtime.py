"""Run a SolarDesk ONNX model on tiles with onnxruntime, and paste its masks with OpenCV.

One :class:`OnnxModel` per model and process (:func:`get_model` caches it): the session is
created once, from the file's bytes, after checking them against the content hash the cache
key was made with. Execution providers: CUDA only when onnxruntime offers it *and* a GPU is
really present (onnxruntime-gpu lists CUDA on machines without one, and then logs an error at
every session), the CPU provider always last; :attr:`OnnxModel.provider` is what the session
actually uses, checked with ``session.get_providers()`` after creation.

A tile goes through :meth:`OnnxModel.detect_tile`:

1. resampled to the model's ground resolution when the raster's differs by more than the
   tolerance (20 %);
2. for a spectral-fusion model, the six spectral channels computed on the resampled tile by
   :func:`solardesk_spectral.channels.compute_channels`, as in training;
3. cut into windows of the model's input size when larger (cores partition the tile; a
   detection is kept by the window whose core holds its box centre, and the pieces of one
   object that window borders cut are joined: :func:`_join_window_pieces`), padded when
   smaller;
4. run; each detection's 28 × 28 mask is pasted into its box at the tile's own resolution,
   exactly as torchvision's ``paste_masks_in_image`` does (sigmoid, one pixel of zero padding,
   the box expanded to match, bilinear resize, threshold).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import logging
import multiprocessing
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from solardesk.errors import PluginError, SolarDeskWarning
from solardesk_onnx.errors import ModelFileError, ModelRuntimeError
from solardesk_onnx.metadata import ModelSpec, inspect_model, read_header

__all__ = [
    "Detections",
    "OnnxModel",
    "ProviderFallbackWarning",
    "get_model",
    "gpu_present",
    "paste_masks",
]

_log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class ProviderFallbackWarning(SolarDeskWarning):
    """CUDA was asked for (or expected) but the session runs on the CPU."""


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise PluginError(
            f"ONNX inference needs onnxruntime ({e}). Install it with: pip install 'solardesk[ml]' "
            "(or onnxruntime-gpu instead, never both)."
        ) from e
    return ort


def gpu_present() -> bool:
    """Whether the CUDA driver sees at least one GPU (asked through the driver library, so
    without torch and without onnxruntime's provider, which logs errors where there is none)."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return False
            count = ctypes.c_int(0)
            return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
        except AttributeError:
            return False
    return False


_preloaded: str | None = None


def preload_cuda_libraries(ort: Any) -> str:
    """Load CUDA and cuDNN before the first CUDA session; returns what onnxruntime reported.

    onnxruntime-gpu's CUDA provider links CUDA's libraries by name with no search path of its
    own, so where CUDA comes as pip packages (``nvidia-*``, as torch installs it) the provider
    cannot start unless they are loaded first: ``onnxruntime.preload_dlls()`` does that from
    the environment's site-packages (or torch's), then the system's paths. SolarDesk's
    inference imports no torch, so it calls it once, before the first session that asks for
    CUDA. onnxruntime prints its failures; they are kept (for the fallback warning) instead of
    reaching the user's terminal unasked. Builds without the function (CPU builds, onnxruntime
    older than 1.21) are left alone.
    """
    global _preloaded
    if _preloaded is None:
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            _preloaded = ""
        else:
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    preload()
            except Exception as e:  # a failed preload only means CUDA may not start
                out.write(f"preload_dlls failed: {e}")
            _preloaded = out.getvalue().strip()
            if _preloaded:
                _log.info("onnxruntime.preload_dlls(): %s", _preloaded)
    return _preloaded


def choose_providers(preference: str, available: Sequence[str]) -> list[str]:
    """Providers to ask for: CUDA first where wanted and possible, the CPU always last."""
    want_cuda = preference == "cuda" or (preference == "auto" and CUDA in available)
    if want_cuda and CUDA in available and gpu_present():
        return [CUDA, CPU]
    return [CPU]


def default_threads() -> int:
    """1 in a worker process of a pool (the pool is the parallelism), else 0 (ORT's choice)."""
    return 1 if multiprocessing.parent_process() is not None else 0


@dataclass(frozen=True)
class Detections:
    """Raw outputs of one run, in input pixels: boxes (N, 4), scores, labels, mask logits."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask_logits: np.ndarray


class OnnxModel:
    """An onnxruntime session on one model, with what SolarDesk knows about the model."""

    def __init__(
        self,
        path: str | Path,
        *,
        sha256: str | None = None,
        providers: str = "auto",
        threads: int = 0,
        optimization: str = "all",
        spinning: bool = True,
    ) -> None:
        import hashlib

        ort = _import_ort()
        self.path = Path(path)
        header = read_header(self.path)
        self.spec: ModelSpec = inspect_model(self.path, header)
        data = self.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ModelFileError(
                f"{self.path}: the file changed since this run started (its content hash is "
                f"{digest[:12]}…, not {sha256[:12]}…). Rerun the command to use the new model."
            )
        self.sha256 = digest
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
        so.intra_op_num_threads = threads if threads > 0 else default_threads()
        so.log_severity_level = 3  # the exporter's unused initializers are not the user's concern
        if not spinning:  # idle threads sleep instead of spinning (a busy or shared CPU)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        asked = choose_providers(providers, ort.get_available_providers())
        if providers == "cuda" and CUDA not in asked:
            warnings.warn(
                f"{self.path}: CUDA was asked for but is not available (onnxruntime offers "
                f"{', '.join(ort.get_available_providers())}; GPU present: {gpu_present()}). "
                "Running on the CPU; install onnxruntime-gpu (instead of onnxruntime) on a "
                "machine with an NVIDIA GPU to use it.",
                ProviderFallbackWarning,
                stacklevel=2,
            )
        preload_report = preload_cuda_libraries(ort) if CUDA in asked else ""
        try:
            self.session = ort.InferenceSession(data, so, providers=asked)
        except Exception as e:
            raise ModelRuntimeError(
                f"{self.path}: onnxruntime {ort.__version__} cannot load it ({_short(e)}). "
                "Re-export it with `solardesk export-onnx`, or update onnxruntime."
            ) from e
        used = self.session.get_providers()
        self.provider = used[0]
        if CUDA in asked and CUDA not in used:
            warnings.warn(
                f"{self.path}: the CUDA provider could not start; running on the CPU."
                + (f" onnxruntime said: {preload_report}" if preload_report else "")
                + " CUDA 13 and cuDNN 9 must be installed where onnxruntime-gpu can load them "
                "(e.g. the nvidia-* pip packages that torch for CUDA 13 brings).",
                ProviderFallbackWarning,
                stacklevel=2,
            )
        self.threads = so.intra_op_num_threads
        _log.info("%s: onnxruntime on %s", self.path, self.provider)
        inp = self.session.get_inputs()[0]
        self._input = inp.name

    # ----------------------------------------------------------------------------------------
    def run(self, image: np.ndarray) -> Detections:
        """Run on one ``(1, C, H, W)`` float32 input (already standardised and padded)."""
        try:
            boxes, scores, labels, logits = self.session.run(None, {self._input: image})
        except Exception as e:
            raise ModelRuntimeError(
                f"{self.path}: onnxruntime failed on an input of shape {list(image.shape)} "
                f"({_short(e)})."
            ) from e
        if logits.ndim == 4:  # (N, 1, 28, 28) from other exporters
            logits = logits[:, 0]
        return Detections(
            boxes.reshape(-1, 4).astype(np.float32, copy=False),
            scores.reshape(-1).astype(np.float32, copy=False),
            labels.reshape(-1),
            logits.astype(np.float32, copy=False),
        )

    def input_size(self, h: int, w: int) -> tuple[int, int] | None:
        """The window size the model runs on: its fixed size, or its tile size (None: any)."""
        if self.spec.input_hw is not None:
            return self.spec.input_hw
        if self.spec.tile_size:
            return (self.spec.tile_size, self.spec.tile_size)
        return None

    def prepare(self, rgb: np.ndarray, valid: np.ndarray | None, gsd: float | None) -> np.ndarray:
        """The model's input channels of a tile, ``(C, H, W)`` float32, standardised."""
        spec = self.spec
        x = np.empty((spec.in_channels, *rgb.shape[:2]), np.float32)
        np.multiply(np.moveaxis(rgb, -1, 0), np.float32(1 / 255), out=x[:3], casting="unsafe")
        if spec.spectral:
            from solardesk_spectral.channels import compute_channels

            if gsd is None:
                raise ModelRuntimeError(
                    f"{self.path}: the spectral channels need the raster's ground resolution; "
                    "pass --gsd for rasters without a CRS."
                )
            x[3:] = compute_channels(rgb, gsd, valid)
        mean = np.asarray(spec.standardization_mean, np.float32)[:, None, None]
        std = np.asarray(spec.standardization_std, np.float32)[:, None, None]
        if mean.any() or (std != 1).any():
            x -= mean
            x /= std
        return x

    def detect_tile(
        self,
        rgb: np.ndarray,
        valid: np.ndarray | None,
        gsd: float | None,
        *,
        floor: float = 0.05,
        mask_threshold: float | None = None,
        resample_tolerance: float = 0.2,
    ) -> list:
        """The detections on one ``(H, W, 3)`` uint8 tile as cache :class:`Instance` objects."""
        from solardesk.core.cache import Instance

        spec = self.spec
        h, w = rgb.shape[:2]
        mthr = spec.mask_threshold if mask_threshold is None else mask_threshold
        factor = resample_factor(gsd, spec.gsd_m, resample_tolerance)
        if factor != 1.0:
            rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
            interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            rgb_in = cv2.resize(rgb, (rw, rh), interpolation=interp)
            valid_in = (
                None
                if valid is None
                else cv2.resize(valid.view(np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST) > 0
            )
            gsd_in = None if gsd is None else gsd * w / rw
        else:
            rh, rw, rgb_in, valid_in, gsd_in = h, w, rgb, valid, gsd
        x = self.prepare(rgb_in, valid_in, gsd_in)
        win = self.input_size(rh, rw)
        boxes, scores, logits, origin, cut = [], [], [], [], []
        windows = _windows(rh, rw, win, spec.overlap)
        sx, sy = w / rw, h / rh  # model pixels → tile pixels
        rects = [  # each window in tile pixels, (x0, y0, x1, y1)
            (round(x0 * sx), round(y0 * sy), round((x0 + ww) * sx), round((y0 + wh) * sy))
            for (x0, y0, ww, wh), _ in windows
        ]
        for k, ((x0, y0, ww, wh), core) in enumerate(windows):
            image = _pad(x[:, y0 : y0 + wh, x0 : x0 + ww], win, spec.pad_value)
            d = self.run(image[None])
            keep = d.scores >= floor
            if core is not None and keep.any():
                cx = (d.boxes[:, 0] + d.boxes[:, 2]) / 2
                cy = (d.boxes[:, 1] + d.boxes[:, 3]) / 2
                c0, r0, c1, r1 = core
                keep &= (cx >= c0) & (cx < c1) & (cy >= r0) & (cy < r1)
            if keep.any():
                b = d.boxes[keep]
                cut.append(_cut_by_window(b, x0, y0, ww, wh, rw, rh))
                boxes.append(b + np.array([x0, y0, x0, y0], np.float32))
                scores.append(d.scores[keep])
                logits.append(d.mask_logits[keep])
                origin.append(np.full(int(keep.sum()), k))
        if not boxes:
            return []
        b = np.concatenate(boxes)
        if factor != 1.0:
            b = b * np.array([w / rw, h / rh, w / rw, h / rh], np.float32)
        s = np.concatenate(scores)
        pieces = []
        for (bx0, by0, bx1, by1), crop, score, k, at_border in zip(
            *paste_masks(np.concatenate(logits), b, (h, w), mthr, with_boxes=True),
            s,
            np.concatenate(origin),
            np.concatenate(cut),
            strict=True,
        ):
            if crop is None:
                continue
            if valid is not None:
                crop &= valid[by0:by1, bx0:bx1]
            inst = _tight(crop, bx0, by0)
            if inst is None:
                continue
            pieces.append((*inst, float(score), int(k), bool(at_border)))
        return [
            Instance(
                bbox=bbox,
                mask=mask,
                confidence=float(np.clip(score, 0.0, 1.0)),
                provenance="model",
            )
            for bbox, mask, score in _join_window_pieces(pieces, rects)
        ]


def resample_factor(gsd: float | None, model_gsd: float | None, tolerance: float) -> float:
    """Scale to apply to a tile so its pixels match the model's (1.0 within the tolerance)."""
    if not gsd or not model_gsd:
        return 1.0
    ratio = gsd / model_gsd
    return ratio if abs(ratio - 1.0) > tolerance else 1.0


def _windows(h: int, w: int, size: tuple[int, int] | None, overlap: int):
    """Windows ``(x0, y0, width, height)`` covering an image and their cores (None: one window)."""
    if size is None or (h <= size[0] and w <= size[1]):
        return [((0, 0, w, h), None)]
    from solardesk.core.tiling import axis_starts

    sh, sw = size
    ov_y = min(overlap, sh // 2)
    ov_x = min(overlap, sw // 2)
    rows = axis_starts(h, sh, ov_y) if h > sh else [0]
    cols = axis_starts(w, sw, ov_x) if w > sw else [0]
    row_cores = _cores(rows, sh, h)
    col_cores = _cores(cols, sw, w)
    out = []
    for y0, (r0, r1) in zip(rows, row_cores, strict=True):
        for x0, (c0, c1) in zip(cols, col_cores, strict=True):
            out.append(
                (
                    (x0, y0, min(sw, w - x0), min(sh, h - y0)),
                    (c0 - x0, r0 - y0, c1 - x0, r1 - y0),
                )
            )
    return out


#: A detection whose box comes this close (model pixels) to a window edge inside the tile was
#: cut there: the rest of its object lies in the next window.
WINDOW_EDGE_PX = 2.0
#: Two cut pieces of neighbouring windows are one object when their masks agree this well
#: (IoU) where both windows see: the same object seen twice agrees almost fully there, two
#: neighbouring rows share only the pixel that a pasted mask adds around its box.
WINDOW_JOIN_IOU = 0.5


def _cut_by_window(b: np.ndarray, x0: int, y0: int, ww: int, wh: int, rw: int, rh: int):
    """Which boxes ``b`` (window pixels) reach an edge of their window that is not the tile's."""
    e = WINDOW_EDGE_PX
    return (
        ((x0 > 0) & (b[:, 0] <= e))
        | ((y0 > 0) & (b[:, 1] <= e))
        | ((x0 + ww < rw) & (b[:, 2] >= ww - e))
        | ((y0 + wh < rh) & (b[:, 3] >= wh - e))
    )


def _join_window_pieces(pieces: list, rects: Sequence[tuple[int, int, int, int]]) -> list:
    """``(bbox, mask, score)`` of the detections, with the pieces of one object that window
    borders cut joined.

    A tile larger than the model's input runs in windows (``rects``: each in tile pixels);
    each detection belongs to the window whose core holds its box centre. An object longer
    than the windows' overlap is then seen cut by two windows, each keeping the piece whose
    centre lies in its core: two overlapping instances of one panel (two polygons, its area
    counted twice). Pieces ``(bbox, mask, score, window, cut)`` of different windows, each
    reaching an inner edge of its window, whose masks agree where both windows see (IoU ≥
    :data:`WINDOW_JOIN_IOU`) are one object: the union of the masks, the higher score.
    """
    from solardesk.core.geometry import linked_groups

    def seen_by(piece, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The piece's mask over the rectangle (zeros where it has none)."""
        (px0, py0, px1, py1), pm = piece[0], piece[1]
        out = np.zeros((y1 - y0, x1 - x0), bool)
        ix0, iy0, ix1, iy1 = max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)
        if ix0 < ix1 and iy0 < iy1:
            out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = pm[
                iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0
            ]
        return out

    cut = [i for i in range(len(pieces)) if pieces[i][4]]
    links = []
    for ii, i in enumerate(cut):
        for j in cut[ii + 1 :]:
            ki, kj = pieces[i][3], pieces[j][3]
            if ki == kj:
                continue  # one window's detections are the model's own separate objects
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = pieces[i][0], pieces[j][0]
            if max(ax0, bx0) >= min(ax1, bx1) or max(ay0, by0) >= min(ay1, by1):
                continue
            wa, wb = rects[ki], rects[kj]  # where both windows see
            x0, y0 = max(wa[0], wb[0]), max(wa[1], wb[1])
            x1, y1 = min(wa[2], wb[2]), min(wa[3], wb[3])
            if x0 >= x1 or y0 >= y1:
                continue
            a, b = seen_by(pieces[i], x0, y0, x1, y1), seen_by(pieces[j], x0, y0, x1, y1)
            union = np.count_nonzero(a | b)
            if union and np.count_nonzero(a & b) >= WINDOW_JOIN_IOU * union:
                links.append((i, j))
    out = []
    for members in linked_groups(len(pieces), links):
        if len(members) == 1:
            bbox, mask, score = pieces[members[0]][:3]
            out.append((bbox, mask, score))
            continue
        x0 = min(pieces[i][0][0] for i in members)
        y0 = min(pieces[i][0][1] for i in members)
        x1 = max(pieces[i][0][2] for i in members)
        y1 = max(pieces[i][0][3] for i in members)
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        for i in members:
            (px0, py0, px1, py1), pm = pieces[i][0], pieces[i][1]
            mask[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] |= pm
        out.append(((x0, y0, x1, y1), mask, max(pieces[i][2] for i in members)))
    return out


def _cores(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    cuts = [0]
    for a, b in itertools.pairwise(starts):
        cuts.append((b + a + size) // 2)
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def _pad(x: np.ndarray, size: tuple[int, int] | None, value: Sequence[float]) -> np.ndarray:
    """Pad ``(C, h, w)`` at the bottom and right to ``size`` (or to multiples of 32)."""
    c, h, w = x.shape
    if size is None:
        th, tw = -(-h // 32) * 32, -(-w // 32) * 32
    else:
        th, tw = size
    if (th, tw) == (h, w):
        return np.ascontiguousarray(x)
    out = np.empty((c, th, tw), np.float32)
    out[:] = np.asarray(value, np.float32)[:, None, None]
    out[:, :h, :w] = x
    return out


def _tight(mask: np.ndarray, x0: int, y0: int):
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (x0 + c0, y0 + r0, x0 + c1, y0 + r1), mask[r0:r1, c0:c1].copy()


def paste_masks(
    mask_logits: np.ndarray,
    boxes: np.ndarray,
    shape: tuple[int, int],
    threshold: float = 0.5,
    *,
    with_boxes: bool = False,
):
    """Paste ``(N, M, M)`` mask logits into their boxes on an image of ``shape`` (H, W).

    The same arithmetic as torchvision's ``paste_masks_in_image`` (sigmoid; one pixel of zero
    padding and the box expanded by ``(M + 2) / M``; truncation to integer pixels; bilinear
    resize with half-pixel centres; clipping to the image), then ``>= threshold``. Returns one
    boolean crop per detection, of the clipped integer box, or None where the box lies outside
    the image; with ``with_boxes`` also the crops' ``(x0, y0, x1, y1)`` (x1, y1 exclusive).
    """
    im_h, im_w = shape
    n = len(mask_logits)
    crops: list[np.ndarray | None] = []
    where: list[tuple[int, int, int, int]] = []
    if n == 0:
        return (where, crops) if with_boxes else crops
    m = mask_logits.shape[-1]
    probs = np.zeros((n, m + 2, m + 2), np.float32)
    probs[:, 1:-1, 1:-1] = 1.0 / (1.0 + np.exp(-mask_logits.astype(np.float32)))
    scale = np.float32((m + 2) / m)
    b = boxes.astype(np.float32)
    w_half = (b[:, 2] - b[:, 0]) * np.float32(0.5) * scale
    h_half = (b[:, 3] - b[:, 1]) * np.float32(0.5) * scale
    x_c = (b[:, 2] + b[:, 0]) * np.float32(0.5)
    y_c = (b[:, 3] + b[:, 1]) * np.float32(0.5)
    # torch's .to(int64) truncates towards zero, as np.trunc does.
    ex = np.trunc(np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1))
    ex = ex.astype(np.int64)
    for i in range(n):
        x0, y0, x1, y1 = (int(v) for v in ex[i])
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        cx0, cx1 = max(x0, 0), min(x1 + 1, im_w)
        cy0, cy1 = max(y0, 0), min(y1 + 1, im_h)
        if cx0 >= cx1 or cy0 >= cy1:
            crops.append(None)
            where.append((0, 0, 0, 0))
            continue
        resized = cv2.resize(probs[i], (w, h), interpolation=cv2.INTER_LINEAR)
        crop = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] >= threshold
        crops.append(crop)
        where.append((cx0, cy0, cx1, cy1))
    return (where, crops) if with_boxes else crops


# --------------------------------------------------------------------------------------------
# One model per process
# --------------------------------------------------------------------------------------------
_models: dict[tuple, OnnxModel] = {}


def get_model(
    path: str | Path,
    sha256: str | None = None,
    *,
    providers: str = "auto",
    threads: int = 0,
    optimization: str = "all",
) -> OnnxModel:
    """The process's :class:`OnnxModel` for these arguments (created on first use)."""
    key = (str(Path(path).resolve()), sha256, providers, threads, optimization)
    model = _models.get(key)
    if model is None:
        if len(_models) >= 2:  # a session holds the weights: keep few
            _models.pop(next(iter(_models)))
        model = _models[key] = OnnxModel(
            path, sha256=sha256, providers=providers, threads=threads, optimization=optimization
        )
    return model


def clear_models() -> None:
    """Forget the cached sessions (tests; after a model file changed)."""
    _models.clear()


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def describe(model: OnnxModel) -> dict[str, Any]:
    """What ``solardesk onnx-info`` prints: the spec and the provider actually used."""
    s = model.spec
    return {
        "file": str(model.path),
        "sha256": model.sha256,
        "metadata": s.source,
        "solardesk_version": s.version,
        "input": f"{s.input_name} (1, {s.in_channels}, "
        + (f"{s.input_hw[0]}, {s.input_hw[1]})" if s.input_hw else "H, W) dynamic"),
        "channels": list(s.channels),
        "classes": list(s.classes),
        "tile_size": s.tile_size,
        "overlap": s.overlap,
        "gsd_m": s.gsd_m,
        "score_threshold": s.score_threshold,
        "min_score": s.min_score,
        "mask_threshold": s.mask_threshold,
        "provider": model.provider,
        "providers": model.session.get_providers(),
        "threads": model.threads or "onnxruntime's default (one per physical core)",
    }

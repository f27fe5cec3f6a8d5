"""The ``onnx`` pre-compute stage: settings and cache key, resampling, windows, spectral fusion,
execution providers, and models SolarDesk must refuse."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from solardesk.config import ConfigError, parse  # noqa: E402
from solardesk.core.cache import Instance  # noqa: E402
from solardesk.core.pipeline import stage_params  # noqa: E402
from solardesk.errors import ModelError  # noqa: E402
from solardesk_onnx import runtime  # noqa: E402
from solardesk_onnx.errors import ModelFileError, ModelInputError, ModelMetadataError  # noqa: E402
from solardesk_onnx.metadata import file_sha256  # noqa: E402
from solardesk_onnx.runtime import (  # noqa: E402
    CPU,
    CUDA,
    Detections,
    OnnxModel,
    ProviderFallbackWarning,
    choose_providers,
    get_model,
    resample_factor,
)
from solardesk_onnx.settings import OnnxSettings  # noqa: E402
from solardesk_onnx.stage import analyse_tile  # noqa: E402
from solardesk_onnx.testing import export_tiny  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, kwargs in {"rgb": {}, "spectral": {"in_channels": 9}}.items():
        export_tiny(root / f"{name}.onnx", 128, gsd_m=0.15, **kwargs)
        out[name] = root / f"{name}.onnx"
    # Another model: the same graph with one more metadata entry is other content.
    out["rgb_other"] = _with_metadata(
        out["rgb"], root / "rgb_other.onnx", lambda p: p | {"solardesk.note": '"retrained"'}
    )
    return out


def _tile(size: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    rgb[size // 4 : size // 2, size // 3 : size // 2] = 240
    return rgb


def _with_metadata(src: Path, dst: Path, change) -> Path:
    proto = onnx.load(src)
    props = {p.key: p.value for p in proto.metadata_props}
    props = change(props)
    del proto.metadata_props[:]
    for k, v in props.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, dst)
    return dst


def test_plugin_and_settings_import_no_runtime() -> None:
    """The app imports the plugin (and validates settings) without torch or onnxruntime."""
    import subprocess
    import sys

    code = (
        "import sys, solardesk_onnx, solardesk_onnx.settings, solardesk_onnx.cli\n"
        "print(','.join(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# Settings and the cache key
# --------------------------------------------------------------------------------------------
def test_settings_key_on_content_not_path(models, tmp_path: Path) -> None:
    s = OnnxSettings.model_validate({"model": str(models["rgb"])})
    assert s.model_sha256 == file_sha256(models["rgb"])
    assert s.threshold == pytest.approx(0.5)  # from the model's metadata
    assert s.mask_threshold == pytest.approx(0.5)
    _, keyed = stage_params(s)
    assert "model" not in keyed and "threshold" not in keyed and "threads" not in keyed
    assert keyed["model_sha256"] == s.model_sha256

    moved = tmp_path / "elsewhere" / "renamed.onnx"
    moved.parent.mkdir()
    shutil.copy(models["rgb"], moved)
    assert stage_params(OnnxSettings.model_validate({"model": str(moved)}))[1] == keyed
    other = stage_params(OnnxSettings.model_validate({"model": str(models["rgb_other"])}))[1]
    assert other["model_sha256"] != keyed["model_sha256"]
    # A read-time threshold changes nothing that is stored.
    assert (
        stage_params(OnnxSettings.model_validate({"model": str(moved), "threshold": 0.9}))[1]
        == keyed
    )
    # Worker processes receive the dumped settings: validating them reads nothing again.
    assert OnnxSettings.model_validate(s.model_dump(mode="json")) == s


def test_bad_models_are_model_errors_naming_the_file(models, tmp_path: Path) -> None:
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("these are not weights\n")
    bare = _with_metadata(models["rgb"], tmp_path / "bare.onnx", lambda p: {})
    lying = _with_metadata(
        models["rgb"],
        tmp_path / "lying.onnx",
        lambda p: p | {"solardesk.channels": json.dumps(["red", "green", "blue", "nir"])},
    )
    four = tmp_path / "four.onnx"
    export_tiny(four, 128, in_channels=4)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases = [  # (file, error, what is wrong, what to do)
        (tmp_path / "missing.onnx", ModelFileError, "no such model file", "export-onnx"),
        (empty, ModelFileError, "empty", "again"),
        (not_onnx, ModelFileError, "not an ONNX model", "export-onnx"),
        (bare, ModelMetadataError, "carries no metadata", "Deepness keys"),
        (lying, ModelInputError, "names 4 input channels", "re-export"),
        (four, ModelInputError, "feeds 3 .RGB. or 9", "channels 'rgb' or 'rgb\\+spectral'"),
    ]
    for path, error, wrong, remedy in cases:
        with pytest.raises(error, match=wrong) as info:
            parse(OnnxSettings, {"model": str(path)}, "onnx settings")
        assert str(path) in str(info.value) and isinstance(info.value, ModelError)
        assert info.match(remedy)
    # Through the plain constructor pydantic reports the same message as a field error.
    with pytest.raises(ValueError, match="carries no metadata"):
        OnnxSettings(model=bare)
    # Unknown fields are still configuration errors.
    with pytest.raises(ConfigError, match="unknown field"):
        parse(OnnxSettings, {"model": str(models["rgb"]), "modle": 1}, "onnx settings")


def test_deepness_keys_are_honoured(models, tmp_path: Path) -> None:
    deep = _with_metadata(
        models["rgb"],
        tmp_path / "deepness.onnx",
        lambda p: (
            {k: v for k, v in p.items() if not k.startswith("solardesk.")}
            | {"resolution": "30", "tiles_size": "128", "tiles_overlap": "10", "det_conf": "0.7"}
        ),
    )
    spec = OnnxModel(deep).spec
    assert spec.source == "deepness"
    assert spec.gsd_m == pytest.approx(0.30) and spec.tile_size == 128 and spec.overlap == 13
    assert spec.score_threshold == pytest.approx(0.7) and spec.classes == (
        "background",
        "solar_panel",
    )
    assert OnnxSettings.model_validate({"model": str(deep)}).threshold == pytest.approx(0.7)
    out = analyse_tile(
        _tile(), None, 0.30, OnnxSettings.model_validate({"model": str(deep)}).model_dump()
    )
    assert all(isinstance(i, Instance) and i.provenance == "model" for i in out)


def test_a_changed_model_file_is_noticed_by_the_worker(models, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    shutil.copy(models["rgb"], path)
    params = OnnxSettings.model_validate({"model": str(path)}).model_dump(mode="json")
    shutil.copy(models["rgb_other"], path)  # replaced while the run goes on
    runtime.clear_models()
    with pytest.raises(ModelFileError, match="changed since this run started"):
        analyse_tile(_tile(), None, 0.15, params)


# --------------------------------------------------------------------------------------------
# The stage on tiles
# --------------------------------------------------------------------------------------------
def test_stage_returns_model_instances(models) -> None:
    params = OnnxSettings.model_validate({"model": str(models["rgb"])}).model_dump(mode="json")
    tile = _tile()
    out = analyse_tile(tile, np.ones((128, 128), bool), 0.15, params)
    assert out, "the tiny model detects on a textured tile"
    for inst in out:
        assert inst.provenance == "model" and inst.scores is None
        assert 0.05 <= inst.confidence <= 1
        x0, y0, x1, y1 = inst.bbox
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and inst.mask.any()
    # The stage's masks are onnxruntime's detections pasted at the tile's size.
    model = get_model(models["rgb"], params["model_sha256"])
    d = model.run(model.prepare(tile, None, 0.15)[None])
    for inst in out:
        assert np.isclose(d.scores, inst.confidence, atol=1e-6).any()
    # No data, no work.
    assert analyse_tile(tile, np.zeros((128, 128), bool), 0.15, params) == []


def test_resampling_to_the_model_ground_resolution(models, monkeypatch) -> None:
    assert resample_factor(0.15, 0.15, 0.2) == 1.0
    assert resample_factor(0.17, 0.15, 0.2) == 1.0  # 13 % off: within the tolerance
    assert resample_factor(0.30, 0.15, 0.2) == pytest.approx(2.0)
    assert resample_factor(0.10, 0.15, 0.2) == pytest.approx(2 / 3)
    assert resample_factor(0.30, None, 0.2) == 1.0  # a model that does not say
    model = get_model(models["rgb"])
    seen = []
    real_run = model.run
    monkeypatch.setattr(model, "run", lambda x: seen.append(x.shape) or real_run(x))
    tile = _tile(96)
    out = model.detect_tile(tile, None, 0.30)  # 0.30 m tile, 0.15 m model: upsampled 2×
    assert seen and all(s[-2:] == (128, 128) for s in seen) and len(seen) == 4
    for inst in out:  # instances come back in the tile's own pixels
        assert inst.bbox[2] <= 96 and inst.bbox[3] <= 96
    seen.clear()
    model.detect_tile(_tile(128), None, 0.16)
    assert seen == [(1, 3, 128, 128)]


def test_what_detect_can_ask_of_a_model_tiling_and_identity(models, monkeypatch) -> None:
    from solardesk_onnx.metadata import model_identity, suggested_tiling

    name, version = model_identity(models["rgb"])
    assert (name, version) == ("rgb", "sha256:" + file_sha256(models["rgb"])[:12])

    assert suggested_tiling(models["rgb"]) == (128, 32)
    assert suggested_tiling(models["rgb"], 0.16) == (128, 32)  # within 20 %: no resampling
    assert suggested_tiling(models["rgb"], 0.30) == (64, 16)  # upsampled 2× to 128 px
    # what `detect --model` tiles each raster with (the stage's tiling hook)
    from solardesk_onnx.settings import OnnxSettings, recommended_tiling

    settings = OnnxSettings(model=models["rgb"])
    assert recommended_tiling(settings) == (128, 32)
    assert recommended_tiling(settings, 0.30) == (64, 16)
    assert recommended_tiling(settings, 0.075) == (256, 64)  # finer: one input, not four
    model = get_model(models["rgb"])
    seen = []
    real_run = model.run
    monkeypatch.setattr(model, "run", lambda x: seen.append(x.shape) or real_run(x))
    model.detect_tile(_tile(64), None, 0.30)
    assert seen == [(1, 3, 128, 128)]  # one run, no windows


def test_windows_report_a_detection_once(models, monkeypatch) -> None:
    """A tile larger than the model's input is run in overlapping windows; a detection seen by
    two windows is kept by the one whose core holds its centre."""
    cores = runtime._windows(300, 260, (128, 128), 32)
    covered = np.zeros((300, 260), int)
    for (x0, y0, w, h), (c0, r0, c1, r1) in cores:
        assert w == 128 and h == 128
        covered[y0 + r0 : y0 + r1, x0 + c0 : x0 + c1] += 1
    assert (covered == 1).all()  # cores partition the tile

    model = get_model(models["rgb"])  # 128 px tile size: 256 px tiles run in 4 windows
    logits = np.full((1, 28, 28), 5.0, np.float32)

    def fake_run(image):  # "detects" the bright block wherever it is in the window
        ys, xs = np.nonzero(image[0, 0] > 0.9)
        if len(xs) == 0:
            return Detections(
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32),
                np.zeros(0, np.int64),
                logits[:0],
            )
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return Detections(box, np.array([0.9], np.float32), np.array([1]), logits)

    monkeypatch.setattr(model, "run", fake_run)
    tile = np.zeros((256, 256, 3), np.uint8)
    tile[100:120, 110:130] = 255  # inside the overlap of all four windows
    out = model.detect_tile(tile, None, 0.15)
    assert len(out) == 1
    assert out[0].bbox == (110, 100, 130, 120) and out[0].mask.all()


@pytest.mark.parametrize(("height", "gap"), [(10, 3), (4, 1), (6, 1), (10, 1)])
def test_an_object_cut_by_window_borders_is_one_detection(
    models, monkeypatch, height: int, gap: int
) -> None:
    """A panel longer than the windows' overlap is seen cut by each window it crosses; each
    kept its piece (the one whose centre lies in its core): one panel came out as two or
    three overlapping instances. The pieces are joined; parallel rows stay apart, even thin
    ones a pixel apart (a pasted mask reaches a pixel beyond its box, into the next row)."""
    import cv2

    model = get_model(models["rgb"])  # 128 px model: a 256 px tile runs in windows
    assert len(runtime._windows(256, 256, (128, 128), model.spec.overlap)) > 1

    def fake_run(image):  # one detection per bright blob, its box filled
        bright = (image[0, 0] > 0.9).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]], np.float32).reshape(
            -1, 4
        )
        k = len(boxes)
        return Detections(boxes, np.full(k, 0.9, np.float32), np.ones(k, np.int64),
                          np.full((k, 28, 28), 5.0, np.float32))  # fmt: skip

    monkeypatch.setattr(model, "run", fake_run)
    tile = np.zeros((256, 256, 3), np.uint8)
    blocks = [  # rows across every window border of their window row, and a column
        (20, 60 + k * (height + gap), 236, 60 + k * (height + gap) + height) for k in range(3)
    ] + [(120, 150, 130, 230)]
    for x0, y0, x1, y1 in blocks:
        tile[y0:y1, x0:x1] = 255
    out = sorted(model.detect_tile(tile, None, 0.15), key=lambda i: (i.bbox[1], i.bbox[0]))
    assert len(out) == len(blocks)
    for inst, (x0, y0, x1, y1) in zip(out, blocks, strict=True):
        # (pasted as torchvision pastes: up to a pixel wider than the box)
        assert np.allclose(inst.bbox, (x0, y0, x1, y1), atol=1)
        bx0, by0 = inst.bbox[:2]
        assert inst.mask[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0].all()


def test_spectral_fusion_model_gets_the_six_channels(models, monkeypatch) -> None:
    import solardesk_spectral.channels as channels

    calls = []
    real = channels.compute_channels

    def spy(rgb, gsd, valid=None, params=None):
        calls.append((rgb.shape, gsd))
        return real(rgb, gsd, valid, params)

    monkeypatch.setattr(channels, "compute_channels", spy)
    model = get_model(models["spectral"])
    assert model.spec.spectral and model.spec.in_channels == 9
    tile = _tile(64)
    x = model.prepare(tile, None, 0.15)
    assert x.shape == (9, 64, 64)
    np.testing.assert_allclose(x[:3], np.moveaxis(tile, -1, 0) / 255, atol=1e-6)
    np.testing.assert_allclose(x[3:], real(tile, 0.15), atol=1e-6)
    calls.clear()
    out = model.detect_tile(_tile(64), None, 0.30)  # resampled to 128 px at 0.15 m first
    assert calls == [((128, 128, 3), pytest.approx(0.15))]
    assert all(i.provenance == "model" for i in out)


# --------------------------------------------------------------------------------------------
# Execution providers
# --------------------------------------------------------------------------------------------
def test_providers_cuda_only_with_a_gpu_cpu_always_last(models, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "gpu_present", lambda: False)
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CPU]  # onnxruntime-gpu on a CPU machine
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("auto", [CPU]) == [CPU]

    runtime.clear_models()
    model = get_model(models["rgb"])
    assert model.provider == CPU and model.session.get_providers()[-1] == CPU
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        with pytest.warns(ProviderFallbackWarning, match="CUDA was asked for"):
            OnnxModel(models["rgb"], providers="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" on a CPU machine is silent
        OnnxModel(models["rgb"], providers="auto")


class _FakeGpuOrt:
    """onnxruntime-gpu as seen on a GPU machine, around the real CPU build: it lists CUDA, its
    ``preload_dlls`` prints what it could not load, and its sessions report ``uses`` (what
    the CUDA provider managed) while really running on the CPU."""

    def __init__(self, real, uses: list[str], printout: str) -> None:
        self._real, self._uses, self._printout = real, uses, printout
        self.preloads = 0
        self.asked: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_available_providers(self) -> list[str]:
        return [CUDA, CPU]

    def preload_dlls(self) -> None:
        self.preloads += 1
        if self._printout:
            print(self._printout)

    def InferenceSession(self, data, so, providers):  # onnxruntime's name
        self.asked.append(list(providers))
        session = self._real.InferenceSession(data, so, providers=[CPU])
        uses = self._uses

        class _Session:
            def __getattr__(self, name):
                return getattr(session, name)

            def get_providers(self) -> list[str]:
                return uses

        return _Session()


@pytest.mark.parametrize("starts", [True, False])
def test_cuda_libraries_are_preloaded_once_before_a_cuda_session(
    models, monkeypatch, capsys, starts
) -> None:
    """onnxruntime-gpu finds CUDA's pip libraries only through ``preload_dlls`` (SolarDesk's
    inference imports no torch): called once, before the first CUDA session, never for a CPU
    one; what it prints reaches the fallback warning, not the terminal."""
    import onnxruntime

    printout = "" if starts else "Failed to load libcublasLt.so.13: cannot open shared object"
    fake = _FakeGpuOrt(onnxruntime, [CUDA, CPU] if starts else [CPU], printout)
    monkeypatch.setattr(runtime, "_import_ort", lambda: fake)
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)
    monkeypatch.setattr(runtime, "_preloaded", None)

    OnnxModel(models["rgb"], providers="cpu")
    assert fake.preloads == 0 and fake.asked == [[CPU]]
    if starts:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = OnnxModel(models["rgb"], providers="auto")
            OnnxModel(models["rgb"], providers="cuda")
        assert first.provider == CUDA
    else:
        with pytest.warns(ProviderFallbackWarning, match="libcublasLt.so.13") as caught:
            first = OnnxModel(models["rgb"], providers="auto")
        assert first.provider == CPU and "CUDA 13 and cuDNN 9" in str(caught[0].message)
        with pytest.warns(ProviderFallbackWarning, match="libcublasLt.so.13"):
            OnnxModel(models["rgb"], providers="cuda")
    assert fake.preloads == 1 and fake.asked[1:] == [[CUDA, CPU], [CUDA, CPU]]
    assert "libcublas" not in capsys.readouterr().out

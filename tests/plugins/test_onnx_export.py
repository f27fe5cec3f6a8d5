"""ONNX export: onnx.checker, metadata round trip, and parity of onnxruntime with torch.

The parity model is :func:`solardesk_onnx.testing.tiny_maskrcnn`: random weights with the box
classifier set so that scores depend on each RoI's features (distinct scores; an untrained
model ties them and the two runtimes then keep different top-k sets), and no biases before
it, so that an image of the normalisation mean — what the graph maps to 0 — has no detection.
torch runs torchvision's own eager path (``model([image])``, masks pasted by torchvision);
onnxruntime runs the exported graph and SolarDesk's OpenCV pasting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from solardesk_onnx.errors import ModelFileError  # noqa: E402
from solardesk_onnx.metadata import inspect_model, read_header  # noqa: E402
from solardesk_onnx.runtime import OnnxModel, paste_masks  # noqa: E402
from solardesk_onnx.testing import IMAGE_MEAN, export_tiny  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny-dynamic.onnx"
    model = export_tiny(path, 128, fixed_shape=False, gsd_m=0.2, overlap=32, score_threshold=0.6)
    return model, path


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny-fixed.onnx"
    model = export_tiny(path, 128, fixed_shape=True, gsd_m=0.2)
    return model, path


def test_export_passes_the_onnx_checker(dynamic_model, fixed_model) -> None:
    for _, path in (dynamic_model, fixed_model):
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == 17
        assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "mask_logits"]
    dims = [
        d.dim_value or d.dim_param
        for d in onnx.load(fixed_model[1]).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims == [1, 3, 128, 128]
    dims = [
        d.dim_value or d.dim_param
        for d in onnx.load(dynamic_model[1]).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:])


def test_metadata_round_trip(dynamic_model) -> None:
    _, path = dynamic_model
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    assert all(json.loads(v) is not None for v in props.values())  # every value is JSON
    ours = {
        k.removeprefix("solardesk."): json.loads(v)
        for k, v in props.items()
        if k.startswith("solardesk.")
    }
    assert ours["format"] == "solardesk.maskrcnn.onnx" and ours["format_version"] == 1
    assert ours["classes"] == ["background", "solar_panel"]
    assert ours["channels"] == ["red", "green", "blue"] and ours["in_channels"] == 3
    assert ours["image_mean"] == pytest.approx(list(IMAGE_MEAN))
    assert ours["tile_size"] == 128 and ours["tile_overlap"] == 32
    assert ours["gsd_m"] == pytest.approx(0.2)
    assert ours["score_threshold"] == pytest.approx(0.6)
    assert ours["mask_threshold"] == 0.5 and ours["min_score"] == pytest.approx(0.05)
    assert ours["fixed_shape"] is False and ours["version"]
    # The keys Deepness and GeoDeep read, in their units.
    assert json.loads(props["model_type"]) == "Detector"
    assert json.loads(props["class_names"]) == {"0": "solar_panel"}
    assert json.loads(props["resolution"]) == pytest.approx(20.0)  # cm/px
    assert json.loads(props["tiles_size"]) == 128
    assert json.loads(props["tiles_overlap"]) == 25  # percent of the tile
    assert json.loads(props["standardization_mean"]) == [0.0, 0.0, 0.0]  # the graph normalises
    assert json.loads(props["standardization_std"]) == [1.0, 1.0, 1.0]
    assert json.loads(props["det_conf"]) == pytest.approx(0.6)

    # SolarDesk's header reader agrees with onnx and onnxruntime.
    header = read_header(path)
    assert header.metadata == props
    assert header.ir_version == proto.ir_version and header.opsets[""] == 17
    assert [o.name for o in header.outputs] == ["boxes", "scores", "labels", "mask_logits"]
    assert header.inputs[0].name == "image" and header.inputs[0].dims[:2] == (1, 3)
    ort_meta = OnnxModel(path).session.get_modelmeta().custom_metadata_map
    assert dict(ort_meta) == props
    spec = inspect_model(path)
    assert (spec.source, spec.tile_size, spec.overlap, spec.input_hw) == (
        "solardesk",
        128,
        32,
        None,
    )
    assert spec.gsd_m == pytest.approx(0.2) and spec.score_threshold == pytest.approx(0.6)
    assert spec.pad_value == pytest.approx(IMAGE_MEAN)


def _torch_eager(model, image: np.ndarray):
    size = image.shape[-1]
    model.transform.min_size, model.transform.max_size = (size,), size
    with torch.no_grad():
        out = model([torch.from_numpy(image)])[0]
    masks = (out["masks"][:, 0] >= 0.5).numpy()
    return out["boxes"].numpy(), out["scores"].numpy(), masks


def _pasted(logits, boxes, size):
    full = np.zeros((len(boxes), size, size), bool)
    for i, ((x0, y0, x1, y1), crop) in enumerate(
        zip(*paste_masks(logits, boxes, (size, size), with_boxes=True), strict=True)
    ):
        if crop is not None:
            full[i, y0:y1, x0:x1] = crop
    return full


def _textured(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.random((3, size, size), dtype=np.float32)
    img[:, size // 4 : size // 2, size // 3 : size // 2] = 0.95  # a bright block
    return img


@pytest.mark.parametrize(("which", "size"), [("dynamic", 128), ("dynamic", 192), ("fixed", 128)])
def test_parity_with_torch(dynamic_model, fixed_model, which: str, size: int) -> None:
    model, path = dynamic_model if which == "dynamic" else fixed_model
    image = _textured(size, seed=size)
    t_boxes, t_scores, t_masks = _torch_eager(model, image)
    d = OnnxModel(path).run(image[None])
    assert len(t_scores) >= 5, "the test needs detections"
    assert len(np.unique(t_scores)) == len(t_scores), "scores must be distinct"
    assert len(d.scores) == len(t_scores)
    assert np.abs(d.boxes - t_boxes).max() < 0.02
    assert np.abs(d.scores - t_scores).max() < 5e-5
    masks = _pasted(d.mask_logits, d.boxes, size)
    for a, b in zip(masks, t_masks, strict=True):
        assert (a & b).sum() / max((a | b).sum(), 1) >= 0.99


def test_parity_on_a_tile_with_no_detections(dynamic_model, fixed_model) -> None:
    empty = np.broadcast_to(np.asarray(IMAGE_MEAN, np.float32)[:, None, None], (3, 128, 128)).copy()
    for model, path in (dynamic_model, fixed_model):
        _, t_scores, _ = _torch_eager(model, empty)
        d = OnnxModel(path).run(empty[None])
        assert len(t_scores) == 0
        assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.mask_logits.shape[0] == 0
        assert _pasted(d.mask_logits, d.boxes, 128).shape == (0, 128, 128)


def test_paste_masks_is_torchvisions_paste() -> None:
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(0)
    h, w, n = 90, 130, 150
    x0, y0 = rng.uniform(-10, w, n), rng.uniform(-10, h, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.3, 70, n), y0 + rng.uniform(0.3, 70, n)], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)  # as the graph clips them
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    boxes = boxes.astype(np.float32)
    logits = rng.normal(0, 3, (n, 28, 28)).astype(np.float32)
    probs = torch.sigmoid(torch.from_numpy(logits))[:, None]
    expected = paste_masks_in_image(probs, torch.from_numpy(boxes), (h, w), padding=1)[:, 0] >= 0.5
    got = np.zeros((n, h, w), bool)
    for i, ((a, b, c, d), crop) in enumerate(
        zip(*paste_masks(logits, boxes, (h, w), with_boxes=True), strict=True)
    ):
        if crop is not None:
            got[i, b:d, a:c] = crop
    assert np.array_equal(got, expected.numpy())


# --------------------------------------------------------------------------------------------
# solardesk export-onnx, from a training checkpoint (the command run in-process: a subprocess
# would import torch again for each call; tests/plugins/test_onnx_cli.py runs real processes)
# --------------------------------------------------------------------------------------------
def _cli(*args: str):
    """The real ``solardesk`` command group, in this process (torch is imported already)."""
    from click.testing import CliRunner

    from solardesk.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A SolarDesk checkpoint of the light CPU backbone at 128 px, random weights."""
    from solardesk_maskrcnn.checkpoint import save_checkpoint
    from solardesk_maskrcnn.config import ModelSettings, TrainConfig
    from solardesk_maskrcnn.model import build_model, model_meta

    root = tmp_path_factory.mktemp("ckpt")
    ms = ModelSettings(
        backbone="mobilenet_v3_large_fpn",
        tile_size=128,
        rpn_proposals_test=100,
        detections_per_img=20,
    )
    cfg = TrainConfig(cache=root / "gone.sqlite", model=ms)
    model = build_model(ms, 128)
    return save_checkpoint(
        root / "last.pt",
        {
            "model": model.state_dict(),
            "config": cfg.model_dump(mode="json"),
            "model_meta": model_meta(ms, 128),
            "epoch": 3,
            "step": 30,
        },
    )


def test_export_onnx_command(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    # The training cache is gone, so the ground resolution must be given.
    res = _cli("export-onnx", str(checkpoint), "--out", str(out))
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("Error: ") and "--gsd" in res.stderr and not out.exists()

    res = _cli(
        "export-onnx", str(checkpoint), "--out", str(out), "--gsd", "0.15", "--overlap", "32"
    )
    assert res.exit_code == 0, res.output
    assert "onnx.checker passed" in res.stdout
    onnx.checker.check_model(onnx.load(out), full_check=True)
    spec = inspect_model(out)
    assert spec.input_hw == (128, 128) and spec.tile_size == 128 and spec.overlap == 32
    assert spec.gsd_m == pytest.approx(0.15) and spec.score_threshold == pytest.approx(0.5)
    meta = {k: json.loads(v) for k, v in spec.metadata.items()}
    assert meta["solardesk.backbone"] == "mobilenet_v3_large_fpn" and meta["solardesk.epoch"] == 3
    assert meta["solardesk.detections_per_img"] == 20

    again = _cli("export-onnx", str(checkpoint), "--out", str(out), "--gsd", "0.15")
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_export_writes_a_temporary_file_of_its_own_and_checks_the_overlap(
    checkpoint: Path, tmp_path: Path
) -> None:
    """A file (or a link to one) named like the old temporary file is left alone; an overlap
    the model's tiles cannot take is refused before the export (it made a 128 px model tile
    a raster by the pixel)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.part").symlink_to(notes)
    for overlap in ("500", "-5"):
        res = _cli("export-onnx", str(checkpoint), "--out", str(out), "--gsd", "0.15",
                   "--overlap", overlap)  # fmt: skip
        assert res.exit_code == 2 and "choose an overlap from 0 to 64 px" in res.stderr
        assert not out.exists()
    res = _cli("export-onnx", str(checkpoint), "--out", str(out), "--gsd", "0.15")
    assert res.exit_code == 0, res.output
    assert notes.read_text() == "my notes" and inspect_model(out).overlap == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.part", "notes.txt"]


def test_a_failed_quantisation_leaves_the_previous_model(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--quantize`` with ``--overwrite``: the model at --out is replaced only by the finished
    quantised one (it was replaced by the fp32 export before quantising, and stayed so)."""
    import os
    import time

    import onnxruntime.quantization as q

    from solardesk.core.files import STALE_AFTER_S

    out = tmp_path / "m.onnx"
    out.write_bytes(b"yesterday's model")
    # What a kill -9 during an earlier quantised export left (process 999999999 is gone):
    # the staged fp32 model and its own temporary, cleared once stale.
    old = time.time() - 2 * STALE_AFTER_S
    for name in (".m.onnx.999999999-0123abcd.onnx",
                 "..m.onnx.999999999-0123abcd.onnx.999999999-4567abcd.part"):  # fmt: skip
        (tmp_path / name).write_bytes(b"a whole fp32 model")
        os.utime(tmp_path / name, (old, old))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(q, "quantize_dynamic", full_disk)
    res = _cli("export-onnx", str(checkpoint), "--out", str(out), "--gsd", "0.15",
               "--quantize", "int8", "--overwrite")  # fmt: skip
    assert res.exit_code == 2 and "No space left on device" in res.stderr, res.output
    assert out.read_bytes() == b"yesterday's model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint")
    res = _cli("export-onnx", str(bogus), "--out", str(tmp_path / "m.onnx"), "--gsd", "0.2")
    assert res.exit_code == 2 and res.stderr.startswith("Error: ")
    assert str(bogus) in res.stderr
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        read_header(bogus)


@pytest.mark.parametrize("mode", ["int8", "int8-matmul"])
def test_export_onnx_quantized_keeps_metadata_and_runs(
    checkpoint: Path, tmp_path: Path, mode: str
) -> None:
    import numpy as np

    from solardesk_onnx.runtime import OnnxModel

    fp32, q = tmp_path / "fp32.onnx", tmp_path / f"{mode}.onnx"
    assert _cli("export-onnx", str(checkpoint), "--out", str(fp32), "--gsd", "0.15").exit_code == 0
    res = _cli("export-onnx", str(checkpoint), "--out", str(q), "--gsd", "0.15", "--quantize", mode)
    assert res.exit_code == 0, res.output
    assert f"int8 ({mode})" in res.stdout
    proto = onnx.load(q)
    onnx.checker.check_model(proto)
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8, "no int8 weights in the quantised model"
    meta = {e.key: e.value for e in proto.metadata_props}
    fp32_meta = {e.key: e.value for e in onnx.load(fp32).metadata_props}
    assert json.loads(meta.pop("solardesk.quantization")) == mode
    for key in ("solardesk.tile_size", "solardesk.channels", "tiles_size", "class_names"):
        assert meta[key] == fp32_meta[key]
    if mode == "int8":
        assert q.stat().st_size < 0.6 * fp32.stat().st_size
    # Both run on the same tile and return the same kinds of outputs.
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)

    for path in (fp32, q):
        model = OnnxModel(path)
        d = model.run(model.prepare(tile, None, None)[None])
        assert d.boxes.shape == (len(d.scores), 4) and d.mask_logits.shape[1:] == (28, 28)
        assert np.isfinite(d.boxes).all() and ((d.scores >= 0) & (d.scores <= 1)).all()

    assert not list(tmp_path.glob("*.part"))

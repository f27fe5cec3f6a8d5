"""The network: backbones, 9-channel input, trainable batch-norm, weighted losses, weights files."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from solardesk.errors import ModelError  # noqa: E402
from solardesk_maskrcnn.config import BACKBONES, ModelSettings  # noqa: E402
from solardesk_maskrcnn.model import (  # noqa: E402
    WeightedRoIHeads,
    build_model,
    first_conv,
    load_initial_weights,
    model_meta,
)
from tests.plugins.test_maskrcnn_data import LIGHT_MODEL  # noqa: E402

torch.set_num_threads(2)
SIZE = 96


def batch(channels: int = 3, weights: tuple[float, float] | None = None):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(channels, SIZE, SIZE, generator=g) for _ in range(2)]
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 10:40, 10:50] = 1
    masks[1, 50:80, 55:90] = 1
    boxes = torch.tensor([[10.0, 10, 50, 40], [55, 50, 90, 80]])
    targets = []
    for _ in images:
        t = {"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64), "masks": masks}
        if weights is not None:
            t["weights"] = torch.tensor(weights)
        targets.append(t)
    return images, targets


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbones_build_with_trainable_batchnorm_and_no_rescaling(backbone: str) -> None:
    model = build_model(ModelSettings(backbone=backbone, channels="rgb+spectral"), 256)
    assert model.transform.min_size == (256,) and model.transform.max_size == 256
    assert len(model.transform.image_mean) == 9 and len(model.transform.image_std) == 9
    conv, _ = first_conv(model)
    assert conv.in_channels == 9
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert isinstance(model.roi_heads, WeightedRoIHeads)


def test_nine_channel_model_trains_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSettings(channels="rgb+spectral", **LIGHT_MODEL), SIZE)
    images, targets = batch(9)
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert first_conv(model)[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert {"boxes", "scores", "masks", "labels"} <= set(out[0])


def test_weights_of_one_give_torchvision_losses() -> None:
    """The noise-aware heads change nothing unless weights say so."""
    from torchvision.models.detection.roi_heads import RoIHeads

    settings = ModelSettings(**LIGHT_MODEL)
    torch.manual_seed(0)
    model = build_model(settings, SIZE)
    images, targets = batch(3, weights=(1.0, 1.0))
    torch.manual_seed(1)
    ours = model(images, targets)
    torch.manual_seed(1)
    stock = RoIHeads.forward.__get__(model.roi_heads)
    model.roi_heads.forward = stock  # torchvision's forward on the same module
    theirs = model(images, [{k: v for k, v in t.items() if k != "weights"} for t in targets])
    for k in ("loss_classifier", "loss_box_reg", "loss_mask"):
        assert torch.allclose(ours[k], theirs[k], atol=1e-6), k


def test_lower_weights_lower_the_instance_losses() -> None:
    settings = ModelSettings(**LIGHT_MODEL)
    torch.manual_seed(0)
    model = build_model(settings, SIZE)
    out = {}
    for w in (1.0, 0.2):
        torch.manual_seed(1)
        out[w] = model(*batch(3, weights=(w, w)))
    assert out[0.2]["loss_box_reg"] < out[1.0]["loss_box_reg"]
    assert out[0.2]["loss_mask"] < out[1.0]["loss_mask"]


def test_ignore_boxes_remove_background_proposals() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)
    heads = model.roi_heads
    proposals = [torch.tensor([[10.0, 10, 50, 40], [60, 5, 90, 30], [61, 6, 89, 29]])]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10, 50, 40]]),
            "labels": torch.ones(1, dtype=torch.int64),
            "masks": torch.zeros(1, SIZE, SIZE, dtype=torch.uint8),
            "ignore_boxes": torch.tensor([[60.0, 5, 90, 30]]),
        }
    ]
    props, _, labels, _ = heads.select_training_samples(proposals, targets)
    kept = {tuple(p.tolist()) for p in props[0]}
    assert (60.0, 5.0, 90.0, 30.0) not in kept and (61.0, 6.0, 89.0, 29.0) not in kept
    assert bool((labels[0] == 1).any())


def fit_steps(model, images, targets, steps: int = 8) -> list[float]:
    """``steps`` AdamW steps (lr 3e-4, gradients clipped at 10) on one batch; the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_falls_on_a_fixed_batch() -> None:
    """Eight AdamW steps on one tiny batch: a model that can learn must fit it better."""
    torch.manual_seed(0)
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)
    images, targets = batch(3)
    losses = fit_steps(model, images, targets)
    assert min(losses[-2:]) < 0.7 * losses[0], losses


def test_meta_describes_channels_and_normalisation() -> None:
    meta = model_meta(ModelSettings(channels="rgb+spectral"), 512)
    assert meta["in_channels"] == 9 and len(meta["channels"]) == 9
    assert meta["channels"][3:] == [
        "fft_periodicity",
        "lbp_uniformity",
        "gabor_energy",
        "gabor_coherence",
        "photometric_index",
        "edges_morphology",
    ]
    assert len(meta["image_mean"]) == 9 and meta["tile_size"] == 512
    assert meta["classes"] == ["background", "solar_panel"]


def test_imagenet_backbone_weights_widen_to_nine_channels(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(3)
    src = resnet18(weights=None).state_dict()  # the format of torchvision's ImageNet files
    path = tmp_path / "resnet18.pth"
    torch.save(src, path)
    model = build_model(ModelSettings(backbone="resnet18_fpn", channels="rgb+spectral"), SIZE)
    info = load_initial_weights(model, path)
    assert info["loaded"] > 50
    w = first_conv(model)[0].weight
    assert torch.allclose(w[:, :3], src["conv1.weight"] / 3)
    assert torch.allclose(w[:, 3], src["conv1.weight"].mean(dim=1) / 3)
    body = model.backbone.body
    assert torch.equal(body.layer1[0].conv1.weight, src["layer1.0.conv1.weight"])


def test_whole_model_weights_skip_what_does_not_fit(tmp_path: Path) -> None:
    donor = build_model(ModelSettings(**LIGHT_MODEL), SIZE).state_dict()
    donor["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, 1024)  # COCO classes
    path = tmp_path / "coco.pth"
    torch.save(donor, path)
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)
    with pytest.warns(UserWarning, match="did not fit"):
        info = load_initial_weights(model, path)
    assert info["skipped"] == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "cannot be read as torch weights"),
        (b"not a torch file at all", "cannot be read as torch weights"),
        (None, "no such weights file"),
    ],
)
def test_bad_weights_files_are_clear_errors(tmp_path: Path, content, match) -> None:
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)
    with pytest.raises(ModelError, match=match) as e:
        load_initial_weights(model, path)
    assert str(path) in str(e.value)
    assert "weights_only=False" not in str(e.value)


def test_a_pickle_as_weights_is_refused_without_torch_s_advice(tmp_path: Path) -> None:
    """torch's message for a pickle tells the user to load it with weights_only=False: the
    error says it is refused instead."""
    import pickle

    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps({"model": object()}))
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)
    with pytest.raises(ModelError, match="needs pickled code") as e:
        load_initial_weights(model, path)
    assert "weights_only=False" not in str(e.value)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    model = build_model(ModelSettings(**LIGHT_MODEL), SIZE)
    with pytest.raises(ModelError, match="none of its 1 tensors fit"):
        load_initial_weights(model, path)

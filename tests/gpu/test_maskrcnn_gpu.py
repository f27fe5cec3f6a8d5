"""Mask R-CNN training on CUDA: AMP steps, the scaler in checkpoints, resume and evaluation.

Skipped without a GPU (tests/gpu/conftest.py). Small: 128 px synthetic tiles, a few steps.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")


@pytest.fixture
def project(tmp_path: Path):
    from tests.plugins.test_maskrcnn_data import make_project

    cache, _ = make_project(tmp_path)
    return tmp_path, cache


def config(root: Path, cache: Path, name: str, **sections):
    from solardesk_maskrcnn.config import load_train_config
    from tests.plugins.test_maskrcnn_data import write_config

    folder = root / name
    folder.mkdir()
    run = {"device": "cuda", "amp": True, **sections.pop("run", {})}
    return load_train_config(write_config(folder, cache, run=run, **sections))


@pytest.mark.parametrize("backbone", ["resnet50_fpn_v2", "mobilenet_v3_large_fpn"])
def test_amp_training_on_cuda(project, backbone: str, recwarn) -> None:
    from solardesk_maskrcnn.checkpoint import load_checkpoint
    from solardesk_maskrcnn.train import MaskRCNNTrainer

    root, cache = project
    cfg = config(
        root,
        cache,
        backbone,
        model={"backbone": backbone},
        optim={"epochs": 2},
        run={"eval_every": 1, "eval_max_tiles": 2},
    )
    events: list[dict] = []
    result = MaskRCNNTrainer(cfg, emit=events.append).run()
    started = next(e for e in events if e["event"] == "started")
    assert started["device"] == "cuda" and started["amp"] is True
    assert result.reason == "completed" and result.step == 4
    ck = load_checkpoint(result.checkpoint)
    assert ck["scaler"] and "scale" in ck["scaler"]
    assert all(t.device.type == "cpu" for t in ck["model"].values())  # loadable anywhere
    assert any(e["event"] == "metrics" and e["val"] for e in events)
    # AMP's skipped first steps hold the schedule back instead of stepping it early.
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_resume_on_cuda_restores_the_scaler(project) -> None:
    from solardesk_maskrcnn.checkpoint import load_checkpoint
    from solardesk_maskrcnn.train import MaskRCNNTrainer

    root, cache = project
    cfg = config(root, cache, "resume", optim={"epochs": 2})
    stop = threading.Event()

    def emit(ev: dict) -> None:
        if ev["event"] == "progress" and ev["global_step"] == 1:
            stop.set()

    first = MaskRCNNTrainer(cfg, emit=emit, stop=stop).run()
    assert first.reason == "stopped"
    saved = load_checkpoint(Path(cfg.output_dir) / "last.pt")["scaler"]
    events: list[dict] = []
    done = MaskRCNNTrainer(cfg, emit=events.append, resume=Path(cfg.output_dir) / "last.pt").run()
    assert done.reason == "completed" and done.step == 4
    assert next(e for e in events if e["event"] == "started")["start_step"] == 1
    assert saved["scale"] > 0


def test_evaluate_on_cuda(project) -> None:
    from solardesk_maskrcnn.evaluate import evaluate
    from solardesk_maskrcnn.train import MaskRCNNTrainer

    root, cache = project
    cfg = config(root, cache, "eval", run={"max_steps_per_epoch": 1})
    result = MaskRCNNTrainer(cfg).run()
    ev, _ = evaluate(result.checkpoint, cache=cache, split="all", max_tiles=4, device="cuda")
    assert ev.summary()["images"] == 4

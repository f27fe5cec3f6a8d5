"""Training runs on CPU: resume at the exact step, 9-channel runs, and clear errors.

Every run uses the light backbone on 128 px synthetic tiles, 1-2 steps per epoch: the point is
the machinery (checkpoints, resume, events, errors), not accuracy.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from solardesk.core.cache import MaskCache  # noqa: E402
from solardesk.errors import CacheError, ConfigError, ModelError, TrainingError  # noqa: E402
from solardesk_maskrcnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from solardesk_maskrcnn.config import load_train_config  # noqa: E402
from solardesk_maskrcnn.train import MaskRCNNTrainer, lr_factor  # noqa: E402
from tests.plugins.test_maskrcnn_data import make_project, write_config  # noqa: E402

torch.set_num_threads(2)


def run(config, *, resume=None, stop_at_step: int | None = None):
    """Train; returns (result, events). ``stop_at_step`` requests a stop after that step."""
    events: list[dict] = []
    stop = threading.Event()

    def emit(ev: dict) -> None:
        events.append(ev)
        if (
            stop_at_step is not None
            and ev["event"] == "progress"
            and ev["global_step"] == stop_at_step
        ):
            stop.set()

    result = MaskRCNNTrainer(config, emit=emit, stop=stop, resume=resume).run()
    return result, events


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("maskrcnn-train")
    cache, _ = make_project(root)
    return root, cache


def config_for(root: Path, cache: Path, name: str, **sections):
    folder = root / name
    folder.mkdir()
    path = write_config(folder, cache, **sections)
    return load_train_config(path)


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 100, 10, 0.001, 0.01) for s in range(101)]
    assert f[0] == pytest.approx(0.001) and f[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(f[:11]))
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[100] == pytest.approx(0.01)


def test_resume_continues_at_the_step_with_the_same_state(project) -> None:
    """Stopped after step 3 of 4 and resumed, a run ends exactly where an uninterrupted one does."""
    root, cache = project
    straight_cfg = config_for(root, cache, "straight", optim={"epochs": 2})
    straight, _ = run(straight_cfg)
    assert (straight.reason, straight.epoch, straight.step) == ("completed", 2, 4)

    cfg = config_for(root, cache, "interrupted", optim={"epochs": 2})
    stopped, events = run(cfg, stop_at_step=3)
    assert (stopped.reason, stopped.step) == ("stopped", 3)
    last = Path(cfg.output_dir) / "last.pt"
    ck = load_checkpoint(last)
    assert (ck["epoch"], ck["step_in_epoch"], ck["step"]) == (1, 1, 3)
    assert events[-1]["event"] == "finished" and events[-1]["reason"] == "stopped"

    resumed, events = run(cfg, resume=last)
    started = next(e for e in events if e["event"] == "started")
    assert (started["start_epoch"], started["start_step"]) == (2, 3)
    steps = [(e["epoch"], e["step"], e["global_step"]) for e in events if e["event"] == "progress"]
    assert steps == [(2, 2, 4)]
    assert (resumed.reason, resumed.epoch, resumed.step) == ("completed", 2, 4)

    a = load_checkpoint(Path(straight_cfg.output_dir) / "epoch-002.pt")
    b = load_checkpoint(Path(cfg.output_dir) / "epoch-002.pt")
    assert a["scheduler"] == b["scheduler"]
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert float(sa[k]["step"]) == float(sb[k]["step"]) == 4
        assert torch.allclose(sa[k]["exp_avg"], sb[k]["exp_avg"], atol=1e-6)


def test_nine_channel_model_trains_evaluates_and_saves(project) -> None:
    root, cache = project
    cfg = config_for(
        root,
        cache,
        "nine",
        model={"channels": "rgb+spectral"},
        run={"eval_every": 1, "eval_max_tiles": 2, "max_steps_per_epoch": 1},
    )
    result, events = run(cfg)
    assert result.reason == "completed"
    metrics = next(e for e in events if e["event"] == "metrics")
    val = metrics["val"]
    assert metrics["val_f1"] == val["f1"] and metrics["train_loss"] > 0
    assert val["images"] == 2 and {"precision", "recall", "f1", "mask_ap"} <= set(val)
    ck = load_checkpoint(result.checkpoint)
    assert ck["model_meta"]["in_channels"] == 9
    assert ck["model_meta"]["gsd_m"] == pytest.approx(0.25, rel=1e-3)
    assert ck["model"]["backbone.body.0.0.weight"].shape[1] == 9

    from solardesk_maskrcnn.evaluate import evaluate

    ev, about = evaluate(result.checkpoint, cache=cache, max_tiles=2, device="cpu")
    summary = ev.summary()
    assert summary["images"] == 2 and about["channels"] == "rgb+spectral"


def test_corrupt_checkpoint_is_a_clear_error(project) -> None:
    root, cache = project
    cfg = config_for(root, cache, "corrupt")
    bad = Path(cfg.output_dir) / "last.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="not a readable checkpoint") as e:
        run(cfg, resume=bad)
    assert str(bad) in str(e.value) and "delete it" in str(e.value)
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ModelError, match="not a SolarDesk Mask R-CNN checkpoint"):
        run(cfg, resume=bad)
    with pytest.raises(ModelError, match="no such checkpoint"):
        run(cfg, resume=bad.with_name("missing.pt"))


def test_checkpoint_from_another_config_is_refused(project) -> None:
    root, cache = project
    cfg = config_for(root, cache, "other")
    other = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"backbone": "resnet18_fpn"})}
    )
    path = save_checkpoint(
        Path(cfg.output_dir) / "last.pt",
        {
            "model": {},
            "config": other.model_dump(mode="json"),
            "model_meta": {"tile_size": 128},
            "epoch": 1,
            "step": 2,
        },
    )
    with pytest.raises(ModelError, match="another model configuration") as e:
        run(cfg, resume=path)
    msg = str(e.value)
    assert str(path) in msg and "resnet18_fpn" in msg and "mobilenet_v3_large_fpn" in msg


def test_empty_cache_is_a_clear_error(tmp_path: Path) -> None:
    cache, _ = make_project(tmp_path / "low", n_scenes=1, confidence=0.5)
    cfg = load_train_config(write_config(tmp_path / "low", cache))
    with pytest.raises(TrainingError, match=r"no instance at or above confidence 0\.85") as e:
        run(cfg)
    assert str(cache) in str(e.value) and "Lower data.threshold" in str(e.value)

    empty = tmp_path / "empty.sqlite"
    MaskCache(empty).close()
    cfg = load_train_config(write_config(tmp_path, empty))
    with pytest.raises(TrainingError, match="holds no tiles"):
        run(cfg)

    cfg = load_train_config(write_config(tmp_path, tmp_path / "nowhere.sqlite"))
    with pytest.raises(CacheError, match="does not exist"):
        run(cfg)


def test_unknown_config_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"cache": "c.sqlite", "optim": {"learning_rate": 0.1}}))
    with pytest.raises(ConfigError, match=r"unknown field 'optim\.learning_rate'"):
        load_train_config(path)
    path.write_text(json.dumps({"cache": "c.sqlite", "model": {"backbone": "vgg"}}))
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        load_train_config(path)


def test_relative_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"cache": "c.sqlite", "output_dir": "out"}))
    cfg = load_train_config(path)
    assert cfg.cache == tmp_path / "sub" / "c.sqlite"
    assert cfg.output_dir == tmp_path / "sub" / "out"


def test_non_finite_loss_is_a_training_error(project, monkeypatch) -> None:
    import solardesk_maskrcnn.model as model_module

    real = model_module.build_model

    def diverging(settings, tile_size):
        model = real(settings, tile_size)
        forward = model.forward

        def broken(images, targets=None):
            out = forward(images, targets)
            if model.training:
                out["loss_mask"] = out["loss_mask"] * float("nan")
            return out

        model.forward = broken
        return model

    monkeypatch.setattr(model_module, "build_model", diverging)
    root, cache = project
    cfg = config_for(root, cache, "nan")
    events: list[dict] = []
    with pytest.raises(TrainingError, match="the loss became nan") as e:
        MaskRCNNTrainer(cfg, emit=events.append).run()
    assert "lower optim.lr" in str(e.value)
    assert events[-1]["event"] == "error" and events[-1]["type"] == "TrainingError"


def test_gpu_out_of_memory_names_batch_and_tile_size(project, monkeypatch) -> None:
    import solardesk_maskrcnn.model as model_module

    real = model_module.build_model

    def hungry(settings, tile_size):
        model = real(settings, tile_size)

        def oom(images, targets=None):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.forward = oom
        return model

    monkeypatch.setattr(model_module, "build_model", hungry)
    root, cache = project
    cfg = config_for(root, cache, "oom")
    with pytest.raises(TrainingError, match="ran out of memory with batch size 2 and 128 px"):
        run(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_but_absent_falls_back_with_a_warning(project) -> None:
    root, cache = project
    cfg = config_for(root, cache, "nocuda", run={"device": "cuda", "max_steps_per_epoch": 1})
    with pytest.warns(UserWarning, match="CUDA was asked for"):
        result, events = run(cfg)
    assert result.reason == "completed"
    warning = next(e for e in events if e["event"] == "warning")
    assert "training on the CPU" in warning["message"]
    assert next(e for e in events if e["event"] == "started")["device"] == "cpu"


def test_a_new_run_into_a_used_folder_keeps_the_earlier_checkpoints(project) -> None:
    """A second run (not --resume) into the same output folder replaced the first one's
    last.pt and pruned its epochs with its own: they are moved to earlier-runs/ instead."""
    root, cache = project
    cfg = config_for(root, cache, "twice", run={"max_steps_per_epoch": 1})
    first, _ = run(cfg)
    out = Path(cfg.output_dir)
    before = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    assert "last.pt" in before and first.reason == "completed"
    with pytest.warns(UserWarning, match="held the checkpoints of an earlier run"):
        second, events = run(cfg)
    assert second.reason == "completed"
    (warning,) = [e["message"] for e in events if e["event"] == "warning"]
    (kept,) = (out / "earlier-runs").iterdir()
    size = sum(f.stat().st_size for f in kept.iterdir()) / 2**20
    assert f"--resume-from {kept / 'last.pt'}" in warning
    assert f"now holds 1 earlier run, {size:.0f} MiB: delete those" in warning
    assert {p.name: p.read_bytes() for p in kept.glob("*.pt")} == before
    assert (out / "last.pt").is_file()
    # A third run that stops before its first checkpoint leaves no last.pt (as if it had
    # written none): --resume then names the newest set aside, the second run's.
    with pytest.warns(UserWarning, match="held the checkpoints of an earlier run"):
        run(cfg)
    (out / "last.pt").unlink()
    for p in out.glob("epoch-*.pt"):
        p.unlink()
    with pytest.raises(ModelError, match="set the earlier run's checkpoints aside") as e:
        run(cfg, resume=out / "last.pt")
    newest = max(out.glob("earlier-runs/*/last.pt"), key=lambda q: q.stat().st_mtime)
    assert f"--resume-from {newest}" in str(e.value) and newest.parent != kept
    resumed, _ = run(cfg, resume=newest)
    assert resumed.reason == "completed" and resumed.checkpoint == newest  # (nothing left to do)


def test_epoch_checkpoints_are_pruned_by_epoch_not_by_name(tmp_path: Path) -> None:
    from solardesk_maskrcnn.train import _epoch_checkpoints

    for e in (998, 999, 1000, 1001):
        (tmp_path / f"epoch-{e:03d}.pt").write_bytes(b"")
    (tmp_path / "epoch-best.pt").write_bytes(b"")  # not an epoch's
    assert [e for e, _ in sorted(_epoch_checkpoints(tmp_path))] == [998, 999, 1000, 1001]


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(
    project, monkeypatch
) -> None:
    root, cache = project
    cfg = config_for(root, cache, "blocked", run={"max_steps_per_epoch": 1})
    blocker = Path(cfg.output_dir)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the folder should be")
    result = None
    with pytest.raises(TrainingError, match="cannot write checkpoints to output_dir"):
        result, _ = run(cfg)
    assert result is None and blocker.read_text() == "a file where the folder should be"


def test_a_second_run_into_a_folder_in_use_is_refused(project) -> None:
    """Two runs into one output_dir (the GUI's and a command line's) would replace each
    other's checkpoints: the second is refused before it touches them."""
    import os

    from solardesk.core.files import hold_folder

    root, cache = project
    cfg = config_for(root, cache, "busy", run={"max_steps_per_epoch": 1})
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"the first run's")
    refused = pytest.raises(
        TrainingError, match=rf"in use by another training run \(process {os.getpid()}\)"
    )
    with hold_folder(out), refused:  # the first run, still training
        run(cfg)
    assert (out / "last.pt").read_bytes() == b"the first run's"
    assert not (out / "earlier-runs").exists()


def test_a_checkpoint_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """torch.save reports a full disk as a RuntimeError: it is a ModelError too, and neither
    the checkpoint nor a temporary file is left."""
    import torch as torch_

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 4096")

    monkeypatch.setattr(torch_, "save", full)
    with pytest.raises(ModelError, match=r"cannot write checkpoint .*unexpected pos"):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_is_on_disk_before_it_takes_its_name(tmp_path, journal) -> None:
    """A power cut after the rename must not leave last.pt empty with the earlier one gone:
    the temporary file is synced before the rename, the folder after it."""
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    (rename,) = [e for e in journal if e[0] == "rename"]
    tmp, final = rename[1].split(" -> ")
    assert final == str(path)
    assert journal == [("fsync", tmp), rename, ("fsync", str(tmp_path))]
    assert path.stat().st_size > 0 and list(tmp_path.iterdir()) == [path]


def test_resuming_with_another_optimiser_is_refused_before_a_step(project) -> None:
    """adamw → sgd went on to an internal KeyError ('momentum') at the first step."""
    root, cache = project
    cfg = config_for(root, cache, "optimiser", run={"max_steps_per_epoch": 1})
    result, _ = run(cfg)
    other = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"optimizer": "sgd"})})
    events = []
    with pytest.raises(TrainingError, match="the optimiser changed"):
        MaskRCNNTrainer(other, emit=events.append, resume=result.checkpoint).run()
    assert not [e for e in events if e["event"] == "progress"]


def test_resuming_with_a_lower_learning_rate_uses_it(project) -> None:
    """The saved optimiser and schedule brought the old rate back: --set optim.lr on resume
    was silently ignored."""
    root, cache = project
    cfg = config_for(root, cache, "lower-lr", optim={"lr": 1e-3, "epochs": 2})
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_steps_per_epoch": 2})})
    first, events = run(cfg, stop_at_step=1)
    assert first.reason == "stopped"
    before = [e["lr"] for e in events if e["event"] == "progress"]
    lower = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 1e-5})})
    _, events = run(lower, resume=first.checkpoint)
    after = [e["lr"] for e in events if e["event"] == "progress"]
    assert after and max(after) <= 1e-5 < min(before) / 10, (before, after)


def test_a_stop_on_an_epoch_s_last_step_still_ends_the_epoch(project) -> None:
    """Its validation and epoch checkpoint were skipped (and the stop reported epoch 0)."""
    root, cache = project
    cfg = config_for(root, cache, "stop-at-end", optim={"epochs": 2})
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_steps_per_epoch": 2})})
    result, events = run(cfg, stop_at_step=2)
    assert result.reason == "stopped" and result.epoch == 1
    assert (Path(cfg.output_dir) / "epoch-001.pt").is_file()
    assert [e["epoch"] for e in events if e["event"] == "metrics"] == [1]
    assert not [e for e in events if e["event"] == "progress" and e["global_step"] > 2]
    # On the final epoch's last step nothing is left to do: the run completed.
    cfg = config_for(root, cache, "stop-at-the-end", optim={"epochs": 2})
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_steps_per_epoch": 2})})
    done, events = run(cfg, stop_at_step=4)
    assert done.reason == "completed" and done.epoch == 2
    assert events[-1]["event"] == "finished" and events[-1]["stopped"] is False


def test_validation_without_a_pseudo_label_reports_no_score(tmp_path: Path) -> None:
    """A validation set with nothing to find measured nothing: its precision and recall are
    n/a (None), not a perfect 1.0, and the run warns before the first step."""
    from solardesk_maskrcnn.train import plan_data

    cache, _ = make_project(tmp_path / "p", distractor=False)
    cfg = config_for(tmp_path, cache, "noval", run={"eval_every": 1, "max_steps_per_epoch": 1})
    plan = plan_data(cfg)  # fixes the split in the cache
    assert plan.val and plan.stats["val_targets"] > 0
    val_tiles = {(s.raster_fp, s.tile_id) for s in plan.val}
    with MaskCache(cache) as c:
        ids = [i.id for t, i in c.iter_instances() if (t.raster_fp, t.tile_id) in val_tiles]
        for iid in ids:
            c.set_review(iid, "rejected")
    assert ids

    with pytest.warns(UserWarning, match="validation tiles holds a pseudo-label"):
        result, events = run(cfg)
    assert result.reason == "completed"
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("validation tiles holds a pseudo-label" in w for w in warnings), warnings
    metrics = next(e for e in events if e["event"] == "metrics")
    assert metrics["val"]["gt_instances"] == 0
    if metrics["val"]["pred_instances"] == 0:
        assert metrics["val_precision"] is None and metrics["val_recall"] is None
        assert metrics["val_f1"] is None
    else:  # whatever it found there is a false positive
        assert metrics["val_precision"] == 0.0

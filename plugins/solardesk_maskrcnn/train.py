"""Training: the loop behind ``solardesk train`` (and the ``maskrcnn`` Trainer contribution).

The shape of torchvision's detection reference script, for pseudo-labels on a desktop:

* CUDA with automatic mixed precision when present, the CPU otherwise (``device: "cuda"``
  without a GPU falls back to the CPU with a warning event);
* linear warm-up then cosine decay, stepped per optimiser step; global gradient-norm clipping;
* a checkpoint at the end of every epoch (``epoch-NNN.pt`` and ``last.pt``) holding model,
  optimiser, scheduler, scaler, epoch, step, config and RNG state; resuming continues at the
  exact step (the data order of each epoch is drawn from ``(seed, epoch)``);
* a stop request (a ``threading.Event`` the CLI sets on SIGTERM, SIGINT or a "stop" line on
  stdin) finishes the current step, saves ``last.pt`` and returns;
* a non-finite loss raises :class:`TrainingError` with the losses and the remedy; so does a
  GPU out-of-memory, naming batch and tile size;
* progress goes to an ``emit`` callback as plain dicts (``started``, ``progress``, ``metrics``,
  ``checkpoint``, ``warning``, ``finished``, ``error``): the CLI prints them as JSON lines.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solardesk.core.cache import MaskCache
from solardesk.errors import CacheError, SolarDeskWarning, TrainingError
from solardesk_maskrcnn.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from solardesk_maskrcnn.config import TrainConfig
from solardesk_maskrcnn.events import now
from solardesk_maskrcnn.samples import (
    RasterLocator,
    TileSample,
    TileSource,
    assign_splits,
    list_samples,
    select_samples,
)

__all__ = [
    "CudaUnavailableWarning",
    "DataPlan",
    "MaskRCNNTrainer",
    "TrainResult",
    "lr_factor",
    "plan_data",
    "select_device",
    "train",
]

Emit = Callable[[dict[str, Any]], None]
#: Validation figures repeated at the top level of ``metrics`` events (as ``val_<name>``), where
#: a GUI plots every number it finds.
_PLOTTED = ("precision", "recall", "f1", "mask_ap", "mask_ap50", "box_ap50")


class CudaUnavailableWarning(SolarDeskWarning):
    """CUDA was asked for but no usable GPU is present: training runs on the CPU."""


def select_device(requested: str) -> tuple[torch.device, str | None]:
    """``(device, warning or None)`` for ``"auto"``, ``"cuda"`` or ``"cpu"``."""
    has_cuda = torch.cuda.is_available()
    if requested == "cpu" or (requested == "auto" and not has_cuda):
        return torch.device("cpu"), None
    if requested == "cuda" and not has_cuda:
        return torch.device("cpu"), (
            "CUDA was asked for but no usable GPU is present (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); training on the "
            "CPU instead, which is much slower. Install a CUDA build of torch and a GPU driver, "
            "or set run.device to 'cpu' to silence this."
        )
    return torch.device("cuda"), None


def lr_factor(step: int, total: int, warmup: int, warmup_factor: float, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup:
        alpha = step / warmup
        return warmup_factor * (1 - alpha) + alpha
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class DataPlan:
    """The tiles of a run and how to read them."""

    source: TileSource
    train: list[TileSample]
    val: list[TileSample]
    tile_size: int
    stats: dict[str, Any] = field(default_factory=dict)
    gsd_m: float | None = None  # median ground resolution of the training rasters
    train_all: list[TileSample] = field(default_factory=list)  # with or without targets


def plan_data(config: TrainConfig) -> DataPlan:
    """List the cache's tiles, fix the split, find the rasters (see :mod:`.samples`).

    Raises :class:`TrainingError` when the cache holds no target in the training tiles, naming
    the cache, the threshold and what to do.
    """
    path = Path(config.cache)
    if not path.is_file():
        raise CacheError(
            f"cache {path} does not exist. Run `solardesk precompute RASTER --cache {path}` "
            "first, or fix 'cache' in the training config."
        )
    d = config.data
    with MaskCache(path, readonly=True) as cache:
        samples = list_samples(cache, d.threshold, d.stage_id)
        stats = cache.stats(threshold=d.threshold)
    if not samples:
        raise TrainingError(
            f"cache {path} holds no tiles. Run `solardesk precompute RASTER --cache {path}` first."
        )
    # Only this short step writes (the split of new tiles); readers run beside it.
    with MaskCache(path) as cache:
        split = assign_splits(
            cache,
            samples,
            val_fraction=d.val_fraction,
            block_m=d.split_block_m,
            seed=d.split_seed,
        )
        train_all = [s for s in samples if split[(s.raster_fp, s.tile_id)] == "train"]
        val = [s for s in samples if split[(s.raster_fp, s.tile_id)] == "val"]
        train = select_samples(train_all, d.empty_tile_fraction, d.split_seed)
        n_targets = sum(s.n_targets for s in train)
        if n_targets == 0:
            best = max(
                (i.confidence for _, i in cache.iter_instances(review=("pending", "accepted"))),
                default=None,
            )
            best_txt = f"the most confident candidate has {best:.2f}" if best else "no candidates"
            raise TrainingError(
                f"cache {path}: no instance at or above confidence {d.threshold} (or accepted in "
                f"review) in the {len(train_all)} training tiles ({stats['instances']} "
                f"candidates in all, {best_txt}). Lower data.threshold in the training config, "
                "accept candidates in the review dock, or pre-compute more imagery."
            )
        # Every raster of the split, not only those of the sampled tiles: self-training reads
        # every training tile, with or without targets.
        used = {s.raster_fp for s in train_all + val}
        locator = RasterLocator(cache, [str(p) for p in config.rasters])
        paths = {fp: str(locator.locate(fp)) for fp in sorted(used)}
        gsd = {}
        for fp in used:
            rec = cache.get_raster(fp)
            gsd[fp] = rec.gsd_m if rec is not None and rec.gsd_m else 0.0
    if config.model.channels != "rgb" and not all(gsd.values()):
        missing = [paths[fp] for fp, g in gsd.items() if not g]
        raise TrainingError(
            f"the spectral channels need each raster's ground resolution, unknown for "
            f"{', '.join(missing[:3])}. Georeference those rasters (or pre-compute them with "
            "--gsd), or train with model.channels = 'rgb'."
        )
    sizes = Counter(max(s.window.width, s.window.height) for s in train)
    tile_size = config.model.tile_size or sizes.most_common(1)[0][0]
    source = TileSource(
        path,
        paths,
        threshold=d.threshold,
        stage_id=d.stage_id,
        bands=config.raster.bands,
        stretch=(config.raster.stretch_low, config.raster.stretch_high),
        gsd=gsd,
    )
    return DataPlan(
        source,
        train,
        val,
        int(tile_size),
        {
            "tiles": len(samples),
            "train_tiles": len(train),
            "train_tiles_without_targets": sum(1 for s in train if s.n_targets == 0),
            "val_tiles": len(val),
            "buffer_tiles": sum(1 for v in split.values() if v == "buffer"),
            "train_targets": n_targets,
            "val_targets": sum(s.n_targets for s in val),
            "rasters": len(paths),
        },
        gsd_m=statistics.median(g for g in gsd.values() if g) if any(gsd.values()) else None,
        train_all=train_all,
    )


class EpochSampler(torch.utils.data.Sampler):
    """The items of one epoch, ``(epoch, index)``, in an order drawn from ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int, max_items: int | None = None) -> None:
        self.n = n
        self.seed = seed
        self.max_items = max_items
        self.epoch = 0
        self.skip = 0

    def order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return order[: self.max_items] if self.max_items else order

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in self.order(self.epoch)[self.skip :]])

    def __len__(self) -> int:
        return max(0, len(self.order(self.epoch)) - self.skip)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    reason: str  # "completed" or "stopped"
    epoch: int  # epochs completed
    step: int  # optimiser steps done
    checkpoint: Path | None
    metrics: dict[str, Any] | None
    seconds: float


class MaskRCNNTrainer:
    """One training run (see the module docstring). ``run()`` does the work.

    ``emit`` receives each event as a dict (default: dropped); ``stop`` is checked after every
    step; ``resume`` names a checkpoint to continue from.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        emit: Emit | None = None,
        stop: threading.Event | None = None,
        resume: str | os.PathLike | None = None,
    ) -> None:
        self.config = config
        self._emit_fn = emit
        self.stop = stop or threading.Event()
        self.resume = Path(resume) if resume is not None else None
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------- events
    def emit(self, event: str, **fields: Any) -> None:
        if self._emit_fn is not None:
            self._emit_fn({"event": event, "time": now(), **fields})

    def warn(self, message: str, category: type[Warning] = SolarDeskWarning) -> None:
        self.emit("warning", message=message)
        warnings.warn(message, category, stacklevel=3)

    # ------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        try:
            out_dir = Path(self.config.output_dir)
            _check_output_dir(out_dir)  # before any work, not after an epoch
            with _output_dir_held(out_dir):
                return self._run()
        except BaseException as e:
            if not isinstance(e, (KeyboardInterrupt, GeneratorExit)):
                self.emit("error", type=type(e).__name__, message=str(e))
                e._emitted = True  # type: ignore[attr-defined]  # the CLI must not repeat it
            raise

    def _run(self) -> TrainResult:
        from solardesk_maskrcnn.dataset import CacheTileDataset, collate, worker_init
        from solardesk_maskrcnn.model import build_model, load_initial_weights, model_meta

        cfg = self.config
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        device, why = select_device(cfg.run.device)
        if why:
            self.warn(why, CudaUnavailableWarning)
        use_amp = cfg.run.amp and device.type == "cuda"

        resume_data = None
        if self.resume is not None:
            resume_data = load_checkpoint(self.resume)
            check_compatible(resume_data, cfg.model, self.resume)

        plan = plan_data(cfg)
        tile_size = plan.tile_size
        if resume_data is not None:
            tile_size = int(resume_data["model_meta"].get("tile_size") or tile_size)

        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg.model, tile_size)
        if resume_data is None and cfg.model.weights is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                info = load_initial_weights(model, cfg.model.weights)
            for w in caught:
                self.warn(str(w.message))
            self.emit("weights", path=str(cfg.model.weights), **info)
        model.to(device)

        o = cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if o.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

        bs = o.batch_size
        max_items = cfg.run.max_steps_per_epoch * bs if cfg.run.max_steps_per_epoch else None
        sampler = EpochSampler(len(plan.train), cfg.run.seed, max_items)
        steps_per_epoch = math.ceil(len(sampler.order(0)) / bs)
        total_steps = steps_per_epoch * o.epochs
        warmup = min(o.warmup_steps, total_steps // 10)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, total_steps, warmup, o.warmup_factor, o.min_lr_ratio),
        )
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        epoch, step_in_epoch, step = 0, 0, 0
        last_metrics = None
        if resume_data is not None:
            load_model_state(model, resume_data, self.resume)
            saved = ((resume_data.get("config") or {}).get("optim") or {}).get("optimizer")
            if saved is not None and saved != cfg.optim.optimizer:
                raise TrainingError(
                    f"{self.resume}: it was trained with optim.optimizer {saved!r}, this config "
                    f"says {cfg.optim.optimizer!r}; the optimiser changed. Resume with the same "
                    "optim.optimizer, or train anew (model.weights can start from this "
                    "checkpoint)."
                )
            try:
                optimizer.load_state_dict(resume_data["optimizer"])
                scheduler.load_state_dict(resume_data["scheduler"])
                if resume_data.get("scaler"):
                    scaler.load_state_dict(resume_data["scaler"])
            except (KeyError, ValueError, RuntimeError) as e:
                raise TrainingError(
                    f"{self.resume}: its optimiser state does not fit this config ({e}); the "
                    "optimiser changed. Resume with the same optim.optimizer, or train anew."
                ) from e
            # The config's hyper-parameters win over the saved ones (the optimiser's moments
            # and the step are kept): a lower learning rate is the usual change on resume.
            scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
            factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
            for g in optimizer.param_groups:
                g["initial_lr"], g["weight_decay"] = o.lr, o.weight_decay
                g["lr"] = o.lr * factor  # (LambdaLR's own expression: the same bits)
                if o.optimizer == "sgd":
                    g["momentum"] = o.momentum
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
            epoch = int(resume_data["epoch"])
            step_in_epoch = int(resume_data.get("step_in_epoch", 0))
            step = int(resume_data["step"])
            last_metrics = resume_data.get("metrics")
            if "rng_torch" in resume_data:
                torch.set_rng_state(resume_data["rng_torch"])
            if step_in_epoch >= steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0

        dataset = CacheTileDataset(
            plan.source,
            plan.train,
            spectral=cfg.model.channels != "rgb",
            augment=cfg.data.augment,
            noise_aware=o.noise_aware,
            weight_floor=o.weight_floor,
            ignore_uncertain=o.ignore_uncertain,
            seed=cfg.run.seed,
        )
        nw = cfg.run.num_workers
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            collate_fn=collate,
            num_workers=nw,
            worker_init_fn=worker_init if nw else None,
            # spawn: a forked worker can hang after OpenCV ran in the parent (DESIGN.md §7)
            multiprocessing_context="spawn" if nw else None,
            persistent_workers=bool(nw),
            pin_memory=device.type == "cuda",
            # Its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.run.seed),
        )
        meta = model_meta(cfg.model, tile_size, plan.gsd_m)
        out_dir = Path(cfg.output_dir)
        if resume_data is None:
            # A new run into a folder that holds an earlier run's checkpoints keeps them (they
            # were replaced, and pruned with this run's). Moved only now: the initial weights
            # may be one of them (self-training's next round), and they are loaded.
            kept = _set_aside_earlier_run(out_dir)
            if kept is not None:
                runs, size = _earlier_runs_held(out_dir)
                self.warn(
                    f"{out_dir} held the checkpoints of an earlier run: they are kept in {kept} "
                    f"(to continue it, pass --resume-from {kept / 'last.pt'}). "
                    f"{kept.parent} now holds {runs} earlier run{'s' * (runs != 1)}, "
                    f"{size / 2**20:.0f} MiB: delete those you no longer need."
                )
        self.emit(
            "started",
            device=str(device),
            amp=use_amp,
            backbone=cfg.model.backbone,
            channels=meta["channels"],
            tile_size=tile_size,
            epochs=o.epochs,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            batch_size=bs,
            start_epoch=epoch + 1,
            start_step=step,
            resumed_from=str(self.resume) if self.resume else None,
            output_dir=str(out_dir),
            data=plan.stats,
            pid=os.getpid(),
        )
        if plan.val and cfg.run.eval_every and not plan.stats.get("val_targets"):
            self.warn(
                f"none of the {len(plan.val)} validation tiles holds a pseudo-label at or above "
                f"confidence {cfg.data.threshold} (or one accepted in review): validation "
                "precision, recall and AP measure nothing and are reported as n/a, unless the "
                "model finds something there (every find is then a false positive). Lower "
                "data.threshold, accept candidates in the review dock, or pre-compute more "
                "imagery."
            )

        def payload(ep: int, in_epoch: int) -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_amp else {},
                "epoch": ep,
                "step_in_epoch": in_epoch,
                "step": step,
                "config": cfg.model_dump(mode="json"),
                "model_meta": meta,
                "rng_torch": torch.get_rng_state(),
                "metrics": last_metrics,
            }

        checkpoint: Path | None = self.resume
        rate_t0, rate_steps = time.perf_counter(), 0
        while epoch < o.epochs:
            sampler.epoch, sampler.skip = epoch, step_in_epoch * bs
            model.train()
            sums: dict[str, float] = {}
            n_in_epoch = 0
            for images, targets in loader:
                losses = self._step(
                    model, optimizer, scheduler, scaler, images, targets, device, use_amp, epoch
                )
                step += 1
                step_in_epoch += 1
                n_in_epoch += 1
                rate_steps += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                if step % cfg.run.log_every == 0 or step_in_epoch == steps_per_epoch:
                    dt = time.perf_counter() - rate_t0
                    rate = rate_steps / dt if dt > 0 else 0.0
                    self.emit(
                        "progress",
                        epoch=epoch + 1,
                        epochs=o.epochs,
                        step=step_in_epoch,
                        steps_per_epoch=steps_per_epoch,
                        global_step=step,
                        total_steps=total_steps,
                        loss=losses["loss"],
                        losses={k: v for k, v in losses.items() if k != "loss"},
                        lr=optimizer.param_groups[0]["lr"],
                        steps_per_s=rate,
                        eta_s=(total_steps - step) / rate if rate > 0 else None,
                    )
                if self.stop.is_set():
                    if step_in_epoch >= steps_per_epoch:
                        break  # the epoch's last step: its validation and checkpoint, then stop
                    checkpoint = save_checkpoint(out_dir / "last.pt", payload(epoch, step_in_epoch))
                    self.emit(
                        "checkpoint",
                        path=str(checkpoint),
                        epoch=epoch,
                        global_step=step,
                        partial=True,
                    )
                    return self._finish("stopped", epoch, step, checkpoint, last_metrics)
            mean = {k: v / max(1, n_in_epoch) for k, v in sums.items()}
            epoch += 1
            step_in_epoch = 0
            val = None
            if cfg.run.eval_every and epoch % cfg.run.eval_every == 0 and plan.val:
                val = self.validate(model, plan, device)
                last_metrics = val
            flat = {f"val_{k}": v for k, v in (val or {}).items() if k in _PLOTTED}
            self.emit(
                "metrics",
                epoch=epoch,
                global_step=step,
                train_loss=mean.get("loss"),
                **flat,
                train=mean,
                val=val,
            )
            checkpoint = self._save_epoch(out_dir, epoch, payload(epoch, 0))
            self.emit(
                "checkpoint", path=str(checkpoint), epoch=epoch, global_step=step, partial=False
            )
            if self.stop.is_set() and epoch < o.epochs:
                # (A stop heard on the final epoch's last step came after all the work: the
                # run is complete, and reported so.)
                return self._finish("stopped", epoch, step, checkpoint, last_metrics)
        return self._finish("completed", epoch, step, checkpoint, last_metrics)

    def _finish(self, reason, epoch, step, checkpoint, metrics) -> TrainResult:
        seconds = time.perf_counter() - self.t0
        self.emit(
            "finished",
            reason=reason,
            stopped=reason == "stopped",
            epoch=epoch,
            global_step=step,
            checkpoint=str(checkpoint) if checkpoint else None,
            seconds=seconds,
        )
        return TrainResult(reason, epoch, step, checkpoint, metrics, seconds)

    def _step(self, model, optimizer, scheduler, scaler, images, targets, device, use_amp, epoch):
        cfg = self.config
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        try:
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            total = float(loss.detach())
            if not math.isfinite(total):
                detail = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                raise TrainingError(
                    f"the loss became {total} at epoch {epoch + 1}, step {scheduler.last_epoch} "
                    f"({detail}; learning rate {optimizer.param_groups[0]['lr']:.3g}). Training "
                    "diverged: lower optim.lr, lengthen optim.warmup_steps or keep "
                    "optim.grad_clip_norm on, and resume from the last checkpoint in "
                    f"{cfg.output_dir} (or start anew)."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
            scale = scaler.get_scale() if use_amp else 1.0
            scaler.step(optimizer)
            scaler.update()
            # AMP skips the optimiser step (and lowers the scale) when gradients overflow, as
            # it does while it calibrates the scale in the first steps: the schedule waits too.
            if not use_amp or scaler.get_scale() >= scale:
                scheduler.step()
        except torch.cuda.OutOfMemoryError as e:
            raise TrainingError(
                f"the GPU ran out of memory with batch size {cfg.optim.batch_size} and "
                f"{images[0].shape[-1]} px tiles ({images[0].shape[0]} channels, backbone "
                f"{cfg.model.backbone}). Lower optim.batch_size, use smaller tiles "
                "(model.tile_size and the pre-compute's --tile), or a lighter backbone "
                "(resnet18_fpn, mobilenet_v3_large_fpn)."
            ) from e
        values["loss"] = total
        return values

    def _save_epoch(self, out_dir: Path, epoch: int, payload: dict[str, Any]) -> Path:
        path = save_checkpoint(out_dir / f"epoch-{epoch:03d}.pt", payload)
        last = out_dir / "last.pt"
        tmp = out_dir / "last.pt.part"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # the same bytes, no second write
            os.replace(tmp, last)
        except OSError:
            save_checkpoint(last, payload)
        kept = sorted(_epoch_checkpoints(out_dir))  # by epoch: epoch-1000 after epoch-999
        for _, old in kept[: -self.config.run.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def validate(self, model, plan: DataPlan, device) -> dict[str, Any]:
        """Object metrics and AP on the validation tiles, against their pseudo-labels."""
        from solardesk_maskrcnn.evaluate import cache_items
        from solardesk_maskrcnn.predict import evaluate_items

        cfg = self.config
        samples = plan.val[: cfg.run.eval_max_tiles]
        ev = evaluate_items(
            model,
            cache_items(plan.source, samples, spectral=cfg.model.channels != "rgb"),
            device,
            score_threshold=cfg.run.score_threshold,
            batch_size=cfg.optim.batch_size,
        )
        model.train()
        return ev.summary()


def train(
    config: TrainConfig,
    *,
    emit: Emit | None = None,
    stop: threading.Event | None = None,
    resume: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a Mask R-CNN on the cache's pseudo-labels (the ``maskrcnn`` Trainer contribution)."""
    return MaskRCNNTrainer(config, emit=emit, stop=stop, resume=resume).run()


def _epoch_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the epoch checkpoints in ``out_dir`` (``epoch-NNN.pt``)."""
    found = []
    for path in out_dir.glob("epoch-*.pt"):
        number = path.stem.removeprefix("epoch-")
        if number.isdigit():
            found.append((int(number), path))
    return found


def _check_output_dir(out_dir: Path) -> None:
    """Make ``out_dir`` and write a file there, or raise :class:`TrainingError` saying why:
    a read-only place, a full disk or a file in the way found before the first epoch, not
    after it."""
    probe = out_dir / f".write-test-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb") as f:
            f.write(b"\0" * 4096)
    except OSError as e:
        raise TrainingError(
            f"cannot write checkpoints to output_dir {out_dir}: {e}. Choose a writable folder "
            "with free space (output_dir in the config, or --set output_dir=...)."
        ) from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


@contextlib.contextmanager
def _output_dir_held(out_dir: Path) -> Iterator[None]:
    """One training run per output folder: a second one would replace the first's
    ``last.pt`` and epoch checkpoints with its own, and set them aside as an earlier run."""
    from solardesk.core.files import FolderBusyError, hold_folder

    try:
        with hold_folder(out_dir):
            yield
    except FolderBusyError as e:
        by = f" (process {e.pid})" if e.pid is not None else ""
        raise TrainingError(
            f"output_dir {out_dir} is in use by another training run{by}: its checkpoints "
            "would be replaced. Wait for that run to end or stop it, or choose another "
            "output_dir (in the config, or --set output_dir=...)."
        ) from None


def _earlier_runs_held(out_dir: Path) -> tuple[int, int]:
    """``(runs, bytes)`` kept in ``out_dir/earlier-runs/``: nothing deletes them by itself."""
    runs = [d for d in (out_dir / "earlier-runs").iterdir() if d.is_dir()]
    size = sum(f.stat().st_size for d in runs for f in d.iterdir() if f.is_file())
    return len(runs), size


def _set_aside_earlier_run(out_dir: Path) -> Path | None:
    """Move an earlier run's ``last.pt`` and epoch checkpoints from ``out_dir`` into
    ``out_dir/earlier-runs/<time of its last checkpoint>/``; returns that folder (None when
    there were none)."""
    found = [p for p in (out_dir / "last.pt",) if p.is_file()]
    found += [p for _, p in _epoch_checkpoints(out_dir)]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in found)))
    dest = out_dir / "earlier-runs" / stamp
    k = 1
    while dest.exists():
        k += 1
        dest = out_dir / "earlier-runs" / f"{stamp}-{k}"
    dest.mkdir(parents=True)
    for p in found:
        os.replace(p, dest / p.name)
    return dest

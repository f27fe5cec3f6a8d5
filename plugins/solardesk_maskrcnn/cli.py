"""The plugin's commands: ``solardesk train``, ``solardesk evaluate``, ``solardesk self-train``.

This module is imported whenever ``solardesk`` starts (to add the commands), so it imports
neither torch nor anything heavy at module level: each command imports what it needs.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import click

from solardesk.errors import ConfigError, SolarDeskError

__all__ = ["evaluate", "self_train", "train"]


def _apply_overrides(data: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """``section.name=value`` items (values parsed as JSON when they are) into ``data``."""
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--set")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = name.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise click.BadParameter(f"'{name}' is not a settings field", param_hint="--set")
        node[leaf] = value
    return data


def _load_config(path: Path, overrides: tuple[str, ...]):
    from solardesk_maskrcnn.config import parse_train_config

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such training config file.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: is not a readable JSON file ({e}). Fix or recreate it.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config holds one JSON object.")
    data = _apply_overrides(data, overrides)
    return parse_train_config(data, str(path)).resolved(path.resolve().parent)


_SET_HELP = (
    "Override one config field (repeatable), e.g. --set optim.epochs=2 --set run.device=cpu."
)


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--resume", is_flag=True, help="Continue from last.pt in the output folder.")
@click.option(
    "--resume-from",
    type=click.Path(path_type=Path),
    help="Continue from this checkpoint (implies --resume).",
)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.NAME=VALUE", help=_SET_HELP)
@click.option("--no-stdin", is_flag=True, help="Do not read 'stop' requests from standard input.")
def train(
    config_path: Path,
    resume: bool,
    resume_from: Path | None,
    overrides: tuple[str, ...],
    no_stdin: bool,
) -> None:
    """Train a Mask R-CNN on the pseudo-labels of a mask cache, as CONFIG (JSON) describes.

    Progress goes to stdout as JSON lines (one event per line: started, progress, metrics,
    checkpoint, warning, finished, error). A checkpoint is written after each epoch. SIGTERM,
    Ctrl-C or a line "stop" on stdin finish the current step, save last.pt and exit 0;
    --resume continues from there.

    \b
    A minimal CONFIG: {"cache": "project.sqlite"}. Sections and their defaults: data
    (threshold 0.85, val_fraction 0.2, split_block_m 250), model (backbone resnet50_fpn_v2,
    channels rgb), optim (epochs 12, batch_size 2, adamw, lr 2e-4), run (device auto).
    """
    from solardesk_maskrcnn.events import JsonLines, StopListener

    emit = JsonLines(sys.stdout)
    try:
        config = _load_config(config_path, overrides)
        checkpoint = resume_from
        if resume and checkpoint is None:
            checkpoint = Path(config.output_dir) / "last.pt"
        from solardesk_maskrcnn.train import MaskRCNNTrainer

        stop = threading.Event()

        def requested(why: str) -> None:
            emit({"event": "stop_requested", "by": why})

        with StopListener(stop, listen_stdin=not no_stdin, on_request=requested):
            trainer = MaskRCNNTrainer(config, emit=emit, stop=stop, resume=checkpoint)
            result = trainer.run()
    except SolarDeskError as e:
        if not getattr(e, "_emitted", False):
            emit({"event": "error", "type": type(e).__name__, "message": str(e)})
        raise
    click.echo(
        f"training {result.reason}: epoch {result.epoch}, step {result.step}, checkpoint "
        f"{result.checkpoint}",
        err=True,
    )


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def _parse_where(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"'{value}' is not KEY=VALUE", param_hint="--truth-where")
    return key.strip(), val.strip()


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("rasters", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    help="Evaluate on this mask cache's tiles (RASTERS then only locate moved rasters).",
)
@click.option(
    "--split",
    type=click.Choice(["val", "train", "all"]),
    default="val",
    show_default=True,
    help="Which of the cache's tiles.",
)
@click.option(
    "--truth",
    type=click.Path(path_type=Path),
    help="Ground truth: a vector file (GeoJSON, GPKG, SHP) or a folder of <raster stem>.png "
    "masks. Default: the cache's pseudo-labels.",
)
@click.option(
    "--truth-where",
    metavar="KEY=VALUE",
    help="Keep only truth features whose property KEY equals VALUE (e.g. class_name=solar).",
)
@click.option(
    "--truth-value",
    type=int,
    help="Pixel value of panels in truth PNGs (default: any non-zero pixel).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    help="Confidence of pseudo-labels used as truth (default: the checkpoint's).",
)
@click.option(
    "--score-threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Detections counted from this score.",
)
@click.option(
    "--iou-threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Mask IoU for a detection to match.",
)
@click.option("--max-tiles", type=click.IntRange(min=1), help="Evaluate at most this many tiles.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="Where the model runs.",
)
@click.option("--batch-size", default=2, show_default=True, help="Tiles per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(
    checkpoint: Path,
    rasters: tuple[Path, ...],
    cache_path: Path | None,
    split: str,
    truth: Path | None,
    truth_where: str | None,
    truth_value: int | None,
    threshold: float | None,
    score_threshold: float,
    iou_threshold: float,
    max_tiles: int | None,
    device: str,
    batch_size: int,
    as_json: bool,
) -> None:
    """Score CHECKPOINT: object precision, recall and F1 at IoU >= 0.5, COCO mask and box AP,
    and panel area error, against pseudo-labels or ground truth.

    Tiles come from --cache (its validation split by default) or, without a cache, from a grid
    over RASTERS at the model's tile size; then --truth is required.
    """
    from solardesk.core.metrics import format_table
    from solardesk_maskrcnn.evaluate import evaluate as run_evaluation

    def progress(n: int) -> None:
        if n % 10 == 0:
            click.echo(f"evaluated {n} tiles", err=True)

    ev, about = run_evaluation(
        checkpoint,
        cache=cache_path,
        rasters=rasters,
        truth=truth,
        truth_where=_parse_where(truth_where),
        truth_value=truth_value,
        split=split,
        threshold=threshold,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_tiles=max_tiles,
        device=device,
        batch_size=batch_size,
        on_tile=progress,
    )
    summary = ev.summary()
    if as_json:
        from solardesk_maskrcnn.events import jsonable

        click.echo(json.dumps(jsonable({**about, **summary}), indent=2))
        return
    click.echo(
        f"{about['checkpoint']} ({about['backbone']}, {about['channels']}, epoch "
        f"{about['epoch']}) on {about['tiles_from']}\ntruth: {about['truth']}\n"
    )
    click.echo(format_table(summary))


# --------------------------------------------------------------------------------------------
# self-train
# --------------------------------------------------------------------------------------------
@click.command("self-train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Model that labels the tiles (default: last.pt in the output folder).",
)
@click.option("--rounds", default=1, show_default=True, help="Label-and-retrain rounds.")
@click.option(
    "--min-score",
    default=0.9,
    show_default=True,
    help="Detections at or above this score become pseudo-labels (provenance 'model').",
)
@click.option(
    "--epochs",
    type=int,
    help="Epochs of each retraining round (default: the config's optim.epochs).",
)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.NAME=VALUE", help=_SET_HELP)
@click.option("--no-stdin", is_flag=True, help="Do not read 'stop' requests from standard input.")
def self_train(
    config_path: Path,
    checkpoint: Path | None,
    rounds: int,
    min_score: float,
    epochs: int | None,
    overrides: tuple[str, ...],
    no_stdin: bool,
) -> None:
    """Self-training: label the training tiles with the model, keep its confident detections
    where the spectral pseudo-label was weak or missing, and retrain from the checkpoint.

    The model's labels are stored as a new cache row per tile (stage "selftrain", provenance
    "model"), so the spectral rows stay and reviews are kept. Events as for `solardesk train`.
    """
    from solardesk_maskrcnn.events import JsonLines, StopListener
    from solardesk_maskrcnn.selftrain import self_train as run_self_train

    emit = JsonLines(sys.stdout)
    try:
        config = _load_config(config_path, overrides)
        stop = threading.Event()

        def requested(why: str) -> None:
            emit({"event": "stop_requested", "by": why})

        with StopListener(stop, listen_stdin=not no_stdin, on_request=requested):
            result = run_self_train(
                config,
                checkpoint=checkpoint,
                rounds=rounds,
                min_score=min_score,
                epochs=epochs,
                emit=emit,
                stop=stop,
            )
    except SolarDeskError as e:
        if not getattr(e, "_emitted", False):  # (the trainer may have sent it already)
            emit({"event": "error", "type": type(e).__name__, "message": str(e)})
        raise
    click.echo(f"self-training {result['reason']}: {result['rounds']} round(s)", err=True)

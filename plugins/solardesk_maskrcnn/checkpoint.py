"""Checkpoints: everything a run needs to continue, as plain state dicts.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True`` (no
pickled code ever runs when one is opened): ``model``, ``optimizer``, ``scheduler`` and
``scaler`` state dicts, the ``epoch`` and ``step_in_epoch`` where the run stands, the global
optimiser ``step``, the ``config`` (JSON form of :class:`TrainConfig`), ``model_meta`` (what the
network expects: channels, normalisation, tile size, classes), the torch RNG state and the last
validation metrics. Files are written to a ``.part`` file and renamed, so a killed run never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from solardesk import __version__
from solardesk.core.files import remove_stale_temporaries, replace_durably, temporary_beside
from solardesk.errors import ConfigError, ModelError
from solardesk_maskrcnn.config import ModelSettings, TrainConfig, parse_train_config

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "check_compatible",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]

FORMAT = "solardesk.maskrcnn.checkpoint"
FORMAT_VERSION = 1
#: Model settings that change the network's tensors: a checkpoint fits only the same values.
ARCHITECTURE_FIELDS = ("backbone", "channels")


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus format, version and date) atomically to ``path``."""
    p = Path(path)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "solardesk_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **payload,
    }
    # A new file of its own: never one that exists (a name left by a killed run may be a hard
    # link to an epoch's checkpoint, which writing through it would damage).
    tmp = temporary_beside(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(p)  # what a kill -9 during an earlier save left
        with open(tmp, "xb") as f:
            torch.save(data, f)
        replace_durably(tmp, p)
    except (OSError, RuntimeError) as e:  # (torch.save reports a full disk as RuntimeError)
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"cannot write checkpoint {p}: {e}. Free disk space or choose another output_dir."
        ) from e
    return p


def _where_to_resume(missing: Path) -> str:
    """What to do about a checkpoint that is not there: a new run set the earlier run's aside
    in ``earlier-runs/`` (and may have stopped before its own first checkpoint)."""
    aside = sorted(
        (q for q in missing.parent.glob(f"earlier-runs/*/{missing.name}") if q.is_file()),
        key=lambda q: q.stat().st_mtime,
    )
    if aside:
        return (
            f"A later run set the earlier run's checkpoints aside; the newest is {aside[-1]}: "
            f"resume with --resume-from {aside[-1]}, or train without --resume to start anew."
        )
    return "Check the path, or train without --resume to start anew."


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a :class:`ModelError` names what is wrong.

    Refused: a missing file, a file torch cannot read (truncated, damaged, not a torch file,
    or needing pickled code), and a torch file that is not a SolarDesk checkpoint of a format
    this version understands.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such checkpoint. {_where_to_resume(p)}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(
            f"{p}: is not a readable checkpoint ({type(e).__name__}: {_short(e)}). It may be "
            "truncated or damaged (a full disk, an interrupted copy): delete it and resume from "
            "an earlier epoch-NNN.pt in the same folder, or train without --resume."
        ) from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(
            f"{p}: is a torch file but not a SolarDesk Mask R-CNN checkpoint. To start from "
            "plain weights, name it as model.weights in the config instead of resuming."
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{p}: checkpoint format version {data.get('format_version')} is not "
            f"{FORMAT_VERSION} (written by SolarDesk {data.get('solardesk_version')}). Use the "
            "SolarDesk version that wrote it, or train anew."
        )
    missing = [k for k in ("model", "config", "model_meta", "epoch", "step") if k not in data]
    if missing:
        raise ModelError(f"{p}: checkpoint lacks {', '.join(missing)}; it is damaged. Train anew.")
    return data


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def checkpoint_config(data: Mapping[str, Any], path: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint."""
    try:
        return parse_train_config(dict(data["config"]), f"config stored in {path}")
    except ConfigError as e:
        raise ModelError(
            f"{path}: its stored config is not valid for this SolarDesk ({e}). Train anew."
        ) from e


def check_compatible(
    data: Mapping[str, Any], model: ModelSettings, path: str | os.PathLike
) -> None:
    """Raise :class:`ModelError` if the checkpoint's network differs from ``model``."""
    stored = checkpoint_config(data, path).model
    diffs = [
        f"{f}: checkpoint {getattr(stored, f)!r}, config {getattr(model, f)!r}"
        for f in ARCHITECTURE_FIELDS
        if getattr(stored, f) != getattr(model, f)
    ]
    if diffs:
        raise ModelError(
            f"{path}: was trained with another model configuration ({'; '.join(diffs)}). "
            "Resume with the config it was trained with (its model section), or train "
            "without --resume into another output_dir."
        )


def model_from_checkpoint(path: str | os.PathLike, device: Any = "cpu"):
    """``(model in eval mode, checkpoint dict, TrainConfig)`` rebuilt from a checkpoint."""
    from solardesk_maskrcnn.model import build_model

    data = load_checkpoint(path)
    config = checkpoint_config(data, path)
    tile = int(data["model_meta"].get("tile_size") or config.model.tile_size or 512)
    model = build_model(config.model, tile)
    load_model_state(model, data, path)
    model.to(device).eval()
    return model, data, config


def load_model_state(model: torch.nn.Module, data: Mapping[str, Any], path: Any) -> None:
    """Load the checkpoint's weights; a mismatch is a :class:`ModelError`, not a traceback."""
    try:
        model.load_state_dict(data["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise ModelError(
            f"{path}: its weights do not fit this model ({_short(e)}). It was trained with "
            "another model configuration or SolarDesk version; train anew."
        ) from e

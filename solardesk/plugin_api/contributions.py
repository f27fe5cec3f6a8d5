"""Small frozen descriptions that plugins return from their hooks.

Code is named as ``"module:attr"`` and imported only when first used (as npe2 does), so
listing what a plugin offers never imports torch, onnxruntime or Qt.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from solardesk.errors import PluginError


def resolve(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute (a :class:`PluginError` if not)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise PluginError(f"'{target}' is not of the form 'module:attribute'.")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None) or module_name
        raise PluginError(
            f"cannot import '{module_name}' (needed for '{target}'): {e}. "
            f"Install the missing package ('{missing}') or disable the plugin."
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PluginError(f"'{module_name}' has no attribute '{attr}'.") from e
    return obj


@dataclass(frozen=True)
class Contribution:
    """Base: an id, a human title, and the ``module:attr`` that implements it."""

    id: str
    title: str
    target: str

    def load(self) -> Any:
        return resolve(self.target)


@dataclass(frozen=True)
class PrecomputeStage(Contribution):
    """A per-tile analysis whose results go to the mask cache.

    ``target`` names a callable ``(rgb, valid, gsd, params) -> list[Instance]``;
    ``settings`` names the pydantic model of its parameters; ``version`` is part of the
    cache key, so bumping it recomputes this stage only. ``initializer`` optionally names a
    no-argument callable run once in each worker process before its first tile. ``tiling``
    optionally names a callable ``(settings model[, gsd]) -> (tile_size, overlap) | None``: the
    tiling the stage recommends for those settings (a model's own tile size), used when the
    user names none; one that takes a second argument is asked per raster, with the raster's
    ground resolution in metres per pixel (a model's tile scaled to its own resolution), and
    once with None before any raster is opened.
    ``max_gsd_m``: the coarsest ground resolution (metres per pixel) the stage
    works at; a raster coarser than that is refused before any tile is computed (0: no limit).
    ``parallel``: a job that is not told how many workers to use may run it in one process
    per core (its tiles are single-threaded CPU work); a stage that holds a model or threads
    itself leaves it False, and runs in process unless the user asks for workers.
    """

    version: int = 1
    settings: str = ""
    initializer: str = ""
    tiling: str = ""
    max_gsd_m: float = 0.0
    parallel: bool = False


@dataclass(frozen=True)
class CliCommand(Contribution):
    """A click command (``target`` names the ``click.Command``) added to ``solardesk``."""


@dataclass(frozen=True)
class Detector(Contribution):
    """Something that turns tiles into instances: a model runtime or the spectral analyser."""

    formats: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Trainer(Contribution):
    """A training backend (``target`` names its entry function).

    ``settings`` names the pydantic model of its JSON config (``"module:Class"``): the GUI
    builds the train dock's form from it. Empty: the dock edits a config file only.
    """

    settings: str = ""


@dataclass(frozen=True)
class DockWidget(Contribution):
    """A GUI dock; ``target`` names a QWidget factory in the plugin's own ``_qt`` module."""

    area: str = "right"

"""The open project: a :class:`solardesk.config.ProjectConfig` JSON file and its edits.

The file is the same pydantic model the CLI reads. What only the desktop app needs (vector
layers, ONNX models, the review threshold, layer order and looks) lives in the model's
``plugins`` mapping under the key :data:`GUI_SECTION`, so the file stays valid for every
other reader (see ``docs/adr/0022-project-file-gui-section.md``).

Paths are stored relative to the project file's folder (so a project folder can be moved or
shared) and held absolute in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from solardesk.config import ProjectConfig, RasterSettings, TilingSettings, parse
from solardesk.errors import ConfigError

GUI_SECTION = "gui"
PROJECT_SUFFIX = ".json"
#: Keys of the GUI section that hold paths (relativised on save).
_GUI_PATH_LISTS = ("vectors", "models")


class ProjectSession(QObject):
    """The project being edited. Emits ``changed`` after every edit, ``loaded`` on new/open."""

    changed = Signal()
    loaded = Signal()
    saved = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path: Path | None = None
        self.config = ProjectConfig()
        self.dirty = False

    # -- whole project -----------------------------------------------------------------------
    def new(self, name: str = "Untitled") -> None:
        self.path = None
        self.config = ProjectConfig(name=name)
        self.dirty = False
        self.loaded.emit()

    def open(self, path: str | Path) -> None:
        """Read a project file (:class:`ConfigError` names what is wrong with it)."""
        p = Path(path).resolve()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"{p}: no such project file.") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: is not a readable project file ({e}).") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a project file holds one JSON object.")
        config = parse(ProjectConfig, data, str(p))
        self.config = _with_paths(config, lambda q: _absolute(q, p.parent))
        self.path = p
        self.dirty = False
        self.loaded.emit()

    def save(self, path: str | Path | None = None) -> Path:
        target = Path(path).resolve() if path is not None else self.path
        if target is None:
            raise ConfigError("the project has no file yet; choose where to save it.")
        if target.suffix.lower() != PROJECT_SUFFIX:
            target = target.with_suffix(PROJECT_SUFFIX)
        stored = _with_paths(self.config, lambda q: _relative(q, target.parent))
        text = stored.model_dump_json(indent=2) + "\n"
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot save the project to {target}: {e}") from e
        self.path = target
        self.dirty = False
        self.saved.emit(str(target))
        return target

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def folder(self) -> Path | None:
        return self.path.parent if self.path else None

    # -- edits -------------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        self.config = parse(
            ProjectConfig, {**self.config.model_dump(), **changes}, "project settings"
        )
        self.dirty = True
        self.changed.emit()

    def set_name(self, name: str) -> None:
        self._update(name=name)

    def add_raster(self, path: str | Path) -> bool:
        return bool(self.add_rasters([path]))

    def add_rasters(self, paths: Iterable[str | Path]) -> list[Path]:
        """Add rasters not yet in the project, as one edit; return those added (resolved)."""
        have = set(self.config.rasters)
        new: list[Path] = []
        for path in paths:
            p = Path(path).resolve()
            if p not in have:
                have.add(p)
                new.append(p)
        if new:
            self._update(rasters=[*self.config.rasters, *new])
        return new

    def remove_raster(self, path: str | Path) -> None:
        p = Path(path).resolve()
        self._update(rasters=[r for r in self.config.rasters if r != p])

    def set_cache(self, path: str | Path | None) -> None:
        self._update(cache=Path(path).resolve() if path else None)

    def default_cache_path(self) -> Path:
        """Where a new cache goes: beside the project file, else beside the first raster,
        named after it (one raster) or after the project (several: a folder's name)."""
        if self.path is not None:
            return self.path.with_suffix(".sqlite")
        if self.config.rasters:
            first = self.config.rasters[0]
            stem = first.stem
            if len(self.config.rasters) > 1:
                stem = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", self.name).strip(" ._") or stem
            return first.with_name(stem + ".solardesk.sqlite")
        return Path.cwd() / "solardesk-cache.sqlite"

    def set_tiling(self, tiling: TilingSettings) -> None:
        self._update(tiling=tiling.model_dump())

    def set_raster_settings(self, settings: RasterSettings) -> None:
        self._update(raster=settings.model_dump())

    def plugin_settings(self, plugin: str) -> dict[str, Any]:
        return dict(self.config.plugins.get(plugin, {}))

    def set_plugin_settings(self, plugin: str, values: dict[str, Any]) -> None:
        plugins = dict(self.config.plugins)
        plugins[plugin] = dict(values)
        self._update(plugins=plugins)

    # -- the GUI's own section ----------------------------------------------------------------
    def gui(self, key: str, default: Any = None) -> Any:
        return self.config.plugins.get(GUI_SECTION, {}).get(key, default)

    def set_gui(self, key: str, value: Any) -> None:
        section = dict(self.config.plugins.get(GUI_SECTION, {}))
        if section.get(key) == value:
            return
        section[key] = value
        self.set_plugin_settings(GUI_SECTION, section)

    def vectors(self) -> list[Path]:
        return [Path(p) for p in self.gui("vectors", [])]

    def add_vector(self, path: str | Path) -> bool:
        p = str(Path(path).resolve())
        items = self.gui("vectors", [])
        if p in items:
            return False
        self.set_gui("vectors", [*items, p])
        return True

    def remove_vector(self, path: str | Path) -> None:
        p = str(Path(path).resolve())
        self.set_gui("vectors", [v for v in self.gui("vectors", []) if v != p])

    def models(self) -> list[Path]:
        return [Path(p) for p in self.gui("models", [])]

    def add_model(self, path: str | Path) -> bool:
        p = str(Path(path).resolve())
        items = self.gui("models", [])
        if p in items:
            return False
        self.set_gui("models", [*items, p])
        return True


def _absolute(p: str | Path, base: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _relative(p: str | Path, base: Path) -> Path:
    p = Path(p)
    try:
        return Path(os.path.relpath(p, base))
    except ValueError:  # another drive (Windows): keep it absolute
        return p


def _with_paths(config: ProjectConfig, fix) -> ProjectConfig:
    """``config`` with every path passed through ``fix`` (rasters, cache, GUI path lists)."""
    data = config.model_dump()
    data["rasters"] = [fix(r) for r in config.rasters]
    data["cache"] = fix(config.cache) if config.cache else None
    gui = dict(data["plugins"].get(GUI_SECTION, {}))
    for key in _GUI_PATH_LISTS:
        if key in gui:
            gui[key] = [str(fix(v)) for v in gui[key]]
    if gui:
        data["plugins"] = {**data["plugins"], GUI_SECTION: gui}
    return ProjectConfig.model_validate(data)

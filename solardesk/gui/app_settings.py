"""What the desktop app remembers between sessions (QSettings): recent projects, window
layout, disabled plugins.

Values are stored as JSON strings: QSettings returns a one-element list as a plain string on
some back-ends, and JSON keeps lists lists everywhere. Project content (rasters, cache,
parameters) belongs in the project file, not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "SolarDesk"
APPLICATION = "SolarDesk"
MAX_RECENT = 10

_RECENT = "projects/recent"
_DISABLED = "plugins/disabled"
_GEOMETRY = "window/geometry"
_STATE = "window/state"


class AppSettings:
    """Typed access to the app's QSettings (INI format, user scope)."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.q = qsettings or QSettings(
            QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION
        )

    def _get_json(self, key: str, default: Any) -> Any:
        raw = self.q.value(key)
        if raw in (None, ""):
            return default
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            return default

    def _set_json(self, key: str, value: Any) -> None:
        self.q.setValue(key, json.dumps(value))
        self.q.sync()

    # -- recent projects ----------------------------------------------------------------------
    def recent_projects(self) -> list[Path]:
        return [Path(p) for p in self._get_json(_RECENT, []) if isinstance(p, str)]

    def add_recent_project(self, path: str | Path) -> list[Path]:
        p = str(Path(path).resolve())
        items = [q for q in self._get_json(_RECENT, []) if q != p]
        items.insert(0, p)
        self._set_json(_RECENT, items[:MAX_RECENT])
        return self.recent_projects()

    def clear_recent_projects(self) -> None:
        self._set_json(_RECENT, [])

    # -- plugins ----------------------------------------------------------------------------
    def disabled_plugins(self) -> set[str]:
        return {str(n) for n in self._get_json(_DISABLED, [])}

    def set_plugin_enabled(self, name: str, enabled: bool) -> None:
        disabled = self.disabled_plugins()
        if enabled:
            disabled.discard(name)
        else:
            disabled.add(name)
        self._set_json(_DISABLED, sorted(disabled))

    # -- window ------------------------------------------------------------------------------
    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self.q.setValue(_GEOMETRY, geometry)
        self.q.setValue(_STATE, state)
        self.q.sync()

    def window_geometry(self) -> QByteArray | None:
        v = self.q.value(_GEOMETRY)
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        v = self.q.value(_STATE)
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    # -- free values --------------------------------------------------------------------------
    def value(self, key: str, default: Any = None) -> Any:
        return self._get_json(key, default)

    def set_value(self, key: str, value: Any) -> None:
        self._set_json(key, value)

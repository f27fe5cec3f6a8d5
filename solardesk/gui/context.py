"""What every dock (builtin or contributed by a plugin) is given: the app's shared objects.

A plugin's ``DockWidget`` factory is called with an :class:`AppContext` when it accepts one
argument (napari passes its viewer the same way), so a plugin dock can read the layers, the
project and the map, run jobs and post messages without reaching into the main window.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from solardesk.gui.app_settings import AppSettings
    from solardesk.gui.layers import LayerList
    from solardesk.gui.map_view import MapView
    from solardesk.gui.notifications import NotificationCenter
    from solardesk.gui.project import ProjectSession
    from solardesk.gui.workers import JobRunner
    from solardesk.plugin_api import PluginManager


def default_solardesk_command() -> list[str]:
    """How the app runs ``solardesk`` subcommands: this interpreter, ``-m solardesk``."""
    return [sys.executable, "-m", "solardesk"]


@dataclass
class AppContext:
    settings: AppSettings
    plugin_manager: PluginManager
    notifications: NotificationCenter
    jobs: JobRunner  #: long jobs (pre-compute)
    io: JobRunner  #: short reads for the map and the panels
    edits: JobRunner  #: cache edits, one at a time, in order
    layers: LayerList
    project: ProjectSession
    map_view: MapView | None = None
    #: The command line that starts ``solardesk`` (tests swap in a fake).
    solardesk_command: list[str] = field(default_factory=default_solardesk_command)

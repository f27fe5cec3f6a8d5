"""The API that plugins, builtin or third-party, are written against."""

from solardesk.plugin_api._specs import hookimpl, hookspec
from solardesk.plugin_api.contributions import (
    CliCommand,
    Contribution,
    Detector,
    DockWidget,
    PrecomputeStage,
    Trainer,
    resolve,
)
from solardesk.plugin_api.manager import (
    GROUP,
    PluginManager,
    PluginRecord,
    get_plugin_manager,
    reset_plugin_manager,
)

__all__ = [
    "GROUP",
    "CliCommand",
    "Contribution",
    "Detector",
    "DockWidget",
    "PluginManager",
    "PluginRecord",
    "PrecomputeStage",
    "Trainer",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "reset_plugin_manager",
    "resolve",
]

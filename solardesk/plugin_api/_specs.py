"""Hook specifications: what a SolarDesk plugin may contribute.

A plugin is a module (or object) named by an entry point in the group ``solardesk.plugins``
that implements any of these hooks with :data:`hookimpl`. Each hook returns a list of
frozen contribution descriptions; nothing heavy is imported until a contribution is used.
"""

from __future__ import annotations

import pluggy

from solardesk.plugin_api.contributions import (
    CliCommand,
    Detector,
    DockWidget,
    PrecomputeStage,
    Trainer,
)

PROJECT = "solardesk"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class SolarDeskHooks:
    @hookspec
    def solardesk_precompute_stages(self) -> list[PrecomputeStage]:
        """Per-tile analyses that fill the mask cache."""

    @hookspec
    def solardesk_cli_commands(self) -> list[CliCommand]:
        """click commands added to the ``solardesk`` command line."""

    @hookspec
    def solardesk_detectors(self) -> list[Detector]:
        """Runtimes that detect panels on tiles."""

    @hookspec
    def solardesk_trainers(self) -> list[Trainer]:
        """Training backends."""

    @hookspec
    def solardesk_dock_widgets(self) -> list[DockWidget]:
        """GUI docks."""

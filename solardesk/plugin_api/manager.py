"""Discover and load plugins from the entry-point group ``solardesk.plugins``.

Each entry point loads inside its own try/except and is recorded (name, distribution,
version, ok, error), so one broken plugin never breaks the application: the others load, and
the Plugins dialog and ``solardesk plugins`` say what went wrong and what to install.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from solardesk.errors import PluginError
from solardesk.plugin_api._specs import PROJECT, SolarDeskHooks
from solardesk.plugin_api.contributions import Contribution

GROUP = "solardesk.plugins"


@dataclass(frozen=True)
class PluginRecord:
    """What happened to one entry point."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    ok: bool
    disabled: bool = False
    error: str | None = None

    @property
    def status(self) -> str:
        return "disabled" if self.disabled else ("ok" if self.ok else "failed")


class PluginManager:
    """Loads plugins and answers what they contribute."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(SolarDeskHooks)
        self.records: list[PluginRecord] = []

    def discover(self, disabled: Iterable[str] = (), group: str = GROUP) -> list[PluginRecord]:
        """Load every entry point of ``group`` except those named in ``disabled``."""
        disabled = set(disabled)
        for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            base = {
                "name": ep.name,
                "value": ep.value,
                "distribution": dist.name if dist else None,
                "version": dist.version if dist else None,
            }
            if ep.name in disabled:
                self.records.append(PluginRecord(**base, ok=False, disabled=True))
                continue
            try:
                plugin = ep.load()
                self._pm.register(plugin, name=ep.name)
                # Call the hooks once now so a plugin whose hooks raise is caught here,
                # not when the user first opens a dock.
                self._contributions_of(ep.name)
            except Exception as e:  # any failure of third-party code is recorded, not raised
                if self._pm.has_plugin(ep.name):
                    self._pm.unregister(name=ep.name)
                self.records.append(PluginRecord(**base, ok=False, error=_describe(e)))
                continue
            self.records.append(PluginRecord(**base, ok=True))
        return self.records

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object directly (tests, embedding)."""
        self._pm.register(plugin, name=name)
        self.records.append(PluginRecord(name, repr(plugin), None, None, ok=True))

    def _contributions_of(self, name: str) -> list[Contribution]:
        plugin = self._pm.get_plugin(name)
        out: list[Contribution] = []
        for hook_name in dir(SolarDeskHooks):
            if hook_name.startswith("solardesk_") and hasattr(plugin, hook_name):
                out.extend(getattr(plugin, hook_name)() or [])
        return out

    def contributions(self, hook: str) -> list[tuple[str, Contribution]]:
        """``(plugin name, contribution)`` for every loaded plugin implementing ``hook``."""
        out = []
        caller = getattr(self._pm.hook, hook)
        for impl in caller.get_hookimpls():
            try:
                items = impl.function() or []
            except Exception as e:
                self._fail(impl.plugin_name, e)
                continue
            out.extend((impl.plugin_name, item) for item in items)
        return out

    def get(self, hook: str, contribution_id: str) -> Contribution:
        """The contribution with ``contribution_id`` from ``hook``, or a :class:`PluginError`."""
        found = [c for _, c in self.contributions(hook) if c.id == contribution_id]
        if not found:
            have = ", ".join(sorted(c.id for _, c in self.contributions(hook))) or "none"
            failed = [r for r in self.records if not r.ok and not r.disabled]
            hint = (
                " Some plugins failed to load: " + "; ".join(f"{r.name}: {r.error}" for r in failed)
                if failed
                else ""
            )
            raise PluginError(
                f"no plugin provides '{contribution_id}' for {hook} (available: {have}).{hint}"
            )
        return found[0]

    def _fail(self, name: str, e: Exception) -> None:
        self.records = [
            PluginRecord(r.name, r.value, r.distribution, r.version, ok=False, error=_describe(e))
            if r.name == name
            else r
            for r in self.records
        ]


def _describe(e: BaseException) -> str:
    if isinstance(e, ModuleNotFoundError):
        return f"{e} — install the package that provides '{e.name}'"
    return f"{type(e).__name__}: {e}"


_default: PluginManager | None = None


def get_plugin_manager(disabled: Iterable[str] = ()) -> PluginManager:
    """The process-wide plugin manager, discovering plugins on first use."""
    global _default
    if _default is None:
        pm = PluginManager()
        pm.discover(disabled=disabled)
        _default = pm
    return _default


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after changing the disabled list)."""
    global _default
    _default = None


__all__ = ["GROUP", "PluginError", "PluginManager", "PluginRecord", "get_plugin_manager"]

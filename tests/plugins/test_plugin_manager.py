"""Plugin discovery: builtins load through entry points; a broken plugin never breaks the app."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from solardesk.errors import PluginError
from solardesk.plugin_api import (
    PluginManager,
    PrecomputeStage,
    hookimpl,
    resolve,
)


def make_dist(site: Path, name: str, entry_value: str, module_source: str | None) -> None:
    """Install a fake distribution (dist-info with an entry point) into ``site``."""
    dist = site / f"{name}-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[solardesk.plugins]\n{name} = {entry_value}\n")
    if module_source is not None:
        (site / f"{entry_value.split(':')[0]}.py").write_text(textwrap.dedent(module_source))


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "broken_import", "sd_broken_import", "import not_a_real_dependency_xyz\n")
    make_dist(
        site,
        "broken_hook",
        "sd_broken_hook",
        """
        from solardesk.plugin_api import hookimpl
        @hookimpl
        def solardesk_precompute_stages():
            raise RuntimeError("hook exploded")
        """,
    )
    make_dist(site, "missing_module", "sd_module_that_does_not_exist", None)
    make_dist(
        site,
        "good_extra",
        "sd_good_extra",
        """
        from solardesk.plugin_api import hookimpl, PrecomputeStage
        @hookimpl
        def solardesk_precompute_stages():
            return [PrecomputeStage(id="extra", title="Extra", target="json:dumps")]
        """,
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_builtin_spectral_plugin_loads_through_entry_point() -> None:
    pm = PluginManager()
    records = {r.name: r for r in pm.discover()}
    assert records["spectral"].ok, records["spectral"].error
    assert records["spectral"].distribution == "solardesk"


def test_broken_plugins_are_recorded_and_others_work(plugin_site: Path) -> None:
    pm = PluginManager()
    records = {r.name: r for r in pm.discover()}
    assert not records["broken_import"].ok
    assert "not_a_real_dependency_xyz" in records["broken_import"].error
    assert "install" in records["broken_import"].error
    assert not records["broken_hook"].ok and "hook exploded" in records["broken_hook"].error
    assert not records["missing_module"].ok
    assert records["good_extra"].ok and records["good_extra"].version == "0.3"
    assert records["spectral"].ok
    ids = {c.id for _, c in pm.contributions("solardesk_precompute_stages")}
    assert "extra" in ids


def test_disabled_plugin_is_not_loaded(plugin_site: Path) -> None:
    pm = PluginManager()
    records = {r.name: r for r in pm.discover(disabled={"good_extra"})}
    assert records["good_extra"].disabled and records["good_extra"].status == "disabled"
    ids = {c.id for _, c in pm.contributions("solardesk_precompute_stages")}
    assert "extra" not in ids


def test_unknown_contribution_names_failed_plugins(plugin_site: Path) -> None:
    pm = PluginManager()
    pm.discover()
    with pytest.raises(PluginError, match=r"no plugin provides 'nope'.*broken_import"):
        pm.get("solardesk_precompute_stages", "nope")


def test_register_object_and_lazy_resolve() -> None:
    class Local:
        @hookimpl
        def solardesk_precompute_stages(self):
            return [PrecomputeStage(id="x", title="X", target="os.path:join")]

    pm = PluginManager()
    pm.register(Local(), "local")
    stage = pm.get("solardesk_precompute_stages", "x")
    assert stage.load() is os.path.join
    with pytest.raises(PluginError, match="Install the missing package"):
        resolve("no_such_module_abc:thing")
    with pytest.raises(PluginError, match="has no attribute"):
        resolve("os:no_such_attribute")


def test_cli_survives_broken_plugins(plugin_site: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    out = subprocess.run(
        [sys.executable, "-m", "solardesk", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "failed   broken_import" in out.stdout
    assert "ok       spectral" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr

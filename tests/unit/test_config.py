"""Settings: defaults, bounds, unknown fields and the JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from solardesk import config
from solardesk.errors import ConfigError


def test_round_trip(tmp_path: Path) -> None:
    c = config.ProjectConfig(
        name="Bolzano", rasters=[Path("a.tif")], tiling=config.TilingSettings(tile_size=256)
    )
    config.save(c, tmp_path / "p.json")
    back = config.load(config.ProjectConfig, tmp_path / "p.json")
    assert back == c
    assert back.version == config.CONFIG_VERSION


def test_unknown_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"tiling": {"tile_sise": 256}}')
    with pytest.raises(ConfigError, match=r"unknown field 'tiling\.tile_sise'"):
        config.load(config.ProjectConfig, tmp_path / "p.json")


def test_bounds_and_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match=r"tiling\.tile_size"):
        config.parse(config.ProjectConfig, {"tiling": {"tile_size": 8}})
    with pytest.raises(ConfigError, match="overlap 512 must be smaller"):
        config.parse(config.ProjectConfig, {"tiling": {"tile_size": 512, "overlap": 512}})
    with pytest.raises(ConfigError, match="version"):
        config.parse(config.ProjectConfig, {"version": 99})


def test_every_field_is_documented() -> None:
    def walk(model):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, config.Settings):
                yield from walk(ann)
            else:
                yield model.__name__, name, f

    for model_name, name, f in walk(config.ProjectConfig):
        assert f.title and f.description, f"{model_name}.{name} lacks a title or description"


def test_not_json(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("tile_size = 5")
    with pytest.raises(ConfigError, match=r"p\.json: is not a readable JSON"):
        config.load(config.ProjectConfig, tmp_path / "p.json")

"""Versioned, JSON-round-trippable settings that drive the CLI, the GUI forms and subprocesses.

Every field has a title, a description and bounds, so the GUI can generate its forms from the
models and the CLI can validate what a user types. Unknown fields are rejected by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from solardesk.errors import ConfigError

CONFIG_VERSION = 1

M = TypeVar("M", bound=BaseModel)


class Settings(BaseModel):
    """Base of every settings model: frozen, strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RasterSettings(Settings):
    bands: Annotated[
        tuple[int, int, int] | None,
        Field(
            title="Band mapping",
            description="1-based bands read as red, green, blue; default 1,2,3 (grey for 1 band).",
        ),
    ] = None
    stretch_low: Annotated[
        float,
        Field(ge=0, le=50, title="Stretch low percentile", description="For 16-bit/float input."),
    ] = 2.0
    stretch_high: Annotated[
        float,
        Field(
            ge=50, le=100, title="Stretch high percentile", description="For 16-bit/float input."
        ),
    ] = 98.0

    def command_args(self) -> list[str]:
        """The ``solardesk precompute`` / ``detect`` options that give these settings (none
        for the defaults), so that the GUI runs a command on the project's bands and stretch."""
        args: list[str] = []
        if self.bands is not None:
            args += ["--bands", ",".join(str(b) for b in self.bands)]
        defaults = type(self)()
        if (self.stretch_low, self.stretch_high) != (defaults.stretch_low, defaults.stretch_high):
            args += ["--stretch", f"{_exact(self.stretch_low)},{_exact(self.stretch_high)}"]
        return args


def _exact(value: float) -> str:
    """``value`` as short text that reads back as the same float (2 → "2", 1.2345678 whole:
    the stretch is part of the cache key, and a rounded one would recompute every tile)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


class TilingSettings(Settings):
    tile_size: Annotated[
        int,
        Field(ge=32, le=8192, title="Tile size (px)", description="Square tile side in pixels."),
    ] = 512
    overlap: Annotated[
        int,
        Field(
            ge=0, le=4096, title="Overlap (px)", description="Pixels shared by neighbouring tiles."
        ),
    ] = 64

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> TilingSettings:
        if self.overlap >= self.tile_size:
            raise ValueError(
                f"overlap {self.overlap} must be smaller than tile_size {self.tile_size}"
            )
        return self


class ProjectConfig(Settings):
    """A SolarDesk project: rasters, the cache and the settings of each step."""

    version: Annotated[
        Literal[1], Field(title="Config version", description="Schema version of this file.")
    ] = CONFIG_VERSION
    name: Annotated[str, Field(title="Project name", description="Shown in the title bar.")] = (
        "Untitled"
    )
    rasters: Annotated[
        list[Path], Field(title="Rasters", description="Imagery of the project.")
    ] = []
    cache: Annotated[
        Path | None, Field(title="Mask cache", description="SQLite file holding the masks.")
    ] = None
    raster: RasterSettings = RasterSettings()
    tiling: TilingSettings = TilingSettings()
    plugins: Annotated[
        dict[str, dict[str, Any]],
        Field(title="Plugin settings", description="Settings of each plugin, by plugin name."),
    ] = {}


def parse(model: type[M], data: dict, source: str = "config") -> M:
    """Validate ``data`` as ``model``; a :class:`ConfigError` names each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from e


def load(model: type[M], path: str | Path) -> M:
    """Read a JSON settings file as ``model``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: no such config file.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: is not a readable JSON file ({e}). Fix or recreate it.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file holds one JSON object.")
    return parse(model, data, str(p))


def save(settings: BaseModel, path: str | Path) -> None:
    """Write ``settings`` as indented JSON (round-trips through :func:`load`)."""
    Path(path).write_text(settings.model_dump_json(indent=2) + "\n", encoding="utf-8")


def _explain(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown field '{loc}' (check its spelling)")
        else:
            lines.append(f"field '{loc}': {err['msg']}")
    return f"{source}: invalid settings: " + "; ".join(lines)

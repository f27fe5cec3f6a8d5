"""One error hierarchy for SolarDesk.

Every error a user can cause derives from :class:`SolarDeskError` and mixes in the builtin
it resembles, so callers that catch ``OSError`` or ``ValueError`` keep working. Messages name
the object concerned (usually a file) and say what to do about it. Raise them ``from`` the
library error that caused them so the detail survives for ``--debug``.
"""

from __future__ import annotations


class SolarDeskError(Exception):
    """Base of every error SolarDesk reports to a user."""


class SolarDeskWarning(UserWarning):
    """Base of every warning SolarDesk reports to a user."""


# --- rasters -------------------------------------------------------------------------------
class RasterOpenError(SolarDeskError, OSError):
    """A raster file is missing, empty, truncated or not a raster at all."""


class RasterBandError(SolarDeskError, ValueError):
    """A band mapping names bands the raster does not have."""


class NotGeoreferencedError(SolarDeskError, ValueError):
    """An operation needs map coordinates (or metres) and the raster has none."""


class ResolutionError(SolarDeskError, ValueError):
    """A raster's ground resolution is too coarse for the stage asked to run on it."""


class TilesFailedError(SolarDeskError, OSError):
    """Some tiles of a run could not be computed (a damaged block); the others were stored.

    ``summary``: the run's summary (set by the pre-compute that raises it), so a caller can go
    on with the tiles that were stored."""

    summary = None


class NotGeoreferencedWarning(SolarDeskWarning):
    """A raster has no CRS or no world file: SolarDesk falls back to pixel coordinates."""


# --- tiling and areas of interest ----------------------------------------------------------
class TilingError(SolarDeskError, ValueError):
    """Tile size and overlap do not fit the raster."""


class AOIError(SolarDeskError, ValueError):
    """An area-of-interest file cannot be read or does not touch the raster."""


# --- configuration and plugins -------------------------------------------------------------
class ConfigError(SolarDeskError, ValueError):
    """A configuration file or value is invalid."""


class PluginError(SolarDeskError, ImportError):
    """A plugin, or a contribution it names, cannot be loaded."""


# --- cache ---------------------------------------------------------------------------------
class CacheError(SolarDeskError, OSError):
    """The mask cache cannot be opened, read or written."""


class CacheSchemaError(CacheError):
    """The mask cache was written by a newer SolarDesk, or is not a SolarDesk cache."""


# --- vectors -------------------------------------------------------------------------------
class VectorWriteError(SolarDeskError, OSError):
    """A vector file cannot be written (missing folder, existing file, unsupported format)."""


# --- models --------------------------------------------------------------------------------
class ModelError(SolarDeskError, ValueError):
    """A model, checkpoint or its metadata does not fit what was asked of it."""


class EditError(SolarDeskError, ValueError):
    """A review edit (a drawn polygon, a split line) that cannot be applied as drawn."""


class TrainingError(SolarDeskError, RuntimeError):
    """Training cannot start or cannot continue (empty data set, non-finite loss, OOM)."""


class JobCancelled(SolarDeskError):
    """A long job stopped because the user asked it to; what it finished is kept."""

"""Areas of interest: a polygon file (GeoJSON, GeoPackage, Shapefile) in any CRS."""

from __future__ import annotations

from pathlib import Path

from solardesk.core.raster import RasterInfo
from solardesk.errors import AOIError


def load_aoi(path: str | Path, raster: RasterInfo):
    """Read the AOI at ``path`` as one shapely geometry in ``raster``'s CRS.

    The AOI may be in any CRS: it is reprojected, not rejected. Raises
    :class:`NotGeoreferencedError` when the raster has no CRS (an AOI in map coordinates cannot
    be placed on it) and :class:`AOIError` when the file holds no polygon.
    """
    from shapely import union_all

    from solardesk.core.vector import read_geometries

    raster.require_georeferenced("an area of interest")
    geoms, _ = read_geometries(path, dst_crs=raster.crs)
    polys = [g for g in geoms if g is not None and not g.is_empty and g.area > 0]
    if not polys:
        raise AOIError(
            f"{path}: holds no polygon with an area; an area of interest must be a polygon layer."
        )
    return union_all(polys)

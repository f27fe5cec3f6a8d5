"""Instance masks to georeferenced polygons, and the attributes a panel polygon carries.

Conventions used throughout this module:

* Pixel geometry follows rasterio: pixel ``(col, row)`` covers ``[col, col + 1] x [row, row + 1]``
  in pixel space, and an ``Affine`` maps pixel space to map coordinates. The transform is always
  explicit; a tile's (or a mask's bounding box's) own transform places its polygons.
* Areas and perimeters are true ground values in metres: the polygon is taken to WGS84
  longitude/latitude and measured on the ellipsoid (``pyproj.Geod``), so EPSG:4326, Web
  Mercator, UTM and any custom projection give the same answer for the same panel.
* **Azimuth** is the direction of a polygon's long axis (the longer side of its minimum
  rotated rectangle) in degrees **clockwise from true north**, folded into ``[0, 180)``: a
  panel row running north-south is 0, east-west is 90, north-east/south-west is 45. True (not
  grid) north makes the value independent of the raster's CRS; in UTM it differs from the
  grid angle by the meridian convergence (a few degrees away from the central meridian).
  Without a CRS (pixel coordinates) it is measured clockwise from the top of the image.

Seams of tiled inference (see :func:`dedupe_across_seams` and :func:`merge_touching`): each
tile keeps only the instances whose centroid, in raster pixel coordinates, lies inside the
tile's *core* window. Cores partition the raster (half-open intervals), so an instance seen by
two overlapping tiles is reported by exactly one of them. This is exact when the tile that
owns a panel's centre sees the whole panel, i.e. when no panel reaches more than
``overlap / 2`` pixels beyond the core that holds its centre. Larger objects (long rows of
panels) come out clipped by tile edges, possibly in two tiles; :func:`merge_touching` unions
polygons that overlap or touch so those pieces become one polygon again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, TypedDict

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.features import shapes
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from solardesk.errors import NotGeoreferencedError

__all__ = [
    "PolygonAttributes",
    "as_pyproj_crs",
    "dedupe_across_seams",
    "in_core",
    "instance_polygon",
    "long_axis_azimuth",
    "mask_to_polygons",
    "merge_touching",
    "orient_ccw",
    "orthogonalize",
    "polygon_attributes",
    "reproject_geometry",
    "touching_groups",
]

_GEOD = pyproj.Geod(ellps="WGS84")
_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3


def orient_ccw(geom: BaseGeometry) -> BaseGeometry:
    """``geom`` with counter-clockwise exteriors and clockwise holes (RFC 7946, pyproj.Geod)."""
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        return shapely.orient_polygons(geom)
    if isinstance(geom, Polygon):
        return orient(geom, 1.0)
    if isinstance(geom, MultiPolygon):
        return MultiPolygon([orient(p, 1.0) for p in geom.geoms])
    return geom


# --- masks to polygons ----------------------------------------------------------------------
_TRACE_SHIFT = 1.0
_TRACE = Affine.translation(_TRACE_SHIFT, _TRACE_SHIFT)


def mask_to_polygons(
    mask: np.ndarray,
    transform: Affine,
    *,
    simplify_px: float = 0.5,
    min_area_px: float = 4,
    connectivity: int = 4,
) -> list[Polygon]:
    """Trace the ``True`` pixels of ``mask`` as polygons in the map coordinates of ``transform``.

    One polygon per connected part of the mask (``connectivity`` 4 or 8), holes kept, in the
    raster scan order of ``rasterio.features.shapes``. ``transform`` maps the mask's pixel
    space to map coordinates: a tile's transform for a tile-sized mask, or the transform of a
    bounding-box window for a cropped instance mask. Any affine works, including rotated and
    south-up (flipped) ones.

    The outline is traced in pixel space and then mapped with ``transform`` (the same
    coordinates ``shapes(..., transform=transform)`` gives), so that both tolerances below
    are exact in pixels whatever the pixel size, shape or rotation:

    * ``simplify_px``: Douglas-Peucker tolerance in pixels (topology preserved; 0 disables).
      0.5 px drops the collinear vertices of straight pixel edges and never moves an edge by
      more than half a pixel; the stair steps of a 45° edge deviate 0.71 px from the
      diagonal, so removing those takes about 1 px (or :func:`orthogonalize`).
    * ``min_area_px``: parts smaller than this many pixels are dropped as noise, and so are
      holes smaller than it (pinholes in a mask).

    A part that simplification leaves invalid is repaired with ``shapely.make_valid`` and
    reduced to its largest polygon. Exteriors are counter-clockwise in map coordinates.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    m = m.astype(bool, copy=False)
    if not m.any():
        return []
    values = np.ascontiguousarray(m, dtype=np.uint8)
    # Traced in pixel coordinates shifted by one pixel (the transform is applied after
    # simplification): an identity transform would make rasterio warn that the array is not
    # georeferenced, and silencing that with warnings.catch_warnings is not thread-safe.
    # Shifting by whole pixels is exact, and the shift back is folded into the mapping.
    t = transform @ Affine.translation(-_TRACE_SHIFT, -_TRACE_SHIFT)
    coeffs = [t.a, t.b, t.d, t.e, t.xoff, t.yoff]

    polys: list[Polygon] = []
    traced = list(shapes(values, mask=m, connectivity=connectivity, transform=_TRACE))
    for geojson, _ in traced:
        poly = shape(geojson)
        if poly.area < min_area_px:
            continue
        if poly.interiors:
            holes = [ring for ring in poly.interiors if Polygon(ring).area >= min_area_px]
            poly = Polygon(poly.exterior, holes)
        if simplify_px > 0:
            poly = poly.simplify(simplify_px, preserve_topology=True)
        part = _largest_polygon(poly)
        if part is None or part.area < min_area_px:
            continue
        mapped = affinity.affine_transform(part, coeffs)
        polys.append(orient_ccw(mapped))
    return polys


def instance_polygon(
    mask: np.ndarray,
    transform: Affine,
    *,
    simplify_px: float = 0.5,
    min_area_px: float = 4,
) -> Polygon | None:
    """The largest polygon of one instance mask, or ``None`` when nothing is left of it.

    An instance mask occasionally has stray fragments; a panel is reported as its main part.
    """
    polys = mask_to_polygons(mask, transform, simplify_px=simplify_px, min_area_px=min_area_px)
    return max(polys, key=lambda p: p.area) if polys else None


def _largest_polygon(geom: BaseGeometry) -> Polygon | None:
    """``geom`` made valid and reduced to its largest polygon (``None`` when none is left)."""
    if geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon):
        return None if geom.is_empty else geom
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, Polygon) and not g.is_empty]
    if not parts:
        # A GeometryCollection nested one level deeper (make_valid of an odd ring).
        parts = [
            p
            for g in shapely.get_parts(geom)
            for p in shapely.get_parts(g)
            if isinstance(p, Polygon) and not p.is_empty
        ]
    return max(parts, key=lambda p: p.area) if parts else None


# --- orthogonalisation ----------------------------------------------------------------------
def orthogonalize(
    poly: Polygon, *, max_area_change: float = 0.15, preserve_area: bool = False
) -> Polygon:
    """Replace ``poly`` by its minimum rotated rectangle when that is a faithful fit.

    Panels are rectangles; a traced mask is a rectangle with ragged edges. The minimum-area
    rotated rectangle always contains ``poly``, so its area is never smaller; it replaces
    ``poly`` when ``(rect.area - poly.area) / poly.area <= max_area_change``. Otherwise
    (L-shaped or merged panel groups, shapes with large holes) ``poly`` is returned
    unchanged, because forcing a rectangle would invent area that is not there. Holes are
    dropped only as part of an accepted replacement, and they count in the area change.

    Being circumscribed, the rectangle overshoots ragged or stair-stepped edges (by up to
    half a pixel per side on a rotated panel, which is a lot for a panel a few pixels wide).
    With ``preserve_area`` the accepted rectangle is scaled about its centre, keeping its
    orientation and aspect ratio, to the area of ``poly``: a better estimate of the panel
    for measuring it.

    The rectangle is found in the coordinates of ``poly``: use a projected CRS or pixel
    coordinates with square pixels. In degrees (EPSG:4326) a ground rectangle is a
    parallelogram and the result is not a ground rectangle.
    """
    if poly.is_empty or poly.area <= 0:
        return poly
    rect = shapely.oriented_envelope(poly)
    if not isinstance(rect, Polygon) or rect.area <= 0:
        return poly
    if (rect.area - poly.area) / poly.area > max_area_change:
        return poly
    if preserve_area:
        factor = math.sqrt(poly.area / rect.area)
        rect = affinity.scale(rect, factor, factor, origin="centroid")
    return orient_ccw(rect)


# --- CRS handling ---------------------------------------------------------------------------
def _crs_key(crs: Any) -> Any:
    """A hashable key for anything ``pyproj.CRS.from_user_input`` accepts."""
    if isinstance(crs, str | int):
        return crs
    to_wkt = getattr(crs, "to_wkt", None)
    if to_wkt is not None:
        return to_wkt()
    if isinstance(crs, dict):
        return tuple(sorted(crs.items()))
    return crs


@lru_cache(maxsize=64)
def _pyproj_crs(key: Any) -> pyproj.CRS:
    if isinstance(key, tuple):
        key = dict(key)
    return pyproj.CRS.from_user_input(key)


@lru_cache(maxsize=64)
def _transformer(src_key: Any, dst_key: Any) -> pyproj.Transformer:
    # Creating a Transformer costs milliseconds; a batch of polygons reuses one per CRS pair.
    # pyproj (>= 3.1) Transformers are safe to share between threads.
    return pyproj.Transformer.from_crs(_pyproj_crs(src_key), _pyproj_crs(dst_key), always_xy=True)


def _transform_coords(tr: pyproj.Transformer):
    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack((x, y))

    return apply


def as_pyproj_crs(crs: Any) -> pyproj.CRS:
    """``crs`` (rasterio/pyproj/fiona ``CRS``, ``"EPSG:xxxx"``, WKT, EPSG code) as a cached
    ``pyproj.CRS``."""
    return _pyproj_crs(_crs_key(crs))


def reproject_geometry(geom: BaseGeometry, src_crs: Any, dst_crs: Any) -> BaseGeometry:
    """``geom`` from ``src_crs`` to ``dst_crs`` (x/y order = easting/northing, lon/lat).

    Vertices are transformed one by one (edges are not densified), which is exact for the
    metre-scale polygons SolarDesk handles. CRSs may be rasterio or pyproj ``CRS`` objects,
    ``"EPSG:xxxx"`` strings, WKT or EPSG codes; transformers are cached per CRS pair.
    """
    src_key, dst_key = _crs_key(src_crs), _crs_key(dst_crs)
    if src_key == dst_key or geom is None or geom.is_empty:
        return geom
    return shapely.transform(geom, _transform_coords(_transformer(src_key, dst_key)))


# --- attributes -----------------------------------------------------------------------------
class PolygonAttributes(TypedDict):
    """Ground measures of a polygon (see :func:`polygon_attributes`)."""

    area_m2: float
    perimeter_m: float
    azimuth_deg: float
    centroid_lon: float | None
    centroid_lat: float | None


def long_axis_azimuth(geom: BaseGeometry, *, y_down: bool = False) -> float:
    """Direction of the long side of ``geom``'s minimum rotated rectangle, in the plane.

    Degrees clockwise from the +y axis (from the -y axis when ``y_down``, as in pixel
    coordinates whose rows grow downwards), folded into ``[0, 180)``. NaN for an empty
    geometry or a point. This is a planar angle in the geometry's own coordinates; for true
    north use :func:`polygon_attributes`.
    """
    if geom.is_empty:
        return math.nan
    rect = shapely.oriented_envelope(geom)
    coords = np.asarray(
        rect.exterior.coords if isinstance(rect, Polygon) else getattr(rect, "coords", [])
    )
    if len(coords) < 2:
        return math.nan
    edges = np.diff(coords[:3], axis=0)
    dx, dy = max(edges, key=lambda e: float(np.hypot(e[0], e[1])))
    if dx == 0 and dy == 0:
        return math.nan
    if y_down:
        dy = -dy
    az = math.degrees(math.atan2(dx, dy)) % 180.0
    return 0.0 if az >= 180.0 else az


def _east_north_ratio(lat_deg: float) -> float:
    """Metres per degree of longitude over metres per degree of latitude on WGS84 at ``lat``."""
    phi = math.radians(lat_deg)
    w = 1.0 - _WGS84_E2 * math.sin(phi) ** 2
    prime_vertical = _WGS84_A / math.sqrt(w)
    meridional = _WGS84_A * (1.0 - _WGS84_E2) / w**1.5
    return prime_vertical * math.cos(phi) / meridional


def polygon_attributes(
    poly: BaseGeometry, crs: Any, *, gsd: float | None = None
) -> PolygonAttributes:
    """Area (m²), perimeter (m), long-axis azimuth and centroid lon/lat of ``poly``.

    ``poly`` is in ``crs`` (any geographic or projected CRS). The polygon is transformed to
    WGS84 lon/lat and measured on the ellipsoid with
    ``pyproj.Geod(ellps="WGS84").geometry_area_perimeter``: these are true ground values
    whatever the CRS (Web Mercator map units overstate areas by ``1/cos²(lat)``, about
    2.1× at 46.5°N; degrees are not metres at all). Holes are subtracted from the area and
    counted in the perimeter. The azimuth is that of the long axis of the minimum rotated
    rectangle found in a local conformal frame around the centroid, in degrees clockwise
    from **true** north, in ``[0, 180)``. The centroid is the planar centroid in ``crs``
    taken to WGS84.

    Without a CRS (``crs is None``, or a CRS with no link to the Earth) the coordinates are
    pixel (column, row) coordinates; then ``gsd`` (ground sampling distance, metres per
    coordinate unit) is required, areas and perimeters are scaled by it, the azimuth is
    measured clockwise from the top of the image and the centroid lon/lat are ``None``.
    Otherwise :class:`NotGeoreferencedError` is raised.
    """
    if poly.is_empty:
        raise ValueError("cannot measure an empty geometry")
    pcrs = None
    if crs is not None:
        key = _crs_key(crs)
        pcrs = _pyproj_crs(key)
        if not (pcrs.is_geographic or pcrs.is_projected):
            pcrs = None
    if pcrs is None:
        if gsd is None:
            raise NotGeoreferencedError(
                f"Cannot measure a polygon in metres: its CRS ({crs!r}) does not place it on "
                "the Earth. Georeference the raster (a CRS or world file) or give the ground "
                "sampling distance (gsd, metres per pixel)."
            )
        return PolygonAttributes(
            area_m2=float(poly.area * gsd * gsd),
            perimeter_m=float(poly.length * gsd),
            azimuth_deg=long_axis_azimuth(poly, y_down=True),
            centroid_lon=None,
            centroid_lat=None,
        )

    to_lonlat = _transformer(key, "EPSG:4326")
    lonlat = shapely.transform(poly, _transform_coords(to_lonlat))
    area, perimeter = _GEOD.geometry_area_perimeter(orient_ccw(lonlat))

    c = poly.centroid
    lon, lat = to_lonlat.transform(c.x, c.y)

    # Local conformal frame: east and north in proportion to ground metres at the centroid.
    k = _east_north_ratio(lat)
    local = shapely.transform(
        lonlat, lambda xy: np.column_stack(((xy[:, 0] - lon) * k, xy[:, 1] - lat))
    )
    return PolygonAttributes(
        area_m2=abs(float(area)),
        perimeter_m=float(perimeter),
        azimuth_deg=long_axis_azimuth(local),
        centroid_lon=float(lon),
        centroid_lat=float(lat),
    )


# --- seams of tiled inference ---------------------------------------------------------------
def _window_tuple(core: Any) -> tuple[float, float, float, float]:
    if hasattr(core, "col_off"):
        return (float(core.col_off), float(core.row_off), float(core.width), float(core.height))
    col_off, row_off, width, height = core
    return (float(col_off), float(row_off), float(width), float(height))


def in_core(col: float, row: float, core: Any) -> bool:
    """Whether raster pixel coordinates ``(col, row)`` lie in ``core``.

    ``core`` is a rasterio ``Window`` or a ``(col_off, row_off, width, height)`` tuple. The
    interval is half-open (``col_off <= col < col_off + width``) so that neighbouring cores,
    which share an edge, never both claim a point on it.
    """
    col_off, row_off, width, height = _window_tuple(core)
    return col_off <= col < col_off + width and row_off <= row < row_off + height


def dedupe_across_seams(
    polygons: Sequence[BaseGeometry], core: Any, raster_transform: Affine
) -> list[int]:
    """Indices of the ``polygons`` (map coordinates) this tile reports: centroid in its core.

    ``raster_transform`` is the whole raster's transform (not the tile's): centroids are
    compared in raster pixel coordinates with the tile's ``core`` window (rasterio
    ``Window`` or ``(col_off, row_off, width, height)``). Indices, not polygons, are
    returned so that scores and other attributes follow. See the module docstring for when
    this is exact and when :func:`merge_touching` is needed on top.
    """
    inverse = ~raster_transform
    keep = []
    for i, poly in enumerate(polygons):
        if poly is None or poly.is_empty:
            continue
        c = poly.centroid
        col, row = inverse @ (c.x, c.y)
        if in_core(col, row, core):
            keep.append(i)
    return keep


def _default_tolerance(polys: Sequence[BaseGeometry]) -> float:
    # Tile transforms are computed per tile, so a shared seam can differ by a few ulps
    # between neighbours (1e-16 relative); 1e-12 of the coordinates' magnitude closes such
    # gaps (5 µm at UTM northings) and nothing a pixel could show.
    bounds = shapely.total_bounds(np.asarray(polys, dtype=object))
    scale = float(np.nanmax(np.abs(bounds))) if np.isfinite(bounds).all() else 1.0
    return max(scale, 1.0) * 1e-12


def touching_groups(
    polys: Sequence[BaseGeometry], *, tolerance: float | None = None
) -> list[list[int]]:
    """Groups of indices of ``polys`` that overlap or touch (transitively), each sorted.

    Two polygons are linked when they are within ``tolerance`` map units of each other
    (default: 1e-12 of the largest coordinate, which closes floating-point gaps along a tile
    seam and nothing more). Groups are ordered by their smallest index; a polygon touching
    nothing is a group of one.
    """
    n = len(polys)
    if n == 0:
        return []
    tol = _default_tolerance(polys) if tolerance is None else tolerance
    arr = np.asarray(polys, dtype=object)
    tree = shapely.STRtree(arr)
    left, right = tree.query(arr, predicate="dwithin", distance=tol)
    return linked_groups(n, zip(left.tolist(), right.tolist(), strict=True))


def linked_groups(n: int, links: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The groups of ``0 .. n - 1`` that ``links`` (pairs of indices) join, transitively;
    each sorted, ordered by their smallest index; an index linked to none is a group of one."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [groups[k] for k in sorted(groups)]


def merge_touching(
    polys: Sequence[BaseGeometry], *, tolerance: float | None = None
) -> list[Polygon | MultiPolygon]:
    """Union the ``polys`` that overlap or touch, one geometry per :func:`touching_groups` group.

    Meant for the pieces of an object cut by tile seams: pieces from neighbouring tiles share
    an edge (or overlap, with overlapping tiles) and become one polygon. Where the plain
    union leaves pieces apart (seam gaps of a few ulps), it is redone on a grid of
    ``tolerance`` so that those gaps vanish. Groups touching only at a corner
    stay a MultiPolygon. To merge attributes as well (e.g. the maximum score), use
    :func:`touching_groups` and union the groups yourself.
    """
    if not polys:
        return []
    tol = _default_tolerance(polys) if tolerance is None else tolerance
    merged = []
    for group in touching_groups(polys, tolerance=tol):
        if len(group) == 1:
            merged.append(polys[group[0]])
            continue
        parts = [polys[i] for i in group]
        union = shapely.union_all(parts)
        if tol > 0 and not isinstance(union, Polygon):
            union = shapely.union_all(parts, grid_size=tol)
        part = union if isinstance(union, Polygon | MultiPolygon) else _largest_polygon(union)
        merged.append(part)
    return merged

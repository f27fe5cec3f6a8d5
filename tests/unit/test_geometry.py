"""Masks to polygons, ground measures in any CRS, orthogonalisation and tile seams.

Ground rectangles are built in a transverse Mercator projection centred on the rectangle
(scale 1 and grid north = true north at its centre, so it is metre-true to parts per million
over 20 m) and then transformed into the CRS under test with pyproj: the expected values do
not depend on the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry import Polygon, box

from solardesk.core.geometry import (
    dedupe_across_seams,
    in_core,
    instance_polygon,
    long_axis_azimuth,
    mask_to_polygons,
    merge_touching,
    orthogonalize,
    polygon_attributes,
    touching_groups,
)
from solardesk.errors import NotGeoreferencedError

LON, LAT = 11.35, 46.5  # Bolzano; UTM zone 32N, whose central meridian is 9°E
ALBERS = "+proj=aea +lat_1=43 +lat_2=49 +lat_0=46 +lon_0=11 +x_0=0 +y_0=0 +ellps=GRS80 +units=m"


def ground_rectangle(crs, *, width=10.0, length=20.0, azimuth=0.0, lon=LON, lat=LAT) -> Polygon:
    """A ``width`` × ``length`` m rectangle whose long axis points ``azimuth``° east of true
    north, centred on (lon, lat), with its vertices in ``crs``."""
    local = f"+proj=tmerc +lon_0={lon} +lat_0={lat} +k=1 +x_0=0 +y_0=0 +ellps=WGS84"
    rect = affinity.rotate(
        box(-width / 2, -length / 2, width / 2, length / 2), -azimuth, origin=(0, 0)
    )
    tr = pyproj.Transformer.from_crs(local, crs, always_xy=True)
    x, y = tr.transform(*np.asarray(rect.exterior.coords).T)
    return Polygon(np.column_stack([x, y]))


def same_shape(a, b, tol=1e-9) -> bool:
    return a.symmetric_difference(b).area <= tol * max(a.area, b.area)


# --- masks to polygons ------------------------------------------------------------------------
def rect_mask():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:8] = True  # rows 2-4, columns 3-7
    return mask


def test_rectangle_mask_north_up_has_the_right_map_coordinates():
    transform = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
    (poly,) = mask_to_polygons(rect_mask(), transform)
    # Columns 3..8 and rows 2..5 (pixel edges) mapped by the transform.
    assert poly.bounds == pytest.approx((1001.5, 1997.5, 1004.0, 1999.0))
    assert poly.area == pytest.approx(15 * 0.25)
    assert len(poly.exterior.coords) == 5
    assert poly.exterior.is_ccw


@pytest.mark.parametrize(
    "transform",
    [
        Affine.translation(1000, 2000) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5),
        Affine(0.5, 0, 1000.0, 0, 0.5, 2000.0),  # south-up: rows grow northwards
        Affine(-0.3, 0, 1000.0, 0, -0.5, 2000.0),  # east-west flip, non-square pixels
    ],
    ids=["rotated", "flipped-y", "flipped-x"],
)
def test_rectangle_mask_under_rotated_and_flipped_transforms(transform):
    (poly,) = mask_to_polygons(rect_mask(), transform)
    corners = [transform @ (c, r) for c, r in [(3, 2), (8, 2), (8, 5), (3, 5)]]
    assert same_shape(poly, Polygon(corners))
    assert poly.is_valid
    assert len(poly.exterior.coords) == 5


def test_holes_are_kept_and_specks_dropped():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:15, 2:15] = True
    mask[5:9, 5:9] = False  # a 16-pixel hole: kept
    mask[12, 12] = False  # a 1-pixel pinhole: dropped
    mask[18, 18] = True  # a 1-pixel speck: dropped
    polys = mask_to_polygons(mask, Affine.identity(), min_area_px=4)
    assert len(polys) == 1
    (poly,) = polys
    assert len(poly.interiors) == 1
    assert poly.area == pytest.approx(13 * 13 - 16)


def test_separate_parts_give_separate_polygons_and_instance_polygon_keeps_the_largest():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:4, 1:4] = True
    mask[8:18, 8:18] = True
    polys = mask_to_polygons(mask, Affine.identity())
    assert sorted(p.area for p in polys) == [9, 100]
    assert instance_polygon(mask, Affine.identity()).area == 100
    assert mask_to_polygons(np.zeros((5, 5), bool), Affine.identity()) == []


def test_simplification_tolerance_is_in_pixels_not_map_units():
    # A 45° staircase deviates 0.71 px from its diagonal: 1 px removes the steps, 0.5 px
    # (the default) keeps them, and the outcome is the same for 0.1 m and 10 m pixels.
    mask = np.tril(np.ones((40, 40), dtype=bool))
    for size in (0.1, 10.0):
        transform = Affine(size, 0, 0, 0, -size, 0)
        (smooth,) = mask_to_polygons(mask, transform, simplify_px=1.0)
        assert len(smooth.exterior.coords) <= 5
        assert smooth.area == pytest.approx((40 * 41 / 2) * size**2, rel=0.05)
        (stairs,) = mask_to_polygons(mask, transform)
        assert len(stairs.exterior.coords) > 40


# --- ground measures ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "crs",
    ["EPSG:32632", "EPSG:3857", "EPSG:4326", ALBERS],
    ids=["utm", "web-mercator", "wgs84", "custom-albers"],
)
def test_area_and_perimeter_are_true_ground_values_in_any_crs(crs):
    rect = ground_rectangle(crs, azimuth=30)
    attrs = polygon_attributes(rect, crs)
    assert attrs["area_m2"] == pytest.approx(200, rel=0.01)
    assert attrs["perimeter_m"] == pytest.approx(60, rel=0.01)
    assert attrs["centroid_lon"] == pytest.approx(LON, abs=1e-6)
    assert attrs["centroid_lat"] == pytest.approx(LAT, abs=1e-6)


def test_web_mercator_map_units_are_not_metres():
    rect = ground_rectangle("EPSG:3857")
    assert rect.area / 200 == pytest.approx(1 / math.cos(math.radians(LAT)) ** 2, rel=0.01)
    assert rect.area / 200 > 2.0  # the trap: about 2.1x at 46.5°N
    assert polygon_attributes(rect, "EPSG:3857")["area_m2"] == pytest.approx(200, rel=0.001)


def test_crs_objects_of_rasterio_and_pyproj_are_accepted():
    rect = ground_rectangle("EPSG:32632")
    a = polygon_attributes(rect, CRS.from_epsg(32632))
    b = polygon_attributes(rect, pyproj.CRS.from_epsg(32632))
    assert a == b


def test_a_4326_raster_mask_measures_in_square_metres():
    # 0.5 m pixels expressed in degrees at 46.5°N; a 20 × 40 pixel mask is 10 m × 20 m.
    geod = pyproj.Geod(ellps="WGS84")
    dlon = 0.5 / geod.inv(LON, LAT, LON + 1e-3, LAT)[2] * 1e-3
    dlat = 0.5 / geod.inv(LON, LAT, LON, LAT + 1e-3)[2] * 1e-3
    transform = Affine(dlon, 0, LON, 0, -dlat, LAT)
    mask = np.zeros((60, 40), dtype=bool)
    mask[10:50, 10:30] = True
    (poly,) = mask_to_polygons(mask, transform)
    attrs = polygon_attributes(poly, "EPSG:4326")
    assert attrs["area_m2"] == pytest.approx(200, rel=0.01)
    assert attrs["azimuth_deg"] == pytest.approx(0, abs=0.1)


@pytest.mark.parametrize(
    "crs", ["EPSG:3857", "EPSG:4326", ALBERS], ids=["web-mercator", "wgs84", "albers"]
)
def test_azimuth_of_a_rectangle_rotated_30_degrees_is_30(crs):
    rect = ground_rectangle(crs, azimuth=30)
    assert polygon_attributes(rect, crs)["azimuth_deg"] == pytest.approx(30, abs=0.1)


def test_azimuth_folds_into_0_180_and_follows_the_long_axis():
    for az, expected in [(0, 0), (90, 90), (150, 150), (210, 30), (-45, 135)]:
        rect = ground_rectangle("EPSG:3857", azimuth=az)
        got = polygon_attributes(rect, "EPSG:3857")["azimuth_deg"]
        assert 0 <= got < 180
        assert min(abs(got - expected), 180 - abs(got - expected)) < 0.1


def test_azimuth_is_from_true_north_not_utm_grid_north():
    # Away from the central meridian, UTM grid north and true north differ (1.7° here).
    rect = ground_rectangle("EPSG:32632", azimuth=30)
    grid_azimuth = long_axis_azimuth(rect)
    convergence = pyproj.Proj("EPSG:32632").get_factors(LON, LAT).meridian_convergence
    assert abs(convergence) > 1
    # East of the central meridian true north leans west of grid north: grid = true - γ.
    assert grid_azimuth == pytest.approx(30 - convergence, abs=0.05)
    assert polygon_attributes(rect, "EPSG:32632")["azimuth_deg"] == pytest.approx(30, abs=0.05)


def test_pixel_coordinates_need_a_gsd():
    poly = box(0, 0, 10, 40)  # pixel coordinates: 10 columns × 40 rows
    with pytest.raises(NotGeoreferencedError, match="gsd"):
        polygon_attributes(poly, None)
    attrs = polygon_attributes(poly, None, gsd=0.25)
    assert attrs["area_m2"] == pytest.approx(400 * 0.0625)
    assert attrs["perimeter_m"] == pytest.approx(100 * 0.25)
    assert attrs["azimuth_deg"] == pytest.approx(0)
    assert attrs["centroid_lon"] is None
    # Rows grow downwards: rotating by -45° in (col, row) turns the long axis from the
    # column direction to (+col, +row), towards the lower right/upper left: 135° from the top.
    lower_right = affinity.rotate(poly, -45, origin="centroid")
    assert polygon_attributes(lower_right, None, gsd=1)["azimuth_deg"] == pytest.approx(135)
    upper_right = affinity.rotate(poly, 45, origin="centroid")
    assert polygon_attributes(upper_right, None, gsd=1)["azimuth_deg"] == pytest.approx(45)


# --- orthogonalisation --------------------------------------------------------------------------
def test_orthogonalize_turns_a_noisy_rectangle_into_four_corners():
    rng = np.random.default_rng(0)
    rect = affinity.rotate(box(0, 0, 20, 10), 25, origin=(0, 0))
    ring = np.asarray(shapely.segmentize(rect, 1.0).exterior.coords)[:-1]
    noisy = Polygon(ring + rng.normal(0, 0.15, ring.shape))
    assert len(noisy.exterior.coords) > 50
    out = orthogonalize(noisy)
    assert len(out.exterior.coords) == 5
    assert noisy.difference(out).area < 1e-9  # the minimum rotated rectangle contains it
    assert noisy.area < out.area < 1.15 * noisy.area
    assert long_axis_azimuth(out) == pytest.approx(long_axis_azimuth(rect), abs=1.5)

    fitted = orthogonalize(noisy, preserve_area=True)
    assert len(fitted.exterior.coords) == 5
    assert fitted.area == pytest.approx(noisy.area)
    assert fitted.centroid.distance(out.centroid) < 1e-9
    assert abs(fitted.area - 200) < abs(out.area - 200)


def test_orthogonalize_keeps_shapes_that_are_not_rectangles():
    l_shape = Polygon([(0, 0), (20, 0), (20, 10), (10, 10), (10, 20), (0, 20)])
    assert orthogonalize(l_shape).equals(l_shape)


# --- tile seams ---------------------------------------------------------------------------------
RASTER = Affine(0.2, 0, 600000.0, 0, -0.2, 5150000.0)


def tile_polygons(raster_mask, col_off, width):
    tile_transform = RASTER @ Affine.translation(col_off, 0)
    return mask_to_polygons(raster_mask[:, col_off : col_off + width], tile_transform)


def test_a_panel_across_a_seam_is_reported_once():
    # Raster 20 × 40 px; tiles of 24 px overlapping by 8: A = cols 0-23, B = cols 16-39.
    # Cores split the overlap in the middle: A owns cols 0-19, B cols 20-39.
    mask = np.zeros((20, 40), dtype=bool)
    mask[5:13, 14:22] = True  # the panel: cols 14-21, centre col 18 (A's core)
    tiles = [(0, Window(0, 0, 20, 20)), (16, (20, 0, 20, 20))]  # Window or plain tuple

    seen = [tile_polygons(mask, off, 24) for off, _ in tiles]
    assert sum(len(p) for p in seen) == 2  # both tiles see (part of) it
    kept = [
        polys[i]
        for polys, (_, core) in zip(seen, tiles, strict=True)
        for i in dedupe_across_seams(polys, core, RASTER)
    ]
    assert len(kept) == 1
    assert kept[0].area == pytest.approx(8 * 8 * 0.04)  # the whole panel, from tile A


def test_cores_are_half_open_so_a_centre_on_the_cut_has_one_owner():
    owners = [core for core in [(0, 0, 20, 20), (20, 0, 20, 20)] if in_core(20.0, 5.0, core)]
    assert owners == [(20, 0, 20, 20)]
    assert not in_core(5.0, 20.0, Window(0, 0, 20, 20))


def test_merge_touching_joins_pieces_cut_by_a_seam():
    # Tiles without overlap: a panel across the cut at col 20 comes out in two pieces that
    # share an edge (computed through two different tile transforms).
    mask = np.zeros((20, 40), dtype=bool)
    mask[5:13, 14:26] = True
    mask[1:4, 30:36] = True  # a separate panel, not touching
    pieces = tile_polygons(mask, 0, 20) + tile_polygons(mask, 20, 20)
    assert len(pieces) == 3
    groups = touching_groups(pieces)
    assert sorted(len(g) for g in groups) == [1, 2]
    pair = next(g for g in groups if len(g) == 2)
    assert sum(pieces[i].area for i in pair) == pytest.approx(8 * 12 * 0.04)
    merged = merge_touching(pieces)
    assert len(merged) == 2
    big = max(merged, key=lambda p: p.area)
    assert big.geom_type == "Polygon"
    assert big.area == pytest.approx(8 * 12 * 0.04)
    assert len(orthogonalize(big).exterior.coords) == 5


def test_merge_touching_leaves_separate_polygons_alone():
    polys = [box(0, 0, 1, 1), box(2, 0, 3, 1), box(0.5, 0.5, 1.5, 1.5)]
    assert touching_groups(polys) == [[0, 2], [1]]
    assert [p.area for p in merge_touching(polys)] == pytest.approx([1.75, 1.0])
    assert merge_touching([]) == []


def test_tracing_never_warns_about_georeferencing() -> None:
    """Pixel-space tracing must not warn (rasterio does for an identity transform), since
    silencing a warning with catch_warnings is not thread-safe and tracing runs in threads."""
    import warnings

    m = np.zeros((12, 12), bool)
    m[2:6, 3:9] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (poly,) = mask_to_polygons(m, Affine.identity(), simplify_px=0)
    assert poly.bounds == (3.0, 2.0, 9.0, 6.0) and poly.area == 24.0

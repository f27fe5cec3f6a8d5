"""Tile grids: coverage, edge tiles, cores, ids and transforms."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from solardesk.core.tiling import axis_starts, make_grid, tile_footprint
from solardesk.errors import AOIError, TilingError

T = Affine(0.2, 0, 680000.0, 0, -0.2, 5150000.0)


@pytest.mark.parametrize(
    ("w", "h", "tile", "overlap"),
    [(2560, 2560, 512, 64), (1000, 700, 256, 32), (512, 512, 512, 0), (513, 600, 512, 100)],
)
def test_tiles_cover_raster_and_cores_partition_it(w, h, tile, overlap) -> None:
    grid = make_grid(w, h, T, tile, overlap)
    covered = np.zeros((h, w), np.int32)
    cores = np.zeros((h, w), np.int32)
    for t in grid:
        assert (t.width, t.height) == (tile, tile)  # no padded or shrunk edge tile
        assert 0 <= t.col_off <= w - tile and 0 <= t.row_off <= h - tile
        covered[t.row_off : t.row_off + tile, t.col_off : t.col_off + tile] += 1
        c = t.core
        # The core lies inside its tile.
        assert t.col_off <= c.col_off and c.col_off + c.width <= t.col_off + tile
        assert t.row_off <= c.row_off and c.row_off + c.height <= t.row_off + tile
        cores[c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width] += 1
    assert covered.min() >= 1, "a pixel is in no tile"
    assert (cores == 1).all(), "cores must partition the raster"


def test_regular_starts_and_shifted_last_tile() -> None:
    assert axis_starts(2560, 512, 64) == [0, 448, 896, 1344, 1792, 2048]
    assert axis_starts(512, 512, 64) == [0]
    assert axis_starts(1000, 500, 0) == [0, 500]


def test_tile_transform_and_ids_are_stable() -> None:
    grid = make_grid(1000, 1000, T, 256, 32)
    t = grid.tiles[1]
    assert t.id == f"c{t.col_off}_r{t.row_off}_256x256"
    assert t.transform.c == pytest.approx(T.c + t.col_off * 0.2)
    assert t.transform.f == pytest.approx(T.f - t.row_off * 0.2)
    # The same pixels get the same id in a grid restricted by an AOI.
    aoi = tile_footprint(t).buffer(-1)
    sub = make_grid(1000, 1000, T, 256, 32, aoi=aoi)
    assert t.id in {s.id for s in sub}
    assert len(sub) < len(grid)


def test_footprint_geometry() -> None:
    grid = make_grid(600, 600, T, 512, 64)
    fp = tile_footprint(grid.tiles[0])
    assert fp.bounds == pytest.approx((680000.0, 5150000.0 - 102.4, 680000.0 + 102.4, 5150000.0))


@pytest.mark.parametrize(
    ("w", "h", "tile", "overlap", "pattern"),
    [
        (300, 200, 512, 64, r"tile size 512 is larger than the raster \(300×200 px\).*--tile 200"),
        (1000, 1000, 256, 256, r"overlap 256 must be smaller than the tile size 256"),
        (1000, 1000, 256, 300, r"overlap 300"),
        (1000, 1000, 256, -1, r"overlap must be 0 or more"),
        (16, 16, 512, 64, r"x.tif: the raster \(16×16 px\) is smaller than the smallest tile"),
        (300, 20, 64, 8, r"smaller than the smallest tile \(32×32 px\)"),
    ],
)
def test_bad_tiling(w, h, tile, overlap, pattern) -> None:
    with pytest.raises(TilingError, match=pattern):
        make_grid(w, h, T, tile, overlap, source="x.tif")


def test_aoi_missing_the_raster() -> None:
    far = box(0, 0, 10, 10)
    with pytest.raises(AOIError, match="does not intersect"):
        make_grid(1000, 1000, T, 256, 32, aoi=far, source="x.tif")


def test_the_smallest_tile_is_the_settings_least_tile_size() -> None:
    from solardesk.config import TilingSettings
    from solardesk.core.tiling import MIN_TILE_PX

    TilingSettings(tile_size=MIN_TILE_PX, overlap=0)
    with pytest.raises(ValueError):
        TilingSettings(tile_size=MIN_TILE_PX - 1, overlap=0)


def test_aoi_selects_tiles_by_their_whole_footprint_on_a_rotated_raster():
    """A box of two opposite corners is not a rotated tile's footprint: a small AOI near a
    tile's edge found no tile at all (an AOIError for an AOI inside the raster)."""
    from shapely.geometry import Point

    t = Affine.translation(680000, 5150000) * Affine.rotation(30) * Affine.scale(0.1, -0.1)
    x, y = t * (3, 255)  # inside the raster, near the western edge
    aoi = Point(x, y).buffer(0.5)
    grid = make_grid(512, 512, t, 128, 0, aoi=aoi)
    assert [tl.id for tl in grid] and all(tile_footprint(tl).intersects(aoi) for tl in grid)
    everything = make_grid(512, 512, t, 128, 0)
    assert {tl.id for tl in grid} == {
        tl.id for tl in everything if tile_footprint(tl).intersects(aoi)
    }

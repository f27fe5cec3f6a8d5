"""A grid of overlapping tiles over a raster, each a rasterio ``Window`` with its own ``Affine``.

Edge tiles: every tile has the full tile size. Along each axis tiles start every
``tile_size - overlap`` pixels, and the last tile is shifted inwards to end exactly at the
raster edge, so it overlaps its neighbour by more than ``overlap``. No tile is padded and no
pixel is left out. A raster smaller than one tile is refused with the largest tile size that
fits (a model or analyser sees only full tiles).

Cores: each tile also has a *core* window. Cores partition the raster (every pixel belongs
to exactly one core): along each axis the cut between two neighbours lies in the middle of
their overlap. Tiled inference keeps an instance only in the tile whose core holds its
centre, which reports a panel on a seam once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from affine import Affine
from rasterio.windows import Window

from solardesk.errors import AOIError, TilingError

#: The smallest tile side (``TilingSettings.tile_size``'s lower bound): a raster must hold one.
MIN_TILE_PX = 32


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`."""

    id: str
    row: int
    col: int
    window: Window
    core: Window
    transform: Affine

    @property
    def col_off(self) -> int:
        return int(self.window.col_off)

    @property
    def row_off(self) -> int:
        return int(self.window.row_off)

    @property
    def width(self) -> int:
        return int(self.window.width)

    @property
    def height(self) -> int:
        return int(self.window.height)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "row": self.row,
            "col": self.col,
            "col_off": self.col_off,
            "row_off": self.row_off,
            "width": self.width,
            "height": self.height,
            "core": [
                int(self.core.col_off),
                int(self.core.row_off),
                int(self.core.width),
                int(self.core.height),
            ],
        }


def tile_id(col_off: int, row_off: int, width: int, height: int) -> str:
    """Stable tile id: the same pixels always get the same id, whatever the grid around them."""
    return f"c{col_off}_r{row_off}_{width}x{height}"


def axis_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis (see the module docstring for edge tiles)."""
    step = tile_size - overlap
    starts = list(range(0, max(length - tile_size, 0) + 1, step))
    if starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def _axis_cores(starts: list[int], tile_size: int, length: int) -> list[tuple[int, int]]:
    cuts = [0]
    for a, b in itertools.pairwise(starts):
        cuts.append((b + a + tile_size) // 2)  # middle of the overlap [b, a + tile_size)
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering a ``width`` × ``height`` raster with georeferencing ``transform``."""

    width: int
    height: int
    tile_size: int
    overlap: int
    transform: Affine
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def by_id(self, tid: str) -> Tile:
        for t in self.tiles:
            if t.id == tid:
                return t
        raise KeyError(tid)


def validate_tiling(width: int, height: int, tile_size: int, overlap: int, source: str) -> None:
    """Raise :class:`TilingError` when tile size and overlap cannot tile the raster."""
    where = f"{source}: " if source else ""
    if tile_size < 1:
        raise TilingError(f"{where}tile size must be positive, got {tile_size}.")
    if overlap < 0:
        raise TilingError(f"{where}overlap must be 0 or more, got {overlap}.")
    if overlap >= tile_size:
        raise TilingError(
            f"{where}overlap {overlap} must be smaller than the tile size {tile_size}; "
            f"try --overlap {tile_size // 8}."
        )
    if min(width, height) < MIN_TILE_PX:
        raise TilingError(
            f"{where}the raster ({width}×{height} px) is smaller than the smallest tile "
            f"({MIN_TILE_PX}×{MIN_TILE_PX} px); use a raster of at least that size (a larger "
            "extent, or a finer resolution of the same area)."
        )
    if tile_size > width or tile_size > height:
        raise TilingError(
            f"{where}tile size {tile_size} is larger than the raster ({width}×{height} px). "
            f"Use --tile {min(width, height)} or smaller."
        )


def make_grid(
    width: int,
    height: int,
    transform: Affine,
    tile_size: int = 512,
    overlap: int = 64,
    *,
    aoi=None,
    source: str = "",
) -> TileGrid:
    """Tile a raster. ``aoi`` (a shapely geometry in the raster's CRS) keeps intersecting tiles.

    Raises :class:`TilingError` for sizes that do not fit and :class:`AOIError` when the area
    of interest touches no tile.
    """
    validate_tiling(width, height, tile_size, overlap, source)
    cols = axis_starts(width, tile_size, overlap)
    rows = axis_starts(height, tile_size, overlap)
    col_cores = _axis_cores(cols, tile_size, width)
    row_cores = _axis_cores(rows, tile_size, height)
    prepared = None
    if aoi is not None:
        from shapely import Polygon
        from shapely import prepared as shp_prepared

        prepared = shp_prepared.prep(aoi)
    tiles = []
    for r, (row_off, (cr0, cr1)) in enumerate(zip(rows, row_cores, strict=True)):
        for c, (col_off, (cc0, cc1)) in enumerate(zip(cols, col_cores, strict=True)):
            win = Window(col_off, row_off, tile_size, tile_size)
            tr = transform @ Affine.translation(col_off, row_off)
            if prepared is not None:
                # The whole footprint: on a rotated or sheared raster, a box of two opposite
                # corners misses parts of the tile (a small AOI there found no tile).
                corners = ((0, 0), (tile_size, 0), (tile_size, tile_size), (0, tile_size))
                if not prepared.intersects(Polygon([tr @ c for c in corners])):
                    continue
            tiles.append(
                Tile(
                    id=tile_id(col_off, row_off, tile_size, tile_size),
                    row=r,
                    col=c,
                    window=win,
                    core=Window(cc0, cr0, cc1 - cc0, cr1 - cr0),
                    transform=tr,
                )
            )
    if aoi is not None and not tiles:
        raise AOIError(
            f"{source or 'raster'}: the area of interest does not intersect the raster "
            f"(AOI bounds {tuple(round(v, 3) for v in aoi.bounds)} in the raster's CRS). "
            "Check that the AOI covers the same place as the imagery."
        )
    return TileGrid(width, height, tile_size, overlap, transform, tuple(tiles))


def tile_footprint(tile: Tile):
    """The tile's footprint as a shapely polygon in the raster's CRS."""
    from shapely.geometry import Polygon

    corners = [(0, 0), (tile.width, 0), (tile.width, tile.height), (0, tile.height)]
    return Polygon([tile.transform @ c for c in corners])

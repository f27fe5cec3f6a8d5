"""Synthetic aerial scenes whose truth is known: panel arrays, their look-alikes, and their labels.

A scene is laid out in metres (so the same seed and extent give the same polygons at 0.1 m and
at 0.3 m) and then rendered into pixels with vectorised numpy/OpenCV "shaders":

* ground: grass, dry grass and soil from multi-scale noise; paved yards, aprons and parking lots
  with stall markings; hedges along garden boundaries;
* roads with asphalt texture, kerbs, sidewalks, lane and edge lines, dashed centre lines and
  zebra crossings; cars on roads and in parking bays;
* buildings: rectangles and L-shapes facing the road, at the scene's street orientation or at
  random; gable and hip roofs whose facets are shaded by a Lambertian sun model, flat roofs
  with parapets and rooftop boxes; red tile, brown, grey, dark and bright roofs with tile or
  seam texture; soft shadows cast away from the sun;
* trees: irregular crowns with clumped, sun-lit texture and their shadows;
* orchards and vineyards: regular rows of canopy with inter-row shadow, sometimes under grey
  hail nets (a periodic texture that is *not* a panel);
* panel arrays: rows × columns of modules (≈ 1.0 × 1.7 m) with thin frame lines, per-module
  brightness variation and the odd specular glint, dark (black/blue) or bright (hazy blue-grey,
  as in the South Tyrol 2023 orthophoto); flush on roof facets and aligned with the roof edges,
  in tilted rows on flat roofs, and ground-mounted in long rows with shadow strips between them;
* the camera: haze, white balance, a mild blur (MTF) and signal-dependent sensor noise.

Each panel array (the unit a GIS analyst digitises) is one polygon, one instance in
:attr:`Scene.instance_mask` and one feature in the truth GeoJSON; a ground-mounted field is
several arrays, one per row. :attr:`Scene.classes` labels every pixel (see :class:`SceneClass`)
so the false positives of a detector can be attributed to what caused them.

The module imports no Qt, torch or onnxruntime.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import rasterio
import rasterio.crs
import shapely
import shapely.affinity
import shapely.ops
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, mapping
from shapely.geometry.polygon import orient

from solardesk.errors import ConfigError, RasterOpenError, VectorWriteError

__all__ = [
    "CLASS_NAMES",
    "PanelInfo",
    "Scene",
    "SceneClass",
    "SceneSpec",
    "generate_scene",
    "write_large_raster",
    "write_scene",
]

PanelStyle = Literal["dark", "bright", "mixed"]


class SceneClass(IntEnum):
    """Semantic classes of :attr:`Scene.classes`."""

    GROUND = 0  #: grass, soil, the ground of a solar park
    ROOF = 1  #: roofs and rooftop boxes
    PANEL = 2  #: solar panel arrays (roof and ground)
    VEGETATION = 3  #: tree crowns and hedges
    ROAD = 4  #: roads, sidewalks, kerbs, paved aprons, parking lots
    SHADOW = 5  #: cast shadow on ground, road or vegetation
    ORCHARD = 6  #: orchard and vineyard fields (canopy rows, inter-row ground and shadow)
    VEHICLE = 7  #: cars
    NODATA = 255  #: outside the image footprint (only with ``SceneSpec.nodata``)


#: Class value → lower-case name.
CLASS_NAMES: dict[int, str] = {int(c): c.name.lower() for c in SceneClass}

# Materials as (red, green, blue, near-infrared) reflectance-like values in 0..1, display-referred.
# Calibrated by eye and by median colours on the South Tyrol 2023 (0.137 m) and USGS California
# (0.3 m) tiles: bright panels there have HSV value ≈ 0.65, saturation ≈ 0.15, hue ≈ 205°.
_GRASS_A = np.array([0.35, 0.44, 0.27, 0.76], np.float32)
_GRASS_B = np.array([0.45, 0.51, 0.34, 0.72], np.float32)
_DRY_GRASS = np.array([0.58, 0.55, 0.40, 0.58], np.float32)
_SOIL = np.array([0.50, 0.42, 0.34, 0.42], np.float32)
_ASPHALT = np.array([0.40, 0.41, 0.42, 0.30], np.float32)
_CONCRETE = np.array([0.66, 0.65, 0.62, 0.55], np.float32)
_SIDEWALK = np.array([0.60, 0.59, 0.57, 0.50], np.float32)
_KERB = np.array([0.80, 0.80, 0.78, 0.70], np.float32)
_PAINT = np.array([0.93, 0.93, 0.90, 0.85], np.float32)
_CANOPY = np.array([0.20, 0.30, 0.14, 0.70], np.float32)
_ORCHARD_CANOPY = np.array([0.25, 0.37, 0.17, 0.74], np.float32)
_HAIL_NET = np.array([0.62, 0.64, 0.63, 0.55], np.float32)
_ROOF_COLOURS: dict[str, np.ndarray] = {
    "red_tile": np.array([0.64, 0.37, 0.29, 0.52], np.float32),
    "brown": np.array([0.42, 0.31, 0.27, 0.40], np.float32),
    "grey": np.array([0.56, 0.57, 0.58, 0.45], np.float32),
    "dark": np.array([0.24, 0.25, 0.27, 0.22], np.float32),
    "bright": np.array([0.82, 0.82, 0.80, 0.70], np.float32),
    "metal": np.array([0.55, 0.60, 0.65, 0.50], np.float32),
}
_CAR_COLOURS = np.array(
    [
        [0.90, 0.90, 0.90, 0.75],
        [0.08, 0.08, 0.09, 0.10],
        [0.55, 0.56, 0.58, 0.45],
        [0.70, 0.71, 0.73, 0.60],
        [0.55, 0.10, 0.10, 0.40],
        [0.12, 0.20, 0.40, 0.20],
    ],
    np.float32,
)
# Shadows are lit by the blue sky only: RGB keeps a bluish third of its light, NIR less.
# Haze is scattered blue light (Rayleigh, ∝ λ⁻⁴): little of it in the near-infrared.
_SHADOW_FACTOR = np.array([0.30, 0.34, 0.45, 0.20], np.float32)
_HAZE = np.array([0.78, 0.82, 0.90, 0.30], np.float32)
_AMBIENT = 0.35

# Module size in metres (short × long side), roughly a 60/72-cell module.
_MODULE_SHORT = (0.99, 1.13)
_MODULE_LONG = (1.65, 1.80)


# --------------------------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------------------------
@dataclass
class SceneSpec:
    """What to generate. Sizes are pixels, distances metres; every default is realistic.

    Attributes:
        height: Rows of the image in pixels (≥ 16).
        width: Columns of the image in pixels (≥ 16).
        gsd: Ground sampling distance in metres per pixel (square pixels).
        crs: A projected CRS in metres (anything :class:`pyproj.CRS` accepts).
        origin: Map coordinates ``(x, y)`` of the upper-left corner of the upper-left pixel.
            ``None`` picks a point near Bolzano, South Tyrol, for EPSG:32632, and the centre of
            the CRS's area of use (rounded to 1 km) for any other CRS.
        seed: Everything is deterministic from it. The layout (every polygon) depends only on
            the seed, the extent in metres and the density knobs, not on ``gsd``.
        n_roofs: Buildings to place; ``None``: about 4 per hectare. Placement is by rejection
            sampling, so a crowded scene may hold fewer.
        n_ground_fields: Ground-mounted solar fields, each 2-8 parallel rows (one array per row);
            ``None``: about one per 2 ha.
        n_trees: Trees; ``None``: about 12 per hectare.
        roof_panel_probability: Chance that a building carries panels. The first building
            is drawn again until its roof holds an array, so every scene with a building has
            at least one.
        orchards: Add orchard/vineyard fields (periodic rows that are not panels).
        roads: Add a road (with kerbs, markings, cars) and, beside big buildings, parking lots.
        panel_style: ``"dark"`` (black to dark blue-grey), ``"bright"`` (hazy blue-grey, HSV
            value ≈ 0.5-0.8) or ``"mixed"`` (chosen per array).
        dtype: ``"uint8"`` (0-255) or ``"uint16"`` (0-``uint16_max``).
        uint16_max: Full-scale value of uint16 scenes; 4095 mimics the 12-bit radiometry of
            most digital aerial cameras delivered as uint16.
        bands: 1 (panchromatic, visible + some NIR), 3 (RGB) or 4 (RGB + near-infrared).
        nodata: If set, a triangle in one corner is outside the footprint: every band holds
            this value there (and no valid pixel does), classes are ``NODATA``, no panel
            touches it.
        sun_azimuth: Degrees clockwise from north; ``None``: 110-250 (morning to afternoon).
        sun_elevation: Degrees above the horizon; ``None``: 30-65.
    """

    height: int = 1024
    width: int = 1024
    gsd: float = 0.15
    crs: str = "EPSG:32632"
    origin: tuple[float, float] | None = None
    seed: int = 0
    n_roofs: int | None = None
    n_ground_fields: int | None = None
    n_trees: int | None = None
    roof_panel_probability: float = 0.6
    orchards: bool = True
    roads: bool = True
    panel_style: PanelStyle = "mixed"
    dtype: Literal["uint8", "uint16"] = "uint8"
    uint16_max: int = 4095
    bands: Literal[1, 3, 4] = 3
    nodata: float | None = None
    sun_azimuth: float | None = None
    sun_elevation: float | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"SceneSpec: seed must be ≥ 0, not {self.seed}")
        if self.height < 16 or self.width < 16:
            raise ConfigError(f"SceneSpec: {self.width}×{self.height} px is too small (≥ 16×16)")
        if not (0.01 <= self.gsd <= 5.0):
            raise ConfigError(f"SceneSpec: gsd {self.gsd} m is outside 0.01-5 m per pixel")
        if self.bands not in (1, 3, 4):
            raise ConfigError(f"SceneSpec: bands must be 1, 3 or 4, not {self.bands}")
        if self.dtype not in ("uint8", "uint16"):
            raise ConfigError(f"SceneSpec: dtype must be 'uint8' or 'uint16', not {self.dtype!r}")
        if self.panel_style not in ("dark", "bright", "mixed"):
            raise ConfigError(
                f"SceneSpec: panel_style must be 'dark', 'bright' or 'mixed', "
                f"not {self.panel_style!r}"
            )
        if not (255 <= self.uint16_max <= 65535):
            raise ConfigError(f"SceneSpec: uint16_max {self.uint16_max} is outside 255-65535")
        for name in ("n_roofs", "n_ground_fields", "n_trees"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"SceneSpec: {name} must be ≥ 0, not {value}")
        if not (0.0 <= self.roof_panel_probability <= 1.0):
            raise ConfigError("SceneSpec: roof_panel_probability must be within 0-1")
        if self.nodata is not None:
            top = 255 if self.dtype == "uint8" else 65535
            if not (float(self.nodata).is_integer() and 0 <= self.nodata <= top):
                raise ConfigError(
                    f"SceneSpec: nodata {self.nodata} is not an integer within 0-{top} "
                    f"for {self.dtype}"
                )
        if self.sun_elevation is not None and not (5.0 <= self.sun_elevation <= 90.0):
            raise ConfigError("SceneSpec: sun_elevation must be within 5-90 degrees")
        crs = _projected_crs(self.crs)
        if self.origin is None:
            self.origin = _default_origin(crs)

    @property
    def extent_m(self) -> tuple[float, float]:
        """(width, height) of the scene in metres."""
        return self.width * self.gsd, self.height * self.gsd


@dataclass(frozen=True)
class PanelInfo:
    """What is known about one panel array besides its polygon.

    Attributes:
        kind: ``"roof"`` or ``"ground"``.
        style: ``"dark"`` or ``"bright"``.
        n_modules: Modules in the array.
        mount: ``"flush"`` (on a pitched roof facet or flat on a flat roof) or ``"tilted"``
            (rows on racks, which cast a shadow strip).
    """

    kind: Literal["roof", "ground"]
    style: Literal["dark", "bright"]
    n_modules: int
    mount: Literal["flush", "tilted"]


@dataclass
class Scene:
    """A generated scene and its truth.

    Attributes:
        image: ``(bands, H, W)`` array of ``spec.dtype``.
        transform: Pixel → map affine transform (north up, square ``gsd`` pixels).
        crs: CRS of ``transform`` and of ``panels``.
        panels: One polygon per panel array, in map coordinates of ``crs``; exterior
            counter-clockwise.
        instance_mask: ``(H, W)`` int32: 0 background, ``i + 1`` where the centre of the pixel
            lies in ``panels[i]`` (the rule of :func:`rasterio.features.rasterize`).
        classes: ``(H, W)`` uint8 semantic map, values of :class:`SceneClass`.
        panel_info: Kind, style, module count and mount of ``panels[i]``.
        spec: The specification that made the scene (``origin`` resolved).
        sun_azimuth: Degrees clockwise from north.
        sun_elevation: Degrees above the horizon.
    """

    image: np.ndarray
    transform: Affine
    crs: rasterio.crs.CRS
    panels: list[Polygon]
    instance_mask: np.ndarray
    classes: np.ndarray
    panel_info: list[PanelInfo]
    spec: SceneSpec
    sun_azimuth: float
    sun_elevation: float

    @property
    def gsd(self) -> float:
        """Ground sampling distance in metres per pixel."""
        return self.spec.gsd

    @property
    def nodata(self) -> float | None:
        """The nodata value of ``image``, or ``None``."""
        return self.spec.nodata

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in map coordinates."""
        left, top = self.transform.c, self.transform.f
        h, w = self.instance_mask.shape
        return left, top - h * self.spec.gsd, left + w * self.spec.gsd, top


# --------------------------------------------------------------------------------------------
# CRS helpers
# --------------------------------------------------------------------------------------------
def _projected_crs(crs: str) -> CRS:
    try:
        parsed = CRS.from_user_input(crs)
    except Exception as e:
        raise ConfigError(f"SceneSpec: cannot parse CRS {crs!r}: {e}") from e
    if not parsed.is_projected:
        raise ConfigError(
            f"SceneSpec: CRS {crs!r} is not projected; synthetic scenes need metres "
            "(use a UTM zone such as EPSG:32632)"
        )
    unit = parsed.axis_info[0].unit_name.lower() if parsed.axis_info else ""
    if unit not in ("metre", "meter", "m"):
        raise ConfigError(f"SceneSpec: CRS {crs!r} is in {unit!r}, not metres")
    return parsed


def _default_origin(crs: CRS) -> tuple[float, float]:
    if crs.to_epsg() == 32632:
        return 680000.0, 5152000.0  # Bolzano, South Tyrol
    area = crs.area_of_use
    if area is None:
        return 500000.0, 5000000.0
    lon, lat = (area.west + area.east) / 2.0, (area.south + area.north) / 2.0
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    return round(x, -3), round(y, -3)


# --------------------------------------------------------------------------------------------
# Layout (metres; x to the right, y down, origin at the upper-left corner of the scene)
# --------------------------------------------------------------------------------------------
@dataclass
class _Rect:
    """Oriented rectangle: ``length`` along ``angle`` (radians, x right / y down)."""

    cx: float
    cy: float
    length: float
    width: float
    angle: float

    @property
    def d(self) -> np.ndarray:
        return np.array([math.cos(self.angle), math.sin(self.angle)])

    @property
    def p(self) -> np.ndarray:
        return np.array([-math.sin(self.angle), math.cos(self.angle)])

    @property
    def c(self) -> np.ndarray:
        return np.array([self.cx, self.cy])

    def corners(self) -> np.ndarray:
        d, p, c = self.d * self.length / 2, self.p * self.width / 2, self.c
        return np.array([c - d - p, c + d - p, c + d + p, c - d + p])

    def polygon(self) -> Polygon:
        return Polygon(self.corners())


@dataclass
class _Facet:
    ring: np.ndarray  # (N, 2) metres
    downslope: np.ndarray | None  # unit vector, None for flat
    slope: float  # radians


@dataclass
class _Look:
    """How the panels of one installation look (shared by its arrays)."""

    style: Literal["dark", "bright"]
    base: np.ndarray  # (4,) module colour before illumination
    frame: np.ndarray  # (4,) frame and gap colour
    line_width: float  # metres of frame + gap between modules


def _panel_look(rng: np.random.Generator, style: PanelStyle) -> _Look:
    chosen = _pick_style(rng, style)
    if chosen == "dark":
        # From mono-crystalline black to poly-crystalline dark blue-grey (USGS CA tiles).
        t = rng.random()
        base = np.array([0.06, 0.07, 0.11, 0.07]) * (1 - t) + np.array([0.27, 0.32, 0.40, 0.15]) * t
        base = base * rng.uniform(0.9, 1.15)
        aluminium = rng.random() < 0.7
        frame = np.array([0.62, 0.64, 0.67, 0.5] if aluminium else [0.04, 0.04, 0.05, 0.05])
    else:
        # Hazy sky reflection as in South Tyrol 2023: HSV value ≈ 0.5-0.8, blue-cyan hue.
        value = rng.uniform(0.52, 0.80)
        base = np.array([*_hsv_to_rgb(rng.uniform(196, 212), rng.uniform(0.10, 0.26), value), 0.0])
        base[3] = value * 0.35
        frame = np.array([0.88, 0.90, 0.92, 0.6])
    return _Look(
        chosen, base.astype(np.float32), frame.astype(np.float32), float(rng.uniform(0.05, 0.11))
    )


@dataclass
class _Array:
    """A panel array: rows of modules in a frame (origin, eu, ev), all in metres."""

    origin: np.ndarray
    eu: np.ndarray
    ev: np.ndarray
    module_u: float  # module pitch along eu as seen from above
    module_v: float  # module pitch along ev as seen from above
    rows: list[tuple[int, int]]  # per module row: (first column, number of columns)
    kind: Literal["roof", "ground"]
    mount: Literal["flush", "tilted"]
    look: _Look
    illumination: float
    height: float  # of the upper edge above what it stands on, for its shadow

    def polygon(self) -> Polygon:
        # Union in module units, where shared row edges are exactly equal, then map to metres:
        # a union in metres leaves slivers along those edges.
        cells = [
            Polygon([(c0, j), (c0 + n, j), (c0 + n, j + 1), (c0, j + 1)])
            for j, (c0, n) in enumerate(self.rows)
        ]
        grid = shapely.union_all(cells) if len(cells) > 1 else cells[0]
        if isinstance(grid, MultiPolygon):  # rows that only touch at a corner: keep the hull
            grid = grid.convex_hull
        grid = shapely.simplify(grid, 0.0)  # drop collinear vertices
        eu, ev = self.eu * self.module_u, self.ev * self.module_v
        matrix = [eu[0], ev[0], eu[1], ev[1], self.origin[0], self.origin[1]]
        return orient(shapely.affinity.affine_transform(grid, matrix), 1.0)

    @property
    def style(self) -> Literal["dark", "bright"]:
        return self.look.style

    @property
    def n_modules(self) -> int:
        return sum(n for _, n in self.rows)


@dataclass
class _Building:
    parts: list[_Rect]
    facets: list[_Facet]
    colour: np.ndarray
    texture: Literal["tile", "seam", "flat", "plain"]
    height: float
    flat: bool
    arrays: list[_Array] = field(default_factory=list)
    boxes: list[_Rect] = field(default_factory=list)
    apron: Polygon | None = None  # concrete around an industrial building
    yard: Polygon | None = None  # a paved yard or driveway beside a house
    ridges: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Road:
    line: LineString
    width: float
    sidewalk: float
    zebras: list[Polygon]


@dataclass
class _Orchard:
    rect: _Rect
    spacing: float
    canopy: float
    height: float
    tree_spacing: float  # 0 for continuous vineyard rows
    net: bool


@dataclass
class _Field:
    area: Polygon
    arrays: list[_Array]


@dataclass
class _Tree:
    ring: np.ndarray
    centre: np.ndarray
    radius: float
    height: float


@dataclass
class _Hedge:
    segments: list[_Rect]
    height: float


@dataclass
class _Layout:
    width_m: float
    height_m: float
    shadow_dir: np.ndarray  # metres of shadow per metre of height (x right, y down)
    sun_dir: np.ndarray  # unit vector toward the sun (x right, y down)
    sun_vec: np.ndarray  # unit vector toward the sun (east, north, up)
    nodata_ring: np.ndarray | None = None
    roads: list[_Road] = field(default_factory=list)
    parkings: list[tuple[_Rect, list[np.ndarray]]] = field(default_factory=list)
    orchards: list[_Orchard] = field(default_factory=list)
    fields: list[_Field] = field(default_factory=list)
    buildings: list[_Building] = field(default_factory=list)
    trees: list[_Tree] = field(default_factory=list)
    hedges: list[_Hedge] = field(default_factory=list)
    cars: list[_Rect] = field(default_factory=list)
    car_colours: list[np.ndarray] = field(default_factory=list)
    azimuth: float = 180.0
    elevation: float = 45.0


class _Occupancy:
    """Polygons already placed, to reject overlapping candidates."""

    def __init__(self) -> None:
        self.geoms: list[Polygon] = []

    def free(self, geom: Polygon) -> bool:
        if not self.geoms:
            return True
        return not bool(shapely.intersects(np.asarray(self.geoms, dtype=object), geom).any())

    def add(self, geom: Polygon) -> None:
        self.geoms.append(geom)


def _illumination(downslope: np.ndarray | None, slope: float, sun_vec: np.ndarray) -> float:
    """Brightness of a facet relative to flat ground (Lambert plus sky light)."""
    if downslope is None or slope == 0.0:
        return 1.0
    e, n = downslope[0], -downslope[1]
    normal = np.array([math.sin(slope) * e, math.sin(slope) * n, math.cos(slope)])
    lit = _AMBIENT + (1 - _AMBIENT) * max(0.0, float(normal @ sun_vec))
    flat = _AMBIENT + (1 - _AMBIENT) * float(sun_vec[2])
    return float(np.clip(lit / flat, 0.45, 1.5))


def _pick_style(rng: np.random.Generator, style: PanelStyle) -> Literal["dark", "bright"]:
    if style == "mixed":
        return "dark" if rng.random() < 0.5 else "bright"
    return style


def _shadow_of(poly: Polygon, height: float, shadow_dir: np.ndarray) -> Polygon:
    """Shadow on flat ground of a prism of ``height`` over convex ``poly`` (with the prism)."""
    moved = shapely.affinity.translate(poly, height * shadow_dir[0], height * shadow_dir[1])
    return shapely.union(poly, moved).convex_hull


def _layout(spec: SceneSpec, rng: np.random.Generator) -> _Layout:
    """Place everything, in metres. Uses only ``rng`` so the layout is independent of gsd."""
    wm, hm = spec.extent_m
    area_ha = wm * hm / 1e4
    azimuth = spec.sun_azimuth if spec.sun_azimuth is not None else rng.uniform(110, 250)
    elevation = spec.sun_elevation if spec.sun_elevation is not None else rng.uniform(30, 65)
    az, el = math.radians(azimuth), math.radians(elevation)
    sun_en = np.array([math.cos(el) * math.sin(az), math.cos(el) * math.cos(az), math.sin(el)])
    sun_xy = np.array([math.sin(az), -math.cos(az)])
    layout = _Layout(
        width_m=wm,
        height_m=hm,
        shadow_dir=-sun_xy / math.tan(el),
        sun_dir=sun_xy,
        sun_vec=sun_en,
    )
    layout.azimuth, layout.elevation = float(azimuth), float(elevation)
    occ = _Occupancy()  # everything placed, with its shadow
    hard = _Occupancy()  # footprints only (hedges may stand in a building's shadow)
    sensitive = _Occupancy()  # panels: no shadow may fall on them
    scene_box = Polygon([(0, 0), (wm, 0), (wm, hm), (0, hm)])
    inner = scene_box.buffer(-0.5)
    grid_angle = rng.uniform(0, math.pi / 2)

    def street_angle() -> float:
        if rng.random() < 0.65:
            return grid_angle + rng.integers(0, 4) * math.pi / 2 + rng.normal(0, 0.03)
        return rng.uniform(0, math.pi)

    if spec.nodata is not None:
        corner = int(rng.integers(0, 4))
        a, b = rng.uniform(0.2, 0.45) * wm, rng.uniform(0.2, 0.45) * hm
        cx, cy = (0.0 if corner in (0, 3) else wm), (0.0 if corner in (0, 1) else hm)
        sx, sy = (1 if cx == 0 else -1), (1 if cy == 0 else -1)
        ring = np.array([(cx, cy), (cx + sx * a, cy), (cx, cy + sy * b)])
        layout.nodata_ring = ring
        occ.add(Polygon(ring).buffer(1.0))
        hard.add(Polygon(ring).buffer(1.0))

    # Roads first: they structure the scene.
    if spec.roads:
        n_roads = 1 + int(area_ha > 6 and rng.random() < 0.6)
        for _ in range(n_roads):
            road = _make_road(rng, wm, hm, grid_angle)
            full = road.line.buffer(road.width / 2 + road.sidewalk + 0.5, cap_style="flat")
            occ.add(full)
            hard.add(full)
            layout.roads.append(road)
            _cars_on_road(rng, road, layout, wm, hm)

    # Solar fields are placed first: they are rare and big.
    n_fields = (
        spec.n_ground_fields
        if spec.n_ground_fields is not None
        else int(area_ha / 2.0 + rng.random())
    )
    for _ in range(n_fields):
        for _attempt in range(25):
            fld = _make_field(rng, wm, hm, layout, spec.panel_style)
            if fld is None:
                break
            if inner.contains(fld.area) and occ.free(fld.area.buffer(1.5)):
                layout.fields.append(fld)
                occ.add(fld.area.buffer(1.5))
                hard.add(fld.area.buffer(1.5))
                sensitive.add(fld.area)
                break

    # Buildings before orchards, so that small scenes still get some.
    n_roofs = spec.n_roofs if spec.n_roofs is not None else max(1, round(4.0 * area_ha))
    for i in range(n_roofs):
        for _attempt in range(60 if i == 0 else 40):
            if layout.roads and rng.random() < 0.5:
                b = _building_on_street(rng, wm, hm, layout)
            else:
                b = _make_building(rng, wm, hm, street_angle())
            foot = shapely.union_all([p.polygon() for p in b.parts])
            shadow = shapely.union_all(
                [_shadow_of(p.polygon(), b.height, layout.shadow_dir) for p in b.parts]
            )
            need = shapely.union(foot.buffer(1.0), shadow)
            for paved in (b.apron, b.yard):
                if paved is not None:
                    need = shapely.union(need, paved)
            if inner.contains(foot) and occ.free(need):
                if i == 0 or rng.random() < spec.roof_panel_probability:
                    _panels_on_building(rng, b, layout, spec.panel_style)
                    if i == 0 and not b.arrays:
                        continue  # the first building must carry panels: try another
                if b.flat:
                    _boxes_on_roof(rng, b)
                if spec.roads and b.apron is not None and rng.random() < 0.7:
                    lot = _parking(rng, b, layout, occ, inner)
                    if lot is not None:
                        hard.add(lot)
                layout.buildings.append(b)
                occ.add(need)
                hard.add(shapely.union_all([foot.buffer(0.5), b.apron or foot, b.yard or foot]))
                if b.arrays:
                    sensitive.add(foot)
                break

    if spec.orchards:
        n_orch = max(int(area_ha >= 0.4), round(area_ha / 3.0 * rng.uniform(0.6, 1.4)))
        for _ in range(n_orch):
            for attempt in range(30):
                orch = _make_orchard(rng, wm, hm, street_angle(), 1.0 - attempt / 45)
                poly = orch.rect.polygon()
                if inner.contains(poly.centroid) and occ.free(poly.buffer(1.0)):
                    layout.orchards.append(orch)
                    occ.add(poly.buffer(1.0))
                    hard.add(poly.buffer(1.0))
                    break

    # Hedges along some garden boundaries: straight, high-contrast vegetation edges.
    for b in list(layout.buildings):
        if b.flat or rng.random() > 0.4:
            continue
        main = b.parts[-1]
        setback = rng.uniform(2.5, 6.0)
        plot = _Rect(
            main.cx, main.cy, main.length + 2 * setback, main.width + 2 * setback, main.angle
        )
        corners = plot.corners()
        width, height = rng.uniform(0.7, 1.4), rng.uniform(1.2, 2.5)
        segments = []
        for side in rng.permutation(4)[: int(rng.integers(1, 4))]:
            a_pt, b_pt = corners[side], corners[(side + 1) % 4]
            mid, vec = (a_pt + b_pt) / 2, b_pt - a_pt
            seg = _Rect(
                mid[0], mid[1], float(np.linalg.norm(vec)), width, math.atan2(vec[1], vec[0])
            )
            poly = seg.polygon()
            if (
                inner.contains(poly)
                and hard.free(poly)
                and sensitive.free(_shadow_of(poly, height, layout.shadow_dir))
            ):
                segments.append(seg)
        if segments:
            layout.hedges.append(_Hedge(segments, height))
            for seg in segments:
                occ.add(seg.polygon().buffer(0.3))

    n_trees = spec.n_trees if spec.n_trees is not None else round(12 * area_ha)
    for _ in range(n_trees):
        for _attempt in range(12):
            r = float(np.clip(rng.lognormal(math.log(2.6), 0.35), 1.2, 6.5))
            c = np.array([rng.uniform(-r, wm + r), rng.uniform(-r, hm + r)])
            n_vert = 28
            ang = np.linspace(0, 2 * math.pi, n_vert, endpoint=False)
            wobble = (
                1
                + 0.12
                * np.convolve(np.tile(rng.normal(0, 1, n_vert), 3), np.ones(3) / 3, "same")[
                    n_vert : 2 * n_vert
                ]
            )
            ring = c + np.stack([np.cos(ang), np.sin(ang)], 1) * (r * wobble)[:, None]
            crown = Polygon(ring)
            h = float(np.clip(r * rng.uniform(1.6, 3.0), 3.0, 20.0))
            tree = _Tree(ring, c, r, h)
            shadow = _tree_shadow(tree, layout.shadow_dir)
            if occ.free(crown.buffer(0.3)) and sensitive.free(shadow) and occ.free(shadow):
                layout.trees.append(tree)
                occ.add(crown.buffer(0.3))
                break
    return layout


def _make_road(rng: np.random.Generator, wm: float, hm: float, grid_angle: float) -> _Road:
    angle = grid_angle + rng.integers(0, 2) * math.pi / 2 + rng.normal(0, 0.05)
    d = np.array([math.cos(angle), math.sin(angle)])
    p = np.array([-d[1], d[0]])
    centre = np.array([rng.uniform(0.25, 0.75) * wm, rng.uniform(0.25, 0.75) * hm])
    half = math.hypot(wm, hm) * 0.75 + 20
    bend = rng.normal(0, 0.04) * half if rng.random() < 0.5 else 0.0
    t = np.linspace(-1, 1, 65)
    pts = centre + np.outer(t * half, d) + np.outer(bend * (1 - t**2), p)
    width = rng.uniform(5.5, 8.0)
    sidewalk = rng.uniform(1.5, 2.5) if rng.random() < 0.7 else 0.0
    line = LineString(pts)
    zebras = []
    if rng.random() < 0.5:
        # A crossing inside the scene: stripes parallel to the road, across its width.
        s = line.project(Point(wm / 2, hm / 2))
        at = np.array(line.interpolate(s).coords[0])
        ahead = np.array(line.interpolate(s + 1.0).coords[0])
        t_dir = (ahead - at) / max(np.linalg.norm(ahead - at), 1e-9)
        n_dir = np.array([-t_dir[1], t_dir[0]])
        k = np.arange(-width / 2 + 0.5, width / 2 - 0.4, 1.0)
        for off in k:
            c = at + n_dir * (off + 0.25)
            zebras.append(_Rect(c[0], c[1], 3.0, 0.5, math.atan2(t_dir[1], t_dir[0])).polygon())
    return _Road(line, width, sidewalk, zebras)


def _cars_on_road(
    rng: np.random.Generator, road: _Road, layout: _Layout, wm: float, hm: float
) -> None:
    length = road.line.length
    s = rng.uniform(0, 12)
    while s < length:
        at = np.array(road.line.interpolate(s).coords[0])
        if -5 < at[0] < wm + 5 and -5 < at[1] < hm + 5 and rng.random() < 0.35:
            ahead = np.array(road.line.interpolate(min(s + 1, length)).coords[0])
            t_dir = (ahead - at) / max(np.linalg.norm(ahead - at), 1e-9)
            n_dir = np.array([-t_dir[1], t_dir[0]])
            side = rng.choice([-1.0, 1.0])
            lane = road.width / 4 if rng.random() < 0.5 else road.width / 2 - 1.3
            c = at + n_dir * side * lane
            layout.cars.append(
                _Rect(
                    c[0],
                    c[1],
                    rng.uniform(4.0, 4.8),
                    rng.uniform(1.7, 1.9),
                    math.atan2(t_dir[1], t_dir[0]),
                )
            )
            layout.car_colours.append(_CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS))])
        s += rng.uniform(6, 25)


def _make_orchard(
    rng: np.random.Generator, wm: float, hm: float, angle: float, shrink: float
) -> _Orchard:
    vineyard = rng.random() < 0.4
    length = min(rng.uniform(30, 80), 0.6 * max(wm, hm)) * shrink
    width = min(rng.uniform(20, 50), 0.5 * min(wm, hm)) * shrink
    rect = _Rect(rng.uniform(0, wm), rng.uniform(0, hm), length, width, angle)
    if vineyard:
        return _Orchard(rect, rng.uniform(1.8, 2.5), rng.uniform(0.6, 1.0), 1.8, 0.0, False)
    return _Orchard(
        rect,
        rng.uniform(3.0, 3.8),
        rng.uniform(1.2, 1.9),
        rng.uniform(2.8, 3.8),
        rng.uniform(0.8, 1.3),
        rng.random() < 0.3,
    )


def _module_size(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(*_MODULE_SHORT)), float(rng.uniform(*_MODULE_LONG))


def _make_field(
    rng: np.random.Generator, wm: float, hm: float, layout: _Layout, style: PanelStyle
) -> _Field | None:
    short, long = _module_size(rng)
    tilt = math.radians(rng.uniform(20, 32))
    if rng.random() < 0.6:
        deep, across = rng.integers(2, 5), short  # landscape modules, 2-4 deep
        along = long
    else:
        deep, across = rng.integers(1, 3), long  # portrait, 1-2 deep
        along = short
    depth_true = int(deep) * across
    depth = depth_true * math.cos(tilt)
    top = depth_true * math.sin(tilt) + rng.uniform(0.5, 0.9)
    shadow_len = top * float(np.linalg.norm(layout.shadow_dir))
    pitch = depth + max(rng.uniform(1.5, 3.5), shadow_len * rng.uniform(0.8, 1.1))
    n_rows = int(rng.integers(2, 9))
    n_cols = int(rng.integers(12, 50))
    length = n_cols * along
    if length > 0.85 * wm or n_rows * pitch > 0.85 * hm:
        n_cols = int(min(n_cols, 0.85 * wm / along))
        n_rows = int(min(n_rows, 0.85 * hm / pitch))
        if n_cols < 6 or n_rows < 2:
            return None
        length = n_cols * along
    # Rows run roughly east-west and face the equator (south: +y).
    angle = rng.normal(0, 0.12)
    eu = np.array([math.cos(angle), math.sin(angle)])
    ev = np.array([-eu[1], eu[0]])  # pointing south-ish (y down)
    total = n_rows * pitch
    origin = np.array(
        [rng.uniform(0.05 * wm, 0.95 * wm - length), rng.uniform(0.05 * hm, 0.95 * hm - total)]
    )
    facing = ev  # downslope toward the south
    illum = _illumination(facing, tilt, layout.sun_vec)
    look = _panel_look(rng, style)
    arrays = []
    for j in range(n_rows):
        o = origin + ev * (j * pitch)
        ragged = rng.random() < 0.2
        c0 = int(rng.integers(0, 3)) if ragged else 0
        n = n_cols - c0 - (int(rng.integers(0, 3)) if ragged else 0)
        rows = [(c0, n)] * int(deep)
        arrays.append(
            _Array(
                o,
                eu,
                ev,
                along,
                across * math.cos(tilt),
                rows,
                "ground",
                "tilted",
                look,
                illum,
                top,
            )
        )
    corners = [origin, origin + eu * length, origin + eu * length + ev * total, origin + ev * total]
    area = Polygon(corners).buffer(1.0, join_style="mitre")
    area = shapely.union(
        area,
        shapely.union_all(
            [_shadow_of(a.polygon(), a.height, layout.shadow_dir) for a in arrays]
        ).buffer(0.5),
    )
    return _Field(area, arrays)


def _make_building(
    rng: np.random.Generator,
    wm: float,
    hm: float,
    angle: float,
) -> _Building:
    limit = 0.6 * min(wm, hm)
    industrial = rng.random() < 0.25 and limit > 20
    cx, cy = rng.uniform(0, wm), rng.uniform(0, hm)
    if industrial:
        length = min(rng.uniform(25, 70), limit)
        width = min(rng.uniform(14, 35), 0.8 * length)
        rect = _Rect(cx, cy, length, width, angle)
        colour_name = rng.choice(["bright", "grey", "bright", "dark", "metal", "brown"])
        b = _Building(
            [rect],
            [_Facet(rect.corners(), None, 0.0)],
            _ROOF_COLOURS[str(colour_name)],
            "seam" if colour_name == "metal" else "flat",
            rng.uniform(6, 12),
            True,
        )
        b.apron = rect.polygon().buffer(rng.uniform(3, 8), join_style="mitre")
        return b

    length = min(rng.uniform(10, 22), limit)
    width = min(rng.uniform(8, 13), 0.9 * length)
    rect = _Rect(cx, cy, length, width, angle)
    parts = [rect]
    if rng.random() < 0.35 and length > 9:
        # An L-shape: a perpendicular wing at one end, drawn first so the main roof covers
        # the overlap.
        w2 = rng.uniform(0.5, 0.9) * width
        ext = rng.uniform(3, 8)
        s1, s2 = rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])
        c = rect.c + rect.d * s1 * (length / 2 - w2 / 2) + rect.p * s2 * (ext / 2)
        parts.insert(0, _Rect(c[0], c[1], ext + width, w2, angle + math.pi / 2))
    hip = rng.random() < 0.3
    slope = math.radians(rng.uniform(20, 40))
    colour_name = str(
        rng.choice(["red_tile", "red_tile", "brown", "grey", "dark", "metal", "bright"])
    )
    texture = {"red_tile": "tile", "brown": "tile", "metal": "seam"}.get(colour_name, "plain")
    colour = _ROOF_COLOURS[colour_name] * rng.uniform(0.85, 1.12)
    facets: list[_Facet] = []
    ridges: list[np.ndarray] = []
    for part in parts:
        f, ridge = _roof_facets(part, slope, hip)
        facets.extend(f)
        ridges.append(ridge)
    yard = None
    if rng.random() < 0.5:
        depth = rng.uniform(3.0, 6.0)
        side = rng.choice([-1.0, 1.0])
        c = rect.c + rect.p * side * (width / 2 + depth / 2)
        yard = _Rect(c[0], c[1], length * rng.uniform(0.6, 1.2), depth, angle).polygon()
    return _Building(
        parts,
        facets,
        colour.astype(np.float32),
        texture,  # type: ignore[arg-type]
        rng.uniform(5.5, 9.0) + math.tan(slope) * width / 4,
        False,
        ridges=ridges,
        yard=yard,
    )


def _building_on_street(
    rng: np.random.Generator, wm: float, hm: float, layout: _Layout
) -> _Building:
    """A building facing a road, parallel to it, set back from the sidewalk."""
    road = layout.roads[int(rng.integers(0, len(layout.roads)))]
    inside = road.line.intersection(Polygon([(0, 0), (wm, 0), (wm, hm), (0, hm)]))
    span = road.line.project(Point(inside.coords[0])) if not inside.is_empty else 0.0
    end = road.line.project(Point(inside.coords[-1])) if not inside.is_empty else 0.0
    s = rng.uniform(min(span, end), max(span, end))
    at = np.array(road.line.interpolate(s).coords[0])
    ahead = np.array(road.line.interpolate(s + 1.0).coords[0])
    tangent = (ahead - at) / max(float(np.linalg.norm(ahead - at)), 1e-9)
    normal = np.array([-tangent[1], tangent[0]]) * rng.choice([-1.0, 1.0])
    angle = math.atan2(tangent[1], tangent[0]) + rng.normal(0, 0.02)
    b = _make_building(rng, wm, hm, angle)
    main = b.parts[-1]
    depth = max(abs(float((p.c - main.c) @ normal)) + p.width / 2 for p in b.parts)
    if b.apron is not None:
        depth += 4.0
    offset = road.width / 2 + road.sidewalk + rng.uniform(3.0, 9.0) + depth
    target = at + normal * offset
    return _shift_building(b, target - main.c)


def _shift_building(b: _Building, offset: np.ndarray) -> _Building:
    dx, dy = float(offset[0]), float(offset[1])
    for p in b.parts:
        p.cx += dx
        p.cy += dy
    for f in b.facets:
        f.ring = f.ring + offset
    b.ridges = [r + offset for r in b.ridges]
    if b.apron is not None:
        b.apron = shapely.affinity.translate(b.apron, dx, dy)
    if b.yard is not None:
        b.yard = shapely.affinity.translate(b.yard, dx, dy)
    return b


def _roof_facets(rect: _Rect, slope: float, hip: bool) -> tuple[list[_Facet], np.ndarray]:
    c, d, p = rect.c, rect.d, rect.p
    half_l, half_w = rect.length / 2, rect.width / 2
    inset = min(half_w, half_l) if hip else 0.0
    r1, r2 = c - d * (half_l - inset), c + d * (half_l - inset)
    facets = [
        _Facet(
            np.array([c - d * half_l + p * half_w, c + d * half_l + p * half_w, r2, r1]), p, slope
        ),
        _Facet(
            np.array([c - d * half_l - p * half_w, c + d * half_l - p * half_w, r2, r1]), -p, slope
        ),
    ]
    if hip:
        facets.append(
            _Facet(
                np.array([c - d * half_l - p * half_w, c - d * half_l + p * half_w, r1]), -d, slope
            )
        )
        facets.append(
            _Facet(
                np.array([c + d * half_l - p * half_w, c + d * half_l + p * half_w, r2]), d, slope
            )
        )
    return facets, np.array([r1, r2])


def _panels_on_building(
    rng: np.random.Generator, b: _Building, layout: _Layout, style: PanelStyle
) -> None:
    short, long = _module_size(rng)
    look = _panel_look(rng, style)
    if b.flat:
        rect = b.parts[0]
        margin = rng.uniform(1.0, 2.5)
        if rng.random() < 0.6:
            # Tilted rows facing the long side that sees the sun better; one array per row.
            tilt = math.radians(rng.uniform(8, 15))
            deep = int(rng.integers(1, 3))
            depth = deep * long * math.cos(tilt)
            top = deep * long * math.sin(tilt) + 0.3
            pitch = depth + rng.uniform(0.8, 2.0)
            face = rect.p if float(rect.p @ layout.sun_dir) > 0 else -rect.p
            illum = _illumination(face, tilt, layout.sun_vec)
            n_rows = int((rect.width - 2 * margin) // pitch)
            n_cols = int((rect.length - 2 * margin) // short)
            if n_rows < 1 or n_cols < 2:
                return
            n_rows = int(rng.integers(max(1, n_rows // 2), n_rows + 1))
            eu, ev = rect.d, -face
            start = (
                rect.c - rect.d * (n_cols * short / 2) - ev * (n_rows * pitch - (pitch - depth)) / 2
            )
            for j in range(n_rows):
                cols = n_cols - int(rng.integers(0, max(1, n_cols // 4)))
                c0 = int(rng.integers(0, n_cols - cols + 1))
                b.arrays.append(
                    _Array(
                        start + ev * (j * pitch),
                        eu,
                        ev,
                        short,
                        long * math.cos(tilt),
                        [(c0, cols)] * deep,
                        "roof",
                        "tilted",
                        look,
                        illum,
                        top,
                    )
                )
        else:
            # One flush block covering much of the roof.
            portrait = rng.random() < 0.5
            mu, mv = (short, long) if portrait else (long, short)
            n_cols = int((rect.length - 2 * margin) // mu)
            n_rows = int((rect.width - 2 * margin) // mv)
            if n_rows < 1 or n_cols < 2:
                return
            n_cols = int(rng.integers(max(2, n_cols // 2), n_cols + 1))
            n_rows = int(rng.integers(max(1, n_rows // 2), n_rows + 1))
            origin = rect.c - rect.d * (n_cols * mu / 2) - rect.p * (n_rows * mv / 2)
            origin = (
                origin + rect.d * rng.uniform(-1, 1) * (rect.length - 2 * margin - n_cols * mu) / 2
            )
            b.arrays.append(
                _Array(
                    origin,
                    rect.d,
                    rect.p,
                    mu,
                    mv,
                    [(0, n_cols)] * n_rows,
                    "roof",
                    "flush",
                    look,
                    1.0,
                    0.25,
                )
            )
        return

    # Pitched roof: on the main part's facets that face the sun best (sometimes both).
    main = b.parts[-1]
    main_facets = [
        f for f in b.facets[-4:] if f.downslope is not None and abs(f.downslope @ main.p) > 0.99
    ]
    scored = sorted(main_facets, key=lambda f: -_illumination(f.downslope, f.slope, layout.sun_vec))
    chosen = scored[:1] if rng.random() < 0.75 else scored[:2]
    if rng.random() < 0.12:
        chosen = scored[-1:]
    hip_inset = np.linalg.norm(b.ridges[-1][1] - b.ridges[-1][0]) < main.length - 1e-6
    margin_eave = rng.uniform(0.3, 0.8)
    margin_ridge = rng.uniform(0.3, 0.6)
    margin_side = rng.uniform(0.4, 1.0)
    run = main.width / 2  # horizontal eave-to-ridge distance

    def fit(mu: float, mv: float) -> tuple[int, int]:
        """Module rows and columns that fit on a facet (the main roof covers the wing)."""
        n_rows = int((run - margin_eave - margin_ridge) // mv)
        top_depth = margin_eave + n_rows * mv  # from the eave, toward the ridge
        avail = main.length - 2 * margin_side - (2 * top_depth if hip_inset else 0.0)
        return n_rows, max(0, int(avail // mu))

    for facet in chosen:
        slope = facet.slope
        down = facet.downslope
        assert down is not None
        # Portrait (long side up the slope) or landscape, usually whichever holds more.
        options = []
        for mu, mv_true in ((short, long), (long, short)):
            mv = mv_true * math.cos(slope)
            n_rows, n_cols = fit(mu, mv)
            options.append((n_rows * n_cols, mu, mv, n_rows, n_cols))
        options.sort(key=lambda o: -o[0])
        pick = options[0] if rng.random() < 0.75 or options[1][0] < 4 else options[1]
        total, mu, mv, n_rows, n_cols = pick
        if n_rows < 1 or n_cols < 2 or total < 4:
            continue
        n_rows = int(rng.integers(max(1, n_rows - 1), n_rows + 1))
        n_cols = int(rng.integers(max(2, (3 * n_cols) // 5), n_cols + 1))
        ev = -down  # rows stacked from the eave up to the ridge
        eu = main.d
        eave_mid = main.c + down * run
        slack = max(0.0, main.length - 2 * margin_side - n_cols * mu) / 2
        if hip_inset:
            slack = 0.0
        along = rng.uniform(-slack, slack)
        origin = eave_mid + ev * margin_eave - eu * (n_cols * mu / 2 - along)
        rows = [(0, n_cols)] * n_rows
        if n_rows >= 2 and rng.random() < 0.3:
            cut = int(rng.integers(1, max(2, n_cols // 3)))
            rows[-1] = (cut // 2, n_cols - cut)  # a shorter top row, centred
        b.arrays.append(
            _Array(
                origin,
                eu,
                ev,
                mu,
                mv,
                rows,
                "roof",
                "flush",
                look,
                _illumination(down, slope, layout.sun_vec),
                0.15,
            )
        )


def _boxes_on_roof(rng: np.random.Generator, b: _Building) -> None:
    rect = b.parts[0]
    taken = [a.polygon().buffer(0.8) for a in b.arrays]
    roof = rect.polygon().buffer(-1.0)
    for _ in range(int(rng.integers(0, 5))):
        box_w, box_l = rng.uniform(0.8, 2.5), rng.uniform(1.0, 4.0)
        u, v = rng.uniform(-0.5, 0.5) * rect.length, rng.uniform(-0.5, 0.5) * rect.width
        c = rect.c + rect.d * u + rect.p * v
        cand = _Rect(c[0], c[1], box_l, box_w, rect.angle)
        poly = cand.polygon()
        if roof.contains(poly) and not any(poly.intersects(t) for t in taken):
            b.boxes.append(cand)
            taken.append(poly.buffer(0.5))


def _parking(
    rng: np.random.Generator, b: _Building, layout: _Layout, occ: _Occupancy, inner: Polygon
) -> Polygon | None:
    rect = b.parts[0]
    depth = 16.0  # two rows of 5 m stalls and a 6 m aisle
    length = min(rect.length, rng.uniform(20, 45))
    side = rng.choice([-1.0, 1.0])
    off = rect.width / 2 + 8.5 + depth / 2  # beyond the apron
    c = rect.c + rect.p * side * off
    lot = _Rect(c[0], c[1], length, depth, rect.angle)
    poly = lot.polygon()
    if not (inner.contains(poly) and occ.free(poly)):
        return None
    stalls: list[np.ndarray] = []
    n = int(length // 2.5)
    for row_sign in (-1.0, 1.0):
        for k in range(n + 1):
            u = -length / 2 + k * 2.5
            a = lot.c + lot.d * u + lot.p * row_sign * (depth / 2)
            e = lot.c + lot.d * u + lot.p * row_sign * (depth / 2 - 5.0)
            stalls.append(np.array([a, e]))
            if k < n and rng.random() < 0.45:
                cc = lot.c + lot.d * (u + 1.25) + lot.p * row_sign * (depth / 2 - 2.5)
                layout.cars.append(
                    _Rect(
                        cc[0],
                        cc[1],
                        rng.uniform(4.0, 4.8),
                        rng.uniform(1.7, 1.9),
                        rect.angle + math.pi / 2,
                    )
                )
                layout.car_colours.append(_CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS))])
    layout.parkings.append((lot, stalls))
    occ.add(poly)
    return poly


# --------------------------------------------------------------------------------------------
# Rendering helpers (pixels; continuous coordinates with pixel (r, c) covering [c, c+1)×[r, r+1))
# --------------------------------------------------------------------------------------------
def _cv(ring_px: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates → OpenCV fixed-point (shift 4, centres on integers)."""
    return np.round((np.asarray(ring_px, np.float64) - 0.5) * 16).astype(np.int32).reshape(-1, 1, 2)


def _rings(geom) -> Iterator[np.ndarray]:
    if geom.is_empty:
        return
    if isinstance(geom, Polygon):
        yield np.asarray(geom.exterior.coords)
    elif hasattr(geom, "geoms"):
        for g in geom.geoms:
            yield from _rings(g)


def _fill(mask: np.ndarray, rings: Sequence[np.ndarray], value: int = 255, aa: bool = True) -> None:
    # One call per ring: a single fillPoly call with several rings fills their overlaps by the
    # even-odd rule, i.e. not at all.
    line = cv2.LINE_AA if aa else cv2.LINE_8
    for r in rings:
        cv2.fillPoly(mask, [_cv(r)], value, line, shift=4)


def _stroke(mask: np.ndarray, lines: Sequence[np.ndarray], width_px: float) -> float:
    """Draw polylines; return the alpha scale that makes a sub-pixel line look as thin."""
    thickness = max(1, round(width_px))
    if lines:
        cv2.polylines(mask, [_cv(ln) for ln in lines], False, 255, thickness, cv2.LINE_AA, shift=4)
    return min(1.0, width_px / thickness)


def _offset(line: LineString, distance: float) -> np.ndarray:
    """A parallel of a gently curved polyline, ``distance`` to its left (x right, y down)."""
    pts = np.asarray(line.coords)
    tangent = np.gradient(pts, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return pts + np.column_stack([-tangent[:, 1], tangent[:, 0]]) * distance


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return slice(y, y + h), slice(x, x + w)


def _ring_bbox(
    ring_px: np.ndarray, shape: tuple[int, int], pad: int = 2
) -> tuple[slice, slice] | None:
    x0 = max(math.floor(float(ring_px[:, 0].min())) - pad, 0)
    y0 = max(math.floor(float(ring_px[:, 1].min())) - pad, 0)
    x1 = min(math.ceil(float(ring_px[:, 0].max())) + pad, shape[1])
    y1 = min(math.ceil(float(ring_px[:, 1].max())) + pad, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1)


def _blend(
    sub: np.ndarray, alpha: np.ndarray, colour: np.ndarray, gain: np.ndarray | None = None
) -> None:
    """``sub`` (4, h, w) += alpha · (colour · gain − sub), one plane at a time.

    ``colour`` is (4,); ``gain`` (h, w) or None. Working plane by plane keeps the temporaries
    two-dimensional, which is what bounds the memory of a scene.
    """
    for k in range(sub.shape[0]):
        target = colour[k] if gain is None else gain * colour[k]
        plane = sub[k]
        plane += alpha * (target - plane)


#: A texture: noise fields and their amplitudes; the gain is 1 + Σ amplitude · field.
_Texture = Sequence[tuple["_NoiseField", float]]


def _composite(
    img: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    scale: float = 1.0,
    texture: _Texture = (),
    at: tuple[slice, slice] | None = None,
) -> None:
    """Blend ``colour`` (× ``texture``) over planar ``img`` by ``mask`` / 255.

    ``mask`` covers the whole frame, or only the window ``at`` (cheaper for small objects).
    Rows are blended in strips so that a road across a 4096² scene needs no full-frame
    temporaries.
    """
    bb = _bbox(mask)
    if bb is None:
        return
    dy, dx = (at[0].start, at[1].start) if at is not None else (0, 0)
    cols = slice(bb[1].start + dx, bb[1].stop + dx)
    k = np.float32(scale / 255.0)
    for r0 in range(bb[0].start, bb[0].stop, _STRIP):
        r1 = min(r0 + _STRIP, bb[0].stop)
        a = mask[r0:r1, bb[1]].astype(np.float32)
        a *= k
        gain = None
        if texture:
            gain = np.ones_like(a)
            for field, amplitude in texture:
                gain += np.float32(amplitude) * field.rows(r0 + dy, r1 + dy)[:, cols]
        _blend(img[:, r0 + dy : r1 + dy, cols], a, colour, gain)


def _shifted(bb: tuple[slice, slice], at: tuple[slice, slice]) -> tuple[slice, slice]:
    """A window given relative to the window ``at`` → relative to the frame."""
    y, x = at[0].start, at[1].start
    return slice(bb[0].start + y, bb[0].stop + y), slice(bb[1].start + x, bb[1].stop + x)


class _NoiseField:
    """Smooth Gaussian noise (unit variance), features about ``cell_px`` pixels across.

    The field is a coarse random grid upsampled bicubically on demand, so it can be read in
    row strips that join seamlessly without ever holding the whole frame.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int, cell_px: float) -> None:
        self.rng, self.w, self.cell = rng, w, cell_px
        self.grid: np.ndarray | None = None
        if cell_px > 1.5:
            shape = (int(h / cell_px) + 4, int(w / cell_px) + 4)
            self.grid = rng.standard_normal(shape, dtype=np.float32)
            self.ox, self.oy = rng.uniform(0.5, 1.5, 2)

    def rows(self, y0: int, y1: int) -> np.ndarray:
        if self.grid is None:  # finer than a pixel: white noise
            return self.rng.standard_normal((y1 - y0, self.w), dtype=np.float32)
        c = self.cell
        inverse = np.array([[1 / c, 0, self.ox], [0, 1 / c, self.oy + y0 / c]], np.float64)
        out = cv2.warpAffine(
            self.grid, inverse, (self.w, y1 - y0), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        )
        out *= np.float32(1.17)  # bicubic interpolation of white noise has std ≈ 0.85
        return out


def _noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> np.ndarray:
    """A whole :class:`_NoiseField` of ``h`` × ``w`` pixels."""
    return _NoiseField(rng, h, w, cell_px).rows(0, h)


#: Rows per strip for the full-frame passes (ground, sensor noise): bounds their temporaries.
_STRIP = 512


def _local_uv(
    bb: tuple[slice, slice], origin: np.ndarray, eu: np.ndarray, ev: np.ndarray, gsd: float
) -> tuple[np.ndarray, np.ndarray]:
    """Metres along ``eu`` and ``ev`` from ``origin`` (metres) at the centres of bbox pixels."""
    ys = (np.arange(bb[0].start, bb[0].stop, dtype=np.float32) + 0.5) * gsd - origin[1]
    xs = (np.arange(bb[1].start, bb[1].stop, dtype=np.float32) + 0.5) * gsd - origin[0]
    u = xs[None, :] * np.float32(eu[0]) + ys[:, None] * np.float32(eu[1])
    v = xs[None, :] * np.float32(ev[0]) + ys[:, None] * np.float32(ev[1])
    return u, v


def _line_cover(t: np.ndarray, period: float, width: float, gsd: float) -> np.ndarray:
    """Fraction of each pixel covered by lines ``width`` wide every ``period`` along ``t``."""
    frac = t * np.float32(1.0 / period)
    frac -= np.floor(frac)
    dist = np.minimum(frac, 1 - frac) * np.float32(period)
    return np.clip((width / 2 + gsd / 2 - dist) / gsd, 0.0, min(1.0, width / gsd))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
class _Renderer:
    """Draws a layout into a planar float32 (4, H, W) image: red, green, blue, NIR in 0..1."""

    def __init__(self, spec: SceneSpec, layout: _Layout, rng: np.random.Generator) -> None:
        self.spec, self.lay, self.rng = spec, layout, rng
        self.h, self.w, self.gsd = spec.height, spec.width, spec.gsd
        self.img = np.empty((4, self.h, self.w), np.float32)
        self.classes = np.zeros((self.h, self.w), np.uint8)
        self.scale = 1.0 / spec.gsd
        # Skylight in the shadows varies with the atmosphere.
        self.shadow_factor = np.minimum(_SHADOW_FACTOR * np.float32(rng.uniform(0.85, 1.2)), 0.8)

    def px(self, ring_m: np.ndarray) -> np.ndarray:
        return np.asarray(ring_m, np.float64) * self.scale

    def mask(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def sub(self, bb: tuple[slice, slice]) -> np.ndarray:
        return self.img[:, bb[0], bb[1]]

    def paint(
        self,
        mask: np.ndarray,
        colour: np.ndarray,
        cls: int | None,
        texture: _Texture = (),
        at: tuple[slice, slice] | None = None,
    ) -> None:
        _composite(self.img, mask, colour, texture=texture, at=at)
        if cls is not None:
            classes = self.classes if at is None else self.classes[at]
            classes[mask > 127] = cls

    # -- ground --------------------------------------------------------------------------------
    def ground(self) -> None:
        rng, h, w, s = self.rng, self.h, self.w, self.scale
        macro = _NoiseField(rng, h, w, 30 * s)
        meso = _NoiseField(rng, h, w, 6 * s)
        patch = _NoiseField(rng, h, w, 2 * s)
        fine = _NoiseField(rng, h, w, 0.6 * s)
        amp = np.float32(0.035 * min(1.0, math.sqrt(0.15 / self.gsd)))
        for y0 in range(0, h, _STRIP):
            y1 = min(y0 + _STRIP, h)
            mac, mes, pat = macro.rows(y0, y1), meso.rows(y0, y1), patch.rows(y0, y1)
            t = np.clip(0.5 + 0.3 * mac + 0.15 * pat, 0, 1)
            dry = np.clip(0.35 * mac + 0.4 * mes + 0.1 * pat - 0.75, 0, 0.9)
            soil = np.clip(0.9 * mac + 1.0 * mes + 0.5 * pat - 3.0, 0, 0.85)
            shade = 1 + np.float32(0.04) * pat + np.float32(0.05) * fine.rows(y0, y1)
            shade += amp * rng.standard_normal((y1 - y0, w), dtype=np.float32)
            for k in range(4):
                plane = self.img[k, y0:y1]
                np.multiply(t, _GRASS_B[k] - _GRASS_A[k], out=plane)
                plane += _GRASS_A[k]
                plane += dry * (_DRY_GRASS[k] - plane)
                plane += soil * (_SOIL[k] - plane)
                plane *= shade

    # -- roads, aprons, parking -----------------------------------------------------------------
    def paved(self) -> None:
        lay, rng, h, w = self.lay, self.rng, self.h, self.w
        concrete = self.mask()
        for b in lay.buildings:
            for paved in (b.apron, b.yard):
                if paved is not None:
                    _fill(concrete, [self.px(r) for r in _rings(paved)])
        s = self.scale
        if concrete.any():
            tex = [(_NoiseField(rng, h, w, 3 * s), 0.05), (_NoiseField(rng, h, w, 0), 0.03)]
            tone = _CONCRETE * np.float32(rng.uniform(0.85, 1.1))
            self.paint(concrete, tone, SceneClass.ROAD, tex)
        asphalt, side, kerb, paint = self.mask(), self.mask(), self.mask(), self.mask()
        paint_lines: list[np.ndarray] = []
        for lot, stalls in lay.parkings:
            _fill(asphalt, [self.px(lot.corners())])
            paint_lines.extend(self.px(s) for s in stalls)
        kerb_lines: list[np.ndarray] = []
        for road in lay.roads:
            half = road.width / 2
            if road.sidewalk > 0:
                outer = road.line.buffer(half + road.sidewalk, cap_style="flat")
                _fill(side, [self.px(r) for r in _rings(outer)])
            _fill(asphalt, [self.px(r) for r in _rings(road.line.buffer(half, cap_style="flat"))])
            for off in (-half, half):
                kerb_lines.append(self.px(_offset(road.line, off)))
            for off in (-(half - 0.35), half - 0.35):
                paint_lines.append(self.px(_offset(road.line, off)))
            length = road.line.length
            for s0 in np.arange(0, length, 9.0):
                seg = shapely.ops.substring(road.line, s0, min(s0 + 3.0, length))
                paint_lines.append(self.px(np.asarray(seg.coords)))
            _fill(paint, [self.px(np.asarray(z.exterior.coords)) for z in road.zebras])
        if side.any():
            self.paint(side, _SIDEWALK, SceneClass.ROAD, [(_NoiseField(rng, h, w, 0.6 * s), 0.04)])
        if asphalt.any():
            tex = [(_NoiseField(rng, h, w, 8 * s), 0.06), (_NoiseField(rng, h, w, 0), 0.04)]
            tone = _ASPHALT * np.float32(rng.uniform(0.8, 1.25))
            self.paint(asphalt, tone, SceneClass.ROAD, tex)
        scale = _stroke(kerb, kerb_lines, 0.25 * self.scale)
        _composite(self.img, kerb, _KERB, scale)
        scale = _stroke(paint, paint_lines, 0.13 * self.scale)
        _composite(self.img, paint, _PAINT, 0.9 * scale)

    # -- orchards ------------------------------------------------------------------------------
    def orchards(self) -> None:
        for orch in self.lay.orchards:
            self.orchard(orch)

    def orchard(self, o: _Orchard) -> None:
        rect, gsd, rng = o.rect, self.gsd, self.rng
        ring = self.px(rect.corners())
        bb = _ring_bbox(ring, (self.h, self.w))
        if bb is None:
            return
        hh, ww = bb[0].stop - bb[0].start, bb[1].stop - bb[1].start
        m = np.zeros((hh, ww), np.uint8)
        _fill(m, [ring - [bb[1].start, bb[0].start]])
        inside = m > 0
        if not inside.any():
            return
        origin = rect.c - rect.d * rect.length / 2 - rect.p * rect.width / 2
        u, v = _local_uv(bb, origin, rect.d, rect.p, gsd)
        wobble = _noise(rng, hh, ww, 0.7 * self.scale)
        half = np.full_like(u, o.canopy / 2)
        if o.tree_spacing > 0:
            half *= 0.65 + 0.35 * np.abs(np.cos(np.pi * u / o.tree_spacing))
        half *= 1 + 0.15 * wobble
        sv = float(self.lay.shadow_dir @ rect.p) * o.height
        dv = v - o.spacing * (np.floor(v / o.spacing) + 0.5)  # signed, to the nearest row centre
        canopy = np.clip((half - np.abs(dv)) / gsd + 0.5, 0, 1)
        vs = v - sv / 2
        dvs = vs - o.spacing * (np.floor(vs / o.spacing) + 0.5)
        shade = np.clip((half + abs(sv) / 2 - np.abs(dvs)) / gsd + 0.5, 0, 1) * (1 - canopy)
        strip = 0.6 * np.clip((o.canopy * 0.9 - np.abs(dv)) / gsd, 0, 1)
        tex = 1 + 0.06 * _noise(rng, hh, ww, 0.5 * self.scale)
        sun_v = float(self.lay.sun_dir @ rect.p)
        lit = (0.85 + 0.3 * np.clip(dv / np.maximum(half, 1e-3), -1, 1) * sun_v) * (
            1 + 0.18 * wobble
        )
        grass = _GRASS_A * 1.05 if rng.random() < 0.5 else _DRY_GRASS
        canopy_col = _ORCHARD_CANOPY * np.float32(rng.uniform(0.9, 1.1))
        sub = self.sub(bb)
        for k in range(4):
            ground = (grass[k] + strip * (_SOIL[k] - grass[k])) * tex
            ground *= 1 - shade * (1 - self.shadow_factor[k])
            top = canopy_col[k] * lit
            if o.net:
                top += 0.55 * (_HAIL_NET[k] - top)
            col = ground + canopy * (top - ground)
            sub[k][inside] = col[inside]
        self.classes[bb][inside] = SceneClass.ORCHARD

    # -- ground-mounted solar fields (ground only; panels come after the shadows) ---------------
    def fields(self) -> None:
        m = self.mask()
        for f in self.lay.fields:
            _fill(m, [self.px(np.asarray(f.area.convex_hull.exterior.coords))])
        if m.any():
            tex = [(_NoiseField(self.rng, self.h, self.w, 2 * self.scale), 0.05)]
            grass = _GRASS_A * np.float32(self.rng.uniform(0.95, 1.15))
            _composite(self.img, m, grass, 0.7, texture=tex)

    # -- shadows -------------------------------------------------------------------------------
    def cast_shadows(self) -> None:
        lay, sd = self.lay, self.lay.shadow_dir
        rings: list[np.ndarray] = []
        for b in lay.buildings:
            for p in b.parts:
                rings.extend(self.px(r) for r in _rings(_shadow_of(p.polygon(), b.height, sd)))
        for t in lay.trees:
            rings.extend(self.px(r) for r in _rings(_tree_shadow(t, sd)))
        for f in lay.fields:
            for a in f.arrays:
                rings.extend(self.px(r) for r in _rings(_shadow_of(a.polygon(), a.height, sd)))
        for car in lay.cars:
            rings.extend(self.px(r) for r in _rings(_shadow_of(car.polygon(), 1.45, sd)))
        for hedge in lay.hedges:
            for seg in hedge.segments:
                rings.extend(
                    self.px(r) for r in _rings(_shadow_of(seg.polygon(), hedge.height, sd))
                )
        shadow = self.mask()
        _fill(shadow, rings)
        self.apply_shadow(shadow, ground=True)

    def apply_shadow(
        self, mask: np.ndarray, ground: bool, at: tuple[slice, slice] | None = None
    ) -> None:
        """Darken by ``mask`` (whole frame, or the window ``at``) with a soft penumbra."""
        bb = _bbox(mask)
        if bb is None:
            return
        local = mask[bb]
        if at is not None:
            bb = _shifted(bb, at)
        sigma = max(0.5, 0.12 * self.scale)
        pad = int(3 * sigma) + 1
        y0, y1 = max(bb[0].start - pad, 0), min(bb[0].stop + pad, self.h)
        x0, x1 = max(bb[1].start - pad, 0), min(bb[1].stop + pad, self.w)
        # The penumbra is blurred in 8 bits (a quarter of float32's memory), then applied in
        # strips.
        soft8 = np.zeros((y1 - y0, x1 - x0), np.uint8)
        soft8[bb[0].start - y0 : bb[0].stop - y0, bb[1].start - x0 : bb[1].stop - x0] = local
        cv2.GaussianBlur(soft8, (0, 0), sigma, dst=soft8)
        for r0 in range(0, y1 - y0, _STRIP):
            r1 = min(r0 + _STRIP, y1 - y0)
            soft = soft8[r0:r1].astype(np.float32)
            soft *= np.float32(1 / 255)
            sub = self.img[:, y0 + r0 : y0 + r1, x0:x1]
            for k in range(4):
                sub[k] *= 1 - soft * (1 - self.shadow_factor[k])
            if ground:
                cls = self.classes[y0 + r0 : y0 + r1, x0:x1]
                over = (cls == SceneClass.GROUND) | (cls == SceneClass.ROAD)
                cls[(soft8[r0:r1] > 127) & over] = SceneClass.SHADOW

    # -- panels --------------------------------------------------------------------------------
    def arrays(self, arrays: list[_Array], inst: np.ndarray, first_id: int) -> None:
        for k, a in enumerate(arrays):
            self.array(a, inst, first_id + k)

    def array(self, a: _Array, inst: np.ndarray, idx: int) -> None:
        rng, gsd = self.rng, self.gsd
        poly = a.polygon()
        bb = _ring_bbox(self.px(np.asarray(poly.exterior.coords)), (self.h, self.w), pad=1)
        if bb is None:
            return
        inside = inst[bb] == idx
        if not inside.any():
            return
        u, v = _local_uv(bb, a.origin, a.eu, a.ev, gsd)
        look = a.look
        illum = a.illumination if look.style == "dark" else 0.5 + 0.5 * a.illumination
        base = look.base * np.float32(illum)
        frame = look.frame * np.float32(min(1.2, illum))
        lines = np.maximum(
            _line_cover(u, a.module_u, look.line_width, gsd),
            _line_cover(v, a.module_v, look.line_width, gsd),
        )
        n_rows = len(a.rows)
        n_cols = max(c0 + n for c0, n in a.rows)
        spread = rng.uniform(0.015, 0.05)
        table = (1 + rng.normal(0, spread, (n_rows + 2, n_cols + 2))).astype(np.float32)
        iu = np.clip(np.floor(u / a.module_u).astype(np.int32) + 1, 0, n_cols + 1)
        iv = np.clip(np.floor(v / a.module_v).astype(np.int32) + 1, 0, n_rows + 1)
        gain = table[iv, iu]
        # A gentle gradient along the array (view angle), and sometimes a specular glint.
        length_u = n_cols * a.module_u
        gain *= 1 + np.float32(rng.normal(0, 0.04)) * (u / max(length_u, 1e-3) - 0.5)
        glint = None
        if rng.random() < 0.12:
            gu, gv = rng.uniform(0, length_u), rng.uniform(0, n_rows * a.module_v)
            sigma = rng.uniform(1.0, 3.0)
            strength = rng.uniform(0.3, 0.6)
            glint = np.exp(-((u - gu) ** 2 + (v - gv) ** 2) / (2 * sigma**2)) * strength
        sub = self.sub(bb)
        for k in range(4):
            col = base[k] * gain
            if glint is not None:
                col += glint * (0.95 - col)
            col += lines * (frame[k] - col)
            sub[k][inside] = col[inside]
        self.classes[bb][inside] = SceneClass.PANEL

    # -- roofs ---------------------------------------------------------------------------------
    def building(self, b: _Building, inst: np.ndarray, first_id: int) -> None:
        rng, gsd, lay = self.rng, self.gsd, self.lay
        foot = shapely.union_all([p.polygon() for p in b.parts])
        bb = _ring_bbox(self.px(np.asarray(foot.envelope.exterior.coords)), (self.h, self.w))
        if bb is None:
            return
        off = np.array([bb[1].start, bb[0].start], np.float64)
        hh, ww = bb[0].stop - bb[0].start, bb[1].stop - bb[1].start
        sub = self.sub(bb)
        cls = self.classes[bb]
        blotch = 1 + 0.05 * _noise(rng, hh, ww, 2.5 * self.scale)
        blotch += 0.03 * rng.standard_normal((hh, ww), dtype=np.float32)
        for facet in b.facets:
            m = np.zeros((hh, ww), np.uint8)
            _fill(m, [self.px(facet.ring) - off])
            if not m.any():
                continue
            illum = _illumination(facet.downslope, facet.slope, lay.sun_vec)
            tex = blotch
            if b.texture in ("tile", "seam"):
                down = facet.downslope if facet.downslope is not None else b.parts[0].p
                along = down if b.texture == "tile" else np.array([-down[1], down[0]])
                t, _ = _local_uv(bb, np.zeros(2), along, np.array([-along[1], along[0]]), gsd)
                period = 0.33 if b.texture == "tile" else 0.5
                tex = blotch - 0.12 * _line_cover(t, period, 0.08, gsd)
            a = m.astype(np.float32) * np.float32(1 / 255)
            _blend(sub, a, b.colour * np.float32(illum), tex)
            cls[m > 127] = SceneClass.ROOF

        def local() -> np.ndarray:
            return np.zeros((hh, ww), np.uint8)

        edges = local()
        for p in b.parts:
            ring = self.px(p.corners()) - off
            _stroke(edges, [np.vstack([ring, ring[:1]])], 1.0)
        _composite(self.img, edges, b.colour * np.float32(0.55), 0.45, at=bb)
        if b.ridges:
            ridge = local()
            sc = _stroke(ridge, [self.px(r) - off for r in b.ridges], 0.25 * self.scale)
            colour = np.minimum(b.colour * np.float32(1.25), 1)
            _composite(self.img, ridge, colour, 0.6 * sc, at=bb)
        if b.flat:
            rect = b.parts[0]
            para = local()
            inner = _Rect(rect.cx, rect.cy, rect.length - 0.8, rect.width - 0.8, rect.angle)
            ring = self.px(inner.corners()) - off
            sc = _stroke(para, [np.vstack([ring, ring[:1]])], 0.35 * self.scale)
            colour = np.minimum(b.colour * np.float32(1.2), 0.95)
            _composite(self.img, para, colour, 0.7 * sc, at=bb)
        # Shadows on the roof (rooftop boxes, tilted rows, the stand-off of flush arrays),
        # kept on the roof: what falls beyond its edge is inside the building's own shadow.
        rings = []
        for box in b.boxes:
            shadow = _shadow_of(box.polygon(), 1.2, lay.shadow_dir)
            rings.extend(self.px(r) - off for r in _rings(shadow))
        for a in b.arrays:
            shadow = _shadow_of(a.polygon(), a.height, lay.shadow_dir)
            rings.extend(self.px(r) - off for r in _rings(shadow))
        if rings:
            sh, roof = local(), local()
            _fill(sh, rings)
            _fill(roof, [self.px(p.corners()) - off for p in b.parts], aa=False)
            self.apply_shadow(cv2.bitwise_and(sh, roof), ground=False, at=bb)
        for box in b.boxes:
            m = local()
            _fill(m, [self.px(box.corners()) - off])
            grey = _ROOF_COLOURS["grey"] * np.float32(rng.uniform(0.8, 1.2))
            self.paint(m, np.minimum(grey, 1), SceneClass.ROOF, at=bb)
        self.arrays(b.arrays, inst, first_id)

    # -- trees and cars ------------------------------------------------------------------------
    def tree(self, t: _Tree) -> None:
        rng = self.rng
        ring = self.px(t.ring)
        bb = _ring_bbox(ring, (self.h, self.w))
        if bb is None:
            return
        hh, ww = bb[0].stop - bb[0].start, bb[1].stop - bb[1].start
        m = np.zeros((hh, ww), np.uint8)
        _fill(m, [ring - [bb[1].start, bb[0].start]])
        if not m.any():
            return
        sun = self.lay.sun_dir
        u, v = _local_uv(bb, t.centre, sun, np.array([-sun[1], sun[0]]), self.gsd)
        r = t.radius
        dome = np.clip(1 - (u * u + v * v) / (r * r), 0, 1)
        lit = 0.7 + 0.35 * np.clip(u / r, -1, 1) + 0.15 * dome
        clumps = _noise(rng, hh, ww, 0.9 * self.scale)
        leaves = _noise(rng, hh, ww, 0.25 * self.scale)
        shade = lit * (1 + 0.2 * clumps + 0.1 * leaves)
        # Deep gaps between clumps, darker on the side away from the sun.
        shade *= np.where(clumps < -1.0, 0.75 - 0.1 * np.clip(u / r, -1, 1), 1.0)
        tone = _CANOPY * np.float32(rng.uniform(0.8, 1.25))
        a = m.astype(np.float32) * np.float32(1 / 255)
        _blend(self.sub(bb), a, tone, shade.astype(np.float32))
        self.classes[bb][m > 127] = SceneClass.VEGETATION

    def hedge(self, hedge: _Hedge) -> None:
        rng = self.rng
        m = self.mask()
        _fill(m, [self.px(seg.corners()) for seg in hedge.segments])
        bb = _bbox(m)
        if bb is None:
            return
        hh, ww = bb[0].stop - bb[0].start, bb[1].stop - bb[1].start
        clumps = _noise(rng, hh, ww, 0.6 * self.scale)
        shade = 1 + 0.22 * clumps + 0.08 * rng.standard_normal((hh, ww), dtype=np.float32)
        tone = _CANOPY * np.float32(rng.uniform(0.85, 1.3))
        a = m[bb].astype(np.float32) * np.float32(1 / 255)
        _blend(self.sub(bb), a, tone, shade.astype(np.float32))
        self.classes[bb][m[bb] > 127] = SceneClass.VEGETATION

    def cars(self) -> None:
        for car, colour in zip(self.lay.cars, self.lay.car_colours, strict=True):
            ring = self.px(car.corners())
            bb = _ring_bbox(ring, (self.h, self.w))
            if bb is None:
                continue
            off = np.array([bb[1].start, bb[0].start], np.float64)
            shape = (bb[0].stop - bb[0].start, bb[1].stop - bb[1].start)
            m = np.zeros(shape, np.uint8)
            _fill(m, [ring - off])
            self.paint(m, colour, SceneClass.VEHICLE, at=bb)
            glass = np.zeros(shape, np.uint8)
            for shift, ln in ((0.55, 0.9), (-1.45, 0.6)):
                c = car.c + car.d * shift
                pane = _Rect(c[0], c[1], ln, car.width * 0.8, car.angle)
                _fill(glass, [self.px(pane.corners()) - off])
            dark = np.array([0.07, 0.08, 0.10, 0.08], np.float32)
            _composite(self.img, glass, dark, 0.85, at=bb)

    # -- camera --------------------------------------------------------------------------------
    def camera(self) -> None:
        rng, img, h, w = self.rng, self.img, self.h, self.w
        haze = np.float32(rng.uniform(0.02, 0.22))
        wb = (1 + rng.normal(0, 0.015, 4)) * rng.uniform(0.93, 1.07) * (1 - haze)
        for k in range(4):
            plane = img[k]
            plane *= np.float32(wb[k])
            plane += haze * _HAZE[k]
            cv2.GaussianBlur(plane, (0, 0), 0.6, dst=plane)
        # Shot noise (∝ √signal, shared by the bands as in a Bayer sensor after demosaicking)
        # plus read noise per band.
        for y0 in range(0, h, _STRIP):
            y1 = min(y0 + _STRIP, h)
            sigma = np.sqrt(np.clip(img[1, y0:y1], 0, None))
            sigma *= np.float32(0.01)
            sigma += np.float32(0.006)
            sigma *= rng.standard_normal((y1 - y0, w), dtype=np.float32)
            for k in range(4):
                plane = img[k, y0:y1]
                plane += sigma
                plane += rng.standard_normal((y1 - y0, w), dtype=np.float32) * np.float32(0.003)


def _tree_shadow(t: _Tree, shadow_dir: np.ndarray) -> Polygon:
    crown = Polygon(t.ring)
    high = shapely.affinity.translate(crown, *(shadow_dir * t.height))
    low = shapely.affinity.translate(crown, *(shadow_dir * max(t.height - 1.6 * t.radius, 0.5)))
    return shapely.union(high, low).convex_hull


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    sector = int(h // 60) % 6
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    return r + m, g + m, b + m


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------
def generate_scene(spec: SceneSpec) -> Scene:
    """Generate a synthetic aerial scene and its truth in memory.

    The layout is drawn first, in metres, from ``spec.seed`` alone (a second random stream,
    also from the seed, drives textures and noise), so the same seed and extent give the same
    polygons at any ``gsd``. A 1024² scene takes about 0.2 s and 45 MB; 4096² about 4 s and
    470 MB at its peak (a float32 working image of four bands plus the masks).

    Args:
        spec: What to generate.

    Returns:
        The image, its georeferencing, the panel array polygons (one per array, map
        coordinates), an instance mask that is the exact rasterisation of those polygons, and
        a semantic class map.
    """
    seq = np.random.SeedSequence([int(spec.seed), 0x501A8])
    layout_rng, texture_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    lay = _layout(spec, layout_rng)
    gsd = spec.gsd
    assert spec.origin is not None
    x0, y0 = spec.origin
    transform = Affine(gsd, 0.0, x0, 0.0, -gsd, y0)

    arrays: list[_Array] = [a for f in lay.fields for a in f.arrays]
    n_ground = len(arrays)
    building_first: list[int] = []
    for b in lay.buildings:
        building_first.append(len(arrays) + 1)
        arrays.extend(b.arrays)
    polys_m = [a.polygon() for a in arrays]
    inv = 1.0 / gsd
    polys_px = [shapely.affinity.scale(p, inv, inv, origin=(0, 0)) for p in polys_m]
    h, w = spec.height, spec.width
    if polys_px:
        instance = rasterize(
            [(p, i + 1) for i, p in enumerate(polys_px)],
            out_shape=(h, w),
            transform=Affine.identity(),
            fill=0,
            dtype="int32",
        )
    else:
        instance = np.zeros((h, w), np.int32)

    r = _Renderer(spec, lay, texture_rng)
    r.ground()
    r.paved()
    r.orchards()
    r.fields()
    r.cast_shadows()
    r.arrays(arrays[:n_ground], instance, 1)
    r.cars()
    for b, first in zip(lay.buildings, building_first, strict=True):
        r.building(b, instance, first)
    for hedge in lay.hedges:
        r.hedge(hedge)
    for t in lay.trees:
        r.tree(t)
    # Truth is exact: whatever drew over a panel, its pixels stay panel (placement keeps
    # trees and shadows off panels, this makes it a guarantee).
    r.classes[instance > 0] = SceneClass.PANEL
    r.camera()

    image = _to_bands(r.img, spec)
    del r.img
    classes = r.classes
    if lay.nodata_ring is not None:
        nd = np.zeros((h, w), np.uint8)
        _fill(nd, [lay.nodata_ring * inv], 1, aa=False)
        nd_mask = nd.astype(bool)
        nodata = int(spec.nodata)  # type: ignore[arg-type]
        valid_hit = (image == nodata) & ~nd_mask[None]
        if valid_hit.any():
            image[valid_hit] = nodata + 1 if nodata < np.iinfo(image.dtype).max else nodata - 1
        image[:, nd_mask] = nodata
        classes[nd_mask] = SceneClass.NODATA
        instance[nd_mask] = 0

    to_map = [1.0, 0.0, 0.0, -1.0, x0, y0]  # layout metres (y down) → map
    panels = [orient(shapely.affinity.affine_transform(p, to_map), 1.0) for p in polys_m]
    info = [PanelInfo(a.kind, a.style, a.n_modules, a.mount) for a in arrays]
    return Scene(
        image=image,
        transform=transform,
        crs=rasterio.crs.CRS.from_user_input(spec.crs),
        panels=panels,
        instance_mask=instance.astype(np.int32, copy=False),
        classes=classes,
        panel_info=info,
        spec=spec,
        sun_azimuth=lay.azimuth,
        sun_elevation=lay.elevation,
    )


def _to_bands(img: np.ndarray, spec: SceneSpec) -> np.ndarray:
    top = np.float32(255.0 if spec.dtype == "uint8" else spec.uint16_max)
    dtype = np.uint8 if spec.dtype == "uint8" else np.uint16
    out = np.empty((spec.bands, spec.height, spec.width), dtype)
    if spec.bands == 1:
        # A panchromatic band sees the visible and some near-infrared.
        pan = img[0] * np.float32(0.30)
        for k, weight in ((1, 0.35), (2, 0.15), (3, 0.20)):
            pan += img[k] * np.float32(weight)
        planes: list[np.ndarray] = [pan]
    else:
        planes = [img[k] for k in range(spec.bands)]
    for k, plane in enumerate(planes):
        plane *= top
        plane += np.float32(0.5)
        np.clip(plane, 0, top, out=plane)
        out[k] = plane
    return out


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
_BAND_NAMES = {1: ["panchromatic"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "nir"]}


def _check_folder(path: Path, error: type[Exception], what: str) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise error(
            f"cannot write {what} {str(path)!r}: the folder {str(folder)!r} does not exist; "
            "create it first"
        )


def _profile(
    *,
    width: int,
    height: int,
    bands: int,
    dtype: str,
    crs: rasterio.crs.CRS,
    transform: Affine,
    nodata: float | None,
    compress: str | None,
    tiled: bool,
    blocksize: int,
) -> dict:
    if tiled and (blocksize <= 0 or blocksize % 16):
        raise ConfigError(f"blocksize {blocksize} must be a positive multiple of 16")
    comp = (compress or "none").lower()
    profile: dict = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if comp != "none":
        profile["compress"] = comp
    if comp == "jpeg":
        if dtype != "uint8" or bands not in (1, 3) or nodata is not None:
            raise ConfigError(
                "JPEG compression needs 1- or 3-band uint8 without nodata (it would alter "
                "nodata pixels); use compress='deflate'"
            )
        profile["jpeg_quality"] = 90
        if bands == 3:
            profile["photometric"] = "YCBCR"
    elif comp in ("deflate", "lzw", "zstd"):
        profile["predictor"] = 2
    if comp != "jpeg" and bands in (3, 4):
        profile["photometric"] = "RGB"
    return profile


def _set_band_meta(dst: rasterio.io.DatasetWriter, bands: int) -> None:
    for k, name in enumerate(_BAND_NAMES[bands], start=1):
        dst.set_band_description(k, name)
    if bands == 4:
        # Band 4 is near-infrared, not alpha.
        dst.colorinterp = [
            ColorInterp.red,
            ColorInterp.green,
            ColorInterp.blue,
            ColorInterp.undefined,
        ]
    elif bands == 1:
        dst.colorinterp = [ColorInterp.gray]


def write_scene(
    scene: Scene,
    tif_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str] | None = None,
    *,
    compress: str | None = "deflate",
    tiled: bool = True,
    blocksize: int = 256,
) -> None:
    """Write ``scene.image`` as a georeferenced GeoTIFF and, optionally, its panels as GeoJSON.

    The GeoTIFF carries the scene's CRS, transform and nodata, band descriptions (``red``,
    ``green``, ``blue``, ``nir`` or ``panchromatic``; band 4 is not alpha) and tags
    ``SOLARDESK_SYNTHETIC=1``, ``SEED``, ``GSD``, ``SUN_AZIMUTH``, ``SUN_ELEVATION``.
    Existing files are overwritten.

    The GeoJSON follows RFC 7946: a FeatureCollection in EPSG:4326 longitude/latitude (no
    ``crs`` member), exterior rings counter-clockwise (right-hand rule), coordinates rounded to
    1e-8 degrees (about 1 mm). One feature per panel array with properties ``id`` (the value in
    ``scene.instance_mask``), ``area_m2`` (in the raster CRS), ``kind`` (``"roof"`` or
    ``"ground"``), ``style``, ``n_modules`` and ``mount``.

    Args:
        scene: What :func:`generate_scene` returned.
        tif_path: Output GeoTIFF.
        truth_path: Output GeoJSON, or ``None`` for none.
        compress: GDAL compression (``"deflate"``, ``"lzw"``, ``"zstd"``, ``"jpeg"`` for 1- or
            3-band uint8 without nodata, or ``None``).
        tiled: Write square tiles of ``blocksize`` rather than strips.
        blocksize: Tile size in pixels, a multiple of 16.

    Raises:
        RasterOpenError: The folder of ``tif_path`` does not exist (nothing is written).
        VectorWriteError: The folder of ``truth_path`` does not exist (nothing is written).
        ConfigError: ``blocksize`` or ``compress`` do not fit the image.
    """
    tif_path = Path(tif_path)
    _check_folder(tif_path, RasterOpenError, "raster")
    if truth_path is not None:
        truth_path = Path(truth_path)
        _check_folder(truth_path, VectorWriteError, "GeoJSON")
    bands, h, w = scene.image.shape
    profile = _profile(
        width=w,
        height=h,
        bands=bands,
        dtype=str(scene.image.dtype),
        crs=scene.crs,
        transform=scene.transform,
        nodata=scene.nodata,
        compress=compress,
        tiled=tiled,
        blocksize=blocksize,
    )
    with rasterio.open(tif_path, "w", **profile) as dst:
        dst.write(scene.image)
        _set_band_meta(dst, bands)
        dst.update_tags(
            SOLARDESK_SYNTHETIC="1",
            SEED=str(scene.spec.seed),
            GSD=repr(scene.gsd),
            SUN_AZIMUTH=f"{scene.sun_azimuth:.2f}",
            SUN_ELEVATION=f"{scene.sun_elevation:.2f}",
        )
    if truth_path is not None:
        _write_geojson(scene, truth_path)


def _write_geojson(scene: Scene, path: Path) -> None:
    to_lonlat = Transformer.from_crs(scene.crs.to_wkt(), "EPSG:4326", always_xy=True)

    def project(coords: np.ndarray) -> np.ndarray:
        lon, lat = to_lonlat.transform(coords[:, 0], coords[:, 1])
        return np.round(np.column_stack([lon, lat]), 8)

    features = []
    for i, (poly, info) in enumerate(zip(scene.panels, scene.panel_info, strict=True)):
        geo = orient(shapely.transform(poly, project), 1.0)
        features.append(
            {
                "type": "Feature",
                "id": i + 1,
                "geometry": mapping(geo),
                "properties": {
                    "id": i + 1,
                    "area_m2": round(float(poly.area), 3),
                    "kind": info.kind,
                    "style": info.style,
                    "n_modules": info.n_modules,
                    "mount": info.mount,
                },
            }
        )
    doc = {"type": "FeatureCollection", "features": features}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
    except OSError as e:
        raise VectorWriteError(f"cannot write GeoJSON {str(path)!r}: {e}") from e


def write_large_raster(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    gsd: float = 0.15,
    crs: str = "EPSG:32632",
    origin: tuple[float, float] | None = None,
    seed: int = 0,
    blocksize: int = 512,
    dtype: Literal["uint8", "uint16"] = "uint8",
    bands: Literal[1, 3, 4] = 3,
    compress: str | None = "deflate",
    n_sources: int = 6,
) -> None:
    """Write a big tiled, compressed synthetic GeoTIFF block by block, with bounded memory.

    ``n_sources`` scenes of ``1.5 × blocksize`` pixels (at least 512) are generated once, with
    one sun for all; each output block is a crop of one of them at a random offset with a
    slight brightness change, all drawn from ``(seed, block index)``. Memory is that of the
    sources plus one block plus GDAL's cache (capped at 64 MB), whatever ``width`` and
    ``height``. Blocks do not join seamlessly: this is a raster for I/O, tiling and memory
    benchmarks, with realistic content but no truth. GDAL compresses with all CPU cores
    (``NUM_THREADS=ALL_CPUS``): 20000² px take about 11 s on two cores.

    Args:
        path: Output GeoTIFF (overwritten).
        width: Columns in pixels.
        height: Rows in pixels.
        gsd: Metres per pixel.
        crs: Projected CRS in metres.
        origin: Upper-left corner; ``None`` as in :class:`SceneSpec`.
        seed: Everything is deterministic from it.
        blocksize: Tile size of the file and of the generated blocks (multiple of 16).
        dtype: ``"uint8"`` or ``"uint16"`` (12-bit values, as in :class:`SceneSpec`).
        bands: 1, 3 or 4.
        compress: GDAL compression, as in :func:`write_scene`.
        n_sources: Scenes the blocks are cut from.

    Raises:
        RasterOpenError: The folder of ``path`` does not exist.
        ConfigError: Sizes or options are invalid.
    """
    path = Path(path)
    _check_folder(path, RasterOpenError, "raster")
    if width < 1 or height < 1:
        raise ConfigError(f"write_large_raster: {width}×{height} px is empty")
    if n_sources < 1:
        raise ConfigError("write_large_raster: n_sources must be ≥ 1")
    if blocksize < 16 or blocksize % 16:
        raise ConfigError(f"write_large_raster: blocksize {blocksize} is not a multiple of 16")
    size = max(512, blocksize + blocksize // 2)
    probe = SceneSpec(height=16, width=16, gsd=gsd, crs=crs, origin=origin, seed=seed)
    sun = np.random.default_rng([seed, 7]).uniform([110, 30], [250, 65])
    sources = []
    for k in range(n_sources):
        spec = SceneSpec(
            height=size,
            width=size,
            gsd=gsd,
            crs=crs,
            seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]),
            dtype=dtype,
            bands=bands,
            sun_azimuth=float(sun[0]),
            sun_elevation=float(sun[1]),
        )
        sources.append(generate_scene(spec).image)
    assert probe.origin is not None
    transform = Affine(gsd, 0.0, probe.origin[0], 0.0, -gsd, probe.origin[1])
    profile = _profile(
        width=width,
        height=height,
        bands=bands,
        dtype=dtype,
        crs=rasterio.crs.CRS.from_user_input(crs),
        transform=transform,
        nodata=None,
        compress=compress,
        tiled=True,
        blocksize=blocksize,
    )
    profile["NUM_THREADS"] = "ALL_CPUS"
    top = 255 if dtype == "uint8" else probe.uint16_max
    n_bx = math.ceil(width / blocksize)
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **profile) as dst:
        _set_band_meta(dst, bands)
        dst.update_tags(SOLARDESK_SYNTHETIC="1", SEED=str(seed), GSD=repr(gsd))
        for row_off in range(0, height, blocksize):
            for col_off in range(0, width, blocksize):
                index = (row_off // blocksize) * n_bx + col_off // blocksize
                rng = np.random.default_rng([seed, index, 1])
                src = sources[int(rng.integers(0, n_sources))]
                bh, bw = min(blocksize, height - row_off), min(blocksize, width - col_off)
                oy = int(rng.integers(0, size - bh + 1))
                ox = int(rng.integers(0, size - bw + 1))
                block = src[:, oy : oy + bh, ox : ox + bw]
                gain = rng.uniform(0.95, 1.05)
                block = np.clip(block * np.float32(gain), 0, top).astype(src.dtype)
                dst.write(block, window=Window(col_off, row_off, bw, bh))

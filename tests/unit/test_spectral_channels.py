"""The six spectral channels: each on the property it claims, against the reference oracle,
and on the output contract.

Patterns are rendered in metres on a 4× supersampled grid and area-averaged, then get
camera-like noise, so thin module frames look as they do in an orthophoto. "Core" means
the central half of a tile, away from the borders.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
from skimage.color import rgb2lab
from skimage.feature import local_binary_pattern

from solardesk.errors import ConfigError, NotGeoreferencedError
from solardesk_spectral import channels as ch
from solardesk_spectral.channels import (
    CHANNEL_NAMES,
    ChannelParams,
    compute_channels,
    edges_morphology,
    excess_green,
    fft_periodicity,
    gabor_coherence,
    gabor_energy,
    lbp_uniformity,
    photometric_index,
    shadow_mask,
)

from ._reference_spectral import (
    REF_FUNCTIONS,
    ref_excess_green,
    ref_shadow_mask,
    reference_channels,
)

GSD = 0.15
SIZE = 192
FUNCTIONS = (
    fft_periodicity,
    lbp_uniformity,
    gabor_energy,
    gabor_coherence,
    photometric_index,
    edges_morphology,
)

DARK_PANEL = (35, 40, 70)
FRAME = (150, 155, 165)


# --------------------------------------------------------------------------------------------
# Synthetic patterns
# --------------------------------------------------------------------------------------------
def render(fn, size: int = SIZE, gsd: float = GSD, seed: int = 0, noise: float = 3.0):
    """``fn(x_m, y_m) -> (H, W, 3)`` on a 4× supersampled grid, area-averaged, plus noise."""
    ss = 4
    c = (np.arange(size * ss) + 0.5) / ss * gsd
    x, y = np.meshgrid(c, c)
    img = cv2.resize(fn(x, y).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    img += np.random.default_rng(seed).normal(0.0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def modules(x, y, angle=0.3, panel=DARK_PANEL, frame=FRAME, period=(1.05, 1.75), line=0.05):
    """Module field: ``period`` (m) along and across ``angle``, frame lines ``line`` m wide."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = x * c + y * s, -x * s + y * c
    on_frame = (np.mod(u, period[0]) < line) | (np.mod(v, period[1]) < line)
    return np.where(on_frame[..., None], np.float32(frame), np.float32(panel))


def grey_img(g):
    return np.repeat(np.asarray(g, np.float32)[..., None], 3, axis=-1)


def flat_tile(colour=(60, 62, 80), seed=0, size=SIZE):
    return render(lambda x, y: np.broadcast_to(np.float32(colour), (*x.shape, 3)), size, seed=seed)


def noise_tile(seed=0, sigma=40.0, size=SIZE):
    rng = np.random.default_rng(seed)
    grey = np.clip(np.round(110 + rng.normal(0, sigma, (size, size, 1))), 0, 255)
    return grey.repeat(3, -1).astype(np.uint8)


def foliage_tile(seed=0, gsd=GSD, size=SIZE):
    """Clumpy, isotropic canopy-like texture at 0.3-2 m."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size), np.float32)
    for cell_m, amp in ((0.3, 25.0), (0.8, 30.0), (2.0, 25.0)):
        n = max(2, int(size * gsd / cell_m))
        cells = rng.normal(0, 1, (n, n)).astype(np.float32)
        acc += amp * cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC)
    img = grey_img(100 + acc) + rng.normal(0, 2, (size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def rows(x, y, angle=0.2, period=3.5, width=2.0):
    """Ground-mounted rows: dark panel rows ``width`` m wide every ``period`` m."""
    on = np.mod(x * math.cos(angle) + y * math.sin(angle), period) < width
    return np.where(on[..., None], np.float32(DARK_PANEL), np.float32((150, 140, 110)))


def blobs_tile(seed=0, radius=1.0, gsd=GSD, size=SIZE):
    rng = np.random.default_rng(seed)
    g = np.full((size, size), 100, np.float32)
    yy, xx = np.mgrid[0:size, 0:size] * gsd
    ext = size * gsd
    for _ in range(int(ext * ext / (6 * radius * radius))):
        cx, cy = rng.uniform(0, ext, 2)
        r = radius * rng.uniform(0.6, 1.4)
        g[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 150
    img = grey_img(g) + rng.normal(0, 3, (size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def shape_mask(kind, x, y, centre, area_m2=24.0, angle=0.4):
    if kind == "rect":
        a, b = math.sqrt(area_m2 * 1.5), math.sqrt(area_m2 / 1.5)
        c, s = math.cos(angle), math.sin(angle)
        u = (x - centre) * c + (y - centre) * s
        v = -(x - centre) * s + (y - centre) * c
        return (np.abs(u) < a / 2) & (np.abs(v) < b / 2)
    return (x - centre) ** 2 + (y - centre) ** 2 < area_m2 / math.pi


def patch_on_roof(patch, roof, patch_m=8.0, seed=0, size=SIZE, gsd=GSD):
    """A square patch (a callable or a colour) in the middle of a uniform roof."""
    centre = size * gsd / 2

    def fn(x, y):
        img = np.broadcast_to(np.float32(roof), (*x.shape, 3)).copy()
        inside = (np.abs(x - centre) < patch_m / 2) & (np.abs(y - centre) < patch_m / 2)
        fill = patch(x, y) if callable(patch) else np.broadcast_to(np.float32(patch), img.shape)
        img[inside] = fill[inside]
        return img

    rgb = render(fn, size, gsd, seed)
    c = (np.arange(size) + 0.5) * gsd
    x, y = np.meshgrid(c, c)
    half = patch_m / 2
    inner = (np.abs(x - centre) < half - 0.5) & (np.abs(y - centre) < half - 0.5)
    outer = (np.abs(x - centre) > half + 0.5) | (np.abs(y - centre) > half + 0.5)
    return rgb, inner, outer


def module_scene(size=SIZE, gsd=GSD, seed=0):
    """Red roof and grass, a dark and a bright module array, a tree, a cast shadow."""
    ext = size * gsd
    rng = np.random.default_rng(seed)
    tree_x, tree_y = rng.uniform(0.15, 0.3, 2) * ext

    def fn(x, y):
        img = np.broadcast_to(np.float32((90, 120, 60)), (*x.shape, 3)).copy()  # grass
        roof = (x > 0.35 * ext) & (y > 0.1 * ext) & (y < 0.9 * ext)
        img[roof] = (165, 80, 60)
        dark = (np.abs(x - 0.55 * ext) < 0.12 * ext) & (np.abs(y - 0.3 * ext) < 0.12 * ext)
        img[dark] = modules(x, y, 0.0)[dark]
        bright = (np.abs(x - 0.62 * ext) < 0.15 * ext) & (np.abs(y - 0.68 * ext) < 0.1 * ext)
        img[bright] = modules(x, y, 0.0, panel=(195, 200, 212), frame=(120, 125, 135))[bright]
        shadow = (x > 0.2 * ext) & (x < 0.35 * ext) & (y > 0.55 * ext) & (y < 0.9 * ext)
        img[shadow] *= 0.3
        tree = (x - tree_x) ** 2 + (y - tree_y) ** 2 < (0.12 * ext) ** 2
        img[tree] = (50, 95, 40)
        return img

    rgb = render(fn, size, gsd, seed)
    tree = np.zeros((size, size), bool)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * gsd
    tree[(xx - tree_x) ** 2 + (yy - tree_y) ** 2 < (0.12 * ext) ** 2] = True
    leaves = np.random.default_rng(seed + 1).normal(0, 18, (int(tree.sum()), 3))
    rgb[tree] = np.clip(rgb[tree] + leaves, 0, 255).astype(np.uint8)
    return rgb


def core(m: np.ndarray) -> float:
    h, w = m.shape
    return float(m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean())


# --------------------------------------------------------------------------------------------
# Each channel on the property it claims
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_fft_periodicity_finds_the_module_grid(seed):
    grid = core(fft_periodicity(render(lambda x, y: modules(x, y, 0.3 + seed), seed=seed), GSD))
    others = {
        "noise": noise_tile(seed),
        "foliage": foliage_tile(seed),
        "flat": flat_tile(seed=seed),
        "straight edge": render(lambda x, y: grey_img(np.where(x + 0.3 * y > 14, 160, 70))),
    }
    for name, rgb in others.items():
        assert grid > core(fft_periodicity(rgb, GSD)) + 0.4, name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lbp_uniformity_prefers_a_regular_module_field(seed):
    field = core(lbp_uniformity(render(lambda x, y: modules(x, y, 0.3 + seed), seed=seed), GSD))
    assert field > core(lbp_uniformity(foliage_tile(seed), GSD)) + 0.08
    assert core(lbp_uniformity(flat_tile(seed=seed), GSD)) == 0.0  # no texture, no uniformity


def test_gabor_energy_responds_to_rows_at_module_periods():
    rows_e = core(gabor_energy(render(rows), GSD))
    assert rows_e > 0.9
    assert core(gabor_energy(flat_tile(), GSD)) < 0.05
    # Pixel noise (σ 20 grey levels) lives mostly at periods far below a module.
    assert rows_e > core(gabor_energy(noise_tile(sigma=20.0), GSD)) + 0.6


def test_gabor_coherence_prefers_aligned_rows_over_isotropic_texture():
    aligned = [
        core(gabor_coherence(render(lambda x, y, a=a: rows(x, y, a)), GSD)) for a in (0.2, 1.1)
    ]
    isotropic = [core(gabor_coherence(t, GSD)) for t in (blobs_tile(), foliage_tile(), flat_tile())]
    assert min(aligned) > max(isotropic) + 0.5


def bright_modules(x, y):
    """Hazy blue-grey modules as in the South Tyrol 2023 orthophoto (HSV value ≈ 0.8)."""
    return modules(x, y, 0.0, panel=(200, 205, 215), frame=(140, 143, 150))


def test_photometric_index_finds_bright_panels_on_a_red_roof():
    rgb, inner, outer = patch_on_roof(bright_modules, roof=(165, 80, 60))
    index = photometric_index(rgb, GSD)
    assert np.median(index[inner]) > 0.7
    assert np.median(index[outer]) < 0.05
    roof_only, _, _ = patch_on_roof((165, 80, 60), roof=(165, 80, 60))
    assert photometric_index(roof_only, GSD).max() < 0.1


def test_the_compiled_photometric_pass_gives_the_numpy_paths_bits():
    """The photometric index, excess green and shadow maps from the one compiled pass
    (numba) equal those of the NumPy and OpenCV passes bit for bit: on a module scene, noise,
    a tile with invalid pixels, and without the shadow term."""
    assert ch._compiled("photometric") is not None  # numba is a dependency: the compiled pass runs
    rng = np.random.default_rng(3)
    valid = rng.random((SIZE, SIZE)) > 0.2
    noise = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cases = [
        (module_scene(seed=2), None, None),
        (noise, None, None),
        (module_scene(seed=3), valid, None),
        (noise, None, ChannelParams(shadow_weight=0.0)),
    ]
    for rgb, v, params in cases:
        t = ch._Tile(rgb, GSD, v, params)
        fast, slow = np.full((2, SIZE, SIZE), 7.0, np.float32), np.zeros((2, SIZE, SIZE))
        slow = slow.astype(np.float32)
        index = ch._photometric(t, fast)
        want = ch._photometric(t, slow, compiled=False)
        np.testing.assert_array_equal(index, want)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(ch._photometric(t), want)
        assert 0.05 < float(want.mean()) < 0.95 and slow[0].max() <= 1.0


def test_photometric_index_is_two_sided():
    """Dark panels on a pale roof score as well as bright panels on a dark roof."""
    dark, inner, outer = patch_on_roof(lambda x, y: modules(x, y, 0.0), roof=(185, 180, 170))
    bright, inner_b, outer_b = patch_on_roof(
        lambda x, y: modules(x, y, 0.0, panel=(185, 190, 200), frame=(120, 122, 128)),
        roof=(70, 65, 60),
    )
    for rgb, i, o in ((dark, inner, outer), (bright, inner_b, outer_b)):
        index = photometric_index(rgb, GSD)
        assert np.median(index[i]) > np.median(index[o]) + 0.5


def test_photometric_index_wants_low_saturation_or_blue_violet_not_any_colour():
    """Of patches unlike a grey roof, the neutral and the blue-violet ones score; saturated
    warm colours (a red car, an orange awning, a yellow marking) differ as much from the roof
    and score nothing."""
    roof = (150, 150, 150)
    scores = {}
    for name, colour in {
        "blue-violet": (70, 60, 160),
        "dark grey": (60, 60, 65),
        "orange": (230, 140, 30),
        "red": (200, 40, 40),
        "yellow": (220, 210, 40),
    }.items():
        rgb, inner, outer = patch_on_roof(colour, roof=roof)
        index = photometric_index(rgb, GSD)
        scores[name] = np.median(index[inner])
        assert np.median(index[outer]) < 0.05, name
    assert min(scores["blue-violet"], scores["dark grey"]) > 0.4, scores
    assert max(scores["orange"], scores["red"], scores["yellow"]) < 0.05, scores


def test_vegetation_is_rejected():
    rgb, inner, outer = patch_on_roof((60, 120, 45), roof=(165, 80, 60))  # a green patch
    veg = excess_green(rgb)
    assert veg[inner].min() > 0.9 and veg[outer].max() < 0.05
    assert np.median(photometric_index(rgb, GSD)[inner]) < 0.05
    colours = {
        "grey": (128, 128, 128),
        "red": (165, 80, 60),
        "blue": (40, 50, 90),
        "black": (8, 8, 8),
    }
    for name, colour in colours.items():
        veg = excess_green(flat_tile(colour))  # sensor noise (σ 3) alone: a few pixels
        assert np.median(veg) == 0.0 and veg.mean() < 0.05, name


def test_shadow_mask_separates_flat_shadow_from_dark_textured_panels():
    ext = SIZE * GSD

    def fn(x, y):
        img = np.broadcast_to(np.float32((170, 165, 155)), (*x.shape, 3)).copy()
        shadow = x < 0.25 * ext
        img[shadow] = (45, 45, 55)
        panels = x > 0.75 * ext
        img[panels] = modules(x, y, 0.0, panel=(45, 45, 60), frame=(140, 140, 150))[panels]
        return img

    rgb = render(fn)
    sh = shadow_mask(rgb, GSD)
    c = (np.arange(SIZE) + 0.5) * GSD
    x = np.broadcast_to(c, (SIZE, SIZE))
    shade, panels, roof = x < 0.2 * ext, x > 0.8 * ext, (x > 0.3 * ext) & (x < 0.7 * ext)
    assert np.median(sh[shade]) > 0.8
    assert np.median(sh[panels]) < 0.2
    assert np.median(sh[roof]) == 0.0
    # The photometric index discounts the shadow but keeps the panels.
    index = photometric_index(rgb, GSD)
    assert np.median(index[panels]) > np.median(index[shade]) + 0.3


def test_edges_morphology_prefers_a_rectangle_to_a_round_blob():
    centre = SIZE * GSD / 2
    c = (np.arange(SIZE) + 0.5) * GSD
    x, y = np.meshgrid(c, c)
    score = {}
    for kind in ("rect", "disc"):
        rgb = render(lambda x, y, k=kind: grey_img(np.where(shape_mask(k, x, y, centre), 60, 150)))
        near = shape_mask(kind, x, y, centre, area_m2=60.0)  # the shape and a band around it
        score[kind] = float(np.median(edges_morphology(rgb, GSD)[near]))
    assert score["rect"] > score["disc"] + 0.3
    assert core(edges_morphology(flat_tile(), GSD)) < 0.05


# --------------------------------------------------------------------------------------------
# Fast against the reference oracle
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes():
    """(name, rgb, gsd, valid) -> (fast, reference), computed once for the fidelity tests."""
    rgb = module_scene(seed=3)
    h, w = rgb.shape[:2]
    valid = np.ones((h, w), bool)
    valid[np.add.outer(np.arange(h), np.arange(w)) < 60] = False  # a nodata corner
    cases = {
        "0.15 m": (rgb, 0.15, None),
        "0.3 m": (module_scene(gsd=0.3, seed=4), 0.3, None),
        # a real raster's: a 0.3 m UTM orthophoto measured on the ground (ADR 0051)
        "0.30012 m": (module_scene(gsd=0.3, seed=4), 0.30012, None),
        "0.47 m, 160x208": (module_scene(size=208, gsd=0.47, seed=5)[:160], 0.47, None),
        "0.15 m with nodata": (rgb, 0.15, valid),
    }
    out = {}
    for name, (img, gsd, v) in cases.items():
        out[name] = (compute_channels(img, gsd, v), reference_channels(img, gsd, v), v)
    return out


CASES = ["0.15 m", "0.3 m", "0.30012 m", "0.47 m, 160x208", "0.15 m with nodata"]


@pytest.mark.parametrize("case", CASES)
def test_each_channel_matches_the_reference(scenes, case):
    fast, ref, _ = scenes[case]
    for i, name in enumerate(CHANNEL_NAMES):
        a, b = fast[i].ravel(), ref[i].ravel()
        err = np.abs(a - b)
        if b.std() > 1e-3:
            assert np.corrcoef(a, b)[0, 1] > 0.995, name
        assert err.mean() < 0.002, name
        assert err.max() < 0.03, name


def test_the_8_bit_lab_grid_is_cie_lab_to_a_level():
    """The photometric index (fast and reference) is defined on OpenCV's 8-bit Lab; that grid
    is CIE Lab (D65, as ``skimage.color.rgb2lab``) rounded, give or take one level from L* 30
    up — up to three for dark colours, where OpenCV's fixed-point conversion is coarsest
    (measured on every 8-bit colour: a* is the worst, b* and L* within two)."""
    levels = np.arange(0, 256, 3, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
    ours = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).astype(np.int64)[0]
    cie = rgb2lab(rgb)[0]
    exact = np.stack(
        [np.round(cie[:, 0] * 2.55), np.round(cie[:, 1]) + 128, np.round(cie[:, 2]) + 128], -1
    )
    diff = np.abs(ours - np.clip(exact, 0, 255))
    assert diff.max() <= 3
    assert diff[cie[:, 0] >= 30].max() <= 1
    assert (diff == 0).mean() > 0.85  # each coordinate mostly exact, not merely close


@pytest.mark.parametrize("case", CASES)
def test_fused_masks_match_the_reference(scenes, case):
    fast, ref, _ = scenes[case]
    for threshold in (0.25, 0.3, 0.35):
        a, b = fast.mean(0) > threshold, ref.mean(0) > threshold
        union = (a | b).sum()
        assert union > 200, "the threshold should select something in this scene"
        assert (a & b).sum() / union >= 0.99, threshold


def test_scales_within_a_percent_of_whole_pixels_are_taken_as_whole():
    """ADR 0051: a real raster's ground resolution is never round. At 0.30012 m the LBP radius
    of 0.6 m is 1.9992 pixels, taken as 2, so its map is the very one of 0.3 m; a smoothing σ
    of 3.998 pixels runs on the grid twice coarser, as σ = 4 does. Further from whole pixels
    nothing is snapped."""
    from solardesk_spectral.channels import SNAP_TOLERANCE, _coarse_smooth, _snapped

    assert _snapped(1.9992) == 2.0 and _snapped(2.004) == 2.0 and _snapped(3.0) == 3.0
    assert _snapped(1.97) == 1.97 and _snapped(2.5) == 2.5 and _snapped(0.004) == 0.004
    assert SNAP_TOLERANCE == 0.01
    rgb = module_scene(gsd=0.3, seed=4)
    np.testing.assert_array_equal(lbp_uniformity(rgb, 0.30012), lbp_uniformity(rgb, 0.3))
    assert not np.array_equal(lbp_uniformity(rgb, 0.306), lbp_uniformity(rgb, 0.3))
    maps = [np.random.default_rng(0).random((64, 64), dtype=np.float32)]
    assert _coarse_smooth(maps, 3.998)[0].shape == _coarse_smooth(maps, 4.0)[0].shape == (32, 32)
    assert _coarse_smooth(maps, 3.9)[0].shape == (64, 64)
    # the Gabor maps at 0.30012 m: the 0.3 m ones, but for σ 3.998 / 2 instead of 4 / 2
    near = gabor_energy(rgb, 0.30012) - gabor_energy(rgb, 0.3)
    assert np.abs(near).max() < 0.01


def test_the_compiled_code_uniformity_gives_the_box_counts_bits():
    """The LBP histograms' uniformity from one compiled pass (sixteen byte-wide counts in two
    words) equals the box count and ``accumulateSquare`` per code bit for bit: windows of 3
    to 15 pixels, levels smaller than the window (the mirrored border read many times), a
    single code, and the whole LBP channel of a module scene."""
    assert (
        ch._compiled("code_uniformity") is not None
    )  # numba is a dependency: the compiled pass runs
    rng = np.random.default_rng(5)
    scale, offset = np.float32(-1.0 / 9000.0), np.float32(0.3)
    shapes = [(1, 1), (2, 3), (5, 7), (12, 40), (64, 80)]
    for shape in shapes:
        for n_codes in (10, 16):
            codes = rng.integers(0, n_codes, shape).astype(np.uint8)
            for side in (3, 7, 13, 15):
                got = ch._code_uniformity(codes, n_codes, side, scale, offset)
                want = ch._code_uniformity(codes, n_codes, side, scale, offset, compiled=False)
                np.testing.assert_array_equal(got, want)
    one_code = np.full((20, 30), 4, np.uint8)
    got = ch._code_uniformity(one_code, 10, 5, np.float32(1.0), np.float32(-700.0))
    np.testing.assert_array_equal(got, np.full((20, 30), -75.0, np.float32))  # 25² - 700
    for seed in (1, 4):
        t = ch._Tile(module_scene(seed=seed), GSD, None, None)
        np.testing.assert_array_equal(ch._lbp_uniformity(t), ch._lbp_uniformity(t, compiled=False))


def _x86_fma() -> bool:
    """Whether this is an x86 processor with FMA (NumPy's dispatch knows): there OpenCV's
    SIMD ``accumulateSquare`` and ``scaleAdd`` round once per multiply-add, as the compiled
    Gabor passes do (ADR 0054)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("FMA3"))


def test_the_compiled_gabor_sums_give_the_numpy_paths_bits():
    """The Gabor energies and their orientation sums added up in one compiled pass per
    orientation pair equal the NumPy and OpenCV passes bit for bit (OpenCV's
    ``accumulateSquare`` and ``scaleAdd`` fuse a multiply-add; the compiled pass does the
    same), for even and odd numbers of orientations and on each level of the bank. On a
    processor without x86 FMA (before AVX2, or not x86), OpenCV may round twice where the
    compiled pass rounds once: there the two agree to float32 rounding instead."""
    assert ch._compiled("gabor_pair") is not None  # numba is a dependency
    exact = _x86_fma()
    t = ch._Tile(module_scene(seed=3), GSD, None, None)
    for target, period in ((0.3, 1.2), (0.6, 2.4)):
        level, g = t.level(target)
        level = level - np.float32(level.mean())
        for n_orient in (2, 5, 6):
            fast = ch._gabor_level(level, g / period, n_orient, 1.0)
            slow = ch._gabor_level(level, g / period, n_orient, 1.0, compiled=False)
            for a, b in zip(fast, slow, strict=True):
                if exact:
                    np.testing.assert_array_equal(a, b)
                else:
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
            assert float(fast[0].max()) > 0 and np.abs(fast[1]).max() > 0


@pytest.mark.parametrize("compiled", [True, False])
def test_lbp_codes_are_skimage_codes_exactly(compiled: bool):
    """Including ties (flat, 3-level and smooth 8-bit images, where an interpolated neighbour
    meets the centre on every flat patch) and fractional radii; the near-ties settled by the
    compiled pass (numba) and by NumPy alike."""
    assert ch._compiled("lbp_patterns") is not None  # numba is a dependency: the compiled pass runs
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:80]
    smooth = np.round(120 + 3 * np.sin(xx / 9.0) + 2 * np.cos(yy / 13.0)) / 255.0
    images = [
        ch._Tile(module_scene(seed=1), GSD, None, None).level(0.3)[0],
        np.full((40, 50), 0.3, np.float32),
        (rng.integers(0, 3, (60, 70)) / 255.0).astype(np.float32),
        smooth.astype(np.float32),
        rng.random((33, 47), dtype=np.float32),
        rng.random((3, 5), dtype=np.float32),  # the tiny-level path
    ]
    for img in images:
        for radius in (1.0, 1.5, 2.0, 2.7):
            pad = math.ceil(radius) + 1
            padded = np.pad(img.astype(np.float64), pad, mode="symmetric")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                expected = local_binary_pattern(padded, 8, radius, "uniform")[pad:-pad, pad:-pad]
            got = ch._lbp_codes(img, 8, radius, compiled=compiled)
            np.testing.assert_array_equal(got, expected)


def test_helpers_match_the_reference():
    rgb = module_scene(seed=2)
    np.testing.assert_allclose(excess_green(rgb), ref_excess_green(rgb), atol=1e-5)
    np.testing.assert_allclose(shadow_mask(rgb, GSD), ref_shadow_mask(rgb, GSD), atol=2e-3)
    np.testing.assert_allclose(shadow_mask(rgb), ref_shadow_mask(rgb), atol=2e-3)


@pytest.mark.parametrize("step,ny,nx", [(16, 5, 7), (5, 4, 3)])
def test_hann_windows_are_the_windows_times_the_window_function(step, ny, nx):
    """The block-wise product (a padded level exactly ny + 1 by nx + 1 blocks) and the
    strided-view fallback (any other shape) give the same products, bit for bit."""
    rng = np.random.default_rng(step)
    win = 2 * step
    hann = rng.random((win, win), dtype=np.float32)
    for extra in (0, 3):  # 0: whole blocks; 3: a shape the block path does not take
        padded = rng.random(((ny + 1) * step + extra, (nx + 1) * step + extra), np.float32)
        views = np.lib.stride_tricks.sliding_window_view(padded, (win, win))[::step, ::step]
        expected = (views * hann)[:ny, :nx]
        got = ch._hann_windows(padded, hann, ny, nx, step)
        np.testing.assert_array_equal(got[:ny, :nx], expected)


def test_single_channel_functions_equal_compute_channels():
    rgb = module_scene(seed=6)
    stacked = compute_channels(rgb, GSD)
    for i, fn in enumerate(FUNCTIONS):
        np.testing.assert_allclose(fn(rgb, GSD), stacked[i], atol=1e-6, err_msg=CHANNEL_NAMES[i])
    assert len(REF_FUNCTIONS) == len(FUNCTIONS)


@pytest.mark.parametrize("part", ["all", "none"])
def test_compute_channels_writes_into_the_array_it_is_given(part):
    """``out=``: the channels go into the caller's array (a view of a larger stack, as the
    analyser passes), which is returned, with the values a new array would hold; an array of
    another shape or type is refused before anything is computed."""
    rgb = module_scene(seed=6)
    valid = None if part == "all" else np.zeros(rgb.shape[:2], bool)
    stack = np.full((8, *rgb.shape[:2]), 7.0, np.float32)
    got = compute_channels(rgb, GSD, valid, out=stack[1:7])
    assert np.shares_memory(got, stack) and got.shape == (6, *rgb.shape[:2])
    np.testing.assert_allclose(stack[1:7], compute_channels(rgb, GSD, valid), atol=1e-6)
    assert (stack[0] == 7).all() and (stack[7] == 7).all()  # nothing written outside
    assert (part == "none") == (not stack[1:7].any())
    for wrong in (np.empty((5, *rgb.shape[:2]), np.float32), np.empty(stack[1:7].shape)):
        with pytest.raises(ValueError, match="float32"):
            compute_channels(rgb, GSD, valid, out=wrong)


@pytest.mark.parametrize("part", ["all", "left", "none"])
def test_the_masks_compute_channels_hands_back_equal_the_mask_functions(part):
    """``compute_channels(..., masks=)`` fills the excess green and shadow maps that the
    photometric index computes on the way: the same maps :func:`excess_green` and
    :func:`shadow_mask` give, valid pixels or not (what the analyser relies on to skip them)."""
    rgb = module_scene(seed=5)
    rgb[:60, :60] = (40, 130, 50)  # some vegetation, and a flat dark patch: a shadow
    rgb[120:170, 100:160] = (25, 25, 28)
    valid = {"all": None, "none": np.zeros(rgb.shape[:2], bool)}.get(part)
    if part == "left":
        valid = np.ones(rgb.shape[:2], bool)
        valid[:, :70] = False
    masks = np.full((2, *rgb.shape[:2]), -1.0, np.float32)
    stacked = compute_channels(rgb, GSD, valid, masks=masks)
    # (two identical calls may differ in the last float32 bit: SIMD over other alignments)
    np.testing.assert_allclose(stacked, compute_channels(rgb, GSD, valid), atol=1e-6)
    np.testing.assert_allclose(masks[0], excess_green(rgb, valid), atol=1e-6)
    np.testing.assert_allclose(masks[1], shadow_mask(rgb, GSD, valid), atol=1e-6)
    if part != "none":
        assert masks[0].max() > 0.5 and masks[1].max() > 0.5
    else:
        assert not masks.any()


# --------------------------------------------------------------------------------------------
# Output contract
# --------------------------------------------------------------------------------------------
def _check(out: np.ndarray, shape) -> None:
    assert out.shape == (6, *shape)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    "name, rgb",
    [
        ("all black", np.zeros((128, 96, 3), np.uint8)),
        ("all white", np.full((128, 96, 3), 255, np.uint8)),
        ("constant", np.full((128, 96, 3), (120, 60, 30), np.uint8)),
        ("noise", np.random.default_rng(0).integers(0, 256, (128, 96, 3), dtype=np.uint8)),
        ("tiny", np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)),
        ("one pixel", np.full((1, 1, 3), 90, np.uint8)),
    ],
)
@pytest.mark.parametrize("gsd", [0.1, 0.3, 1.0])
def test_contract_on_degenerate_tiles(name, rgb, gsd):
    out = compute_channels(rgb, gsd)
    _check(out, rgb.shape[:2])
    if name in ("all black", "all white", "constant", "one pixel"):
        assert out.max() < 1e-4, "a featureless tile has no feature"


def test_all_nodata_tile_is_all_zero():
    rgb = module_scene()
    out = compute_channels(rgb, GSD, np.zeros(rgb.shape[:2], bool))
    _check(out, rgb.shape[:2])
    assert not out.any()
    for fn in FUNCTIONS:
        assert not fn(rgb, GSD, np.zeros(rgb.shape[:2], bool)).any()
    assert not excess_green(rgb, np.zeros(rgb.shape[:2], bool)).any()


def test_invalid_pixels_are_zero_and_do_not_leak():
    rgb = module_scene(seed=8)
    valid = np.ones(rgb.shape[:2], bool)
    valid[:, :40] = False
    out = compute_channels(rgb, GSD, valid)
    _check(out, rgb.shape[:2])
    assert not out[:, ~valid].any()
    # Garbage under the mask changes nothing: invalid pixels are filled before filtering.
    noisy = rgb.copy()
    noisy[~valid] = np.random.default_rng(0).integers(0, 256, (int((~valid).sum()), 3))
    np.testing.assert_allclose(compute_channels(noisy, GSD, valid), out, atol=1e-6)


def test_bad_input_is_refused():
    rgb = module_scene()
    for gsd in (0.0, -0.2, float("nan"), None):
        with pytest.raises(NotGeoreferencedError):
            compute_channels(rgb, gsd)
    with pytest.raises(TypeError):
        compute_channels(rgb.astype(np.uint16), GSD)
    with pytest.raises(ValueError):
        compute_channels(rgb[..., 0], GSD)
    with pytest.raises(ValueError):
        compute_channels(rgb, GSD, np.ones((3, 3), bool))


# --------------------------------------------------------------------------------------------
# Invariance
# --------------------------------------------------------------------------------------------
def test_rotating_the_tile_by_90_degrees_rotates_the_maps():
    """Exact up to float rounding where the grids allow it (a square tile whose size the
    levels and FFT windows divide). LBP codes flip on exact ties when area resampling rounds
    the rotated tile one ulp differently, so it gets a looser bound."""
    rgb = module_scene(size=192, seed=9)
    out = compute_channels(rgb, GSD)
    rotated = compute_channels(np.ascontiguousarray(np.rot90(rgb)), GSD)
    for i, name in enumerate(CHANNEL_NAMES):
        err = np.abs(rotated[i] - np.rot90(out[i]))
        if name == "lbp_uniformity":
            assert err.mean() < 0.01 and err.max() < 0.05, name
        else:
            assert err.max() < 1e-4, name


def test_gabor_energy_does_not_depend_on_row_orientation():
    energies = [
        core(gabor_energy(render(lambda x, y, a=a: rows(x, y, a)), GSD)) for a in (0, 0.5, 1.0, 2.0)
    ]
    assert max(energies) - min(energies) < 0.05


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
def test_the_default_bank_is_18_gabor_filters_and_lbp_at_three_radii(monkeypatch):
    """The issue's bank: 6 orientations (0°, 30°, … 150°) × 3 frequencies, and LBP at three
    radii, counted as the reference (which the fast channels match) runs them. Each period is
    filtered on its own level: the frequency per metre is the kernel's per level pixel over
    the level's pixel size."""
    from . import _reference_spectral as ref

    gabors, lbps = [], []
    real_gabor, real_lbp = ref.gabor, ref.local_binary_pattern

    def gabor(image, frequency, theta, **kw):
        level_gsd = 96 * GSD / image.shape[1]
        gabors.append((round(frequency / level_gsd, 6), round(math.degrees(theta), 6)))
        return real_gabor(image, frequency, theta=theta, **kw)

    def lbp(image, points, radius, **kw):  # (the image is padded by radius + 1 a side)
        level_gsd = 96 * GSD / (image.shape[1] - 2 * (math.ceil(radius) + 1))
        lbps.append((points, round(radius * level_gsd, 6)))
        return real_lbp(image, points, radius, **kw)

    monkeypatch.setattr(ref, "gabor", gabor)
    monkeypatch.setattr(ref, "local_binary_pattern", lbp)
    rgb = render(rows, size=96)
    ref.ref_gabor_energy(rgb, GSD)
    ref.ref_lbp_uniformity(rgb, GSD)
    assert len(gabors) == len(set(gabors)) == 18
    assert sorted({t for _, t in gabors}) == [0, 30, 60, 90, 120, 150]
    assert sorted({round(1 / f, 3) for f, _ in gabors}) == [1.2, 2.4, 4.8]  # periods in m
    assert sorted(r for _, r in lbps) == [0.6, 1.2, 2.4]  # radii in m


def test_params_key_is_stable_short_and_sensitive():
    a, b = ChannelParams(), ChannelParams()
    assert a.key() == b.key() and len(a.key()) == 16 and int(a.key(), 16) >= 0
    assert hash(a) == hash(b)
    assert ChannelParams(smoothing_m=1.5).key() != a.key()
    assert ChannelParams(gabor_periods_m=(1.0, 2.0, 4.0)).key() != a.key()
    with pytest.raises(AttributeError):
        a.smoothing_m = 2.0  # frozen
    from_json = ChannelParams(gabor_periods_m=[1.2, 2.4, 4.8])  # lists become tuples
    assert from_json == a and from_json.key() == a.key()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"smoothing_m": 0.0},
        {"gabor_periods_m": ()},
        {"lbp_radii_m": (0.6, -1.0)},
        {"fft_window_px": 31},
        {"fft_band_m": (4.0, 1.0)},
        {"lbp_points": 12},
        {"shadow_weight": 1.5},
        {"texture_grid_m": float("inf")},
        {"gabor_orientations": 6.0},
    ],
)
def test_bad_params_are_refused(kwargs):
    with pytest.raises(ConfigError):
        ChannelParams(**kwargs)


def test_params_change_the_result():
    rgb = module_scene(seed=10)
    base = compute_channels(rgb, GSD)
    other = compute_channels(rgb, GSD, params=ChannelParams(gabor_periods_m=(1.0, 2.0)))
    assert not np.array_equal(base[2], other[2])
    np.testing.assert_array_equal(base[4], other[4])  # colour does not depend on the bank

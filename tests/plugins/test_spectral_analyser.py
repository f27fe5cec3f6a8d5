"""The spectral analyser: fast path against the oracle, stage contract, bad tiles."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from scipy.ndimage import find_objects

from solardesk.core.cache import Instance
from solardesk.synthetic import SceneSpec, generate_scene
from solardesk_spectral import analyser as fast
from solardesk_spectral.settings import SpectralSettings
from tests.plugins import _reference_analyser as ref

PARAMS = SpectralSettings().model_dump()


@pytest.fixture(scope="module")
def tile():
    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.15, seed=11, n_roofs=3))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    return rgb, scene.instance_mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


def test_fast_matches_reference_oracle(tile) -> None:
    rgb, _ = tile
    fusion = fast.default_fusion()
    feats = fast.pixel_features(rgb, None, 0.15)
    s_fast = fast.score_map(feats, fusion)
    s_ref = ref.score_map(feats, fusion)
    assert np.abs(s_fast - s_ref).max() < 1e-4
    # A lower threshold than the default gives more components to compare; with and without
    # the edge cut (whose components may touch).
    edges = fast.strong_edges(rgb, 0.15)
    assert np.array_equal(edges, ref.strong_edges(rgb, 0.15)) and edges.any()
    for cut in (None, edges):
        lf, nf = fast.segment(s_fast, None, 0.15, 0.35, cut)
        lr, nr = ref.segment(s_ref, None, 0.15, 0.35, cut)
        assert nf == nr and nf >= 3
        assert _iou(lf > 0, lr > 0) >= 0.99
        Xf, bf = fast.instance_stats(lf, nf, feats, s_fast, 0.15, rgb)
        Xr, br = ref.instance_stats(lr, nr, feats, s_ref, 0.15, rgb)
        # Labels are numbered in the same raster order by both, so rows correspond.
        np.testing.assert_array_equal(bf, br)
        np.testing.assert_allclose(Xf, Xr, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(
            fast.confidence(Xf, fusion, 0.15), fast.confidence(Xr, fusion, 0.15), atol=1e-3
        )


def test_extra_pixel_features_match_the_oracle(tile) -> None:
    """Excess green, shadow, blue tint and fine texture against straightforward versions (the
    six channels have their own oracle tests in tests/unit)."""
    rgb, _ = tile
    got = fast.pixel_features(rgb, None, 0.15)[6:]
    want = ref.pixel_features(rgb, None, 0.15)[6:]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert got[2].max() > 0.5 and got[3].max() > 0.5  # blue panels, textured ground


def test_cue_score_and_whole_stage_match_the_oracle(tile, monkeypatch) -> None:
    """The cue sum, the two segmentations and their suppression against the reference.

    Both sides get the same pixel features (the channels have their own oracle tests), so what
    is compared is the scoring, segmentation, statistics and suppression."""
    rgb, _ = tile
    feats = fast.pixel_features(rgb, None, 0.15)
    np.testing.assert_allclose(fast.cue_score(feats), ref.cue_score(feats), atol=1e-5)
    texture = fast.cue_score(feats, fast.TEXTURE_CUE_WEIGHTS)
    np.testing.assert_allclose(texture, ref.cue_score(feats, ref.TEXTURE_CUE_WEIGHTS), atol=1e-5)
    monkeypatch.setattr(ref, "pixel_features", fast.pixel_features)
    # a low floor: more candidates to compare, and the gate that skips the spectral measure of
    # candidates below the floor is exercised at its edge
    settings = SpectralSettings(floor=0.003)
    assert settings.cue_segmentation and settings.texture_segmentation
    assert _stage_matches_the_oracle(rgb, settings) >= 3
    # the texture segmentation alone beside the learned score (its sum computed on its own)
    alone = SpectralSettings(floor=0.003, cue_segmentation=False)
    assert _stage_matches_the_oracle(rgb, alone) >= 3


def test_texture_cue_sum_tells_a_module_grid_from_a_smooth_surface_of_its_colour() -> None:
    """ADR 0034: the texture cue sum swaps the LBP uniformity for the fine texture (module
    frames and gaps). On a light roof holding an array of blue-grey modules with light frames
    and a smooth patch of the array's mean colour, it parts the two by far more than the cue
    sum does, and the array's texture cue lies above the segmentation's threshold."""
    gsd = 0.14
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:384] * gsd
    rgb = np.empty((256, 384, 3), np.float32)
    rgb[:] = (222, 222, 226)
    array = (xx > 4) & (xx < 24) & (yy > 6) & (yy < 30)
    smooth = (xx > 30) & (xx < 50) & (yy > 6) & (yy < 30)
    rgb[array] = (118, 132, 158)
    rgb[array & ((np.mod(xx, 1.0) < 0.15) | (np.mod(yy, 1.7) < 0.15))] = (205, 208, 212)
    rgb[smooth] = rgb[array].mean(axis=0)
    rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
    feats = fast.pixel_features(rgb, None, gsd)
    inner_array = (xx > 7) & (xx < 21) & (yy > 9) & (yy < 27)
    inner_smooth = (xx > 33) & (xx < 47) & (yy > 9) & (yy < 27)

    def gap(z: np.ndarray) -> float:
        return float(z[inner_array].mean() - z[inner_smooth].mean())

    texture = fast.cue_score(feats, fast.TEXTURE_CUE_WEIGHTS)
    assert gap(texture) > 0.5 and gap(texture) > gap(fast.cue_score(feats)) + 0.2
    assert np.mean(texture[inner_array] > fast.TEXTURE_CUE_THRESHOLD) > 0.95


def _oracle_step(step, survivors, data, settings, fusion) -> list:
    """The reference's merge or split ``step`` of ``survivors`` on the tile of ``data`` (a
    ``TileData``: its grey values in float64, as the reference reads them)."""
    return step(
        survivors,
        data.grey.astype(np.float64),
        data.features,
        data.score,
        data.gsd,
        data.rgb,
        data.valid,
        settings,
        fusion,
    )


def _stage_matches_the_oracle(
    rgb: np.ndarray, settings: SpectralSettings, gsd: float = 0.15
) -> int:
    """Every stored candidate of the fast stage has a reference twin (mask IoU ≥ 0.99, same
    confidence), and as many of them; returns how many."""
    got = fast.analyse_tile(rgb, None, gsd, settings.model_dump())
    want = ref.analyse_masks(rgb, None, gsd, settings, fast.default_fusion())
    assert len(got) == len(want)
    for inst in got:
        m = inst.full_mask(*rgb.shape[:2])
        conf, best = max(((c, _iou(m, w)) for c, w in want), key=lambda t: t[1])
        assert best >= 0.99 and inst.confidence == pytest.approx(conf, abs=1e-3)
    return len(got)


def test_stage_instances_never_overlap(tile) -> None:
    rgb, _ = tile
    insts = fast.analyse_tile(rgb, None, 0.15, {**PARAMS, "floor": 0.0})
    cover = np.zeros(rgb.shape[:2], np.int32)
    for inst in insts:
        cover += inst.full_mask(*rgb.shape[:2])
    assert len(insts) >= 3 and cover.max() == 1


def test_the_stage_gives_the_same_bits_every_time() -> None:
    """Repeated analyses of one tile in one process are identical to the last bit (with
    ``cv2.magnitude`` in the Gabor coherence they differed by ~5e-9 between calls)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (399, 102, 3), dtype=np.uint8)
    valid = np.zeros((399, 102), bool)
    valid[:, :51] = True

    def signature(out):
        return tuple((i.bbox, i.confidence, tuple(i.scores)) for i in out)

    # (floor 0: every candidate, whatever its colour, so that there are many to compare)
    params = {**PARAMS, "floor": 0.0}
    runs = {signature(fast.analyse_tile(rgb, valid, 0.886, params)) for _ in range(6)}
    assert len(runs) == 1 and len(next(iter(runs))) > 10


@pytest.mark.parametrize("seed", [4, 5])
def test_stage_boxes_are_tight(seed: int) -> None:
    """Each stored box is its mask's extent (the analysis keeps the box of an outline before
    it was trimmed; COCO's bbox and the map's extent must be the mask's own)."""
    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.15, seed=seed))
    rgb = np.ascontiguousarray(scene.image.transpose(1, 2, 0))
    insts = fast.analyse_tile(rgb, None, 0.15, PARAMS)
    assert insts
    for inst in insts:
        m = inst.mask
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), inst.bbox


def test_suppress_keeps_the_more_confident_of_overlapping_candidates() -> None:
    h0 = np.zeros((40, 40), np.int32)
    h0[0:10, 0:10] = 1  # A, confidence 0.6: half of it lies in B
    h0[8:18, 12:22] = 2  # C, 0.5: 6 of its 100 pixels lie in B
    h0[30:35, 30:35] = 3  # D, 0.4, alone
    h0[0:4, 15:18] = 4  # F, 0.45: touches B; the ring next to B leaves 8 of its 12 pixels
    h1 = np.zeros((40, 40), np.int32)
    h1[0:10, 5:15] = 1  # B, 0.9
    h1[20:22, 20:22] = 2  # E, 0.95 but outside the area limits (kept False)
    parts = [
        (
            h0,
            np.array([[1.0], [3.0], [4.0], [6.0]]),
            np.array([[0, 0, 10, 10], [12, 8, 22, 18], [30, 30, 35, 35], [15, 0, 18, 4]]),
            np.array([0.6, 0.5, 0.4, 0.45]),
            np.array([True, True, True, True]),
        ),
        (
            h1,
            np.array([[2.0], [5.0]]),
            np.array([[5, 0, 15, 10], [20, 20, 22, 22]]),
            np.array([0.9, 0.95]),
            np.array([True, False]),
        ),
    ]
    labels, X, boxes, conf = fast.suppress(parts)
    # B, C, D; A overlaps B too much, F keeps too little of itself, E is not kept.
    np.testing.assert_array_equal(conf, [0.9, 0.5, 0.4])
    np.testing.assert_array_equal(X[:, 0], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(boxes[1], [12, 8, 22, 18])
    assert (labels == 1).sum() == 100 and (labels[0:10, 5:15] == 1).all()
    # C lost its 6 pixels in B and the 6 next to them (instances never touch).
    assert (labels == 2).sum() == 88 and labels[9, 12] == 1 and labels[10, 12] == 0
    assert labels[11, 12] == 2 and labels[8, 16] == 2
    assert (labels == 3).sum() == 25
    assert labels.max() == 3 and not labels[0:10, 0:5].any()  # A's own pixels stay free
    assert not labels[0:4, 16:18].any()  # nor F's
    # A smallest area (in pixels) drops D's 25.
    _, _, _, conf = fast.suppress(parts, min_pixels=30)
    np.testing.assert_array_equal(conf, [0.9, 0.5])
    # A NaN confidence has no place in the order: refused on both paths, unless not kept.
    parts[1][3][1] = np.nan
    assert len(fast.suppress(parts)[3]) == 3
    parts[0][3][2] = np.nan
    for compiled in (True, False):
        with pytest.raises(ValueError, match="NaN"):
            fast.suppress(parts, compiled=compiled)


def test_edge_cut_separates_an_array_from_the_roof_it_scores_like() -> None:
    """A dark array on a grey roof, both above the score threshold: one blob without the cut,
    the array on its own with it."""
    rgb = np.full((120, 160, 3), 200, np.uint8)  # bright ground
    rgb[20:100, 20:140] = (110, 110, 110)  # a grey roof
    rgb[40:80, 50:110] = (20, 30, 60)  # a dark blue array on it
    score = np.zeros((120, 160), np.float32)
    score[20:100, 20:140] = 0.9  # the roof scores like the array
    edges = fast.strong_edges(rgb, 0.15)
    whole, n_whole = fast.segment(score, None, 0.15, 0.5)
    cut, n_cut = fast.segment(score, None, 0.15, 0.5, edges)
    assert n_whole == 1
    array = np.zeros_like(whole, bool)
    array[40:80, 50:110] = True
    best = max(_iou(cut == k, array) for k in range(1, n_cut + 1))
    assert best >= 0.9, best
    # No mask pixel is lost except where an edge had no labelled neighbour.
    assert (cut > 0).sum() >= 0.97 * (whole > 0).sum()


def test_rectangle_statistics_are_exact() -> None:
    labels = np.zeros((60, 60), np.int32)
    labels[10:20, 5:45] = 1  # a 40 × 10 px rectangle
    feats = np.zeros((len(fast.PIXEL_FEATURES), 60, 60), np.float32)
    rgb = np.zeros((60, 60, 3), np.uint8)
    rgb[..., 0] = 180  # a red roof around ...
    rgb[10:20, 5:45] = (40, 50, 90)  # ... a blue array
    feats[fast.PIXEL_FEATURES.index("excess_green"), :, :5] = 1.0  # a lawn along the left edge
    X, boxes = fast.instance_stats(labels, 1, feats, np.ones((60, 60), np.float32), 0.2, rgb)
    row = dict(zip(fast.INSTANCE_FEATURES, X[0], strict=True))
    # The frame: the box grown by 1 m (5 px) less the box, 50 × 20 - 40 × 10 = 600 px; the
    # lawn covers its columns 0-4 (5 × 20 px), and it is red (180 - 0) where the array is blue.
    assert row["frame_excess_green"] == pytest.approx(100 / 600)
    assert row["frame_redness"] == pytest.approx(180 - (40 - 90))
    assert row["rectangularity"] == pytest.approx(1.0, abs=1e-6)
    assert row["solidity"] == pytest.approx(1.0, abs=1e-6)
    assert 10 ** row["log_area_m2"] == pytest.approx(400 * 0.04)
    assert 10 ** row["log_elongation"] == pytest.approx(4.0)
    assert tuple(boxes[0]) == (5, 10, 45, 20)


#: The learned fusion each stage version computes with (sha-256 of fusion.json's content,
#: keys sorted, first 16 hex digits). Caches are keyed by the stage version, not by this file:
#: a relearned fusion (``python -m solardesk_spectral.learn`` writes the shipped file by
#: default) computes other candidates, so it needs a new STAGE_VERSION, else every cache made
#: before would be reused as if nothing had changed. Record the new version's digest here.
FUSION_DIGEST = {22: "69f203a0274fe8d2"}


def test_a_relearned_fusion_comes_with_a_new_stage_version() -> None:
    import hashlib
    import json

    from solardesk_spectral import STAGE_VERSION

    content = json.loads(fast.FUSION_FILE.read_text(encoding="utf-8"))
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    assert FUSION_DIGEST.get(STAGE_VERSION) == digest, (
        f"fusion.json ({digest}) is not the one stage version {STAGE_VERSION} shipped: bump "
        "STAGE_VERSION in plugins/solardesk_spectral/__init__.py and record the digest"
    )


def test_stage_contract(tile) -> None:
    rgb, _ = tile
    out = fast.analyse_tile(rgb, None, 0.15, PARAMS)
    assert out and all(isinstance(i, Instance) for i in out)
    channels = fast.pixel_features(rgb, None, 0.15)[:6]
    for inst in out:
        assert PARAMS["floor"] <= inst.confidence <= 1
        assert inst.provenance == "spectral" and len(inst.scores) == 6
        assert all(0 <= s <= 1 for s in inst.scores)
        # the six channel means of the stored mask (computed for stored candidates only)
        full = inst.full_mask(*rgb.shape[:2])
        np.testing.assert_allclose(inst.scores, channels[:, full].mean(axis=1), atol=1e-5)
        x0, y0, x1, y1 = inst.bbox
        assert inst.mask.shape == (y1 - y0, x1 - x0) and inst.mask.any()
        assert inst.area_px * 0.15**2 >= PARAMS["min_area_m2"]


def test_the_threshold_is_not_applied_when_storing() -> None:
    """What is stored does not depend on the pseudo-label threshold: every candidate down to
    the floor, with its confidence, so the cut is a query at read time."""
    scene = generate_scene(SceneSpec(height=768, width=768, gsd=0.15, seed=24, n_roofs=12))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))

    def stored(**change):
        out = fast.analyse_tile(rgb, None, 0.15, {**PARAMS, **change})
        return [(i.bbox, i.confidence, i.mask.tobytes()) for i in out]

    default = stored()
    assert stored(threshold=0.1) == default == stored(threshold=0.99)
    confidences = [c for _, c, _ in default]
    assert any(PARAMS["floor"] <= c < PARAMS["threshold"] for c in confidences)
    assert any(c >= PARAMS["threshold"] for c in confidences)
    # the floor is what decides what is kept
    assert [t for t in stored(floor=0.6)] == [t for t in default if t[1] >= 0.6]


def test_finds_synthetic_panels() -> None:
    """On synthetic imagery (the kind the fusion was learned on) most arrays are found."""
    scene = generate_scene(SceneSpec(height=768, width=768, gsd=0.15, seed=24, n_roofs=12))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    out = fast.analyse_tile(rgb, None, 0.15, PARAMS)
    truth = scene.instance_mask
    n_truth = int(truth.max())
    assert n_truth >= 10
    found = set()
    confident_hits = 0
    confident = [i for i in out if i.confidence >= 0.85]
    for inst in out:
        m = inst.full_mask(768, 768)
        ids, counts = np.unique(truth[m], return_counts=True)
        for t, c in zip(ids, counts, strict=True):
            if t and c / ((truth == t) | m).sum() >= 0.5:
                found.add(int(t))
                confident_hits += inst.confidence >= 0.85
    assert len(found) / n_truth >= 0.5
    assert confident and confident_hits / len(confident) >= 0.6


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros((128, 128, 3), np.uint8),
        lambda: np.full((128, 128, 3), 255, np.uint8),
        lambda: np.full((128, 128, 3), 97, np.uint8),
    ],
    ids=["black", "white", "constant"],
)
def test_flat_tiles_give_nothing(make) -> None:
    assert fast.analyse_tile(make(), None, 0.15, PARAMS) == []


def test_all_nodata_tile_gives_nothing(tile) -> None:
    rgb, _ = tile
    assert fast.analyse_tile(rgb, np.zeros(rgb.shape[:2], bool), 0.15, PARAMS) == []


def test_partially_valid_tile_keeps_instances_inside(tile) -> None:
    rgb, _ = tile
    valid = np.ones(rgb.shape[:2], bool)
    valid[:, 128:] = False
    for inst in fast.analyse_tile(rgb, valid, 0.15, PARAMS):
        assert not (inst.full_mask(*valid.shape) & ~valid).any()


def _array_crop(gsd: float = 0.15, rng_seed: int = 0):
    """A 9 m × 6 m array of 1.0 m × 1.7 m modules (dark frames between blue-grey glass) on a
    roof, with one pixel of margin; and its mask."""
    rng = np.random.default_rng(rng_seed)
    h, w = round(6 / gsd), round(9 / gsd)
    yy, xx = np.mgrid[0:h, 0:w] * gsd
    grey = np.full((h, w), 120.0)
    grey[(np.mod(xx, 1.0) < gsd) | (np.mod(yy, 1.7) < gsd)] = 70.0  # module frames
    grey += rng.normal(0, 2.0, grey.shape)
    mask = np.zeros((h + 2, w + 2), np.uint8)
    mask[1:-1, 1:-1] = 1
    crop = np.full((h + 2, w + 2), 150.0)
    crop[1:-1, 1:-1] = grey
    return crop.astype(np.float32), mask


def test_fine_power_share_sees_a_module_grid_not_a_surface_that_varies_coarsely() -> None:
    """The spectral measure (ADR 0018): an array's detail is its module grid; a surface whose
    brightness wanders over metres (uneven roofing, dappled light, a car park) varies at
    coarser periods, and a candidate spanning two surfaces has a step among its detail."""
    grid, mask = _array_crop()
    xx = np.arange(grid.shape[1], dtype=np.float32)[None, :] * 0.15
    wandering = grid + 40 * np.sin(2 * np.pi * xx / 4.0)  # 4 m period
    two_tone = grid.copy()
    two_tone[:, : grid.shape[1] // 2] -= 60
    g = fast.fine_power_share(grid, mask, 0.15)
    assert g > 0.95
    assert fast.fine_power_share(wandering, mask, 0.15) < g - 0.3
    assert fast.fine_power_share(two_tone, mask, 0.15) < g - 0.05
    # the grid alone at another ground resolution: still fine detail
    grid3, mask3 = _array_crop(gsd=0.3)
    assert fast.fine_power_share(grid3, mask3, 0.3) > 0.9
    # same answer as the oracle (scipy.ndimage filters, numpy's FFT, a loop over the bins)
    for crop in (grid, wandering, two_tone):
        assert fast.fine_power_share(crop, mask, 0.15) == pytest.approx(
            ref.fine_power_share(crop.astype(np.float64), mask.astype(bool), 0.15), abs=1e-3
        )
    # too thin to measure, or flat: NaN, which the confidence treats as neutral
    thin = np.zeros_like(mask)
    thin[10:13, 5:30] = 1  # 3 px wide: its eroded interior is one row of 23 px
    assert np.isnan(fast.fine_power_share(grid, thin, 0.15))
    assert np.isnan(fast.fine_power_share(np.full_like(grid, 100.0), mask, 0.15))


@pytest.mark.parametrize("shape", [(37, 50), (40, 45), (33, 33), (64, 64), (6, 31), (3, 40)])
@pytest.mark.parametrize("gsd", [0.1, 0.15, 0.3])
def test_the_half_spectrum_gives_the_whole_spectrum_shares(shape, gsd) -> None:
    """``detail_spectrum_stats`` works on OpenCV's packed real DFT, counting each mirrored bin
    twice: its fine power share and peak share equal those of the whole spectrum summed bin by
    bin (numpy's complex FFT in float64, DC left out, the top 1 % by a full sort), for odd and
    even padded sizes, with a module-like periodic pattern (peaks, ties of mirrored bins) over
    noise; the compiled sums and NumPy's give the same bits."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] * gsd
    detail = (
        rng.normal(0, 3, shape) + 20 * np.sin(2 * np.pi * xx / 1.1) + 8 * (np.mod(yy, 1.7) < gsd)
    ).astype(np.float32)
    share, peak = fast.detail_spectrum_stats(detail, gsd)
    assert (
        fast._compiled("spectrum_sums") is not None
    )  # numba is a dependency: the compiled sums run
    slow = fast.detail_spectrum_stats(detail, gsd, compiled=False)
    np.testing.assert_array_equal([share, peak], slow)  # NaN where NaN, else the same bits
    ny, nx = fast.cv2.getOptimalDFTSize(shape[0]), fast.cv2.getOptimalDFTSize(shape[1])
    power = np.abs(np.fft.fft2(detail.astype(np.float64), s=(ny, nx))) ** 2
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(nx)[None, :]
    coarse = fy**2 + fx**2 < (gsd / fast.FINE_PERIOD_M) ** 2  # DC included
    fine = power[~coarse]
    total = power.sum() - power[0, 0]
    assert share == pytest.approx(fine.sum() / total, rel=1e-5)
    if gsd > fast.FINE_PEAK_MAX_GSD:
        assert np.isnan(peak)
    else:
        k = max(1, int(fast.FINE_PEAK_TOP * fine.size))
        assert peak == pytest.approx(np.sort(fine)[-k:].sum() / fine.sum(), rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_the_compiled_top_sum_picks_the_same_bins_as_a_partition(seed: int) -> None:
    """The compiled spectral sums pick the largest fine bins by a radix select over the
    powers' bit patterns (``_kernels._top_sum``): for any share of the bins, from one bin to
    all of them, with ties, zeros (and negative zeros) and powers spread over many octaves or
    packed into one bucket, the three sums are those of NumPy's partition, to the bit."""
    rng = np.random.default_rng(seed)
    ny, nx = [(1, 1), (2, 7), (9, 6), (16, 15), (33, 40), (64, 81)][seed]
    kind = seed % 3
    if kind == 0:  # over many octaves
        packed = rng.standard_normal((ny, nx)) * np.exp(rng.uniform(-8, 8, (ny, nx)))
    elif kind == 1:  # a few values: ties everywhere, zeros and negative zeros
        packed = rng.choice([0.0, -0.0, 1.0, -1.0, 2.0, 1.0 + 2**-20], (ny, nx))
    else:  # all within one bucket (a sixteenth of an octave)
        packed = 1.0 + rng.uniform(0, 0.01, (ny, nx))
    packed = packed.astype(np.float32)
    assert fast._compiled("spectrum_sums") is not None
    for cutoff in (0.0, 0.05, 0.3):
        for share in (0.0, 1e-4, 0.01, 0.1, 0.5, 1.0):
            compiled = fast._spectrum_sums(packed, cutoff, share)
            assert compiled == fast._spectrum_sums(packed, cutoff, share, compiled=False)


@pytest.mark.parametrize("ny", [1, 2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("nx", [1, 2, 3, 6, 7])
def test_the_packed_bins_are_the_half_spectrum_of_opencvs_packed_dft(ny: int, nx: int) -> None:
    """:func:`_packed_bins` reads OpenCV's packed real DFT (CCS) right: for every size, odd
    and even, down to one row or column, its bins' powers, each counted once or twice, add up
    to the whole spectrum's (numpy's complex FFT), bin by bin after sorting."""
    rng = np.random.default_rng(ny * 10 + nx)
    img = rng.normal(0, 1, (ny, nx)).astype(np.float32)
    packed = fast.cv2.dft(img).ravel().astype(np.float64)
    re, im, mult, fine, n_fine = fast._packed_bins(ny, nx, 0.3)
    power = packed[re] ** 2 + np.where(im >= 0, packed[np.maximum(im, 0)], 0.0) ** 2
    ours = np.sort(np.repeat(power, mult.astype(int)))
    whole = np.sort(np.abs(np.fft.fft2(img.astype(np.float64))).ravel() ** 2)
    np.testing.assert_allclose(ours, whole, rtol=1e-4, atol=1e-4)
    fy, fx = np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]
    assert n_fine == int(np.sum(fy**2 + fx**2 >= 0.09 - 1e-7))
    assert re[0] == 0 and im[0] == -1 and mult[0] == 1 and not fine[0]  # DC first


def test_the_detail_mean_on_a_coarser_grid_is_the_oracles_and_close_to_the_full_grids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ADR 0052: the mask-normalised local mean of the spectral measure is computed on a grid
    ``f = ⌊σ / 3⌋`` times coarser. The fast path (OpenCV, float32) gives the oracle's figures
    (block means, scipy's Gaussian, bilinear back, float64) on crops of every size, whole
    blocks or not; where ``f`` is 1 it is ``cv2.GaussianBlur``'s bits; and on module grids
    at 0.14 m its statistics are those of the full grid's to a few thousandths."""
    rng = np.random.default_rng(5)
    for h, w, sigma in [(31, 47, 7.24), (40, 40, 6.67), (9, 200, 10.0), (120, 77, 9.5)]:
        grey = rng.uniform(60, 200, (h, w)).astype(np.float32)
        weight = np.zeros((h, w), np.float32)
        weight[2 : h - 2, 3 : w - 1] = 1.0
        weight[rng.random((h, w)) < 0.1] = 0.0
        got = fast._masked_mean(grey * weight, weight, sigma)
        want = ref._masked_mean(grey.astype(np.float64) * weight, weight.astype(np.float64), sigma)
        assert got.shape == (h, w)
        inside = weight > 0
        assert np.abs(got - want)[inside].max() < 0.01  # grey levels (float32 vs float64: 6e-4)
    weighted, weight = grey * weight, weight  # σ = 3.33 px (0.3 m): no coarser grid
    blur = cv2.GaussianBlur(weighted, (0, 0), 3.33, borderType=cv2.BORDER_CONSTANT)
    den = np.maximum(cv2.GaussianBlur(weight, (0, 0), 3.33, borderType=cv2.BORDER_CONSTANT), 1e-6)
    assert np.array_equal(fast._masked_mean(weighted, weight, 3.33), blur / den)
    coarse = [fast.fine_power_stats(*_array_crop(0.138, seed), 0.138) for seed in range(4)]
    monkeypatch.setattr(fast, "DETAIL_GRID_SIGMA_PX", np.inf)  # the mean on the tile's grid
    full = [fast.fine_power_stats(*_array_crop(0.138, seed), 0.138) for seed in range(4)]
    assert np.allclose(coarse, full, atol=0.005) and not np.array_equal(coarse, full)


def test_fine_peak_share_sees_a_module_grid_not_noise_and_only_where_it_is_resolved() -> None:
    """``fine_peak_share`` (ADR 0032): a module grid holds its fine detail power in a few
    harmonics of its pitch; a surface of the same size with only noise, or roofing speckle,
    spreads it over every bin. Coarser than FINE_PEAK_MAX_GSD it is not measured (NaN,
    neutral) while the fine power share still is; fast and oracle agree."""
    rng = np.random.default_rng(2)
    grid, mask = _array_crop()
    noise = np.full_like(grid, 100.0) + rng.normal(0, 6, grid.shape).astype(np.float32)
    speckle = np.full_like(grid, 100.0)
    ys, xs = rng.integers(0, grid.shape[0], 400), rng.integers(0, grid.shape[1], 400)
    speckle[ys, xs] = 60.0  # dark flecks: moss, gravel, tile edges
    peak = {
        n: fast.fine_power_stats(c, mask, 0.15)[1]
        for n, c in {"grid": grid, "noise": noise, "speckle": speckle}.items()
    }
    assert peak["grid"] > fast.FINE_PEAK_MEAN
    assert peak["noise"] < fast.FINE_PEAK_MEAN - fast.FINE_PEAK_SCALE
    assert peak["speckle"] < fast.FINE_PEAK_MEAN - fast.FINE_PEAK_SCALE
    for crop in (grid, noise, speckle):
        got = fast.fine_power_stats(crop, mask, 0.15)
        want = ref.fine_power_stats(crop.astype(np.float64), mask.astype(bool), 0.15)
        assert got == pytest.approx(want, abs=1e-3)
    assert fast.fine_power_share(grid, mask, 0.15) == fast.fine_power_stats(grid, mask, 0.15)[0]
    grid3, mask3 = _array_crop(gsd=0.3)
    share3, peak3 = fast.fine_power_stats(grid3, mask3, 0.3)
    assert share3 > 0.9 and np.isnan(peak3)
    assert np.isnan(ref.fine_power_stats(grid3.astype(np.float64), mask3.astype(bool), 0.3)[1])
    # the confidence: one log-odds per FINE_PEAK_SCALE above FINE_PEAK_MEAN; NaN adds nothing
    fusion = fast.default_fusion()
    col = fast.INSTANCE_FEATURES.index("fine_peak_share")
    x = fusion.instance_mean.copy()[None, :].repeat(3, axis=0)
    x[:, col] = (fast.FINE_PEAK_MEAN, fast.FINE_PEAK_MEAN + fast.FINE_PEAK_SCALE, np.nan)
    z = fast._logit(x, fusion, 0.15)
    assert z[1] - z[0] == pytest.approx(1.0) and z[2] == pytest.approx(z[0])


def test_an_unmeasured_statistic_adds_nothing_to_the_confidence() -> None:
    fusion = fast.default_fusion()
    col = fast.INSTANCE_FEATURES.index("fine_power_share")
    x = fusion.instance_mean.copy()[None, :]
    neutral = fast.confidence(x, fusion, 0.15)
    x_nan = x.copy()
    x_nan[0, col] = np.nan
    assert fast.confidence(x_nan, fusion, 0.15) == pytest.approx(neutral)
    x_high = x.copy()
    x_high[0, col] = 1.0
    assert fast.confidence(x_high, fusion, 0.15) > neutral  # the cue counts when measured


def test_skipping_the_spectral_measure_below_the_floor_changes_nothing_stored(tile) -> None:
    """Only candidates that could reach the storage floor are measured: measuring all of them
    stores the same candidates with the same confidences."""
    rgb, _ = tile
    settings = SpectralSettings(floor=0.05)
    gated = fast.analyse(rgb, None, 0.15, settings)
    full = fast.analyse(rgb, None, 0.15, settings, measure_all=True)
    col = fast.INSTANCE_FEATURES.index("fine_power_share")
    assert np.isnan(gated.X[:, col]).sum() > np.isnan(full.X[:, col]).sum()  # some skipped
    stored_g = gated.kept & (gated.confidence >= settings.floor)
    stored_f = full.kept & (full.confidence >= settings.floor)
    assert stored_g.sum() >= 1
    np.testing.assert_array_equal(stored_g, stored_f)
    np.testing.assert_allclose(gated.confidence[stored_g], full.confidence[stored_f])


def _two_roof_planes(gsd: float = 0.15, turn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Grey level of two touching 15 m × 15 m arrays of 1.0 × 1.7 m modules (frames darker
    than the glass), the right one turned by 90° when ``turn``; and the left array's mask."""
    h, w = round(15 / gsd), round(30 / gsd)
    yy, xx = np.mgrid[0:h, 0:w] * gsd
    grey = np.full((h, w), 120.0, np.float32)
    left = xx < 15
    rows_h = (np.mod(yy, 1.7) < gsd) | (np.mod(xx, 1.0) < gsd)
    rows_v = (np.mod(xx, 1.7) < gsd) | (np.mod(yy, 1.0) < gsd)
    if turn:
        grey[left & rows_h] = 70.0
        grey[~left & rows_v] = 70.0
    else:
        grey[rows_h] = 70.0
    return grey, left


def test_orientation_split_separates_arrays_whose_rows_turn() -> None:
    """Two touching arrays as bright as each other, one turned by 90°: one component, split
    into the two arrays (fast and oracle agree); the same arrays unturned stay whole."""
    labels = np.ones((100, 200), np.int32)
    min_px = 4.0 / 0.15**2
    grey, left = _two_roof_planes()
    got, n = fast.split_by_orientation(labels, 1, fast.orientation_field(grey, 0.15), 0.15, min_px)
    assert n == 2
    assert max(_iou(got == k, left) for k in (1, 2)) >= 0.95
    assert max(_iou(got == k, ~left) for k in (1, 2)) >= 0.95
    field = ref.orientation_field(grey.astype(np.float64), 0.15)
    want, n_ref = ref.split_by_orientation(labels, 1, field, 0.15, min_px)
    assert n_ref == 2 and _iou(got == 1, want == 1) >= 0.99 and _iou(got == 2, want == 2) >= 0.99
    flat, _ = _two_roof_planes(turn=False)
    same, n_same = fast.split_by_orientation(
        labels, 1, fast.orientation_field(flat, 0.15), 0.15, min_px
    )
    assert n_same == 1 and (same == labels).all()


def test_orientation_split_is_off_by_default_and_matches_the_oracle(tile, monkeypatch) -> None:
    """With the orientation split on, the fixture tile's split parts are joined again by the
    fragment merge where the whole is more confident (ADR 0026): the stage, fast and
    reference, stores the same candidates with and without merges, and fewer with them."""
    assert SpectralSettings().orientation_split is False
    rgb, _ = tile
    monkeypatch.setattr(ref, "pixel_features", fast.pixel_features)
    split = SpectralSettings(orientation_split=True, floor=0.003)
    unmerged = split.model_copy(update={"merge_fragments": False})
    n_merged = _stage_matches_the_oracle(rgb, split)
    assert _stage_matches_the_oracle(rgb, unmerged) > n_merged >= 3


def _two_row_array(gsd: float = 0.15):
    """A 200 × 200 px roof with a two-row array (rows 2 m deep, 0.6 m apart, 1 m modules
    between darker frames) and a small block 4 m away; the label image of the two rows
    (1, 2), the block (3) and a fleck on the roof (4)."""
    rng = np.random.default_rng(3)
    rgb = np.empty((200, 200, 3), np.float64)
    rgb[:] = (150, 110, 90)
    labels = np.zeros((200, 200), np.int32)
    y0, depth, gap = 40, round(2.0 / gsd), round(0.6 / gsd)
    for k, top in enumerate((y0, y0 + depth + gap)):
        labels[top : top + depth, 40:160] = k + 1
    labels[y0 + 2 * depth + gap + round(4 / gsd) :][:20, 60:100] = 3
    labels[170:180, 170:180] = 4
    yy, xx = np.mgrid[0:200, 0:200] * gsd
    panel = np.isin(labels, (1, 2, 3))
    frame = (np.mod(xx, 1.0) < gsd) | (np.mod(yy - y0 * gsd, 1.0) < gsd)
    rgb[panel] = (70, 80, 105)
    rgb[panel & frame] = (40, 45, 60)
    rgb += rng.normal(0, 2, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


@pytest.mark.parametrize("best_part", [0.2, 0.99999])
def test_fragment_merge_is_kept_only_when_at_least_as_confident(best_part: float) -> None:
    """Two rows of one array 0.6 m apart are tried as one candidate (their union closed over the
    gap); a block 4 m away and a candidate below the least confidence are no members. The
    union replaces the rows only when its own confidence reaches the better row's, and the
    oracle (whole-tile masks, scipy morphology) agrees."""
    gsd = 0.15
    rgb, labels = _two_row_array(gsd)
    settings = SpectralSettings()
    fusion = fast.default_fusion()
    feats = fast.pixel_features(rgb, None, gsd)
    score = fast.score_map(feats, fusion)
    context = fast.FrameContext.of(rgb, feats, None)
    X, boxes = fast.instance_stats(labels, 4, feats, score, gsd, rgb, None, context=context)
    conf = np.array([0.15, best_part, 0.5, 0.05])
    kept = np.ones(4, bool)
    grey = fast.cv2.cvtColor(rgb, fast.cv2.COLOR_RGB2GRAY).astype(np.float32)
    before = labels.copy()
    data = fast.TileData(rgb, None, gsd, grey, feats, score, context)
    out, X2, boxes2, conf2, kept2 = fast.merge_fragments(
        labels, X, boxes, conf, kept, data, fusion, settings, shape_area_px=(0, np.inf), means=None
    )
    assert (labels == before).all()  # the input is not changed
    union = (
        fast.cv2.morphologyEx(
            np.isin(labels, (1, 2)).astype(np.uint8),
            fast.cv2.MORPH_CLOSE,
            fast._disk(round(0.5 / gsd)),
        )
        > 0
    )
    merged_x, _ = fast.instance_stats(union.astype(np.int32), 1, feats, score, gsd, rgb, None)
    merged_x[0, fast._FINE_COLS] = fast.measure_fine_power(
        grey, union.astype(np.int32), gsd, [True]
    )[0]
    merged_conf = float(fast.confidence(merged_x, fusion, gsd)[0])
    assert 0.2 < merged_conf < 0.99999  # so that the two cases differ
    survivors = [(c, labels == i + 1, X[i].copy()) for i, c in enumerate(conf)]
    want = _oracle_step(ref.merge_fragments, survivors, data, settings, fusion)
    if best_part == 0.2:
        assert len(conf2) == 3 and kept2.all()
        # the block and the fleck keep their masks and rows; the union is the last row
        assert (out == 1).sum() == (labels == 3).sum() and (out == 2).sum() == (labels == 4).sum()
        np.testing.assert_array_equal(X2[:2], X[2:])
        assert _iou(out == 3, union) >= 0.99 and np.isin(labels, (1, 2))[out != 3].sum() == 0
        assert conf2[2] == pytest.approx(merged_conf, abs=1e-6)
        assert tuple(boxes2[2]) == (40, 40, 160, 40 + 2 * round(2.0 / gsd) + round(0.6 / gsd))
        assert len(want) == 3 and _iou(want[-1][1], out == 3) >= 0.99
        assert want[-1][0] == pytest.approx(merged_conf, abs=1e-3)
    else:
        assert (out == labels).all() and len(conf2) == 4 and (conf2 == conf).all()
        assert [c for c, _, _ in want] == list(conf)


def test_water_is_less_confident_than_a_panel_of_the_same_shape() -> None:
    """``water_excess`` (ADR 0027): a pool-coloured rectangle (cyan: green and blue far above
    red) lies above the hinge, a blue-grey or deep-blue panel below it; the same shape in pool
    colours loses one log-odds per WATER_SCALE levels; fast and oracle agree."""
    gsd = 0.15
    labels = np.zeros((120, 120), np.int32)
    labels[30:70, 20:100] = 1
    col = fast.INSTANCE_FEATURES.index("water_excess")
    fusion = fast.default_fusion()
    rows = {}
    for name, colour in {
        "panel": (70, 80, 105),
        "deep blue panel": (35, 50, 120),
        "pool": (60, 170, 200),
    }.items():
        rgb = np.empty((120, 120, 3), np.uint8)
        rgb[:] = (150, 110, 90)
        rgb[labels == 1] = colour
        feats = fast.pixel_features(rgb, None, gsd)
        score = fast.score_map(feats, fusion)
        X, _ = fast.instance_stats(labels, 1, feats, score, gsd, rgb)
        Xr, _ = ref.instance_stats(labels, 1, feats, score, gsd, rgb)
        assert X[0, col] == pytest.approx(Xr[0, col])
        rows[name] = X[0]
    assert rows["panel"][col] == 0 and rows["deep blue panel"][col] == 0
    assert rows["pool"][col] == pytest.approx(min(170, 200) - 60 - fast.WATER_LEVELS)
    dry = rows["pool"].copy()
    dry[col] = 0.0
    logit = fast._logit(np.stack([dry, rows["pool"]]), fusion, gsd)
    assert logit[0] - logit[1] == pytest.approx(rows["pool"][col] / fast.WATER_SCALE)


def test_magenta_is_less_confident_than_a_panel_of_the_same_shape() -> None:
    """``magenta_excess`` (ADR 0053): the a* of a candidate's mean colour above the hinge, less
    half the a* of a red frame. A blue-grey panel (the median colour of the labelled panels on
    the shared data) lies below the hinge, a blue car far above it, and loses one log-odds per
    MAGENTA_SCALE units; on a red roof the frame takes some of it back; fast and oracle agree
    (the oracle's a* is its own scalar CIE formula), and ``magenta_cue=False`` turns it off."""
    gsd = 0.15
    labels = np.zeros((120, 120), np.int32)
    labels[30:70, 20:100] = 1
    col = fast.INSTANCE_FEATURES.index("magenta_excess")
    fusion = fast.default_fusion()
    rows = {}
    cases = {
        "panel on grey": ((122, 131, 138), (128, 128, 128)),
        "car on grey": ((40, 45, 120), (128, 128, 128)),
        "car on a red roof": ((40, 45, 120), (150, 110, 90)),
    }
    for name, (colour, ground) in cases.items():
        rgb = np.empty((120, 120, 3), np.uint8)
        rgb[:] = ground
        rgb[labels == 1] = colour
        feats = fast.pixel_features(rgb, None, gsd)
        score = fast.score_map(feats, fusion)
        X, _ = fast.instance_stats(labels, 1, feats, score, gsd, rgb)
        Xr, _ = ref.instance_stats(labels, 1, feats, score, gsd, rgb)
        assert X[0, col] == pytest.approx(Xr[0, col], abs=1e-9)
        rows[name] = X[0]
    a_car, a_red = ref._cie_a((40, 45, 120)), ref._cie_a((150, 110, 90))
    assert ref._cie_a((122, 131, 138)) < fast.MAGENTA_LEVELS and rows["panel on grey"][col] == 0
    assert ref._cie_a((128, 128, 128)) == pytest.approx(0.0, abs=1e-3)  # grey: no relief
    assert rows["car on grey"][col] == pytest.approx(a_car - fast.MAGENTA_LEVELS, abs=1e-3)
    relief = fast.MAGENTA_FRAME_RELIEF * a_red
    assert a_red > 10 and rows["car on a red roof"][col] == pytest.approx(
        a_car - relief - fast.MAGENTA_LEVELS, abs=1e-9
    )
    grey_car = rows["car on grey"].copy()
    grey_car[col] = 0.0
    both = np.stack([grey_car, rows["car on grey"]])
    logit = fast._logit(both, fusion, gsd)
    assert logit[0] - logit[1] == pytest.approx(rows["car on grey"][col] / fast.MAGENTA_SCALE)
    off = fast._fusion_for(fusion, SpectralSettings(magenta_cue=False))
    assert fast._fusion_for(fusion, SpectralSettings()) is fusion
    assert np.diff(fast._logit(both, off, gsd))[0] == 0.0
    assert fusion.instance_weights[col] == -1  # the shipped fusion is untouched
    # outside the area limits it is not measured (NaN, as the shape), inside it is
    rgb[labels == 1] = (40, 45, 120)
    feats = fast.pixel_features(rgb, None, gsd)
    score = fast.score_map(feats, fusion)
    for limits, measured in (((0.0, 100.0), False), ((100.0, 1e6), True)):
        X, _ = fast.instance_stats(labels, 1, feats, score, gsd, rgb, shape_area_px=limits)
        assert np.isnan(X[0, col]) != measured


def test_the_split_gate_reads_the_confidence_without_the_colour_cues() -> None:
    """ADR 0053: a candidate that holds an array and a magenta neighbour (a blue car beside
    it) can fall under SPLIT_MIN_CONFIDENCE for its neighbour's colour alone; the split still
    tries it, and the array replaces it. The same candidate without a colour penalty at that
    confidence is not tried (fast and oracle)."""
    gsd = 0.15
    rgb, light, car = _light_and_dark_arrays(0, gsd)
    rgb[car] = (60, 40, 140)  # smooth, violet-blue: no modules
    labels = (light | car).astype(np.int32)
    settings = SpectralSettings(split_candidates=True, floor=0.01)
    fusion, feats, score, _, data = _split_setup(rgb, gsd)
    X, boxes = fast.instance_stats(labels, 1, feats, score, gsd, rgb, None, context=data.context)
    col = fast.INSTANCE_FEATURES.index("magenta_excess")
    assert X[0, col] > 3  # pays ≥ 3 log-odds for the car
    conf = np.array([0.03])  # under the gate as it is, over it without the colour term
    assert fast._without_colour(conf, X, fusion)[0] >= fast.SPLIT_MIN_CONFIDENCE
    clean = X.copy()
    clean[0, col] = 0.0
    assert fast._without_colour(conf, clean, fusion)[0] == conf[0]
    for x, tried in ((X, True), (clean, False)):
        out, _, _, conf2, _ = fast.split_candidates(
            labels,
            x,
            boxes,
            conf,
            np.ones(1, bool),
            data,
            fusion,
            settings,
            shape_area_px=(0, np.inf),
        )
        want = _oracle_step(
            ref.split_candidates, [(0.03, labels == 1, x[0].copy())], data, settings, fusion
        )
        if tried:
            assert _iou(out == 1, light) >= 0.98 and conf2[0] > 0.5
            assert len(want) == 1 and _iou(want[0][1], out == 1) >= 0.99
        else:
            assert np.array_equal(out, labels) and conf2[0] == 0.03
            assert len(want) == 1 and np.array_equal(want[0][1], labels == 1)


def test_texture_counts_against_a_candidate_and_flatness_not_for_it() -> None:
    """ADR 0028: the Gabor energy term is at most 0 — a flat blob (a shadow, a flat roof) gets
    no reward for its smoothness, a strongly textured one (a tree crown) its full penalty."""
    fusion = fast.default_fusion()
    col = fast.INSTANCE_FEATURES.index("mean_gabor_energy")
    assert fusion.instance_weights[col] < 0
    x = fusion.instance_mean.copy()[None, :]
    x[0, fast.INSTANCE_FEATURES.index("fine_peak_share")] = np.nan  # no module grid measured
    neutral = fast._logit(x, fusion, 0.15)[0]
    flat, textured = x.copy(), x.copy()
    flat[0, col] -= 3 * fusion.instance_std[col]
    textured[0, col] += 3 * fusion.instance_std[col]
    assert fast._logit(flat, fusion, 0.15)[0] == pytest.approx(neutral)
    assert fast._logit(textured, fusion, 0.15)[0] == pytest.approx(
        neutral + 3 * fusion.instance_weights[col]
    )
    # the oracle agrees, and a single row (1-D) gives the same log-odds
    for row in (flat, textured):
        p = ref.confidence(row[0], fusion, 0.15)
        assert fast.confidence(row, fusion, 0.15)[0] == pytest.approx(p)
        assert fast.confidence(row[0], fusion, 0.15) == pytest.approx(p)


def test_a_module_grid_waives_the_texture_penalty() -> None:
    """ADR 0035: the Gabor energy penalty stays whole up to a fine peak share of
    GABOR_WAIVE_FROM (and where the share is not measured), fades linearly, and is gone from
    GABOR_WAIVE_TO; fast and oracle agree. The gate that skips the spectral measure counts the
    penalty a grid could waive, so a textured array below the floor before it is measured is
    still measured."""
    fusion = fast.default_fusion()
    gcol = fast.INSTANCE_FEATURES.index("mean_gabor_energy")
    pcol = fast.INSTANCE_FEATURES.index("fine_peak_share")
    lo, hi = fast.GABOR_WAIVE_FROM, fast.GABOR_WAIVE_TO
    x = fusion.instance_mean.copy()
    x[gcol] += 3 * fusion.instance_std[gcol]  # strongly textured: a penalty of 3 weights
    penalty = 3 * fusion.instance_weights[gcol]
    assert penalty < -1

    def z(peak: float) -> float:
        """The Gabor energy term's share of the log-odds at this fine peak share."""
        row = x.copy()
        row[pcol] = peak
        plain = row.copy()
        plain[gcol] = fusion.instance_mean[gcol]
        return float(
            fast._logit(row[None], fusion, 0.15)[0] - fast._logit(plain[None], fusion, 0.15)[0]
        )

    assert z(np.nan) == pytest.approx(penalty)
    assert z(lo) == pytest.approx(penalty) and z(lo - 0.1) == pytest.approx(penalty)
    assert z((lo + hi) / 2) == pytest.approx(penalty / 2)
    assert z(hi) == pytest.approx(0.0, abs=1e-9) and z(0.9) == pytest.approx(0.0, abs=1e-9)
    for peak in (np.nan, lo, (lo + hi) / 2, 0.9):
        row = x.copy()
        row[pcol] = peak
        assert fast.confidence(row[None], fusion, 0.15)[0] == pytest.approx(
            ref.confidence(row, fusion, 0.15)
        )
    # the gate: unmeasured, this row's log-odds include the whole penalty; what measuring can
    # add covers the penalty where the share can be measured (≤ FINE_PEAK_MAX_GSD), not beyond
    row = x.copy()
    row[pcol] = np.nan
    row[fast.INSTANCE_FEATURES.index("fine_power_share")] = np.nan
    fine = float(fast._best_fine_gain(row[None], fusion, fast.FINE_PEAK_MAX_GSD + 1)[0])
    gain = float(fast._best_fine_gain(row[None], fusion, 0.15)[0])
    assert gain == pytest.approx(fine - penalty)
    best = row.copy()
    best[pcol], best[fast.INSTANCE_FEATURES.index("fine_power_share")] = 1.0, 1.0
    assert (
        fast._logit(best[None], fusion, 0.15)[0]
        <= fast._logit(row[None], fusion, 0.15)[0] + gain + 1e-9
    )


def _array_beside_a_shadow(gsd: float = 0.15):
    """A 160 × 160 px roof with a 9 m × 3 m array (blue-grey modules, frames a little darker)
    and a 9 m × 2.4 m shadow along it, segmented as one candidate (1); a roof-coloured block
    (2, one grey class), a second array-and-shadow pair (3) and an array beside a surface of
    nearly its tone (4) elsewhere."""
    rng = np.random.default_rng(5)
    rgb = np.empty((160, 160, 3), np.float64)
    rgb[:] = (150, 110, 90)
    labels = np.zeros((160, 160), np.int32)
    array = np.zeros((160, 160), bool)
    array[20:40, 20:80] = True
    array[110:130, 20:80] = True
    shadow = np.zeros((160, 160), bool)
    shadow[40:56, 20:80] = True
    shadow[130:146, 20:80] = True
    yy, xx = np.mgrid[0:160, 0:160] * gsd
    frame = (np.mod(xx, 1.0) < gsd) | (np.mod(yy, 1.5) < gsd)
    rgb[array] = (95, 110, 140)
    rgb[array & frame] = (80, 92, 118)
    rgb[shadow] = (30, 30, 36)
    labels[array | shadow] = 1
    labels[100:, :][array[100:] | shadow[100:]] = 3
    labels[70:95, 100:140] = 2
    # (4) the same array beside a surface only 20 levels darker: two classes, too close
    near = np.zeros((160, 160), bool)
    near[20:40, 100:150] = True
    rgb[near] = (95, 110, 140)
    rgb[near & frame] = (80, 92, 118)
    rgb[40:56, 100:150] = (75, 90, 120)
    labels[20:56, 100:150] = 4
    rgb += rng.normal(0, 2, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels, array


def _split_setup(rgb: np.ndarray, gsd: float = 0.15):
    """The fusion, pixel features, score map, grey tile and TileData of an RGB tile."""
    fusion = fast.default_fusion()
    feats = fast.pixel_features(rgb, None, gsd)
    score = fast.score_map(feats, fusion)
    context = fast.FrameContext.of(rgb, feats, None)
    grey = fast.cv2.cvtColor(rgb, fast.cv2.COLOR_RGB2GRAY).astype(np.float32)
    return fusion, feats, score, grey, fast.TileData(rgb, None, gsd, grey, feats, score, context)


def _logit_of(mask: np.ndarray, data, fusion) -> float:
    """The log-odds of ``mask`` scored as a candidate (fine power share included)."""
    x, _ = fast.instance_stats(
        mask.astype(np.int32), 1, data.features, data.score, data.gsd, data.rgb, None
    )
    x[0, fast._FINE_COLS] = fast.measure_fine_power(
        data.grey, mask.astype(np.int32), data.gsd, [True]
    )[0]
    return float(fast._logit(x, fusion, data.gsd)[0])


@pytest.mark.parametrize("whole", ["clearly less", "less, within the margin", "confident"])
def test_split_replaces_a_candidate_by_its_array_only_when_clearly_more_confident(
    whole: str,
) -> None:
    """ADR 0029: a candidate holding an array and its shadow is cut at the Otsu level of its
    grey values; the array part replaces it only when SPLIT_MARGIN log-odds more confident. A
    one-tone block and a candidate under SPLIT_MIN_CONFIDENCE are left alone, the input is not
    changed, and the oracle (whole-tile masks, skimage's Otsu, scipy morphology) agrees."""
    gsd = 0.15
    rgb, labels, array = _array_beside_a_shadow(gsd)
    settings = SpectralSettings(split_candidates=True)
    fusion, feats, score, grey, data = _split_setup(rgb, gsd)
    X, boxes = fast.instance_stats(labels, 4, feats, score, gsd, rgb, None, context=data.context)
    one = labels == 1
    level, separation, step = fast.otsu_level(grey[one])
    assert step >= fast.SPLIT_MIN_STEP and separation >= fast.SPLIT_MIN_SEPARATION
    assert (grey[one & array] > level).all() and (grey[one & ~array] <= level).all()
    assert fast.otsu_level(grey[labels == 2])[1] < fast.SPLIT_MIN_SEPARATION
    level4, separation, step = fast.otsu_level(grey[labels == 4])
    assert separation >= fast.SPLIT_MIN_SEPARATION and step < fast.SPLIT_MIN_STEP
    # (its array would beat it by far: only the step keeps it whole)
    assert _logit_of((labels == 4) & (grey > level4), data, fusion) > 0
    part = array & one
    part_logit = _logit_of(part, data, fusion)
    z = {
        "clearly less": part_logit - 2 * fast.SPLIT_MARGIN,
        "less, within the margin": part_logit - fast.SPLIT_MARGIN / 2,
        "confident": 6.9,
    }[whole]
    assert part_logit < 6.9 + fast.SPLIT_MARGIN
    conf = np.array([1 / (1 + np.exp(-z)), 0.5, 0.04, 0.1])
    kept = np.ones(4, bool)
    before = labels.copy()
    out, X2, boxes2, conf2, kept2 = fast.split_candidates(
        labels, X, boxes, conf, kept, data, fusion, settings, shape_area_px=(0, np.inf), means=None
    )
    assert (labels == before).all()
    survivors = [(c, labels == i + 1, X[i].copy()) for i, c in enumerate(conf)]
    want = _oracle_step(ref.split_candidates, survivors, data, settings, fusion)
    assert len(want) == len(conf2) == 4 and kept2.all()
    # the block, the candidate under the least confidence and the one whose classes are too
    # close keep their rows and masks
    for i in (1, 2, 3):
        assert ((out == i + 1) == (labels == i + 1)).all() and conf2[i] == conf[i]
        np.testing.assert_array_equal(X2[i], X[i])
    if whole == "clearly less":
        # the array takes the candidate's row; the shadow is no candidate any more
        assert _iou(out == 1, part) >= 0.98 and not (out[one & ~part]).any()
        assert conf2[0] == pytest.approx(1 / (1 + np.exp(-part_logit)), abs=1e-3)
        ys, xs = np.nonzero(out == 1)
        assert tuple(boxes2[0]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert _iou(want[0][1], out == 1) >= 0.99
        assert want[0][0] == pytest.approx(conf2[0], abs=1e-3)
    else:
        assert (out == labels).all() and (conf2 == conf).all()
        assert [c for c, _, _ in want] == list(conf)


def _light_and_dark_arrays(gap_px: int, gsd: float = 0.15):
    """A light and a dark array of modules (9 × 3 m each) on a red roof, the dark one
    ``gap_px`` pixels below the light one: ``(rgb, light, dark)``."""
    rng = np.random.default_rng(5)
    rgb = np.empty((160, 160, 3), np.float64)
    rgb[:] = (150, 110, 90)
    light, dark = np.zeros((160, 160), bool), np.zeros((160, 160), bool)
    light[20:40, 20:80] = True
    dark[40 + gap_px : 60 + gap_px, 20:80] = True
    yy, xx = np.mgrid[0:160, 0:160] * gsd
    frame = (np.mod(xx, 1.0) < gsd) | (np.mod(yy, 1.5) < gsd)
    rgb[light], rgb[light & frame] = (95, 110, 140), (80, 92, 118)
    rgb[dark], rgb[dark & frame] = (50, 62, 105), (42, 52, 89)
    rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, light, dark


def test_split_parts_that_would_touch_keep_only_the_more_confident() -> None:
    """A light and a dark array side by side, segmented as one barely confident candidate: both
    halves beat it, but instances never touch, so only the more confident half replaces it
    (fast and oracle)."""
    gsd = 0.15
    rgb, light, dark = _light_and_dark_arrays(0, gsd)
    labels = (light | dark).astype(np.int32)
    settings = SpectralSettings(split_candidates=True)
    fusion, feats, score, _, data = _split_setup(rgb, gsd)
    X, boxes = fast.instance_stats(labels, 1, feats, score, gsd, rgb, None, context=data.context)
    conf = np.array([0.1])
    z = np.log(0.1 / 0.9) + fast.SPLIT_MARGIN
    assert _logit_of(light, data, fusion) > _logit_of(dark, data, fusion) > z  # both beat it
    out, _, _, conf2, _ = fast.split_candidates(
        labels, X, boxes, conf, np.ones(1, bool), data, fusion, settings, shape_area_px=(0, np.inf)
    )
    assert len(conf2) == 1 and _iou(out == 1, light) >= 0.98 and not out[dark].any()
    want = _oracle_step(
        ref.split_candidates, [(0.1, labels == 1, X[0].copy())], data, settings, fusion
    )
    assert len(want) == 1 and _iou(want[0][1], out == 1) >= 0.99


@pytest.mark.parametrize("floor", ["under the rest", "over the rest"])
def test_a_replaced_candidate_keeps_the_rest_of_what_it_held(floor: str) -> None:
    """A light and a dark array 0.6 m apart, held by one candidate: the light one beats it by
    the margin and replaces it, the dark one does not (a little more or a little less
    confident than the whole), yet it is no part of anything any more — it stays as a
    candidate of its own at its own confidence, unless that is under the storage floor (fast
    and oracle)."""
    gsd = 0.15
    rgb, light, dark = _light_and_dark_arrays(4, gsd)
    labels = (light | dark).astype(np.int32)
    fusion, feats, score, _, data = _split_setup(rgb, gsd)
    z_light, z_dark = _logit_of(light, data, fusion), _logit_of(dark, data, fusion)
    # the dark array more confident than the candidate, not by the margin; or less confident,
    # with the floor between the two
    z = z_dark + (fast.SPLIT_MARGIN / 2 if floor == "over the rest" else -fast.SPLIT_MARGIN / 2)
    assert z_light > z + fast.SPLIT_MARGIN
    c_dark, c_whole = 1 / (1 + np.exp(-z_dark)), 1 / (1 + np.exp(-z))
    settings = SpectralSettings(
        split_candidates=True,
        floor=c_dark / 2 if floor == "under the rest" else (c_dark + c_whole) / 2,
    )
    X, boxes = fast.instance_stats(labels, 1, feats, score, gsd, rgb, None, context=data.context)
    conf = np.array([c_whole])
    out, _, boxes2, conf2, kept2 = fast.split_candidates(
        labels, X, boxes, conf, np.ones(1, bool), data, fusion, settings, shape_area_px=(0, np.inf)
    )
    assert _iou(out == 1, light) >= 0.98 and conf2[0] == pytest.approx(
        1 / (1 + np.exp(-z_light)), abs=1e-3
    )
    want = _oracle_step(
        ref.split_candidates, [(conf[0], labels == 1, X[0].copy())], data, settings, fusion
    )
    if floor == "over the rest":
        assert len(conf2) == 1 and not out[dark].any() and len(want) == 1
        return
    assert len(conf2) == 2 and kept2.all() and _iou(out == 2, dark) >= 0.98
    # at its own confidence: that of the pixels it keeps (the dark array less what the
    # split's opening took; its mean colour, and so its magenta term, moves a little with them)
    own = 1 / (1 + np.exp(-_logit_of(out == 2, data, fusion)))
    assert conf2[1] == pytest.approx(own, abs=1e-3) and own == pytest.approx(c_dark, abs=0.01)
    ys, xs = np.nonzero(out == 2)
    assert tuple(boxes2[1]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert len(want) == 2
    for (c, m, _), i in zip(want, (1, 2), strict=True):
        assert _iou(m, out == i) >= 0.99 and c == pytest.approx(conf2[i - 1], abs=1e-3)


def test_a_split_part_without_fine_detail_does_not_replace_its_candidate(monkeypatch) -> None:
    """ADR 0038: the array of ``_array_beside_a_shadow`` made a plain plane whose tone drifts
    by 40 levels across its 9 m (a roof facet's shading): cut off its shadow it beats the
    whole by twice the margin (without the gate it replaces it), but its detail lies at coarse
    periods (fine power share under the fusion's mean), so the candidate stays whole — fast and
    oracle. The same part with a little fine structure only (noise) passes the gate and
    replaces it."""
    gsd = 0.15
    rgb, labels, array = _array_beside_a_shadow(gsd)
    part = array & (labels == 1)
    xx = np.mgrid[0:160, 0:160][1]
    rng = np.random.default_rng(9)
    for drift, noise in ((20.0, 0.0), (0.0, 4.0)):
        plane = rgb.astype(np.float64)
        tone = drift * np.sin((xx - 20) / 60.0 * np.pi - np.pi / 2) + rng.normal(0, noise, xx.shape)
        plane[part] = np.array((95.0, 110.0, 140.0)) + tone[part, None]
        plane = np.clip(plane, 0, 255).astype(np.uint8)
        settings = SpectralSettings(split_candidates=True)
        fusion, feats, score, grey, data = _split_setup(plane, gsd)
        share = fast.fine_power_share(grey, part.view(np.uint8), gsd)
        mean = fusion.instance_mean[fast.INSTANCE_FEATURES.index("fine_power_share")]
        X, boxes = fast.instance_stats(
            labels, 4, feats, score, gsd, plane, None, context=data.context
        )
        z = _logit_of(part, data, fusion) - 2 * fast.SPLIT_MARGIN
        conf = np.array([1 / (1 + np.exp(-z)), 0.5, 0.04, 0.1])
        assert conf[0] >= fast.SPLIT_MIN_CONFIDENCE  # a parent the split does try

        args = (labels, X, boxes, conf, np.ones(4, bool), data, fusion, settings)
        stats = {"shape_area_px": (0, np.inf), "means": None}
        out, _, _, conf2, _ = fast.split_candidates(*args, **stats)
        with monkeypatch.context() as m:  # the gate alone keeps the drifting plane whole
            m.setattr(fast, "shows_fine_texture", lambda X, fusion: np.ones(len(X), bool))
            ungated = fast.split_candidates(*args, **stats)[0]
        assert _iou(ungated == 1, part) >= 0.98
        survivors = [(c, labels == i + 1, X[i].copy()) for i, c in enumerate(conf)]
        want = _oracle_step(ref.split_candidates, survivors, data, settings, fusion)
        if drift:
            assert share < mean
            assert (out == labels).all() and (conf2 == conf).all()
            assert [c for c, _, _ in want] == list(conf)
        else:
            assert share >= mean
            assert _iou(out == 1, part) >= 0.98 and _iou(want[0][1], out == 1) >= 0.99


def test_grid_split_takes_touching_arrays_apart_when_each_is_as_confident(monkeypatch) -> None:
    """ADR 0041: two 10 m × 8 m arrays 4 m apart on one light roof, segmented as one candidate
    with the roof between them. The grid cut gives one part per array; when each part is more
    confident than the whole — though neither by the margin — both replace it (the candidate
    was several arrays); when only one is, nothing changes. Fast and oracle."""
    gsd = 0.15
    rng = np.random.default_rng(4)
    rgb = np.empty((200, 200, 3), np.float64)
    rgb[:] = (175, 172, 168)
    yy, xx = np.mgrid[0:200, 0:200] * gsd
    u, v = xx - 15, yy - 15
    left = (u > -12) & (u < -2) & (np.abs(v) < 4)
    right = (u > 2) & (u < 12) & (np.abs(v) < 4)
    frame = (np.mod(u, 1.0) < gsd) | (np.mod(v, 1.7) < gsd)
    for array in (left, right):
        rgb[array] = (165, 168, 175)
        rgb[array & frame] = (140, 143, 150)
    rgb = np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    whole = (np.abs(u) < 12) & (np.abs(v) < 4)
    settings = SpectralSettings()
    fusion, feats, score, _, data = _split_setup(rgb, gsd)
    labels = whole.astype(np.int32)
    X, boxes = fast.instance_stats(labels, 1, feats, score, gsd, rgb, None, context=data.context)
    stats = {"shape_area_px": (0, np.inf), "means": None}
    # the grid parts and their log-odds, seen on the way through
    seen = []
    replace = fast._replace_by_parts

    def spy(candidates, plab, owner, *args, **kwargs):
        seen[:] = [
            (plab == j + 1, _logit_of(plab == j + 1, data, fusion)) for j in range(len(owner))
        ]
        return replace(candidates, plab, owner, *args, **kwargs)

    monkeypatch.setattr(fast, "_replace_by_parts", spy)

    def split(z):
        conf = np.array([1 / (1 + np.exp(-z))])
        got = fast.split_by_module_grid(
            labels, X, boxes, conf, np.ones(1, bool), data, fusion, settings, **stats
        )
        want = _oracle_step(
            ref.split_by_module_grid, [(conf[0], whole, X[0].copy())], data, settings, fusion
        )
        return conf[0], got, want

    split(20.0)  # a whole no part can match: nothing changes, the parts are seen
    assert len(seen) == 2
    (a, za), (b, zb) = sorted(seen, key=lambda t: -_iou(t[0], left))
    assert _iou(a, left) >= 0.7 and _iou(b, right) >= 0.7
    low, high = sorted((za, zb))
    assert high - low < fast.SPLIT_MARGIN - 0.2  # neither beats low - 0.2 by the margin
    # each part more confident than the whole, neither by the margin: both replace it
    c, (out, _, _, conf2, kept2), want = split(low - 0.2)
    assert len(conf2) == 2 and kept2.all() and (conf2 > c).all()
    assert {round(_iou(out == k + 1, left), 2) for k in range(2)} == {round(_iou(a, left), 2), 0}
    assert _iou(out == 1, a) >= 0.99 or _iou(out == 1, b) >= 0.99
    assert len(want) == 2 and sorted(w[0] for w in want) == pytest.approx(sorted(conf2), abs=1e-3)
    # only one part more confident than the whole: it stays whole
    c, (out, _, _, conf2, _), want = split((low + high) / 2)
    assert (out == labels).all() and list(conf2) == [c] and [w[0] for w in want] == [c]


@pytest.mark.parametrize(("setting", "seed"), [("split_candidates", 32), ("grid_split", 35)])
def test_a_split_is_on_by_default_and_the_stage_with_it_matches_the_oracle(
    setting: str, seed: int, monkeypatch
) -> None:
    """On a synthetic tile where the split replaces a candidate, the stage with it stores the
    same candidates as the reference (and other ones than without it); both splits are on by
    default (the grey split since ADR 0038, built off by ADR 0029; the grid split, ADR 0041)."""
    assert getattr(SpectralSettings(), setting) is True
    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.15, seed=seed, n_roofs=3))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    monkeypatch.setattr(ref, "pixel_features", fast.pixel_features)
    off = SpectralSettings(floor=0.003, **{setting: False})
    on = off.model_copy(update={setting: True})
    plain = {round(i.confidence, 6) for i in fast.analyse_tile(rgb, None, 0.15, off.model_dump())}
    split = {round(i.confidence, 6) for i in fast.analyse_tile(rgb, None, 0.15, on.model_dump())}
    assert split - plain  # a part replaced a candidate
    assert _stage_matches_the_oracle(rgb, on) >= 3


def _array_on_a_light_roof(gsd: float = 0.15, angle_deg: float = 20.0, seed: int = 3):
    """A 27 m × 27 m light roof (the mask: its inner 180 × 180 px) holding a 12 m × 6.8 m
    array of 1.0 m × 1.7 m modules turned by ``angle_deg``: modules of nearly the roof's tone,
    frames 25 levels darker (too close for the grey split's step). Returns ``(rgb, roof,
    array)``."""
    size = 200
    rng = np.random.default_rng(seed)
    rgb = np.empty((size, size, 3), np.float64)
    rgb[:] = (175, 172, 168)
    yy, xx = np.mgrid[0:size, 0:size] * gsd
    c, a = size * gsd / 2, np.radians(angle_deg)
    u = (xx - c) * np.cos(a) + (yy - c) * np.sin(a)
    v = -(xx - c) * np.sin(a) + (yy - c) * np.cos(a)
    array = (np.abs(u) < 6.0) & (np.abs(v) < 3.4)
    frame = (np.mod(u, 1.0) < gsd) | (np.mod(v, 1.7) < gsd)
    rgb[array] = (165, 168, 175)
    rgb[array & frame] = (140, 143, 150)
    roof = np.zeros((size, size), bool)
    roof[10:-10, 10:-10] = True
    rgb = np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, roof, array & roof


@pytest.mark.parametrize("angle", [0.0, 20.0, 35.0])
def test_module_grid_finds_the_pitch_and_direction_of_the_modules(angle: float) -> None:
    """ADR 0041: over an array the module grid's strength passes the gate, its pitch is a
    module's side (1.0 m) and its direction runs along a side (within 6°); over the plain roof
    beside it there is no grid. The oracle (each lag summed directly) agrees."""
    gsd = 0.15
    rgb, roof, array = _array_on_a_light_roof(gsd, angle)
    grey = fast.cv2.cvtColor(rgb, fast.cv2.COLOR_RGB2GRAY).astype(np.float32)
    strength, direction, pitch = fast.module_grid(grey, array, gsd)
    assert strength >= fast.GRID_MIN_STRENGTH
    assert abs(pitch * gsd - 1.0) <= 0.1
    off = (np.degrees(direction) - angle) % 90.0
    assert min(off, 90.0 - off) <= 6.0
    assert fast.module_grid(grey, roof & ~array, gsd)[0] < fast.GRID_MIN_STRENGTH / 2
    want = ref.module_grid(grey.astype(np.float64), array, gsd)
    assert want[0] == pytest.approx(strength, abs=1e-4)
    assert want[1:] == pytest.approx((direction, pitch), abs=1e-9)


def test_grid_map_lights_the_modules_not_the_roof() -> None:
    """The grid of the whole roof is the array's; its map is high on the array and near 0 on
    the roof around it, as the oracle's (scipy shifts and uniform filters) is."""
    gsd = 0.15
    rgb, roof, array = _array_on_a_light_roof(gsd)
    grey = fast.cv2.cvtColor(rgb, fast.cv2.COLOR_RGB2GRAY).astype(np.float32)
    strength, direction, pitch = fast.module_grid(grey, roof, gsd)
    assert strength >= fast.GRID_MIN_STRENGTH and abs(pitch * gsd - 1.0) <= 0.1
    g = fast.grid_map(grey, direction, pitch)
    inner = fast.cv2.erode(array.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert g[inner].mean() >= 0.4 and g[roof & ~array].mean() <= 0.15
    np.testing.assert_allclose(
        g, ref.grid_map(grey.astype(np.float64), direction, pitch), atol=1e-3
    )


def test_grid_map_is_finite_on_flat_patches() -> None:
    """OpenCV's box sums of squares dip a hair below 0 on a flat patch beside a contrasted
    grid; the map must stay finite there (it was NaN over a third of this crop)."""
    grey = np.full((183, 273), 140.0, np.float32)
    grey[40:140, 60:200] = 50.0
    grey[40:140:5, 60:200] = 180.0
    grey[40:140, 60:200:5] = 180.0
    g = fast.grid_map(grey, 0.0, 4.9)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, ref.grid_map(grey.astype(np.float64), 0.0, 4.9), atol=1e-3)


@pytest.mark.parametrize("case", ["cut", "confident whole", "coarse pixels", "small whole"])
def test_grid_split_cuts_an_array_out_of_its_roof(case: str, monkeypatch) -> None:
    """ADR 0041: a roof segmented with the array on it, which the grey split cannot separate
    (one tone), is cut along the module grid; the array replaces it when clearly more
    confident — not when the whole is confident, not where modules are not resolved, not for
    a candidate under the least area. Fast and oracle agree; the input is not changed."""
    gsd = 0.25 if case == "coarse pixels" else 0.15
    rgb, roof, array = _array_on_a_light_roof(0.15)
    if case == "small whole":
        monkeypatch.setattr(fast, "GRID_MIN_PARENT_M2", roof.sum() * gsd * gsd + 1)
        monkeypatch.setattr(ref, "GRID_MIN_PARENT_M2", roof.sum() * gsd * gsd + 1)
    settings = SpectralSettings()
    fusion, feats, score, _, data = _split_setup(rgb, gsd)
    labels = roof.astype(np.int32)
    X, boxes = fast.instance_stats(labels, 1, feats, score, gsd, rgb, None, context=data.context)
    part_logit = _logit_of(array, data, fusion)
    z = part_logit + 2.0 if case == "confident whole" else np.log(0.1 / 0.9)
    conf = np.array([1 / (1 + np.exp(-z))])
    stats = {"shape_area_px": (0, np.inf), "means": None}
    args = (labels, X, boxes, conf, np.ones(1, bool), data, fusion, settings)
    # one tone: the grey split leaves it whole
    assert (fast.split_candidates(*args, **stats)[0] == labels).all()
    out, _, boxes2, conf2, kept2 = fast.split_by_module_grid(*args, **stats)
    assert (labels == roof).all() and len(conf2) == 1 and kept2.all()
    want = _oracle_step(
        ref.split_by_module_grid, [(conf[0], roof, X[0].copy())], data, settings, fusion
    )
    assert len(want) == 1
    if case != "cut":
        assert (out == labels).all() and conf2[0] == conf[0] and want[0][0] == conf[0]
        return
    # the array, give or take the grid map's reach (about a module beyond its edge)
    part = out == 1
    near = fast.cv2.distanceTransform((~array).astype(np.uint8), fast.cv2.DIST_L2, 5) * gsd
    assert _iou(part, array) >= 0.6 and part[array].mean() >= 0.85
    assert (near[part] <= 1.5).mean() >= 0.95 and near[part].max() <= 3.0
    assert conf2[0] > 0.9
    ys, xs = np.nonzero(out == 1)
    assert tuple(boxes2[0]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert _iou(want[0][1], out == 1) >= 0.99 and want[0][0] == pytest.approx(conf2[0], abs=1e-3)
    # a grid part needs no texture gate (GRID_GATE): the same cut where the gate says no
    assert fast.GRID_GATE is False
    monkeypatch.setattr(fast, "shows_fine_texture", lambda X, fusion: np.zeros(len(X), bool))
    assert (fast.split_by_module_grid(*args, **stats)[0] == out).all()


def test_the_convex_hull_mask_is_qhulls() -> None:
    """ADR 0042: the pixels whose centres lie in the convex hull of a mask's pixel centres (row
    runs between integer bounds) are those of qhull's half-planes (the oracle), on blobs,
    rotated rectangles, scattered pixels and 200 random small masks; the hull holds the mask
    and is its own hull; a pixel or a straight line has none."""
    rng = np.random.default_rng(8)
    masks = []
    for _ in range(6):
        m = np.zeros((40, 50), bool)
        for _ in range(3):
            y, x = rng.integers(0, 30), rng.integers(0, 40)
            m[y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] = True
        masks.append(m)
    for angle in (0.0, 17.0, 45.0):
        m = np.zeros((60, 60), np.uint8)
        corners = fast.cv2.boxPoints(((30.0, 30.0), (40.0, 14.0), angle)).astype(np.int32)
        fast.cv2.fillPoly(m, [corners], 1)
        masks.append(m.astype(bool))
    masks.append(rng.random((30, 30)) > 0.97)
    for _ in range(200):  # small unions of boxes (horizontal and vertical edges) and specks
        m = rng.random((24, 30)) > 0.985
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, 22), rng.integers(0, 28)
            m[y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = True
        masks.append(m)
    compared = 0
    for k, m in enumerate(masks):
        hull = fast.convex_hull_mask(m)
        if hull is None:  # a pixel, a line or nothing: no area for either
            assert k >= 10 and ref.convex_hull_mask(m) is None
            continue
        compared += 1
        np.testing.assert_array_equal(hull, ref.convex_hull_mask(m))
        assert hull[m].all() and (fast.convex_hull_mask(hull) == hull).all()
    assert compared >= 150
    line, dot = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    line[np.arange(3, 15), np.arange(3, 15)] = True
    dot[5, 5] = True
    for m in (line, dot, np.zeros((5, 5), bool)):
        assert fast.convex_hull_mask(m) is None and ref.convex_hull_mask(m) is None


def _ragged_array(gsd: float = 0.15):
    """A blue array of modules (1 × 1.5 m) on a red roof, and its segmentation with three
    blocks of lighter modules (3 × 2 m) bitten out of its edges (what a score map leaves out
    of a real one)."""
    rng = np.random.default_rng(12)
    rgb = np.empty((120, 160, 3), np.float64)
    rgb[:] = (150, 110, 90)
    yy, xx = np.mgrid[0:120, 0:160]
    array = (yy >= 30) & (yy < 80) & (xx >= 30) & (xx < 130)
    frame = (np.mod(xx * gsd, 1.0) < gsd) | (np.mod(yy * gsd, 1.5) < gsd)
    rgb[array], rgb[array & frame] = (60, 72, 115), (45, 55, 90)
    bites = np.zeros_like(array)
    for y0, x0 in ((30, 50), (30, 90), (60, 100)):
        bites[y0 : y0 + 20, x0 : x0 + 14] = True
    rgb[array & bites & ~frame] = (95, 110, 140)
    rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, array, array & ~bites


@pytest.mark.parametrize(
    "case",
    [
        "filled",
        "under the least confidence",
        "more confident whole",
        "certain whole",
        "grows too much",
        "a neighbour in a bite",
    ],
)
def test_a_ragged_array_takes_its_convex_hull_at_its_own_confidence(case: str, monkeypatch) -> None:
    """ADR 0042: a confident candidate with bites out of its edges takes its convex hull as its
    outline (mask, box and statistics) when the hull is more confident — at the candidate's
    own confidence; not under OUTLINE_MIN_CONFIDENCE, not when the candidate is the more
    confident (or certain), not when the hull grows it beyond OUTLINE_MAX_GROWTH; a candidate
    in a bite keeps its pixels and a free ring around them. Fast and oracle agree; the input
    is not changed."""
    gsd = 0.15
    rgb, array, ragged = _ragged_array(gsd)
    labels = ragged.astype(np.int32)
    if case == "a neighbour in a bite":
        labels[33:45, 93:101] = 2  # a skylight in the second bite
    n = int(labels.max())
    fusion, feats, score, _, data = _split_setup(rgb, gsd)
    z_ragged, z_hull = _logit_of(ragged, data, fusion), _logit_of(array, data, fusion)
    assert z_hull > z_ragged  # the bites cost the ragged outline confidence
    z = {
        "more confident whole": z_hull + 0.5,
        "certain whole": np.inf,  # a confidence of 1.0 in float64: no hull beats it
        "under the least confidence": -1.0,
    }.get(case, z_ragged)
    conf = np.array([1 / (1 + np.exp(-z)), 0.3][:n])
    if case == "grows too much":
        growth = array.sum() / ragged.sum()
        monkeypatch.setattr(fast, "OUTLINE_MAX_GROWTH", growth - 0.01)
        monkeypatch.setattr(ref, "OUTLINE_MAX_GROWTH", growth - 0.01)
    settings = SpectralSettings()
    X, boxes = fast.instance_stats(labels, n, feats, score, gsd, rgb, None, context=data.context)
    X[:, fast._FINE_COLS] = fast.measure_fine_power(data.grey, labels, gsd, [True] * n)
    before = labels.copy()
    out, X2, boxes2, conf2, kept2 = fast.fill_outlines(
        labels,
        X,
        boxes,
        conf,
        np.ones(n, bool),
        data,
        fusion,
        settings,
        shape_area_px=(0, np.inf),
        means=None,
    )
    assert (labels == before).all() and (conf2 == conf).all() and kept2.all()
    survivors = [(c, labels == i + 1, X[i].copy()) for i, c in enumerate(conf)]
    want = _oracle_step(ref.fill_outlines, survivors, data, settings, fusion)
    assert len(want) == n
    for i in range(n):
        assert _iou(want[i][1], out == i + 1) >= 0.99 and want[i][0] == conf[i]
    if case in (
        "under the least confidence",
        "more confident whole",
        "certain whole",
        "grows too much",
    ):
        assert (out == labels).all() and (X2 == X).all()
        return
    filled = out == 1
    if case == "filled":
        np.testing.assert_array_equal(filled, array)
    else:  # the skylight and a one-pixel ring around it stay out
        assert (out == 2).sum() == (labels == 2).sum() and (out[labels == 2] == 2).all()
        ring = fast.cv2.dilate((labels == 2).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        np.testing.assert_array_equal(filled, array & ~ring)
    ys, xs = np.nonzero(filled)
    assert tuple(boxes2[0]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    area = fast.INSTANCE_FEATURES.index("log_area_m2")
    assert X2[0, area] == pytest.approx(np.log10(filled.sum() * gsd * gsd))
    assert _logit_of(filled, data, fusion) > z


def test_the_outline_fill_never_reaches_pixels_without_data() -> None:
    """A ragged array whose third bite has no data (``valid`` False): its hull is filled
    everywhere but there (fast and oracle)."""
    gsd = 0.15
    rgb, array, ragged = _ragged_array(gsd)
    valid = np.ones(array.shape, bool)
    valid[60:80, 100:114] = False  # the bite on the array's lower edge
    fusion = fast.default_fusion()
    feats = fast.pixel_features(rgb, valid, gsd)
    score = fast.score_map(feats, fusion)
    grey = fast.cv2.cvtColor(rgb, fast.cv2.COLOR_RGB2GRAY).astype(np.float32)
    context = fast.FrameContext.of(rgb, feats, valid)
    data = fast.TileData(rgb, valid, gsd, grey, feats, score, context)
    labels = ragged.astype(np.int32)
    X, boxes = fast.instance_stats(labels, 1, feats, score, gsd, rgb, valid, context=context)
    X[:, fast._FINE_COLS] = fast.measure_fine_power(grey, labels, gsd, [True])
    conf = fast.confidence(X, fusion, gsd)
    assert conf[0] >= fast.OUTLINE_MIN_CONFIDENCE
    out, _, _, conf2, _ = fast.fill_outlines(
        labels,
        X,
        boxes,
        conf,
        np.ones(1, bool),
        data,
        fusion,
        SpectralSettings(),
        shape_area_px=(0, np.inf),
        means=None,
    )
    np.testing.assert_array_equal(out == 1, array & valid)
    assert conf2[0] == conf[0]
    want = _oracle_step(
        ref.fill_outlines, [(conf[0], ragged, X[0].copy())], data, SpectralSettings(), fusion
    )
    np.testing.assert_array_equal(want[0][1], out == 1)


@pytest.mark.parametrize("seed", [11, 49])
def test_outline_fill_is_on_by_default_and_the_stage_with_it_matches_the_oracle(
    seed: int, monkeypatch
) -> None:
    """On synthetic tiles where a candidate takes its hull, the stage stores the same
    candidates as the reference, at the same confidences as without the fill."""
    assert SpectralSettings().fill_outlines is True
    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.15, seed=seed, n_roofs=3))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    monkeypatch.setattr(ref, "pixel_features", fast.pixel_features)
    off = SpectralSettings(floor=0.003, fill_outlines=False)
    on = off.model_copy(update={"fill_outlines": True})
    plain = fast.analyse_tile(rgb, None, 0.15, off.model_dump())
    filled = fast.analyse_tile(rgb, None, 0.15, on.model_dump())
    assert [i.confidence for i in plain] == [i.confidence for i in filled]
    grown = [(a, b) for a, b in zip(plain, filled, strict=True) if a.mask.sum() != b.mask.sum()]
    assert grown and all(b.mask.sum() > a.mask.sum() for a, b in grown)
    assert _stage_matches_the_oracle(rgb, on) >= 2


def test_a_candidate_of_few_pixels_loses_confidence_by_its_pixel_count() -> None:
    """ADR 0036: the same statistics (the same area in m²) give the same confidence at any
    ground resolution while the candidate covers SMALL_PIXELS pixels or more, and SMALL_PENALTY
    log-odds less per halving of its pixel count below that; fast and oracle agree, one gsd or
    one per row."""
    fusion = fast.default_fusion()
    acol = fast.INSTANCE_FEATURES.index("log_area_m2")
    x = fusion.instance_mean.copy()
    x[acol] = np.log10(6.75)  # 6.75 m²: 300 px at 0.15 m, 75 px at 0.3 m, 48 px at 0.375 m
    z = {g: float(fast._logit(x[None], fusion, g)[0]) for g in (0.1, 0.15, 0.3, 0.375)}
    assert z[0.1] == pytest.approx(z[0.15])  # 675 and 300 px: above the floor
    assert z[0.15] - z[0.3] == pytest.approx(fast.SMALL_PENALTY * np.log2(150 / 75))
    assert z[0.15] - z[0.375] == pytest.approx(fast.SMALL_PENALTY * np.log2(150 / 48))
    rows = np.stack([x, x])
    both = fast.confidence(rows, fusion, np.array([0.15, 0.3]))
    for g, c in zip((0.15, 0.3), both, strict=True):
        assert c == pytest.approx(ref.confidence(x, fusion, g))
        assert c == pytest.approx(1 / (1 + np.exp(-z[g])))
    assert both[1] < both[0]


def test_the_analyser_applies_the_pixel_count_penalty_at_its_ground_resolution() -> None:
    """Every candidate the analyser keeps on 0.3 m imagery has the confidence of its statistics
    at 0.3 m, and those under SMALL_PIXELS pixels are below what the same statistics would
    give on finer imagery. (Without the outline fill: a candidate given its convex hull as
    outline keeps its own confidence beside the hull's statistics, ADR 0042.)"""
    gsd = 0.3
    scene = generate_scene(SceneSpec(height=384, width=384, gsd=gsd, seed=5))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    fusion = fast.default_fusion()
    a = fast.analyse(rgb, None, gsd, SpectralSettings(fill_outlines=False), fusion)
    kept = np.flatnonzero(a.kept)
    np.testing.assert_allclose(a.confidence[kept], fast.confidence(a.X[kept], fusion, gsd))
    pixels = 10 ** a.X[kept, fast.INSTANCE_FEATURES.index("log_area_m2")] / gsd**2
    small = kept[pixels < fast.SMALL_PIXELS]
    assert len(small) and len(kept) > len(small)
    fine = fast.confidence(a.X[small], fusion, 0.01)  # the same statistics, many pixels
    assert (a.confidence[small] < fine).all()


def test_the_compiled_label_sums_equal_the_numpy_path() -> None:
    """ADR 0037: one compiled pass gives the same pixel counts, per-map sums and boxes as a
    gather and ``bincount`` per map and ``find_objects`` — on touching labels, labels that do
    not occur (zero box), a single-pixel label and a label above ``n`` (ignored). numba is a
    dependency: the compiled path
    must exist here, or this test would compare the NumPy path with itself."""
    assert fast._compiled("label_sums") is not None
    rng = np.random.default_rng(4)
    labels = np.zeros((90, 120), np.int32)
    labels[10:40, 5:50] = 1
    labels[10:40, 50:70] = 2  # touches 1
    labels[60:61, 100:101] = 4  # one pixel; 3 and 5 do not occur
    labels[50:85, 20:60] = rng.integers(0, 2, (35, 40)) * 6  # a ragged one
    labels[0:2, 0:3] = 9  # above n: ignored (and never written out of bounds)
    maps = [rng.normal(0, 50, labels.shape).astype(np.float32) for _ in range(3)]
    a_fast, s_fast, b_fast = fast._label_sums(labels, 6, maps)
    a_np, s_np, b_np = fast._label_sums(labels, 6, maps, compiled=False)
    np.testing.assert_array_equal(a_fast, a_np)
    np.testing.assert_allclose(s_fast, s_np, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(b_fast, b_np)
    assert tuple(b_fast[3]) == (100, 60, 101, 61) and tuple(b_fast[2]) == (0, 0, 0, 0)
    assert a_fast[2] == 0 and a_fast[1] == 30 * 20
    np.testing.assert_allclose(s_fast[0], [m[10:40, 5:50].sum(dtype=np.float64) for m in maps])


def test_the_compiled_frame_means_are_the_numpy_paths_bits() -> None:
    """The frame means in one compiled pass over the boxes give the eight gathers' bits: boxes
    inside the tile, at its edges, holding it whole (no frame: NaN) and with invalid pixels
    around them (a frame of invalid pixels only: NaN)."""
    assert fast._compiled("frame_means") is not None
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    valid = np.ones((70, 90), bool)
    valid[:, 75:] = False
    feats = rng.random((len(fast.PIXEL_FEATURES), 70, 90)).astype(np.float32)
    boxes = [(10, 10, 30, 25), (0, 0, 5, 70), (0, 0, 90, 70), (80, 20, 83, 30), (40, 60, 75, 70)]
    boxes = np.array(boxes + [(x, y, x + 7, y + 4) for x, y in rng.integers(0, 60, (40, 2))])
    for v in (None, valid):
        context = fast.FrameContext.of(rgb, feats, v)
        for sums in (None, context.colour_sums):
            for r in (1, 3):
                got = fast._frame_means(boxes, r, context, sums)
                want = fast._frame_means(boxes, r, context, sums, compiled=False)
                assert len(got) == len(want) == 2
                for g, w in zip(got, want, strict=True):
                    np.testing.assert_array_equal(g, w)  # NaN where NaN, else the same bits
                assert np.isnan(got[0][2])  # the whole tile: no frame
                assert np.isnan(got[0][3]) == (v is not None)  # invalid all around
                assert np.isfinite(got[0][0]) and np.isfinite(got[1][1])
    empty = fast._frame_means(np.zeros((0, 4), np.int64), 2, context)
    assert [e.shape for e in empty] == [(0,), (0,)]


def test_the_compiled_score_map_is_the_numpy_paths_bits(tile) -> None:
    """The fused score map's quadratic form in one compiled pass gives the bits of the same
    float32 operations on whole maps: on a scene's features and on random ones whose pixel
    count is not a multiple of the kernel's block (a last, short block), with the shipped
    fusion and a random one; both are the float64 formula to float32 precision."""
    assert fast._compiled("quadratic_form") is not None
    rng = np.random.default_rng(5)
    rgb, _ = tile
    shipped = fast.default_fusion()
    weights = rng.normal(0, 2, fast.N_PIXEL_TERMS).astype(np.float32)
    other = dataclasses.replace(shipped, pixel_weights=weights, pixel_bias=-0.7)
    n = len(fast.PIXEL_FEATURES)
    for feats in (
        fast.pixel_features(rgb, None, 0.15),
        rng.random((n, 37, 29)).astype(np.float32),
    ):
        for fusion in (shipped, other):
            got = fast.score_map(feats, fusion)
            want = fast.score_map(feats, fusion, compiled=False)
            assert got.dtype == np.float32 and got.shape == feats.shape[1:]
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            np.testing.assert_allclose(got, ref.score_map(feats, fusion), atol=2e-6)
            assert 0.0 < got.min() < got.max() < 1.0


def test_the_shared_grey_gives_the_same_features_and_stays_the_callers(tile) -> None:
    """The analysis converts the tile to grey once and hands it to the channels, the fine
    texture and the strong edges: the same maps as each converting for itself, and the
    caller's grey is left as it was where the channels fill nodata pixels in their own."""
    rgb, _ = tile
    valid = np.ones(rgb.shape[:2], bool)
    valid[:40, :] = False
    for v in (None, valid):
        grey = fast.grey_of(rgb)
        before = grey.copy()
        np.testing.assert_array_equal(
            fast.pixel_features(rgb, v, 0.15, grey), fast.pixel_features(rgb, v, 0.15)
        )
        np.testing.assert_array_equal(grey, before)
    np.testing.assert_array_equal(
        fast.strong_edges(rgb, 0.15, fast.grey_of(rgb)), fast.strong_edges(rgb, 0.15)
    )


def test_disk_morphology_is_opencvs_disk_pass() -> None:
    """Opening and closing with a disk through its rectangles give the pixels of OpenCV's
    pass with the ellipse element: on random blobs of several sizes (some smaller than the
    disk), radii below and from DISK_RECTS_FROM, with OpenCV's default border and a
    constant zero one."""
    rng = np.random.default_rng(3)
    assert len(fast._disk_rects(7)) > 2
    zero = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    changed = 0
    for _ in range(24):
        shape = (int(rng.integers(3, 90)), int(rng.integers(3, 90)))
        noise = rng.random(shape).astype(np.float32)
        blobs = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(0.5, 4)))
        binary = (blobs > np.median(blobs)).astype(np.uint8)
        for r in (1, 3, fast.DISK_RECTS_FROM, 5, 7, 9):
            for op in (cv2.MORPH_OPEN, cv2.MORPH_CLOSE):
                for border in ({}, zero):
                    got = fast.disk_morphology(binary, op, r, **border)
                    want = cv2.morphologyEx(binary, op, fast._disk(r), **border)
                    np.testing.assert_array_equal(got, want)
                    changed += int(not np.array_equal(got, binary))
    assert changed > 200
    with pytest.raises(ValueError, match="opens or closes"):
        fast.disk_morphology(binary, cv2.MORPH_GRADIENT, 5)


def _random_labels(rng: np.random.Generator, shape=None) -> tuple[np.ndarray, int, np.ndarray]:
    """Random ragged labels (some of several pieces: two components share a label) with their
    tight boxes (x0, y0, x1, y1)."""
    shape = shape or (int(rng.integers(2, 60)), int(rng.integers(2, 60)))
    raw = (rng.random(shape) < rng.uniform(0.2, 0.8)).astype(np.uint8)
    if rng.random() < 0.5:
        raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    n, labels = cv2.connectedComponents(raw, connectivity=8, ltype=cv2.CV_32S)
    n -= 1
    if n > 1 and rng.random() < 0.4:  # labels of several pieces, as a cut or a merge leaves
        half = n // 2
        labels = np.where(labels > 0, (labels - 1) % half + 1, 0).astype(np.int32)
        n = half
    boxes = np.zeros((n, 4), np.int64)
    for i, sl in enumerate(find_objects(labels, max_label=n)):
        boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return labels, n, boxes


def test_shape_statistics_compiled_and_numpy_are_the_same_bits_and_the_oracles() -> None:
    """ADR 0050: the compiled hull and rectangle give the NumPy path's figures to the last bit
    (they are computed from the hull's vertices whatever their order), and those of the
    oracle's shapely polygons (union of pixel squares, ``minimum_rotated_rectangle``) to
    rounding; where two rectangles of equal area fit, the less elongated one is taken."""
    from shapely import box, union_all

    assert fast._compiled("shape_stats") is not None
    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(400):
        labels, n, boxes = _random_labels(rng)
        if n == 0:
            continue
        traced = rng.random(n) < 0.8
        got = np.stack(fast._shape_stats(labels, n, traced, boxes))
        numpy_path = np.stack(fast._shape_stats(labels, n, traced, boxes, compiled=False))
        np.testing.assert_array_equal(got, numpy_path)
        assert np.isnan(got[:, ~traced]).all() and not np.isnan(got[:, traced]).any()
        if trial % 20 == 0:  # the oracle is slow: a few labels of every twentieth trial
            for i in np.flatnonzero(traced)[:3]:
                ys, xs = np.nonzero(labels == i + 1)
                pixels = union_all(
                    [box(x - 0.5, y - 0.5, x + 0.5, y + 0.5) for y, x in zip(ys, xs, strict=True)]
                )
                assert got[0, i] == pytest.approx(pixels.minimum_rotated_rectangle.area, rel=1e-9)
                assert got[1, i] == pytest.approx(pixels.convex_hull.area, rel=1e-12)
                checked += 1
    assert checked > 30
    # A 40 × 10 rectangle, and the same turned by 45° (its pixels' staircase).
    labels = np.zeros((70, 70), np.int32)
    labels[2:12, 5:45] = 1
    for k in range(20):
        labels[30 + k : 40 + k, 20 + k] = 2
    boxes = np.array([[5, 2, 45, 12], [20, 30, 40, 59]])
    rect, hull, long_side, short_side = fast._shape_stats(labels, 2, np.ones(2, bool), boxes)
    assert (rect[0], hull[0], long_side[0], short_side[0]) == (400.0, 400.0, 40.0, 10.0)
    # the staircase's hull: (19.5, 29.5), (20.5, 29.5), (39.5, 48.5), (39.5, 58.5), (38.5,
    # 58.5), (19.5, 39.5); its smallest rectangle lies along the 45° edges
    assert hull[1] == 219.0
    # (24.5 × 5.5 half-diagonals: 34.65 × 7.78 px, as shapely's minimum_rotated_rectangle)
    assert rect[1] == 269.5
    assert (long_side[1], short_side[1]) == pytest.approx((24.5 * 2**0.5, 5.5 * 2**0.5))
    # Equal-area rectangles: two pixels touching at a corner fit a 2 × 2 square and a 2.83 ×
    # 1.41 rectangle along their diagonal (both 4 px²): the square, the less elongated, wins.
    pair = np.zeros((4, 4), np.int32)
    pair[1, 1] = pair[2, 2] = 1
    r, h, lo, sh = fast._shape_stats(pair, 1, np.ones(1, bool), np.array([[1, 1, 3, 3]]))
    assert (r[0], h[0], lo[0], sh[0]) == (4.0, 3.0, 2.0, 2.0)


def test_label_sums_inside_boxes_are_the_whole_passes() -> None:
    """Looking for each label inside its (possibly loose) box gives the whole-image pass's
    counts, sums (added in the same order: the same bits) and tight boxes."""
    from solardesk_spectral._kernels import label_sums, label_sums_in_boxes

    rng = np.random.default_rng(5)
    for _ in range(200):
        labels, n, boxes = _random_labels(rng)
        if n == 0:
            continue
        h, w = labels.shape
        loose = boxes.copy()
        loose[:, :2] = np.maximum(loose[:, :2] - rng.integers(0, 3, (n, 2)), 0)
        loose[:, 2] = np.minimum(loose[:, 2] + rng.integers(0, 3, n), w)
        loose[:, 3] = np.minimum(loose[:, 3] + rng.integers(0, 3, n), h)
        maps = tuple(rng.normal(0, 30, labels.shape).astype(np.float32) for _ in range(3))
        whole = label_sums(labels, n, maps)
        for b in (boxes, loose):
            inside = label_sums_in_boxes(labels, b, maps)
            for x, y in zip(whole, inside, strict=True):
                np.testing.assert_array_equal(x, y)
        # and the analyser's front door takes the box pass where the boxes are small
        got = fast._label_sums(labels, n, list(maps), boxes=loose)
        for x, y in zip(whole, got, strict=True):
            np.testing.assert_array_equal(x, y)


def test_an_all_valid_mask_is_no_mask() -> None:
    """A tile whose pixels are all valid (what the reader hands over for most tiles) gives
    the very figures of one passed without a mask: the analyser drops the mask and skips its
    masking passes."""
    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.3, seed=4))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    a = fast.analyse(rgb, np.ones(rgb.shape[:2], bool), 0.3, SpectralSettings())
    b = fast.analyse(rgb, None, 0.3, SpectralSettings())
    assert len(a.X) > 0
    for name in a.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def _random_parts(rng: np.random.Generator) -> list:
    """Two to four segmentations of one random mask each: many overlapping, ragged candidates,
    confidences rounded to tenths (ties), some outside the area limits (not ``kept``)."""
    shape = (int(rng.integers(8, 70)), int(rng.integers(8, 90)))
    parts = []
    for _ in range(int(rng.integers(2, 5))):
        raw = (rng.random(shape) < rng.uniform(0.3, 0.7)).astype(np.uint8)
        if rng.random() < 0.5:
            raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        n, labels = cv2.connectedComponents(raw, connectivity=8, ltype=cv2.CV_32S)
        n -= 1
        boxes = np.zeros((n, 4), np.int64)
        for i, sl in enumerate(find_objects(labels, max_label=n)):
            boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        conf = np.round(rng.random(n), 1)
        parts.append((labels, rng.random((n, 5)), boxes, conf, rng.random(n) < 0.9))
    return parts


def test_the_compiled_suppression_equals_the_numpy_path() -> None:
    """The compiled greedy suppression takes the same candidates in the same order, with the
    same pixels, as the loop of NumPy and OpenCV steps, on 300 random stacks of ragged,
    overlapping segmentations (with ties of confidence, candidates trimmed and falling apart,
    candidates dropped)."""
    assert fast._compiled("suppress") is not None
    trimmed = dropped = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        parts = _random_parts(rng)
        min_pixels = float(rng.integers(0, 6))
        got = fast.suppress(parts, min_pixels)
        want = fast.suppress(parts, min_pixels, compiled=False)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        out, X, boxes, _ = got
        assert out.dtype == np.int32 and X.shape[1] == 5
        dropped += sum(int(p[4].sum()) for p in parts) - len(X)
        for k, row in enumerate(X):  # (each row of random statistics names its candidate)
            h, i = next((h, int(i)) for h, p in enumerate(parts) for i in
                        np.flatnonzero((p[1] == row).all(axis=1)))  # fmt: skip
            x0, y0, x1, y1 = boxes[k]
            mine = out[y0:y1, x0:x1] == k + 1
            own = parts[h][0][y0:y1, x0:x1] == i + 1
            assert mine.sum() == (out == k + 1).sum() > 0  # inside its own box
            assert not (mine & ~own).any()  # only its own pixels
            trimmed += int(mine.sum() < own.sum())
    assert trimmed > 100 and dropped > 1000


@pytest.mark.parametrize("n", [3, 65535, 65536, 3_000_000])
def test_a_pixel_under_an_edge_takes_its_largest_neighbouring_label(n: int) -> None:
    """The edge cut's back-fill: each pixel under an edge takes the largest label among its
    3×3 neighbours as they were before any is filled (0: none), whatever the number of labels
    (uint16 holds them up to 65535, float32 past that)."""
    rng = np.random.default_rng(n)
    labels = rng.integers(0, n + 1, (40, 50)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.5] = 0
    labels[0, 0] = n  # the largest label occurs
    back = (rng.random(labels.shape) < 0.3).view(np.uint8)
    labels[back.view(bool)] = 0  # pixels under an edge are background in the labels
    expected = labels.copy()
    padded = np.pad(labels, 1)
    for y, x in zip(*np.nonzero(back), strict=True):
        expected[y, x] = padded[y : y + 3, x : x + 3].max()
    fast._take_largest_neighbour(labels, back, n)
    np.testing.assert_array_equal(labels, expected)


def test_the_frame_context_maps_are_the_same_compiled_or_not() -> None:
    """``FrameContext.of`` makes its four colour maps (R − B, min(G, B) − R, G, B) in one
    compiled pass or by OpenCV and NumPy passes: the same maps and integral images, with and
    without a valid mask."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    feats = rng.random((len(fast.PIXEL_FEATURES), 37, 53)).astype(np.float32)
    valid = rng.random((37, 53)) > 0.2
    assert fast._compiled("frame_maps") is not None
    for v in (None, valid):
        a = fast.FrameContext.of(rgb, feats, v)
        b = fast.FrameContext.of(rgb, feats, v, compiled=False)
        for name in ("redness", "cyan", "green", "blue", "count"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert getattr(a, name).dtype == getattr(b, name).dtype
        for x, y in zip(a.sums, b.sums, strict=True):
            np.testing.assert_array_equal(x, y)
    r, g, b_ = (rgb[..., k].astype(np.float32) for k in range(3))
    np.testing.assert_array_equal(a.redness, r - b_)
    np.testing.assert_array_equal(a.cyan, np.minimum(g, b_) - r)


def test_the_analyser_gives_the_same_candidates_without_numba(tile, monkeypatch) -> None:
    """Where numba does not import, the analyser and the channels take the NumPy paths (ADRs
    0037, 0048, 0054, 0055: every compiled pass is None) and find the same candidates with
    the same statistics and confidences (to the channels' float32 last-bit noise between two
    runs, ≈ 1e-8)."""
    from solardesk_spectral import channels

    rgb, _ = tile
    settings = SpectralSettings()
    compiled = fast.analyse(rgb, None, 0.15, settings)
    asked = []
    monkeypatch.setattr(fast, "_compiled", lambda name: asked.append(name))
    monkeypatch.setattr(channels, "_compiled", lambda name: asked.append(name))
    plain = fast.analyse(rgb, None, 0.15, settings)
    assert {"label_sums", "suppress", "quadratic_form", "photometric", "gabor_pair"} <= set(asked)
    assert len(compiled.confidence) >= 3
    np.testing.assert_array_equal(compiled.labels, plain.labels)
    np.testing.assert_array_equal(compiled.boxes, plain.boxes)
    np.testing.assert_allclose(compiled.X, plain.X, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(compiled.confidence, plain.confidence, rtol=1e-6, atol=1e-9)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 / 0 = NaN
def test_instance_stats_skip_a_label_that_does_not_occur() -> None:
    """A label image with a gap in its labels (label 2 absent): the absent row gets no shape
    (NaN) and a zero box, the others their statistics, whatever the traced area range."""
    labels = np.zeros((60, 60), np.int32)
    labels[5:20, 5:30] = 1
    labels[30:50, 10:40] = 3
    rgb = np.full((60, 60, 3), 120, np.uint8)
    feats = fast.pixel_features(rgb, None, 0.15)
    score = np.ones((60, 60), np.float32)
    X, boxes = fast.instance_stats(labels, 3, feats, score, 0.15, rgb)
    rect = fast.INSTANCE_FEATURES.index("rectangularity")
    assert np.isnan(X[1, rect]) and tuple(boxes[1]) == (0, 0, 0, 0)
    assert X[0, rect] == pytest.approx(1.0) and X[2, rect] == pytest.approx(1.0)
    assert tuple(boxes[2]) == (10, 30, 40, 50)


def test_a_candidate_whose_box_is_the_whole_tile_has_no_shape() -> None:
    """ADR 0039: a field that fills the tile (a vineyard, a lawn — or the inside of a solar
    farm) is cut by the tile's edges on every side; its box leaves no frame, and its
    rectangularity, solidity and elongation, which would be the tile's, are not measured (NaN,
    neutral in the confidence), nor are the two frame cues. A candidate that touches three
    edges keeps them all; fast and oracle agree; with a nodata border, the valid part of the
    tile is what counts."""
    rng = np.random.default_rng(4)
    rgb = np.clip(rng.normal(120, 10, (60, 60, 3)), 0, 255).astype(np.uint8)
    feats = fast.pixel_features(rgb, None, 0.15)
    score = np.ones((60, 60), np.float32)
    shape_cols = [
        fast.INSTANCE_FEATURES.index(c)
        for c in ("rectangularity", "solidity", "log_elongation", "frame_excess_green")
    ]
    shape_cols.append(fast.INSTANCE_FEATURES.index("frame_redness"))
    whole = np.ones((60, 60), np.int32)
    whole[20:30, 25:35] = 0  # a hole: still the tile's box
    three = np.zeros((60, 60), np.int32)
    three[:, 10:] = 1  # touches the top, right and bottom edges: a frame on the left
    for labels, measured in ((whole, False), (three, True)):
        X, _ = fast.instance_stats(labels, 1, feats, score, 0.15, rgb)
        Xr, _ = ref.instance_stats(labels, 1, feats, score, 0.15, rgb)
        assert np.isnan(X[0, shape_cols]).any() == (not measured)
        assert np.isnan(X[0, shape_cols]).all() == (not measured)
        np.testing.assert_allclose(X[0], Xr[0], rtol=1e-4, atol=1e-6)
    # the confidence treats the missing shape as neutral
    fusion = fast.default_fusion()
    X, _ = fast.instance_stats(whole, 1, feats, score, 0.15, rgb)
    filled = X.copy()
    filled[0, shape_cols] = fusion.instance_mean[shape_cols]
    assert fast.confidence(X, fusion, 0.15)[0] == pytest.approx(
        fast.confidence(filled, fusion, 0.15)[0]
    )
    # nodata around a smaller valid square: a candidate filling the valid square has no frame
    valid = np.zeros((60, 60), bool)
    valid[10:50, 10:50] = True
    inner = np.zeros((60, 60), np.int32)
    inner[10:50, 10:50] = 1
    X, _ = fast.instance_stats(inner, 1, feats, score, 0.15, rgb, valid)
    assert np.isnan(X[0, shape_cols]).all()


def _same(a: Instance, b: Instance, k: int = 1, discount: float = 0.0) -> bool:
    """``a`` is ``b`` drawn ``k`` times finer with its confidence lowered by ``discount``."""
    return (
        tuple(a.bbox) == tuple(k * v for v in b.bbox)
        and np.array_equal(a.mask, np.kron(b.mask, np.ones((k, k), bool)))
        and a.confidence == pytest.approx(b.confidence - discount, abs=1e-12)
    )


def test_coarse_pass_joins_the_coarser_analysis_where_it_overlaps_nothing_more_confident() -> None:
    """ADR 0044: with ``coarse_pass`` the tile's own instances and those of the tile made three
    times coarser (drawn back on the tile's grid, confidence lowered by the discount) are taken
    by falling confidence, each unless it shares a pixel with one already taken."""
    # (a scene where the coarser pass wins some candidates and loses others; seed 5 did up to
    # stage version 19, when its one coarse winner, on no panel, lost confidence to the
    # magenta cue: ADR 0053)
    scene = generate_scene(SceneSpec(height=384, width=384, gsd=0.1, seed=7, n_roofs=4))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    k, d = fast.COARSE_FACTOR, fast.COARSE_DISCOUNT
    assert not SpectralSettings().coarse_pass  # off by default
    native = fast.analyse_tile(rgb, None, 0.1, PARAMS)
    small, _ = fast.coarsened(rgb, None, k)
    assert small.shape == (384 // k, 384 // k, 3)
    coarse = [
        i for i in fast.analyse_tile(small, None, 0.1 * k, PARAMS) if i.confidence - d >= 0.01
    ]
    joined = fast.analyse_tile(rgb, None, 0.1, {**PARAMS, "coarse_pass": True})
    assert native and coarse

    from_native = [j for j in joined if any(_same(j, n) for n in native)]
    from_coarse = [j for j in joined if any(_same(j, c, k, d) for c in coarse)]
    assert len(from_native) + len(from_coarse) == len(joined)
    assert from_coarse, "the coarser pass added nothing on this scene"
    taken = np.zeros(rgb.shape[:2], np.int32)
    for j in joined:  # instances never overlap
        x0, y0, x1, y1 = j.bbox
        assert not (taken[y0:y1, x0:x1][j.mask]).any()
        taken[y0:y1, x0:x1][j.mask] = 1

    # each one left out overlaps one taken that is at least as confident
    side = 384 // k
    left = [
        (n.full_mask(384, 384), n.confidence)
        for n in native
        if not any(_same(j, n) for j in joined)
    ]
    left += [
        (np.kron(c.full_mask(side, side), np.ones((k, k), bool)), c.confidence - d)
        for c in coarse
        if not any(_same(j, c, k, d) for j in joined)
    ]
    for m, conf in left:
        assert any((m & j.full_mask(384, 384)).any() and j.confidence >= conf for j in joined)


def test_coarse_pass_leaves_coarser_imagery_alone(tile) -> None:
    """At 0.3 m a coarser pass would run at 0.9 m, where the analyser finds almost nothing
    (docs/spectral_quality.md): the setting changes nothing above COARSE_MAX_GSD."""
    rgb, _ = tile
    plain = fast.analyse_tile(rgb, None, 0.3, PARAMS)
    with_pass = fast.analyse_tile(rgb, None, 0.3, {**PARAMS, "coarse_pass": True})
    assert len(plain) == len(with_pass) and all(map(_same, plain, with_pass))


def test_coarse_pass_keeps_off_nodata() -> None:
    """A coarse block is valid only where all its pixels are: no instance of the joined set
    reaches a pixel without data, and a tile too small for the coarser pass is left alone."""
    scene = generate_scene(SceneSpec(height=384, width=384, gsd=0.1, seed=5, n_roofs=4))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    valid = np.ones((384, 384), bool)
    valid[:, 250:] = False
    valid[100, 100] = False  # one pixel: its 3 × 3 block is nodata on the coarse grid
    on = {**PARAMS, "coarse_pass": True}
    joined = fast.analyse_tile(rgb, valid, 0.1, on)
    assert joined
    for inst in joined:
        x0, y0, x1, y1 = inst.bbox
        assert valid[y0:y1, x0:x1][inst.mask].all()
    small = np.ascontiguousarray(rgb[:150, :150])  # 50 px a side once coarser: too small
    plain = fast.analyse_tile(small, None, 0.1, PARAMS)
    assert len(fast.analyse_tile(small, None, 0.1, on)) == len(plain)


def test_a_candidate_mostly_clipped_white_is_never_a_pseudo_label() -> None:
    """ADR 0045: more than a fifth of a candidate's pixels with all three bands ≥ 240 caps its
    confidence at 0.4 (still stored, for review); the oracle applies the same rule."""
    rgb = np.full((40, 60, 3), 120, np.uint8)
    labels = np.zeros((40, 60), np.int32)
    labels[2:12, 2:22] = 1  # 200 px, 60 of them white (30 %): capped
    rgb[2:5, 2:22] = 250
    labels[20:30, 2:22] = 2  # 200 px, 30 of them white but one band at 239 (not clipped): kept
    rgb[20:23, 2:12] = (250, 239, 250)
    rgb[23:25, 2:17] = 245  # 30 px white: 15 %
    labels[2:12, 30:50] = 3  # all white, but already under the cap: unchanged
    rgb[2:12, 30:50] = 255
    labels[20:30, 30:50] = 4  # all white, not kept: unchanged
    rgb[20:30, 30:50] = 255
    boxes = np.array([[2, 2, 22, 12], [2, 20, 22, 30], [30, 2, 50, 12], [30, 20, 50, 30]])
    conf = np.array([0.95, 0.9, 0.3, 0.99])
    kept = np.array([True, True, True, False])
    out = fast.cap_white(rgb, labels, boxes, conf, kept)
    assert out.tolist() == [0.4, 0.9, 0.3, 0.99] and conf[0] == 0.95  # a copy
    for i in range(3):
        assert ref._capped_white(rgb, conf[i], labels == i + 1) == pytest.approx(out[i])


def test_outline_confidence_scores_an_outline_as_the_analyser_scores_its_own(monkeypatch) -> None:
    """``outline_confidence`` measures given outlines as the analyser measures its candidates:
    with one segmentation and no later step (so each stored mask is a component as segmented),
    re-scoring the stored masks gives back their confidence exactly; an outline outside the
    area limits scores 0, and one mostly clipped white is capped (ADR 0045)."""
    settings = SpectralSettings(
        cue_segmentation=False,
        texture_segmentation=False,
        merge_fragments=False,
        split_candidates=False,
        grid_split=False,
        fill_outlines=False,
        floor=0.01,
    )
    scene = generate_scene(SceneSpec(height=384, width=384, gsd=0.15, seed=11, n_roofs=5))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image, 0, -1))
    out = fast.analyse_tile(rgb, None, 0.15, settings.model_dump())
    assert len(out) >= 3 and max(i.confidence for i in out) >= 0.85
    labels = np.zeros((384, 384), np.int32)
    for k, inst in enumerate(out):
        labels[inst.full_mask(384, 384)] = k + 1
    free = np.argwhere(labels == 0)[0]
    labels[free[0], free[1]] = len(out) + 1  # one pixel: far under the least area
    conf = fast.outline_confidence(rgb, None, 0.15, labels, len(out) + 1, settings)
    assert conf[:-1].tolist() == [i.confidence for i in out]
    assert conf[-1] == 0.0

    best = int(np.argmax(conf))
    white = rgb.copy()
    white[labels == best + 1] = 250  # the most confident outline, clipped white
    monkeypatch.setattr(fast, "WHITE_CAP", 0.1)  # under what it scores unclipped
    capped = fast.outline_confidence(white, None, 0.15, labels, len(out) + 1, settings)
    assert capped[best] == 0.1


def test_otsu_level_counts_uint8_values_as_their_integers() -> None:
    """The same whole numbers as uint8, int64 or float32 give the same level, effectiveness
    and step to the last bit (one value, two, gaps at either end, the full range), skimage's
    level, and ``None`` for no values or all equal."""
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(5)
    cases = [
        np.array([7, 7, 200], np.uint8),
        np.array([0, 255], np.uint8),
        rng.integers(0, 256, 5000).astype(np.uint8),
        np.concatenate([rng.normal(60, 8, 3000), rng.normal(170, 15, 2000)])
        .clip(3, 250)
        .astype(np.uint8),
        rng.integers(90, 101, 777).astype(np.uint8),
    ]
    for values in cases:
        fast_u8 = fast.otsu_level(values)
        assert fast_u8 == fast.otsu_level(values.astype(np.int64))
        assert fast_u8 == fast.otsu_level(values.astype(np.float32))
        assert fast_u8[0] == threshold_otsu(hist=np.bincount(values)[values.min() :]) + values.min()
    assert fast.otsu_level(np.full(40, 9, np.uint8)) is None
    assert fast.otsu_level(np.zeros(0, np.uint8)) is None
    assert fast.otsu_level(np.zeros(0, np.float32)) is None


def test_the_compiled_otsu_of_a_masked_crop_gives_the_numpy_paths_figures() -> None:
    """``otsu_level_in`` (one compiled pass over the crop and its mask) gives
    ``otsu_level(image[mask])`` to the last bit, on uint8 and whole-number float32 crops, a
    strided view, one value or none under the mask, and falls back to NumPy for a value
    outside 0-255 (the compiled counts have 256 bins)."""
    assert fast._compiled("otsu_masked") is not None  # numba is a dependency
    rng = np.random.default_rng(11)
    grey = np.concatenate([rng.normal(70, 9, (40, 90)), rng.normal(160, 20, (50, 90))]).clip(0, 255)
    grey = np.rint(grey).astype(np.float32)
    mask = rng.random(grey.shape) < 0.7
    crops = [
        (grey, mask),
        (grey.astype(np.uint8), mask),
        (grey[5:80, 3:70], mask[5:80, 3:70]),
        (grey[::2, ::3], mask[::2, ::3]),
        (grey, np.zeros_like(mask)),
        (np.full((9, 9), 33, np.uint8), np.ones((9, 9), bool)),
        (rng.integers(0, 256, (64, 64)).astype(np.uint8), rng.random((64, 64)) < 0.5),
    ]
    for image, m in crops:
        want = fast.otsu_level(image[m])
        assert fast.otsu_level_in(image, m) == want
        assert fast.otsu_level_in(image, m, compiled=False) == want
    assert fast.otsu_level_in(grey, mask) is not None
    wide = grey * 2  # values up to 510: the compiled pass hands them to NumPy
    assert fast.otsu_level_in(wide, mask) == fast.otsu_level(wide[mask])
    assert fast._compiled("otsu_masked")(wide, mask, np.zeros(256, np.int64))[1] == -1


def test_contrast_map_lights_a_darker_bluer_patch_not_its_roof_nor_a_brown_one() -> None:
    """ADR 0056: on a beige roof at 0.3 m a dark grey-blue array passes the threshold and the
    roof around it does not; a dark brown patch (darker, but redder than the roof) stays under
    it; a uniform tile reads 0. Nodata beside an array does not hide it: the means skip
    invalid pixels (black nodata counted as roof pulls the array's contrast down). The oracle
    (SciPy's uniform filter in float64) agrees."""
    gsd = 0.3
    rgb = np.empty((160, 160, 3), np.uint8)
    rgb[:] = (133, 131, 122)  # a beige roof
    array = np.zeros((160, 160), bool)
    array[40:55, 40:70] = True  # 4.5 m × 9 m
    brown = np.zeros((160, 160), bool)
    brown[110:125, 100:130] = True
    rgb[array] = (100, 110, 112)
    rgb[brown] = (100, 85, 70)
    c = fast.contrast_map(rgb, fast.grey_of(rgb), gsd)
    inner = fast.cv2.erode(array.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert c[inner].min() > fast.CONTRAST_THRESHOLD
    assert c[brown].max() < fast.CONTRAST_THRESHOLD - 1.0
    roof = ~fast.cv2.dilate((array | brown).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(
        bool
    )
    assert c[roof].max() < 0.2  # the roof never reads darker or bluer than itself
    np.testing.assert_allclose(c, ref.contrast_map(rgb, gsd), atol=1e-4)
    flat = np.full((64, 64, 3), 120, np.uint8)
    assert np.abs(fast.contrast_map(flat, fast.grey_of(flat), gsd)).max() < 1e-5
    # nodata (black) in a band beside the array
    valid = np.ones((160, 160), bool)
    valid[:, :36] = False
    rgb[~valid] = 0
    with_valid = fast.contrast_map(rgb, fast.grey_of(rgb), gsd, valid)
    without = fast.contrast_map(rgb, fast.grey_of(rgb), gsd)
    assert with_valid[inner].min() > fast.CONTRAST_THRESHOLD
    assert without[inner].mean() < with_valid[inner].mean() - 0.3
    np.testing.assert_allclose(
        with_valid[valid], ref.contrast_map(rgb, gsd, valid)[valid], atol=1e-4
    )


def test_contrast_segmentation_is_off_by_default_and_runs_where_modules_are_not_resolved(
    monkeypatch,
) -> None:
    """ADR 0056: off by default; when on, a fifth segmentation (of :func:`contrast_map` at its
    threshold) runs on imagery coarser than CONTRAST_MIN_GSD only; at 0.3 m it adds a
    candidate on a synthetic scene, and the stage with it matches the oracle."""
    assert SpectralSettings().contrast_segmentation is False
    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.3, seed=6, n_roofs=3))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image[:3], 0, -1))
    thresholds = []
    segment = fast.segment

    def spy(hyp, valid, gsd, threshold, *args, **kwargs):
        thresholds.append(threshold)
        return segment(hyp, valid, gsd, threshold, *args, **kwargs)

    monkeypatch.setattr(fast, "segment", spy)
    off = SpectralSettings(floor=0.003)
    on = off.model_copy(update={"contrast_segmentation": True})
    for gsd, settings, n in ((0.3, off, 4), (0.3, on, 5), (fast.CONTRAST_MIN_GSD, on, 4)):
        thresholds.clear()
        fast.analyse(rgb, None, gsd, settings)
        assert len(thresholds) == n
        if n == 5:
            assert thresholds[-1] == fast.CONTRAST_THRESHOLD
    monkeypatch.setattr(fast, "segment", segment)
    plain = {round(i.confidence, 6) for i in fast.analyse_tile(rgb, None, 0.3, off.model_dump())}
    more = {round(i.confidence, 6) for i in fast.analyse_tile(rgb, None, 0.3, on.model_dump())}
    assert more - plain  # a candidate of the fifth segmentation is stored
    assert _stage_matches_the_oracle(rgb, on, gsd=0.3) >= 3


def test_an_opt_in_setting_at_its_default_is_not_part_of_the_cache_key() -> None:
    """ADR 0004 and 0056: ``contrast_segmentation`` is marked keyed-when-set. Off, it leaves
    the key as it was before the setting existed, so caches made before it stay valid; on,
    it is part of the key. The default key is pinned: if it changes, either the defaults
    compute something else (bump STAGE_VERSION) or a new opt-in setting was left unmarked."""
    from solardesk.core.cache import hash_params
    from solardesk.core.pipeline import stage_params

    _, keyed = stage_params(SpectralSettings())
    assert "contrast_segmentation" not in keyed and "threshold" not in keyed
    _, on = stage_params(SpectralSettings(contrast_segmentation=True))
    assert on.pop("contrast_segmentation") is True and on == keyed
    assert hash_params(keyed) == "9fdc7fb942056688", (
        "the default spectral settings' cache key changed: bump the stage version if the "
        "defaults compute something else, or mark a new opt-in setting keyed-when-set; then "
        "pin the new key here"
    )

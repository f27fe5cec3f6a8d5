"""Builtin plugin: the label-free spectral panel analyser (SolarDesk's pre-compute stage).

Loaded through the ``solardesk.plugins`` entry point like any third-party plugin. Importing
this module is cheap: the analyser (OpenCV, scipy) is imported when a tile is first analysed.
"""

from __future__ import annotations

from solardesk.plugin_api import Detector, PrecomputeStage, hookimpl

#: Bump when the analyser's output changes for the same inputs: the cache recomputes it.
# 2: edge cut; 3: confidence from shape and rejection cues, cue segmentations; 4: fine power share;
# 5: fragment merge, water cue, texture only against a candidate; 6: fine peak share;
# 7: a third segmentation from the texture cue sum; 8: a module grid waives the texture penalty;
# 9: a candidate of few pixels loses confidence; 10: the verified split, gated by fine texture, on;
# 11: a candidate whose box is the whole tile has no shape; 12: the module-grid split (ADR 0041);
# 13: a replaced candidate keeps the rest, a ragged one takes its convex hull (ADR 0042);
# 14: a candidate mostly clipped white is at most 0.4 confident (ADR 0045);
# 15: stored boxes are their masks' tight boxes; the module-grid map has no NaN on flat patches;
#     the Gabor coherence and edge maps the same bits on every run;
# 16: the FFT and edge statistics never on a grid finer than two tile pixels (ADR 0049);
# 17: the rectangle and hull computed exactly from the hull's vertices, whatever their order
#     (ADR 0050: the last digits of rectangularity and elongation, and the rectangle at ties)
# 18: an LBP radius or a smoothing grid within 1 % of whole pixels taken as whole (ADR 0051:
#     the same figures at round ground resolutions, faster LBP on real rasters' others)
# 19: the spectral measure's local mean on a grid where σ = 1 m spans ≥ 3 pixels (ADR 0052:
#     at 0.14-0.17 m a grid twice as coarse; coarser imagery bit for bit as before)
# 20: a candidate whose mean colour leans to magenta (CIE a*: blue cars, tarpaulins, pool
#     covers) loses confidence; the Otsu split's gate reads the confidence without the colour
#     rejection cues (ADR 0053)
# 21: the spectral measure's power spectrum from OpenCV's packed real DFT, its sums in float64
#     in a fixed order (ADR 0054: the statistics move by ~1e-8, the candidates not at all on
#     34 real tiles; recomputed rather than mixed with version 20's)
# 22: the score map's quadratic form added up per feature in float32 (ADR 0055), not by a
#     BLAS product: the statistics move by ~4e-8, the candidates not at all on 34 real tiles
STAGE_VERSION = 22


@hookimpl
def solardesk_precompute_stages() -> list[PrecomputeStage]:
    return [
        PrecomputeStage(
            id="spectral",
            title="Spectral analyser (no labels)",
            target="solardesk_spectral.analyser:analyse_tile",
            version=STAGE_VERSION,
            settings="solardesk_spectral.settings:SpectralSettings",
            initializer="solardesk_spectral.analyser:init_worker",
            parallel=True,  # single-threaded per tile: --workers auto uses the cores
            # Its scales are set in metres for rooftop arrays (modules ≈ 1 × 1.7 m, arrays
            # from ≈ 4 m²): coarser than 1 m per pixel an array is a few pixels at best, and a
            # Landsat scene (30 m) gave hundreds of "pseudo-labels" of nothing.
            max_gsd_m=1.0,
        )
    ]


@hookimpl
def solardesk_detectors() -> list[Detector]:
    return [
        Detector(
            id="spectral",
            title="Spectral analyser (no model)",
            target="solardesk_spectral.analyser:analyse_tile",
        )
    ]

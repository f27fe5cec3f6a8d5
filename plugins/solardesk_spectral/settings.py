"""Settings of the spectral analyser (a pydantic model: the GUI builds its form from it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from solardesk.config import Settings

_READ_TIME = {"recompute": False}
#: An opt-in setting whose default computes what the stage version computed before it existed:
#: in the cache key only when set (solardesk.core.pipeline.KEYED_WHEN_SET).
_KEYED_WHEN_SET = {"keyed": "when set"}


class SpectralSettings(Settings):
    """Parameters of the label-free panel analyser.

    Fields marked read-time change which stored candidates are used, not what is computed,
    so changing them recomputes nothing.
    """

    threshold: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Pseudo-label confidence",
            description="Candidates at or above this confidence become pseudo-labels.",
            json_schema_extra=_READ_TIME,
        ),
    ] = 0.85
    floor: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Storage floor",
            description="Candidates below this confidence are not stored at all.",
        ),
    ] = 0.01
    score_threshold: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            title="Score-map threshold",
            description="Fused per-pixel panel score above which a pixel is a candidate.",
        ),
    ] = 0.5
    edge_cut: Annotated[
        bool,
        Field(
            title="Cut along strong edges",
            description="Split candidates along the tile's strong edges (an array's outline), "
            "so that an array that scores like its roof is not merged with it.",
        ),
    ] = True
    orientation_split: Annotated[
        bool,
        Field(
            title="Split where the module rows turn",
            description="Split a candidate whose texture runs in two directions at least 30° "
            "apart (arrays on two roof planes that touch) into one part per direction. Off "
            "by default: on real orthophotos it splits more roofs than arrays (ADR 0019).",
        ),
    ] = False
    merge_fragments: Annotated[
        bool,
        Field(
            title="Merge an array's fragments",
            description="Try candidates that lie within 1 m of each other (the rows of one "
            "array, parts cut along its frames) as one candidate; keep the merge only when it "
            "is at least as confident as the best of its parts.",
        ),
    ] = True
    split_candidates: Annotated[
        bool,
        Field(
            title="Split a candidate from its surroundings",
            description="Cut a candidate whose grey values form two distinct classes at their "
            "Otsu level (an array and the dark roof or shadow it was segmented with); a part "
            "clearly more confident than the whole, whose detail lies at the fine periods of "
            "modules and frames rather than in broad shading, replaces it (ADRs 0029, 0038).",
        ),
    ] = True
    grid_split: Annotated[
        bool,
        Field(
            title="Cut an array out of its roof along its module grid",
            description="Where the ground resolution resolves modules (0.2 m or finer), search "
            "a candidate of 100 m² or more for one grid of modules (pitch and direction) and cut "
            "it where that grid is; a part clearly more confident than the whole, showing fine "
            "texture, replaces it (ADR 0041).",
        ),
    ] = True
    fill_outlines: Annotated[
        bool,
        Field(
            title="Fill an array's outline to its convex hull",
            description="Give a candidate of confidence 0.5 or more the outline of its convex "
            "hull (module frames, row gaps and lighter modules the segmentation left out) when "
            "the hull is at most 1.5 times its size and more confident; its confidence stays "
            "its own (ADR 0042).",
        ),
    ] = True
    magenta_cue: Annotated[
        bool,
        Field(
            title="Count a magenta tint against a candidate",
            description="Lower the confidence of a candidate whose mean colour leans to magenta "
            "(CIE a* above 1: blue cars, tarpaulins, pool covers, painted courts), one log-odds "
            "per unit of a*, less half the a* of a red roof around it. Panels in aerial imagery "
            "reflect the sky blue-grey or cyan-grey (a* ≤ 1 for 95 % of the labelled ones in "
            "California and South Tyrol); turn it off where the panels look deep or violet "
            "blue (ADR 0053).",
        ),
    ] = True
    cue_segmentation: Annotated[
        bool,
        Field(
            title="Second segmentation from colour cues",
            description="Also segment a unit-weighted sum of the colour and texture cues "
            "(finds dark panels the learned score misses); candidates of both compete on "
            "confidence and overlapping ones are suppressed.",
        ),
    ] = True
    texture_segmentation: Annotated[
        bool,
        Field(
            title="Third segmentation from texture cues",
            description="Also segment the cue sum with fine texture (module frames and gaps) in "
            "place of LBP uniformity: finds bright arrays on light flat roofs, where the other "
            "maps light the roof strips between the rows as much as the rows (ADR 0034).",
        ),
    ] = True
    coarse_pass: Annotated[
        bool,
        Field(
            title="Also analyse the tile three times coarser",
            description="On imagery of 0.2 m or finer, run the analysis again on the tile "
            "made three times coarser and add its candidates where they overlap none more "
            "confident (their confidence lowered by 0.05). Finds arrays the fine analysis "
            "breaks up or misses (South Tyrol, 0.14 m: 60 % → 68 % of the panels among the "
            "candidates), at about a third more time per tile (ADR 0044).",
        ),
    ] = False
    contrast_segmentation: Annotated[
        bool,
        Field(
            title="Also segment what is darker and bluer than its roof",
            description="On imagery coarser than 0.2 m, also segment where a surface is darker "
            "and bluer than the 12 m around it: finds dark grey-blue arrays on beige or light "
            "grey roofs that the other maps miss (Bradbury, California, 0.3 m: at 0.85 "
            "0.836 / 0.120 → 0.862 / 0.146 on the held-out half). Off by default: on red-tiled "
            "roofs it adds grey roof planes and skylights (South Tyrol at 0.28 m loses "
            "precision), and it costs one more segmentation per tile (ADR 0056).",
            json_schema_extra=_KEYED_WHEN_SET,
        ),
    ] = False
    min_area_m2: Annotated[
        float,
        Field(
            ge=0,
            le=10000,
            title="Smallest panel (m²)",
            description="Candidates smaller than this ground area are dropped (a module ≈ "
            "1.7 m²; below about two modules, skylights, chimneys and cars outnumber panels).",
        ),
    ] = 4.0
    max_area_m2: Annotated[
        float,
        Field(
            ge=1,
            le=1e6,
            title="Largest panel (m²)",
            description="Candidates larger than this ground area are dropped.",
        ),
    ] = 20000.0

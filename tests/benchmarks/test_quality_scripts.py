"""The pseudo-label quality scripts run end to end on a data folder laid out like the shared one.

The real labelled imagery never enters the repository; these tests write a small stand-in in
the Bradbury layout (``images/*.png`` and ``masks/*.png`` at 0.3 m) from synthetic scenes, so a
script that breaks is caught by CI and not at the next measurement.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from solardesk.synthetic import SceneSpec, generate_scene

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "bradbury-usgs-ca-tiles"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for k in range(6):
        scene = generate_scene(
            SceneSpec(height=224, width=224, gsd=0.3, seed=40 + k, panel_style="dark")
        )
        rgb = np.ascontiguousarray(np.moveaxis(scene.image[:3], 0, -1))
        cv2.imwrite(str(folder / "images" / f"t{k}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        mask = (scene.instance_mask > 0).astype(np.uint8) * 255
        cv2.imwrite(str(folder / "masks" / f"t{k}.png"), mask)
    return root


@pytest.fixture(autouse=True)
def _scripts_importable(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def test_eval_pseudolabels_prints_the_table(data_dir, capsys) -> None:
    import eval_pseudolabels

    assert eval_pseudolabels.main([str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "## Bradbury" in out and "| on panels |" in out
    rows = re.findall(r"^\| (all stored|0\.5|0\.7|0\.85) \| (\d+) \|(.*)\|$", out, re.M)
    assert [r[0] for r in rows] == ["all stored", "0.5", "0.7", "0.85"]
    counts = [int(r[1]) for r in rows]
    assert counts[0] > 0 and counts == sorted(counts, reverse=True)  # a higher cut keeps fewer
    for _, _, rest in rows:
        for cell in rest.split("|"):
            value = float(cell)
            assert np.isnan(value) or 0.0 <= value <= 1.0
    # a bootstrap interval per cut that holds the figure in the table
    spans = re.findall(
        r"^at (0\.\d+): 95 % interval over images \(bootstrap\): precision ([\d.]+)–([\d.]+), "
        r"recall ([\d.]+)–([\d.]+)$",
        out,
        re.M,
    )
    assert [s[0] for s in spans] == ["0.5", "0.7", "0.85"]
    table = {r[0]: [float(c) for c in r[2].split("|")[:2]] for r in rows}
    for thr, p_lo, p_hi, r_lo, r_hi in spans:
        precision, recall = table[thr]
        assert float(r_lo) <= recall <= float(r_hi)
        assert np.isnan(precision) or float(p_lo) <= precision <= float(p_hi)


def _southtyrol_like(root: Path, truth) -> Path:
    """A South Tyrol-style folder in ``root``: georeferenced JPEGs (world file and CRS) and
    ``derived/masks`` with class 1 (roof) and 2 (solar), the solar class from ``truth(stem,
    rgb as read back, gsd)``; the roofs of the scene are class 1."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from solardesk.core.raster import RasterReader

    folder = root / "southtyrol-bz2023-roof-solar"
    (folder / "images").mkdir(parents=True)
    (folder / "derived" / "masks").mkdir(parents=True)
    for k, seed in enumerate((20, 22, 23)):  # scenes with pseudo-labels at 0.85
        scene = generate_scene(SceneSpec(height=512, width=512, gsd=0.15, seed=seed, n_roofs=8))
        path = folder / "images" / f"s{k}.jpg"
        with rasterio.open(
            path, "w", driver="JPEG", width=512, height=512, count=3, dtype="uint8",
            crs="EPSG:25832", transform=Affine(0.15, 0, 680000.0, 0, -0.15, 5150000.0),
            worldfile="YES", quality=95,
        ) as ds:  # fmt: skip
            ds.write(scene.image[:3])
        with RasterReader(path) as r:  # the analysis sees the decoded JPEG
            rgb, _ = r.read_rgb(Window(0, 0, 512, 512))
        labels = (scene.classes == 1).astype(np.uint8)  # roofs
        labels[truth(rgb, 0.15)] = 2
        cv2.imwrite(str(folder / "derived" / "masks" / f"s{k}.png"), labels)
    return folder


def test_eval_pseudolabels_is_exact_where_the_labels_are_the_pseudo_labels(
    tmp_path, capsys
) -> None:
    """South Tyrol's layout (JPEG + world file, class 2 of ``derived/masks``) read end to end,
    with the labels drawn as the analyser's own pseudo-labels at 0.85: precision and recall
    1 at 0.85, and every stored candidate under the cut is a false positive."""
    import eval_pseudolabels

    from solardesk_spectral.analyser import analyse_tile
    from solardesk_spectral.settings import SpectralSettings

    params = SpectralSettings(**eval_pseudolabels.SETTINGS).model_dump()
    kept = []

    def own_pseudo_labels(rgb, gsd):
        mask = np.zeros(rgb.shape[:2], bool)
        for inst in analyse_tile(rgb, None, gsd, params):
            if inst.confidence >= 0.85:
                full = inst.full_mask(*rgb.shape[:2])
                # (touching pseudo-labels would be one labelled panel: keep them apart)
                if not (cv2.dilate(full.view(np.uint8), np.ones((3, 3), np.uint8)) & mask).any():
                    mask |= full
                    kept.append(inst)
        return mask

    _southtyrol_like(tmp_path, own_pseudo_labels)
    assert eval_pseudolabels.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"## South Tyrol (0.15 m): 3 images, {len(kept)} labelled panels" in out, out
    rows = dict(re.findall(r"^\| (all stored|0\.5|0\.7|0\.85) \| (\d+ \|.*)\|$", out, re.M))
    n, precision, recall, *_ = rows["0.85"].split("|")
    assert len(kept) >= 3 and int(n) == len(kept)
    assert (float(precision), float(recall)) == (1.0, 1.0)
    n_all, p_all, r_all, *_ = rows["all stored"].split("|")
    assert float(r_all) == 1.0 and float(p_all) == pytest.approx(len(kept) / int(n_all), abs=5e-4)


def test_eval_pseudolabels_explains_its_false_positives_and_misses(data_dir, capsys) -> None:
    """``--explain`` lists one line per false pseudo-label at 0.85 and accounts for every
    panel missed there: the counts agree with the table's."""
    import eval_pseudolabels

    assert eval_pseudolabels.main([str(data_dir), "--explain"]) == 0
    out = capsys.readouterr().out
    n_cand, precision, recall = (
        float(v)
        for v in re.search(r"^\| 0\.85 \| (\d+) \| ([\d.na]+) \| ([\d.na]+) \|", out, re.M).groups()
    )
    panels = int(re.search(r"(\d+) labelled panels", out).group(1))
    false = re.search(
        r"^false pseudo-labels at 0\.85: (\d+); (\d+) fragments .*?, (\d+) off the panels$",
        out,
        re.M,
    )
    n_false, fragments, off = (int(v) for v in false.groups())
    hits = 0 if n_cand == 0 else round(precision * n_cand)
    assert n_false == n_cand - hits and fragments + off == n_false
    listed = re.findall(
        r"^  \S+: confidence (0\.\d+|1\.000), (\d+) px, best IoU ([\d.]+), ", out, re.M
    )
    assert len(listed) == n_false
    assert all(float(c) >= 0.85 and float(iou) < 0.5 for c, _, iou in listed)
    missed = re.search(
        r"^panels missed at 0\.85: (\d+); a stored candidate at IoU ≥ 0\.5 under the cut for "
        r"(\d+) \(confidence 0\.7–0\.85: (\d+), 0\.5–0\.7: (\d+), under 0\.5: (\d+)\), at IoU "
        r"0\.3–0\.5 only for (\d+), none for (\d+); (\d+) of them under 10 m²$",
        out,
        re.M,
    )
    m = [int(v) for v in missed.groups()]
    assert m[0] == panels - round(recall * panels)
    assert m[1] == m[2] + m[3] + m[4] and m[0] == m[1] + m[5] + m[6] and m[7] <= m[0]
    kinds = re.search(
        r"^  of the (\d+) with no stored candidate at IoU ≥ 0\.5: (\d+) inside a larger "
        r"candidate .*?, (\d+) in pieces .*?, (\d+) touched by none .*?, (\d+) otherwise$",
        out,
        re.M,
    )
    k = [int(v) for v in kinds.groups()]
    assert k[0] == m[5] + m[6] and k[0] == sum(k[1:])


def test_explain_tells_a_fragment_from_a_look_alike_and_finds_a_misseds_best_candidate(
    capsys,
) -> None:
    """``explain`` notes each false pseudo-label with its best IoU and share on panels, and
    each missed panel with the best IoU a stored candidate reaches on it and that candidate's
    confidence; ``report_explained`` sorts them into fragments and look-alikes."""
    from eval_pseudolabels import Tally, explain, greedy_matches, report_explained

    from solardesk.core.cache import Instance

    truth = np.zeros((40, 60), np.int32)
    truth[5:15, 5:25] = 1  # panel 1: 200 px
    truth[20:30, 5:45] = 2  # panel 2: 400 px
    full = truth == 1
    part = np.zeros_like(full)
    part[20:30, 5:15] = True  # a quarter of panel 2
    away = np.zeros_like(full)
    away[32:38, 50:58] = True  # off the panels
    weak = np.zeros_like(full)
    weak[20:30, 5:35] = True  # IoU 0.75 with panel 2, under the cut

    def instance(mask: np.ndarray, conf: float) -> Instance:
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        return Instance(bbox=(x0, y0, x1, y1), mask=mask[y0:y1, x0:x1], confidence=conf)

    inst = [instance(full, 0.95), instance(part, 0.9), instance(away, 0.88), instance(weak, 0.6)]
    kept = np.array([i.confidence >= 0.85 for i in inst])
    hp, ht = greedy_matches([full, part, away], truth, 2)
    assert hp == {0} and ht == {1}
    t = Tally(explain=True)
    explain("img", 0.5, inst, kept, hp, ht, truth, 2, t)
    (_, c1, px1, iou1, on1), (_, c2, px2, iou2, on2) = t.false_ones
    assert (c1, px1, iou1, on1) == (0.9, 100, pytest.approx(0.25), 1.0)
    assert (c2, px2, iou2, on2) == (0.88, 48, 0.0, 0.0)
    # 400 px × 0.25 m²; the weak candidate lies wholly on panel 2 and covers 3/4 of it
    assert t.missed == [("img", pytest.approx(100.0), pytest.approx(0.75), 0.6, 1.0, 0.75, 0.75)]
    report_explained(t)
    out = capsys.readouterr().out
    assert "false pseudo-labels at 0.85: 2; 1 fragments" in out and ", 1 off the panels" in out
    assert "under the cut for 1 (confidence 0.7–0.85: 0, 0.5–0.7: 1, under 0.5: 0)" in out
    assert "none for 0; 0 of them under 10 m²" in out
    assert "of the 0 with no stored candidate at IoU ≥ 0.5: 0 inside" in out


def test_explain_sorts_unmatched_panels_into_merged_pieces_and_untouched(capsys) -> None:
    """A missed panel that no stored candidate matches at IoU ≥ 0.5 is counted inside a
    larger candidate (one covers ≥ 70 % of it and is ≥ 2× its size), in pieces (its best
    candidate lies on it and covers under half), or touched by none."""
    from eval_pseudolabels import Tally, explain, report_explained

    from solardesk.core.cache import Instance

    truth = np.zeros((60, 80), np.int32)
    truth[5:15, 5:15] = 1  # 100 px, inside the big candidate below
    truth[30:40, 5:25] = 2  # 200 px, one small piece on it
    truth[45:55, 60:70] = 3  # 100 px, nothing near it
    big = np.zeros(truth.shape, bool)
    big[0:25, 0:25] = True  # 625 px, covers all of panel 1
    piece = np.zeros(truth.shape, bool)
    piece[30:40, 5:10] = True  # 50 px, all on panel 2

    def instance(mask: np.ndarray, conf: float) -> Instance:
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        return Instance(bbox=(x0, y0, x1, y1), mask=mask[y0:y1, x0:x1], confidence=conf)

    inst = [instance(big, 0.4), instance(piece, 0.3)]
    t = Tally(explain=True)
    explain("img", 1.0, inst, np.zeros(2, bool), set(), set(), truth, 3, t)
    assert [round(row[5], 2) for row in t.missed] == [1.0, 0.25, 0.0]  # the share covered
    report_explained(t)
    out = capsys.readouterr().out
    assert "of the 3 with no stored candidate at IoU ≥ 0.5: 1 inside a larger candidate" in out
    assert ", 1 in pieces " in out and ", 1 touched by none " in out and ", 0 otherwise" in out


def test_bootstrap_interval_over_images() -> None:
    """Images drawn with replacement, precision and recall from the summed counts: identical
    images give no spread, the interval holds the pooled figure, and it is seeded."""
    from eval_pseudolabels import bootstrap_interval

    same = [(4, 3, 5, 3)] * 10
    assert bootstrap_interval(same) == ((0.75, 0.75), (0.6, 0.6))
    counts = [(4, 4, 4, 4)] * 5 + [(4, 0, 4, 0)] * 5 + [(0, 0, 2, 0)]
    (p_lo, p_hi), (r_lo, r_hi) = bootstrap_interval(counts)
    assert 0.0 < p_lo < 0.5 < p_hi < 1.0  # pooled precision 20 / 40
    assert 0.0 < r_lo < 20 / 42 < r_hi < 1.0
    assert bootstrap_interval(counts) == bootstrap_interval(counts)  # seeded
    assert bootstrap_interval(counts, level=0.5)[0][1] < p_hi  # a lower level, a narrower span
    nan = bootstrap_interval(np.zeros((0, 4)))
    assert all(np.isnan(v) for pair in nan for v in pair)


def test_eval_pseudolabels_takes_analyser_settings(data_dir, capsys) -> None:
    """``--set NAME=VALUE`` reaches the analyser (numbers and true / false); a setting that does
    not exist is a clear error."""
    import eval_pseudolabels

    assert (
        eval_pseudolabels.main(
            [str(data_dir), "--set", "floor=0.7", "--set", "split_candidates=false"]
        )
        == 0
    )
    rows = re.findall(
        r"^\| (all stored|0\.5|0\.7|0\.85) \| (\d+) \|", capsys.readouterr().out, re.M
    )
    counts = dict(rows)
    assert int(counts["all stored"]) > 0
    assert counts["all stored"] == counts["0.5"] == counts["0.7"]  # nothing stored under 0.7
    assert eval_pseudolabels.main([str(data_dir), "--set", "no_such_setting=1"]) == 2
    assert "--set: invalid settings: unknown field 'no_such_setting'" in capsys.readouterr().err
    assert eval_pseudolabels.main([str(data_dir), "--set", "split_candidates=perhaps"]) == 2


def test_the_diagnostics_run(data_dir, capsys) -> None:
    import diagnose_confidence
    import diagnose_misses

    assert diagnose_misses.main([str(data_dir)]) == 0
    out = capsys.readouterr().out
    shares = re.search(
        r"^\| Bradbury \| (\d+) \| (\d+)% \| (\d+)% \| (\d+)% \| (\d+)% \|", out, re.M
    )
    assert shares and int(shares[1]) > 0 and 98 <= sum(int(v) for v in shares.groups()[1:]) <= 102
    stored = re.search(
        r"^\| Bradbury \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", out, re.M
    )
    assert "Among the stored candidates" in out and stored
    assert int(stored[1]) == int(shares[1]) == sum(int(v) for v in stored.groups()[1:])
    assert diagnose_confidence.main([str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "fine_power_share" in out and "diagnostic ceiling" in out
    assert "R at P ≥ 0.9 (cut)" in out
    # the labelled outlines scored as candidates: a share per cut, falling with the cut
    outlines = re.findall(
        r"^\| (even|odd) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) "
        r"\| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) \|$",
        out,
        re.M,
    )
    assert [r[0] for r in outlines] == ["even", "odd"]
    for _, panels, *shares in outlines:
        at = [float(v) for v in shares[:3]]
        assert int(panels) > 0 and 1.0 >= at[0] >= at[1] >= at[2] >= 0.0
        assert at[0] > 0  # some synthetic panel's own outline is at least 0.5 confident
        reach, now = float(shares[4]), float(shares[5])
        assert 0.0 <= now <= reach <= 1.0
        # the two kinds of panels held back are among those whose own outline reaches 0.85
        assert int(shares[6]) + int(shares[7]) <= round(at[2] * int(panels))


def test_recall_at_a_precision_is_read_where_a_cut_can_fall() -> None:
    """The highest recall among the cuts with precision ≥ 0.9, never between tied scores."""
    from diagnose_confidence import curve_points

    score = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.8, 0.8, 0.7, 0.6])
    hit = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], bool)
    rp = curve_points(score, hit, panels=10)["R@P"]
    # cut 0.9: 6 of 6 (recall 0.6); cut 0.8 (both tied ones): 7 of 8 = 0.875 < 0.9, although
    # its first 7 would be 7 of 7; cut 0.7: 8 of 9 = 0.89
    assert rp == (0.6, 1.0, 0.9)
    assert curve_points(score, hit, panels=10, precision=0.85)["R@P"] == pytest.approx(
        (0.8, 8 / 9, 0.7)
    )
    nothing = curve_points(score, np.zeros(10, bool), panels=10)["R@P"]
    assert nothing[0] == 0.0 and np.isnan(nothing[1]) and np.isnan(nothing[2])


def test_an_empty_folder_is_a_clear_error(tmp_path, capsys) -> None:
    import eval_pseudolabels

    assert eval_pseudolabels.main([str(tmp_path)]) == 2
    assert "no known data set" in capsys.readouterr().err


def test_eval_pseudolabels_measures_a_coarser_resolution(data_dir, capsys) -> None:
    """``--coarsen K``: the same scenes at K times the ground resolution (the table's header
    says which); K below 1 is a clear error."""
    import eval_pseudolabels

    try:
        assert eval_pseudolabels.main([str(data_dir), "--coarsen", "2"]) == 0
    finally:
        eval_pseudolabels.COARSEN[0] = 1
    out = capsys.readouterr().out
    assert "## Bradbury (0.6 m): 6 images" in out
    assert re.search(r"^\| 0\.85 \| \d+ \|", out, re.M)
    assert eval_pseudolabels.main([str(data_dir), "--coarsen", "0"]) == 2
    assert "--coarsen must be 1 or more" in capsys.readouterr().err


def test_coarsening_averages_the_image_and_takes_labels_by_majority() -> None:
    from eval_pseudolabels import coarsen

    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[:2, :2] = (100, 0, 0)
    rgb[0, 0] = (200, 0, 0)
    panel = np.zeros((5, 7), bool)
    panel[0, 2:4] = True  # half of the block (0, 1): a panel
    panel[2, 0] = True  # a quarter of the block (1, 0): not
    valid = np.ones((5, 7), bool)
    valid[3, 5] = False  # one pixel of block (1, 2) is nodata: the whole block is
    small, v, gsd, p = coarsen(rgb, valid, 0.3, panel, k=2)
    assert small.shape == (2, 3, 3) and gsd == pytest.approx(0.6)  # row 4, column 6 dropped
    assert small[0, 0, 0] == 125 and small[0, 1, 0] == 0  # (200 + 3 × 100) / 4
    assert p.tolist() == [[False, True, False], [False, False, False]]
    assert v.tolist() == [[True, True, True], [True, True, False]]
    same = coarsen(rgb, None, 0.3, panel, k=1)
    assert same[0] is rgb and same[1] is None and same[3] is panel


def test_coarse_pass_prints_native_and_joined(data_dir, capsys) -> None:
    import coarse_pass

    assert coarse_pass.main([str(data_dir), "--coarsen", "2"]) == 0
    out = capsys.readouterr().out
    assert "## Bradbury: " in out and "coarser pass at K = 2" in out
    rows = re.findall(r"^\| (native|joined) \| ([\d.]+) \((\d+)\) \| (.*) \| (.*) \|$", out, re.M)
    assert [r[0] for r in rows] == ["native", "joined"]
    for _, recall, count, at_half, at_85 in rows:
        assert int(count) > 0 and 0.0 <= float(recall) <= 1.0
        for cell in (at_half, at_85):
            assert all(np.isnan(v) or 0.0 <= v <= 1.0 for v in map(float, cell.split(" / ")))
    assert coarse_pass.main([str(data_dir), "--coarsen", "1"]) == 2


def test_the_join_keeps_the_more_confident_of_two_overlapping_candidates() -> None:
    from coarse_pass import join

    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.zeros((10, 10), bool)
    b[3:7, 3:7] = True  # IoU 9 / 23 with a
    far = np.zeros((10, 10), bool)
    far[8:, 8:] = True
    kept = join([(a, 0.90)], [(b, 0.93), (far, 0.5)], iou=0.3, discount=0.05)
    assert [c for _, c in kept] == pytest.approx([0.90, 0.45])  # b: 0.88 after the discount
    kept = join([(a, 0.90)], [(b, 0.99)], iou=0.3, discount=0.05)
    assert kept[0][0] is b and len(kept) == 1
    kept = join([(a, 0.90)], [(b, 0.99)], iou=0.5, discount=0.05)  # under the IoU: both stay
    assert len(kept) == 2


def test_matched_confidence_is_that_of_the_candidate_matching_each_panel() -> None:
    """Per labelled panel, the confidence of the kept candidate at IoU ≥ 0.5, -1 where none."""
    from diagnose_confidence import matched_confidence

    truth = np.zeros((10, 20), np.int32)
    truth[1:5, 1:5] = 1  # 16 px: candidate 1 covers it whole
    truth[1:5, 8:12] = 2  # 16 px: candidate 2 covers 8 of them (IoU 0.5)
    truth[6:9, 14:18] = 3  # 12 px: candidate 3 matches it but is not kept
    truth[6:9, 1:5] = 4  # 12 px: candidate 4 covers 4 of them (IoU 1/3): not matched
    labels = np.zeros_like(truth)
    labels[1:5, 1:5] = 1
    labels[1:3, 8:12] = 2
    labels[6:9, 14:18] = 3
    labels[6:7, 1:5] = 4
    conf = np.array([0.9, 0.6, 0.95, 0.99])
    kept = np.array([True, True, False, True])
    out = matched_confidence(labels, conf, kept, truth, 5)  # panel 5 has no pixel
    assert out.tolist() == [0.9, 0.6, -1.0, -1.0, -1.0]
    assert (
        matched_confidence(np.zeros_like(truth), np.zeros(0), np.zeros(0, bool), truth, 4).tolist()
        == [-1.0] * 4
    )


def test_paired_difference_over_the_same_images() -> None:
    """The variant less the baseline, both summed over the same draws of images: no change
    gives exactly 0, a change in a few images an interval around it, and unequal inputs fail."""
    from eval_pseudolabels import paired_difference

    base = np.array([(4, 3, 5, 3)] * 20)
    assert paired_difference(base, base) == ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    better = base.copy()
    better[:5] = (4, 4, 5, 4)  # one more match in a quarter of the images
    (dp, p_lo, p_hi), (dr, r_lo, r_hi) = paired_difference(base, better)
    assert dp == pytest.approx(5 / 80) and dr == pytest.approx(5 / 100)
    assert 0.0 < p_lo <= dp <= p_hi and 0.0 < r_lo <= dr <= r_hi  # every draw is at least as good
    mixed = base.copy()
    mixed[:5] = (4, 4, 5, 4)
    mixed[5:10] = (4, 2, 5, 2)  # as many worse: no difference overall, an interval around 0
    (dp, p_lo, p_hi), _ = paired_difference(base, mixed)
    assert dp == 0.0 and p_lo < 0.0 < p_hi
    assert paired_difference(base, mixed) == paired_difference(base, mixed)  # seeded
    with pytest.raises(ValueError, match="20 and 19 images"):
        paired_difference(base, base[:19])


def test_eval_pseudolabels_compares_a_variant_on_the_same_images(data_dir, capsys) -> None:
    """``--compare NAME=VALUE``: the variant's table and the paired difference per cut; a
    storage floor of 0.7 changes nothing at 0.7 and 0.85 (exactly 0, interval 0 to 0); a
    setting that does not exist is a clear error."""
    import eval_pseudolabels

    assert eval_pseudolabels.main([str(data_dir), "--compare", "floor=0.7"]) == 0
    out = capsys.readouterr().out
    assert "## Bradbury (0.3 m), variant floor=0.7:" in out
    diffs = re.findall(
        r"^variant less baseline at (0\.\d+): precision ([+-][\d.]+) \(95 % paired interval "
        r"([+-][\d.]+) to ([+-][\d.]+)\), recall ([+-][\d.]+) \(([+-][\d.]+) to ([+-][\d.]+)\)$",
        out,
        re.M,
    )
    assert [d[0] for d in diffs] == ["0.5", "0.7", "0.85"]
    for cut, *values in diffs:
        if cut != "0.5":
            assert all(float(v) == 0.0 for v in values)
    assert eval_pseudolabels.main([str(data_dir), "--compare", "no_such_setting=1"]) == 2
    assert "--compare: invalid settings: unknown field" in capsys.readouterr().err

"""The pre-compute benchmark's stage breakdown: it times each analyser stage once, outermost
calls only, and leaves the analyser as it found it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from solardesk.synthetic import SceneSpec, generate_scene

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_stage_times_account_for_the_analysis_and_restore_the_analyser(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_precompute

    from solardesk_spectral import analyser
    from solardesk_spectral.settings import SpectralSettings

    scene = generate_scene(SceneSpec(height=256, width=256, gsd=0.15, seed=3))
    tiles = [np.ascontiguousarray(np.moveaxis(scene.image[:3], 0, -1))] * 2
    before = {name: getattr(analyser, name) for name in bench_precompute.STAGES}
    total, stages = bench_precompute.stage_times(tiles, 0.15, SpectralSettings().model_dump())
    assert {name: getattr(analyser, name) for name in bench_precompute.STAGES} == before
    assert set(stages) == set(bench_precompute.STAGES)
    assert all(ms >= 0 for ms in stages.values())
    # every stage runs on a tile with panels, and nested calls (instance_stats inside the
    # merge) are not counted twice: the stages add up to no more than the whole
    assert stages["pixel_features"] > 0 and stages["segment"] > 0 and stages["suppress"] > 0
    assert 0.5 * total < sum(stages.values()) <= total


def test_the_benchmark_times_a_stage_setting_and_refuses_an_unknown_one(
    monkeypatch, capsys
) -> None:
    """``--set coarse_pass=true`` reaches the timed runs (ADR 0044's cost is measured, not
    guessed); ``--set contrast_segmentation=true`` reaches the reference comparison as well
    (ADR 0056); a setting the stage does not have is a clear error."""
    import pytest

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_precompute

    args = ["--size", "1024", "--repeats", "1", "--reference-tiles", "0", "--stages", "1"]
    assert bench_precompute.main([*args, "--set", "coarse_pass=true"]) == 0
    out = capsys.readouterr().out
    assert "stage settings: coarse_pass=True" in out and "one worker :" in out
    # the reference runs the timed settings too (all but the coarser pass, which it lacks)
    small = ["--size", "512", "--tile", "256", "--gsd", "0.3", "--repeats", "1"]
    on = ["--set", "contrast_segmentation=true", "--reference-tiles", "1", "--stages", "0"]
    assert bench_precompute.main([*small, *on]) == 0
    out = capsys.readouterr().out
    assert "stage settings: contrast_segmentation=True" in out
    assert "fast vs reference (contrast_segmentation=True): IoU 1.0000" in out
    with pytest.raises(SystemExit) as exc:
        bench_precompute.main([*args, "--set", "no_such=1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--set: invalid settings: unknown field 'no_such'" in err


def test_the_clock_runs_from_each_worker_s_first_chunk_to_the_last_tile(monkeypatch) -> None:
    """Start-up (until every worker has returned its first chunk) and the pool's shut-down
    after the last tile are a run's one-off costs: neither is timed, and the first chunks'
    tiles, computed before the clock started, are not counted."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_precompute import steady_span

    # two workers, chunks of 2: both first chunks back at 1.0 and 1.1, then one chunk per
    # worker every second
    stamps = [1.0, 1.0, 1.1, 1.1, 2.0, 2.0, 2.1, 2.1, 3.0, 3.0, 3.1, 3.1]
    seconds, tiles = steady_span(stamps, workers=2, chunk=2)
    assert (seconds, tiles) == (pytest.approx(2.0), 8)  # 4 tiles a second: 2 per worker
    # in process: from the first tile on
    assert steady_span([0.5, 0.75, 1.0], workers=1, chunk=1) == (pytest.approx(0.5), 2)
    # fewer tiles than the first chunks: the last one is still timed
    assert steady_span([1.0, 1.0, 1.2], workers=2, chunk=2) == (pytest.approx(0.2), 1)
    with pytest.raises(SystemExit, match="fewer than two tiles"):
        steady_span([1.0], workers=1, chunk=1)


def test_ground_rate_in_km2_per_hour(monkeypatch) -> None:
    """A rate in tiles per second as ground covered: 1 tile/s of 1000 px at 1 m is 3600 km²/h,
    and the same tile rate at twice the ground resolution covers four times the ground."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_precompute

    assert bench_precompute.ground_km2_per_hour(1.0, 1000, 1.0) == pytest.approx(3600.0)
    at_15 = bench_precompute.ground_km2_per_hour(26.8, 512, 0.15)
    assert bench_precompute.ground_km2_per_hour(26.8, 512, 0.3) == pytest.approx(4 * at_15)
    assert at_15 == pytest.approx(26.8 * 76.8**2 * 3600 / 1e6)


def test_a_baseline_child_run_prints_its_rate_and_a_bad_revision_is_a_clear_error(
    monkeypatch, capsys, tmp_path
) -> None:
    """``--baseline REV``'s pieces: the child mode times one one-worker run of the code on the
    path and prints the rate alone (what the parent reads back), and a revision git cannot
    check out stops the benchmark with a message naming it, leaving no worktree behind."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_precompute

    from solardesk.synthetic import write_scene

    raster = tmp_path / "scene.tif"
    write_scene(generate_scene(SceneSpec(height=384, width=384, gsd=0.15, seed=5)), raster)
    assert bench_precompute.main(["--tile", "128", "--time-one-worker", str(raster)]) == 0
    rate = float(capsys.readouterr().out.strip())
    assert rate > 0
    with pytest.raises(SystemExit) as exc:
        bench_precompute.compare_with("no-such-revision", raster, 128, 1, tmp_path)
    assert "--baseline no-such-revision" in str(exc.value)
    assert not (tmp_path / "baseline").exists()


def test_real_imagery_a_folder_of_chips_becomes_one_georeferenced_mosaic(
    monkeypatch, capsys, tmp_path
) -> None:
    """``--raster FOLDER --gsd G``: the chips, in file-name order, fill a ``--size``² GeoTIFF
    row by row at G m (measured on the ground within the projection's scale), which the
    benchmark then times like the synthetic scene; a folder without --gsd, with too few chips
    or with a file that is no image is a clear error, not a traceback."""
    import cv2
    import rasterio

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_precompute

    from solardesk.core.raster import describe

    chips = tmp_path / "chips"
    chips.mkdir()
    scene = generate_scene(SceneSpec(height=400, width=400, gsd=0.3, seed=7))
    rgb = np.ascontiguousarray(np.moveaxis(scene.image[:3], 0, -1))
    for k in range(16):  # 100² chips, named so that name order is not creation order
        r, c = divmod(k, 4)
        chip = rgb[r * 100 : (r + 1) * 100, c * 100 : (c + 1) * 100]
        cv2.imwrite(str(chips / f"chip_{k:02d}.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    (chips / "notes.txt").write_text("not a chip")
    out, used = bench_precompute.mosaic(chips, 384, 0.3, tmp_path / "m.tif")
    assert used == 16  # 4 × 4 chips cover 384² (the last row and column cut off)
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (384, 384, 3)
        back = np.moveaxis(ds.read(), 0, -1)
    np.testing.assert_array_equal(back, rgb[:384, :384])
    assert describe(out).ground_resolution_m == pytest.approx(0.3, rel=2e-3)

    args = ["--raster", str(chips), "--size", "384", "--tile", "128", "--repeats", "1"]
    assert bench_precompute.main([*args, "--gsd", "0.3", "--reference-tiles", "1"]) == 0
    printed = capsys.readouterr().out
    assert "mosaic of 16 chips" in printed and "9 tiles of 128²" in printed
    assert "IoU 1.0000" in printed and "where the analysis goes (9 tiles" in printed
    assert "only 9 tiles" in printed and "scaling is rough" in printed  # a caveat, not a figure
    for bad, why in (
        ([*args], "needs --gsd"),
        ([*args[:3], "1024", *args[4:], "--gsd", "0.3"], "do not fill 1024²"),
    ):
        with pytest.raises(SystemExit) as exc:
            bench_precompute.main(bad)
        assert why in str(exc.value)
    (chips / "chip_00.png").write_text("broken")
    with pytest.raises(SystemExit) as exc:
        bench_precompute.mosaic(chips, 384, 0.3, tmp_path / "m2.tif")
    assert "chip_00.png is not an image" in str(exc.value)

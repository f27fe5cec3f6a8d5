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
    guessed); a setting the stage does not have is a clear error."""
    import pytest

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_precompute

    args = ["--size", "1024", "--repeats", "1", "--reference-tiles", "0", "--stages", "1"]
    assert bench_precompute.main([*args, "--set", "coarse_pass=true"]) == 0
    out = capsys.readouterr().out
    assert "stage settings: coarse_pass=True" in out and "one worker :" in out
    with pytest.raises(SystemExit) as exc:
        bench_precompute.main([*args, "--set", "no_such=1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--set: invalid settings: unknown field 'no_such'" in err


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

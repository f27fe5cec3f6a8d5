"""``drive``: a job's progress on a tqdm bar, across phases, and its return value."""

from __future__ import annotations

import os
import re
import time

from solardesk.core.jobs import Progress, counted, drive, map_unordered

#: Set again by a test in this process; a spawned worker imports the module afresh.
STATE = "as imported"


def _two_phases():
    # Phase 1: everything was cached (9 skipped); phase 2 starts again from 0.
    yield Progress(9, 9, 0.1, "precompute", skipped=9)
    for done in range(10):
        yield Progress(done, 9, 0.2 + done, "vectorise")
    return "result"


def test_drive_returns_the_value_and_never_shows_a_negative_rate(capsys):
    assert drive(_two_phases(), label="detect") == "result"
    err = capsys.readouterr().err
    assert "9/9" in err
    rates = re.findall(r"(-?[\d.]+)(?:it|tile)/s", err)
    assert rates, err
    assert all(float(r) >= 0 for r in rates), err


def test_drive_quiet_prints_nothing(capsys):
    assert drive(_two_phases(), show=False) == "result"
    assert capsys.readouterr().err == ""


def test_counts_read_as_english() -> None:
    assert [counted(n, "panel") for n in (0, 1, 2)] == ["0 panels", "1 panel", "2 panels"]


def test_drive_shows_the_rate_and_the_time_left(capsys):
    def job():
        for done in range(1, 6):
            time.sleep(0.02)
            yield Progress(done, 5, 0.02 * done, "")
        return None

    drive(job(), label="precompute")
    err = capsys.readouterr().err
    assert re.search(r"5/5 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+tile/s\]", err), err


def _worker_view(_item: int) -> tuple[str, int]:
    return STATE, os.getpid()


def test_workers_are_spawned_processes_not_forks() -> None:
    """A forked worker would inherit this process's state; a spawned one starts clean (a fork
    pool hung after OpenCV had run in the parent)."""
    global STATE
    STATE = "changed in the parent"
    try:
        seen = list(map_unordered(_worker_view, range(4), workers=2))
    finally:
        STATE = "as imported"
    assert {state for state, _ in seen} == {"as imported"}
    assert os.getpid() not in {pid for _, pid in seen}
    # in-process (one worker) runs see this process as it is
    STATE = "changed in the parent"
    try:
        assert {s for s, _ in map_unordered(_worker_view, range(2), workers=1)} == {STATE}
    finally:
        STATE = "as imported"

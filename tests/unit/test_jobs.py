"""``drive``: a job's progress on a tqdm bar, across phases, and its return value."""

from __future__ import annotations

import re

from solardesk.core.jobs import Progress, counted, drive


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

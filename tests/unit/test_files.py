"""The writers' shared file helpers: an output's temporary file reaches its name durably."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from solardesk.core import files
from solardesk.core.cache import Instance, MaskCache, TileKey


def test_replace_durably_flushes_the_data_then_the_folder(tmp_path: Path, journal) -> None:
    """The data reaches the disk before the rename (else a power cut can leave the new name
    on an empty file, the old file gone), and the folder after it (else the rename itself
    may be lost)."""
    final = tmp_path / "model.onnx"
    final.write_bytes(b"old")
    tmp = files.temporary_beside(final)
    tmp.write_bytes(b"new")
    files.replace_durably(tmp, final)
    assert final.read_bytes() == b"new" and not tmp.exists()
    assert journal == [
        ("fsync", str(tmp)),
        ("rename", f"{tmp} -> {final}"),
        ("fsync", str(tmp_path)),
    ]


def test_replace_durably_stands_where_a_folder_cannot_be_synced(tmp_path, monkeypatch) -> None:
    real_fsync = os.fsync

    def no_dirs(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dirs)
    tmp, final = tmp_path / ".x.part", tmp_path / "x"
    tmp.write_text("done")
    files.replace_durably(tmp, final)
    assert final.read_text() == "done"


def test_the_coco_export_is_synced_before_it_takes_its_name(tmp_path: Path, journal) -> None:
    out = tmp_path / "coco.json"
    with MaskCache(tmp_path / "c.sqlite") as cache:
        cache.put_raster("fp", path="/data/scene.tif")
        m = np.ones((4, 4), bool)
        cache.write_tile(
            TileKey("fp", "t0", "spectral", 1, "p"),
            (0, 0, 16, 16),
            [Instance(bbox=(0, 0, 4, 4), mask=m, confidence=0.9)],
        )
        journal.clear()
        cache.export_coco(out, threshold=0.85)
    renames = [e for e in journal if e[0] == "rename" and e[1].endswith(f"-> {out}")]
    assert len(renames) == 1
    i = journal.index(renames[0])
    tmp = renames[0][1].split(" -> ")[0]
    assert ("fsync", tmp) in journal[:i] and ("fsync", str(tmp_path)) in journal[i:]


def test_a_killed_writer_s_temporary_files_are_cleared_once_stale(tmp_path: Path) -> None:
    """A kill -9 during a save leaves ``.NAME.<pid>-<hex>.part`` (a checkpoint's: hundreds of
    MB). The next save clears it once its process is gone and nothing has written it for an
    hour; a live writer's file, a fresh one and other files stay."""
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(gone.stdout)
    final = tmp_path / "last.pt"
    old = time.time() - 2 * files.STALE_AFTER_S
    stale = tmp_path / f".last.pt.{dead}-0123abcd.part"
    nested = tmp_path / f"..last.pt.{dead}-0123abcd.onnx.{dead}-4567abcd.part"  # a staged file's
    fresh = tmp_path / f".last.pt.{dead}-4567abcd.part"
    live = tmp_path / f".last.pt.{os.getppid()}-89abcdef.part"
    other = tmp_path / f".epoch-001.pt.{dead}-0123abcd.part"
    unrelated = [
        tmp_path / f"last.pt.{dead}-0123abcd.part",  # not hidden: not ours
        tmp_path / f".last.pt.partial-{dead}-0123abcd.part",
        tmp_path / f".last.pt.{dead}-0123ABCD.part",
    ]
    for p in (stale, nested, fresh, live, other, *unrelated):
        p.write_bytes(b"half a checkpoint")
    (tmp_path / f".last.pt.{dead}-00000000").mkdir()  # a folder: never
    for p in (stale, nested, live, other, *unrelated, tmp_path / f".last.pt.{dead}-00000000"):
        os.utime(p, (old, old))
    assert sorted(files.remove_stale_temporaries(final)) == sorted([stale, nested])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (fresh, live, other, *unrelated, tmp_path / f".last.pt.{dead}-00000000")
    )


def test_saving_a_checkpoint_clears_what_a_killed_save_left(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from solardesk_maskrcnn.checkpoint import save_checkpoint

    left = tmp_path / ".last.pt.999999999-0123abcd.part"  # no process has that number
    left.write_bytes(b"half")
    old = time.time() - 2 * files.STALE_AFTER_S
    os.utime(left, (old, old))
    save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_held_folder_refuses_a_second_holder_until_it_is_let_go(tmp_path: Path) -> None:
    with files.hold_folder(tmp_path) as lock:
        assert lock == tmp_path / files.LOCK_NAME
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(files.FolderBusyError) as busy, files.hold_folder(tmp_path):
            pass
        assert busy.value.pid == os.getpid() and busy.value.folder == tmp_path
    with files.hold_folder(tmp_path):  # let go at the end of the block
        pass


def test_a_folder_on_a_file_system_without_locks_is_not_refused(tmp_path, monkeypatch) -> None:
    """Some network shares and container mounts have no locks (ENOLCK, EOPNOTSUPP): every
    run would be "in use by another"; the folder is used unheld, with a warning."""
    import errno

    from solardesk.errors import SolarDeskWarning

    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files, "_lock", no_locks)
    warned = pytest.warns(SolarDeskWarning, match="cannot lock this folder")
    with warned, files.hold_folder(tmp_path) as held:
        assert held is None


@pytest.mark.skipif(os.name == "nt", reason="kill -9 of a child: POSIX")
def test_a_killed_holder_lets_go_of_the_folder(tmp_path: Path) -> None:
    """The lock is the OS's: a process killed while it holds the folder leaves no stale lock."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from solardesk.core.files import hold_folder\n"
        f"with hold_folder({str(tmp_path)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        busy = pytest.raises(files.FolderBusyError, match=f"process {child.pid}")
        with busy, files.hold_folder(tmp_path):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    with files.hold_folder(tmp_path):
        pass


def test_on_macos_the_flush_empties_the_drive_s_cache_too(tmp_path: Path, monkeypatch) -> None:
    """macOS's fsync stops at the drive; F_FULLFSYNC empties its cache too, and where the file
    system refuses it (some network shares) fsync is used instead."""
    fcntl = pytest.importorskip("fcntl")  # (the module macOS and Linux have)

    calls = []
    monkeypatch.setattr(files.sys, "platform", "darwin")
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))

    def full(fd, cmd, *args):
        calls.append(("fcntl", cmd))
        if refuse:
            raise OSError(45, "Operation not supported")
        return 0

    monkeypatch.setattr(fcntl, "fcntl", full)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    refuse = False
    files.flush_to_disk(f)
    files.flush_folder(tmp_path)
    assert calls == [("fcntl", 51), ("fcntl", 51)]
    calls.clear()
    refuse = True
    files.flush_to_disk(f)
    assert calls == [("fcntl", 51), "fsync"]

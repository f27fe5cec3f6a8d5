"""File-system helpers the writers share: is a path one of the job's files, a temporary name of
one's own beside an output, and putting that temporary file in the output's place durably."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """``a`` and ``b`` name one file: the same path once resolved (links followed, relative
    parts and ``..`` too), or the same existing file by another name (a hard link)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def temporary_beside(path: str | os.PathLike[str], suffix: str = ".part") -> Path:
    """A hidden name beside ``path`` that no other file has: ``.NAME.<pid>-<random><suffix>``.
    Never ``NAME.part``, which a browser's partial download, a killed run's hard link or a
    link to a user's file may already be; create it exclusively (``open(..., "xb")``)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def replace_durably(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename the finished ``tmp`` over ``final`` so that a power cut leaves one or the other.

    ``os.replace`` alone is atomic for running programs, but the file's data may still be in
    the page cache when the rename reaches the disk: after a crash ``final`` can be empty or
    short while the earlier file is gone. So the data is flushed first (``fsync`` of ``tmp``),
    and the folder after the rename, so that the new name itself survives. Where a folder
    cannot be synced (some platforms and file systems refuse it), the rename stands unsynced.
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    try:
        dfd = os.open(Path(final).parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)

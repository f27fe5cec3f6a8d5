"""File-system helpers the writers share: is a path one of the job's files, a temporary name of
one's own beside an output, and putting that temporary file in the output's place durably."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from solardesk.errors import SolarDeskWarning


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """``a`` and ``b`` name one file: the same path once resolved (links followed, relative
    parts and ``..`` too), or the same existing file by another name (a hard link)."""
    return SameFiles([b]).holds(a) is not None


class SameFiles:
    """:func:`same_file` against many files at once, each resolved once (a job's inputs: a VRT
    may list thousands): which of them a path is."""

    def __init__(self, files: Iterable[str | os.PathLike[str]]) -> None:
        self.by_path: dict[Path, Path] = {}
        self.by_inode: dict[tuple[int, int], Path] = {}
        for source in map(Path, files):
            self.by_path.setdefault(source.resolve(), source)
            with contextlib.suppress(OSError):
                st = os.stat(source)
                self.by_inode.setdefault((st.st_dev, st.st_ino), source)

    def holds(self, target: str | os.PathLike[str]) -> Path | None:
        """The file ``target`` is (the same resolved path, or the same file by a hard link)."""
        hit = self.by_path.get(Path(target).resolve())
        if hit is not None:
            return hit
        try:
            st = os.stat(target)
        except OSError:
            return None
        return self.by_inode.get((st.st_dev, st.st_ino))


def temporary_beside(path: str | os.PathLike[str], suffix: str = ".part") -> Path:
    """A hidden name beside ``path`` that no other file has: ``.NAME.<pid>-<random><suffix>``.
    Never ``NAME.part``, which a browser's partial download, a killed run's hard link or a
    link to a user's file may already be; create it exclusively (``open(..., "xb")``)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


#: A temporary file untouched this long, whose process is gone, was left by a killed writer.
STALE_AFTER_S = 3600.0


def remove_stale_temporaries(
    path: str | os.PathLike[str], *, pattern: str | None = None
) -> list[Path]:
    """Delete the temporary files a killed writer left beside ``path``; returns what was
    deleted.

    Names from :func:`temporary_beside`, whatever their suffix, also when nested (a staged
    file's own temporary: ``..NAME.<pid>-<hex>.onnx.<pid>-<hex>.part``). Only files that
    nothing has written for :data:`STALE_AFTER_S` and whose process no longer runs on this
    machine: a checkpoint or model is hundreds of megabytes, and a kill -9 during its save
    would leave one per kill. The age guards a writer on another machine sharing the folder,
    whose process number means nothing here (and on Windows, where a process is not asked
    after, the age alone decides). ``pattern``: another writer's naming instead, a regular
    expression of the whole name whose first group is the process number.
    """
    p = Path(path)
    regex = re.compile(
        pattern or rf"\.+{re.escape(p.name)}\.(\d+)-[0-9a-f]{{8}}(?:\..*)?", re.DOTALL
    )
    removed = []
    try:
        entries = list(p.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for q in entries:
        m = regex.fullmatch(q.name)
        if m is None:
            continue
        try:
            st = q.lstat()
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_AFTER_S:
                continue
            if _process_runs(int(m.group(1))):
                continue
            q.unlink()
        except OSError:
            continue
        removed.append(q)
    return removed


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (False on Windows, where ``os.kill`` with
    signal 0 would send a Ctrl+C instead of asking)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):  # gone, or no process's number
        return False
    return True


def flush_to_disk(path: str | os.PathLike[str]) -> None:
    """``fsync`` a finished file's data (opened for writing: Windows refuses a read-only
    handle's flush)."""
    fd = os.open(path, os.O_RDWR)
    try:
        _sync(fd)
    finally:
        os.close(fd)


def _sync(fd: int) -> None:
    """``fsync``; on macOS ``F_FULLFSYNC``, which also empties the drive's own write cache
    (its ``fsync`` stops at the drive), falling back to ``fsync`` where the file system
    refuses it."""
    if sys.platform == "darwin":
        import fcntl

        full = getattr(fcntl, "F_FULLFSYNC", None)
        if full is not None:
            try:
                fcntl.fcntl(fd, full)
                return
            except OSError:
                pass
    os.fsync(fd)


def flush_folder(folder: str | os.PathLike[str]) -> None:
    """``fsync`` a folder, so that a rename in it survives a crash; a no-op where the
    platform or file system cannot (Windows cannot open a folder this way)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        _sync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def replace_durably(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename the finished ``tmp`` over ``final`` so that a crash leaves one or the other.

    ``os.replace`` alone is atomic for running programs, but the file's data may still be in
    the page cache when the rename reaches the disk: after a power cut ``final`` can be empty
    or short while the earlier file is gone. So the data is flushed first (:func:`flush_to_disk`),
    and the folder after the rename (:func:`flush_folder`), so that the new name itself
    survives. (On macOS both flushes are ``F_FULLFSYNC``: its ``fsync`` reaches the drive but
    not the drive's own cache.)
    """
    flush_to_disk(tmp)
    os.replace(tmp, final)
    flush_folder(Path(final).parent)


class FolderBusyError(OSError):
    """Another process (``pid``, when it could be read) holds :func:`hold_folder`'s lock."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        by = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{folder} is in use by {by}")
        self.folder = folder
        self.pid = pid


#: The lock file :func:`hold_folder` keeps in the folder (left there: removing it would race).
LOCK_NAME = ".solardesk.lock"


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike[str]) -> Iterator[Path | None]:
    """Hold ``folder`` for one process for as long as the block runs, or raise
    :class:`FolderBusyError` at once if another holds it (two training runs writing their
    checkpoints into one folder would replace each other's).

    An OS lock on ``folder/.solardesk.lock`` (``flock``; ``msvcrt.locking`` on Windows, on a
    byte past the pid so that the pid stays readable), so a process that is killed lets go
    of it with its files: nothing stale to clean up. The file holds the holder's pid, for
    the message. Within one process a second hold fails as well. Where the file system has
    no locks (some network shares and container mounts) the folder is not held, with a
    warning, rather than every run refused; yields None then.
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        try:
            _lock(fd)
            unsupported = None
        except OSError as e:
            if e.errno in _BUSY:
                raise FolderBusyError(Path(folder), _holder(fd)) from e
            unsupported = e.strerror or str(e)
        if unsupported is not None:
            warnings.warn(
                f"{folder}: cannot lock this folder ({unsupported}); two runs writing into it "
                "at once would not be stopped.",
                SolarDeskWarning,
                stacklevel=3,
            )
            yield None
            return
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield path
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


#: The errors of a lock that another holds (``msvcrt`` says EACCES or EDEADLOCK).
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}
#: Where Windows locks its byte: past the pid, which other processes then can still read.
_LOCK_OFFSET = 64


def _lock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    """Let go before the close: Windows frees a lock left at close only "after a time"."""
    with contextlib.suppress(OSError):
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)


def _holder(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32)
    except OSError:
        return None
    digits = text.decode("ascii", "replace").strip()
    return int(digits) if digits.isdigit() else None

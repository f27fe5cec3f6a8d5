"""File-system helpers the writers share: is a path one of the job's files, and a temporary
name of one's own beside an output."""

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

"""Fixtures shared by every test layer: small rasters written on the fly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32632",
    transform: Affine | None = None,
    nodata: float | None = None,
    driver: str = "GTiff",
    **profile,
) -> Path:
    """Write ``data`` (bands, H, W) to ``path`` and return the path."""
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    if transform is None:
        transform = Affine(0.2, 0, 680000.0, 0, -0.2, 5150000.0)
    kwargs = dict(
        driver=driver, width=w, height=h, count=count, dtype=data.dtype, transform=transform
    )
    if crs is not None:
        kwargs["crs"] = crs
    if nodata is not None:
        kwargs["nodata"] = nodata
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as ds:
        ds.write(data)
    return path


def write_damaged_inside(tmp_path: Path, dtype=np.uint8) -> Path:
    """A tiled, compressed GeoTIFF whose middle blocks are overwritten: it opens (the check
    at opening reads the last block, which is intact) but its centre cannot be read."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 255, (3, 512, 512)).astype(dtype)
    whole = write_raster(
        tmp_path / "whole.tif", data, tiled=True, blockxsize=64, blockysize=64, compress="deflate"
    )
    raw = bytearray(whole.read_bytes())
    a, b = int(len(raw) * 0.40), int(len(raw) * 0.55)
    raw[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(raw))
    return bad


def write_damaged_block(
    path: Path, block: tuple[int, int] = (2, 2), data: np.ndarray | None = None
) -> Path:
    """A 1024² three-band GeoTIFF of 128² deflated blocks at 0.15 m (of ``data``, default
    noise) whose block ``(row, col)`` is overwritten: it opens, fingerprints and reads
    everywhere but in that block (the fingerprint's windows and the last block are
    elsewhere)."""
    rng = np.random.default_rng(3)
    if data is None:
        data = rng.integers(60, 200, (3, 1024, 1024)).astype(np.uint8)
    write_raster(
        path,
        data,
        transform=Affine(0.15, 0, 680000.0, 0, -0.15, 5150000.0),
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
    )
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{block[1]}_{block[0]}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{block[1]}_{block[0]}", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def rgb_tif(tmp_path: Path) -> Path:
    """A 300×200 3-band uint8 GeoTIFF in UTM 32N at 0.2 m with a gradient and a bright box."""
    rng = np.random.default_rng(0)
    data = rng.integers(40, 120, size=(3, 200, 300), dtype=np.uint8)
    data[:, 50:80, 100:160] = 230
    return write_raster(tmp_path / "rgb.tif", data)


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """A real read-only file system (a tmpfs remounted ro): needs root and mount rights.

    Folder modes cannot show a read-only location to root (CI runs as root), a read-only
    mount can. A non-root developer's run skips this; CI's never does.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting needs root")
    where = tmp_path / "mnt"
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.fail("no mount command; install util-linux")
    assert done.returncode == 0, f"cannot mount a tmpfs as root: {done.stderr}"

    def remount_ro() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)

    try:
        yield where, remount_ro
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.fixture
def journal(monkeypatch):
    """Every fsync (by the path it syncs) and rename (``"src -> dst"``), in order: what the
    writers do to put a finished file in its place durably."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events

"""``solardesk detect RASTER --model m.onnx`` end to end, and bad models through the CLI.

The model is :func:`solardesk_onnx.testing.tiny_maskrcnn` (random weights, distinct scores): what
it finds means nothing, but every step from raster to GeoPackage runs for real, in a fresh
process, as a user runs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fiona
import numpy as np
import pytest
from shapely.geometry import shape

from tests.conftest import write_raster

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from solardesk_onnx.testing import IMAGE_MEAN, export_tiny  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample" / "sample_scene.tif"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "solardesk", *args], capture_output=True, text=True, check=False
    )


def ogr_feature_count(path: Path) -> int:
    exe = shutil.which("ogrinfo")
    if exe is None:
        pytest.skip("GDAL's ogrinfo is needed (Debian gdal-bin)")
    out = subprocess.run([exe, "-so", "-al", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(re.search(r"Feature Count: (\d+)", out.stdout).group(1))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_tiny(path, 128, fixed_shape=True, gsd_m=0.15, overlap=32, score_threshold=0.5)
    return path


def test_detect_with_a_model_writes_valid_polygons(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "panels.gpkg"
    # 256 px tiles for a 128 px model: each tile runs in four windows.
    args = (
        "detect",
        str(SAMPLE),
        "--model",
        str(model),
        "--out",
        str(out),
        "--tile",
        "256",
        "--overlap",
        "32",
        "--quiet",
    )
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    n = int(re.match(r"(\d+) panels", res.stdout).group(1))
    assert n > 0
    assert ogr_feature_count(out) == n
    with fiona.open(out) as src:
        assert src.crs.to_epsg() == 32632
        feats = list(src)
    assert len(feats) == n
    for f in feats:
        geom = shape(f["geometry"])
        assert geom.is_valid and not geom.is_empty and geom.geom_type == "Polygon"
        assert f["properties"]["score"] >= 0.5  # the model's threshold
        assert f["properties"]["area_m2"] > 0
        # the polygons name their model: its file's stem and content hash (ADR 0031)
        assert f["properties"]["model_name"] == model.stem
        assert f["properties"]["model_version"].startswith("sha256:")

    # Moved, the same model recomputes nothing; another threshold is read-time too.
    moved = tmp_path / "moved" / "renamed.onnx"
    moved.parent.mkdir()
    shutil.copy(model, moved)
    again = cli(*args[:3], str(moved), *args[4:], "--overwrite", "--threshold", "0.8")
    assert again.returncode == 0, again.stderr
    assert "0 tiles computed" in again.stdout, again.stdout
    assert int(re.match(r"(\d+) panels", again.stdout).group(1)) <= n


def test_detect_with_nothing_to_find_writes_an_empty_layer(model: Path, tmp_path: Path) -> None:
    mean = np.round(np.asarray(IMAGE_MEAN) * 255).astype(np.uint8)
    data = np.broadcast_to(mean[:, None, None], (3, 300, 300)).copy()
    raster = write_raster(tmp_path / "plain.tif", data, transform=None)
    out = tmp_path / "none.gpkg"
    res = cli(
        "detect",
        str(raster),
        "--model",
        str(model),
        "--out",
        str(out),
        "--tile",
        "128",
        "--overlap",
        "16",
        "--gsd",
        "0.15",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("0 panels")
    assert ogr_feature_count(out) == 0


def test_overlap_alone_keeps_the_model_s_tile(model: Path, tmp_path: Path) -> None:
    """``--overlap`` alone made the tile 512 (the default), not the model's 128, and this
    300 px raster was refused as smaller than a tile."""
    from solardesk.core.tiling import axis_starts

    raster = write_raster(tmp_path / "r.tif", np.full((3, 300, 300), 90, np.uint8))
    out = tmp_path / "p.gpkg"
    res = cli("detect", str(raster), "--model", str(model), "--out", str(out),
              "--overlap", "16", "--gsd", "0.15", "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    n = len(axis_starts(300, 128, 16)) ** 2
    assert f"from {n} tiles" in res.stdout, res.stdout


def _without_solardesk_keys(src: Path, dst: Path, keep_deepness: bool) -> Path:
    proto = onnx.load(src)
    keep = [
        (p.key, p.value)
        for p in proto.metadata_props
        if keep_deepness and not p.key.startswith("solardesk.")
    ]
    del proto.metadata_props[:]
    for k, v in keep:
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, dst)
    return dst


def in_process(*args: str):
    from click.testing import CliRunner

    from solardesk.cli import _add_plugin_commands
    from solardesk.cli import cli as group

    _add_plugin_commands()
    return CliRunner().invoke(group, list(args))


def test_bad_models_give_one_clear_message(model: Path, tmp_path: Path) -> None:
    text = tmp_path / "readme.onnx"
    text.write_text("not a model")
    bare = _without_solardesk_keys(model, tmp_path / "bare.onnx", keep_deepness=False)
    four = tmp_path / "four.onnx"
    export_tiny(four, 128, in_channels=4, fixed_shape=True)
    cases = {
        text: "is not an ONNX model",
        bare: "carries no metadata",
        four: "takes 4 input channels",
        tmp_path / "absent.onnx": "no such model file",
    }
    for path, message in cases.items():
        out = tmp_path / f"{path.stem}.gpkg"
        args = ("detect", str(SAMPLE), "--model", str(path), "--out", str(out), "--quiet")
        # One case as a user meets it, in a fresh process; the others through the same
        # command group in this process (a process each costs seconds on this machine).
        if path == text:
            res = cli(*args)
            code, stderr = res.returncode, res.stderr
        else:
            res = in_process(*args)
            code, stderr = res.exit_code, res.stderr
        assert code == 2, (path, stderr)
        assert stderr.startswith("Error: ") and "Traceback" not in stderr
        assert message in stderr and str(path) in stderr
        assert not out.exists()


def test_deepness_keys_alone_are_enough(model: Path, tmp_path: Path) -> None:
    deep = _without_solardesk_keys(model, tmp_path / "deepness.onnx", keep_deepness=True)
    props = {p.key: json.loads(p.value) for p in onnx.load(deep).metadata_props}
    assert props["resolution"] == pytest.approx(15.0) and props["tiles_size"] == 128
    out = tmp_path / "d.gpkg"
    res = cli(
        "detect",
        str(SAMPLE),
        "--model",
        str(deep),
        "--out",
        str(out),
        "--tile",
        "256",
        "--overlap",
        "32",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    info = in_process("onnx-info", str(deep), "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["metadata"] == "deepness" and facts["gsd_m"] == pytest.approx(0.15)
    assert facts["provider"] == "CPUExecutionProvider"


def test_detect_tiles_as_the_model_says_unless_told(model: Path, tmp_path: Path) -> None:
    """Without --tile/--overlap, detect uses the tile size and overlap in the model's metadata
    (128 / 32 here); with them, the user's."""
    from affine import Affine

    from solardesk.core.cache import MaskCache
    from solardesk.core.detect import default_cache_path
    from solardesk.core.tiling import make_grid

    def windows(out: Path) -> set[tuple[int, int]]:
        with MaskCache(default_cache_path(out), readonly=True) as c:
            return {(t.window.width, t.window.height) for t in c.iter_tiles()}

    out = tmp_path / "own.gpkg"
    res = cli("detect", str(SAMPLE), "--model", str(model), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    expected = len(make_grid(1024, 1024, Affine.identity(), 128, 32))
    assert f"from {expected} tiles" in res.stdout, res.stdout
    assert windows(out) == {(128, 128)}

    told = tmp_path / "told.gpkg"
    res = cli(
        "detect", str(SAMPLE), "--model", str(model), "--out", str(told), "--tile", "512",
        "--quiet",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert windows(told) == {(512, 512)}

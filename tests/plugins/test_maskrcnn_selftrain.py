"""Self-training: what the model may add or replace, where it is stored, and a whole round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from solardesk.core.cache import Instance, MaskCache, TileKey  # noqa: E402
from solardesk_maskrcnn.config import load_train_config  # noqa: E402
from solardesk_maskrcnn.samples import RasterLocator, TileSource, list_samples  # noqa: E402
from solardesk_maskrcnn.selftrain import SELFTRAIN_STAGE, relabel_tiles, self_train  # noqa: E402
from tests.plugins.test_maskrcnn_data import make_project, write_config  # noqa: E402

torch.set_num_threads(2)
S = 64


def rect(x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[y0:y1, x0:x1] = True
    return m


class FixedDetector(torch.nn.Module):
    """Returns the same detections for every image, as torchvision's Mask R-CNN would."""

    def __init__(self, masks: list[np.ndarray], scores: list[float]) -> None:
        super().__init__()
        self.masks = torch.from_numpy(np.stack(masks)).float()[:, None]
        self.scores = torch.tensor(scores)

    def forward(self, images):
        n = len(self.scores)
        return [
            {
                "boxes": torch.zeros(n, 4),
                "labels": torch.ones(n, dtype=torch.int64),
                "scores": self.scores,
                "masks": self.masks,
            }
            for _ in images
        ]


def test_relabel_adds_replaces_and_respects_people(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    tif = tmp_path / "r.tif"
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=S,
        height=S,
        count=3,
        dtype="uint8",
        crs="EPSG:32632",
        transform=Affine(0.2, 0, 680000, 0, -0.2, 5150000),
    ) as ds:
        ds.write(np.full((3, S, S), 90, np.uint8))
    from solardesk.core.raster import describe

    info = describe(tif)
    cache_path = tmp_path / "c.sqlite"
    target = Instance.from_full_mask(rect(2, 2, 12, 12), confidence=0.95)
    weak = Instance.from_full_mask(rect(20, 2, 30, 12), confidence=0.4)
    rejected = Instance.from_full_mask(rect(40, 2, 50, 12), confidence=0.95, review="rejected")
    with MaskCache(cache_path) as cache:
        cache.put_raster_info(info)
        key = TileKey(info.fingerprint, "t", "spectral", 1, "p")
        cache.write_tile(key, (0, 0, S, S), [target, weak, rejected])
        samples = list_samples(cache, 0.85)
        paths = {info.fingerprint: str(RasterLocator(cache).locate(info.fingerprint))}
    source = TileSource(cache_path, paths, threshold=0.85)
    model = FixedDetector(
        [
            rect(2, 2, 12, 13),  # agrees with the target
            rect(20, 2, 30, 13),  # replaces the weak candidate
            rect(40, 2, 50, 13),  # a person rejected this one
            rect(2, 40, 20, 50),  # new
            rect(30, 40, 40, 50),  # new but below min_score
        ],
        [0.99, 0.98, 0.97, 0.96, 0.5],
    )
    counts = relabel_tiles(
        model,
        "cpu",
        cache_path,
        source,
        samples,
        min_score=0.9,
        threshold=0.85,
        spectral=False,
        tag="test",
    )
    source.close()
    assert counts == {
        "tiles": 1,
        "changed": 1,
        "added": 1,
        "replaced": 1,
        "agreed": 1,
        "vetoed": 1,
    }
    with MaskCache(cache_path, readonly=True) as cache:
        now = cache.read_tile(info.fingerprint, "t")
        by = {(i.provenance, i.bbox): i for i in now}
        assert ("model", (20, 2, 30, 13)) in by and ("model", (2, 40, 20, 50)) in by
        assert ("spectral", (20, 2, 30, 12)) not in by  # replaced
        assert by[("spectral", (40, 2, 50, 12))].review == "rejected"  # kept, still rejected
        assert by[("model", (2, 40, 20, 50))].confidence == pytest.approx(0.96)
        rows = {t.stage_id for t in cache.iter_tiles(current_only=False)}
        assert rows == {"spectral", SELFTRAIN_STAGE}  # the spectral row stays
        assert len(cache.read_tile(info.fingerprint, "t", "spectral")) == 3


def test_a_self_training_round(tmp_path: Path) -> None:
    cache, _ = make_project(tmp_path)
    cfg = load_train_config(write_config(tmp_path, cache, run={"max_steps_per_epoch": 1}))
    from solardesk_maskrcnn.train import train

    first = train(cfg)
    with MaskCache(cache, readonly=True) as c:
        val_before = {k: c.read_tile(*k) for k, v in c.get_splits().items() if v == "val"}
    events: list[dict] = []
    result = self_train(cfg, checkpoint=first.checkpoint, min_score=0.0, emit=events.append)
    assert result["reason"] == "completed" and result["rounds"] == 1
    rounds = [e for e in events if e["event"] == "selftrain_round"]
    assert rounds and rounds[0]["tiles"] > 0
    assert Path(result["checkpoint"]).parent.name == "selftrain-1"
    with MaskCache(cache, readonly=True) as c:
        for k, before in val_before.items():  # validation tiles are never relabelled
            assert [i.bbox for i in c.read_tile(*k)] == [i.bbox for i in before]
    # a stop asked while relabelling ends it before the next tile, with no training round
    # (it relabelled every tile, trained a step and replaced selftrain-1/last.pt)
    import threading

    stop = threading.Event()
    events = []

    def emit(e: dict) -> None:
        events.append(e)
        if e["event"] == "relabel":
            stop.set()

    ckpt = Path(result["checkpoint"])
    before = ckpt.read_bytes()
    stopped = self_train(cfg, checkpoint=ckpt, min_score=0.0, emit=emit, stop=stop)
    assert stopped["reason"] == "stopped" and stopped["rounds"] == 0
    assert not [e for e in events if e["event"] in ("started", "progress")]
    assert ckpt.read_bytes() == before


def test_rasters_whose_tiles_hold_no_target_are_located_too(tmp_path: Path) -> None:
    """Self-training relabels every training tile, not only the sampled ones with targets, so
    the plan must locate every raster of the split (it once said 'no raster file known')."""
    from solardesk.core.raster import describe
    from solardesk_maskrcnn.train import plan_data

    cache, rasters = make_project(tmp_path, n_scenes=6, size=128, distractor=False)
    emptied = {describe(r).fingerprint for r in rasters[::2]}
    with MaskCache(cache) as c:
        for tile, inst in list(c.iter_instances()):
            if tile.raster_fp in emptied:
                c.delete_instance(inst.id)
    config = load_train_config(write_config(tmp_path, cache, data={"empty_tile_fraction": 0.0}))
    plan = plan_data(config)
    in_train = {s.raster_fp for s in plan.train}
    assert emptied & {s.raster_fp for s in plan.train_all} - in_train, "no empty train raster"
    assert {s.raster_fp for s in plan.train_all + plan.val} <= set(plan.source.raster_paths)
    for s in plan.train_all:
        assert plan.source.read(s).rgb.shape[:2] == (s.window.height, s.window.width)

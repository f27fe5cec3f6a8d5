"""Mask R-CNN training data: targets from the cache, the spatial split, lazy tiles, augmentation.

Also home of the helpers the other ``test_maskrcnn_*`` modules share: :func:`make_project`
writes small synthetic scenes (true panel masks as pseudo-labels, since the spectral analyser
is not needed to test training) into a real mask cache.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely

from solardesk.core.cache import Instance, MaskCache, TileKey
from solardesk.core.raster import describe
from solardesk.core.tiling import make_grid
from solardesk.synthetic import SceneSpec, generate_scene, write_scene

torch = pytest.importorskip("torch")

from solardesk_maskrcnn.config import AugmentSettings  # noqa: E402
from solardesk_maskrcnn.dataset import CacheTileDataset, augment, collate  # noqa: E402
from solardesk_maskrcnn.samples import (  # noqa: E402
    RasterLocator,
    TileSample,
    TileSource,
    assign_splits,
    instance_weight,
    list_samples,
    select_samples,
    split_targets,
)

torch.set_num_threads(2)

TILE = 128
GSD = 0.25
#: Fast-to-train model settings for tests (mobilenet, few proposals and RoIs).
LIGHT_MODEL = {
    "backbone": "mobilenet_v3_large_fpn",
    "rpn_proposals_train": 200,
    "rpn_proposals_test": 100,
    "rois_per_image": 64,
    "detections_per_img": 20,
}


def make_project(
    root: Path,
    *,
    n_scenes: int = 2,
    size: int = 256,
    tile: int = TILE,
    overlap: int = 0,
    confidence: float | None = None,
    distractor: bool = True,
) -> tuple[Path, list[Path]]:
    """Synthetic rasters and a cache whose pseudo-labels are their true panel masks.

    Beside each ``sceneI.tif`` lie its truth as ``sceneI.geojson`` (WGS84 polygons) and
    ``sceneI.png`` (1 on panels, 0 elsewhere).

    Each scene is ``size`` px at 0.25 m, placed side by side (scene ``i`` starts ``i × size``
    px east of the first) so that the spatial split has ground to cut. Panels get confidences
    0.86–0.99 (or ``confidence``); with ``distractor`` each tile also holds one uncertain
    candidate (confidence 0.5) that is not a panel.
    """
    root.mkdir(parents=True, exist_ok=True)
    cache_path = root / "cache.sqlite"
    rasters = []
    with MaskCache(cache_path) as cache:
        for i in range(n_scenes):
            spec = SceneSpec(
                height=size,
                width=size,
                gsd=GSD,
                seed=i,
                n_roofs=10,
                roof_panel_probability=1.0,
                orchards=False,
                origin=(680000.0 + i * size * GSD, 5152000.0),
            )
            scene = generate_scene(spec)
            tif = root / f"scene{i}.tif"
            write_scene(scene, tif, root / f"scene{i}.geojson")
            cv2.imwrite(str(root / f"scene{i}.png"), (scene.instance_mask > 0).astype(np.uint8))
            rasters.append(tif)
            info = describe(tif)
            cache.put_raster_info(info)
            rng = np.random.default_rng(i)
            for t in make_grid(info.width, info.height, info.affine, tile, overlap):
                sub = scene.instance_mask[
                    t.row_off : t.row_off + tile, t.col_off : t.col_off + tile
                ]
                insts = [
                    Instance.from_full_mask(
                        sub == v,
                        confidence=confidence
                        if confidence is not None
                        else float(rng.uniform(0.86, 0.99)),
                    )
                    for v in np.unique(sub[sub > 0])
                ]
                if distractor:
                    m = np.zeros((tile, tile), bool)
                    m[4:14, tile - 24 : tile - 6] = True
                    insts.append(Instance.from_full_mask(m, confidence=0.5))
                cache.write_tile(TileKey(info.fingerprint, t.id, "spectral", 1, "p"), t, insts)
    return cache_path, rasters


def write_config(root: Path, cache: Path, **sections) -> Path:
    """A training config for tests: light model, CPU, no workers, tiny epochs."""
    cfg = {
        "cache": str(cache),
        "output_dir": str(root / "run"),
        "data": {"split_block_m": 32.0, "val_fraction": 0.3},
        "model": dict(LIGHT_MODEL),
        "optim": {"epochs": 1, "batch_size": 2, "lr": 3e-4, "warmup_steps": 0},
        "run": {
            "device": "cpu",
            "num_workers": 0,
            "threads": 2,
            "log_every": 1,
            "eval_every": 0,
            "max_steps_per_epoch": 2,
        },
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = root / "train.json"
    path.write_text(json.dumps(cfg))
    return path


def inst(conf: float, review: str = "pending", provenance: str = "spectral") -> Instance:
    return Instance(
        bbox=(0, 0, 2, 2),
        mask=np.ones((2, 2), bool),
        confidence=conf,
        review=review,
        provenance=provenance,
    )


# --------------------------------------------------------------------------------------------
def test_targets_follow_threshold_and_review() -> None:
    items = [
        inst(0.9),
        inst(0.84),
        inst(0.95, review="rejected"),
        inst(0.2, review="accepted"),
        inst(0.85),
    ]
    targets, uncertain = split_targets(items, 0.85)
    assert targets == [items[0], items[3], items[4]]  # 0.85 is "at or above"
    assert uncertain == [items[1]]  # rejected ones are neither


def test_instance_weight_rises_from_floor_to_one() -> None:
    assert instance_weight(inst(0.85), 0.85, 0.3) == pytest.approx(0.3)
    assert instance_weight(inst(1.0), 0.85, 0.3) == pytest.approx(1.0)
    assert instance_weight(inst(0.925), 0.85, 0.3) == pytest.approx(0.65)
    assert instance_weight(inst(0.5, review="accepted"), 0.85, 0.3) == 1.0
    assert instance_weight(inst(0.9, provenance="human"), 0.85, 0.3) == 1.0


def test_list_samples_counts_targets_per_tile(tmp_path: Path) -> None:
    cache_path, _ = make_project(tmp_path, n_scenes=1)
    with MaskCache(cache_path) as cache:
        samples = list_samples(cache, 0.85)
        assert len(samples) == 4
        assert all(s.window.width == TILE for s in samples)
        with_targets = [s for s in samples if s.n_targets]
        assert with_targets, "the synthetic scene has panels"
        # Rejecting every panel of a tile takes it out; accepting the distractor adds one.
        tile = with_targets[0]
        for i in cache.read_tile(tile.raster_fp, tile.tile_id):
            cache.set_review(i.id, "rejected" if i.confidence >= 0.85 else "accepted")
        again = {(s.raster_fp, s.tile_id): s.n_targets for s in list_samples(cache, 0.85)}
    assert again[(tile.raster_fp, tile.tile_id)] == 1


def test_a_drawn_panel_is_a_target_of_every_tile_it_reaches(tmp_path: Path) -> None:
    """A panel drawn in one tile is stored there only; the tile beside, which overlaps it,
    trains on it too (cut to its window) instead of on background, and counts it."""
    cache_path, rasters = make_project(tmp_path, n_scenes=1, overlap=32, distractor=False)
    with MaskCache(cache_path) as cache:
        samples = {s.tile_id: s for s in list_samples(cache, 0.85)}
        # The first two tiles of the top row, which overlap.
        first, second = sorted(
            (s for s in samples.values() if s.window.row_off == 0), key=lambda s: s.window.col_off
        )[:2]
        assert first.window.col_off + first.window.width > second.window.col_off
        # A panel drawn in the first, 6 columns left of the second's edge, 20 columns wide.
        x0 = second.window.col_off - first.window.col_off - 6
        drawn = Instance(bbox=(x0, 100, x0 + 20, 112), mask=np.ones((12, 20), bool), confidence=1.0)
        cache.add_instance(first.raster_fp, first.tile_id, drawn)
        after = {s.tile_id: s.n_targets for s in list_samples(cache, 0.85)}
    assert after[first.tile_id] == first.n_targets + 1
    assert after[second.tile_id] == second.n_targets + 1
    fp = first.raster_fp
    source = TileSource(cache_path, {fp: str(rasters[0])}, threshold=0.85, gsd={fp: GSD})
    try:
        got = source.read(second)
    finally:
        source.close()
    human = [t for t in got.targets if t.provenance == "human"]
    assert [t.bbox for t in human] == [(0, 100, 14, 112)]  # its 14 columns in this tile


def test_select_samples_keeps_a_share_of_empty_tiles() -> None:
    w = (0, 0, 8, 8)
    samples = [TileSample("fp", f"t{i}", w, i % 2) for i in range(200)]
    none = select_samples(samples, 0.0)
    assert all(s.n_targets for s in none) and len(none) == 100
    some = select_samples(samples, 0.3, seed=1)
    empty = sum(1 for s in some if not s.n_targets)
    assert 15 <= empty <= 45
    assert select_samples(samples, 0.3, seed=1) == some  # deterministic


def test_split_is_spatial_recorded_and_stable(tmp_path: Path) -> None:
    cache_path, _ = make_project(tmp_path, n_scenes=3, size=256, tile=128, overlap=32)
    with MaskCache(cache_path) as cache:
        samples = list_samples(cache, 0.85)
        split = assign_splits(cache, samples, val_fraction=0.3, block_m=40.0, seed=0)
        assert {"train", "val"} <= set(split.values())
        recorded = cache.get_splits()
        # Everything is recorded, buffer tiles (train tiles touching validation) as train.
        assert {k: "train" if v == "buffer" else v for k, v in split.items()} == recorded
        assert "buffer" in split.values()
        # No train tile shares a pixel with a validation tile of the same raster.
        by_key = {(s.raster_fp, s.tile_id): s for s in samples}
        for ka, va in split.items():
            for kb, vb in split.items():
                if va == "train" and vb == "val" and ka[0] == kb[0]:
                    a, b = by_key[ka].window, by_key[kb].window
                    assert (
                        a.col_off + a.width <= b.col_off
                        or b.col_off + b.width <= a.col_off
                        or a.row_off + a.height <= b.row_off
                        or b.row_off + b.height <= a.row_off
                    )
        # Asking again, even with another fraction and seed, changes nothing recorded.
        again = assign_splits(cache, samples, val_fraction=0.8, block_m=40.0, seed=5)
        assert again == split


def _write_tiles(cache: MaskCache, tif: Path, tile: int, overlap: int) -> None:
    info = describe(tif)
    cache.put_raster_info(info)
    for t in make_grid(info.width, info.height, info.affine, tile, overlap):
        cache.write_tile(TileKey(info.fingerprint, t.id, "spectral", 1, "p"), t, [])


def test_split_keeps_overlapping_rasters_apart_on_the_ground(tmp_path: Path) -> None:
    """Two rasters of one ground (a second flight, here in another CRS and shifted off the first's
    grid): no train tile of one shows ground that a validation tile of the other shows."""
    import rasterio
    from affine import Affine
    from pyproj import Transformer
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    from shapely.geometry import Polygon

    from solardesk_maskrcnn.samples import _buffer_tiles

    scene = generate_scene(
        SceneSpec(height=512, width=512, gsd=GSD, seed=3, n_roofs=6, origin=(680000.0, 5152000.0))
    )
    a_tif = tmp_path / "a.tif"
    write_scene(scene, a_tif, tmp_path / "a.geojson")
    b_tif = tmp_path / "b.tif"
    with rasterio.open(a_tif) as src:
        dst_t, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        dst_t = dst_t * dst_t.translation(42.5, 17.25)  # another flight: shifted, not aligned
        profile = src.profile | {"crs": "EPSG:3857", "transform": dst_t, "width": w, "height": h}
        with rasterio.open(b_tif, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(
                    rasterio.band(src, band),
                    rasterio.band(dst, band),
                    resampling=Resampling.nearest,
                )
    with MaskCache(tmp_path / "cache.sqlite") as cache:
        _write_tiles(cache, a_tif, 64, 16)
        _write_tiles(cache, b_tif, 64, 16)
        samples = list_samples(cache, 0.85)
        assert len({s.raster_fp for s in samples}) == 2
        split = assign_splits(cache, samples, val_fraction=0.4, block_m=48.0, seed=1)
        records = {fp: cache.get_raster(fp) for fp in {s.raster_fp for s in samples}}
    assert {"train", "val", "buffer"} <= set(split.values())

    # The footprints as true polygons in raster a's CRS, computed here independently.
    to_a = {
        fp: Transformer.from_crs(rec.crs_wkt, "EPSG:32632", always_xy=True)
        for fp, rec in records.items()
    }

    def footprint(s):
        rec = records[s.raster_fp]
        a = Affine(*rec.transform[:6])
        w = s.window
        corners = [
            a * (w.col_off + dc * w.width, w.row_off + dr * w.height)
            for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))
        ]
        return Polygon([to_a[s.raster_fp].transform(x, y) for x, y in corners])

    shapes = {(s.raster_fp, s.tile_id): footprint(s) for s in samples}

    def shared_ground(sp):
        """Pairs (train of one raster, val of the other) that share more than a sliver."""
        return [
            (ka, kb)
            for ka, va in sp.items()
            for kb, vb in sp.items()
            if va == "train"
            and vb == "val"
            and ka[0] != kb[0]
            and shapes[ka].intersection(shapes[kb]).area > 0.5
        ]

    assert shared_ground(split) == []
    # The same split with buffers found within each raster only (the earlier rule) leaks.
    recorded = {k: "train" if v == "buffer" else v for k, v in split.items()}
    per_raster = dict(recorded)
    for k in _buffer_tiles(samples, recorded):
        per_raster[k] = "buffer"
    assert shared_ground(per_raster), "the scenes share ground across the split"
    # Within a raster, nothing changed: a tile is a buffer there exactly as before or newly
    # because of the other raster.
    assert {k for k, v in per_raster.items() if v == "buffer"} < {
        k for k, v in split.items() if v == "buffer"
    }


def test_rasters_of_a_mosaic_that_abut_share_no_ground(tmp_path: Path) -> None:
    """Scenes side by side (a mosaic's files) only touch: no tile is a buffer because of the
    next file, even where the UTM grid is turned against north (1.4° here), which a
    comparison of bounding boxes took for an overlap of most tiles at a scene's edge."""
    from solardesk_maskrcnn.samples import _buffer_tiles

    cache_path, _ = make_project(tmp_path, n_scenes=4, size=128, tile=64, distractor=False)
    with MaskCache(cache_path) as cache:
        samples = list_samples(cache, 0.85)
        split = assign_splits(cache, samples, val_fraction=0.5, block_m=20.0, seed=2)
        records = {fp: cache.get_raster(fp) for fp in {s.raster_fp for s in samples}}
    recorded = {k: "train" if v == "buffer" else v for k, v in split.items()}

    def box(s):  # the footprint in the scenes' own CRS
        t = records[s.raster_fp].transform
        w = s.window
        x0, y1 = t[2] + w.col_off * t[0], t[5] + w.row_off * t[4]
        return shapely.box(x0, y1 + w.height * t[4], x0 + w.width * t[0], y1)

    touching = [  # a train tile at a scene's edge beside a validation tile of the next scene
        (a, b)
        for a in samples
        for b in samples
        if a.raster_fp != b.raster_fp
        and recorded[(a.raster_fp, a.tile_id)] == "train"
        and recorded[(b.raster_fp, b.tile_id)] == "val"
        and box(a).touches(box(b))
    ]
    assert len(touching) >= 2
    assert _buffer_tiles(samples, recorded, records) == _buffer_tiles(samples, recorded)


def test_ground_is_compared_across_the_antimeridian_and_not_for_bare_pixel_grids() -> None:
    """Two flights over one roof on the 180th meridian (Taveuni, Fiji), one in UTM 60S and
    one in UTM 1S: the same ground, whichever side each CRS puts it. Two rasters with a CRS
    but no geotransform (GDAL's identity) are not taken to lie over each other at 0°."""
    from pyproj import Transformer

    from solardesk.core.cache import RasterRecord, TileWindow
    from solardesk_maskrcnn.samples import _buffer_tiles

    window = TileWindow(0, 0, 512, 512)  # 51 m at 0.1 m: it crosses 180° 21 m from its west
    split = {("A", "t"): "train", ("B", "t"): "val"}
    samples = [TileSample("A", "t", window, 1), TileSample("B", "t", window, 1)]
    for lon in (179.9998, 179.99, -179.9995):
        records = {}
        for fp, epsg in (("A", 32760), ("B", 32701)):
            x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(
                lon, -16.8
            )
            records[fp] = RasterRecord(fp, crs_wkt=f"EPSG:{epsg}",
                                       transform=(0.1, 0, x, 0, -0.1, y), gsd_m=0.1)  # fmt: skip
        assert _buffer_tiles(samples, split, records) == {("A", "t")}, lon
        far = dict(records)  # B 1 km further south: no shared ground
        t = records["B"].transform
        far["B"] = RasterRecord("B", crs_wkt=records["B"].crs_wkt,
                                transform=(*t[:5], t[5] - 1000.0), gsd_m=0.1)  # fmt: skip
        assert _buffer_tiles(samples, split, far) == set(), lon
    bare = {
        fp: RasterRecord(fp, crs_wkt="EPSG:4326", transform=(1.0, 0, 0, 0, 1.0, 0), gsd_m=None)
        for fp in ("A", "B")
    }
    assert _buffer_tiles(samples, split, bare) == set()


def test_locator_finds_moved_rasters_by_content(tmp_path: Path) -> None:
    cache_path, rasters = make_project(tmp_path / "a", n_scenes=1)
    moved = tmp_path / "moved.tif"
    rasters[0].rename(moved)
    with MaskCache(cache_path, readonly=True) as cache:
        fp = list_samples(cache, 0.85)[0].raster_fp
        with pytest.raises(Exception, match="Add its current path to 'rasters'"):
            RasterLocator(cache).locate(fp)
        assert RasterLocator(cache, [moved]).locate(fp) == moved
        # A folder named in 'rasters' stands for the images in it.
        folder = tmp_path / "archive"
        folder.mkdir()
        moved.rename(folder / "scene.tif")
        assert RasterLocator(cache, [folder]).locate(fp) == folder / "scene.tif"


def _dataset(cache_path: Path, **kw) -> CacheTileDataset:
    with MaskCache(cache_path, readonly=True) as cache:
        samples = list_samples(cache, 0.85)
        loc = RasterLocator(cache)
        paths = {s.raster_fp: str(loc.locate(s.raster_fp)) for s in samples}
    source = TileSource(cache_path, paths, threshold=0.85, gsd=dict.fromkeys(paths, GSD))
    return CacheTileDataset(source, samples, **kw)


def test_dataset_items_are_torchvision_targets(tmp_path: Path) -> None:
    cache_path, _ = make_project(tmp_path, n_scenes=1)
    ds = _dataset(cache_path, spectral=False, augment=None)
    image, target = next(ds[i] for i in range(len(ds)) if ds.samples[i].n_targets)
    n = len(target["labels"])
    assert image.shape == (3, TILE, TILE) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, TILE, TILE)
    assert target["labels"].dtype == torch.int64 and bool((target["labels"] == 1).all())
    assert target["weights"].shape == (n,) and bool((target["weights"] <= 1).all())
    assert target["ignore_boxes"].shape == (1, 4)  # the distractor
    b = target["boxes"]
    assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())
    # Boxes are tight around the masks (exclusive ends).
    m = target["masks"][0].bool()
    rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
    assert b[0].tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_nine_channel_items(tmp_path: Path) -> None:
    cache_path, _ = make_project(tmp_path, n_scenes=1)
    ds = _dataset(cache_path, spectral=True, augment=None)
    image, _ = ds[0]
    assert image.shape == (9, TILE, TILE)
    assert float(image[3:].min()) >= 0.0 and float(image[3:].max()) <= 1.0


def test_augmentation_moves_pixels_and_masks_together() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 3:9, 20:30] = True
    image = np.zeros((3, 32, 32), np.float32)
    image[:, mask[0]] = 1.0
    settings = AugmentSettings(colour_jitter=0.0)
    seen = set()
    for _ in range(20):
        out, (m,) = augment(image.copy(), [mask], rng, settings)
        assert np.array_equal(out[0] > 0.5, m[0])
        seen.add(m.tobytes())
    assert len(seen) > 3  # flips and rotations happen


def test_items_repeat_per_epoch_and_differ_between_epochs(tmp_path: Path) -> None:
    cache_path, _ = make_project(tmp_path, n_scenes=1)
    ds = _dataset(cache_path, spectral=False, augment=AugmentSettings(), seed=1)
    a1, _ = ds[(0, 1)]
    a2, _ = ds[(0, 1)]
    b, _ = ds[(1, 1)]
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, b)


def test_dataset_pickles_without_open_handles(tmp_path: Path) -> None:
    cache_path, _ = make_project(tmp_path, n_scenes=1)
    ds = _dataset(cache_path, spectral=False)
    ds[0]  # opens the cache and a raster in this process
    assert ds.source._cache is not None and ds.source._readers
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.source._cache is None and not clone.source._readers
    image, _ = clone[0]
    assert torch.equal(image, ds[0][0])
    ds.source.close()
    clone.source.close()


def test_dataloader_workers_open_their_own_rasters(tmp_path: Path) -> None:
    """One spawned worker (a few seconds: it imports torch) reads the same items."""
    cache_path, _ = make_project(tmp_path, n_scenes=1)
    ds = _dataset(cache_path, spectral=False, augment=None)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=1, collate_fn=collate, multiprocessing_context="spawn"
    )
    images = [im for batch, _ in loader for im in batch]
    assert len(images) == len(ds)
    assert torch.equal(images[0], ds[0][0])
    assert ds.source._cache is not None  # only this process's own use opened it
    ds.source.close()

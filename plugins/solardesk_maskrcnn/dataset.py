"""torch ``Dataset`` over cached tiles: pixels from the rasters, targets from the cache.

Each item is ``(image, target)``: ``image`` a float32 ``(C, H, W)`` tensor in [0, 1] (RGB / 255,
then the six spectral channels for 9-channel models) and ``target`` the torchvision dict
``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64, ``masks`` (N, H, W) uint8, plus
``weights`` (N,) float32 (the noise-aware loss weight of each instance) and ``ignore_boxes``
(M, 4) float32 (uncertain candidates, see :mod:`solardesk_maskrcnn.samples`).

Augmentation is drawn from ``(seed, epoch, index)``, so an item is the same in any worker and
after a resume. Flips and 90° rotations move pixels and masks together (boxes are recomputed
from the moved masks); colour jitter touches RGB only, after the spectral channels were
computed from the untouched tile, so they mean what they mean at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from solardesk_maskrcnn.config import AugmentSettings
from solardesk_maskrcnn.samples import TileData, TileSample, TileSource, instance_weight

__all__ = ["CacheTileDataset", "collate", "spectral_channels", "to_tensors", "worker_init"]


def spectral_channels(rgb: np.ndarray, gsd: float, valid: np.ndarray | None) -> np.ndarray:
    """The six spectral channels of the pre-compute, ``(6, H, W)`` float32 in [0, 1]."""
    from solardesk_spectral.channels import compute_channels

    return compute_channels(rgb, gsd, valid)


def to_tensors(
    tile: TileData,
    *,
    spectral: bool,
    threshold: float,
    weight_floor: float,
    noise_aware: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image (C,H,W) float32, masks (N,H,W) bool, weights (N,), ignore masks (M,H,W))``."""
    h, w = tile.rgb.shape[:2]
    image = tile.rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    if spectral:
        image = np.concatenate([image, spectral_channels(tile.rgb, tile.gsd, tile.valid)])
    masks = np.zeros((len(tile.targets), h, w), bool)
    for i, inst in enumerate(tile.targets):
        masks[i] = inst.full_mask(h, w)
    weights = np.array(
        [
            instance_weight(inst, threshold, weight_floor) if noise_aware else 1.0
            for inst in tile.targets
        ],
        np.float32,
    )
    ignore = np.zeros((len(tile.uncertain), h, w), bool)
    for i, inst in enumerate(tile.uncertain):
        ignore[i] = inst.full_mask(h, w)
    return image, masks, weights, ignore


def _boxes(masks: np.ndarray) -> np.ndarray:
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def augment(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Flip / rotate ``image`` (C, H, W) and every ``(N, H, W)`` array of ``masks`` alike."""
    arrays = [image, *masks]
    if settings.flips:
        if rng.random() < 0.5:
            arrays = [a[..., ::-1] for a in arrays]
        if rng.random() < 0.5:
            arrays = [a[..., ::-1, :] for a in arrays]
    if settings.rot90 and image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(0, 4))
        if k:
            arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
    image, *masks = (np.ascontiguousarray(a) for a in arrays)
    j = settings.colour_jitter
    if j > 0:
        rgb = image[:3]
        rgb *= rng.uniform(1 - j, 1 + j)  # brightness
        mean = rgb.mean()
        rgb[:] = (rgb - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
        grey = rgb.mean(axis=0, keepdims=True)
        rgb[:] = (rgb - grey) * rng.uniform(1 - j, 1 + j) + grey  # saturation
        np.clip(rgb, 0.0, 1.0, out=rgb)
    return image, masks


class CacheTileDataset(torch.utils.data.Dataset):
    """Tiles of the cache as torchvision Mask R-CNN training items (see the module docstring).

    Holds only the sample list and a :class:`TileSource` (paths and settings); each DataLoader
    worker opens its own cache connection and rasters on its first item.
    """

    def __init__(
        self,
        source: TileSource,
        samples: Sequence[TileSample],
        *,
        spectral: bool,
        augment: AugmentSettings | None = None,
        noise_aware: bool = True,
        weight_floor: float = 0.3,
        ignore_uncertain: bool = True,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.samples = list(samples)
        self.spectral = spectral
        self.augment = augment
        self.noise_aware = noise_aware
        self.weight_floor = weight_floor
        self.ignore_uncertain = ignore_uncertain
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of ``epoch`` (call before iterating, as with samplers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def item(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The item as numpy arrays (what :meth:`__getitem__` wraps in tensors)."""
        sample = self.samples[index]
        tile = self.source.read(sample)
        image, masks, weights, ignore = to_tensors(
            tile,
            spectral=self.spectral,
            threshold=self.source.threshold,
            weight_floor=self.weight_floor,
            noise_aware=self.noise_aware,
        )
        if not self.ignore_uncertain:
            ignore = ignore[:0]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, (masks, ignore) = augment(image, [masks, ignore], rng, self.augment)
        return image, {
            "boxes": _boxes(masks),
            "masks": masks,
            "weights": weights,
            "ignore_boxes": _boxes(ignore),
            "tile": f"{sample.raster_fp}/{sample.tile_id}",
        }

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        # Samplers may send (epoch, index): persistent workers hold their own copy of the
        # dataset, so the epoch travels with the index rather than through set_epoch.
        if isinstance(key, tuple):
            self.epoch, index = (int(v) for v in key)
        else:
            index = int(key)
        image, t = self.item(index)
        n = len(t["masks"])
        target = {
            "boxes": torch.from_numpy(t["boxes"]).reshape(n, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": torch.from_numpy(t["masks"].astype(np.uint8)),
            "weights": torch.from_numpy(t["weights"]),
            "ignore_boxes": torch.from_numpy(t["ignore_boxes"]).reshape(-1, 4),
        }
        return torch.from_numpy(image), target


def collate(batch):
    """Lists of images and targets (torchvision detection models take lists)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def worker_init(_worker_id: int) -> None:
    """One BLAS/OpenCV thread per DataLoader worker: the workers are the parallelism.

    Workers ignore SIGINT: a Ctrl-C in a terminal reaches the whole process group, and the
    training process, not its workers, decides how to stop (finish the step, save).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - OpenCV is a core dependency
        pass

"""Reference oracle for ``solardesk_spectral.channels``: the same maths, written plainly.

Slow on purpose and free of the fast code's tricks: ``skimage.filters.gabor`` per kernel,
``skimage.feature.local_binary_pattern`` per radius, one ``numpy.fft.fft2`` per window in a
Python loop over the full spectrum, ``scipy.ndimage`` filters in float64, complex numbers
where the fast code uses identities, ``numpy.median`` and direct formulas where the fast code
uses per-channel lookup tables, and ``skimage.morphology`` top-hats.
What it shares with the fast code is the parameters and the plumbing that *defines* the
channels' grids: the grey conversion and OpenCV's 8-bit CIE Lab conversion (``cv2.cvtColor``;
the photometric index is defined on that grid, and a test holds it within one level of
``skimage.color.rgb2lab`` from L* 30 up, three at most; ADR 0040), the area resampling to
levels and to coarse smoothing grids (``cv2.resize`` INTER_AREA), the bilinear upsampling
(``cv2.resize`` INTER_LINEAR) and the 8-bit quantisation of the level before morphology
(``cv2.convertScaleAbs``).

Each ``ref_*`` function takes ``(rgb, gsd, valid=None, params=None)`` like its fast
counterpart; :func:`reference_channels` stacks all six.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import local_binary_pattern
from skimage.filters import gabor
from skimage.morphology import black_tophat, white_tophat

from solardesk_spectral.channels import ChannelParams


# --------------------------------------------------------------------------------------------
# Plumbing: grids
# --------------------------------------------------------------------------------------------
def _prepare(rgb, valid):
    grey8 = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.all():
            valid = None
    if valid is not None:
        fill = grey8[valid].mean() if valid.any() else 0.0
        grey8 = grey8.copy()
        grey8[~valid] = round(float(fill))
    return grey8, valid


def _grey(grey8):
    return grey8.astype(np.float32) / np.float32(255.0)


def _level(grey, gsd, target):
    """Area resampling to ``target`` m per pixel, never finer than the tile."""
    h, w = grey.shape
    factor = target / gsd
    if factor <= 1.0 + 1e-9:
        return grey, gsd
    lh, lw = max(1, round(h / factor)), max(1, round(w / factor))
    return cv2.resize(grey, (lw, lh), interpolation=cv2.INTER_AREA), gsd * w / lw


def _up(img, h, w):
    img = np.asarray(img, np.float32)
    if img.shape == (h, w):
        return img.copy()
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def _finish(out, valid, h, w):
    out = np.clip(_up(out, h, w), 0.0, 1.0)
    if valid is not None:
        out[~valid] = 0.0
    return out


def _gauss(img, sigma):
    return ndi.gaussian_filter(np.asarray(img, np.float64), sigma, mode="reflect", truncate=4.0)


def _coarse_gauss(maps, sigma):
    """Gaussian σ done on the maps area-averaged by ⌊σ/2⌋ (σ scaled to that grid)."""
    d = max(1, int(sigma / 2 * 1.01))  # (within 1 % under an even σ counts as it)
    h, w = maps[0].shape
    if d > 1:
        size = (max(1, round(w / d)), max(1, round(h / d)))
        maps = [
            cv2.resize(np.asarray(m, np.float32), size, interpolation=cv2.INTER_AREA) for m in maps
        ]
        sigma = sigma * size[0] / w
    return [_gauss(m, sigma) for m in maps]


def _ramp(x, lo, hi):
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# 1. FFT periodicity: one window at a time, full complex spectrum
# --------------------------------------------------------------------------------------------
def _ref_fft(grey, gsd, p):
    level, g = _level(grey, gsd, max(p.texture_grid_m, p.texture_grid_min_px * gsd))
    lh, lw = level.shape
    win, step = p.fft_window_px, p.fft_window_px // 2
    ny, nx = math.ceil(lh / step), math.ceil(lw / step)
    half = step // 2
    padded = np.pad(
        level.astype(np.float64),
        ((half, ny * step - lh + half), (half, nx * step - lw + half)),
        mode="symmetric",
    )
    hann1 = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(win) + 0.5) / win)
    hann = np.outer(hann1, hann1)
    k = np.fft.fftfreq(win, 1.0 / win)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    rad = np.hypot(ky, kx)
    lo, hi = g / p.fft_band_m[1] * win, g / p.fft_band_m[0] * win
    band = np.argwhere((rad >= lo) & (rad <= hi))
    floor = (hann**2).sum() * win * win * p.fft_contrast_floor**2
    grid = np.zeros((ny, nx))
    for iy in range(ny):
        for ix in range(nx):
            patch = padded[iy * step : iy * step + win, ix * step : ix * step + win]
            mean = (patch * hann).sum() / hann.sum()
            power = np.abs(np.fft.fft2((patch - mean) * hann)) ** 2
            power[0, 0] = 0.0
            box = sum(
                np.roll(power, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            )
            best = 0.0
            for r, c in band:
                sy = int(np.round(ky[r, c] / 2.0)) % win
                sx = int(np.round(kx[r, c] / 2.0)) % win
                best = max(best, box[r, c] - box[sy, sx])
            grid[iy, ix] = min(max(p.fft_gain * best / (power.sum() + floor), 0.0), 1.0)
    on_level = cv2.resize(
        grid.astype(np.float32), (nx * step, ny * step), interpolation=cv2.INTER_LINEAR
    )
    return on_level[:lh, :lw]


def ref_fft_periodicity(rgb, gsd, valid=None, params=None):
    p = params or ChannelParams()
    grey8, valid = _prepare(rgb, valid)
    return _finish(_ref_fft(_grey(grey8), gsd, p), valid, *grey8.shape)


# --------------------------------------------------------------------------------------------
# 2. LBP uniformity: skimage per radius, histograms by ndimage box sums
# --------------------------------------------------------------------------------------------
def _ref_lbp(grey, gsd, p):
    n = p.lbp_points
    maps = []
    for radius_m in p.lbp_radii_m:
        level, g = _level(grey, gsd, radius_m / p.lbp_radius_px)
        radius = max(1.0, radius_m / g)
        if abs(radius - round(radius)) <= 0.01 * radius:  # within 1 % of whole pixels: whole
            radius = float(round(radius))
        pad = math.ceil(float(np.float32(radius))) + 1
        padded = np.pad(level.astype(np.float64), pad, mode="symmetric")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "float images": ties are intended
            codes = local_binary_pattern(padded, n, radius, method="uniform")
        codes = codes[pad:-pad, pad:-pad]
        half = max(1, round(p.lbp_window_radii * radius))
        side = 2 * half + 1
        asm = np.zeros(codes.shape)
        for code in range(n + 2):
            share = ndi.uniform_filter((codes == code).astype(np.float64), side, mode="reflect")
            asm += share**2
        floor = 1.0 / (n + 2)
        asm = 1.0 - np.exp(-np.maximum(asm - floor, 0.0) / p.lbp_uniformity_ref)
        level64 = level.astype(np.float64)
        mean = ndi.uniform_filter(level64, side, mode="reflect")
        var = ndi.uniform_filter(level64**2, side, mode="reflect") - mean**2
        gate = _ramp(np.sqrt(np.maximum(var, 0.0)), p.lbp_contrast_floor, 2 * p.lbp_contrast_floor)
        maps.append(asm * gate)
    shape = maps[0].shape
    return sum(_up(m, *shape) for m in maps) / len(maps)


def ref_lbp_uniformity(rgb, gsd, valid=None, params=None):
    p = params or ChannelParams()
    grey8, valid = _prepare(rgb, valid)
    return _finish(_ref_lbp(_grey(grey8), gsd, p), valid, *grey8.shape)


# --------------------------------------------------------------------------------------------
# 3-4. Gabor: skimage.filters.gabor per kernel
# --------------------------------------------------------------------------------------------
def _ref_gabor(grey, gsd, p):
    base = None
    for period in sorted(p.gabor_periods_m):
        level, g = _level(grey, gsd, period / p.gabor_px_per_period)
        frequency = min(g / period, 0.45)
        total = np.zeros(level.shape)
        cx = np.zeros(level.shape)
        cy = np.zeros(level.shape)
        for j in range(p.gabor_orientations):
            theta = j * np.pi / p.gabor_orientations
            re, im = gabor(
                level.astype(np.float64) - level.mean(dtype=np.float32),
                frequency,
                theta=theta,
                bandwidth=p.gabor_bandwidth,
            )
            energy = re**2 + im**2
            total += energy
            cx += energy * np.cos(2 * theta)
            cy += energy * np.sin(2 * theta)
        if base is None:
            base, base_gsd = [total, cx, cy], g
        else:
            shape = base[0].shape
            base = [b + _up(m, *shape) for b, m in zip(base, (total, cx, cy), strict=True)]
    total, cx, cy = _coarse_gauss(base, p.smoothing_m / base_gsd)
    energy = 1.0 - np.exp(-total / p.gabor_energy_ref)
    coherence = np.abs(cx + 1j * cy) / (total + 0.05 * p.gabor_energy_ref)
    return energy, coherence


def ref_gabor_energy(rgb, gsd, valid=None, params=None):
    grey8, valid = _prepare(rgb, valid)
    energy, _ = _ref_gabor(_grey(grey8), gsd, params or ChannelParams())
    return _finish(energy, valid, *grey8.shape)


def ref_gabor_coherence(rgb, gsd, valid=None, params=None):
    grey8, valid = _prepare(rgb, valid)
    _, coherence = _ref_gabor(_grey(grey8), gsd, params or ChannelParams())
    return _finish(coherence, valid, *grey8.shape)


# --------------------------------------------------------------------------------------------
# 5. Photometric: numpy medians, direct formulas
# --------------------------------------------------------------------------------------------
def _ref_exg(rgb, p):
    rgbf = rgb.astype(np.float64)
    r, g, b = rgbf[..., 0], rgbf[..., 1], rgbf[..., 2]
    return _ramp((2 * g - r - b) / (r + g + b + 3 * p.exg_offset), *p.exg_range)


def _ref_shadow(grey8, valid, gsd, p):
    vals = np.sort((grey8 if valid is None else grey8[valid]).ravel())
    q = p.shadow_reference_quantile
    lit = vals[int((vals.size - 1) * q)] / 255.0 if vals.size else 0.0
    dark = _ramp(grey8 / 255.0 / max(lit, 1.0 / 255.0), *p.shadow_ratio_range[::-1])
    grey = _grey(grey8).astype(np.float64)
    side = 2 * max(1, round(p.shadow_scale_m / gsd)) + 1
    mean = ndi.uniform_filter(grey, side, mode="reflect")
    std = np.sqrt(np.maximum(ndi.uniform_filter(grey**2, side, mode="reflect") - mean**2, 0.0))
    return dark * _ramp(std, *p.shadow_std_range[::-1])


def ref_excess_green(rgb, valid=None, params=None):
    _, valid = _prepare(rgb, valid)
    return _finish(_ref_exg(rgb, params or ChannelParams()), valid, *rgb.shape[:2])


def ref_shadow_mask(rgb, gsd=None, valid=None, params=None):
    p = params or ChannelParams()
    grey8, valid = _prepare(rgb, valid)
    if gsd is None:
        gsd = p.shadow_scale_m / 2.0
    return _finish(_ref_shadow(grey8, valid, gsd, p), valid, *grey8.shape)


def ref_photometric_index(rgb, gsd, valid=None, params=None):
    p = params or ChannelParams()
    grey8, valid = _prepare(rgb, valid)
    # The channel is defined on OpenCV's 8-bit Lab (L* in 100/255 steps, a* and b* in unit
    # steps); the conversion is plumbing shared with the fast code, the maths below is not.
    lab8 = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).astype(np.float64)
    ell = lab8[..., 0] / 2.55
    a, b = lab8[..., 1] - 128.0, lab8[..., 2] - 128.0
    sel = np.ones(ell.shape, bool) if valid is None else valid
    lm, am, bm = (np.median(ch[sel]) if sel.any() else 0.0 for ch in (ell, a, b))
    d2 = ((ell - lm) / p.colour_scale_l) ** 2
    d2 += ((a - am) ** 2 + (b - bm) ** 2) / p.colour_scale_ab**2
    dist = 1.0 - np.exp(-d2 / 2.0)
    lowsat = np.exp(-(a**2 + b**2) / p.chroma_ref**2)
    blue = np.clip(-b / p.blue_ref, 0.0, 1.0)
    index = dist * np.maximum(lowsat, blue) * (1.0 - _ref_exg(rgb, p))
    if p.shadow_weight > 0:
        index *= 1.0 - p.shadow_weight * _ref_shadow(grey8, valid, gsd, p)
    return _finish(index, valid, *grey8.shape)


# --------------------------------------------------------------------------------------------
# 6. Edges and morphology: ndimage Sobel, complex arithmetic, skimage top-hats
# --------------------------------------------------------------------------------------------
def _ref_edges(grey, gsd, p):
    level, g = _level(grey, gsd, max(p.texture_grid_m, p.texture_grid_min_px * gsd))
    level64 = level.astype(np.float64)
    z = ndi.sobel(level64, axis=1, mode="reflect") / 8.0
    z = z + 1j * ndi.sobel(level64, axis=0, mode="reflect") / 8.0
    mag = np.abs(z)
    w4 = np.zeros_like(z)
    nz = mag > 0
    w4[nz] = z[nz] ** 4 / mag[nz] ** 3
    sigma = p.edge_scale_m / g
    mean_mag, s_re, s_im = _coarse_gauss([mag, w4.real, w4.imag], sigma)
    rect = np.abs(s_re + 1j * s_im) / (mean_mag + p.edge_gradient_floor)
    edge = 1.0 - np.exp(-math.sqrt(2 * math.pi) * sigma * mean_mag / p.edge_contrast_ref)
    level8 = cv2.convertScaleAbs(level, alpha=255.0)
    side = max(3, round(p.blob_size_m / g) | 1)
    footprint = np.ones((side, side), bool)
    tophat = np.maximum(
        white_tophat(level8, footprint, mode="reflect"),
        black_tophat(level8, footprint, mode="reflect"),
    ).astype(np.float64)
    blob = 1.0 - np.exp(-tophat / 255.0 / p.blob_contrast_ref)
    rect, edge = (_up(m, *level.shape) for m in (rect, edge))
    return rect * (1.0 - (1.0 - edge) * (1.0 - blob))


def ref_edges_morphology(rgb, gsd, valid=None, params=None):
    p = params or ChannelParams()
    grey8, valid = _prepare(rgb, valid)
    return _finish(_ref_edges(_grey(grey8), gsd, p), valid, *grey8.shape)


# --------------------------------------------------------------------------------------------
REF_FUNCTIONS = (
    ref_fft_periodicity,
    ref_lbp_uniformity,
    ref_gabor_energy,
    ref_gabor_coherence,
    ref_photometric_index,
    ref_edges_morphology,
)


def reference_channels(rgb, gsd, valid=None, params=None):
    """The six channels, ``(6, H, W)`` float32, computed the straightforward way."""
    if valid is not None and not np.asarray(valid, bool).any():
        return np.zeros((6, *rgb.shape[:2]), np.float32)
    return np.stack([f(rgb, gsd, valid, params) for f in REF_FUNCTIONS])

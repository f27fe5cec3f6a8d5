"""Compiled per-label statistics and suppression (numba), with the same results as the NumPy
and OpenCV paths.

The analyser's instance statistics need, for every label of a label image, its pixel count,
its sums over a few float32 maps and its bounding box. NumPy does that with one gather and one
``bincount`` per map and a ``find_objects`` pass for the boxes: each streams the whole tile
from memory again. :func:`label_sums` does it in one pass over the label image (ADR 0037).
Sums run in float64 in raster order, as ``bincount`` adds them, so the results are identical.

:func:`suppress` (the greedy suppression of overlapping candidates) replaces a per-candidate
loop of NumPy and OpenCV calls, which a 0.3 m tile, with four times the ground of a 0.15 m one,
runs for several hundred candidates (ADR 0048). It gives the very figures of the loop.

:func:`shape_stats` (ADR 0050) gives each candidate's minimum-area rectangle and hull area,
computed exactly from the hull's vertices so that the NumPy path (``cv2.convexHull`` and
``analyser.hull_measures``) gives the same bits, and :func:`label_sums_in_boxes` the label sums
of candidates whose boxes are known, looking inside those boxes only.

:func:`lbp_patterns` gives the LBP bit patterns of ``channels._lbp_codes`` (float32 neighbours,
near-ties decided again with skimage's float64 arithmetic: skimage's codes) one row at a time,
in place of four ``filter2D`` and a dozen compare and mask passes per radius.

ADR 0054 adds fused per-pixel passes for the channels. Each does, in one pass, what a chain of
whole-tile NumPy and OpenCV operations did, with the same float32 operations in the same order
(where OpenCV fuses a multiply-add, :func:`_fma32` does too), so the same bits:
- :func:`photometric`, the photometric index;
- :func:`code_uniformity` and :func:`gated_complement`, the LBP histograms and contrast gate;
- :func:`gabor_pair` and :func:`gabor_single`, the Gabor energies;
- :func:`frame_means`, the context statistics' frame means;
- :func:`quadratic_form`, the fused score map's weighted features and pairwise products
  (ADR 0055: the same float32 operations as the NumPy path, in blocks that stay in the cache).

:func:`spectrum_sums` gives the spectral measure's sums from OpenCV's packed DFT. It works in
a fixed order, as ``analyser._spectrum_sums`` does with NumPy.

numba is optional: each kernel is None where it does not import (the analyser then takes the
NumPy and OpenCV paths, which the tests check against these).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

try:  # a fused multiply-add with one rounding, as OpenCV's SIMD paths compute it
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _fma32(typingctx, a, b, c):
        """``a · b + c`` in float32 with one rounding (LLVM's ``fma``): the arithmetic of
        OpenCV's ``accumulateSquare`` and ``scaleAdd`` on float32 maps, where the processor
        fuses them (every x86-64 processor with AVX2, and ARM64)."""
        sig = types.float32(types.float32, types.float32, types.float32)

        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            fn = builder.module.declare_intrinsic(
                "llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32])
            )
            return builder.call(fn, args)

        return sig, codegen

except ImportError:  # numba is optional: nothing below is then compiled or called

    def _fma32(a, b, c):
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _label_sums_py(labels, n, maps):
    """``(area, sums, boxes)`` of labels ``1..n``: pixel count (float64), sums over each map in
    ``maps`` (a tuple of float32 arrays shaped like ``labels``; ``(n, len(maps))`` float64) and
    the box ``(x0, y0, x1, y1)`` (int64; zeros for a label with no pixel). Other label values
    are ignored."""
    h, w = labels.shape
    k = len(maps)
    area = np.zeros(n, np.float64)
    sums = np.zeros((n, k), np.float64)
    boxes = np.zeros((n, 4), np.int64)
    boxes[:, 0] = w
    boxes[:, 1] = h
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab <= 0 or lab > n:  # (never written out of bounds)
                continue
            i = lab - 1
            area[i] += 1.0
            for c in range(k):
                sums[i, c] += maps[c][y, x]
            if x < boxes[i, 0]:
                boxes[i, 0] = x
            if x + 1 > boxes[i, 2]:
                boxes[i, 2] = x + 1
            if y < boxes[i, 1]:
                boxes[i, 1] = y
            boxes[i, 3] = y + 1
    for i in range(n):
        if area[i] == 0:
            boxes[i, 0] = 0
            boxes[i, 1] = 0
    return area, sums, boxes


def _label_sums_in_boxes_py(labels, boxes, maps):
    """:func:`_label_sums_py` of labels ``1..len(boxes)``, each looked for only inside its box
    ``boxes[i]`` (x0, y0, x1, y1; it must hold all of the label's pixels, and may be loose):
    the same figures, each label's sums added in raster order as there, for the pixels of the
    boxes rather than of the whole image (a few small candidates in a 512² tile)."""
    n = len(boxes)
    k = len(maps)
    area = np.zeros(n, np.float64)
    sums = np.zeros((n, k), np.float64)
    found = np.zeros((n, 4), np.int64)
    for i in range(n):
        lab = i + 1
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        bx0, by0, bx1, by1 = x1, y1, 0, 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                if labels[y, x] != lab:
                    continue
                area[i] += 1.0
                for c in range(k):
                    sums[i, c] += maps[c][y, x]
                if x < bx0:
                    bx0 = x
                if x + 1 > bx1:
                    bx1 = x + 1
                if y < by0:
                    by0 = y
                by1 = y + 1
        if area[i] > 0:
            found[i, 0], found[i, 1], found[i, 2], found[i, 3] = bx0, by0, bx1, by1
    return area, sums, found


def _suppress_py(labels, order_h, order_i, boxes, overlap, min_pixels):
    """The greedy suppression of ``analyser.suppress`` over candidates already in order.

    Candidate ``j`` is label ``order_i[j] + 1`` of ``labels[order_h[j]]`` (a tuple of int32
    label images of one shape) in its box ``boxes[j]`` (x0, y0, x1, y1). Returns the label
    image of the taken candidates (``k + 1`` for the ``k``-th taken) and the positions ``j``
    taken, in order. The rule, as there: a candidate is dropped when more than ``overlap`` of its
    pixels are taken; else its free pixels (neither taken nor 8-next to a taken one) are kept,
    or, when they fall apart, the largest 8-connected part of them, which must hold ``1 -
    overlap`` of the candidate and ``min_pixels``. (Of parts of equal size it takes the one
    OpenCV's ``connectedComponentsWithStats`` numbers first, met first going over 2 × 2 blocks
    in raster order; with ``overlap`` under a half such a part could not be kept anyway.)
    """
    h, w = labels[0].shape
    out = np.zeros((h, w), np.int32)
    # 1 where a pixel is taken or 8-next to a taken one: kept up as candidates are taken, so
    # that a candidate's free pixels are one look-up each, not a 3 × 3 search of ``out``
    blocked = np.zeros((h, w), np.uint8)
    m = len(order_i)
    taken = np.empty(m, np.int64)
    n_taken = 0
    bh_max, bw_max = 1, 1
    for j in range(m):
        bh_max = max(bh_max, boxes[j, 3] - boxes[j, 1])
        bw_max = max(bw_max, boxes[j, 2] - boxes[j, 0])
    part = np.zeros((bh_max, bw_max), np.int32)  # 1: free; then -k: in part k
    stack = np.empty(2 * bh_max * bw_max, np.int64)
    kept_row = np.zeros(w + 2, np.uint8)  # one row of a taken part, a zero either side
    for j in range(m):
        lab = labels[order_h[j]]
        v = np.int32(order_i[j] + 1)
        x0, y0, x1, y1 = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
        bh, bw = y1 - y0, x1 - x0
        area = 0
        over = 0
        n_free = 0
        # (branch-free over row views, so that the loops vectorise)
        for y in range(bh):
            lr = lab[y0 + y, x0:x1]
            orow = out[y0 + y, x0:x1]
            brow = blocked[y0 + y, x0:x1]
            prow = part[y, :bw]
            a_ = 0
            o_ = 0
            f_ = 0
            for k in range(bw):
                mine = np.int32(lr[k] == v)
                free = mine & np.int32(brow[k] == 0)
                a_ += mine
                o_ += mine & np.int32(orow[k] > 0)
                f_ += free
                prow[k] = free
            area += a_
            over += o_
            n_free += f_
        if over > overlap * area:
            continue
        if n_free < (1 - overlap) * area or n_free < min_pixels:
            continue  # (its largest free part would be smaller still)
        best = 0
        if n_free < area:
            n_parts = 0
            best_size = -1
            for by in range(0, bh, 2):
                for bx in range(0, bw, 2):
                    for py in range(by, min(by + 2, bh)):
                        for px in range(bx, min(bx + 2, bw)):
                            if part[py, px] != 1:
                                continue
                            n_parts += 1
                            part[py, px] = -n_parts
                            size = 0
                            stack[0] = py * bw + px
                            top = 1
                            while top > 0:
                                top -= 1
                                q = stack[top]
                                qy, qx = q // bw, q % bw
                                size += 1
                                for ny in range(max(qy - 1, 0), min(qy + 2, bh)):
                                    for nx in range(max(qx - 1, 0), min(qx + 2, bw)):
                                        if part[ny, nx] == 1:
                                            part[ny, nx] = -n_parts
                                            stack[top] = ny * bw + nx
                                            top += 1
                            if size > best_size:
                                best_size = size
                                best = n_parts
            if n_parts >= 2:
                n_free = best_size
            else:
                best = 0
        if n_free < (1 - overlap) * area or n_free < min_pixels:
            continue
        n_taken += 1
        # the kept pixels: every free one (no part search, or a single part), else part best
        allfree = np.int32(best == 0)
        want = np.int32(-best) if best != 0 else np.int32(2)  # (no part is 2)
        nt = np.int32(n_taken)
        gx0 = max(x0 - 1, 0)
        gx1 = min(x1 + 1, w)
        span = gx1 - gx0
        off = x0 - gx0
        for y in range(bh):
            prow = part[y, :bw]
            orow = out[y0 + y, x0:x1]
            kr = kept_row[: span + 2]
            for k in range(span + 2):
                kr[k] = 0
            any_ = 0
            for k in range(bw):
                p = prow[k]
                keep = np.int32(p == want) | (allfree & np.int32(p != 0))
                orow[k] += keep * nt  # (a free pixel is not taken: 0 before)
                kr[off + k + 1] = keep
                any_ |= keep
            if any_:  # blocked: the row's kept pixels grown by one each way, on three rows
                for yy in range(max(y0 + y - 1, 0), min(y0 + y + 2, h)):
                    brow = blocked[yy, gx0:gx1]
                    for k in range(span):
                        brow[k] |= kr[k] | kr[k + 1] | kr[k + 2]
        taken[n_taken - 1] = j
    return out, taken[:n_taken]


def _shape_stats_py(labels, boxes, traced):
    """``(n, 4)`` float64: minimum-area rectangle area, convex hull area, and the rectangle's
    long and short sides of each label ``i + 1`` with ``traced[i]`` (NaN rows elsewhere) — of
    the union of its pixel squares, found in its box ``boxes[i]`` (x0, y0, x1, y1).

    The hull of the squares is the hull of the outer corners of each row's outermost pixels,
    found by one monotone chain over them in doubled (integer) coordinates. Everything after
    is exact integer arithmetic but for one rounding per figure, so the figures are the same
    whatever order the hull's vertices come in (``analyser.hull_measures`` gives them for a
    hull from elsewhere; ADR 0050): the hull area from the shoelace sum; the rectangle from each
    hull edge direction, reduced by its gcd and turned into the quadrant ``dx > 0, dy ≥ 0``
    (the rectangle rests on a hull edge), its extents along that direction and across it; of
    equal areas the one with the shorter long side, then the smaller ``(dx, dy)``.
    """
    n = len(traced)
    out = np.full((n, 4), np.nan)
    for i in range(n):
        if not traced[i]:
            continue
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        lab = i + 1
        rows = y1 - y0
        left = np.full(rows + 1, -1, np.int64)  # per corner row k (y = y0 + k - 1/2)
        right = np.full(rows + 1, -1, np.int64)
        for k in range(rows):
            y = y0 + k
            lo = -1
            for x in range(x0, x1):
                if labels[y, x] == lab:
                    lo = x
                    break
            if lo < 0:
                continue
            hi = lo
            for x in range(x1 - 1, lo, -1):
                if labels[y, x] == lab:
                    hi = x
                    break
            for c in range(k, k + 2):  # the pixel row's top and bottom corner rows
                if left[c] < 0 or lo < left[c]:
                    left[c] = lo
                if hi > right[c]:
                    right[c] = hi
        # corner row c in (row, column) order, doubled: (2y - 1, 2 left - 1) and
        # (2y - 1, 2 right + 1) with y = y0 + c
        pa = np.empty(2 * (rows + 1), np.int64)
        pb = np.empty(2 * (rows + 1), np.int64)
        m = 0
        for c in range(rows + 1):
            if left[c] < 0:
                continue
            pa[m] = 2 * (y0 + c) - 1
            pb[m] = 2 * left[c] - 1
            m += 1
            pa[m] = 2 * (y0 + c) - 1
            pb[m] = 2 * right[c] + 1
            m += 1
        if m == 0:
            continue
        # Andrew's monotone chain (the points are sorted by (row, column)), no collinear ones:
        # forward over the points for one side, then back for the other
        ha = np.empty(2 * m + 1, np.int64)
        hb = np.empty(2 * m + 1, np.int64)
        t = 0
        floor = 2
        for step in range(2 * m - 1):
            j = step if step < m else 2 * m - 2 - step
            if step == m:
                floor = t + 1  # the way back keeps the first side
            while (
                t >= floor
                and (ha[t - 1] - ha[t - 2]) * (pb[j] - hb[t - 2])
                - (hb[t - 1] - hb[t - 2]) * (pa[j] - ha[t - 2])
                <= 0
            ):
                t -= 1
            ha[t] = pa[j]
            hb[t] = pb[j]
            t += 1
        t -= 1  # the first point closes the chain
        out[i] = _hull_measures(hb[:t], ha[:t])
    return out


def _hull_measures_py(hx, hy):
    """``(rect_area, hull_area, long_side, short_side)`` of a convex polygon given by its
    vertices ``hx, hy`` (int64, doubled coordinates: the true ones times two), in either
    orientation, from any vertex, collinear vertices allowed. See :func:`_shape_stats_py`."""
    m = len(hx)
    s = 0
    for k in range(m):
        j = k + 1 if k + 1 < m else 0
        s += hx[k] * hy[j] - hx[j] * hy[k]
    hull_area = abs(s) / 8.0
    best_area = best_long = best_short = np.inf
    best_dx = best_dy = 0
    for k in range(m):
        j = k + 1 if k + 1 < m else 0
        dx = hx[j] - hx[k]
        dy = hy[j] - hy[k]
        if dx == 0 and dy == 0:
            continue
        a, b = abs(dx), abs(dy)
        while b:
            a, b = b, a % b
        dx //= a
        dy //= a
        while not (dx > 0 and dy >= 0):  # the same rectangle every quarter turn
            dx, dy = dy, -dx
        umin = umax = hx[0] * dx + hy[0] * dy
        vmin = vmax = hy[0] * dx - hx[0] * dy
        for q in range(1, m):
            u = hx[q] * dx + hy[q] * dy
            v = hy[q] * dx - hx[q] * dy
            umin = min(umin, u)
            umax = max(umax, u)
            vmin = min(vmin, v)
            vmax = max(vmax, v)
        eu, ev = umax - umin, vmax - vmin
        dd = dx * dx + dy * dy
        area = float(eu * ev) / float(4 * dd)
        root = 2.0 * np.sqrt(float(dd))
        long_side = float(max(eu, ev)) / root
        if area < best_area or (
            area == best_area
            and (
                long_side < best_long
                or (long_side == best_long and (dx < best_dx or (dx == best_dx and dy < best_dy)))
            )
        ):
            best_area, best_long, best_dx, best_dy = area, long_side, dx, dy
            best_short = float(min(eu, ev)) / root
    return np.array([best_area, hull_area, best_long, best_short])


def _skimage_bit(img, yy, xx, rp, cp):
    """Whether the neighbour ``(rp, cp)`` away from pixel ``(yy, xx)`` of the float32 image
    ``img``, interpolated with skimage's float64 bilinear arithmetic (``channels._skimage_bits``:
    the same operations in the same order, so the same bits), is at least the pixel."""
    r = yy + rp
    c = xx + cp
    minr, minc = np.floor(r), np.floor(c)
    maxr, maxc = np.ceil(r), np.ceil(c)
    dr, dc = r - minr, c - minc
    i0, j0, i1, j1 = int(minr), int(minc), int(maxr), int(maxc)
    top = (1 - dc) * np.float64(img[i0, j0]) + dc * np.float64(img[i0, j1])
    bottom = (1 - dc) * np.float64(img[i1, j0]) + dc * np.float64(img[i1, j1])
    value = (1 - dr) * top + dr * bottom
    return value - np.float64(img[yy, xx]) >= 0


def _lbp_patterns_py(img, pad, rp, cp, out):
    """The LBP bit patterns (bit ``i``: neighbour ``i`` at ``(rp[i], cp[i])`` is at least the
    centre) of the float32 image ``img`` inside its border of ``pad`` pixels, into ``out``
    (uint8, the image less its border), as ``channels._lbp_codes`` decides them: a neighbour
    between pixels is interpolated in float32 (the four weights of its 2 × 2 cell), and
    where it lies within 1e-5 of the centre (ties in flat areas, where float32 and float64
    rounding could disagree) the bit is decided again with skimage's float64 arithmetic, so
    the bits are skimage's. One row at a time, one neighbour at a time along it (which the
    compiler vectorises); real 8-bit imagery has tens of thousands of near-ties on a 0.3 m
    tile (flat patches, where an interpolated neighbour equals the centre). The caller keeps
    every neighbour inside ``img`` (numba does not check)."""
    lh, lw = out.shape
    near = np.zeros(lw, np.uint8)
    tol = np.float32(1e-5)
    for y in range(lh):
        yc = y + pad
        row = out[y]
        row[:] = 0
        centre = img[yc, pad : pad + lw]
        for i in range(len(rp)):
            r0, c0 = int(np.floor(rp[i])), int(np.floor(cp[i]))
            fr, fc = rp[i] - r0, cp[i] - c0
            shift = np.uint8(i)
            yy, xo = yc + r0, pad + c0
            if fr == 0 and fc == 0:
                other = img[yy, xo : xo + lw]
                for x in range(lw):
                    row[x] |= np.uint8(other[x] >= centre[x]) << shift
                continue
            w00, w01 = np.float32((1 - fr) * (1 - fc)), np.float32((1 - fr) * fc)
            w10, w11 = np.float32(fr * (1 - fc)), np.float32(fr * fc)
            a0, a1 = img[yy, xo : xo + lw], img[yy, xo + 1 : xo + 1 + lw]
            b0, b1 = img[yy + 1, xo : xo + lw], img[yy + 1, xo + 1 : xo + 1 + lw]
            ties = 0
            for x in range(lw):
                d = w00 * a0[x] + w01 * a1[x] + w10 * b0[x] + w11 * b1[x] - centre[x]
                row[x] |= np.uint8(d >= 0) << shift
                t = np.uint8(abs(d) < tol)
                near[x] = t
                ties += t
            if ties:
                bit = np.uint8(1) << shift
                for x in range(lw):
                    if near[x]:
                        if _skimage_bit(img, yc, x + pad, rp[i], cp[i]):
                            row[x] |= bit
                        else:
                            row[x] &= ~bit


def _quadratic_form_py(features, upper, linear, bias, out):
    """``out[p] = bias + Σ_i f_i (linear_i + Σ_{j ≥ i} upper_ij f_j)`` at each pixel ``p`` of
    ``features`` (``(n, P)`` float32; ``upper`` ``(n, n)`` float32, read on and above its
    diagonal; ``linear`` ``(n,)`` float32; ``bias`` float32), all in float32 in this order:
    ``t = linear_i + upper_ii f_i``, then ``t += upper_ij f_j`` for ``j = i + 1, …`` (a
    multiply, then an add: never fused), then ``out += f_i t``. ``analyser._quadratic_form``
    does the same operations on whole maps (the same bits). Blocks of pixels stay in the cache
    while the 55 products of ten features are added up; four at a time per pass."""
    n, size = features.shape
    block = 512
    t = np.empty(block, np.float32)
    for s in range(0, size, block):
        m = min(block, size - s)
        o = out[s : s + m]
        for k in range(m):
            o[k] = bias
        for i in range(n):
            fi = features[i, s : s + m]
            a = linear[i]
            b = upper[i, i]
            for k in range(m):
                t[k] = a + b * fi[k]
            j = i + 1
            while j + 3 < n:
                c0, c1, c2, c3 = upper[i, j], upper[i, j + 1], upper[i, j + 2], upper[i, j + 3]
                f0 = features[j, s : s + m]
                f1 = features[j + 1, s : s + m]
                f2 = features[j + 2, s : s + m]
                f3 = features[j + 3, s : s + m]
                for k in range(m):
                    t[k] = (((t[k] + c0 * f0[k]) + c1 * f1[k]) + c2 * f2[k]) + c3 * f3[k]
                j += 4
            while j < n:
                c = upper[i, j]
                fj = features[j, s : s + m]
                for k in range(m):
                    t[k] += c * fj[k]
                j += 1
            for k in range(m):
                o[k] += fi[k] * t[k]
    return out


def _frame_means_py(boxes, r, count, sums):
    """``analyser._frame_means`` in one pass: the mean of each integral image in ``sums`` (a
    tuple of float64 ``(H + 1, W + 1)`` arrays) over the frame ``r`` pixels wide around each box
    ``boxes[i]`` (x0, y0, x1, y1, within the image), with ``count`` the integral of the valid
    pixels; NaN where the frame holds none. The same float64 operations in the same order as
    the NumPy path, so the same bits."""
    n = len(boxes)
    h, w = count.shape[0] - 1, count.shape[1] - 1
    out = np.empty((n, len(sums)), np.float64)
    for i in range(n):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        gx0, gy0 = max(x0 - r, 0), max(y0 - r, 0)
        gx1, gy1 = min(x1 + r, w), min(y1 + r, h)
        outer = count[gy1, gx1] - count[gy0, gx1] - count[gy1, gx0] + count[gy0, gx0]
        inner = count[y1, x1] - count[y0, x1] - count[y1, x0] + count[y0, x0]
        n_px = outer - inner
        for k in range(len(sums)):
            ii = sums[k]
            if n_px > 0:
                outer = ii[gy1, gx1] - ii[gy0, gx1] - ii[gy1, gx0] + ii[gy0, gx0]
                inner = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
                out[i, k] = (outer - inner) / n_px
            else:
                out[i, k] = np.nan
    return out


def _std_ramp(mean, square, lo, slope):
    """``clip((σ - lo) · slope, 0, 1)`` in float32, σ the local standard deviation
    ``sqrt(max(square - mean², 0))`` from the box means of a centred image and of its square
    (``channels._local_std_box`` then ``channels._ramp_inplace``: the same operations in the
    same order, so the same bits)."""
    zero = np.float32(0.0)
    v = square - mean * mean
    if not v > zero:  # (np.maximum)
        v = zero
    g = (np.sqrt(v) - lo) * slope
    return min(max(g, zero), np.float32(1.0))


def _photometric_py(lab, rgb, grey, blur_mean, blur_square, luts, c, index, veg, dark):
    """``channels._photometric``'s per-pixel arithmetic in one pass, in float32 with the same
    operations in the same order as its NumPy path (so the same bits).

    ``lab``: OpenCV's 8-bit Lab of ``rgb``; ``grey``: the uint8 grey tile; ``blur_mean`` and
    ``blur_square``: the box means of the centred grey and of its square (the flatness test's
    local standard deviation, ``channels._local_std_box``); ``luts`` (float32, 7 × 256): the
    tables of the near-L*, near-a*, near-b*, low-saturation a* and b*, blue-violet b* and
    darkness factors; ``c`` (float32): the excess green's denominator offset, ramp start and
    slope, the flatness ramp's start and slope, ``-shadow_weight`` and whether it is applied
    (not 0). Writes the index, the excess green and the shadow map into ``index``, ``veg`` and
    ``dark``."""
    h, w = grey.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for y in range(h):
        for x in range(w):
            ell, a, b = lab[y, x, 0], lab[y, x, 1], lab[y, x, 2]
            near = luts[0, ell] * luts[1, a]
            near = near * luts[2, b]
            value = one - near
            low = luts[3, a] * luts[4, b]
            blue = luts[5, b]
            if blue > low:
                low = blue
            value = value * low
            r, g, bb = np.float32(rgb[y, x, 0]), np.float32(rgb[y, x, 1]), np.float32(rgb[y, x, 2])
            s = r + g
            s = s + bb
            s = s + c[0]
            e = g + g
            e = e - r
            e = e - bb
            e = e / s
            e = (e - c[1]) * c[2]
            e = min(max(e, zero), one)
            veg[y, x] = e
            value = value * (one - e)
            d = luts[6, grey[y, x]] * _std_ramp(blur_mean[y, x], blur_square[y, x], c[3], c[4])
            dark[y, x] = d
            if c[6] != zero:
                value = value * (d * c[5] + one)
            index[y, x] = value


def _code_uniformity_py(padded, side, scale, offset, out):
    """The LBP channel's ``Σ_k count_k²`` (``count_k``: how many pixels of the ``side`` ×
    ``side`` window hold code ``k``), times ``scale``, plus ``offset``, at most 0, in float32
    as ``channels._lbp_uniformity``'s OpenCV passes compute it (one box count and one
    ``accumulateSquare`` per code, then the two in-place operations and ``np.minimum``): the
    sum is an exact integer below 2**24, so the same bits.

    ``padded``: the uint8 codes (below 16) mirrored by ``side // 2`` on every side (as the box
    filter's border reads them); ``side * side`` must be below 256. The sixteen counts of a
    window ride in two 64-bit words, one byte each (a count never carries into the next),
    summed down each column as the window moves down and across it by prefix sums (which may
    wrap: the difference of two of them does not)."""
    hp, wp = padded.shape
    h, w = hp - side + 1, wp - side + 1
    col = np.zeros((2, wp), np.uint64)
    pre = np.zeros((2, wp + 1), np.uint64)
    one, eight, seven, three = np.uint64(1), np.uint64(8), np.uint64(7), np.uint64(3)
    byte = np.uint64(255)
    zero = np.float32(0.0)
    for y in range(side):
        for x in range(wp):
            c = np.uint64(padded[y, x])
            col[c >> three, x] += one << (eight * (c & seven))
    for y in range(h):
        a0 = np.uint64(0)
        a1 = np.uint64(0)
        for x in range(wp):
            a0 += col[0, x]
            a1 += col[1, x]
            pre[0, x + 1] = a0
            pre[1, x + 1] = a1
        for x in range(w):
            v = pre[0, x + side] - pre[0, x]
            u = pre[1, x + side] - pre[1, x]
            acc = np.uint64(0)
            for k in range(8):
                b = (v >> np.uint64(8 * k)) & byte
                acc += b * b
                b = (u >> np.uint64(8 * k)) & byte
                acc += b * b
            value = np.float32(acc) * scale
            value = value + offset
            out[y, x] = min(value, zero)
        if y + 1 < h:
            for x in range(wp):
                c = np.uint64(padded[y, x])
                col[c >> three, x] -= one << (eight * (c & seven))
                c = np.uint64(padded[y + side, x])
                col[c >> three, x] += one << (eight * (c & seven))


def _gated_complement_py(values, blur_mean, blur_square, lo, slope):
    """``values = (1 - values) · clip((σ - lo) · slope, 0, 1)`` in place, σ the local standard
    deviation ``sqrt(max(blur_square - blur_mean², 0))`` (``channels._local_std_box``), in
    float32 with the same operations in the same order as the NumPy passes (the same bits)."""
    h, w = values.shape
    one = np.float32(1.0)
    for y in range(h):
        for x in range(w):
            g = _std_ramp(blur_mean[y, x], blur_square[y, x], lo, slope)
            values[y, x] = (one - values[y, x]) * g


def _gabor_pair_py(p1, p2, p3, p4, total, cx, cy, coef, use):
    """Add the energies of a Gabor orientation θ and its mate π - θ (``channels._gabor_level``:
    ``re = p1 ∓ p2``, ``im = p3 + p4`` and ``p4 - p3``, ``E = re² + im²``) to ``total`` and
    ``E cos 2θ``, ``E sin 2θ`` of each to ``cx``, ``cy`` (coefficients ``coef``: θ's cosine and
    sine, then the mate's, in float32; ``use``: which of the four are added at all), in one
    pass with the operations and roundings of the NumPy and OpenCV passes (``accumulateSquare``
    and ``scaleAdd`` fuse their multiply-add: :func:`_fma32`), so the same bits."""
    h, w = total.shape
    for y in range(h):
        for x in range(w):
            a1, a2, a3, a4 = p1[y, x], p2[y, x], p3[y, x], p4[y, x]
            c, s = cx[y, x], cy[y, x]
            re = a1 - a2
            im = a3 + a4
            e = _fma32(im, im, re * re)
            t = total[y, x] + e
            if use[0]:
                c = _fma32(e, coef[0], c)
            if use[1]:
                s = _fma32(e, coef[1], s)
            re = a1 + a2
            im = a4 - a3
            e = _fma32(im, im, re * re)
            t = t + e
            if use[2]:
                c = _fma32(e, coef[2], c)
            if use[3]:
                s = _fma32(e, coef[3], s)
            total[y, x] = t
            cx[y, x] = c
            cy[y, x] = s


def _gabor_single_py(re, im, total, cx, cy, coef, use):
    """:func:`_gabor_pair_py` for one orientation whose response is ``(re, im)`` (θ = 0 and
    θ = π/2), ``coef`` and ``use`` its two."""
    h, w = total.shape
    for y in range(h):
        for x in range(w):
            r, i = re[y, x], im[y, x]
            e = _fma32(i, i, r * r)
            total[y, x] = total[y, x] + e
            if use[0]:
                cx[y, x] = _fma32(e, coef[0], cx[y, x])
            if use[1]:
                cy[y, x] = _fma32(e, coef[1], cy[y, x])


def _frequency(k, n):
    """``numpy.fft.fftfreq(n)[k]`` as float32 (``analyser._coarse_frequencies``'s)."""
    signed = k if k < (n - 1) // 2 + 1 else k - n
    return np.float32(signed * (1.0 / n))


def _spectrum_sums_py(packed, cutoff2, top_share):
    """``(total, fine_power, top)`` of the power spectrum of OpenCV's packed real DFT
    ``packed`` (float32, ``ny × nx``), bin by bin in the order of ``analyser._packed_bins``
    (the bins of the half spectrum, DC first): the power ``re² + im²`` (float32) of every bin
    but DC, times the number of the whole spectrum's bins it stands for (1 or 2), summed in
    float64; the same over the fine bins (``fy² + fx² ≥ cutoff2`` in float32, as
    ``analyser._coarse_frequencies`` decides); and, when ``top_share`` > 0, the sum from the
    largest down of the ``k = max(1, int(top_share · n))`` largest fine powers of the whole
    spectrum (``n`` its fine bins; each mirrored bin counted twice). ``analyser._spectrum_sums``
    does the same with NumPy, to the same bits."""
    ny, nx = packed.shape
    n = ny * nx
    power = np.empty(n, np.float32)
    mult = np.empty(n, np.float64)
    fine = np.empty(n, np.bool_)
    b = 0
    n_edges = 2 if nx % 2 == 0 and nx > 1 else 1
    for e in range(n_edges):
        kx, col = (0, 0) if e == 0 else (nx // 2, nx - 1)
        fx = _frequency(kx, nx)
        tops = 2 if ny % 2 == 0 and ny > 1 else 1
        for t in range(tops):
            row, ky = (0, 0) if t == 0 else (ny - 1, ny // 2)
            v = packed[row, col]
            power[b] = v * v
            mult[b] = 1.0
            fy = _frequency(ky, ny)
            fine[b] = not (fy * fy + fx * fx < cutoff2)
            b += 1
        for ky in range(1, (ny - 1) // 2 + 1):
            v = packed[2 * ky - 1, col]
            w = packed[2 * ky, col]
            power[b] = v * v + w * w
            mult[b] = 2.0
            fy = _frequency(ky, ny)
            fine[b] = not (fy * fy + fx * fx < cutoff2)
            b += 1
    for ky in range(ny):
        fy = _frequency(ky, ny)
        for kx in range(1, (nx - 1) // 2 + 1):
            v = packed[ky, 2 * kx - 1]
            w = packed[ky, 2 * kx]
            power[b] = v * v + w * w
            mult[b] = 2.0
            fx = _frequency(kx, nx)
            fine[b] = not (fy * fy + fx * fx < cutoff2)
            b += 1
    total = 0.0
    fine_sum = 0.0
    n_once = 0
    n_twice = 0
    want_top = top_share > 0
    # the fine bins by power bucket (_top_sum)
    counts = np.zeros(_TOP_BUCKETS if want_top else 1, np.int64)
    bits = power.view(np.int32)
    for i in range(1, b):
        q = np.float64(power[i]) * mult[i]
        total += q
        if fine[i]:
            fine_sum += q
            twice = mult[i] == 2.0
            if twice:
                n_twice += 1
            else:
                n_once += 1
            if want_top:
                counts[_bucket(bits[i])] += 2 if twice else 1
    if not want_top:
        return total, fine_sum, 0.0
    k = max(1, int(top_share * (n_once + 2 * n_twice)))
    return total, fine_sum, _top_sum(power, bits, mult, fine, b, k, counts)


#: Power buckets of :func:`_top_sum`: a positive float32's bit pattern shifted right by 19
#: (its exponent and top four mantissa bits: buckets 1/16 of an octave wide), plus one;
#: bucket 0 holds zeros (and anything with the sign bit set).
_TOP_BUCKETS = 4097


def _bucket(bits):
    """The :data:`_TOP_BUCKETS` bucket of a float32 power by its bit pattern (as int32;
    monotonic in the value for the non-negative ones)."""
    return (bits >> 19) + 1 if bits > 0 else 0


def _top_sum(power, bits, mult, fine, b, k, counts):
    """The sum from the largest down (float64) of the ``k`` largest fine powers among bins
    ``1..b-1`` of :func:`_spectrum_sums_py` (a mirrored bin counted twice), ``counts`` the
    number of them in each :func:`_bucket`: only the values of the buckets that hold the ``k``
    largest are gathered and sorted (a radix select), where ``numpy.partition`` over all the
    fine bins took three quarters of the call. The same values in the same order as the
    NumPy path's: the same bits."""
    seen = 0
    cut = _TOP_BUCKETS - 1
    while True:
        seen += counts[cut]
        if seen >= k or cut == 0:
            break
        cut -= 1
    pool = np.empty(seen, np.float32)
    m = 0
    for i in range(1, b):
        if fine[i] and _bucket(bits[i]) >= cut:
            pool[m] = power[i]
            m += 1
            if mult[i] == 2.0:
                pool[m] = power[i]
                m += 1
    pool.sort()
    top = 0.0
    for j in range(m - 1, m - 1 - min(k, m), -1):
        top += np.float64(pool[j])
    return top


def _frame_maps_py(rgb, redness, cyan, green, blue):
    """The colour maps of ``analyser.FrameContext`` from ``rgb`` (uint8, ``H × W × 3``) in one
    pass, as float32: ``R - B``, ``min(G, B) - R``, ``G`` and ``B`` (8-bit levels; whole numbers,
    exact in any order)."""
    h, w = redness.shape
    for y in range(h):
        for x in range(w):
            r = np.float32(rgb[y, x, 0])
            g = np.float32(rgb[y, x, 1])
            b = np.float32(rgb[y, x, 2])
            redness[y, x] = r - b
            cyan[y, x] = min(g, b) - r
            green[y, x] = g
            blue[y, x] = b


def _otsu_masked_py(image, mask, counts):
    """Otsu's split of the whole-number values of ``image`` (0-255, any real dtype) where
    ``mask`` is set, as ``analyser.otsu_level`` computes it from ``image[mask]``: the values
    counted into ``counts`` (int64, 256 bins) in one pass, then its cumulative sums in float64
    in the same order as NumPy's ``cumsum`` (left to right for the lower class, right to left
    for the upper one) and its first largest between-class term. Returns ``(lo, n, k, between,
    step, mean, weight)``: the least value and the number of bins from it to the largest, the
    chosen bin, its between-class term and step, and the whole mean and weight (the variance's
    dot product is left to NumPy, whose order it must keep); ``n`` < 2 when there is no split
    (``k`` and the rest then 0), -1 when a value under the mask lies outside 0-255 (nothing is
    counted past ``counts``: the caller takes the NumPy path)."""
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                v = image[y, x]
                if not (v >= 0 and v < 256):
                    return 0, -1, 0, 0.0, 0.0, 0.0, 0.0
                counts[int(v)] += 1
    lo = 0
    while lo < 256 and counts[lo] == 0:
        lo += 1
    hi = 255
    while hi > lo and counts[hi] == 0:
        hi -= 1
    n = hi - lo + 1 if lo < 256 else 0
    if n < 2:
        return lo, n, 0, 0.0, 0.0, 0.0, 0.0
    w1 = np.empty(n, np.float64)
    m1 = np.empty(n, np.float64)
    m2 = np.empty(n, np.float64)
    w2 = np.empty(n, np.float64)
    s = 0.0
    sc = 0.0
    for j in range(n):
        c = np.float64(counts[lo + j])
        s += c
        sc += c * np.float64(lo + j)
        w1[j] = s
        m1[j] = sc / s
    s = 0.0
    sc = 0.0
    for j in range(n - 1, -1, -1):
        c = np.float64(counts[lo + j])
        s += c
        sc += c * np.float64(lo + j)
        w2[j] = s
        m2[j] = sc / s
    best = -1.0
    k = 0
    for j in range(n - 1):
        d = m1[j] - m2[j + 1]
        term = w1[j] * w2[j + 1] * (d * d)
        if term > best:
            best = term
            k = j
    return lo, n, k, best, m2[k + 1] - m1[k], m1[n - 1], w1[n - 1]


def _compile(fn: Callable) -> Callable | None:
    try:
        import numba
    except ImportError:  # optional: the NumPy path does the same
        return None
    return numba.njit(cache=True, nogil=True)(fn)


label_sums: Callable | None = _compile(_label_sums_py)
label_sums_in_boxes: Callable | None = _compile(_label_sums_in_boxes_py)
suppress: Callable | None = _compile(_suppress_py)
hull_measures: Callable | None = _compile(_hull_measures_py)
_hull_measures = hull_measures or _hull_measures_py  # (what _shape_stats_py calls)
shape_stats: Callable | None = _compile(_shape_stats_py)
_skimage_bit = _compile(_skimage_bit) or _skimage_bit  # (what _lbp_patterns_py calls)
lbp_patterns: Callable | None = _compile(_lbp_patterns_py)
frame_means: Callable | None = _compile(_frame_means_py)
quadratic_form: Callable | None = _compile(_quadratic_form_py)
_std_ramp = _compile(_std_ramp) or _std_ramp  # (what the two passes below call)
photometric: Callable | None = _compile(_photometric_py)
code_uniformity: Callable | None = _compile(_code_uniformity_py)
gated_complement: Callable | None = _compile(_gated_complement_py)
gabor_pair: Callable | None = _compile(_gabor_pair_py)
gabor_single: Callable | None = _compile(_gabor_single_py)
_frequency = _compile(_frequency) or _frequency  # (what _spectrum_sums_py calls)
_bucket = _compile(_bucket) or _bucket  # (what _spectrum_sums_py and _top_sum call)
_top_sum = _compile(_top_sum) or _top_sum  # (what _spectrum_sums_py calls)
spectrum_sums: Callable | None = _compile(_spectrum_sums_py)
frame_maps: Callable | None = _compile(_frame_maps_py)
otsu_masked: Callable | None = _compile(_otsu_masked_py)

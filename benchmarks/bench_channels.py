"""Time the six spectral channels on a 512² tile: fast vs the reference oracle, one thread.

Prints milliseconds per channel and in total for the fast implementation (best of several
repeats) and for the straightforward reference (one run), the speed-up, and the agreement
between the two. The texture levels are never finer than the tile, so the cost depends on
the ground resolution: the default runs 0.15 m and 0.3 m tiles. The process calls
``channels.tune_allocator()`` first, as a precompute worker should (``--default-allocator``
shows glibc's defaults). Asserts nothing.

    python benchmarks/bench_channels.py [--size 512] [--gsd 0.15 0.3] [--repeat 20]
                                        [--no-reference] [--default-allocator]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.unit._reference_spectral

from solardesk_spectral import channels as ch  # noqa: E402


def make_tile(size: int, gsd: float, seed: int) -> np.ndarray:
    """A synthetic scene from :mod:`solardesk.synthetic` if present, else numpy panels."""
    try:
        from solardesk.synthetic import SceneSpec, generate_scene

        scene = generate_scene(SceneSpec(height=size, width=size, gsd=gsd, seed=seed))
        return np.ascontiguousarray(scene.image[:3].transpose(1, 2, 0))
    except ImportError:
        from tests.unit.test_spectral_channels import module_scene

        return module_scene(size, gsd, seed)


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def stages(rgb: np.ndarray, gsd: float) -> dict[str, float]:
    """One pass through the stages of compute_channels, each timed (ms)."""
    clock = time.perf_counter
    out = np.empty((6, *rgb.shape[:2]), np.float32)
    times: dict[str, float] = {}
    t0 = clock()
    t = ch._Tile(rgb, gsd, None, None)
    p = t.p
    for target in (ch._texture_grid(t), *(q / p.gabor_px_per_period for q in p.gabor_periods_m)):
        t.level(target)
    times["grey + levels"] = clock() - t0
    t0 = clock()
    t.finish(ch._fft_periodicity(t), out[0])
    times["fft_periodicity"] = clock() - t0
    t0 = clock()
    t.finish(ch._lbp_uniformity(t), out[1])
    times["lbp_uniformity"] = clock() - t0
    t0 = clock()
    energy, coherence = ch._gabor(t)
    t.finish(energy, out[2])
    t.finish(coherence, out[3])
    times["gabor energy + coherence"] = clock() - t0
    t0 = clock()
    t.finish(ch._photometric(t), out[4])
    times["photometric_index"] = clock() - t0
    t0 = clock()
    t.finish(ch._edges_morphology(t), out[5])
    times["edges_morphology"] = clock() - t0
    return {k: 1e3 * v for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--gsd", type=float, nargs="+", default=[0.15, 0.3])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc thresholds alone (see channels.tune_allocator)",
    )
    args = ap.parse_args()
    cv2.setNumThreads(1)
    tuned = False if args.default_allocator else ch.tune_allocator()
    print(f"OpenCV {cv2.__version__}, threads {cv2.getNumThreads()}, numpy {np.__version__}")
    print(f"allocator tuned (channels.tune_allocator): {tuned}")
    for gsd in args.gsd:
        rgb = make_tile(args.size, gsd, args.seed)
        print(f"\n== {args.size}² tile at {gsd} m/px ==")
        runs = [stages(rgb, gsd) for _ in range(args.repeat)]
        fast = {k: min(r[k] for r in runs) for k in runs[0]}
        total = best_ms(lambda rgb=rgb, gsd=gsd: ch.compute_channels(rgb, gsd), args.repeat)
        ref_t: dict[str, float] = {}
        if not args.no_reference:
            from tests.unit import _reference_spectral as ref

            names = ["fft_periodicity", "lbp_uniformity", "gabor energy + coherence"]
            names += ["photometric_index", "edges_morphology"]
            fns = [ref.ref_fft_periodicity, ref.ref_lbp_uniformity]
            fns += [lambda r, g: (ref.ref_gabor_energy(r, g), ref.ref_gabor_coherence(r, g))]
            fns += [ref.ref_photometric_index, ref.ref_edges_morphology]
            for name, fn in zip(names, fns, strict=True):
                t0 = time.perf_counter()
                fn(rgb, gsd)
                ref_t[name] = 1e3 * (time.perf_counter() - t0)
        print(f"{'stage':28s} {'fast ms':>9s} {'reference ms':>13s} {'speed-up':>9s}")
        for k, v in fast.items():
            r = ref_t.get(k)
            rs = f"{r:13.1f} {r / v:8.0f}×" if r else f"{'':13s} {'':9s}"
            print(f"{k:28s} {v:9.2f} {rs}")
        ref_total = sum(ref_t.values())
        print(f"{'sum of stages':28s} {sum(fast.values()):9.2f}")
        line = f"{'compute_channels (best)':28s} {total:9.2f}"
        if ref_t:
            line += f" {ref_total:13.1f} {ref_total / total:8.0f}×"
        print(line)
        print(f"→ {1e3 / total:.0f} tiles/s/core for the six channels alone")
        if ref_t:
            from tests.unit._reference_spectral import reference_channels

            a = ch.compute_channels(rgb, gsd)
            b = reference_channels(rgb, gsd)
            for i, name in enumerate(ch.CHANNEL_NAMES):
                c = np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1]
                print(f"  {name:20s} corr {c:.5f}  max |Δ| {np.abs(a[i] - b[i]).max():.4f}")
            fa, fb = a.mean(0) > 0.3, b.mean(0) > 0.3
            union = (fa | fb).sum()
            print(f"  fused mean > 0.3: IoU {(fa & fb).sum() / union if union else 1.0:.4f}")


if __name__ == "__main__":
    main()

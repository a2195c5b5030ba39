"""Time nnzoo's per-pair metrics against medpy's hd95 on one 256x256x128 pair with several classes.

nnzoo computes Dice, IoU, HD95, HD, ASSD, NSD and volumes of every class in one call
(:func:`nnzoo.pipeline.evaluate.compute_pair_metrics`); the baseline is
``medpy.metric.binary.hd95`` once per class (HD95 only). One run each, single-threaded.

Run: ``python benchmarks/bench_evaluate.py [--classes 5] [--no-scipy]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.ndimage import gaussian_filter

SHAPE = (128, 256, 256)  # numpy z, y, x: a 256x256x128 volume
SPACING = (2.0, 0.8, 0.8)


def make_pair(num_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference and prediction label maps: smooth blobs of different sizes, the prediction shifted and warped."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    noise = gaussian_filter(rng.normal(size=[s // 4 for s in SHAPE]).astype(np.float32), 2.0)
    noise = np.kron(noise / noise.std(), np.ones((4, 4, 4), np.float32))[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for c in range(1, num_classes):
        size = 0.35 - 0.25 * (c - 1) / max(1, num_classes - 2)  # radius fraction: large to small
        centre = np.array([rng.uniform(0.3, 0.7) * s for s in SHAPE])
        radius = np.array([size * s * rng.uniform(0.8, 1.2) for s in SHAPE])
        shift = rng.normal(0, 2.0, 3)
        d_ref = sum(((g - m) / r) ** 2 for g, m, r in zip(grids, centre, radius))
        d_pred = sum(((g - m - s) / (r * 1.05)) ** 2 for g, m, r, s in zip(grids, centre, radius, shift))
        ref[d_ref + 0.15 * noise <= 1.0] = c
        pred[d_pred - 0.15 * noise <= 1.0] = c
    return ref, pred


def main() -> None:
    from medpy.metric.binary import hd95

    from nnzoo.pipeline.evaluate import compute_pair_metrics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=5, help="labels including background (default 5)")
    ap.add_argument("--no-scipy", action="store_true", help="skip the scipy-backend timing")
    args = ap.parse_args()
    ref, pred = make_pair(args.classes)
    labels = list(range(1, args.classes))
    print(f"pair {SHAPE[::-1]} (x,y,z), spacing {SPACING[::-1]} mm, classes {labels}, "
          f"foreground voxels per class {[int((ref == c).sum()) for c in labels]}")

    timings = {}
    for backend in ("edt",) + (() if args.no_scipy else ("scipy",)):
        t0 = time.perf_counter()
        ours = compute_pair_metrics(ref, pred, labels, SPACING, tolerance_mm=2.0, backend=backend)
        timings[backend] = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = {c: hd95(pred == c, ref == c, voxelspacing=SPACING) for c in labels}
    t_medpy = time.perf_counter() - t0

    for c in labels:
        print(f"  class {c}: HD95 nnzoo {ours[c]['HD95']:.4f} mm, medpy {theirs[c]:.4f} mm; "
              f"Dice {ours[c]['Dice']:.4f}, NSD@2mm {ours[c]['NSD']:.4f}, ASSD {ours[c]['ASSD']:.3f} mm")
    print(f"medpy hd95 (HD95 only, {len(labels)} classes): {t_medpy:.2f} s")
    for backend, t in timings.items():
        print(f"nnzoo compute_pair_metrics, {backend} backend (all metrics, all classes): {t:.2f} s "
              f"-> {t_medpy / t:.1f}x faster than medpy")


if __name__ == "__main__":
    main()

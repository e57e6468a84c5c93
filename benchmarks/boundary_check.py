"""Dev script: does `isovol evaluate`'s downstream boundary measure rank reconstructions sensibly on real labels?

On FlyEM training_sample2 (dense proofread neuron labels), the fixed membrane detector (Laplacian of Gaussian,
thresholded at a percentile of its response) runs on the ground truth and on nearest / linear / cubic
reconstructions from every r-th slice, r = 4 and 8; each is scored against the label boundaries (boundary F1,
matched within 1 voxel).  A useful measure puts ground truth on top, then cubic ~ linear > nearest, r = 4 above
r = 8, with room between the ground-truth ceiling and 1 (not saturated).  ``--sweep`` adds a small grid over
the detector's sigma and percentile.

    python benchmarks/boundary_check.py --data ../shared/data/flyem_medulla_fibsem_10nm [--sweep]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows.measures import (
    BOUNDARY_PERCENTILE,
    BOUNDARY_SIGMA,
    boundary_f1,
    detect_boundaries,
    label_boundaries,
)


def interpolate(gt: np.ndarray, factor: int, kind: str) -> np.ndarray:
    low = gt[::factor]
    n_out = (low.shape[0] - 1) * factor + 1
    pad = np.pad(low, ((1, 2), (0, 0), (0, 0)), mode="edge")
    return Interpolation(kind).apply(pad, factor, factor, factor + n_out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with training_sample2/ (FlyEM 10 nm)")
    ap.add_argument("--sweep", action="store_true", help="also a grid over sigma and percentile")
    args = ap.parse_args()
    folder = os.path.join(args.data, "training_sample2")
    gt = np.load(os.path.join(folder, "training_sample2_zyx_uint8.npy"))
    labels = np.load(os.path.join(folder, "groundtruth_bodies_zyx_uint32.npz"))["bodies"]
    n = (gt.shape[0] - 1) // 8 * 8 + 1  # the same compared range for both factors
    truth_b = label_boundaries(labels[:n])
    vols = {"ground truth": gt[:n]}
    for r in (4, 8):
        for kind in ("nearest", "linear", "cubic"):
            vols[f"{kind} r={r}"] = interpolate(gt, r, kind)[:n]
    settings = [(BOUNDARY_SIGMA, BOUNDARY_PERCENTILE)]
    if args.sweep:
        settings += [(s, p) for s in (1.0, 1.5, 2.0, 3.0) for p in (75.0, 85.0, 90.0)
                     if (s, p) != (BOUNDARY_SIGMA, BOUNDARY_PERCENTILE)]
    print(f"training_sample2 {gt.shape}, compared on z < {n}; label boundary voxels {truth_b.mean():.1%}")
    head = ["sigma", "pct", *vols]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for sigma, pct in settings:
        cells = [f"{sigma:g}", f"{pct:g}"]
        for v in vols.values():
            m = boundary_f1(detect_boundaries(v, sigma, pct), truth_b)
            cells.append(f"{m['f1']:.3f}")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

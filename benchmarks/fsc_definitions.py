"""Dev script: which FSC definition gives which numbers on FlyEM (evidence for docs/evaluate.md).

Decimates a 10 nm isotropic FlyEM volume by r, upsamples it by nearest / linear / cubic, and adds a stand-in
for a better method (the ground truth blurred along Z with a Gaussian, at a PSNR_XY about cubic + 2.4 dB).
Prints the FSC resolution of each under several definitions: 3-D or axial-only (|k_z| planes) correlation,
with or without a Hann window, thresholds 0.5 / 0.143 / half-bit, as the period 1/f.

    python benchmarks/fsc_definitions.py --data ../shared/data/flyem_medulla_fibsem_10nm --factor 8
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from scipy.ndimage import gaussian_filter1d

from isovol.pipeline.methods.interp import Interpolation
from isovol.pipeline.metrics import fsc, fsc_resolution, plane_scores


def interpolate(gt: np.ndarray, factor: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth on the compared range, its ``kind`` interpolation from every r-th slice, edges clamped)."""
    low = gt[::factor]
    n_out = (low.shape[0] - 1) * factor + 1
    pad = np.pad(low, ((1, 2), (0, 0), (0, 0)), mode="edge")
    return gt[:n_out], Interpolation(kind).apply(pad, factor, factor, factor + n_out)


def halfbit(freq: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """van Heel & Schatz half-bit curve for the voxel count of each 3-D shell."""
    n = min(shape) // 2
    k = np.arange(n) + 0.5
    count = np.maximum(4 * np.pi * k * k, 1)
    return (0.2071 + 1.9102 / np.sqrt(count)) / (1.2071 + 0.9102 / np.sqrt(count))


def crossing(freq: np.ndarray, curve: np.ndarray, threshold: np.ndarray | float) -> float:
    t = np.broadcast_to(threshold, curve.shape)
    below = np.nonzero(curve[1:] < t[1:])[0]
    if below.size == 0:
        return float(1 / freq[-1])
    i = below[0] + 1
    d0, d1 = curve[i - 1] - t[i - 1], curve[i] - t[i]
    return float(1 / (freq[i - 1] + d0 / (d0 - d1) * (freq[i] - freq[i - 1])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with training_sample1/ (FlyEM 10 nm)")
    ap.add_argument("--sample", default="training_sample1")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--blur", type=float, default=3.5, help="Z sigma (voxels) of the stand-in method")
    args = ap.parse_args()
    gt = np.load(os.path.join(args.data, args.sample, f"{args.sample}_zyx_uint8.npy"))
    r = args.factor
    vols = {}
    for kind in ("nearest", "linear", "cubic"):
        truth, vols[kind] = interpolate(gt, r, kind)
    blurred = np.clip(np.round(gaussian_filter1d(truth.astype(np.float64), args.blur, axis=0)), 0, 255)
    vols[f"gt z-blur {args.blur:g}"] = blurred.astype(np.uint8)
    t = truth.astype(np.float64)
    print(f"{args.sample} {gt.shape}, r = {r}, compared on {truth.shape}; resolution = period 1/f in nm")
    head = ["method", "PSNR_XY", "3D hann .5", "3D hann .143", "3D hann 1/2bit", "3D none .5", "axial hann .5",
            "axial none .5"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, v in vols.items():
        xy = plane_scores(truth, v, r, with_ssim=False)["XY"]["psnr"]
        cells = [name, f"{xy:.2f}"]
        f, c = fsc(t, v.astype(np.float64), 10.0)
        cells += [f"{crossing(f, c, th):.1f}" for th in (0.5, 0.143, halfbit(f, t.shape))]
        f, c = fsc(t, v.astype(np.float64), 10.0, window=False)
        cells.append(f"{fsc_resolution(f, c):.1f}")
        for window in (True, False):
            f, c = fsc(t, v.astype(np.float64), 10.0, window=window, axial=True)
            cells.append(f"{fsc_resolution(f, c):.1f}")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

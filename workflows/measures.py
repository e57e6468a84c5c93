"""The measures of ``isovol evaluate`` (docs/evaluate.md): PSNR / SSIM per plane and FSC against the ground truth,
the boundary F1 of a fixed classical membrane detector, the FSC plot, and the planes the comparison figure shows."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..pipeline.metrics import fsc, fsc_resolution, plane_scores

#: the fixed membrane detector of the downstream measure (never tuned per method or per volume)
BOUNDARY_SIGMA = 1.5  # voxels: Laplacian-of-Gaussian scale, about a membrane's imaged half-width at 8-10 nm
BOUNDARY_PERCENTILE = 85.0  # voxels above this percentile of the ridge response are called boundary
BOUNDARY_TOLERANCE = 1  # voxels: a detection within this distance (6-connected) of a true boundary counts



def score(ref: np.ndarray, out: np.ndarray, factor: int, voxel_nm: float = 1.0) -> dict[str, Any]:
    """Per-plane PSNR / SSIM and FSC-0.5 (nm) of ``out`` against ``ref`` (same grid, z = 0 a kept slice).

    Returns {"XY": {"psnr", "ssim"}, "XZ": ..., "YZ": ..., "fsc05_nm": x, "fsc05_axial_nm": x,
    "fsc": {"freq_per_nm", "curve", "axial_curve"}} (the 3-D FSC is the protocol's figure, the axial one a
    diagnostic; see pipeline/metrics.py and docs/evaluate.md);
    PSNR of a perfect plane is ``PSNR_CAP`` dB (the mean stays finite).
    """
    row: dict[str, Any] = plane_scores(ref, out, factor)
    freq, curve = fsc(ref.astype(np.float64), out.astype(np.float64), voxel_nm)
    row["fsc05_nm"] = fsc_resolution(freq, curve)
    afreq, acurve = fsc(ref.astype(np.float64), out.astype(np.float64), voxel_nm, axial=True)
    row["fsc05_axial_nm"] = fsc_resolution(afreq, acurve)
    row["fsc"] = {"freq_per_nm": [float(f) for f in freq], "curve": [float(c) for c in curve],
                  "axial_curve": [float(c) for c in acurve]}
    return row


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another label."""
    b = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        diff = labels[tuple(lo)] != labels[tuple(hi)]
        b[tuple(lo)] |= diff
        b[tuple(hi)] |= diff
    return b


def detect_boundaries(volume: np.ndarray, sigma: float = BOUNDARY_SIGMA,
                      percentile: float = BOUNDARY_PERCENTILE) -> np.ndarray:
    """The fixed classical membrane detector: Laplacian-of-Gaussian ridge response (membranes are dark sheets,
    so the LoG is large and positive on them), thresholded at a fixed percentile of the volume's response."""
    response = ndimage.gaussian_laplace(volume.astype(np.float32), sigma, mode="reflect")
    return response > np.percentile(response, percentile)


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance: int = BOUNDARY_TOLERANCE) -> dict[str, float]:
    """Precision, recall and F1 of boundary voxels, each side matched within ``tolerance`` voxels."""
    struct = ndimage.generate_binary_structure(3, 1)
    near_truth = ndimage.binary_dilation(truth, struct, iterations=tolerance) if tolerance else truth
    near_pred = ndimage.binary_dilation(pred, struct, iterations=tolerance) if tolerance else pred
    precision = float((pred & near_truth).sum() / max(pred.sum(), 1))
    recall = float((truth & near_pred).sum() / max(truth.sum(), 1))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1)}


# -- the FSC plot, drawn with Pillow (matplotlib is not a dependency) -----------------------------------------

COLOURS = [(0, 0, 0), (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]


def fsc_plot(curves: dict[str, dict[str, list[float]]], path: str, voxel_nm: float, width: int = 640,
             height: int = 420) -> None:
    """FSC curves against spatial frequency (up to Nyquist), the 0.5 threshold, one colour per curve, a legend."""
    from PIL import Image, ImageDraw

    from .figures import save_png

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 30, height - 50
    fmax = 0.5 / voxel_nm
    ymin, ymax = -0.2, 1.05

    def px(f: float, c: float) -> tuple[float, float]:
        c = min(max(c, ymin), ymax)
        return (left + (right - left) * f / fmax, bottom - (bottom - top) * (c - ymin) / (ymax - ymin))

    d.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for c in (0.0, 0.5, 1.0):
        _, yy = px(0, c)
        d.line((left - 4, yy, left, yy), fill=(0, 0, 0))
        d.text((left - 34, yy - 6), f"{c:.1f}", fill=(0, 0, 0))
    for i in range(5):
        f = fmax * i / 4
        xx, _ = px(f, ymin)
        d.line((xx, bottom, xx, bottom + 4), fill=(0, 0, 0))
        d.text((xx - 14, bottom + 6), f"{f:.3f}", fill=(0, 0, 0))
        if f > 0:
            d.text((xx - 14, bottom + 18), f"{1 / f:.0f} nm", fill=(110, 110, 110))
    d.text(((left + right) // 2 - 70, height - 16), "spatial frequency (1/nm)", fill=(0, 0, 0))
    d.text((left, 8), "Fourier shell correlation vs ground truth", fill=(0, 0, 0))
    x0, y5 = px(0, 0.5)
    x1, _ = px(fmax, 0.5)
    for xs in range(int(x0), int(x1), 8):  # dashed 0.5 threshold
        d.line((xs, y5, min(xs + 4, x1), y5), fill=(120, 120, 120))
    d.text((x1 - 60, y5 - 14), "FSC = 0.5", fill=(120, 120, 120))
    for i, (name, c) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [px(f, v) for f, v in zip(c["freq_per_nm"], c["curve"])]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        ly = top + 10 + 16 * i
        d.line((right - 170, ly + 6, right - 150, ly + 6), fill=colour, width=3)
        d.text((right - 144, ly), name[:24], fill=colour)
    save_png(img, path)


class OrthoViews:
    """The three planes the comparison figure shows (XY at ``z``, XZ and YZ through the centre) of a volume that
    need not stay in memory; indexable like the volume for exactly those planes."""

    def __init__(self, volume: np.ndarray, z: int):
        self.shape = volume.shape
        self.z, self.y, self.x = z, volume.shape[1] // 2, volume.shape[2] // 2
        self.xy = volume[z].copy()
        self.xz = volume[:, self.y, :].copy()
        self.yz = volume[:, :, self.x].copy()

    def __getitem__(self, key: Any) -> np.ndarray:
        full = slice(None)
        if key == self.z:
            return self.xy
        if isinstance(key, tuple) and len(key) == 3 and key[0] == full:
            if key[1] == self.y and key[2] == full:
                return self.xz
            if key[1] == full and key[2] == self.x:
                return self.yz
        raise IndexError(f"only the figure's planes are kept, not {key!r}")

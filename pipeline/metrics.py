"""Image quality per plane, as the evaluation protocol defines it.

PSNR and SSIM use the dtype's data range (255 for uint8) and are averaged over planes: XY over the
synthesised slices only (kept slices are exact copies and would inflate the score), XZ and YZ over all
planes.  A plane identical to the reference has infinite PSNR; the mean then is reported capped at
``PSNR_CAP`` dB so tables stay finite.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

PSNR_CAP = 100.0


def data_range(dtype: np.dtype) -> float:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max - min(np.iinfo(dtype).min, 0))
    return 1.0


def psnr(ref: np.ndarray, test: np.ndarray, drange: float) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * np.log10(drange**2 / mse))


def ssim(ref: np.ndarray, test: np.ndarray, drange: float, sigma: float = 1.5) -> float:
    """Mean SSIM of two 2-D images (Wang et al. 2004, Gaussian window sigma 1.5, K1=0.01, K2=0.03)."""
    x, y = ref.astype(np.float64), test.astype(np.float64)
    c1, c2 = (0.01 * drange) ** 2, (0.03 * drange) ** 2
    f = lambda a: gaussian_filter(a, sigma, truncate=3.5, mode="reflect")  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def plane_scores(ref: np.ndarray, test: np.ndarray, factor: int, with_ssim: bool = True) -> dict[str, dict]:
    """{"XY": {"psnr", "ssim"}, "XZ": ..., "YZ": ...} for volumes on the output grid (z = 0 is a kept slice)."""
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
    drange = data_range(ref.dtype)
    synth = [z for z in range(ref.shape[0]) if z % factor]
    planes = {
        "XY": [(ref[z], test[z]) for z in synth],
        "XZ": [(ref[:, y], test[:, y]) for y in range(ref.shape[1])],
        "YZ": [(ref[:, :, x], test[:, :, x]) for x in range(ref.shape[2])],
    }
    out: dict[str, dict] = {}
    for name, pairs in planes.items():
        row = {"psnr": float(np.mean([psnr(a, b, drange) for a, b in pairs]))}
        if with_ssim:
            row["ssim"] = float(np.mean([ssim(a, b, drange) for a, b in pairs]))
        out[name] = row
    return out

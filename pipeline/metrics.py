"""Image quality per plane, as the evaluation protocol defines it.

PSNR and SSIM use the dtype's data range (255 for uint8) and are averaged over planes: XY over the
synthesised slices only (kept slices are exact copies and would inflate the score), XZ and YZ over all
planes.  A plane identical to the reference has infinite PSNR; the mean then is reported capped at
``PSNR_CAP`` dB so tables stay finite.

FSC (the D2R supplement's definition, eq. 1): one 3-D Fourier shell correlation of the reconstruction against
the ground truth, Hann-windowed, threshold 0.5, resolution = period 1 / f at the crossing.  Why this and not
0.143 / half-bit (criteria for two noisy half-maps, not for a comparison with truth) or an axial-only curve:
it is what the paper and the evaluation protocol (docs/evaluate.md) name, and on FlyEM it is calibrated where
it matters (a +2.4 dB reconstruction reaches about 47 nm).  Decimating Z by r keeps only |k_z| < 1 / (2 r dz);
aliased energy fills the rest of every shell, so interpolation's curve is about k0 / |k| and crosses 0.5 near
|k| = 1 / (r dz): 80 nm at r = 8 on 10 nm data (cubic measures 76 nm), the "80 nm degraded axial resolution" of
the paper.  The axial curve (``axial=True``) is reported beside it as a diagnostic.  docs/evaluate.md has the
measurements.
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


def _hann(shape: tuple[int, ...]) -> np.ndarray:
    window = np.ones((1,) * len(shape))
    for axis, n in enumerate(shape):
        s = [1] * len(shape)
        s[axis] = n
        window = window * np.hanning(n).reshape(s)
    return window


def fsc(ref: np.ndarray, test: np.ndarray, voxel_nm: float = 1.0, *, window: bool = True,
        axial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two volumes on the same isotropic grid (the protocol's FSC).

    Both volumes have their mean removed and are multiplied by a separable 3-D Hann window (``window=False``
    skips it: exact for periodic data, as in the closed-form tests).  The correlation
    ``Re sum F_ref F_test* / sqrt(sum |F_ref|^2 sum |F_test|^2)`` is taken over shells |k| in
    [i, i + 1) / (2 n) cycles per voxel, n = min(shape) // 2, up to Nyquist.  ``axial=True`` bins by |k_z|
    instead (planes of constant axial frequency): the axial-only curve, a diagnostic for Z.

    Returns (spatial frequency in 1/nm at shell centres, correlation per shell).  The resolution is the
    period 1 / f at the 0.5 crossing (:func:`fsc_resolution`); Nyquist is 2 voxels.
    """
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
    w = _hann(ref.shape) if window else 1.0
    fa = np.fft.fftn((ref - ref.mean()) * w)
    fb = np.fft.fftn((test - test.mean()) * w)
    grids = np.meshgrid(*[np.fft.fftfreq(n) for n in ref.shape], indexing="ij", sparse=True)
    radius = np.abs(grids[0]) if axial else np.sqrt(sum(g * g for g in grids))  # cycles per voxel
    radius = np.broadcast_to(radius, ref.shape)
    nshell = min(ref.shape) // 2
    shell = np.floor(radius * 2 * nshell).astype(int)  # width 1 / (2 * nshell) cycles per voxel
    keep = shell < nshell
    idx = shell[keep]
    cross = np.bincount(idx, (fa * np.conj(fb)).real[keep], nshell)
    pa = np.bincount(idx, (np.abs(fa) ** 2)[keep], nshell)
    pb = np.bincount(idx, (np.abs(fb) ** 2)[keep], nshell)
    curve = cross / np.sqrt(np.maximum(pa * pb, 1e-30))
    freq = (np.arange(nshell) + 0.5) / (2 * nshell) / voxel_nm
    return freq, curve


def fsc_resolution(freq: np.ndarray, curve: np.ndarray, threshold: float = 0.5) -> float:
    """Resolution (nm) where the FSC first drops below ``threshold`` (linear interpolation between shells);
    the Nyquist resolution 1 / freq[-1] if it never does."""
    below = np.nonzero(curve[1:] < threshold)[0]
    if below.size == 0:
        return float(1.0 / freq[-1])
    i = below[0] + 1
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
    return float(1.0 / f)


def seam_figure(volume: np.ndarray, block: tuple[int, int, int], factor: int = 1) -> dict[str, object]:
    """How visible the borders of independently computed blocks are: per axis, the mean absolute jump between
    the two voxels either side of each block border (positions b = k * block, 0 < b < n), over the mean absolute
    difference between neighbours inside blocks.  Along Z the interior pairs are those at the borders' phase
    modulo ``factor`` (rows between measured slices differ by phase); along Y and X every interior pair counts.
    Returns {"z"|"y"|"x": {"border", "interior", "ratio"} (axes with a border and interior pairs to compare it
    with), "ratio": the largest (0 when no axis qualifies)}."""
    v = volume.astype(np.float32)
    out: dict[str, object] = {}
    worst = 0.0
    for axis, name in enumerate("zyx"):
        n, b = v.shape[axis], block[axis]
        borders = list(range(b, n, b))
        if not borders:
            continue
        diff = np.abs(np.diff(v, axis=axis))  # diff[i] = |v[i + 1] - v[i]|
        period = factor if axis == 0 else 1
        phase = (borders[0] - 1) % period
        inner = [i for i in range(n - 1) if (i + 1) % b and i % period == phase]
        if not inner:  # every pair of the borders' phase is a border (blocks of r slices): nothing to compare
            continue
        border = float(np.take(diff, [p - 1 for p in borders], axis=axis).mean())
        interior = float(np.take(diff, inner, axis=axis).mean())
        ratio = border / interior if interior > 0 else float("inf")
        out[name] = {"border": border, "interior": interior, "ratio": ratio}
        worst = max(worst, ratio)
    out["ratio"] = worst
    return out

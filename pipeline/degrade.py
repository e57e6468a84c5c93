"""Degradations: evaluation inputs from isotropic volumes, and the axial degradation of the D2R prior.

An axial (XZ/YZ) slice of an anisotropic stack is a sharp image of which only every r-th row was imaged.
D2R (Stage I) teaches a 2D restorer on XY slices degraded the same way: keep every r-th row, upsample that
axis back with the cubic kernel, restore.  :func:`upsample_rows` is the one routine that builds the condition
mu, in training (:func:`degrade_rows` on an XY patch) and in recovery (on the low-resolution rows of a real
XZ/YZ slice); it is the Keys cubic convolution (a = -0.5, edge-replicated taps) of
``isovol.pipeline.methods.interp`` computed with the same float32 operations in the same order, so mu in
training is exactly what ``--method cubic`` gives on a real axial slice.

Row geometry: output row y sits at low-resolution position (y - phase) / r; kept rows (y = phase + j r) are
exact copies.  Rows before the first or after the last kept row have no kept row on one side: they are
extrapolated from the edge-replicated kept rows, the padding the cubic method applies at a volume border.
The trainer avoids them altogether by cropping patches of m*r + 1 rows at phase 0, so that the first and
the last row are kept and every other row lies between two kept rows, as in an axial slice, whose output
spans z in [0, (n - 1) r].
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from .geometry import output_length
from .methods.interp import keys_weights

Image = TypeVar("Image", np.ndarray, torch.Tensor)


def decimate_z(volume: np.ndarray, factor: int) -> tuple[np.ndarray, int]:
    """Keep slices 0, r, 2r, ... (the evaluation protocol); returns them and the covered length (n-1)r+1."""
    low = volume[::factor]
    return low, output_length(low.shape[0], factor)


def patch_rows(factor: int, at_most: int) -> int:
    """The largest m*r + 1 <= ``at_most``: a patch whose first and last rows are both kept at phase 0."""
    return (at_most - 1) // factor * factor + 1


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    return int(factor)


def _work_dtype(dtype: np.dtype | torch.dtype) -> torch.dtype:
    """float32, as the cubic method computes (float64 only for float64 data; it needs no more)."""
    wide = dtype == torch.float64 if isinstance(dtype, torch.dtype) else np.dtype(dtype) == np.float64
    return torch.float64 if wide else torch.float32


def upsample_rows(low: Image, factor: int, *, phase: int = 0, rows: int | None = None) -> Image:
    """Upsample the row axis (axis -2) of ``low`` by ``factor`` with Keys cubic convolution.

    Output row ``y`` sits at position ``(y - phase) / factor`` of the low-resolution rows; ``rows`` (default
    ``phase + (n - 1) * factor + 1``, i.e. up to the last low-resolution row) sets the output height.  Works on
    numpy arrays and torch tensors of any leading shape (a (H, W) slice, a (B, 1, H, W) batch); integer input is
    computed in float32 and returned as float32, without rounding.  Needs at least two low-resolution rows.
    """
    factor = _check_factor(factor)
    if low.ndim < 2:
        raise ValueError(f"expected an image (..., rows, cols), got shape {tuple(low.shape)}")
    n = int(low.shape[-2])
    if n < 2:
        raise ValueError(f"cubic upsampling of rows needs at least 2 rows to interpolate between, got {n}")
    if phase < 0:
        raise ValueError(f"phase must be >= 0, got {phase}")
    rows = phase + (n - 1) * factor + 1 if rows is None else int(rows)
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    is_numpy = isinstance(low, np.ndarray)
    src = torch.from_numpy(np.ascontiguousarray(low)) if is_numpy else low
    work = _work_dtype(low.dtype)
    src = src.to(work)
    out = torch.empty(src.shape[:-2] + (rows, src.shape[-1]), dtype=work, device=src.device)
    y = torch.arange(rows)
    rel = y - phase
    j = torch.div(rel, factor, rounding_mode="floor")  # low-resolution row at or before output row y
    frac = rel - j * factor  # 0 .. factor-1: the same weights as the cubic method's phase
    for q in range(factor):
        sel = frac == q
        if not bool(sel.any()):
            continue
        ys, js = y[sel].to(src.device), j[sel].to(src.device)
        if q == 0 and bool(((js >= 0) & (js < n)).all()):
            out[..., ys, :] = src[..., js, :]  # kept rows: exact copies
            continue
        acc = None
        for offset, w in zip((-1, 0, 1, 2), keys_weights(q / factor)):
            if w == 0.0:
                continue
            tap = src[..., (js + offset).clamp(0, n - 1), :]
            term = torch.tensor(w, dtype=work, device=src.device) * tap
            acc = term if acc is None else acc + term
        out[..., ys, :] = acc
    return out.numpy() if is_numpy else out


def degrade_rows(img: Image, factor: int, phase: int = 0) -> Image:
    """Keep rows ``phase, phase + r, ...`` of ``img`` and upsample that axis back to its height (cubic).

    The axial degradation of D2R: what a sharp XY image looks like when imaged like an XZ/YZ slice and then
    cubic-interpolated.  ``img`` is a (H, W) array or a (..., H, W) tensor; the result has the same shape, in
    float32 (float64 for float64 input).  Kept rows are exact copies; rows after the last kept row (and before
    ``phase``) are extrapolated from edge-replicated kept rows -- crop to ``phase + m * r + 1`` rows
    (:func:`patch_rows`) to have none.  Refused when fewer than two rows would be kept.
    """
    factor = _check_factor(factor)
    if img.ndim < 2:
        raise ValueError(f"expected an image (..., rows, cols), got shape {tuple(img.shape)}")
    h = int(img.shape[-2])
    if not 0 <= phase < factor:
        raise ValueError(f"phase must lie in [0, {factor}), got {phase}")
    if h < phase + factor + 1:
        raise ValueError(f"an image of {h} rows keeps fewer than 2 rows at factor {factor}, phase {phase}; "
                         f"it needs at least {phase + factor + 1} rows")
    return upsample_rows(img[..., phase::factor, :], factor, phase=phase, rows=h)


# ------------------------------------------------------------------------------------- augmentation

#: The 8 symmetries of the square as (transpose first?, flip rows?, flip cols?); code 0 is the identity.
DIHEDRAL = tuple((t, fr, fc) for t in (False, True) for fr in (False, True) for fc in (False, True))


def _flip(img: Image, axis: int) -> Image:
    return np.flip(img, axis) if isinstance(img, np.ndarray) else img.flip(axis)


def _transpose(img: Image) -> Image:
    return np.swapaxes(img, -1, -2) if isinstance(img, np.ndarray) else img.transpose(-1, -2)


def dihedral(img: Image, code: int) -> Image:
    """Apply symmetry ``code`` (0..7) of :data:`DIHEDRAL` to the last two axes: an optional transpose (which
    swaps rows and columns, so any image axis can become the degraded row axis), then flips."""
    t, fr, fc = DIHEDRAL[code]
    if t:
        img = _transpose(img)
    if fr:
        img = _flip(img, -2)
    if fc:
        img = _flip(img, -1)
    return img


def undo_dihedral(img: Image, code: int) -> Image:
    """The inverse of :func:`dihedral` with the same code."""
    t, fr, fc = DIHEDRAL[code]
    if fc:
        img = _flip(img, -1)
    if fr:
        img = _flip(img, -2)
    if t:
        img = _transpose(img)
    return img


def transposes(code: int) -> bool:
    """Whether symmetry ``code`` swaps rows and columns (an (h, w) image becomes (w, h))."""
    return DIHEDRAL[code][0]


def augment(img: Image, rng: np.random.Generator) -> Image:
    """A random flip / 90-degree rotation (one of the 8 symmetries, uniformly) of the last two axes.

    Apply it BEFORE :func:`degrade_rows`: the symmetry decides which image axis is degraded and in which
    direction, and the degradation then acts on clean rows.  A non-square image comes back transposed for half
    the codes; draw the code yourself (``rng.integers(8)``) and use :func:`dihedral` when shapes must agree.
    """
    return dihedral(img, int(rng.integers(len(DIHEDRAL))))


# ---------------------------------------------------------------------------------------------- noise


def add_noise(img: Image, poisson_scale: float = 0.0, gaussian_sigma: float = 0.0,
              rng: np.random.Generator | None = None) -> Image:
    """Poisson-Gaussian noise (D2R section 4.1): ``alpha * Poisson(x / alpha) + N(0, sigma^2)``.

    ``poisson_scale`` (alpha) and ``gaussian_sigma`` are in the image's intensity units (the trainers work in
    [0, 1]).  Off by default: with both zero the image is returned unchanged (the same object).  Negative values
    are clipped to 0 before the Poisson draw; the result is not clipped.  Draws come from ``rng`` (a numpy
    Generator; for tensors it seeds a torch Generator on the tensor's device).
    """
    if poisson_scale < 0 or gaussian_sigma < 0:
        raise ValueError(f"noise parameters must be >= 0, got poisson_scale={poisson_scale}, "
                         f"gaussian_sigma={gaussian_sigma}")
    if poisson_scale == 0 and gaussian_sigma == 0:
        return img
    rng = rng if rng is not None else np.random.default_rng()
    if isinstance(img, np.ndarray):
        x = img.astype(np.float64 if img.dtype == np.float64 else np.float32)
        if poisson_scale > 0:
            x = (poisson_scale * rng.poisson(np.clip(x, 0, None) / poisson_scale)).astype(x.dtype)
        if gaussian_sigma > 0:
            x = x + rng.normal(0.0, gaussian_sigma, size=x.shape).astype(x.dtype)
        return x
    gen = torch.Generator(device=img.device).manual_seed(int(rng.integers(2**63)))
    x = img.to(_work_dtype(img.dtype))
    if poisson_scale > 0:
        x = poisson_scale * torch.poisson(x.clamp_min(0) / poisson_scale, generator=gen)
    if gaussian_sigma > 0:
        x = x + gaussian_sigma * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x

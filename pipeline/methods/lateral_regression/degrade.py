"""The lateral regression's degradation: what a sharp XY patch looks like when imaged like an XZ/YZ plane and filled
back by the classical base interpolation.

Row geometry (as :mod:`isovol.pipeline.degrade`): a patch of ``m*r + 1`` rows keeps rows 0, r, ..., m*r (phase 0),
so its first and last rows are kept and every other row lies between two kept rows, as in an axial plane whose
output spans z in [0, (n - 1) r].

- :func:`base_rows` fills the rows between kept rows with ``linear`` or ``cubic`` interpolation, computed with the
  float32 operations of :class:`isovol.pipeline.methods.interp.Interpolation` in the same order, so the base in
  training is bit for bit what ``isovol upsample --method linear|cubic`` gives along Z for the same rows (before
  the method casts back to the input's dtype); rows beyond the ends use edge-replicated taps, the padding the
  executor applies at a volume border.
- :func:`degrade_patch` makes the kept rows (``pick``: the rows themselves; ``average``: thick-section averaging,
  each kept row the mean of the ``r`` rows around it, as a serial section integrates its thickness) and fills the
  rows between with :func:`base_rows`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from ..interp import phase_weights

Image = TypeVar("Image", np.ndarray, torch.Tensor)

BASES = ("linear", "cubic")
DEGRADATIONS = ("pick", "average")


def check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    return int(factor)


def _work_numpy(dtype: np.dtype) -> type:
    """Interpolation's working type: float32 for 8/16-bit and float32 data, float64 for wider types."""
    dtype = np.dtype(dtype)
    return np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64


def _work_torch(dtype: torch.dtype) -> torch.dtype:
    size = torch.empty((), dtype=dtype).element_size()
    return torch.float32 if size <= 2 or dtype == torch.float32 else torch.float64


def base_rows(low_rows: Image, factor: int, kind: str = "linear") -> Image:
    """Interpolate the row axis (axis -2) of ``low_rows`` (n kept rows) to ``(n - 1) * factor + 1`` rows.

    Output row ``i * factor + p`` is Interpolation's phase-``p`` combination of kept rows i-1..i+2 (taps outside
    clamped to the first / last row); kept rows are exact copies.  numpy arrays and torch tensors of any leading
    shape; the result is float32 (float64 for wide input types), not rounded.
    """
    factor = check_factor(factor)
    if kind not in BASES:
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {kind!r}")
    if low_rows.ndim < 2:
        raise ValueError(f"expected rows of an image (..., rows, cols), got shape {tuple(low_rows.shape)}")
    n = int(low_rows.shape[-2])
    if n < 1:
        raise ValueError("base_rows needs at least one row")
    rows = (n - 1) * factor + 1
    if isinstance(low_rows, np.ndarray):
        work = _work_numpy(low_rows.dtype)
        src = low_rows.astype(work, copy=False)
        out = np.empty(src.shape[:-2] + (rows, src.shape[-1]), dtype=work)
        clamp = np.clip
        zeros = np.zeros
        scalar = work
    else:
        work = _work_torch(low_rows.dtype)
        src = low_rows.to(work)
        out = torch.empty(src.shape[:-2] + (rows, src.shape[-1]), dtype=work, device=src.device)
        clamp = torch.clamp

        def zeros(shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=src.device)

        def scalar(w):
            return torch.tensor(w, dtype=work, device=src.device)

    out[..., 0::factor, :] = src  # kept rows: exact copies
    if n < 2:
        return out
    idx = np.arange(n - 1) if isinstance(src, np.ndarray) else torch.arange(n - 1, device=src.device)
    for phase in range(1, factor):
        taps = [(k - 1, w) for k, w in enumerate(phase_weights(kind, factor, phase)) if w != 0.0]
        acc = zeros(src.shape[:-2] + (n - 1, src.shape[-1]), dtype=work)
        for offset, w in taps:  # Interpolation.apply: acc += work(w) * src[idx + offset], offsets in order
            acc += scalar(w) * src[..., clamp(idx + offset, 0, n - 1), :]
        out[..., phase::factor, :] = acc
    return out


def average_margin(factor: int) -> int:
    """Rows a thick section reaches beyond its centre row on each side: r // 2."""
    return check_factor(factor) // 2


def average_weights(factor: int) -> list[tuple[int, float]]:
    """(row offset, weight) of a section of thickness r centred on its row, summing to r: r rows of weight 1 for
    an odd r; for an even r, rows -r/2..r/2 with half weights at both ends, so the section stays centred."""
    factor = check_factor(factor)
    h = factor // 2
    if factor % 2:
        return [(o, 1.0) for o in range(-h, h + 1)]
    return [(o, 0.5 if abs(o) == h else 1.0) for o in range(-h, h + 1)]


def kept_rows(patch: Image, factor: int, degradation: str = "pick", margin: int = 0) -> Image:
    """The measured rows of ``patch``: rows ``margin + j*r`` of the inner ``m*r + 1`` rows (``margin`` extra rows
    above and below serve the averaging), picked or averaged over the section around each one.  Where fewer than
    ``r // 2`` rows of margin exist, an edge section averages the rows it has (weights renormalised)."""
    factor = check_factor(factor)
    if degradation not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    h = int(patch.shape[-2])
    inner = h - 2 * margin
    if margin < 0 or inner < 1 or (inner - 1) % factor:
        raise ValueError(f"a patch of {h} rows with a margin of {margin} rows does not have m*{factor} + 1 inner "
                         f"rows")
    centres = range(margin, h - margin, factor)
    if degradation == "pick":
        return patch[..., margin : h - margin : factor, :]
    is_numpy = isinstance(patch, np.ndarray)
    src = torch.from_numpy(np.ascontiguousarray(patch)) if is_numpy else patch
    work = _work_torch(src.dtype)
    src = src.to(work)
    rows = []
    for c in centres:
        taps = [(c + o, w) for o, w in average_weights(factor) if 0 <= c + o < h]
        acc = sum(w * src[..., y, :] for y, w in taps)
        rows.append(acc / sum(w for _, w in taps))
    low = torch.stack(rows, dim=-2)
    return low.numpy() if is_numpy else low


def degrade_patch(patch: Image, factor: int, base: str = "linear", degradation: str = "pick",
                  margin: int = 0) -> Image:
    """The base plane of a sharp patch: its kept rows (:func:`kept_rows`) filled back by :func:`base_rows`.

    ``patch`` is (..., margin + m*r + 1 + margin, W); the result is (..., m*r + 1, W) in float32 (float64 for wide
    input types) and lines up with ``patch[..., margin:-margin or None, :]``, the target.  With ``pick`` the kept
    rows are exact copies of the target's rows 0, r, ..., m*r.
    """
    factor = check_factor(factor)
    low = kept_rows(patch, factor, degradation, margin)
    if int(low.shape[-2]) < 2:
        raise ValueError(f"a patch of {patch.shape[-2] - 2 * margin} rows keeps fewer than 2 rows at factor "
                         f"{factor}; it needs at least {factor + 1}")
    return base_rows(low, factor, base)

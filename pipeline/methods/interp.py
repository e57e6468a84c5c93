"""Classical interpolation along Z: nearest, linear and cubic (Keys cubic convolution, a = -0.5).

Each output slice is a fixed weighted sum of at most four input slices, with weights that depend only on
its phase (z mod factor); kept slices (phase 0) are exact copies.  Computed per phase in float32 (float64
for float64 data) with the
same operations whatever the block, so any block decomposition reproduces the single-call result bit for
bit.  Cubic convolution is local (unlike a cubic spline), which is what makes it blockwise-exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Halo, Method, cast_like


def keys_weights(t: float, a: float = -0.5) -> tuple[float, float, float, float]:
    """Keys (1981) cubic convolution weights for taps at -1, 0, 1, 2 and fractional position t."""

    def w(s: float) -> float:
        s = abs(s)
        if s <= 1:
            return (a + 2) * s**3 - (a + 3) * s**2 + 1
        if s < 2:
            return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return 0.0

    return (w(t + 1), w(t), w(1 - t), w(2 - t))


def phase_weights(kind: str, factor: int, phase: int) -> tuple[float, float, float, float]:
    """Weights on input slices i-1, i, i+1, i+2 for output z = i*factor + phase."""
    t = phase / factor
    if kind == "nearest":
        # ties (t = 0.5) go to the later slice, as round-half-up would
        return (0.0, 1.0, 0.0, 0.0) if t < 0.5 else (0.0, 0.0, 1.0, 0.0)
    if kind == "linear":
        return (0.0, 1.0 - t, t, 0.0)
    if kind == "cubic":
        return keys_weights(t)
    raise ValueError(f"unknown interpolation {kind!r}")


class Interpolation(Method):
    """Nearest / linear / cubic interpolation along Z."""

    KINDS = ("nearest", "linear", "cubic")
    working_bytes_per_voxel = 8
    z_split_exact = True  # each output slice is a fixed combination of the input slices around it

    def __init__(self, kind: str):
        if kind not in self.KINDS:
            raise ValueError(f"unknown interpolation {kind!r}")
        self.name = kind
        self.halo = Halo(z=1 if kind == "cubic" else 0)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": self.name, "compute": "float32"}
        if self.name == "cubic":
            cfg["kernel"] = "keys a=-0.5"
        return cfg

    def apply(self, data: np.ndarray, factor: int, start: int, stop: int) -> np.ndarray:
        if data.ndim != 3:
            raise ValueError(f"expected a (z, y, x) stack, got shape {data.shape}")
        out = np.empty((stop - start,) + data.shape[1:], dtype=data.dtype)
        # float32 is exact for 8/16-bit data; wider types need float64 to keep every grey level
        work = np.float32 if data.dtype.itemsize <= 2 or data.dtype == np.float32 else np.float64
        src = data.astype(work, copy=False)
        for phase in range(factor):
            first = start + (phase - start) % factor  # first local index >= start with this phase
            if first >= stop:
                continue
            idx = np.arange(first, stop, factor) // factor  # input slice i of each output slice
            dst = slice(first - start, stop - start, factor)
            weights = phase_weights(self.name, factor, phase)
            if phase == 0:
                out[dst] = data[idx]
                continue
            taps = [(k - 1, w) for k, w in enumerate(weights) if w != 0.0]
            if len(taps) == 1:
                out[dst] = data[idx + taps[0][0]]
                continue
            acc = np.zeros((len(idx),) + data.shape[1:], dtype=work)
            for offset, w in taps:
                acc += work(w) * src[idx + offset]
            out[dst] = cast_like(acc, data.dtype)
        return out


def _entry(kind: str, description: str) -> Any:
    from .registry import Kind, MethodEntry

    def build(_model: None, **options: Any) -> Interpolation:
        if options:
            from ..errors import InputError

            raise InputError(f"method {kind!r} takes no options, got {', '.join(sorted(options))}")
        return Interpolation(kind)

    return MethodEntry(kind, Kind.CLASSICAL, description, build)


ENTRIES = (
    _entry("nearest", "nearest input slice along Z (ties to the later slice)"),
    _entry("linear", "linear interpolation along Z; often the best classical method on EM"),
    _entry("cubic", "Keys cubic convolution along Z (a = -0.5): local, so exactly blockwise"),
)

"""The Z convention of isovol, in one place.

Input slice i sits at output z = i * r; an input of n slices gives (n - 1) * r + 1 output slices; the
output Z voxel size is the input's divided by r and the translation is unchanged.  All arithmetic here is
integer, in voxel index space.
"""

from __future__ import annotations

import numbers

from .errors import InputError

CONVENTION = "input slice i at output z = i*factor; output has (n-1)*factor+1 slices"


def check_factor(factor: object) -> int:
    """Return the factor as int, or refuse it: only integer factors >= 2 are supported."""
    if isinstance(factor, str):
        try:
            factor = float(factor)
        except ValueError:
            raise InputError(f"factor must be an integer >= 2, got {factor!r}") from None
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise InputError(f"factor must be an integer >= 2, got {factor!r}")
    if not float(factor).is_integer():
        raise InputError(f"factor must be an integer >= 2, got {factor!r} (non-integer factors are not supported)")
    if factor < 2:
        raise InputError(f"factor must be an integer >= 2, got {int(factor)}")
    return int(factor)


def output_length(n_in: int, factor: int) -> int:
    """Number of output Z slices for ``n_in`` input slices."""
    return (n_in - 1) * factor + 1


def output_shape(in_shape: tuple[int, int, int], factor: int) -> tuple[int, int, int]:
    return (output_length(in_shape[0], factor), in_shape[1], in_shape[2])


def input_span(z0: int, z1: int, factor: int) -> tuple[int, int]:
    """Input slices [lo, hi) whose positions bracket output slices [z0, z1)."""
    if z1 <= z0:
        raise ValueError(f"empty output range [{z0}, {z1})")
    return z0 // factor, -(-(z1 - 1) // factor) + 1


def output_voxel_size(voxel_size: tuple[float, float, float], factor: int) -> tuple[float, float, float]:
    return (voxel_size[0] / factor, voxel_size[1], voxel_size[2])


def parse_region(text: str | None, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """``Z0:Z1,Y0:Y1,X0:X1`` (empty bounds allowed) -> slices, checked against ``shape``."""
    if not text:
        return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    parts = text.split(",")
    if len(parts) != 3:
        raise InputError(f"--region must be Z0:Z1,Y0:Y1,X0:X1, got {text!r}")
    out = []
    for part, n, axis in zip(parts, shape, "zyx"):
        try:
            a, b = (p.strip() for p in part.split(":"))
            lo, hi = int(a) if a else 0, int(b) if b else n
        except ValueError:
            raise InputError(f"--region must be Z0:Z1,Y0:Y1,X0:X1 with integers, got {text!r}") from None
        if not 0 <= lo < hi <= n:
            raise InputError(f"--region {axis} range {lo}:{hi} lies outside the volume (size {n})")
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


#: how far the output voxel may be from a cube before a run says so (relative difference of Z to Y/X)
ISOTROPY_TOLERANCE = 0.10


def _lateral(voxel_size: tuple[float, float, float]) -> float:
    return (voxel_size[1] + voxel_size[2]) / 2


def auto_factor(voxel_size: tuple[float, float, float] | None, source: str) -> int:
    """``--factor auto``: round(z / xy) of the input's voxel size (xy: the mean of Y and X)."""
    if not voxel_size:
        raise InputError(f"--factor auto needs the voxel size of {source}, which carries none; pass --voxel-size "
                         "Z,Y,X (nm) or an integer --factor")
    ratio = voxel_size[0] / _lateral(voxel_size)
    factor = int(round(ratio))
    if factor < 2:
        raise InputError(f"--factor auto: {source} is already about isotropic (voxel "
                         f"{','.join(f'{v:g}' for v in voxel_size)} nm, z/xy = {ratio:.2f}); nothing to upsample")
    return factor


def anisotropy_warning(voxel_size: tuple[float, float, float] | None, factor: int) -> str | None:
    """One line when the output voxel is more than ISOTROPY_TOLERANCE from a cube, naming the factor that fixes it
    (None when it is close enough, or the voxel size is unknown)."""
    if not voxel_size:
        return None
    out = output_voxel_size(voxel_size, factor)
    off = out[0] / _lateral(out) - 1
    if abs(off) <= ISOTROPY_TOLERANCE:
        return None
    best = max(2, int(round(voxel_size[0] / _lateral(voxel_size))))
    fix = f"--factor {best} (or auto) gives {voxel_size[0] / best:g} nm" if best != factor else \
        "no integer factor does better"
    return (f"the output voxel {','.join(f'{v:g}' for v in out)} nm is {abs(off):.0%} from isotropic; {fix}")

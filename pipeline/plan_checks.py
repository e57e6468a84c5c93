"""Checks of a request that are about the data, not the method: dtypes no method can serve, plans that would
take hours for nothing, outputs far larger than their input, and NaN / inf in float inputs.

Each is one line: a refusal (InputError) before the output is created, or a warning a run prints once."""

from __future__ import annotations

import numpy as np

from .blocks import Block, BlockPlan
from .errors import InputError

#: a plan of more blocks than this whose blocks are smaller than MIN_BLOCK_VOXELS is refused: per-task overhead
#: (a few ms of scheduling, a read, a marker) then dwarfs the work -- --block-shape 1,1,1 planned 3.9 M tasks
MAX_SMALL_BLOCKS = 1000
MIN_BLOCK_VOXELS = 32**3
#: an output more than this many times its input gets a warning with its size.  vEM anisotropy runs from ~2
#: (FIB-SEM) to ~20 (serial sections, array tomography), so real factors stay well below it, while a typo
#: (--factor 10000, or 800 for 80) writes gigabytes from megabytes before anyone looks
GROWTH_WARNING = 64


def check_dtype(dtype: np.dtype) -> None:
    """Refuse dtypes that are not grey values: interpolating them has no meaning or silently drops a part."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        raise InputError("the input is boolean (a mask, not an image): interpolating it gives no mask; "
                         "convert it to uint8 first, or upsample the image it was made from")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"the input is {dtype}: isovol upsamples real grey values and would drop the imaginary "
                         "part; upsample its magnitude (or real and imaginary parts) as float32 instead")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"the input's dtype {dtype} holds no grey values; isovol upsamples integers and floats")


def check_block_count(plan: BlockPlan) -> None:
    """Refuse a plan of very many tiny blocks (hours of overhead for a few MB)."""
    voxels = int(np.prod(plan.block_shape))
    if len(plan) > MAX_SMALL_BLOCKS and voxels < MIN_BLOCK_VOXELS:
        shape = ",".join(map(str, plan.block_shape))
        raise InputError(f"--block-shape {shape} makes {len(plan)} blocks of {voxels} voxels: each task costs more "
                         f"than its work; use blocks of at least {MIN_BLOCK_VOXELS} voxels (e.g. --block-shape "
                         "64,64,64), or leave --block-shape out")


def growth(plan: BlockPlan) -> float:
    """Output bytes over input bytes."""
    return float(np.prod(plan.out_shape)) / float(np.prod(plan.in_shape))


def size_note(plan: BlockPlan) -> str | None:
    """``the output is 4.6 GiB, 9999x the input`` when it grows more than GROWTH_WARNING times, else None."""
    g = growth(plan)
    if g <= GROWTH_WARNING:
        return None
    return f"the output is {_fmt(np.prod(plan.out_shape) * plan.itemsize)}, {g:.0f}x the input (check --factor)"


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def nonfinite_counts(plan: BlockPlan, block: Block, data: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """NaN / inf voxels among the input voxels ``block`` owns (input slice i belongs to the block holding output
    z = i * r, so blocks count each input voxel once) and among its output voxels; (0, 0) for integer data."""
    if not np.issubdtype(data.dtype, np.floating):
        return 0, 0
    r, (z0, y0, x0) = plan.factor, block.in_lo
    ks = [k for k in range(data.shape[0])
          if 0 <= z0 + k < plan.in_shape[0] and block.out_lo[0] <= (z0 + k) * r < block.out_hi[0]]
    ny, nx = block.out_shape[1], block.out_shape[2]
    own = data[ks, block.out_lo[1] - y0 : block.out_lo[1] - y0 + ny, block.out_lo[2] - x0 : block.out_lo[2] - x0 + nx]
    return int(own.size - np.count_nonzero(np.isfinite(own))), int(out.size - np.count_nonzero(np.isfinite(out)))


def nonfinite_warning(inputs: int, outputs: int) -> str | None:
    """One line for the NaN / inf voxels a run met, or None."""
    if not inputs and not outputs:
        return None
    return (f"{inputs} input voxel(s) are NaN or inf and {outputs} output voxel(s) came out NaN or inf (a method "
            "spreads them to neighbouring voxels); replace them in the input (e.g. by 0 or the local mean) and "
            "rerun with --overwrite to avoid that")

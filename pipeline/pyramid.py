"""The multiscale pyramid: 2x mean downsampling in every axis, the level shapes, and where each level lies.

Pixel-centre convention (OME-NGFF, and xarray's reading of it): the scale and translation of a level map the
integer index of a voxel to the physical position of the voxel's centre.  Voxel ``j`` of level ``k`` is the
mean of level-0 voxels ``[2^k j, 2^k (j + 1))``, so its centre lies at level-0 index ``2^k j + (2^k - 1) / 2``:
level ``k`` has scale ``s * 2^k`` and translation ``t + s * (2^k - 1) / 2``.

An odd-sized axis keeps its last voxel: a level has ``ceil(n / 2)`` voxels and the last one averages the
voxels that exist (the same as repeating the edge voxel).  That voxel's centre is then half a level-0 step
off the grid the metadata gives; the OME scale-and-translation form cannot say otherwise, and the error is at
most a quarter of the coarser voxel.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .blocks import Block, Shape3
from .errors import InputError

#: what the multiscales ``type`` says, and its description for the ``metadata`` field
METHOD = "mean"
DESCRIPTION = ("2x2x2 block mean of the level before (integers rounded half to even); the last voxel of an "
               "odd-sized axis averages the voxels that exist; voxel centres at integer indices")


def downsample_mean(data: np.ndarray) -> np.ndarray:
    """Halve every axis of a (z, y, x) block by the mean of each 2x2x2 cube (a cube cut short by an odd edge
    averages what it holds: the edge voxel is repeated).  Each output voxel depends on its own cube only, so any
    block layout whose blocks start at even indices gives exactly the result of one call on the whole level.
    Integers are summed exactly in a wider integer type and rounded half to even; floats are averaged in float64."""
    dtype = np.dtype(data.dtype)
    pad = [(0, n % 2) for n in data.shape]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        # eight values fit: (u)int8 sums in 16 bits (the least memory traffic), 16-bit in 32, 32-bit in 64
        acc = {1: np.uint16 if dtype.kind == "u" else np.int16, 2: np.int32, 4: np.int64}[dtype.itemsize]
        total = data[0::2].astype(acc)
        total += data[1::2]
        total = total[:, 0::2] + total[:, 1::2]
        total = total[:, :, 0::2] + total[:, :, 1::2]
        quotient, rest = total >> 3, total & 7  # floor division by 8 and its remainder, also for negatives
        quotient += (rest > 4) | ((rest == 4) & ((quotient & 1) == 1))  # round half to even
        return quotient.astype(dtype)
    total = data[0::2].astype(np.float64)
    total += data[1::2]
    total = total[:, 0::2] + total[:, 1::2]
    total = total[:, :, 0::2] + total[:, :, 1::2]
    mean = total * 0.125
    if dtype.kind in "iu":  # 64-bit integers: float64 is as exact as the data allows
        info = np.iinfo(dtype)
        mean = np.clip(np.rint(mean), info.min, info.max)
    return mean.astype(dtype)


def half(shape: Shape3) -> Shape3:
    return tuple(-(-n // 2) for n in shape)  # type: ignore[return-value]


def level_shapes(shape: Shape3, chunk: Shape3, levels: int | str | None) -> list[Shape3]:
    """Shapes of levels 1..N after level ``shape``: ``auto`` goes on until a level fits in one ``chunk``;
    an integer asks for exactly that many (refused when the volume has fewer halvings left); 0 or None: none."""
    if levels in (None, 0):
        return []
    out: list[Shape3] = []
    cur = tuple(shape)
    if levels == "auto":
        while any(n > c for n, c in zip(cur, chunk)):
            cur = half(cur)  # type: ignore[arg-type]
            out.append(cur)  # type: ignore[arg-type]
        return out
    if not isinstance(levels, int) or levels < 0:
        raise InputError(f"--levels must be a non-negative integer or auto, got {levels!r}")
    most = max(int(np.ceil(np.log2(n))) for n in shape)  # halvings until every axis is one voxel
    if levels > most:
        raise InputError(f"--levels {levels} is more than the {most} halvings a volume of shape "
                         f"{tuple(shape)} allows")
    for _ in range(levels):
        cur = half(cur)  # type: ignore[arg-type]
        out.append(cur)  # type: ignore[arg-type]
    return out


def parse_levels(text: str | None) -> int | str:
    """``--levels`` as given: ``auto`` or a non-negative integer."""
    if text is None or text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(f"--levels must be a non-negative integer or auto, got {text!r}")
    return value


def level_transform(scale: tuple[float, ...], translation: tuple[float, ...],
                    level: int) -> tuple[list[float], list[float]]:
    """Scale and translation of ``level`` from those of level 0 (voxel centres at integer indices)."""
    f = 2 ** level
    return ([float(s) * f for s in scale],
            [float(t) + float(s) * (f - 1) / 2 for s, t in zip(scale, translation)])


def _down_to_multiple(n: int, step: int) -> int:
    return max(step, n // step * step)


def level_layout(shape: Shape3, chunks: Shape3, shards: Shape3, block: Shape3) -> tuple[Shape3, Shape3, Shape3]:
    """Chunk, shard and block shape of a level from level 0's: the same chunks (clipped to the level), shards and
    blocks half as large in every axis (whole numbers of chunks and shards), so a level's block reads from the
    level before about what a level-0 block holds, and the first level runs as many tasks as level 0 did."""
    c = tuple(min(a, n) for a, n in zip(chunks, shape))
    s = tuple(min(_down_to_multiple(b // 2, cc), -(-n // cc) * cc) for b, n, cc in zip(shards, shape, c))
    b = tuple(min(_down_to_multiple(bb // 2, ss), -(-n // ss) * ss) for bb, n, ss in zip(block, shape, s))
    return c, s, b  # type: ignore[return-value]


@dataclass
class LevelPlan:
    """The blocks of one pyramid level for the executor: output boxes of ``block_shape`` (a whole multiple of
    the level's shard, so one task owns each shard), each reading the box twice its size from the level before.
    Duck-types the parts of :class:`~isovol.pipeline.blocks.BlockPlan` that the executor uses."""

    src_shape: Shape3
    out_shape: Shape3
    block_shape: Shape3
    factor: int = 2

    def __post_init__(self) -> None:
        self.out_shape = tuple(self.out_shape)  # type: ignore[assignment]
        self.block_shape = tuple(min(b, n) for b, n in zip(self.block_shape, self.out_shape))  # type: ignore

    @property
    def grid(self) -> Shape3:
        return tuple(-(-n // b) for n, b in zip(self.out_shape, self.block_shape))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.grid))

    def blocks(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid)):
            lo = tuple(i * b for i, b in zip(index, self.block_shape))
            hi = tuple(min(a + b, n) for a, b, n in zip(lo, self.block_shape, self.out_shape))
            in_lo = tuple(2 * a for a in lo)
            in_hi = tuple(min(2 * b, n) for b, n in zip(hi, self.src_shape))
            yield Block(index, lo, hi, in_lo, in_hi)  # type: ignore[arg-type]

    def local_range(self, block: Block) -> tuple[int, int]:
        return 0, block.out_shape[0]


class Downsample:
    """The pyramid's step as the executor calls a method: a block of the level before in, its mean out."""

    name = f"pyramid-{METHOD}"
    z_split_exact = False  # a block is one task; Z pieces would gain nothing here

    def config(self) -> dict[str, str]:
        return {"name": self.name}

    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        return downsample_mean(data)

"""Block planning in output-voxel index space.

Output blocks are whole multiples of the output shard, so one task owns each shard it writes.  The input
read box of a block is the span of input slices its output lies between, plus the method's halo; boxes
that reach past the volume are edge-padded (policy ``edge``: the border voxel repeats), and that policy
is recorded with the run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .geometry import input_span, output_shape
from .methods.base import Halo

PADDING = "edge"
Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Block:
    """One unit of work: an output box and the (possibly padded) input box it reads."""

    index: Shape3
    out_lo: Shape3
    out_hi: Shape3
    in_lo: Shape3
    in_hi: Shape3

    @property
    def key(self) -> str:
        return ".".join(str(i) for i in self.index)

    @property
    def out_shape(self) -> Shape3:
        return tuple(b - a for a, b in zip(self.out_lo, self.out_hi))  # type: ignore[return-value]

    @property
    def in_shape(self) -> Shape3:
        return tuple(b - a for a, b in zip(self.in_lo, self.in_hi))  # type: ignore[return-value]


def parse_shape(text: str | None, name: str) -> Shape3 | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise InputError(f"{name} must be three positive integers Z,Y,X, got {text!r}")
    return parts  # type: ignore[return-value]


def align_block_shape(block: Shape3, multiple: int | Shape3, shard: Shape3 | None,
                      out_shape: Shape3) -> tuple[Shape3, str | None]:
    """``block`` rounded up, per axis, to a whole multiple of ``multiple`` (a method's tile grid: blocks off it
    would give other voxels than the whole volume in one call) and of ``shard`` when given; an axis the block
    already spans whole is left alone.  Returns the shape and a one-line note when it changed."""
    mult = (multiple,) * 3 if isinstance(multiple, int) else tuple(multiple)
    if max(mult) <= 1:  # any layout gives the same result: the user's shapes stand (and are checked as given)
        return block, None
    step = tuple(math.lcm(m, s) for m, s in zip(mult, shard or (1, 1, 1)))
    aligned = tuple(b if b >= n else -(-b // k) * k for b, k, n in zip(block, step, out_shape))
    if all(min(a, n) == min(b, n) for a, b, n in zip(aligned, block, out_shape)):
        return block, None
    grid = mult[0] if len(set(mult)) == 1 else ",".join(map(str, mult))
    note = (f"block shape {','.join(map(str, block))} rounded up to {','.join(map(str, aligned))}: the method "
            f"works on a tile grid of {grid} voxels, and only blocks on that grid give the whole volume's result")
    return aligned, note  # type: ignore[return-value]


@dataclass
class BlockPlan:
    """The grid of blocks for upsampling ``in_shape`` by ``factor`` with a method of halo ``halo``."""

    in_shape: Shape3
    factor: int
    halo: Halo
    block_shape: Shape3
    shard_shape: Shape3
    chunk_shape: Shape3
    itemsize: int = 1
    working_bytes_per_voxel: int = 8
    out_shape: Shape3 = field(init=False)
    padding: str = PADDING
    #: what the planner changed in the user's request and why (one line each), for a warning
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_shape = output_shape(self.in_shape, self.factor)

    @classmethod
    def build(cls, in_shape: Shape3, factor: int, halo: Halo, *, block_shape: Shape3 | None = None,
              shard_shape: Shape3 | None = None, chunk_shape: Shape3 | None = None, itemsize: int = 1,
              working_bytes_per_voxel: int = 8, block_multiple: int | Shape3 = 1) -> BlockPlan:
        """Choose consistent shapes: chunk divides shard, block is a whole multiple of shard and of the method's
        ``block_multiple`` (rounded up, with a note), all clipped to the output so small volumes get one block
        rather than mostly-empty ones."""
        out = output_shape(in_shape, factor)
        chunk = chunk_shape or (64, 64, 64)
        block = block_shape or shard_shape or (256, 256, 256)
        for name, shp in (("--block-shape", block), ("--shard-shape", shard_shape or block),
                          ("--chunk-shape", chunk)):
            if len(shp) != 3 or min(shp) < 1:
                raise InputError(f"{name} must be three positive integers, got {shp}")
        block, note = align_block_shape(block, block_multiple, shard_shape, out)
        shard = shard_shape or block
        if any(b % s for b, s in zip(block, shard)):
            raise InputError(f"block shape {block} must be a whole multiple of the shard shape {shard}")
        if any(s % c for s, c in zip(shard, chunk)) and chunk_shape is not None:
            raise InputError(f"shard shape {shard} must be a whole multiple of the chunk shape {chunk}")
        shard = tuple(min(s, n) for s, n in zip(shard, out))
        block = tuple(min(b, n) for b, n in zip(block, out))  # a clipped block spans its whole axis
        chunk = tuple(c if (c <= s and s % c == 0) else s for c, s in zip(chunk, shard))
        return cls(tuple(in_shape), factor, halo, block, shard, chunk, itemsize,  # type: ignore[arg-type]
                   working_bytes_per_voxel, notes=[note] if note else [])

    @property
    def grid(self) -> Shape3:
        return tuple(-(-n // b) for n, b in zip(self.out_shape, self.block_shape))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.grid))

    def block(self, index: Shape3) -> Block:
        lo = tuple(i * b for i, b in zip(index, self.block_shape))
        hi = tuple(min(a + b, n) for a, b, n in zip(lo, self.block_shape, self.out_shape))
        return self._box(index, lo, hi)  # type: ignore[arg-type]

    def _box(self, index: Shape3, lo: Shape3, hi: Shape3) -> Block:
        z_lo, z_hi = input_span(lo[0], hi[0], self.factor)
        h = self.halo
        in_lo = (z_lo - h.z, lo[1] - h.y, lo[2] - h.x)
        in_hi = (z_hi + h.z, hi[1] + h.y, hi[2] + h.x)
        return Block(tuple(index), tuple(lo), tuple(hi), in_lo, in_hi)  # type: ignore[arg-type]

    def z_pieces(self, block: Block) -> list[Block]:
        """``block`` cut along Z at its shard boundaries, each piece with its own input box (same key): the units
        the executor pipelines inside one task.  Y/X stay whole, so tile grids inside a piece are the block's."""
        step = self.shard_shape[0]
        lo, hi = block.out_lo, block.out_hi
        return [self._box(block.index, (z, lo[1], lo[2]), (min(z + step, hi[0]), hi[1], hi[2]))
                for z in range(lo[0], hi[0], step)]

    def blocks(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid)):
            yield self.block(index)  # type: ignore[arg-type]

    def local_range(self, block: Block) -> tuple[int, int]:
        """Output slices of ``block`` in the local index space of its input stack."""
        base = block.in_lo[0] * self.factor
        return block.out_lo[0] - base, block.out_hi[0] - base

    def max_block_bytes(self) -> dict[str, int]:
        """Largest input, output and working buffers of any block, and their sum (peak per task)."""
        full_out = tuple(min(s, n) for s, n in zip(self.block_shape, self.out_shape))
        # a block of L output slices starting at phase p spans ceil((p + L - 1) / r) + 1 input slices; worst p = r - 1
        span = min(-(-(full_out[0] + self.factor - 2) // self.factor) + 1, self.in_shape[0])
        zin = span + 2 * self.halo.z
        in_vox = zin * (full_out[1] + 2 * self.halo.y) * (full_out[2] + 2 * self.halo.x)
        out_vox = int(np.prod(full_out))
        sizes = {
            "input": in_vox * self.itemsize,
            "output": out_vox * self.itemsize,
            "working": out_vox * self.working_bytes_per_voxel,
        }
        sizes["peak"] = sum(sizes.values())
        return sizes

    def describe(self) -> dict[str, object]:
        sizes = self.max_block_bytes()
        return {
            "input_shape": list(self.in_shape),
            "output_shape": list(self.out_shape),
            "factor": self.factor,
            "block_shape": list(self.block_shape),
            "shard_shape": list(self.shard_shape),
            "chunk_shape": list(self.chunk_shape),
            "grid": list(self.grid),
            "tasks": len(self),
            "halo": [self.halo.z, self.halo.y, self.halo.x],
            "padding": self.padding,
            "output_bytes": int(np.prod(self.out_shape)) * self.itemsize,
            "block_bytes": sizes,
        }

"""The method interface: anything that maps an input block (with halo) to its output block.

A method knows nothing about zarr, dask or blocks on disk.  It receives a stack of input slices that
already carries its declared halo (edge-padded at the volume border by the caller) and returns the
requested output slices without the Y/X halo.  Local output index j corresponds to input position
j / factor, counted from the first slice of the stack it was given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Halo:
    """Extra context a method needs around the slices its output spans: Z in input slices, Y/X in pixels."""

    z: int = 0
    y: int = 0
    x: int = 0


class Method(ABC):
    """Maps input slices to the output slices between them."""

    name: str = "method"
    halo: Halo = Halo()
    #: True when the output depends only on the input (no seed); then any block layout is bit-exact.
    deterministic: bool = True
    #: True when computing a block's output slices in Z pieces gives exactly the whole block's result (each output
    #: slice depends only on input slices around it, never on where the Z range starts); the executor then pipelines
    #: a block's shards (read the next, write the previous, compute the current) inside one task.
    z_split_exact: bool = False
    #: Hash of the model weights, or None for methods without a model.
    model_hash: str | None = None
    #: The tile grid (output voxels, one number or Z,Y,X) that blocks must be whole multiples of for the result not
    #: to depend on the block layout; the planner rounds block shapes up to it (1: any block shape).
    block_multiple: int | tuple[int, int, int] = 1
    #: Bytes of working memory per output voxel, on top of input and output buffers (for planning).
    working_bytes_per_voxel: int = 8

    def config(self) -> dict[str, Any]:
        """Everything that changes the result; goes into the run hash and the provenance."""
        return {"name": self.name}

    def preferred_block_shape(self, out_shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """The block shape to use when the user gives none (None: the planner's default)."""
        return None

    def preferred_shard_shape(self, block: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        """The shard shape to use with the preferred ``block`` when the user gives neither (None: the block)."""
        return None

    def check_factor(self, factor: int) -> None:  # noqa: B027 - a hook: most methods serve any factor
        """Refuse (InputError) a factor this method cannot serve, before any output is created."""

    def check_input(self, dtype: np.dtype) -> None:  # noqa: B027 - a hook: most methods serve any dtype
        """Refuse (InputError) an input dtype this method cannot serve, before any output is created."""

    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        """``apply`` for a stack whose first voxel sits at global input index ``origin`` (z, y, x; may be
        negative where the caller padded).  Methods whose result depends on where a block lies (seeded noise,
        a global tile grid) override this; the executor always calls it."""
        return self.apply(data, factor, start, stop)

    @abstractmethod
    def apply(self, data: np.ndarray, factor: int, start: int, stop: int) -> np.ndarray:
        """Output slices [start, stop) (local indices) for the stack ``data`` (z, y, x), Y/X halo removed:
        shape (stop - start, y - 2 * halo.y, x - 2 * halo.x)."""


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results to the input dtype: round and clip for integers, plain cast for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)


def upsample_array(volume: np.ndarray, factor: int, method: Method) -> np.ndarray:
    """The single in-memory reference: the whole volume in one call, padded like the executor pads."""
    h = method.halo
    padded = np.pad(volume, ((h.z, h.z + 1), (h.y, h.y), (h.x, h.x)), mode="edge")
    n = volume.shape[0]
    return method.apply_at(padded, factor, h.z * factor, (h.z + n - 1) * factor + 1, (-h.z, -h.y, -h.x))

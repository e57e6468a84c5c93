"""The ``Volume`` interface every input reader implements (``readers.py``, ``file_readers.py``): a 3-D array read
lazily, picklable, with its voxel size and translation in nanometres."""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import InputError
from .urls import remember_secrets, strip_url

Box = tuple[slice, slice, slice]
Vec3 = tuple[float, float, float]


class Volume(ABC):
    """A 3-D (z, y, x) array read lazily, with voxel size and translation in nanometres."""

    kind = "volume"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        remember_secrets(self.storage_options)  # masked in every message of this process
        self.shape: tuple[int, int, int] = (0, 0, 0)
        self.dtype: np.dtype = np.dtype("uint8")
        self.voxel_size: Vec3 | None = None
        self.translation: Vec3 = (0.0, 0.0, 0.0)
        self.region: list[list[int]] | None = None  # the box of the source volume, when this is a part of it
        self._handle: Any = None

    # -- pickling: never ship open handles -------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __repr__(self) -> str:  # storage options stay out: they may hold credentials
        return f"{type(self).__name__}({strip_url(self.url)!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def handle(self) -> Any:
        if self._handle is None:
            remember_secrets(self.storage_options)  # a worker's copy: masked in its messages too
            self._handle = self._open()
        return self._handle

    @abstractmethod
    def _open(self) -> Any:
        """Open the underlying handle (file, zarr array, filesystem) in this process."""

    @abstractmethod
    def _read(self, box: Box) -> np.ndarray:
        """Read an in-range box."""

    def read(self, box: Box) -> np.ndarray:
        """Read a box that lies inside the volume (slices with explicit, in-range bounds)."""
        return np.ascontiguousarray(self._read(box))

    def read_padded(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
        """Read [lo, hi) which may extend past the volume; outside voxels repeat the edge voxel."""
        clo = [min(max(a, 0), n - 1) for a, n in zip(lo, self.shape)]
        chi = [max(min(b, n), c + 1) for b, n, c in zip(hi, self.shape, clo)]
        data = self.read(tuple(slice(a, b) for a, b in zip(clo, chi)))
        pad = [(ca - a, b - cb) for a, b, ca, cb in zip(lo, hi, clo, chi)]
        if any(p != (0, 0) for p in pad):
            data = np.pad(data, pad, mode="edge")
        return data

    def __getitem__(self, key: Any) -> np.ndarray:
        """numpy-style reads (for dask.array.from_array and quick looks)."""
        if not isinstance(key, tuple):
            key = (key,)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        key = tuple(k if isinstance(k, slice) else _int_index(k, n) for k, n in zip(key, self.shape))
        if any(isinstance(k, slice) and k.step is not None and k.step < 0 for k in key):
            raise IndexError("negative steps are not supported; read forward and reverse the result")
        box = tuple(slice(*k.indices(n)[:2]) if isinstance(k, slice) else slice(k, k + 1)
                    for k, n in zip(key, self.shape))
        out = self.read(box)
        drop = tuple(0 if not isinstance(k, slice) else slice(None) for k in key)
        steps = tuple(slice(None, None, k.step) if isinstance(k, slice) else slice(None) for k in key)
        return out[steps][drop]

    @property
    def ndim(self) -> int:
        return 3

    def to_dask(self, chunks: tuple[int, int, int] = (64, 256, 256)):
        import dask.array as da

        return da.from_array(self, chunks=tuple(min(c, n) for c, n in zip(chunks, self.shape)),
                             asarray=False, fancy=False)

    def to_xarray(self, chunks: tuple[int, int, int] = (64, 256, 256)):
        """An xarray view with physical coordinates in nanometres (voxel centres)."""
        import xarray as xr

        vs = self.voxel_size or (1.0, 1.0, 1.0)
        coords = {d: self.translation[i] + vs[i] * np.arange(self.shape[i]) for i, d in enumerate("zyx")}
        da_ = xr.DataArray(self.to_dask(chunks), dims=("z", "y", "x"), coords=coords, name="intensity")
        for d in "zyx":
            da_[d].attrs["units"] = "nm" if self.voxel_size else "voxel"
        return da_


def _int_index(k: Any, n: int) -> int:
    """An integer index as numpy reads it: negative counts from the end, out of range is an IndexError."""
    i = operator.index(k)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {k} is out of bounds for axis with size {n}")
    return i


def squeeze_shape(shape: tuple[int, ...], url: str) -> tuple[int, tuple[int, int, int]]:
    """Allow leading singleton axes (t, c); anything else but 3-D is refused."""
    lead = len(shape) - 3
    if lead < 0 or any(s != 1 for s in shape[:lead]):
        raise InputError(f"{strip_url(url)} is not a 3-D volume (shape {tuple(shape)}); isovol needs (z, y, x)")
    if min(shape[lead:]) < 1:
        raise InputError(f"{strip_url(url)} is empty (shape {tuple(shape)})")
    return lead, tuple(int(s) for s in shape[lead:])  # type: ignore[return-value]

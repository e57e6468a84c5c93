"""Lazy readers for 3-D input volumes: zarr v2/v3 and OME-Zarr, npy, and (``file_readers.py``) TIFF, folders of
TIFF slices and HDF5.

Every reader is picklable: it carries only its URL and options and reopens its file handle lazily in
whatever process reads from it, so a worker receives a reader, not data.
"""

from __future__ import annotations

import ast
import posixpath
from typing import Any

import numpy as np

from ..errors import InputError
from .damage import read_or_name_damage
from .file_readers import Hdf5Volume, TiffFolderVolume, TiffVolume
from .ome import level0, multiscales
from .runrecord import META_DIR, refuse_unfinished
from .urls import describe_error, filesystem, is_local, local_path, strip_url
from .volume import Box, Vec3, Volume, squeeze_shape


class ZarrVolume(Volume):
    """zarr v2 or v3 array, or level 0 of an OME-Zarr image (0.4 or 0.5)."""

    kind = "zarr"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        super().__init__(url, storage_options)
        self.array_path: str | None = None
        import zarr

        node = zarr.open(store=self._store(), mode="r")
        if isinstance(node, zarr.Group):
            ms = multiscales(dict(node.attrs))
            if not ms:
                arrays = sorted(name for name, _ in node.arrays())
                hint = f"; arrays here: {', '.join(arrays)} (append /NAME to the URL)" if arrays else ""
                raise InputError(f"{strip_url(url)} is a zarr group without OME multiscales{hint}")
            path, axes, scale, trans = level0(ms[0])
            self.array_path = path
            arr = node[path]
            self.voxel_size = tuple(scale[-3:])  # type: ignore[assignment]
            self.translation = tuple(trans[-3:])  # type: ignore[assignment]
        else:
            arr = node
            vs = dict(arr.attrs).get("voxel_size") or dict(arr.attrs).get("resolution")
            if isinstance(vs, (list, tuple)) and len(vs) == 3:
                self.voxel_size = tuple(float(v) for v in vs)  # type: ignore[assignment]
        self._lead, self.shape = squeeze_shape(arr.shape, url)
        self.dtype = np.dtype(arr.dtype)
        self._handle = arr

    def _store(self):
        from zarr.storage import FsspecStore, LocalStore

        if is_local(self.url):
            return LocalStore(local_path(self.url), read_only=True)
        return FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=True)

    def _open(self) -> Any:
        import zarr

        node = zarr.open(store=self._store(), mode="r")
        return node[self.array_path] if self.array_path else node

    def _read(self, box: Box) -> np.ndarray:
        name = strip_url(self.url) + (f"/{self.array_path}" if self.array_path else "")
        return read_or_name_damage(self.handle, (0,) * self._lead + box, name)  # one line for a damaged chunk


class NpyVolume(Volume):
    """A .npy file: memory-mapped when local, byte ranges of Z slabs when remote."""

    kind = "npy"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        super().__init__(url, storage_options)
        fs, path = filesystem(url, self.storage_options)
        with fs.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran:
            raise InputError(f"{strip_url(url)} is a Fortran-ordered .npy; save it C-ordered (np.ascontiguousarray)")
        if dtype.hasobject:
            raise InputError(f"{strip_url(url)} holds Python objects; isovol reads numeric arrays only")
        self._lead, self.shape = squeeze_shape(shape, url)
        self.dtype = np.dtype(dtype)
        need = self._offset + int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        size = int(fs.size(path))
        if size < need:  # a cut copy: every block would fail on its own, after the output was made
            raise InputError(f"{strip_url(url)} is truncated: {size} bytes, its header needs {need}")

    def _open(self) -> Any:
        if is_local(self.url):
            return np.load(local_path(self.url), mmap_mode="r", allow_pickle=False).reshape(self.shape)
        fs, path = filesystem(self.url, self.storage_options)
        return (fs, path)

    def _read(self, box: Box) -> np.ndarray:
        h = self.handle
        if isinstance(h, np.ndarray):
            return h[box]
        fs, path = h
        slab = self.shape[1] * self.shape[2] * self.dtype.itemsize
        z0, z1 = box[0].start, box[0].stop
        raw = fs.cat_file(path, start=self._offset + z0 * slab, end=self._offset + z1 * slab)
        arr = np.frombuffer(raw, dtype=self.dtype).reshape((z1 - z0,) + self.shape[1:])
        return arr[:, box[1], box[2]]


class RegionVolume(Volume):
    """A box of another volume, itself a volume: reads are shifted, the translation moves with the box."""

    kind = "region"

    def __init__(self, base: Volume, box: tuple[slice, slice, slice]):
        super().__init__(base.url, base.storage_options)
        self.base = base
        self.offset = tuple(int(b.start) for b in box)
        self.shape = tuple(int(b.stop - b.start) for b in box)  # type: ignore[assignment]
        self.dtype = base.dtype
        self.voxel_size = base.voxel_size
        vs = base.voxel_size or (1.0, 1.0, 1.0)
        self.translation = tuple(t + o * v for t, o, v in zip(base.translation, self.offset, vs))  # type: ignore
        self.region = [[b.start, b.stop] for b in box]

    def _open(self) -> Any:
        return self.base

    def _read(self, box: Box) -> np.ndarray:
        return self.base.read(tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, self.offset)))


_H5_EXT = (".h5", ".hdf5", ".hdf", ".he5")


def _split_h5(url: str) -> tuple[str, str | None]:
    low = url.lower()
    for ext in _H5_EXT:
        i = low.find(ext + ":")
        if i >= 0:
            return url[: i + len(ext)], url[i + len(ext) + 1 :].lstrip("/") or None
    return url, None


def open_volume(url: str, storage_options: dict[str, Any] | None = None,
                voxel_size: Vec3 | None = None) -> Volume:
    """Open any supported input lazily; ``voxel_size`` (nm, z/y/x) overrides what the file says."""
    options = dict(storage_options or {})
    shown = strip_url(url)
    try:
        vol = _dispatch(url, options)
    except InputError:
        raise
    except Exception as exc:  # storage and format errors become one clear line
        raise InputError(f"cannot read {shown}: {describe_error(exc)}") from None
    if voxel_size is not None:
        vol.voxel_size = tuple(float(v) for v in voxel_size)  # type: ignore[assignment]
    return vol


def _dispatch(url: str, options: dict[str, Any]) -> Volume:
    file_url, dataset = _split_h5(url)
    fs, path = filesystem(file_url, options)
    if not fs.exists(path):
        raise InputError(f"input not found: {strip_url(url)}")
    low = path.lower().rstrip("/")
    if low.endswith(_H5_EXT):
        return Hdf5Volume(file_url, options, dataset)
    if low.endswith(".npy"):
        return NpyVolume(url, options)
    if low.endswith((".tif", ".tiff")):
        return TiffVolume(url, options)
    if fs.isdir(path):
        names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
        refuse_unfinished(fs, path, strip_url(url), here=META_DIR in names)
        if names & {"zarr.json", ".zarray", ".zgroup"}:
            return ZarrVolume(url, options)
        if any(n.lower().endswith((".tif", ".tiff")) for n in names):
            return TiffFolderVolume(url, options)
        raise InputError(f"{strip_url(url)} is a folder but neither a zarr store nor a folder of TIFF slices")
    raise InputError(f"{strip_url(url)}: unsupported format (zarr, OME-Zarr, TIFF, HDF5 or .npy expected)")


def parse_voxel_size(text: str | None) -> Vec3 | None:
    """Parse ``Z,Y,X`` in nanometres."""
    if text is None:
        return None
    try:
        parts = [float(ast.literal_eval(p.strip())) for p in text.split(",")]
    except (ValueError, SyntaxError, TypeError):
        parts = []
    if len(parts) != 3 or any(not np.isfinite(p) or p <= 0 for p in parts):
        raise InputError(f"--voxel-size must be three positive numbers Z,Y,X in nm, got {text!r}")
    return (parts[0], parts[1], parts[2])

"""Lazy readers for 3-D input volumes: zarr v2/v3 and OME-Zarr, TIFF, folders of TIFF slices, HDF5, npy.

Every reader is picklable: it carries only its URL and options and reopens its file handle lazily in
whatever process reads from it, so a worker receives a reader, not data.
"""

from __future__ import annotations

import ast
import operator
import posixpath
import re
import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import InputError
from .damage import read_or_name_damage
from .ome import level0, multiscales
from .runrecord import META_DIR, refuse_unfinished
from .urls import describe_error, filesystem, is_local, local_path, remember_secrets, strip_url

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


def _squeeze_shape(shape: tuple[int, ...], url: str) -> tuple[int, tuple[int, int, int]]:
    """Allow leading singleton axes (t, c); anything else but 3-D is refused."""
    lead = len(shape) - 3
    if lead < 0 or any(s != 1 for s in shape[:lead]):
        raise InputError(f"{strip_url(url)} is not a 3-D volume (shape {tuple(shape)}); isovol needs (z, y, x)")
    if min(shape[lead:]) < 1:
        raise InputError(f"{strip_url(url)} is empty (shape {tuple(shape)})")
    return lead, tuple(int(s) for s in shape[lead:])  # type: ignore[return-value]


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
        self._lead, self.shape = _squeeze_shape(arr.shape, url)
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
        self._lead, self.shape = _squeeze_shape(shape, url)
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


def _tiff_voxel_size(tif: Any) -> Vec3 | None:
    """Voxel size from ImageJ metadata (spacing + resolution tags), if the file carries it."""
    ij = tif.imagej_metadata or {}
    if "spacing" not in ij:
        return None
    page = tif.pages[0]
    try:
        num, den = page.tags["XResolution"].value
        xy = den / num
    except (KeyError, ZeroDivisionError, TypeError):
        return None
    unit = str(ij.get("unit", "micron")).replace("\\u00B5", "\u00b5").lower()
    from .ome import UNIT_TO_NM

    f = UNIT_TO_NM.get(unit, UNIT_TO_NM.get(unit.replace("\u00b5m", "um"), 1000.0))
    return (float(ij["spacing"]) * f, xy * f, xy * f)


class TiffVolume(Volume):
    """A multi-page TIFF (one page per Z slice, or an ImageJ/contiguous stack); pages read on demand."""

    kind = "tiff"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        super().__init__(url, storage_options)
        self._lock = threading.Lock()  # one TiffFile handle seeks and reads: threads must take turns
        tif = self.handle
        series = tif.series[0]
        self._lead, self.shape = _squeeze_shape(series.shape, url)
        self.dtype = np.dtype(series.dtype)
        self.voxel_size = _tiff_voxel_size(tif)
        self._paged = len(series.pages) == self.shape[0]

    def _open(self) -> Any:
        import tifffile

        if is_local(self.url):
            return tifffile.TiffFile(local_path(self.url))
        fs, path = filesystem(self.url, self.storage_options)
        return tifffile.TiffFile(fs.open(path, "rb"))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, box: Box) -> np.ndarray:
        with self._lock:
            return self._read_locked(box)

    def _read_locked(self, box: Box) -> np.ndarray:
        series = self.handle.series[0]
        if self._paged:
            return np.stack([series.pages[z].asarray().reshape(self.shape[1:])[box[1], box[2]]
                             for z in range(box[0].start, box[0].stop)])
        data = series.asarray(out="memmap") if is_local(self.url) else series.asarray()
        return data.reshape(self.shape)[box]


def _natural_key(name: str) -> list[object]:
    """Sort ``slice_2`` before ``slice_10``: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", posixpath.basename(name))]


class TiffFolderVolume(Volume):
    """A folder of 2-D TIFF slices, one file per Z, in name order; each file read only when needed."""

    kind = "tiff-folder"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        super().__init__(url, storage_options)
        import tifffile

        fs, path = filesystem(url, self.storage_options)
        names = sorted((p for p in fs.ls(path, detail=False) if p.lower().endswith((".tif", ".tiff"))),
                       key=_natural_key)
        if not names:
            raise InputError(f"{strip_url(url)} holds no .tif/.tiff slices")
        self.files = names
        with fs.open(names[0], "rb") as f, tifffile.TiffFile(f) as tif:
            page_shape = tif.series[0].shape
            self.dtype = np.dtype(tif.series[0].dtype)
            self.voxel_size = _tiff_voxel_size(tif)
        page_shape = tuple(s for s in page_shape if s != 1) if len(page_shape) > 2 else page_shape
        if len(page_shape) != 2:
            raise InputError(f"{strip_url(url)}: slices must be 2-D images, got shape {page_shape}")
        self.shape = (len(names),) + tuple(int(s) for s in page_shape)  # type: ignore[assignment]

    def _open(self) -> Any:
        return filesystem(self.url, self.storage_options)[0]

    def _read(self, box: Box) -> np.ndarray:
        import tifffile

        fs = self.handle
        out = []
        for z in range(box[0].start, box[0].stop):
            with fs.open(self.files[z], "rb") as f:
                out.append(tifffile.imread(f).reshape(self.shape[1:])[box[1], box[2]])
        return np.stack(out)


class Hdf5Volume(Volume):
    """An HDF5 dataset, addressed as ``file.h5:/dataset`` (the dataset may be omitted if there is one)."""

    kind = "hdf5"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, dataset: str | None = None):
        super().__init__(url, storage_options)
        import h5py

        self.dataset = dataset
        f = self.file()
        if self.dataset is None:
            found: list[str] = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 3
                         else None)
            if len(found) != 1:
                listing = ", ".join(found) or "none"
                raise InputError(f"{strip_url(url)}: name the dataset as FILE.h5:/DATASET (3-D datasets: {listing})")
            self.dataset = found[0]
        if self.dataset not in f:
            raise InputError(f"{strip_url(url)} has no dataset {self.dataset!r}")
        ds = f[self.dataset]
        if not isinstance(ds, h5py.Dataset):
            raise InputError(f"{strip_url(url)}:{self.dataset} is a group, not a dataset")
        self._lead, self.shape = _squeeze_shape(ds.shape, url)
        self.dtype = np.dtype(ds.dtype)
        el = ds.attrs.get("element_size_um")
        if el is not None and len(el) == 3:
            self.voxel_size = tuple(float(v) * 1000.0 for v in el)  # type: ignore[assignment]
        self._handle = ds

    def file(self) -> Any:
        import h5py

        if is_local(self.url):
            return h5py.File(local_path(self.url), "r")
        fs, path = filesystem(self.url, self.storage_options)
        return h5py.File(fs.open(path, "rb"), "r")

    def _open(self) -> Any:
        return self.file()[self.dataset]

    def _read(self, box: Box) -> np.ndarray:
        return self.handle[(0,) * self._lead + box]


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

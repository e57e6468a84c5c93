"""Readers for TIFF files, folders of TIFF slices and HDF5 datasets (``volume.Volume``s, opened by
``readers.open_volume``).

Like every reader they are picklable: a TIFF or HDF5 handle is opened lazily in the process that reads.
"""

from __future__ import annotations

import posixpath
import re
import threading
from typing import Any

import numpy as np

from ..errors import InputError
from .urls import filesystem, is_local, local_path, strip_url
from .volume import Box, Vec3, Volume, squeeze_shape


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
        self._lead, self.shape = squeeze_shape(series.shape, url)
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
        self._lead, self.shape = squeeze_shape(ds.shape, url)
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

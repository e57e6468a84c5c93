"""Every level of an OME-Zarr image as an xarray DataArray with physical coordinates.

Plain ``xarray.open_zarr`` cannot open a multiscale image: its levels share the dimension names z/y/x with
different sizes.  This opens each level on its own, lazily through dask, with coordinates in nanometres at voxel
centres (the convention of pipeline/pyramid.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .ome import level, multiscales
from .omezarr import store_for
from .urls import strip_url


def open_multiscale(url: str, storage_options: dict[str, Any] | None = None) -> list[Any]:
    """Levels 0..N of the OME-Zarr image at ``url`` as xarray DataArrays (z, y, x), coordinates in nm."""
    import dask.array as da
    import xarray as xr
    import zarr

    group = zarr.open_group(store=store_for(url, storage_options, read_only=True), mode="r")
    ms = multiscales(dict(group.attrs))
    if not ms:
        raise InputError(f"{strip_url(url)} has no OME multiscales metadata")
    out = []
    for i in range(len(ms[0]["datasets"])):
        path, axes, scale, trans = level(ms[0], i)
        arr = group[path]
        dims = tuple(axes)
        coords = {d: trans[k] + scale[k] * np.arange(arr.shape[k]) for k, d in enumerate(dims)}
        chunks = arr.shards or arr.chunks  # whole shards: one read each, and few dask tasks
        xa = xr.DataArray(da.from_zarr(arr, chunks=chunks), dims=dims, coords=coords, name=f"level {path}")
        for d in dims:
            xa[d].attrs["units"] = "nm"
        out.append(xa)
    return out

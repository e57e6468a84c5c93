"""Output: an OME-Zarr 0.5 image on zarr v3, level 0 at ``OUTPUT/0``, sharded and compressed.

Compression is Blosc-zstd at level 1: EM intensities are noisy, so higher levels gain almost nothing
(ratio 1.18 at level 1, 3 and 5 on FlyEM FIB-SEM) while costing up to 20x the encode time, and encoding
is what the write path spends its time on.

Shards are the unit of writing: a caller writes whole shards only, so zarr encodes each one in memory and
stores it with a single put (temp file + rename on a local disk, one PUT on an object store).  No shard
is ever read, modified and written back, which is what makes concurrent writers safe.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import OutputError
from . import loops  # noqa: F401 - imported for zarr's quick fill-value check (see loops.py) wherever we write
from .urls import describe_error, filesystem, is_local, local_path, strip_url

LEVEL0 = "0"
OME_VERSION = "0.5"


def store_for(url: str, storage_options: dict[str, Any] | None = None, read_only: bool = False):
    from zarr.storage import FsspecStore, LocalStore

    if is_local(url):
        return LocalStore(local_path(url), read_only=read_only)
    return FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)


def dataset(path: str, scale: Any, translation: Any) -> dict[str, Any]:
    """One entry of ``multiscales.datasets``: an array path with its scale and translation (nm)."""
    return {"path": path, "coordinateTransformations": [
        {"type": "scale", "scale": [float(v) for v in scale]},
        {"type": "translation", "translation": [float(v) for v in translation]},
    ]}


def ome_attributes(name: str, voxel_size: tuple[float, float, float],
                   translation: tuple[float, float, float], *, datasets: list[dict[str, Any]] | None = None,
                   downscaling: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``ome`` attribute of an image with axes z/y/x in nanometres: level 0 only, or ``datasets`` (level 0
    first) with the ``type`` and ``metadata`` of their downscaling."""
    ms: dict[str, Any] = {
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": datasets or [dataset(LEVEL0, voxel_size, translation)],
    }
    if downscaling:
        ms.update(downscaling)
    return {"version": OME_VERSION, "multiscales": [ms]}


def create_image(url: str, storage_options: dict[str, Any] | None, *, shape: tuple[int, int, int],
                 dtype: np.dtype, chunks: tuple[int, int, int], shards: tuple[int, int, int],
                 voxel_size: tuple[float, float, float], translation: tuple[float, float, float],
                 provenance: dict[str, Any], overwrite: bool = False):
    """Create the group and its empty level-0 array; returns the array."""
    import zarr
    from zarr.codecs import BloscCodec

    try:
        store = store_for(url, storage_options)
        group = zarr.create_group(store=store, overwrite=overwrite, zarr_format=3, attributes={
            "ome": ome_attributes(posixpath_name(url), voxel_size, translation),
            "isovol": provenance,
        })
        return group.create_array(
            LEVEL0, shape=shape, dtype=dtype, chunks=chunks, shards=shards,
            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
            fill_value=0, dimension_names=("z", "y", "x"), overwrite=overwrite,
        )
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"cannot create output {strip_url(url)}: {describe_error(exc)}") from None


def posixpath_name(url: str) -> str:
    return strip_url(url).rstrip("/").rsplit("/", 1)[-1]


def open_level0(url: str, storage_options: dict[str, Any] | None = None, mode: str = "r+", recording: bool = False,
                path: str = LEVEL0):
    """Level 0 of an output, or the pyramid level at ``path``; with ``recording``, through a
    :class:`~.integrity.RecordingStore`, so that what each shard write stored can be vouched for
    (:func:`vouch_shards`)."""
    import zarr

    store = store_for(url, storage_options, read_only=(mode == "r"))
    if recording:
        from .integrity import RecordingStore

        store = RecordingStore(store)
    return zarr.open_array(store=store, path=path, mode=mode)


def create_level(url: str, storage_options: dict[str, Any] | None, path: str, *, shape: tuple[int, ...],
                 dtype: Any, chunks: tuple[int, ...], shards: tuple[int, ...]):
    """An empty pyramid level beside level 0, compressed like it (replacing one at ``path``)."""
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(store=store_for(url, storage_options), mode="r+")
    return group.create_array(path, shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                              compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
                              fill_value=0, dimension_names=("z", "y", "x"), overwrite=True)


def write_ome(url: str, storage_options: dict[str, Any] | None, ome: dict[str, Any]) -> None:
    """Replace the group's ``ome`` attribute (the other attributes stay)."""
    import zarr

    zarr.open_group(store=store_for(url, storage_options), mode="r+").attrs.update({"ome": ome})


def read_attributes(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    import zarr

    return dict(zarr.open_group(store=store_for(url, storage_options, read_only=True), mode="r").attrs)


def shard_keys(array: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> list[str]:
    """Store keys of the shards that cover [lo, hi) of ``array``."""
    shards = array.shards or array.chunks
    ranges = [range(a // s, -(-b // s)) for a, b, s in zip(lo, hi, shards)]
    import itertools

    return [array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]


def clear_shards(array: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> None:
    """Delete the stored shards covering [lo, hi) before they are rewritten whole.

    zarr's sharding codec reads an existing shard before writing it, even when every chunk is replaced, so
    a torn or corrupt shard left by an interrupted run would otherwise make its block fail on every resume.
    """
    from zarr.core.sync import sync

    for key in shard_keys(array, lo, hi):
        sync((array.store_path / key).delete())


def vouch_shards(array: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> dict[str, Any]:
    """What a done marker records of the shards covering [lo, hi): key (relative to the output) -> size and
    checksum, or None where no shard is stored.  Taken from the writes a recording array saw; a shard whose write
    it did not see (or a plain array) is read back."""
    from zarr.core.sync import sync

    from .integrity import RecordingStore, vouch

    store = array.store
    out = {}
    for key in shard_keys(array, lo, hi):
        full = f"{array.path or LEVEL0}/{key}"
        seen, record = store.take(full) if isinstance(store, RecordingStore) else (False, None)
        if not seen:
            buf = sync((array.store_path / key).get())
            record = vouch(None if buf is None else buf.to_bytes())
        out[full] = record
    return out


def shard_seconds(array: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[float, float]:
    """(checksum, store) seconds the writes of the shards covering [lo, hi) took, as a recording array saw them
    (zeros for a plain array): the part of a block's write that was not encoding."""
    from .integrity import RecordingStore

    store = array.store
    if not isinstance(store, RecordingStore):
        return 0.0, 0.0
    pairs = [store.take_seconds(f"{array.path or LEVEL0}/{key}") for key in shard_keys(array, lo, hi)]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def make_durable(url: str, array: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> None:
    """fsync the shard files of a written region (local disks; an object-store PUT is durable on return)."""
    if not is_local(url):
        return
    root = os.path.join(local_path(url), array.path or LEVEL0)
    dirs = set()
    for key in shard_keys(array, lo, hi):
        path = os.path.join(root, key)
        if not os.path.exists(path):  # a shard of fill value only: zarr stores nothing
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs.add(os.path.dirname(path))
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_partials(url: str, storage_options: dict[str, Any] | None = None) -> int:
    """Delete temp files a killed writer left behind (zarr's local store writes ``*.partial`` then renames)."""
    if not is_local(url):
        return 0
    fs, path = filesystem(url, storage_options)
    count = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                os.unlink(os.path.join(dirpath, f))
                count += 1
    return count


def write_image(url: str, data: np.ndarray, voxel_size: tuple[float, float, float], *,
                translation: tuple[float, float, float] = (0.0, 0.0, 0.0), attributes: dict[str, Any] | None = None,
                storage_options: dict[str, Any] | None = None, chunks: tuple[int, int, int] = (64, 64, 64)):
    """Write a whole in-memory volume as a single-level OME-Zarr 0.5 image (inputs for demos and tests)."""
    chunks = tuple(min(c, n) for c, n in zip(chunks, data.shape))
    shards = tuple(-(-n // c) * c for n, c in zip(data.shape, chunks))  # one shard, a whole number of chunks
    arr = create_image(url, storage_options, shape=data.shape, dtype=data.dtype, chunks=chunks,
                       shards=shards, voxel_size=voxel_size, translation=translation,
                       provenance=attributes or {}, overwrite=True)
    arr[...] = data
    return arr

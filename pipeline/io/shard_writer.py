"""Whole shards encoded on a thread pool with the GIL released: the bytes zarr writes, at the rate the cores allow.

Why: zarr-python runs a write's codec pipeline as several coroutines per inner chunk, plus a fill and a copy of
each chunk, on its event loop's one thread, holding the GIL.  Measured on FlyEM (``benchmarks/encode_spread.py``),
a process writes at most ~330 Mvox/s that way, at ~1.4 cores busy however many threads write, while two
processes write 1.5x faster: the GIL, not the cores, bounds what one worker -- a GPU worker is one process -- can
write.  Here each inner chunk is one task on the calling loop's thread pool that slices it from the block, pads an
edge chunk with the fill value, asks zarr whether it is all fill value (such chunks are not stored) and encodes it
with the array's own codecs' synchronous encoders (bytes, then blosc/zstd/...), which release the GIL in the
compressor; the loop only joins the pieces.  So the stored chunk bytes are zarr's.  The shard is laid out as
zarr lays it out: chunks in Morton order, then the index of the zarr v3 sharding spec (per chunk, in C order, its
offset and length as little-endian uint64, 2^64-1 for an absent chunk) and its CRC-32C; a shard with no chunk
left is deleted, as zarr deletes it.  ``tests/pipeline/io/test_shard_writer.py`` checks the files byte for byte
against zarr's.

Served (``layout_of``): zarr v3 arrays whose one codec is ``sharding_indexed`` with the index at the end, index
codecs ``bytes`` (little-endian) and ``crc32c``, inner codecs one ``bytes`` then bytes-to-bytes codecs with a
synchronous encoder, C order, empty chunks not written -- the layout isovol creates -- and writes of whole shards
(a shard cut by the array's edge counts as whole).  Everything else is written by zarr.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: an absent chunk's offset and length in a shard index (the zarr v3 sharding spec)
ABSENT = 2**64 - 1


@dataclass(frozen=True)
class Layout:
    """What encoding a whole shard of one array needs."""

    shape: tuple[int, ...]
    shard: tuple[int, ...]
    chunk: tuple[int, ...]
    fill: Any
    chunk_spec: Any  # zarr's ArraySpec of an inner chunk
    array_bytes: Any  # zarr's bytes codec
    bytes_bytes: tuple[Any, ...]  # zarr's compressors, in order
    morton: tuple[tuple[int, ...], ...]  # the inner chunks of a shard, in the order zarr stores them
    async_array: Any

    @property
    def per_shard(self) -> tuple[int, ...]:
        """Inner chunks per shard along each axis."""
        return tuple(s // c for s, c in zip(self.shard, self.chunk))

    def shard_key(self, coords: tuple[int, ...]) -> Any:
        return self.async_array.store_path / self.async_array.metadata.encode_chunk_key(coords)


def layout_of(array: Any) -> Layout | None:
    """The array's layout when this writer serves it (see the module's docstring), else None."""
    try:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.indexing import morton_order_iter

        aa = array.async_array
        sharding = _served_sharding(aa)
        if sharding is None:
            return None
        meta = aa.metadata
        shard, chunk = tuple(meta.chunk_grid.chunk_shape), tuple(sharding.chunk_shape)
        if any(s % c for s, c in zip(shard, chunk)):
            return None
        spec = meta.get_chunk_spec((0,) * len(shard), aa.config, default_buffer_prototype())
        inner = tuple(sharding.codecs)
        morton = tuple(morton_order_iter(tuple(s // c for s, c in zip(shard, chunk))))
        return Layout(tuple(meta.shape), shard, chunk, spec.fill_value, sharding._get_chunk_spec(spec), inner[0],
                      inner[1:], morton, aa)
    except Exception as exc:  # a zarr without what this needs: zarr writes
        log.debug("shard writer not used: %s", exc)
        return None


def _served_sharding(aa: Any) -> Any:
    """The array's sharding codec if its layout is served, else None."""
    from zarr.abc.codec import SupportsSyncCodec
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    codecs = list(getattr(aa.metadata, "codecs", ()))
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or aa.config.write_empty_chunks:
        return None
    sharding = codecs[0]
    index, inner = list(sharding.index_codecs), list(sharding.codecs)
    index_ok = (sharding.index_location == ShardingCodecIndexLocation.end and len(index) == 2
                and isinstance(index[0], BytesCodec) and getattr(index[0].endian, "value", None) == "little"
                and isinstance(index[1], Crc32cCodec))
    inner_ok = (bool(inner) and isinstance(inner[0], BytesCodec)
                and all(isinstance(c, SupportsSyncCodec) for c in inner[1:]))
    return sharding if index_ok and inner_ok and aa.order == "C" else None


def served(array: Any, box: tuple[slice, ...], value: Any) -> tuple[Layout, tuple[slice, ...]] | None:
    """(layout, box with explicit bounds) when this writer serves ``array[box] = value``: a served layout, and a
    box of whole shards (each ending at a shard edge or at the array's edge) that ``value`` fills; else None."""
    if len(box) != array.ndim:
        return None
    layout = layout_of(array)
    if layout is None:
        return None
    whole = tuple(slice(*s.indices(n)) for s, n in zip(box, layout.shape))
    if np.shape(value) != tuple(s.stop - s.start for s in whole):
        return None
    if all(s.step == 1 and s.start % n == 0 and (s.stop % n == 0 or s.stop == size) and s.start < s.stop
           for s, n, size in zip(whole, layout.shard, layout.shape)):
        return layout, whole
    return None


async def write_whole_shards(layout: Layout, box: tuple[slice, ...], value: np.ndarray) -> None:
    """Write ``value`` at ``box`` (whole shards): every inner chunk encoded on the running loop's pool, then each
    shard stored (or deleted, when no chunk is left).  Storing only once all are encoded keeps the stores from
    queueing behind encodes on the same pool, so the store time the output's recording store measures is the
    store's (the executor's profile splits encode from store with it)."""
    loop = asyncio.get_running_loop()
    value = np.asarray(value, dtype=layout.chunk_spec.dtype.to_native_dtype())  # as zarr casts what it is given
    origin = tuple(s.start for s in box)
    shards = list(itertools.product(*[range(s.start // n, -(-s.stop // n)) for s, n in zip(box, layout.shard)]))
    parts = []
    for coords in shards:
        lo = tuple(c * n - o for c, n, o in zip(coords, layout.shard, origin))  # the shard's corner in ``value``
        parts.append([loop.run_in_executor(None, _encode_chunk, layout, value, lo, inner) for inner in layout.morton])
    encoded = [await asyncio.gather(*p) for p in parts]
    await asyncio.gather(*(_store_shard(layout, coords, chunks) for coords, chunks in zip(shards, encoded)))


async def _store_shard(layout: Layout, coords: tuple[int, ...], encoded: list[bytes | None]) -> None:
    index = np.full(layout.per_shard + (2,), ABSENT, dtype="<u8")
    offset, kept = 0, []
    for inner, data in zip(layout.morton, encoded):
        if data is not None:
            index[inner] = (offset, len(data))
            offset += len(data)
            kept.append(data)
    key = layout.shard_key(coords)
    if not kept:
        await key.delete()
        return
    from google_crc32c import value as crc32c

    table = index.tobytes()
    kept += [table, np.array([crc32c(table)], dtype="<u4").tobytes()]
    await key.set(layout.chunk_spec.prototype.buffer.from_bytes(b"".join(kept)))


def _encode_chunk(layout: Layout, value: np.ndarray, lo: tuple[int, ...], inner: tuple[int, ...]) -> bytes | None:
    """One inner chunk's stored bytes, or None when it is all fill value (runs on the pool)."""
    start = tuple(a + i * c for a, i, c in zip(lo, inner, layout.chunk))
    part = value[tuple(slice(max(a, 0), max(min(a + c, n), 0)) for a, c, n in zip(start, layout.chunk, value.shape))]
    if part.shape != layout.chunk:  # an edge chunk (or one past the array's edge): padded with the fill value
        full = np.full(layout.chunk, layout.fill, dtype=value.dtype)
        full[tuple(slice(0, n) for n in part.shape)] = part
        part = full
    spec = layout.chunk_spec
    nd = spec.prototype.nd_buffer.from_ndarray_like(part)
    if nd.all_equal(layout.fill):
        return None
    buf = layout.array_bytes._encode_sync(nd, spec)
    for codec in layout.bytes_bytes:
        buf = codec._encode_sync(buf, spec)
    return buf.to_bytes()

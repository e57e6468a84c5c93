"""Block reads and writes on an event loop of the calling thread's own, where the store allows it.

Why: zarr's synchronous API hands every read and write of a process to one event-loop thread
(``zarr.core.sync``), and part of each request -- assembling shards, the index checksum, the bytes codec -- runs
on that thread.  A worker that reads its next block while it writes the last one (a pipelined block, a task that
handed its thread over) therefore queues the read behind the write: measured on FlyEM, reading one block's input
took 66-79 ms while another thread of the process wrote shards, against 13-15 ms alone, and 25 ms when the read ran
on a loop of its own (``benchmarks/datapath.py``).  Each thread here runs zarr's asynchronous API on its own loop,
so reads and writes of different threads overlap as far as the cores allow.

Importing this module also sets zarr's n-d buffer class (its ``ndbuffer`` config, where it is zarr's default CPU
one) to ``QuickFillNDBuffer``, whose fill-value check stops at the first voxel that differs.  zarr asks, for
every shard it writes and again for every chunk inside it, whether the data is all fill value (such chunks are
not stored), and answers with ``np.array_equal(..., equal_nan=True)``: six passes and three block-sized
temporaries each time, even for integers.  On FlyEM blocks that check cost more CPU than the zstd compression
itself.  The answer, and so every stored byte, is the same.  It is a process-wide setting because zarr's sharding
codec accepts no other buffer class than the configured one.

Whole shards of the layout isovol creates are encoded by ``shard_writer`` (each inner chunk on the loop's thread
pool, the GIL released; the same bytes), everything else by zarr's own codec pipeline.

Only local stores take this path: fsspec's asynchronous file systems (S3, GCS, HTTP) are bound to the loop they
were made on, so those reads and writes go through zarr's synchronous API as before (whole shards through
``shard_writer`` on zarr's loop).  The bytes are the same
either way: it is the same codec pipeline, called from another loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from zarr.core.buffer.cpu import NDBuffer

from . import shard_writer

#: zarr's own CPU n-d buffer class, and ours (their names in zarr's ``ndbuffer`` config)
ZARR_NDBUFFER = "zarr.buffer.cpu.NDBuffer"
QUICK_NDBUFFER = f"{__name__}.QuickFillNDBuffer"


class QuickFillNDBuffer(NDBuffer):
    """zarr's CPU n-d buffer with an ``all_equal`` that answers False at the first voxel unequal to a scalar fill
    value, and in one pass for integers; other cases (NaN fill, non-scalar, strings) go to zarr's own check."""

    def all_equal(self, other: Any, equal_nan: bool = True) -> bool:
        data = self._data
        if other is None or np.ndim(other) != 0 or data.dtype.kind not in "biuf" or data.size == 0:
            return super().all_equal(other, equal_nan)
        first = data.flat[0]
        if first == first and first != other:  # a number (not NaN) unequal to the fill, however NaN is treated
            return False
        if data.dtype.kind in "biu":
            return bool((data == other).all())
        return super().all_equal(other, equal_nan)


def use_quick_fill_check() -> None:
    """Make ``QuickFillNDBuffer`` zarr's n-d buffer class, unless another than zarr's CPU default is configured
    (GPU buffers, say), which is left alone."""
    import zarr
    from zarr.registry import register_ndbuffer

    if zarr.config.get("ndbuffer") in (ZARR_NDBUFFER, QUICK_NDBUFFER):
        register_ndbuffer(QuickFillNDBuffer, QUICK_NDBUFFER)
        zarr.config.set({"ndbuffer": QUICK_NDBUFFER})


use_quick_fill_check()


class _Loop:
    """An event loop, closed when the thread that owns it ends (a worker's task threads come and go)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        if not self.loop.is_running():
            self.loop.close()


_THREAD = threading.local()


def own_loop_serves(array: Any) -> bool:
    """Whether ``array``'s store may be used from another event loop than zarr's: a local directory, possibly
    behind wrappers (the recording store of an output)."""
    from zarr.storage import LocalStore, WrapperStore

    store = array.store
    while isinstance(store, WrapperStore):
        store = store._store
    return isinstance(store, LocalStore)


def _run(coro: Any) -> Any:
    own = getattr(_THREAD, "own", None)
    if own is None:
        own = _THREAD.own = _Loop()
    try:
        return own.loop.run_until_complete(coro)
    finally:
        _settle_leftovers(own.loop)


def _settle_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and finish what a failed request left on the loop: zarr gathers a chunk's siblings, and when one
    fails (a damaged input chunk) the others stay pending; a loop closed with them prints "Task was destroyed but
    it is pending!" on stderr, and the next request on this thread would find them still there."""
    left = asyncio.all_tasks(loop)
    if not left:
        return
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))


def read(array: Any, box: tuple[Any, ...]) -> np.ndarray:
    """``array[box]`` for a box of slices and integers."""
    return _run(array.async_array.getitem(box)) if own_loop_serves(array) else array[box]


def write(array: Any, box: tuple[slice, ...], value: np.ndarray) -> None:
    """``array[box] = value`` for a box of slices; whole shards of the layout isovol writes through
    ``shard_writer`` (the same bytes, encoded on the loop's pool with the GIL released), on this thread's loop
    or, for stores bound to zarr's loop (S3, GCS, HTTP), on that one."""
    own = own_loop_serves(array)
    whole = shard_writer.served(array, box, value)
    if whole is not None:
        from zarr.core.sync import sync

        coro = shard_writer.write_whole_shards(*whole, value)
        if own:
            _run(coro)
        else:
            sync(coro)
    elif own:
        _run(array.async_array.setitem(box, value))
    else:
        array[box] = value

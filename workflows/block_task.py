"""What runs on a worker for one block: read its input, run the method, write its whole shards, make them durable
and only then write its done marker (the client's side is ``executor.py``).

A block whose method splits exactly along Z (``z_split_exact``) is pipelined inside its task: reading the next
Z piece and writing the previous one overlap the current piece's compute; across blocks, the next block's first
read overlaps this block's last compute (``_hand_over_thread``, ``_compute_slot``).  Each block times its phases
(``profile.Phases``) and counts the NaN / inf voxels it met; both travel back in the task's result, announced on
the run's event topic.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pipeline.blocks import Block, BlockPlan
from ..pipeline.io.damage import DamagedInputError
from ..pipeline.io.loops import write
from ..pipeline.io.omezarr import LEVEL0, clear_shards, make_durable, open_level0, shard_seconds, vouch_shards
from ..pipeline.io.readers import Volume
from ..pipeline.methods.base import Method
from ..pipeline.plan_checks import nonfinite_counts
from .bookkeeping import Bookkeeper
from .profile import Phases

log = logging.getLogger(__name__)


@dataclass
class BlockContext:
    """Everything a worker needs to process any block of one run; shipped to each worker once."""

    volume: Volume
    method: Method
    plan: BlockPlan
    output_url: str
    output_options: dict[str, Any]
    keeper: Bookkeeper
    digest: str
    #: pipeline the Z pieces of a block (read / compute / write overlapped) where the method allows it
    overlap: bool = True
    #: the event topic on which a task says it has started (its block time-out counts from then) and hands over its
    #: result; set by execute
    topic: str | None = None
    #: the array written: level 0, or a pyramid level (workflows/pyramid.py)
    level: str = LEVEL0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_array", None)
        return state

    @property
    def array(self) -> Any:
        if getattr(self, "_array", None) is None:
            self._array = open_level0(self.output_url, self.output_options, recording=True, path=self.level)
        return self._array


def run_block(ctx: BlockContext, block: Block) -> dict[str, Any]:
    """Process one block end to end (runs on a worker): every shard written and made durable, then the marker.
    A damaged input chunk is returned as the block's error, not raised: bad data is no bug, so no worker
    traceback, and no retry."""
    try:
        result = _run_block(ctx, block)
    except DamagedInputError as exc:
        result = {"key": block.key, "error": str(exc)}
    _announce(ctx.topic, {"result": result})
    return result


def _run_block(ctx: BlockContext, block: Block) -> dict[str, Any]:
    t0 = time.perf_counter()
    _announce(ctx.topic, {})
    pieces = ctx.plan.z_pieces(block) if ctx.overlap and ctx.method.z_split_exact else [block]
    tally = [0, 0]  # NaN / inf voxels in the block's own input and in its output
    ph = Phases()
    if len(pieces) == 1:
        data = ph.timed("read", _read, ctx, block)
        with _compute_slot(ctx.overlap):  # the previous block's last compute may still hold it
            if ctx.overlap:
                _hand_over_thread()
            out = ph.timed("method", _compute, ctx, block, data, tally)
        ctx.keeper.check_current(ctx.digest)  # before the block's first write: see Bookkeeper.check_current
        _write(ctx, block, out, ph)
    else:
        _pipeline(ctx, pieces, tally, ph)
    ph.timed("fsync", make_durable, ctx.output_url, ctx.array, block.out_lo, block.out_hi)
    with ph.timing("marker"):  # it vouches for what was written (sizes, checksums): see status --verify
        ctx.keeper.mark_done(block.key, ctx.digest, vouch_shards(ctx.array, block.out_lo, block.out_hi))
    return {"key": block.key, "seconds": time.perf_counter() - t0, "voxels": int(np.prod(block.out_shape)),
            "nonfinite": tally, "phases": ph.seconds}


def _announce(topic: str | None, msg: dict[str, Any]) -> None:
    """Tell the client, as a dask event naming this task and its worker, that the task is executing now (an empty
    ``msg``) or what it finished with (``{"result": ...}``).  The start makes the block's time-out count from here,
    not from submission -- blocks wait in worker queues (four per thread are in flight) -- and lets a stuck block
    be named with its worker.  The result travels with the scheduler's messages, so the client need not fetch it
    from the worker: no round trip per block, and a worker that froze after its last block is not asked.
    No-op outside a dask worker."""
    worker = _current_worker()
    if topic is None or worker is None:
        return
    try:
        worker.log_event(topic, {"key": str(worker.get_current_task()), "worker": worker.address, **msg})
    except Exception as exc:  # an event that cannot be sent: the client fetches the result (executor._settle)
        log.debug("block event not sent: %s", exc)


def _current_worker() -> Any:
    """The dask worker running this task, or None for a direct call (no client waits, nothing is shared)."""
    try:
        from distributed import get_worker

        return get_worker()
    except Exception:  # not running as a task on a worker
        return None


def _read(ctx: BlockContext, block: Block) -> np.ndarray:
    return ctx.volume.read_padded(block.in_lo, block.in_hi)


def _compute(ctx: BlockContext, block: Block, data: np.ndarray, tally: list[int]) -> np.ndarray:
    start, stop = ctx.plan.local_range(block)
    out = ctx.method.apply_at(data, ctx.plan.factor, start, stop, block.in_lo)
    if out.shape != block.out_shape:
        raise RuntimeError(f"method {ctx.method.name} returned {out.shape} for block {block.key}, "
                           f"expected {block.out_shape}")
    if ctx.level == LEVEL0:  # counted, not refused: one warning at the end of the run (plan_checks)
        tally[:] = [a + b for a, b in zip(tally, nonfinite_counts(ctx.plan, block, data, out))]
    return out


def _write(ctx: BlockContext, block: Block, out: np.ndarray, ph: Phases) -> None:
    box = tuple(slice(a, b) for a, b in zip(block.out_lo, block.out_hi))
    t0 = time.perf_counter()
    try:
        write(ctx.array, box, out)
    except Exception:
        # zarr reads a stored shard before rewriting it, and one torn by a crash cannot be read: drop it and write
        # afresh. Never delete first, and withdraw the block's marker before deleting: another attempt at the same
        # block (a timed-out one still running) may have marked it done, and a kill between the delete and the
        # rewrite must not leave a marked block without its shards. This attempt marks it again once durable.
        ctx.keeper.unmark(block.key)
        clear_shards(ctx.array, block.out_lo, block.out_hi)
        write(ctx.array, box, out)
    ph.split_write(time.perf_counter() - t0, *shard_seconds(ctx.array, block.out_lo, block.out_hi))


def _write_durably(ctx: BlockContext, piece: Block, out: np.ndarray, ph: Phases) -> None:
    _write(ctx, piece, out, ph)
    ph.timed("fsync", make_durable, ctx.output_url, ctx.array, piece.out_lo, piece.out_hi)  # off the compute thread


def _hand_over_thread() -> None:
    """Give this task's worker thread to the next block as its last compute starts (``distributed.secede``): the
    next block's first read then overlaps this compute, and what is left here -- compress, write, fsync, done
    marker -- overlaps the next block's compute, also on a worker with one thread.  Computes still never overlap
    more than the worker has threads: each holds a compute slot (``_compute_slot``), and a task hands over only
    once it holds one.  The task still writes its own marker after its own shards are durable.  No-op outside a
    dask worker."""
    try:
        from distributed import secede

        secede()
    except Exception:  # not running as a task on a worker (a direct call): nothing to hand over
        pass


#: per worker: a semaphore with one slot per worker thread, held by a block from its first compute to its last
_SLOTS: weakref.WeakKeyDictionary[Any, threading.BoundedSemaphore] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def _compute_slot(shared: bool) -> Any:
    """The worker's compute slots (one per worker thread), or no limit outside a dask worker or without
    ``shared``.  A task hands its thread over as its last compute starts, so that the next block's read overlaps
    it; the slot keeps that next block from computing beside it -- a GPU worker's one network call at a time,
    and the memory a worker was sized for."""
    worker = _current_worker() if shared else None
    if worker is None:
        return contextlib.nullcontext()
    with _SLOTS_LOCK:
        slots = _SLOTS.get(worker)
        if slots is None:
            slots = _SLOTS[worker] = threading.BoundedSemaphore(max(1, int(worker.state.nthreads)))
    return slots


def _pipeline(ctx: BlockContext, pieces: list[Block], tally: list[int], ph: Phases) -> None:
    """Read, compute and write a block's Z pieces (its shards along Z) as a three-stage pipeline, so that on a
    worker with one thread -- a GPU worker -- reading the next piece and compressing, writing and fsyncing the
    previous one run while the current one computes.

    Why inside one task, not across tasks: the task still owns its block from read to done marker, so retries,
    time-outs, resume and "every shard durable before the marker" are exactly those of the serial path; nothing
    has to guess which block a worker runs next; and a failure anywhere raises here, after the pieces in flight
    have settled, with no marker written.  Across blocks, the task hands its thread over as its last piece's
    compute starts (``_hand_over_thread``): the next block reads its first piece meanwhile and waits for the
    compute slot, and this block's last writes overlap the next block's compute.  Only methods whose Z pieces
    give exactly the block's result (``z_split_exact``) are cut; at most one piece is read, one computed and two
    written at a time per block, and one more piece read by the next block, so memory stays bounded.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="isovol-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="isovol-write") as writer:
        writes: deque[Any] = deque()
        try:
            nxt = reader.submit(ph.timed, "read", _read, ctx, pieces[0])
            with _compute_slot(True):  # from the first compute to the last; the first read does not wait for it
                for i, piece in enumerate(pieces):
                    data = nxt.result()
                    if i + 1 < len(pieces):
                        nxt = reader.submit(ph.timed, "read", _read, ctx, pieces[i + 1])
                    else:
                        _hand_over_thread()
                    out = ph.timed("method", _compute, ctx, piece, data, tally)
                    del data
                    while len(writes) >= 2:  # bound the outputs held in memory
                        writes.popleft().result()
                    if i == 0:  # before the block's first write: see Bookkeeper.check_current
                        ctx.keeper.check_current(ctx.digest)
                    writes.append(writer.submit(_write_durably, ctx, piece, out, ph))
            while writes:
                writes.popleft().result()
        finally:
            for fut in writes:  # on failure: let the writes in flight settle before the task reports it
                fut.cancel()

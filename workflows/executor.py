"""The blockwise executor: dask.distributed futures over blocks, in bounded waves.

The client keeps at most ``max_in_flight`` blocks submitted at a time, so the scheduler never holds a
whole-volume graph and client memory stays flat however large the volume.  Each task reads its input box,
runs the method, writes its whole shards, makes them durable and only then writes its done marker.
Failures are sorted into transient ones (storage throttling, lost workers, time-outs), which are retried
a bounded number of times, and deterministic ones (bugs, bad data), which are not.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..pipeline.blocks import Block, BlockPlan
from ..pipeline.io.omezarr import clear_shards, make_durable, open_level0, vouch_shards
from ..pipeline.io.readers import Volume
from ..pipeline.methods.base import Method
from .bookkeeping import Bookkeeper

log = logging.getLogger(__name__)

_TRANSIENT_WORDS = ("throttl", "slowdown", "slow down", "requesttimeout", "serviceunavailable", "internalerror",
                    "connection", "timed out", "timeout", "temporarily", "503", "500 ")


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
    #: the event topic on which a task says it has started (its block time-out counts from then); set by execute
    start_topic: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_array", None)
        return state

    @property
    def array(self) -> Any:
        if getattr(self, "_array", None) is None:
            self._array = open_level0(self.output_url, self.output_options, recording=True)
        return self._array


def run_block(ctx: BlockContext, block: Block) -> dict[str, Any]:
    """Process one block end to end (runs on a worker): every shard written and made durable, then the marker."""
    t0 = time.perf_counter()
    _announce_start(ctx.start_topic)
    pieces = ctx.plan.z_pieces(block) if ctx.overlap and ctx.method.z_split_exact else [block]
    if len(pieces) == 1:
        out = _compute(ctx, block, _read(ctx, block))
        if ctx.overlap:
            _hand_over_thread()
        ctx.keeper.check_current(ctx.digest)  # before the block's first write: see Bookkeeper.check_current
        _write(ctx, block, out)
    else:
        _pipeline(ctx, pieces)
    make_durable(ctx.output_url, ctx.array, block.out_lo, block.out_hi)
    # the marker vouches for what was written (sizes, checksums), so damage found later is named: status --verify
    ctx.keeper.mark_done(block.key, ctx.digest, vouch_shards(ctx.array, block.out_lo, block.out_hi))
    return {"key": block.key, "seconds": time.perf_counter() - t0, "voxels": int(np.prod(block.out_shape))}


def _announce_start(topic: str | None) -> None:
    """Tell the client this task is executing now (a dask event with the task's key), so the block's time-out
    counts from here, not from submission: blocks wait in worker queues (three per thread are in flight).
    No-op outside a dask worker."""
    if topic is None:
        return
    try:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(topic, str(worker.get_current_task()))
    except Exception:  # a direct call, not a task on a worker: no client is waiting for the event
        pass


def _read(ctx: BlockContext, block: Block) -> np.ndarray:
    return ctx.volume.read_padded(block.in_lo, block.in_hi)


def _compute(ctx: BlockContext, block: Block, data: np.ndarray) -> np.ndarray:
    start, stop = ctx.plan.local_range(block)
    out = ctx.method.apply_at(data, ctx.plan.factor, start, stop, block.in_lo)
    if out.shape != block.out_shape:
        raise RuntimeError(f"method {ctx.method.name} returned {out.shape} for block {block.key}, "
                           f"expected {block.out_shape}")
    return out


def _write(ctx: BlockContext, block: Block, out: np.ndarray) -> None:
    box = tuple(slice(a, b) for a, b in zip(block.out_lo, block.out_hi))
    try:
        ctx.array[box] = out
    except Exception:
        # zarr reads a stored shard before rewriting it, and one torn by a crash cannot be read: drop it and write
        # afresh. Never delete first, and withdraw the block's marker before deleting: another attempt at the same
        # block (a timed-out one still running) may have marked it done, and a kill between the delete and the
        # rewrite must not leave a marked block without its shards. This attempt marks it again once durable.
        ctx.keeper.unmark(block.key)
        clear_shards(ctx.array, block.out_lo, block.out_hi)
        ctx.array[box] = out


def _write_durably(ctx: BlockContext, piece: Block, out: np.ndarray) -> None:
    _write(ctx, piece, out)
    make_durable(ctx.output_url, ctx.array, piece.out_lo, piece.out_hi)  # fsync here, off the compute thread


def _hand_over_thread() -> None:
    """Give this task's worker thread to the next block once the compute is done (``distributed.secede``): what
    is left -- compress, write, fsync, done marker -- then overlaps with the next block's compute, also on a
    worker with one thread.  Computes never overlap each other: a task hands over only after its last one.
    The task still writes its own marker after its own shards are durable.  No-op outside a dask worker."""
    try:
        from distributed import secede

        secede()
    except Exception:  # not running as a task on a worker (a direct call): nothing to hand over
        pass


def _pipeline(ctx: BlockContext, pieces: list[Block]) -> None:
    """Read, compute and write a block's Z pieces (its shards along Z) as a three-stage pipeline, so that on a
    worker with one thread -- a GPU worker -- reading the next piece and compressing, writing and fsyncing the
    previous one run while the current one computes.

    Why inside one task, not across tasks: the task still owns its block from read to done marker, so retries,
    time-outs, resume and "every shard durable before the marker" are exactly those of the serial path; nothing
    has to guess which block a worker runs next; and a failure anywhere raises here, after the pieces in flight
    have settled, with no marker written.  The first read of a block does not overlap, so give GPU workers
    blocks of several shards along Z (e.g. ``--block-shape 256,1024,1024 --shard-shape 64,1024,1024``); the
    last write does overlap the next block's compute, because the task hands its thread over once its last piece
    is computed (``_hand_over_thread``).  Only methods whose Z pieces give exactly the block's result
    (``z_split_exact``) are cut; at most one piece is read, one computed and two written at a time, so memory
    stays bounded by the block.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="isovol-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="isovol-write") as writer:
        writes: deque[Any] = deque()
        try:
            nxt = reader.submit(_read, ctx, pieces[0])
            for i, piece in enumerate(pieces):
                data = nxt.result()
                if i + 1 < len(pieces):
                    nxt = reader.submit(_read, ctx, pieces[i + 1])
                out = _compute(ctx, piece, data)
                del data
                while len(writes) >= 2:  # bound the outputs held in memory
                    writes.popleft().result()
                if i == 0:  # before the block's first write: see Bookkeeper.check_current
                    ctx.keeper.check_current(ctx.digest)
                writes.append(writer.submit(_write_durably, ctx, piece, out))
            _hand_over_thread()
            while writes:
                writes.popleft().result()
        finally:
            for fut in writes:  # on failure: let the writes in flight settle before the task reports it
                fut.cancel()


def is_transient(exc: BaseException) -> bool:
    """Storage hiccups, lost workers and time-outs are worth a retry; everything else is a bug or bad data."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    if isinstance(exc, (KilledWorker, CommClosedError, ConnectionError, TimeoutError)):
        return True
    if type(exc).__name__ in ("CancelledError", "FutureCancelledError"):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    if isinstance(exc, OSError):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in _TRANSIENT_WORDS)


@dataclass
class Summary:
    total: int
    skipped: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    retried: int = 0
    not_run: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run

    def line(self) -> str:
        text = (f"{self.total} blocks: {self.done} done, {self.skipped} skipped (already done), "
                f"{len(self.failed)} failed")
        if self.not_run:
            text += f", {self.not_run} not run"
        if self.retried:
            text += f", {self.retried} retries"
        return text + f" in {self.seconds:.1f} s"


class _Progress:
    """A tqdm bar on a terminal; on a batch log, one line every ``every`` seconds."""

    def __init__(self, total: int, initial: int, enabled: bool, every: float = 30.0):
        self.total, self.count, self.every, self.last = total, initial, every, time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="block", file=sys.stderr, dynamic_ncols=True)
        self.enabled = enabled

    def update(self) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (time.monotonic() - self.last >= self.every or self.count == self.total):
            self.last = time.monotonic()
            log.info("progress: %d/%d blocks", self.count, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def execute(client: Any, ctx: BlockContext, blocks: Iterable[Block], *, total: int, skipped: int = 0,
            max_in_flight: int | None = None, retries: int = 2, timeout: float | None = None,
            max_failures: int = 10, progress: bool = True) -> Summary:
    """Run ``blocks`` on the cluster behind ``client`` and return what happened."""
    from distributed import wait

    t0 = time.perf_counter()
    summary = Summary(total=total, skipped=skipped)
    window = _InFlight(client, max_in_flight)
    # task keys unique to this call: a key the scheduler still holds (an earlier or concurrent run of the
    # same digest, e.g. to another output) would otherwise be reused and its block never written here
    run_id = uuid.uuid4().hex[:8]
    started: dict[str, float] = {}  # task key -> when the client heard it start executing (time-out clock)
    if timeout:
        ctx = replace(ctx, start_topic=f"isovol-start-{run_id}")
        client.subscribe_topic(ctx.start_topic, lambda event: started.setdefault(event[1], time.monotonic()))
    ctx_future = client.scatter(ctx, broadcast=True, hash=False)
    queue: deque[Block] = deque(blocks)
    attempts: dict[str, int] = {}
    running: dict[Any, tuple[Block, float]] = {}  # future -> (block, submission time)
    bar = _Progress(total, skipped, progress)
    aborted = False
    try:
        while queue or running:
            while queue and not aborted and len(running) < window.limit():
                block = queue.popleft()
                n = attempts.get(block.key, 0)
                key = f"isovol-block-{block.key}-{ctx.digest[:8]}-{run_id}-{n}"
                fut = client.submit(run_block, ctx_future, block, key=key, pure=False)
                running[fut] = (block, time.monotonic())
            if aborted and not running:
                break
            try:
                finished, _ = wait(list(running), timeout=min(timeout or 1.0, 1.0), return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            now = time.monotonic()
            expired = {f for f in running if timeout and f not in finished
                       and now - started.get(f.key, now) > timeout}
            for fut in list(finished) + list(expired):
                block, _ = running.pop(fut)
                started.pop(fut.key, None)
                if fut in expired:
                    fut.cancel()
                    exc: BaseException | None = TimeoutError(f"block {block.key} ran past {timeout:.0f} s")
                else:
                    exc = fut.exception() if fut.status == "error" else None
                    if fut.status == "cancelled":
                        exc = TimeoutError(f"block {block.key} was cancelled")
                if exc is None:
                    summary.done += 1
                    bar.update()
                    continue
                n = attempts.get(block.key, 0) + 1
                attempts[block.key] = n
                if is_transient(exc) and n <= retries:
                    summary.retried += 1
                    log.warning("block %s: transient error, retry %d/%d: %s", block.key, n, retries,
                                _one_line(exc))
                    queue.append(block)
                    continue
                summary.failed[block.key] = _one_line(exc)
                log.error("block %s failed: %s", block.key, _one_line(exc))
                if len(summary.failed) >= max_failures and not aborted:
                    aborted = True
                    log.error("stopping after %d failed blocks", len(summary.failed))
        summary.not_run = len(queue)
    finally:
        bar.close()
        for fut in running:
            fut.cancel()
        if ctx.start_topic is not None:
            client.unsubscribe_topic(ctx.start_topic)
        summary.seconds = time.perf_counter() - t0
    return summary


class _InFlight:
    """How many blocks to keep submitted: three per worker thread -- one computing, one finishing its writes after
    handing the thread over (``_hand_over_thread``), one queued so the thread never waits for the client -- re-read
    every few seconds because workers of a batch-queue or adaptive cluster arrive (and leave) while the run is
    going."""

    def __init__(self, client: Any, fixed: int | None, every: float = 5.0):
        self.client, self.fixed, self.every = client, fixed, every
        self.value, self.checked = 1, -float("inf")  # worker threads, and when they were last counted
        if fixed is None and not client.nthreads():
            log.info("waiting for the first worker to join the cluster")
            client.wait_for_workers(1)

    def limit(self) -> int:
        return self.fixed if self.fixed is not None else 3 * self.threads()

    def threads(self) -> int:
        """Worker threads in the cluster now (at least 1)."""
        now = time.monotonic()
        if now - self.checked >= self.every:
            self.checked = now
            self.value = max(1, sum(self.client.nthreads().values()))
        return self.value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()

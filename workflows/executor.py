"""The blockwise executor: dask.distributed futures over blocks, in bounded waves.

The client keeps at most ``max_in_flight`` blocks submitted at a time, so the scheduler never holds a
whole-volume graph and client memory stays flat however large the volume.  Each task (``block_task.run_block``)
reads its input box, runs the method, writes its whole shards, makes them durable and only then writes its done
marker.
Failures are sorted into transient ones (storage throttling, lost workers, time-outs), which are retried
a bounded number of times, and deterministic ones (bugs, bad data), which are not.  What the cluster does
meanwhile -- workers lost, frozen or gone for good -- is watched by ``cluster_watch.ClusterWatch``.
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

from ..pipeline.blocks import Block
from .block_task import BlockContext, run_block
from .cluster_watch import WORKER_WAIT, ClusterWatch
from .profile import merge

log = logging.getLogger(__name__)

#: seconds to fetch a finished block's result (a small dict) from its worker, where it did not come with the block's
#: events (block_task._announce; a fallback: the event precedes the task's completion in the scheduler's messages);
#: a worker frozen since it finished the block does not answer, and the block is then retried elsewhere (its writes
#: are idempotent)
RESULT_TIMEOUT = 10.0
_TRANSIENT_WORDS = ("throttl", "slowdown", "slow down", "requesttimeout", "serviceunavailable", "internalerror",
                    "connection", "timed out", "timeout", "temporarily", "503", "500 ")


def _not_an_abandoned_gather(record: logging.LogRecord) -> bool:
    """False for asyncio's "Task exception was never retrieved" about distributed's ``AllExit``.

    A result fetch (the fallback of ``_Run._settle``) given up after ``RESULT_TIMEOUT`` leaves distributed's inner
    wait task behind; when the block's future is later cancelled, that task ends in ``AllExit``, which nobody awaits
    any more, and asyncio prints its traceback at exit.  The block was already retried: the traceback says nothing
    and reads like a crash."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (type(exc).__name__ == "AllExit" and type(exc).__module__ == "distributed.client")


logging.getLogger("asyncio").addFilter(_not_an_abandoned_gather)  # a filter added twice is kept once


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
    stopped: str = ""  # why the run stopped early, when the cluster could not go on
    nonfinite: tuple[int, int] = (0, 0)  # NaN / inf voxels met in the blocks run: input, output
    voxels: int = 0  # output voxels of the blocks done
    phases: dict[str, float] = field(default_factory=dict)  # their seconds per phase (workflows/profile.py)

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
        text += f" in {self.seconds:.1f} s"
        return text + (f" (stopped: {self.stopped})" if self.stopped else "")


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
            max_failures: int = 10, progress: bool = True, worker_wait: float = WORKER_WAIT) -> Summary:
    """Run ``blocks`` on the cluster behind ``client`` and return what happened.

    ``worker_wait``: how long a run waits for a cluster that lost all its workers to give some back before it
    stops; the blocks not run are left for ``--resume``."""
    t0 = time.perf_counter()
    summary = Summary(total=total, skipped=skipped)
    bar = _Progress(total, skipped, progress)
    run = _Run(client, ctx, blocks, summary, ClusterWatch(client, max_in_flight, worker_wait),
               retries=retries, timeout=timeout, max_failures=max_failures)
    try:
        run.loop(bar)
    finally:
        bar.close()
        run.close()
        summary.seconds = time.perf_counter() - t0
    return summary


class _Run:
    """The client's side of one ``execute``: the blocks queued, the futures in flight, what became of each.

    Lost workers: the context goes to the cluster as a task, not as scattered data, so when every worker holding
    it is lost the scheduler recomputes it (scattered data would be forgotten and every block cancelled).  A block
    on a lost worker is rerun by the scheduler (dask's ``allowed-failures`` times) and then counts as a transient
    failure against ``retries``.  Time-outs: a block that runs past ``timeout`` is resubmitted and the worker that
    ran it is restarted (``ClusterWatch.restart``), because a task cannot be stopped inside its worker, and a frozen
    worker also holds the blocks queued on it."""

    def __init__(self, client: Any, ctx: BlockContext, blocks: Iterable[Block], summary: Summary,
                 watch: ClusterWatch, *, retries: int, timeout: float | None, max_failures: int):
        self.client, self.summary, self.watch = client, summary, watch
        self.retries, self.timeout, self.max_failures = retries, timeout, max_failures
        # task keys unique to this call: a key the scheduler still holds (an earlier or concurrent run of the
        # same digest, e.g. to another output) would otherwise be reused and its block never written here
        self.run_id = uuid.uuid4().hex[:8]
        self.ctx = replace(ctx, topic=f"isovol-blocks-{self.run_id}")
        self.started: dict[str, tuple[float, str]] = {}  # task key -> (when it started executing, on which worker)
        self.results: dict[str, dict[str, Any]] = {}  # task key -> the result its task announced
        client.subscribe_topic(self.ctx.topic, self._on_event)
        self.ctx_future = self._ship_context()
        self.queue: deque[Block] = deque(blocks)
        self.attempts: dict[str, int] = {}
        self.running: dict[Any, Block] = {}
        self.aborted = False
        self.unreachable = False  # the last block settled finished, but its worker did not hand over its result

    def _on_event(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if "result" in msg:
            self.results[msg["key"]] = msg["result"]
            return
        now = time.monotonic()
        self.started.setdefault(msg["key"], (now, msg["worker"]))
        self.watch.note_started(msg["worker"], now)

    def _ship_context(self) -> Any:
        return self.client.submit(_given, self.ctx, key=f"isovol-context-{self.ctx.digest[:8]}-{self.run_id}",
                                  pure=False)

    def loop(self, bar: _Progress) -> None:
        while self.queue or self.running:
            self._fill()
            if self.aborted and not self.running:
                break
            finished = self._wait()
            now = time.monotonic()
            expired = {f for f in self.running if self.timeout and f not in finished
                       and now - self.started.get(f.key, (now, ""))[0] > self.timeout}
            for fut in [*finished, *expired]:
                since, worker = self.started.pop(fut.key, (now, ""))
                block = self.running[fut]
                if self._settle(fut, fut in expired):
                    bar.update()
                    self.watch.block_done(now - since)
                elif fut in expired:
                    self.watch.restart(worker, f"block {block.key} ran past its time-out")
                elif self.unreachable and self.timeout:
                    self.watch.restart(worker, f"block {block.key}'s worker did not answer")
            if not self.timeout:
                self.watch.warn_stalled({f.key: b.key for f, b in self.running.items()}, self.started, now)
            else:
                self._restart_silent(now)
            gone = self.watch.workers_gone_for()
            if self.running and gone > self.watch.worker_wait:
                self.summary.stopped = f"the cluster has had no workers for {gone:.0f} s"
                log.error("%s; stopping (rerun with --resume once the cluster has workers)", self.summary.stopped)
                break
        self.summary.not_run = len(self.queue) + len(self.running)

    def _restart_silent(self, now: float) -> None:
        """Restart workers frozen before any block they hold could start (no block of theirs can time out)."""
        waiting = {str(f.key) for f in self.running if f.key not in self.started}
        if self.ctx_future.status == "pending":
            waiting.add(str(self.ctx_future.key))
        if not waiting:
            return
        limit = 2 * self.timeout  # type: ignore[operator]
        for worker in self.watch.silent_holders(waiting, now, limit):
            self.watch.restart(worker, f"worker {worker} holds blocks and started none for {limit:.0f} s")

    def _fill(self) -> None:
        if self.ctx_future.status in ("cancelled", "lost"):  # released by the scheduler after all: ship it again
            self.ctx_future = self._ship_context()
        while self.queue and not self.aborted and len(self.running) < self.watch.limit():
            block = self.queue.popleft()
            key = f"isovol-block-{block.key}-{self.ctx.digest[:8]}-{self.run_id}-{self.attempts.get(block.key, 0)}"
            self.running[self.client.submit(run_block, self.ctx_future, block, key=key, pure=False)] = block

    def _wait(self) -> set[Any]:
        from distributed import wait
        from distributed.client import FuturesCancelledError

        try:
            finished, _ = wait(list(self.running), timeout=min(self.timeout or 1.0, 1.0),
                               return_when="FIRST_COMPLETED")
            return set(finished)
        except TimeoutError:
            return set()
        except FuturesCancelledError:  # released by the scheduler: settled as transient failures
            return {f for f in self.running if f.status != "pending"}

    def _settle(self, fut: Any, expired: bool) -> bool:
        """Book a finished or expired future; True when its block is done."""
        block = self.running.pop(fut)
        if expired:
            fut.cancel()
            exc: BaseException | None = TimeoutError(f"block {block.key} ran past {self.timeout:.0f} s")
        elif fut.status == "cancelled":
            exc = TimeoutError(f"block {block.key} was cancelled")
        else:
            exc = fut.exception() if fut.status == "error" else None
        result: dict[str, Any] | None = self.results.pop(fut.key, None)
        self.unreachable = False
        if exc is None and result is None:  # not announced (yet): fetch it, but a frozen worker must not hang us
            try:
                result = fut.result(timeout=RESULT_TIMEOUT) or {}
            except Exception as err:  # noqa: BLE001 - any failure to fetch makes the block a transient failure
                self.unreachable = True
                exc = TimeoutError(f"block {block.key} finished but its worker did not hand over its result "
                                   f"({_one_line(err)})")
        result = result or {}
        if exc is None and "error" not in result:
            self.summary.done += 1
            counts = result.get("nonfinite", (0, 0))
            self.summary.nonfinite = tuple(a + b for a, b in zip(self.summary.nonfinite, counts))  # type: ignore
            self.summary.voxels += int(result.get("voxels", 0))
            merge(self.summary.phases, result.get("phases"))
            return True
        if exc is None:  # bad data, said once in the final summary (block_reports): no retry, no line per block
            self.summary.failed[block.key] = result["error"]
            log.debug("block %s failed: %s", block.key, result["error"])
            return self._count_failure()
        n = self.attempts[block.key] = self.attempts.get(block.key, 0) + 1
        if is_transient(exc) and n <= self.retries:
            self.summary.retried += 1
            log.warning("block %s: transient error, retry %d/%d: %s", block.key, n, self.retries, _one_line(exc))
            self.queue.append(block)
            return False
        self.summary.failed[block.key] = _one_line(exc)
        log.error("block %s failed: %s", block.key, _one_line(exc))
        return self._count_failure()

    def _count_failure(self) -> bool:
        if len(self.summary.failed) >= self.max_failures and not self.aborted:
            self.aborted = True
            log.error("stopping after %d failed blocks", len(self.summary.failed))
        return False

    def close(self) -> None:
        for fut in self.running:
            fut.cancel()
        self.ctx_future.cancel()
        self.client.unsubscribe_topic(self.ctx.topic)


def _given(value: Any) -> Any:
    """The run's context as the result of a task (see _Run)."""
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()

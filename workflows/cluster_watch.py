"""What the executor's client watches on the cluster while blocks run: how many workers there are (how many blocks
to keep submitted, and whether the cluster lost them all for good), workers to restart, and blocks that look stuck.

Lost and frozen workers, and what each mechanism covers:

- **A worker process dies** (killed, out of memory): its nanny starts a new one and the scheduler reruns the blocks
  it held; the executor retries them further if that is not enough (``--retries``).
- **A worker freezes** (stopped, hung in I/O): with ``--block-timeout`` the executor resubmits the block and asks
  the scheduler to restart that worker (``restart``): its nanny kills the frozen process and starts a new one, which
  also frees the blocks queued on it.  A worker frozen before any of its blocks could say it started (while it
  unpacks the run's context, say) has no block to time out: ``silent_holders`` finds it as a worker that holds
  blocks not started and has started none for twice the time-out, and it is restarted the same way.  Without a
  time-out, dask's scheduler restarts a worker that has not sent a
  heartbeat for ``distributed.scheduler.worker-ttl`` (5 minutes by default), and ``warn_stalled`` names a block
  that runs far longer than the others, with its worker, so the wait is not silent.
- **The cluster has no workers left** and none come back within ``worker_wait`` (a nanny cannot restart itself;
  a batch job was cancelled): the executor stops, and ``--resume`` continues later.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

#: seconds a run waits for a cluster that lost all its workers to give some back (the cluster config's
#: ``worker_wait`` overrides it)
WORKER_WAIT = 300.0
#: a block that runs this long, and five times longer than the median block so far, is named in a warning
STALL_SECONDS = 120.0
#: seconds the scheduler may take to restart a worker (its nanny waits 4 s for a clean exit before it kills)
RESTART_TIMEOUT = 60.0


class ClusterWatch:
    """The worker count, re-read every few seconds because workers of a batch-queue or adaptive cluster arrive
    (and leave) while the run is going; restarts of workers whose block timed out; warnings about stuck blocks."""

    def __init__(self, client: Any, fixed: int | None, worker_wait: float = WORKER_WAIT):
        self.client, self.fixed, self.worker_wait = client, fixed, worker_wait
        self.every = min(5.0, max(0.2, worker_wait / 4))
        self.value, self.checked = 1, -float("inf")  # worker threads, and when they were last counted
        self.empty_since: float | None = None  # when the cluster was first seen without workers, if it is now
        self.durations: deque[float] = deque(maxlen=200)  # seconds of the latest blocks done
        self.warned: set[str] = set()
        self.active: dict[str, float] = {}  # worker -> when it last started a block (or was first seen)
        self.probed = -float("inf")  # when the scheduler was last asked which worker holds what
        if fixed is None and not client.nthreads():
            log.info("waiting for the first worker to join the cluster")
            client.wait_for_workers(1)

    def limit(self) -> int:
        """How many blocks to keep submitted: four per worker thread -- one finishing its writes and one in its
        last compute, both after handing the thread over (``block_task._hand_over_thread``), one reading its
        input meanwhile, one queued so the thread never waits for the client."""
        return self.fixed if self.fixed is not None else 4 * self.threads()

    def threads(self) -> int:
        """Worker threads in the cluster now (at least 1)."""
        now = time.monotonic()
        if now - self.checked >= self.every:
            self.checked = now
            n = sum(self.client.nthreads().values())
            self.empty_since = None if n else (self.empty_since or now)
            self.value = max(1, n)
        return self.value

    def workers_gone_for(self) -> float:
        """Seconds the cluster has been without any worker (0 while it has one)."""
        self.threads()
        return 0.0 if self.empty_since is None else time.monotonic() - self.empty_since

    def restart(self, worker: str, why: str) -> None:
        """Have the scheduler restart ``worker`` through its nanny (a new process in its place).  A worker without
        a nanny cannot be restarted: dask's worker-ttl removes it once it stops sending heartbeats."""
        if not worker:
            return
        log.warning("%s: restarting its worker %s", why, worker)
        try:
            status = self.client.restart_workers([worker], timeout=RESTART_TIMEOUT, raise_for_error=False)
        except Exception as exc:  # e.g. ValueError: the worker has no nanny
            log.warning("could not restart %s: %s", worker, str(exc).splitlines()[0] if str(exc) else exc)
            return
        if status.get(worker, "OK") not in ("OK", "removed"):  # absent: the worker had left already
            log.warning("restarting %s: %s", worker, status[worker])
        self.checked = -float("inf")  # count the workers afresh

    def note_started(self, worker: str, now: float) -> None:
        self.active[worker] = now

    def silent_holders(self, waiting: set[str], now: float, limit: float) -> list[str]:
        """Workers that hold tasks of ``waiting`` (submitted, not started) and have started no block for ``limit``
        seconds: frozen before their blocks could start.  Asks the scheduler at most once per ``limit``."""
        if now - self.probed < limit:
            return []
        self.probed = now
        try:
            held = self.client.processing()
        except Exception as exc:  # the scheduler is busy or gone: the next probe tries again
            log.debug("cannot ask the scheduler which worker holds what: %s", exc)
            return []
        silent = []
        for worker, keys in held.items():
            first = self.active.setdefault(worker, now)  # a worker seen for the first time gets its full limit
            if now - first > limit and any(str(k) in waiting for k in keys):
                silent.append(worker)
        return silent

    def block_done(self, seconds: float) -> None:
        self.durations.append(seconds)

    def warn_stalled(self, running: dict[str, str], started: dict[str, tuple[float, str]], now: float) -> None:
        """Warn once about each block that has run ``STALL_SECONDS`` and five times the median block so far.

        ``running``: task key -> block key; ``started``: task key -> (start time, worker)."""
        limit = max(STALL_SECONDS, 5 * statistics.median(self.durations)) if self.durations else STALL_SECONDS
        for key, block in running.items():
            since, worker = started.get(key, (now, ""))
            if now - since > limit and key not in self.warned:
                self.warned.add(key)
                typical = f", blocks so far took {statistics.median(self.durations):.0f} s" if self.durations else ""
                log.warning("block %s has run for %.0f s on worker %s%s: if that worker is frozen, dask restarts it "
                            "after distributed.scheduler.worker-ttl (5 minutes by default); --block-timeout SECONDS "
                            "retries such blocks sooner", block, now - since, worker, typical)

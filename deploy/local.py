"""Clusters on one machine, and joining an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import dask

#: dask sets MALLOC_TRIM_THRESHOLD_=65536 in worker processes to hand memory back to the OS sooner.  Any
#: explicit value turns off glibc's adaptive mmap threshold, so every large numpy temporary becomes a fresh
#: mmap with page faults on first touch: measured 4x slower interpolation and 2x slower blocks end to end.
#: isovol's blocks are bounded, so memory stays flat without it; the setting is removed for our workers.
FAST_MALLOC = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
#: Where dask's setting cannot be removed -- workers started by ``dask worker`` in batch jobs and pods, or a
#: client process whose environment an earlier plain dask cluster already set it in -- a fixed mmap threshold of
#: 32 MiB (glibc's own upper bound for the adaptive one) keeps the block-sized temporaries on the heap: measured
#: nearest end to end 86-94 -> 144-182 Mvox/s with dask's trim setting left in place (BENCHMARKS.md, issue 18).
#: glibc reads it once, at process start, so it is set in the environment the worker process starts with.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


def worker_malloc_config() -> dict[str, Any]:
    """The dask config for worker processes a nanny spawns on this machine: dask's trim setting removed and the
    mmap threshold fixed (pre-spawn environment: set before the worker process starts, as glibc needs)."""
    return {FAST_MALLOC: None, **{f"distributed.nanny.pre-spawn-environ.{k}": v
                                  for k, v in WORKER_MALLOC_ENV.items()}}


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def quiet_dask_logs(level: int = logging.WARNING) -> None:
    """dask sets its loggers to INFO; a batch log wants our lines, and dask's only when they matter."""
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None, *, processes: bool = True,
                   threads_per_worker: int = 1) -> Iterator[Any]:
    """A dask Client: on ``scheduler`` if given, else on an embedded LocalCluster closed on exit."""
    from distributed import Client, LocalCluster

    quiet_dask_logs()
    if scheduler:
        client = Client(scheduler, timeout="60s")
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or default_workers()
    extra: dict[str, Any] = {}
    if processes:
        # each worker process gets its share of the cores for torch/BLAS, not all of them (N workers each
        # using every core run several times slower than N workers using one core each)
        share = max(1, (os.cpu_count() or 1) // n)
        extra["env"] = {v: str(share) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set(worker_malloc_config()):
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                               dashboard_address=":0", silence_logs=logging.ERROR, **extra)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()

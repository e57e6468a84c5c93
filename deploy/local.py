"""Clusters on one machine, and joining an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any


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
    cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=threads_per_worker,
                           processes=processes, dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()

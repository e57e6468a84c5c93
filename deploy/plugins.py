"""The worker plugin of isovol runs: models loaded once per worker, GPU memory handed back between blocks.

``register(client)`` installs :class:`ModelPlugin` on every worker of the cluster, present and future (workers
that a batch-queue or adaptive cluster adds later get it when they join).  It is idempotent: registering it again
for the next run keeps the workers' loaded models.

- **Model once per worker.**  ``setup`` switches on the process-wide model cache
  (``pipeline/methods/cache.py``); methods ask it for their model, keyed by (kind, path, weights hash, device),
  so a worker loads a model once for all its blocks and for every later run on the same cluster, instead of
  once per run.  ``teardown`` (worker closing, plugin removed) drops the models and frees their GPU memory.
- **GPU memory between tasks.**  After each isovol block the worker hands torch's cached but unused CUDA blocks
  back (``torch.cuda.empty_cache``), so a worker that sits between runs, or runs another method next, does not
  hoard memory its block no longer needs.  The model itself stays.  Guarded: nothing happens (and torch is never
  imported) in a worker that has not used CUDA.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ..pipeline.io.urls import mask_logs
from ..pipeline.methods import cache

log = logging.getLogger(__name__)

NAME = "isovol-models"
#: the prefix of the executor's block task keys (workflows/executor.py)
BLOCK_KEY_PREFIX = "isovol-block-"
_RUNNING = ("executing", "long-running")


class ModelPlugin(WorkerPlugin):
    """Model cache per worker and GPU memory release after each block (see the module docstring)."""

    name = NAME
    idempotent = True  # registering again (next run) keeps the workers' plugin and its loaded models

    def __init__(self, capacity: int = 2, release_after_block: bool = True):
        self.capacity = capacity
        self.release_after_block = release_after_block
        self.cache: cache.ModelCache | None = None
        self.releases = 0

    def setup(self, worker: Any) -> None:
        self.cache = cache.enable(self.capacity)
        mask_logs()  # a worker's log lines (a failed task's error) mask storage-option values too

    def teardown(self, worker: Any) -> None:
        if self.cache is not None:
            self.cache = None
            cache.disable()

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        # runs in the worker's event loop; a block task ends from "executing", or from "long-running" once it has
        # handed its thread over (workflows/executor.py, _hand_over_thread)
        if (self.release_after_block and start in _RUNNING and finish not in _RUNNING and isinstance(key, str)
                and key.startswith(BLOCK_KEY_PREFIX) and cache.release_gpu_memory()):
            self.releases += 1

    def stats(self) -> dict[str, Any]:
        c = self.cache
        return {"loads": c.loads if c else 0, "hits": c.hits if c else 0, "models": len(c.keys()) if c else 0,
                "releases": self.releases}


def register(client: Any, **kwargs: Any) -> None:
    """Install :class:`ModelPlugin` on all workers of ``client``'s cluster, now and as they join."""
    client.register_plugin(ModelPlugin(**kwargs), name=NAME)


def _stats(dask_worker: Any) -> dict[str, Any]:
    plugin = dask_worker.plugins.get(NAME)
    return plugin.stats() if plugin is not None else {}


def worker_stats(client: Any) -> dict[str, dict[str, Any]]:
    """Per worker address: models loaded, cache hits, models held, GPU releases."""
    return client.run(_stats)

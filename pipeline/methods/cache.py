"""A process-wide cache of loaded models, which a host (the dask worker plugin in ``deploy/plugins.py``) may
switch on for the life of a worker.

Without it a method loads its model lazily, once per copy of the method object: the executor ships one copy to
each worker per run, so every run (and every Stage II / evaluation pass on the same cluster) loads the weights
again.  With it, a worker keeps the model it loaded, keyed by (kind, path, weights hash, device), for every later
block and run, and frees it -- and the GPU memory behind it -- when the worker closes.  The key carries the
weights hash, so a changed checkpoint is a different model, never a stale one.

This module knows nothing about dask: it is a dictionary with a counter and a lock.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ModelCache:
    """Loaded models by key, at most ``capacity`` of them (least recently used dropped first)."""

    def __init__(self, capacity: int = 2):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.loads = 0  # models built: the test and the benchmark read this
        self.hits = 0
        self._models: OrderedDict[Hashable, Any] = OrderedDict()
        # one lock for lookup and build: two threads of one worker asking for the same model load it once
        self._lock = threading.RLock()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._models:
                self.hits += 1
                self._models.move_to_end(key)
                return self._models[key]
            model = build()
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
                release_gpu_memory()
            return model

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        gc.collect()
        release_gpu_memory()


_active: ModelCache | None = None
_users = 0
_guard = threading.Lock()


def enable(capacity: int = 2) -> ModelCache:
    """Switch the cache on for this process (reference-counted: in-process workers share one)."""
    global _active, _users
    with _guard:
        if _active is None:
            _active = ModelCache(capacity)
        _users += 1
        return _active


def disable() -> None:
    """Drop one reference; the last one clears the cache and frees its models."""
    global _active, _users
    with _guard:
        _users = max(0, _users - 1)
        cache = _active if _users == 0 else None
        if cache is not None:
            _active = None
    if cache is not None:
        cache.clear()


def active() -> ModelCache | None:
    return _active


def shared_model(key: Hashable, build: Callable[[], Any]) -> Any | None:
    """The cached model for ``key`` (built on first use) when the cache is on, else None: the caller then loads
    its own, as it would outside a worker."""
    cache = _active
    return None if cache is None else cache.get(key, build)


def release_gpu_memory() -> bool:
    """Hand torch's cached but unused CUDA blocks back to the driver.  Never imports torch and never creates a
    CUDA context: only a process that already uses CUDA has anything to release.  True if it did."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        if not torch.cuda.is_initialized():
            return False
        torch.cuda.empty_cache()
        return True
    except Exception:  # a torch without CUDA, or a stub
        return False

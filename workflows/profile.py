"""Where a run's time goes, from timings each block records itself (``isovol upsample --profile``).

A block's task times its phases: reading its input (decode and edge padding included), the method, encoding its
shards (zarr's write, less the checksum and the store), checksumming them for the marker, the store's write (a
file write or a PUT), making them durable (fsync) and writing the marker.  Phases of a pipelined block overlap
(the next piece is read while the current one computes), so their sum can exceed the block's wall time; the
run's wall time against the busiest phase says whether the data path or the method is what limits a run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: the phases of a block, in the order its data passes through them
PHASES = ("read", "method", "encode", "checksum", "store", "fsync", "marker")


class Phases:
    """Seconds per phase of one block; thread-safe, since a pipelined block reads and writes on helper threads."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._lock = threading.Lock()

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] += seconds

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def timed(self, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, its time counted to ``phase`` (for work handed to a thread pool)."""
        with self.timing(phase):
            return fn(*args)

    def split_write(self, seconds: float, checksum: float, store: float) -> None:
        """Book a shard write of ``seconds`` in all: what the store and the checksum did not take was encoding."""
        self.add("checksum", checksum)
        self.add("store", store)
        self.add("encode", max(seconds - checksum - store, 0.0))


def merge(total: dict[str, float], part: dict[str, float] | None) -> None:
    """Add one block's phases to a run's."""
    for phase, seconds in (part or {}).items():
        total[phase] = total.get(phase, 0.0) + float(seconds)


def table(phases: dict[str, float], voxels: int, blocks: int, wall: float, workers: int | None) -> list[str]:
    """The profile as lines: per phase its seconds, share, ms per block and output Mvox/s per busy second."""
    busy = sum(phases.values()) or 1e-12
    lines = [f"profile of {blocks} blocks, {voxels / 1e6:.1f} Mvox in {wall:.1f} s "
             f"({voxels / 1e6 / max(wall, 1e-12):.1f} Mvox/s end to end"
             + (f" on {workers} workers)" if workers else ")"),
             f"{'phase':<9} {'seconds':>9} {'share':>6} {'ms/block':>9} {'Mvox/s':>9}"]
    for phase in PHASES:
        s = phases.get(phase, 0.0)
        rate = f"{voxels / 1e6 / s:9.1f}" if s > 0 else f"{'-':>9}"
        lines.append(f"{phase:<9} {s:9.2f} {100 * s / busy:5.1f}% {1e3 * s / max(blocks, 1):9.1f} {rate}")
    return lines

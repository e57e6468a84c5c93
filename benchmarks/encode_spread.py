"""Does the shard-writing path spread over a node's cores: within one process, and across processes?  (issue 18:
what a 16-core GPU node would reach)

    python benchmarks/encode_spread.py [--volume PATH.npy] [--pools 1 2 4] [--writers 2 4] [--blocks 8] [--yx 512]

Encoding and storing shards is most of the executor's CPU time per output voxel (``datapath.py``'s profile), and a
GPU worker is one process.  zarr encodes the chunks of a shard concurrently on the thread pool of the event loop
that runs the write -- in isovol a loop of the writing thread's own (``pipeline/io/loops.py``) -- while the rest of
the write (the codec pipeline's Python, the sharding codec's assembly, the per-chunk copies) runs on the loop's
own thread.  Three ways to give the same write more cores, each row the same blocks written through zarr's
asynchronous API, as ``loops.write`` does:

- **one writer thread, its loop's pool limited to k threads** (how far zarr's own concurrency goes);
- **N writer threads in one process**, each with a loop of its own (a writer thread pool per worker);
- **N writer processes** (forked; more worker processes per node);
- **isovol's shard writer** (``pipeline/io/shard_writer.py``, what ``loops.write`` uses for whole shards): each
  inner chunk encoded on the loop's pool with zarr's own codecs, the loop only joining the pieces.

No fsync (the disk is not the question); the data is made beforehand.  "cores busy" is the CPU time of the
writing process(es) over the wall time: where rows with more threads stay at the same cores busy while processes
go higher, the Python part of the write holds the GIL, and one process cannot write faster however many cores
its node has.

Data: FlyEM medulla FIB-SEM (training_sample1, ``../shared/data``), every 8th slice nearest-upsampled by 8 (what
the ``nearest`` rows of datapath.py write), mirrored in Y/X to fill a block of 128 x --yx x --yx; the layout isovol
creates (``omezarr.create_image``: blosc-zstd-1 with shuffle, 64^3 chunks in 128 x 256 x 256 shards) and
isovol's n-d buffer class.  Each row is the best of --repeats.  Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from datapath import DEFAULT_VOLUME, FACTOR, mirrored_low  # the same data as the executor's rows (this folder)

_BLOCK: np.ndarray | None = None  # the block every writer writes; set before forking, so children share it


def make_block(volume: str, yx: int, depth: int = 128) -> np.ndarray:
    """``depth`` x yx x yx uint8: datapath.py's input (every 8th slice, mirrored in Y/X), nearest-upsampled by 8."""
    from isovol.pipeline.methods.interp import Interpolation

    return np.ascontiguousarray(Interpolation("nearest").apply(mirrored_low(volume, yx), FACTOR, 0, depth))


def create(url: str, blocks: int) -> None:
    """An empty output with room for ``blocks`` blocks side by side in Y."""
    from isovol.pipeline.io.omezarr import create_image

    b = _BLOCK
    create_image(url, None, shape=(b.shape[0], b.shape[1] * blocks, b.shape[2]), dtype=b.dtype, chunks=(64, 64, 64),
                 shards=(128, 256, 256), voxel_size=(10.0, 10.0, 10.0), translation=(0.0, 0.0, 0.0), provenance={})


def write_isovol(url: str, which: range) -> None:
    """Write blocks ``which`` from this thread as the executor does (``loops.write``: isovol's shard writer, on
    the thread's own loop and its default pool)."""
    import zarr

    from isovol.pipeline.io.loops import write

    arr, b = zarr.open_array(store=url, path="0", mode="r+"), _BLOCK
    for i in which:
        write(arr, (slice(0, b.shape[0]), slice(i * b.shape[1], (i + 1) * b.shape[1]), slice(0, b.shape[2])), b)


def write_some(url: str, which: range, pool: int) -> None:
    """Write blocks ``which`` of the output at ``url`` from this thread, on a loop of its own with ``pool``
    threads (zarr's asynchronous API throughout: a forked child has no zarr event-loop thread)."""
    import zarr.api.asynchronous as az

    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=pool)
    loop.set_default_executor(executor)
    b = _BLOCK
    try:
        arr = loop.run_until_complete(az.open_array(store=url, path="0", mode="r+"))
        for i in which:
            box = (slice(0, b.shape[0]), slice(i * b.shape[1], (i + 1) * b.shape[1]), slice(None))
            loop.run_until_complete(arr.setitem(box, b))
    finally:
        loop.close()
        executor.shutdown()


def threads_row(url: str, blocks: int, writers: int, pool: int) -> float:
    """Wall seconds for ``writers`` threads of this process writing ``blocks`` blocks between them through zarr
    (``pool`` > 0: its pool's threads) or isovol's writer (``pool`` 0)."""
    ths = [threading.Thread(target=write_some, args=(url, range(w, blocks, writers), pool)) if pool else
           threading.Thread(target=write_isovol, args=(url, range(w, blocks, writers))) for w in range(writers)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return time.perf_counter() - t0


def processes_row(url: str, blocks: int, writers: int, pool: int) -> float:
    """Wall seconds for ``writers`` forked processes writing ``blocks`` blocks between them."""
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=write_some, args=(url, range(w, blocks, writers), pool)) for w in range(writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a writer process failed (exit {p.exitcode})")
    return time.perf_counter() - t0


def measure(root: str, blocks: int, repeats: int, row: Callable[[str, int], float]) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of this process and its children in that run) of ``row``."""
    best = (float("inf"), 0.0)
    for i in range(repeats):
        url = os.path.join(root, f"out-{i}.ome.zarr")
        create(url, blocks)
        c0 = _cpu_seconds()
        wall = row(url, blocks)
        best = min(best, (wall, _cpu_seconds() - c0))
        shutil.rmtree(url)
    return best


def _cpu_seconds() -> float:
    """User plus system CPU seconds of this process and of its children that have ended."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    global _BLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=DEFAULT_VOLUME)
    ap.add_argument("--pools", type=int, nargs="+", default=[1, 2, 4], help="pool threads of one writer thread")
    ap.add_argument("--writers", type=int, nargs="+", default=[2, 4], help="writer threads, and processes")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--yx", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many writes per row")
    ap.add_argument("--quick", action="store_true", help="yx 256, 4 blocks, 1 repeat: a dry run")
    args = ap.parse_args()
    if args.quick:
        args.yx, args.blocks, args.repeats = 256, 4, 1
    if min(args.pools) < 1:
        ap.error("--pools: at least one thread")
    import isovol.pipeline.io.loops  # noqa: F401 - isovol's n-d buffer class, as every writer has it

    _BLOCK = make_block(args.volume, args.yx)
    voxels = _BLOCK.size * args.blocks
    pool = max(args.pools)
    rows: list[tuple[str, Callable[[str, int], float]]] = [
        *((f"zarr, 1 writer thread, pool of {k}", lambda u, n, k=k: threads_row(u, n, 1, k)) for k in args.pools),
        *((f"zarr, {w} writer threads, pools of {pool}", lambda u, n, w=w: threads_row(u, n, w, pool))
          for w in args.writers),
        *((f"zarr, {w} writer processes, pools of {pool}", lambda u, n, w=w: processes_row(u, n, w, pool))
          for w in args.writers),
        *((f"isovol's shard writer, {w} writer thread{'s' * (w > 1)}", lambda u, n, w=w: threads_row(u, n, w, 0))
          for w in [1, *args.writers]),
    ]
    root = tempfile.mkdtemp(prefix="isovol-encode-")
    print(f"Measured {datetime.date.today()} on {platform.machine()} ({os.cpu_count()} cores); "
          f"{args.blocks} blocks of {_BLOCK.shape} uint8 ({voxels / 1e6:.0f} Mvox), best of {args.repeats}.\n")
    print("| writing with | Mvox/s | cores busy | vs zarr, 1 writer thread, pool of 1 |")
    print("|---|---|---|---|")
    base = 0.0
    try:
        for name, row in rows:
            wall, cpu = measure(root, args.blocks, args.repeats, row)
            rate = voxels / 1e6 / wall
            base = base or rate
            print(f"| {name} | {rate:.0f} | {cpu / wall:.2f} | {rate / base:.2f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

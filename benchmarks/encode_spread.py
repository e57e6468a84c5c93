"""Does one worker's shard encoding spread over a node's cores?  (issue 18: what a 16-core GPU node would reach)

    python benchmarks/encode_spread.py [--volume PATH.npy] [--threads 1 2 4 8 16] [--blocks 8] [--yx 512]

Encoding is over half of the executor's CPU time per output voxel (``datapath.py``'s profile), and a GPU worker is
one process with one task thread.  zarr encodes the chunks of a shard concurrently (up to its ``async.concurrency``)
on the thread pool of the event loop that runs the write -- in isovol the task thread's own loop
(``pipeline/io/loops.py``) -- so whether one worker can use a node's cores depends on how much of a write runs on
that pool, outside the GIL, and how much on the loop's one thread.  This measures it: one thread writes the same
blocks, each through zarr's asynchronous API on a loop of its own (as ``loops.write`` does), with the loop's pool
limited to k threads.  No fsync (the disk is not the question); the data is made beforehand.

Data: FlyEM medulla FIB-SEM (training_sample1, ``../shared/data``), every 8th slice nearest-upsampled by 8 (what
the ``nearest`` rows of datapath.py write), mirrored in Y/X to fill a block of 128 x --yx x --yx; the output
layout isovol creates (``omezarr.create_image``: blosc-zstd-1 with shuffle, 64^3 chunks in 128 x 256 x 256 shards,
isovol's n-d buffer class).  "cores busy" is the process's CPU time over the wall time.  From the speed-up S at k
threads the share of the work that spreads is p = (1 - 1/S) / (1 - 1/k) (Amdahl), and the rate a node with more
cores would reach follows; a projection, printed as such, only where k does not exceed this machine's cores.
Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FACTOR = 8
DEFAULT_VOLUME = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "flyem_medulla_fibsem_10nm",
                              "training_sample1", "training_sample1_zyx_uint8.npy")


def make_block(volume: str, yx: int, depth: int = 128) -> np.ndarray:
    """``depth`` x yx x yx uint8: the volume's every 8th slice, nearest-upsampled by 8, mirrored in Y/X."""
    from isovol.pipeline.methods.interp import Interpolation

    low = np.load(volume, mmap_mode="r")[::FACTOR]
    reps = -(-yx // low.shape[1])
    tiled = np.pad(np.asarray(low), ((0, 0), (0, (reps - 1) * low.shape[1]), (0, (reps - 1) * low.shape[2])),
                   mode="symmetric")[:, :yx, :yx]
    return np.ascontiguousarray(Interpolation("nearest").apply(tiled, FACTOR, 0, depth))


def write_blocks(root: str, block: np.ndarray, blocks: int, threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) for one thread writing ``blocks`` copies of ``block`` side by
    side in Y, on an event loop whose pool has ``threads`` threads."""
    from isovol.pipeline.io.omezarr import create_image

    url = os.path.join(root, f"out-{threads}.ome.zarr")
    shape = (block.shape[0], block.shape[1] * blocks, block.shape[2])
    arr = create_image(url, None, shape=shape, dtype=block.dtype, chunks=(64, 64, 64), shards=(128, 256, 256),
                       voxel_size=(10.0, 10.0, 10.0), translation=(0.0, 0.0, 0.0), provenance={})
    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(max_workers=threads)
    loop.set_default_executor(pool)
    try:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        for i in range(blocks):
            box = (slice(0, block.shape[0]), slice(i * block.shape[1], (i + 1) * block.shape[1]), slice(None))
            loop.run_until_complete(arr.async_array.setitem(box, block))
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    finally:
        loop.close()
        pool.shutdown()
        shutil.rmtree(url)
    return wall, cpu


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def spread(speedup: float, k: int) -> float:
    """Amdahl's parallel share from the speed-up at ``k`` threads (1 for perfect spread, 0 for none)."""
    return (1 - 1 / speedup) / (1 - 1 / k) if k > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=DEFAULT_VOLUME)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--yx", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many writes per row")
    ap.add_argument("--quick", action="store_true", help="yx 256, 2 blocks, 1 repeat: a dry run")
    args = ap.parse_args()
    if args.quick:
        args.yx, args.blocks, args.repeats = 256, 2, 1
    import isovol.pipeline.io.loops  # noqa: F401 - isovol's n-d buffer class, as every writer has it

    cores = os.cpu_count() or 1
    block = make_block(args.volume, args.yx)
    voxels = block.size * args.blocks
    root = tempfile.mkdtemp(prefix="isovol-encode-")
    print(f"Measured {datetime.date.today()} on {platform.machine()} ({cores} cores); one thread writes "
          f"{args.blocks} blocks of {block.shape} uint8 ({voxels / 1e6:.0f} Mvox), best of {args.repeats}.\n")
    print("| pool threads | Mvox/s | cores busy | speed-up over 1 | share that spreads (Amdahl) |")
    print("|---|---|---|---|---|")
    base, best_p = 0.0, None
    try:
        for k in args.threads:
            wall, cpu = min(write_blocks(root, block, args.blocks, k) for _ in range(args.repeats))
            rate = voxels / 1e6 / wall
            base = base or rate
            p = spread(rate / base, k) if k <= cores else None
            best_p = p if p is not None and k > 1 else best_p
            share = "" if k == 1 else (f"{p:.2f}" if p is not None else f"(more threads than the {cores} cores)")
            print(f"| {k} | {rate:.0f} | {cpu / wall:.2f} | {rate / base:.2f} | {share} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if best_p is not None:
        proj = ", ".join(f"{n} cores {base / ((1 - best_p) + best_p / n):.0f}" for n in (4, 8, 16))
        print(f"\nProjection from the share at {min(max(args.threads), cores)} threads (p = {best_p:.2f}), one "
              f"writer thread: {proj} Mvox/s.")


if __name__ == "__main__":
    main()

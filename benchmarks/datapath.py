"""The executor's data path on CPU, with stand-in methods of known cost (issue 18 (a), (b) and the scale check).

    python benchmarks/datapath.py [--quick] [--yx 2048] [--workers 1 2] [--rates 300 1000] [--scale 100 1000 10000]

(a) ``nearest`` (almost no compute) through the whole executor -- read, method, encode, write, fsync, marker --
    in output Mvox/s, next to the ceiling: zarr-python alone writing the same shards with the same codec from one
    process (the data made beforehand; without and with an fsync per shard, as the executor does; the best of 3,
    since this VM's rate moves from run to run).  Every row also gives the CPU time, of all worker processes and
    the client, per output voxel: the measure the noise of a shared VM moves least, and what a node's cores bound.
(b) A stand-in "GPU" method: nearest, then a GIL-free wait sized so that the method alone runs at R Mvox/s per
    worker (a network that fast).  The end-to-end rate over ``workers * R`` is the efficiency a GPU would see.
(c) Scale: the executor's own cost per block and the client's memory as the block count grows (32^3-voxel blocks
    of a method that writes zeros; per-block wall time and the client process's peak RSS).

Input: FlyEM medulla FIB-SEM (training_sample1, 250^3 at 10 nm, ``../shared/data``): every 8th slice (32 slices),
mirrored in Y/X to --yx; factor 8, output 249 x yx x yx uint8 (1.04 Gvox at yx 2048).  Blocks 128 x 512 x 512
of 64^3 chunks in 128 x 256 x 256 shards unless told.  Each worker is a process with one thread, as GPU workers
are, started as isovol starts them (``deploy.local.cluster_client``); ``--plain-dask`` starts a plain dask
LocalCluster instead, with dask's worker settings (its MALLOC_TRIM_THRESHOLD_: the "before" of deploy/README.md).
Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

FACTOR = 8
DEFAULT_VOLUME = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "flyem_medulla_fibsem_10nm",
                              "training_sample1", "training_sample1_zyx_uint8.npy")


# -- stand-in methods (defined here, shipped to the workers by value) --------------------------------------------
def standin_entry(rate_mvox: float) -> Any:
    """A registry entry ``standin-<rate>``: a method that takes voxels / rate seconds in all, as a network at that
    model-only rate would: nearest makes the output, a sleep (the GIL released) the rest of the time."""
    from isovol.pipeline.methods.base import Method
    from isovol.pipeline.methods.interp import Interpolation
    from isovol.pipeline.methods.registry import Kind, MethodEntry

    class StandIn(Method):
        name, z_split_exact = f"standin-{rate_mvox:g}", True

        def apply(self, data: np.ndarray, factor: int, start: int, stop: int) -> np.ndarray:
            t0 = time.perf_counter()
            out = Interpolation("nearest").apply(data, factor, start, stop)
            time.sleep(max(0.0, out.size / (rate_mvox * 1e6) - (time.perf_counter() - t0)))
            return out

    return MethodEntry(f"standin-{rate_mvox:g}", Kind.CLASSICAL, "benchmark stand-in", lambda _m, **_o: StandIn())


def zeros_entry() -> Any:
    """``zeros``: a block of zeros, the executor's cost alone."""
    from isovol.pipeline.methods.base import Method
    from isovol.pipeline.methods.registry import Kind, MethodEntry

    class Zeros(Method):
        name, z_split_exact = "zeros", True

        def apply(self, data: np.ndarray, factor: int, start: int, stop: int) -> np.ndarray:
            return np.zeros((stop - start,) + data.shape[1:], data.dtype)

    return MethodEntry("zeros", Kind.CLASSICAL, "benchmark stand-in", lambda _m, **_o: Zeros())


def register(*items: Any) -> None:
    from isovol.pipeline.methods import registry

    for e in items:
        registry.entries()[e.name] = e


# -- data ------------------------------------------------------------------------------------------------------
def mirrored_low(volume: str, yx: int) -> np.ndarray:
    """The volume's every FACTOR-th slice, mirrored in Y/X to yx x yx (the input of every row here)."""
    low = np.load(volume, mmap_mode="r")[::FACTOR]
    reps = -(-yx // low.shape[1])
    return np.pad(np.asarray(low), ((0, 0), (0, (reps - 1) * low.shape[1]), (0, (reps - 1) * low.shape[2])),
                  mode="symmetric")[:, :yx, :yx]


def make_input(root: str, volume: str, yx: int) -> tuple[str, np.ndarray]:
    from isovol.pipeline.io.omezarr import write_image

    tiled = mirrored_low(volume, yx)
    url = os.path.join(root, f"in-{yx}.ome.zarr")
    write_image(url, np.ascontiguousarray(tiled), (10.0 * FACTOR, 10.0, 10.0), chunks=(32, 256, 256))
    return url, tiled


def ceiling(root: str, low: np.ndarray, chunk: tuple, shard: tuple, fsync: bool,
            repeats: int = 3) -> tuple[float, float]:
    """(Mvox/s, ns of core time per voxel) of zarr alone writing the nearest-upsampled volume shard by shard with
    isovol's codec: the best of ``repeats`` writes, since this VM's rate moves from run to run (the strictest
    ceiling).  zarr's own buffer class, not the one isovol configures (``pipeline/io/loops.py``): this is what
    zarr-python alone achieves."""
    import zarr

    from isovol.pipeline.io.loops import ZARR_NDBUFFER

    best = (0.0, 0.0)
    with zarr.config.set({"ndbuffer": ZARR_NDBUFFER}):
        for _ in range(repeats):
            rate, ns = _ceiling_once(root, low, chunk, shard, fsync)
            best = max(best, (rate, ns))
    return best


def _ceiling_once(root: str, low: np.ndarray, chunk: tuple, shard: tuple, fsync: bool) -> tuple[float, float]:
    import zarr
    from zarr.codecs import BloscCodec

    from isovol.pipeline.methods.interp import Interpolation

    out_z = (low.shape[0] - 1) * FACTOR + 1
    data = Interpolation("nearest").apply(low, FACTOR, 0, out_z)
    path = os.path.join(root, f"ceiling-{fsync}.zarr")
    arr = zarr.create_array(zarr.storage.LocalStore(path), shape=data.shape, dtype=data.dtype, chunks=chunk,
                            shards=shard, compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
                            fill_value=0)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for z in range(0, data.shape[0], shard[0]):
        for y in range(0, data.shape[1], shard[1]):
            for x in range(0, data.shape[2], shard[2]):
                box = (slice(z, z + shard[0]), slice(y, y + shard[1]), slice(x, x + shard[2]))
                arr[box] = data[box]
                if fsync:
                    key = f"c/{z // shard[0]}/{y // shard[1]}/{x // shard[2]}"
                    fd = os.open(os.path.join(path, key), os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    shutil.rmtree(path)
    return data.size / 1e6 / seconds, 1e9 * cpu / data.size


def _cpu_seconds() -> float:
    """User plus system CPU seconds of this process, all its threads."""
    t = os.times()
    return t.user + t.system


def _workers_cpu(client: Any) -> float:
    """CPU seconds the cluster's worker processes have used so far."""
    return sum(client.run(_cpu_seconds).values())


#: per (workers, method): the executor's own per-phase seconds of the last run (``upsample --profile``)
PROFILES: dict[tuple[int, str], list[str]] = {}


def run(client: Any, root: str, src: str, method: str, block: tuple, shard: tuple,
        chunk: tuple = (64, 64, 64), workers: int = 0) -> tuple[float, int, float]:
    """(wall seconds, output voxels, CPU seconds of the workers and this process) of one upsample through the
    executor."""
    from isovol.workflows.profile import table
    from isovol.workflows.upsample import UpsampleRequest, upsample

    out = os.path.join(root, f"out-{method}.ome.zarr")
    req = UpsampleRequest(input=src, output=out, factor=FACTOR, method=method, block_shape=block,
                          shard_shape=shard, chunk_shape=chunk, progress=False, overwrite=True)
    t0, c0 = time.perf_counter(), _workers_cpu(client) + _cpu_seconds()
    summary = upsample(req, client=client)
    seconds, cpu = time.perf_counter() - t0, _workers_cpu(client) + _cpu_seconds() - c0
    assert summary.ok, summary.line()
    if workers:
        PROFILES[(workers, method)] = table(summary.phases, summary.voxels, summary.done, summary.seconds, workers)
    import zarr

    voxels = int(np.prod(zarr.open_array(os.path.join(out, "0"), mode="r").shape))
    shutil.rmtree(out)
    return seconds, voxels, cpu


class PeakRSS(threading.Thread):
    """The peak resident memory of this (the client's) process, sampled."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)


def scale_rows(client: Any, root: str, counts: list[int]) -> list[str]:
    """Per-block executor cost and client peak RSS for growing numbers of 32^3-voxel blocks."""
    from isovol.pipeline.io.omezarr import write_image

    rows = []
    for n in counts:
        side = int(np.ceil(np.sqrt(n)))
        low = np.zeros((5, 32 * side, 32 * side), np.uint8)  # 33 output slices: one block row in Z
        src = os.path.join(root, f"scale-{n}.ome.zarr")
        write_image(src, low, (80.0, 10.0, 10.0), chunks=(5, 256, 256))
        probe = PeakRSS()
        base = probe.proc.memory_info().rss
        probe.start()
        seconds, _, _ = run(client, root, src, "zeros", (40, 32, 32), (40, 32, 32), (40, 32, 32))
        probe.stop.set()
        probe.join()
        blocks = side * side
        rows.append(f"| {blocks} | {seconds:.1f} | {1e3 * seconds / blocks:.1f} | "
                    f"{(probe.peak - base) / 2**20:+.0f} |")
        shutil.rmtree(src)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=DEFAULT_VOLUME)
    ap.add_argument("--yx", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rates", type=float, nargs="+", default=[300.0, 1000.0])
    ap.add_argument("--scale", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--block", type=int, nargs=3, default=[128, 512, 512])
    ap.add_argument("--shard", type=int, nargs=3, default=[128, 256, 256])
    ap.add_argument("--quick", action="store_true", help="yx 512, scale 100 and 1000")
    ap.add_argument("--plain-dask", action="store_true", help="a plain dask LocalCluster (dask's malloc setting)")
    args = ap.parse_args()
    if args.quick:
        args.yx, args.scale = 512, [100, 1000]
    from dask.distributed import Client, LocalCluster

    from isovol.deploy.local import cluster_client

    @contextlib.contextmanager
    def cluster(n: int) -> Iterator[Any]:
        if not args.plain_dask:
            with cluster_client(n) as client:
                yield client
            return
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
                Client(lc) as client:
            yield client

    register(zeros_entry(), *(standin_entry(r) for r in args.rates))
    root = tempfile.mkdtemp(prefix="isovol-datapath-")
    block, shard = tuple(args.block), tuple(args.shard)
    try:
        src, low = make_input(root, args.volume, args.yx)
        (ceil_plain, _), (ceil_sync, ceil_ns) = (ceiling(root, low, (64, 64, 64), shard, fsync=f) for f in (0, 1))
        print(f"Measured {datetime.date.today()} on {platform.machine()} ({os.cpu_count()} cores), "
              f"{'a plain dask LocalCluster' if args.plain_dask else 'isovol cluster_client'}; output "
              f"{(low.shape[0] - 1) * FACTOR + 1} x {args.yx} x {args.yx} uint8; blocks {block}, shards {shard}.\n")
        print(f"zarr alone, one process, best of 3: {ceil_plain:.0f} Mvox/s ({ceil_sync:.0f} with an fsync per "
              f"shard, {ceil_ns:.1f} ns of core time per voxel)\n")
        print("| workers | method | end to end Mvox/s | vs zarr alone (fsync) | vs the method alone "
              "| core ns per output voxel |")
        print("|---|---|---|---|---|---|")
        scale: list[str] = []
        for w in args.workers:
            with cluster(w) as c:
                for method in ["nearest", *(f"standin-{r:g}" for r in args.rates)]:
                    seconds, voxels, cpu = run(c, root, src, method, block, shard, workers=w)
                    rate = voxels / 1e6 / seconds
                    alone = "" if method == "nearest" else f"{rate / (w * float(method.split('-')[1])):.2f}"
                    print(f"| {w} | {method} | {rate:.0f} | {rate / ceil_sync:.2f} | {alone} | "
                          f"{1e9 * cpu / voxels:.1f} |", flush=True)
                if w == max(args.workers):
                    scale = scale_rows(c, root, args.scale)
        print(f"\nScale ({max(args.workers)} workers, 32^3-voxel blocks of zeros):\n")
        print("| blocks | seconds | ms per block | client peak RSS, MiB over start |")
        print("|---|---|---|---|")
        print("\n".join(scale))
        for (w, method), lines in PROFILES.items():
            print(f"\nWhere the time went ({method}, {w} worker{'s' * (w > 1)}; phases add up over the workers' "
                  "threads, so they may exceed the wall time):\n\n```")
            print("\n".join(lines))
            print("```")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Executor overhead on CPU: blockwise through dask vs one in-memory call, and peak memory vs volume size.

    python benchmarks/executor.py [--quick] [--workers N] [--repeats R]

(a) Wall time of `isovol upsample` through the blockwise executor (Python API, on a cluster started once,
    its start-up timed as its own row) against a single in-memory call on the same volume: read the whole
    input zarr, ``upsample_array``, write the whole output zarr with the same shard layout.  Both include
    reading the input and writing the output; the blockwise run also writes its run record and done
    markers and fsyncs every shard (its durability is part of its cost).  Results are checked bit-exact.
(b) Peak resident memory of ``isovol upsample --workers 1`` (a subprocess; the worker process and the
    client process, which also hosts the scheduler and the nanny, measured separately from their
    /proc/PID/status VmHWM, else sampled RSS) at growing volume sizes with a fixed block shape, next to the
    per-block peak `isovol plan --json` predicts and the peak of the single in-memory call.

The input is real data: the bundled FlyEM FIB-SEM crop (129 x 128 x 128, 10 nm), every 4th slice kept
(33 slices), mirrored in Y/X to the size wanted; factor 8, cubic.  Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

import numpy as np

FACTOR = 8
METHOD = "cubic"
CHUNK = (64, 64, 64)
MiB = 1024.0 * 1024.0


# -- data ---------------------------------------------------------------------------------------------------
def make_input(root: str, yx: int) -> tuple[str, tuple[int, int, int]]:
    """33 x yx x yx uint8: every 4th slice of the real crop, mirrored in Y and X; written as OME-Zarr."""
    from isovol.pipeline.io.omezarr import write_image
    from isovol.workflows.demo_data import load_crop

    crop, voxel = load_crop()
    low = crop[::4]
    pad = ((0, 0), (0, max(yx - low.shape[1], 0)), (0, max(yx - low.shape[2], 0)))
    vol = np.ascontiguousarray(np.pad(low, pad, mode="symmetric")[:, :yx, :yx])
    url = os.path.join(root, f"input-{yx}.ome.zarr")
    write_image(url, vol, (voxel[0] * 4, voxel[1], voxel[2]))
    return url, vol.shape  # type: ignore[return-value]


def single_call(in_url: str, out_url: str, shard: tuple[int, int, int]) -> np.ndarray:
    """The reference: whole input in memory, one method call, whole output written, same layout."""
    from isovol.pipeline.geometry import output_voxel_size
    from isovol.pipeline.io.omezarr import create_image
    from isovol.pipeline.io.readers import open_volume
    from isovol.pipeline.methods import get_method, upsample_array

    vol = open_volume(in_url)
    data = vol.read((slice(0, vol.shape[0]), slice(0, vol.shape[1]), slice(0, vol.shape[2])))
    out = upsample_array(data, FACTOR, get_method(METHOD))
    arr = create_image(out_url, None, shape=out.shape, dtype=out.dtype, chunks=CHUNK, shards=shard,
                       voxel_size=output_voxel_size(vol.voxel_size, FACTOR), translation=vol.translation,
                       provenance={"method": METHOD}, overwrite=True)
    arr[...] = out
    return out


def _plan(in_url: str, block: tuple[int, int, int]) -> Any:
    from isovol.workflows.upsample import UpsampleRequest, prepare

    _, _, plan = prepare(UpsampleRequest(input=in_url, output="<plan>", factor=FACTOR, method=METHOD,
                                         block_shape=block))
    return plan


def _read_out(url: str) -> np.ndarray:
    from isovol.pipeline.io.omezarr import open_level0

    return open_level0(url, mode="r")[...]


# -- (a) wall time ---------------------------------------------------------------------------------------------
def timing(root: str, inputs: dict[int, str], blocks: list[tuple[int, int, int]], worker_counts: list[int],
           repeats: int) -> list[list[str]]:
    """Rows of table (a): per worker count its cluster start-up, then every size x block shape."""
    from isovol.deploy.local import cluster_client
    from isovol.workflows.upsample import UpsampleRequest, upsample

    rows: list[list[str]] = []
    n = [0]

    def fresh() -> str:
        n[0] += 1
        return os.path.join(root, f"out-{n[0]}.ome.zarr")

    # the single call, once per size and distinct shard layout (a warm-up first: imports, page cache)
    singles: dict[tuple[int, tuple[int, int, int]], float] = {}
    references: dict[int, np.ndarray] = {}
    for yx, in_url in inputs.items():
        references[yx] = single_call(in_url, fresh(), _plan(in_url, blocks[0]).shard_shape)
        for block in blocks:
            shard = _plan(in_url, block).shard_shape
            if (yx, shard) in singles:
                continue
            times = []
            for _ in range(repeats):
                url = fresh()
                t0 = time.perf_counter()
                single_call(in_url, url, shard)
                times.append(time.perf_counter() - t0)
                shutil.rmtree(url)
            singles[yx, shard] = statistics.median(times)

    for workers in worker_counts:
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        t0 = time.perf_counter()
        with cluster_client(workers) as client:
            startup = time.perf_counter() - t0
            rows.append([f"cluster start-up, {label}", "", "", "", f"{startup:.2f}", "", "", ""])
            # warm-up: the first task on each worker imports zarr & co; not part of any timed row
            first = next(iter(inputs.values()))
            upsample(UpsampleRequest(input=first, output=fresh(), factor=FACTOR, method=METHOD,
                                     block_shape=blocks[-1], progress=False), client=client)
            for yx, in_url in inputs.items():
                for block in blocks:
                    plan = _plan(in_url, block)
                    single_t = singles[yx, plan.shard_shape]
                    times, exact = [], True
                    for _ in range(repeats):
                        url = fresh()
                        req = UpsampleRequest(input=in_url, output=url, factor=FACTOR, method=METHOD,
                                              block_shape=block, progress=False)
                        t0 = time.perf_counter()
                        summary = upsample(req, client=client)
                        times.append(time.perf_counter() - t0)
                        if not summary.ok:
                            raise SystemExit(f"benchmark run failed: {summary.line()}")
                        exact = exact and np.array_equal(_read_out(url), references[yx])
                        shutil.rmtree(url)
                    t = statistics.median(times)
                    rows.append([f"blockwise, {label}", "x".join(map(str, plan.out_shape)),
                                 "x".join(map(str, block)), str(len(plan)), f"{t:.2f}", f"{single_t:.2f}",
                                 f"{t / single_t:.2f}x", "yes" if exact else "**NO**"])
    return rows


# -- (b) memory -------------------------------------------------------------------------------------------------
def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakSampler(threading.Thread):
    """Peak RSS of a process (``top``) and, separately, of the largest of its descendants."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.top = 0.0
        self.children: dict[int, float] = {}
        self.stop = threading.Event()

    def _peak(self, proc: Any) -> float:
        hwm = _hwm_kib(proc.pid)
        return hwm * 1024.0 if hwm is not None else float(proc.memory_info().rss)

    def run(self) -> None:
        import psutil

        try:
            top = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                self.top = max(self.top, self._peak(top))
                for child in top.children(recursive=True):
                    try:
                        self.children[child.pid] = max(self.children.get(child.pid, 0.0), self._peak(child))
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                break
            time.sleep(self.interval)

    @property
    def worker(self) -> float:
        return max(self.children.values(), default=0.0)


def _isovol_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "isovol")
    return [exe] if os.path.exists(exe) else [sys.executable, "-c", "from isovol.workflows.cli import main; main()"]


def _measure(cmd: list[str]) -> tuple[float, float, float]:
    """(top-process peak, largest-descendant peak, wall seconds) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{err}")
    return sampler.top, sampler.worker, time.perf_counter() - t0


def memory(root: str, cases: list[tuple[int, tuple[int, int, int]]]) -> list[list[str]]:
    """Rows of table (b): one `isovol upsample --workers 1` subprocess per (Y/X size, block shape)."""
    rows = []
    inputs: dict[int, str] = {}
    singles: dict[int, float] = {}
    for yx, block in cases:
        if yx not in inputs:
            inputs[yx] = make_input(root, yx)[0]
        in_url = inputs[yx]
        shape = ",".join(map(str, block))
        plan = json.loads(subprocess.run(
            _isovol_cmd() + ["plan", in_url, "-r", str(FACTOR), "--method", METHOD, "--block-shape", shape, "--json"],
            capture_output=True, text=True, check=True).stdout)
        out = os.path.join(root, f"mem-{yx}.ome.zarr")
        client_peak, worker_peak, wall = _measure(
            _isovol_cmd() + ["-q", "upsample", in_url, out, "-r", str(FACTOR), "--method", METHOD, "--workers", "1",
                             "--block-shape", shape, "--no-progress"])
        shutil.rmtree(out)
        if yx not in singles:
            single_out = os.path.join(root, f"single-{yx}.ome.zarr")
            code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                    f"from executor import single_call; single_call({in_url!r}, {single_out!r}, (256, 256, 256))")
            singles[yx] = _measure([sys.executable, "-c", code])[0]
            shutil.rmtree(single_out)
        out_shape = plan["output_shape"]
        rows.append([
            "x".join(map(str, out_shape)), f"{np.prod(out_shape) / MiB:.0f}", "x".join(map(str, plan["block_shape"])),
            str(plan["tasks"]), f"{plan['block_bytes']['peak'] / MiB:.1f}", f"{worker_peak / MiB:.0f}",
            f"{client_peak / MiB:.0f}", f"{singles[yx] / MiB:.0f}", f"{wall:.1f}",
        ])
    for url in inputs.values():
        shutil.rmtree(url)
    return rows


# -- report -------------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    import dask
    import distributed
    import numcodecs
    import zarr

    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = ""
    from isovol.pipeline import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{datetime.date.today().isoformat()}; {cpu}, {os.cpu_count()} CPUs{mem}; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}; isovol {__version__}, numpy "
            f"{np.__version__}, zarr {zarr.__version__}, numcodecs {numcodecs.__version__}, dask "
            f"{dask.__version__}, distributed {distributed.__version__}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run: fewer block shapes, sizes and repeats")
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                    help="workers of the parallel rows (a 1-worker row is always measured) [default: min(cpus, 4)]")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per row (median) [3; --quick: 1]")
    ap.add_argument("--tmp", default=None, help="scratch folder on the disk to measure [system temp]")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    blocks = [(256, 256, 256), (128, 128, 128)] if args.quick else [
        (256, 256, 256), (128, 256, 256), (128, 128, 128), (64, 128, 128), (64, 64, 64)]
    sizes = [256, 512] if args.quick else [256, 512, 1024]
    mem_block = (64, 128, 128)
    mem_cases = [(yx, mem_block) for yx in sizes] + [(sizes[-1], (256, 256, 256))]  # peak follows the block
    timing_sizes = [256] if args.quick else [256, 512]
    workers = sorted({1, max(1, args.workers)})
    warnings.filterwarnings("ignore", message="Port .* is already in use")  # a dashboard elsewhere on 8787

    root = tempfile.mkdtemp(prefix="isovol-bench-", dir=args.tmp)
    try:
        t0 = time.perf_counter()
        print(f"# isovol executor benchmark\n\n{machine()}\n", flush=True)
        inputs = {yx: make_input(root, yx)[0] for yx in timing_sizes}
        print(f"(a) wall time of `isovol upsample` through the blockwise executor (Python API on a cluster started "
              f"once) vs a single in-memory call; input 33xNxN uint8 (real FIB-SEM, mirrored), factor {FACTOR}, "
              f"{METHOD}; both read the input zarr and write the output zarr (same shard layout) on local disk; "
              f"the blockwise run also fsyncs its shards and writes its run record and done markers; median of "
              f"{repeats}; output checked bit-exact against the single call.\n", flush=True)
        rows = timing(root, inputs, blocks, workers, repeats)
        print(table(["run", "output", "block", "tasks", "wall s", "single call s", "ratio", "bit-exact"], rows)
              + "\n", flush=True)
        for url in inputs.values():
            shutil.rmtree(url)
        print(f"(b) peak resident memory of `isovol upsample --workers 1` (a subprocess) by volume size at block "
              f"{'x'.join(map(str, mem_block))}, and with a larger block on the largest volume: worker = the largest "
              f"child process, client = the `isovol` process (client, scheduler, nanny); VmHWM from /proc. The plan's "
              f"per-block peak (`isovol plan --json`: input + output + working buffers) and the peak of the "
              f"single in-memory call (a subprocess too) for contrast.\n", flush=True)
        mrows = memory(root, mem_cases)
        print(table(["output", "output MiB", "block", "tasks", "plan peak/block MiB", "worker peak MiB",
                     "client peak MiB", "single call peak MiB", "wall s"], mrows) + "\n")
        print(f"total benchmark time {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Throughput of the executor and of DGEAN end to end, in one call (issue 6 evidence).

    python benchmarks/throughput.py --quick                      # CPU: tiny model, small volumes (~1-2 min)
    source benchmarks/device_env.sh && python3 benchmarks/throughput.py --data devdata   # one GPU machine

(a) **Scheduler overhead.**  Blocks per second through the real executor (plan, futures in bounded waves, the
    worker plugin, a real OME-Zarr output: every shard written, fsynced and marked done) with a method that does
    nothing (it returns zeros), so what is left is the cost per block of isovol + dask + zarr.
(b) **DGEAN end to end vs model only.**  An untrained DGEAN of the ``gpu-default`` recipe (``cpu-tiny`` with
    --quick; speed does not depend on the weights) on a cluster of ``--cluster local-gpu`` (one worker per GPU;
    ``local`` with one worker on a machine without a GPU) -- the code path of ``isovol upsample --cluster local-gpu
    --method dgean``.  A warm-up run loads the model into the worker's cache (the worker plugin) and lets cuDNN
    pick its kernels; then
      * *model only*: on that worker, the cached model on tiles of the very shape the method cuts (tile + margins)
        and the batch it would choose, output voxels per second; and on margin-free tiles for reference;
      * *end to end*: ``upsample()`` of a FlyEM-textured volume sized to take about ``--seconds`` (read -> model ->
        write OME-Zarr, done markers), output voxels per second per GPU.
    **Efficiency** = end to end / model only on the same tiles: what the pipeline costs around the model.
(c) **GPU utilisation** sampled every 0.5 s during the end-to-end run (pynvml, else nvidia-smi, else n/a).

The FlyEM volumes come from ``--data`` (training_sample1_zyx_uint8.npy); without them the bundled 129^3 crop is
used.  Prints Markdown tables; writes ``throughput.json`` to ``--out`` (default $OUT, else ./bench-out).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from isovol.pipeline.methods.base import Halo, Method
from isovol.workflows.profile import table

FACTOR = 8
WINDOWS_PER_SHARD = 8  # shards of 8 * FACTOR output slices


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------- data
def texture(data_dir: str) -> np.ndarray:
    """An isotropic uint8 FlyEM volume to tile from."""
    path = os.path.join(data_dir, "training_sample1_zyx_uint8.npy")
    if os.path.exists(path):
        return np.load(path)
    from isovol.workflows.demo_data import load_crop

    return load_crop()[0]


def anisotropic(sample: np.ndarray, size: int) -> np.ndarray:
    """Every FACTOR-th slice of ``sample``, mirrored in Y/X to size x size."""
    low = sample[::FACTOR]
    reps = -(-size // low.shape[1])
    pair = np.concatenate([low, low[:, ::-1]], axis=1)
    pair = np.concatenate([pair, pair[:, :, ::-1]], axis=2)
    return np.ascontiguousarray(np.tile(pair, (1, -(-reps // 2), -(-reps // 2)))[:, :size, :size])


def write_input(root: str, name: str, vol: np.ndarray) -> str:
    from isovol.pipeline.io.omezarr import write_image

    url = os.path.join(root, name)
    write_image(url, vol, (10.0 * FACTOR, 10.0, 10.0), chunks=(1, 512, 512))
    return url


# -------------------------------------------------------------------------------------- (a) no-op blocks
class NoOp(Method):
    """Returns zeros of the right shape: the executor's own cost per block is all that is left."""

    name = "noop"
    halo = Halo()

    def apply(self, data: np.ndarray, factor: int, start: int, stop: int) -> np.ndarray:
        return np.zeros((stop - start, *data.shape[1:]), dtype=data.dtype)


def overhead(root: str, quick: bool, worker_counts: list[int]) -> list[dict[str, Any]]:
    """Blocks per second of no-op blocks through ``upsample()`` on a warm LocalCluster."""
    from isovol.deploy.local import cluster_client
    from isovol.workflows import upsample as up

    size = 256 if quick else 512
    src = write_input(root, "noop-in.ome.zarr", np.zeros((33, size, size), np.uint8))
    block = (64, 64, 64)
    real_get = up.get_method
    up.get_method = lambda name, model=None, **kw: NoOp() if name == "noop" else real_get(name, model, **kw)
    rows = []
    try:
        for workers in worker_counts:
            with cluster_client(workers) as client:
                for rep in range(2):  # the first run warms the workers up (imports, plugin); the second is timed
                    out = os.path.join(root, f"noop-{workers}-{rep}.ome.zarr")
                    req = up.UpsampleRequest(input=src, output=out, factor=FACTOR, method="noop", block_shape=block,
                                             progress=False)
                    t0 = time.perf_counter()
                    summary = up.upsample(req, client=client)
                    sec = time.perf_counter() - t0
                    if not summary.ok:
                        raise SystemExit(f"no-op run failed: {summary.line()}")
                    shutil.rmtree(out)
            rows.append({"workers": workers, "blocks": summary.total, "block": list(block), "seconds": sec,
                         "blocks_per_s": summary.total / sec})
    finally:
        up.get_method = real_get
    return rows


# ---------------------------------------------------------------------------------------- (b) DGEAN
def untrained_model(root: str, recipe: str) -> str:
    """An untrained DGEAN checkpoint, written on the CPU (the client must not create a CUDA context)."""
    from isovol.pipeline.checkpoints import CONFIG, WEIGHTS, save_json, save_tensors
    from isovol.pipeline.methods import dgean
    from isovol.pipeline.methods.dgean.network import build_dgean

    mcfg = dgean.BOOK.load(recipe)[1].model
    path = os.path.join(root, f"dgean-{os.path.basename(recipe)}")
    os.makedirs(path, exist_ok=True)
    model = build_dgean(mcfg)
    save_tensors(os.path.join(path, WEIGHTS), {k: v.contiguous() for k, v in model.state_dict().items()})
    save_json(os.path.join(path, CONFIG), {"kind": "dgean", "model": mcfg.to_dict(), "factor": FACTOR,
                                           "note": "untrained, for throughput only"})
    return path


def model_only_on_worker(model_dir: str, tile: int, seconds: float) -> list[dict[str, Any]]:
    """Runs on the GPU worker: the cached model, timed on the tile shapes and batch the method uses."""
    import torch

    from isovol.pipeline.methods.dgean.method import ALIGN, DGEANMethod, _round_up

    method = DGEANMethod(model_dir, tile=tile)
    dev = torch.device(method._device())
    model = method.model  # the worker plugin's cached copy
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    depths = torch.arange(1, FACTOR, dtype=torch.float32, device=dev) / FACTOR
    side = _round_up(tile + 2 * method.margin, ALIGN)
    # the batch the method would choose, but no more than the windows of one shard (the executor's piece): the
    # end-to-end run never batches more than that
    batch = min(method._batch(dev, side, side, FACTOR - 1), WINDOWS_PER_SHARD)
    rows = []
    for label, size in (("same tiles as the method (tile + margins)", side), ("margin-free tiles", tile)):
        x = torch.rand(batch, 1, 4, size, size, device=dev)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=method._amp()):
            for _ in range(2):
                model(x, depths)
            if cuda:
                torch.cuda.synchronize()
            times: list[float] = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end or len(times) < 3:
                t0 = time.perf_counter()
                model(x, depths)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        sec = float(np.median(times))  # the median call: robust to a busy host
        vox = batch * FACTOR * tile * tile  # output voxels per call: r slices per window (r - 1 new + 1 kept)
        rows.append({"what": label, "input_tile": size, "windows_per_batch": batch, "seconds_per_call": sec,
                     "mvox_s": vox / sec / 1e6})
    del x
    if cuda:
        torch.cuda.empty_cache()
    return rows


def worker_device(_: int = 0) -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or "cpu")


class GPUSampler:
    """GPU utilisation (%) every ``every`` seconds in a thread, via NVML (never a CUDA context) or nvidia-smi."""

    def __init__(self, every: float = 0.5):
        self.every, self.samples, self.mem = every, [], []
        self.source = "n/a"
        self._stop = threading.Event()
        self._read = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if handles:
                self.source = "NVML"

                def read() -> tuple[float, float]:
                    util = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                    mem = [pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**30 for h in handles]
                    return float(np.mean(util)), float(sum(mem))

                self._read = read
        except Exception:
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"

                def read() -> tuple[float, float]:
                    text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                          timeout=10).stdout
                    rows = [list(map(float, ln.split(","))) for ln in text.strip().splitlines() if ln.strip()]
                    return float(np.mean([r[0] for r in rows])), float(sum(r[1] for r in rows)) / 1024

                self._read = read
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                util, mem = self._read()  # type: ignore[misc]
                self.samples.append(util)
                self.mem.append(mem)
            except Exception:
                pass

    def __enter__(self) -> GPUSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"source": self.source, "mean": None}
        s = np.asarray(self.samples)
        return {"source": self.source, "samples": len(s), "mean": float(s.mean()), "median": float(np.median(s)),
                "p10": float(np.percentile(s, 10)), "share_ge_90": float(np.mean(s >= 90)),
                "peak_mem_gib": float(max(self.mem))}


def dgean(root: str, args: argparse.Namespace, sample: np.ndarray) -> dict[str, Any]:
    from isovol.deploy.clusters import open_cluster
    from isovol.deploy.plugins import register, worker_stats
    from isovol.workflows.upsample import UpsampleRequest, upsample

    gpus = _gpu_count()
    kind = "local-gpu" if gpus else "local"
    recipe = "cpu-tiny" if args.quick else args.recipe
    tile = args.tile or (32 if args.quick else 512)
    yx = tile * 2  # a shard holds 2 x 2 tiles and 8 windows (64 output slices)
    shard = (WINDOWS_PER_SHARD * FACTOR, yx, yx)
    block = (4 * WINDOWS_PER_SHARD * FACTOR, yx, yx)  # 4 shards along Z, pipelined by the executor
    model_dir = untrained_model(root, recipe)
    options: dict[str, Any] = {"tile": tile}
    if args.windows_per_batch:
        options["windows_per_batch"] = args.windows_per_batch
    log(f"DGEAN `{recipe}`, untrained; --cluster {kind}; tile {tile}, block {block}, shard {shard}")
    t0 = time.perf_counter()
    stack = contextlib.ExitStack()
    try:
        client = stack.enter_context(open_cluster(kind, workers=1))
    except Exception as exc:  # e.g. dask-cuda missing on this machine: one LocalCluster worker sees the GPU alike
        if kind != "local-gpu":
            raise
        log(f"--cluster local-gpu could not start ({type(exc).__name__}: {exc}); using --cluster local with one "
            "worker process instead (it sees the GPU the same way)")
        kind = "local (local-gpu failed)"
        client = stack.enter_context(open_cluster("local", workers=1))
    with stack:
        client.wait_for_workers(max(1, gpus) if kind == "local-gpu" else 1)
        startup = time.perf_counter() - t0
        register(client)
        device = client.run(worker_device)
        warm_src = write_input(root, "warm.ome.zarr", anisotropic(sample, yx))
        t0 = time.perf_counter()
        summary = upsample(UpsampleRequest(input=warm_src, output=os.path.join(root, "warm-out.ome.zarr"),
                                           factor=FACTOR, method="dgean", model=model_dir, method_options=options,
                                           block_shape=block, shard_shape=shard, progress=False), client=client)
        warm = time.perf_counter() - t0
        if not summary.ok:
            raise SystemExit(f"warm-up run failed: {summary.line()}")
        shutil.rmtree(os.path.join(root, "warm-out.ome.zarr"), ignore_errors=True)
        workers = list(client.scheduler_info()["workers"])
        mo = client.submit(model_only_on_worker, model_dir, tile, 1.0 if args.quick else 4.0, pure=False,
                           workers=workers[:1]).result()
        per_gpu = mo[0]["mvox_s"]
        # size the volume so that the end-to-end run takes about --seconds at ~80 % of model-only speed
        want = per_gpu * 1e6 * max(1, gpus) * 0.8 * args.seconds
        out_z = (len(range(0, sample.shape[0], FACTOR)) - 1) * FACTOR + 1
        size = int(np.sqrt(want / out_z) // yx * yx)
        size = min(max(size, yx), args.max_size)
        if args.size:
            size = args.size
        vol = anisotropic(sample, size)
        t0 = time.perf_counter()
        src = write_input(root, "e2e.ome.zarr", vol)
        log(f"end-to-end input {vol.shape} written in {time.perf_counter() - t0:.1f} s")
        del vol
        runs: dict[str, dict[str, Any]] = {}
        variants = [("pipelined", True)] + ([] if args.no_serial else [("serial", False)])
        for rep in range(args.repeats):  # alternated, best of each: a busy host disturbs both alike
            for label, overlap in variants:
                longest = max([r["seconds"] for r in runs.values()], default=0.0)
                if runs and time.monotonic() + 1.2 * longest > args.deadline:
                    log(f"end to end, {label}, run {rep + 1}: skipped (it would pass the --budget)")
                    continue
                dst = os.path.join(root, f"e2e-out-{label}.ome.zarr")
                with GPUSampler() as gpu:
                    t0 = time.perf_counter()
                    summary = upsample(UpsampleRequest(input=src, output=dst, factor=FACTOR, method="dgean",
                                                       model=model_dir, method_options=options, block_shape=block,
                                                       shard_shape=shard, overlap=overlap, progress=False),
                                       client=client)
                    sec = time.perf_counter() - t0
                if not summary.ok:
                    raise SystemExit(f"end-to-end run failed: {summary.line()}")
                shutil.rmtree(dst, ignore_errors=True)
                log(f"end to end, {label}, run {rep + 1}: {sec:.1f} s")
                if label not in runs or sec < runs[label]["seconds"]:
                    runs[label] = {"seconds": sec, "blocks": summary.total, "gpu": gpu.summary(),
                                   "profile": table(summary.phases, summary.voxels, summary.done, summary.seconds,
                                                    len(device) or 1)}  # where the time went (issue 18 (c))
        stats = worker_stats(client)
    out_shape = [out_z, size, size]
    for r in runs.values():
        r["mvox_s_per_gpu"] = int(np.prod(out_shape)) / r["seconds"] / 1e6 / max(1, gpus)
        r["efficiency"] = r["mvox_s_per_gpu"] / per_gpu
    shutil.rmtree(src, ignore_errors=True)
    return {"cluster": kind, "gpus": gpus, "device": sorted(set(device.values())), "recipe": recipe, "tile": tile,
            "block": list(block), "shard": list(shard), "output_shape": out_shape, "startup_s": startup,
            "warmup_s": warm, "model_only": mo, "end_to_end": runs, "efficiency": runs["pipelined"]["efficiency"],
            "worker_plugin": stats}


def _gpu_count() -> int:
    """GPUs visible, without creating a CUDA context in this process (NVML, else nvidia-smi)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return sum(1 for ln in res.stdout.splitlines() if ln.startswith("GPU "))
    return 0


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized: tiny model, small volumes")
    ap.add_argument("--data", default="devdata", help="folder with training_sample1_zyx_uint8.npy")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--recipe", default="gpu-default",
                    help="DGEAN recipe (a preset or YAML file) of the untrained model (not with --quick)")
    ap.add_argument("--tile", type=int, default=None, help="DGEAN tile [default: 512 GPU-sized, 32 with --quick]")
    ap.add_argument("--windows-per-batch", type=int, default=None, help="[default: from free GPU memory]")
    ap.add_argument("--seconds", type=float, default=40.0, help="aimed duration of one end-to-end run")
    ap.add_argument("--repeats", type=int, default=2, help="end-to-end runs of each variant (best is reported)")
    ap.add_argument("--size", type=int, default=None, help="Y/X size of the end-to-end volume [default: from "
                                                           "--seconds and the model-only speed]")
    ap.add_argument("--max-size", type=int, default=8192)
    ap.add_argument("--budget", type=float, default=480.0,
                    help="seconds for the whole call: end-to-end repeats that would pass it are skipped")
    ap.add_argument("--overhead-workers", default=None, help="comma-separated worker counts for (a)")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-dgean", action="store_true")
    ap.add_argument("--no-serial", action="store_true", help="skip the end-to-end run without the pipeline")
    args = ap.parse_args()
    args.deadline = time.monotonic() + args.budget
    if args.quick:
        args.seconds = min(args.seconds, 10.0)
    os.makedirs(args.out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="isovol-throughput-")
    cores = os.cpu_count() or 1
    counts = ([int(c) for c in args.overhead_workers.split(",")] if args.overhead_workers
              else sorted({1, min(cores, 2 if args.quick else 4)}))
    import torch

    log(f"# isovol throughput, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    log(f"host: {platform.node()}, {cores} cores, python {platform.python_version()}, torch {torch.__version__}")
    result: dict[str, Any] = {"args": vars(args)}
    try:
        if not args.skip_overhead:
            rows = overhead(root, args.quick, counts)
            result["overhead"] = rows
            log("\n## (a) Scheduler overhead: no-op blocks through the executor (real OME-Zarr output)\n")
            log("| workers | blocks | block | seconds | blocks/s | ms per block per worker |")
            log("|---|---|---|---|---|---|")
            for r in rows:
                log(f"| {r['workers']} | {r['blocks']} | {'x'.join(map(str, r['block']))} | {r['seconds']:.2f} | "
                    f"{r['blocks_per_s']:.0f} | {1000 * r['workers'] / r['blocks_per_s']:.1f} |")
        if not args.skip_dgean:
            sample = texture(args.data)
            d = dgean(root, args, sample[: 16 * FACTOR + 1] if args.quick else sample)
            result["dgean"] = d
            shape = "x".join(map(str, d["output_shape"]))
            log(f"\n## (b) DGEAN `{d['recipe']}` (untrained), r = {FACTOR}: end to end vs model only, per GPU\n")
            log(f"device: {', '.join(d['device'])}; --cluster {d['cluster']}; tile {d['tile']}, block "
                f"{'x'.join(map(str, d['block']))}, shard {'x'.join(map(str, d['shard']))}; cluster start "
                f"{d['startup_s']:.1f} s, warm-up run {d['warmup_s']:.1f} s (model load, kernel autotuning)\n")
            log("| what | input tile | windows/call | seconds | output Mvox/s per GPU | vs model only |")
            log("|---|---|---|---|---|---|")
            for r in d["model_only"]:
                log(f"| model only, {r['what']} | {r['input_tile']}² | {r['windows_per_batch']} | | "
                    f"{r['mvox_s']:.3g} | |")
            for label, r in d["end_to_end"].items():
                log(f"| end to end, {label}: {shape} output, {r['blocks']} blocks | | | {r['seconds']:.1f} | "
                    f"{r['mvox_s_per_gpu']:.3g} | {r['efficiency']:.2f} |")
            log(f"\n**efficiency (pipelined end to end / model only on the same tiles): {d['efficiency']:.2f}**; "
                f"vs margin-free tiles: "
                f"{d['end_to_end']['pipelined']['mvox_s_per_gpu'] / d['model_only'][1]['mvox_s']:.2f}")
            for label, r in d["end_to_end"].items():
                g = r["gpu"]
                if g.get("mean") is None:
                    log(f"\nGPU utilisation, {label} run: n/a")
                else:
                    log(f"\nGPU utilisation, {label} run ({g['source']}, {g['samples']} samples): mean "
                        f"{g['mean']:.0f} %, median {g['median']:.0f} %, 10th percentile {g['p10']:.0f} %, "
                        f"{100 * g['share_ge_90']:.0f} % of samples >= 90 %; peak memory {g['peak_mem_gib']:.1f} GiB")
            for label, r in d["end_to_end"].items():
                log(f"\nWhere the time went, {label} run (the executor's phases, `upsample --profile`):\n\n```")
                log("\n".join(r["profile"]) + "\n```")
            plug = list(d["worker_plugin"].values())
            log(f"worker plugin: model loads {[p.get('loads') for p in plug]} for warm-up + model-only + "
                f"end to end; GPU releases {[p.get('releases') for p in plug]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with open(os.path.join(args.out, "throughput.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

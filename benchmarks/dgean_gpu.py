"""DGEAN evidence in one call: Sup-DGEAN training, evaluation against ground truth, and throughput.

    python benchmarks/dgean_gpu.py --data devdata --train-minutes 5      # on a GPU machine
    python benchmarks/dgean_gpu.py --data devdata --quick                # CPU smoke run of the same path

``--data`` holds the FlyEM volumes (copies of ../shared/data/flyem_medulla_fibsem_10nm/training_sample{1,2}/
*.npy, 250^3 uint8, 10 nm isotropic).  Protocol (DESIGN.md): train on training_sample2 (ground truth, so this
is the supervised Sup-DGEAN), keep every 8th slice of training_sample1, upsample it back, compare on
z in [0, (n-1) r]: PSNR/SSIM per plane (XY over synthesised slices only) and FSC-0.5, next to cubic.
Throughput: output Mvox/s of the model alone (bf16, two tile sizes), and end-to-end through the executor
(read -> model -> write OME-Zarr) on a larger volume built by mirroring sample1.  Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from isovol.pipeline.degrade import decimate_z
from isovol.pipeline.methods import dgean, get_method, upsample_array
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.pipeline.metrics import fsc, fsc_resolution, plane_scores


def log(msg: str) -> None:
    print(msg, flush=True)


def evaluate(gt: np.ndarray, factor: int, methods: dict) -> dict:
    low, n = decimate_z(gt, factor)
    ref = gt[:n]
    rows = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        out = upsample_array(low, factor, method)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        scores = plane_scores(ref, out, factor)
        f, c = fsc(ref.astype(np.float64), out.astype(np.float64), 10.0)
        rows[name] = {**scores, "fsc05_nm": fsc_resolution(f, c), "seconds": sec}
    return rows


def model_only(model_dir: str, factor: int, tiles: list[int], device: str, windows: int) -> list[dict]:
    from isovol.pipeline.methods.dgean.method import DGEANMethod

    m = DGEANMethod(model_dir, device=device)
    model = m.model
    depths = torch.arange(1, factor, device=device, dtype=torch.float32) / factor
    rows = []
    for tile in tiles:
        x = torch.rand(windows, 1, 4, tile, tile, device=device)
        amp = device.startswith("cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            for _ in range(2):
                model(x, depths)
            if amp:
                torch.cuda.synchronize()
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < (3.0 if amp else 1.0):
                model(x, depths)
                reps += 1
            if amp:
                torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / reps
        vox = windows * factor * tile * tile  # r output slices per window (r-1 synthesised + 1 kept)
        rows.append({"tile": tile, "windows": windows, "mvox_s": vox / sec / 1e6})
    return rows


def end_to_end(model_dir: str, factor: int, sample: np.ndarray, work: str, size: int, tile: int) -> dict:
    from isovol.deploy.local import cluster_client
    from isovol.pipeline.io.omezarr import write_image
    from isovol.workflows.upsample import UpsampleRequest, upsample

    reps = -(-size // sample.shape[1])
    big = np.tile(np.concatenate([sample, sample[:, ::-1]], axis=1), (1, reps, reps))[:, :size, :size]
    low = np.ascontiguousarray(big[::factor])
    src, dst = os.path.join(work, "in.ome.zarr"), os.path.join(work, "out.ome.zarr")
    write_image(src, low, (10.0 * factor, 10.0, 10.0), chunks=(1, 512, 512))
    out_vox = (low.shape[0] - 1) * factor + 1
    with cluster_client(1, processes=True) as client:
        t0 = time.perf_counter()
        req = UpsampleRequest(input=src, output=dst, factor=factor, method="dgean", model=model_dir,
                              block_shape=(8 * factor, 512, 512), shard_shape=(8 * factor, 512, 512),
                              method_options={"tile": tile}, overwrite=True, progress=False)
        summary = upsample(req, client=client)
        sec = time.perf_counter() - t0
    return {"output_shape": [out_vox, size, size], "seconds": sec, "mvox_s": out_vox * size * size / sec / 1e6,
            "ok": summary.ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="devdata")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--train-minutes", type=float, default=5.0)
    ap.add_argument("--recipe", default="gpu-default",
                    help="a DGEAN recipe: a preset (cpu-tiny, cpu-demo, gpu-default) or a YAML file "
                         "[gpu-default; cpu-tiny with --quick]")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--e2e-size", type=int, default=2048)
    ap.add_argument("--quick", action="store_true", help="tiny model, small data: a CPU check of the path")
    ap.add_argument("--skip-throughput", action="store_true", help="quality only")
    ap.add_argument("--throughput-only", action="store_true",
                    help="no training or evaluation: time an untrained model of the recipe (speed does not "
                         "depend on the weights)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    s1 = np.load(os.path.join(args.data, "training_sample1_zyx_uint8.npy"))
    s2 = np.load(os.path.join(args.data, "training_sample2_zyx_uint8.npy"))
    recipe = "cpu-tiny" if args.quick else args.recipe
    if args.quick:
        s1, s2 = s1[:65, :96, :96], s2[:97, :96, :96]
    work = tempfile.mkdtemp(prefix="isovol-bench-")
    model_dir = os.path.join(work, "sup-dgean")
    rec = dgean.BOOK.load(recipe)[1]
    mcfg, tcfg = rec.model, rec.train
    tcfg.max_minutes = args.train_minutes
    if args.quick:
        tcfg.steps = 20
    log(f"# DGEAN evidence, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    log(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else platform.processor() or 'cpu'}; "
        f"torch {torch.__version__}; python {platform.python_version()}")
    if args.throughput_only:
        tcfg.steps, tcfg.val_every, tcfg.ckpt_every, tcfg.val_windows = 1, 1, 1, tcfg.batch
    t0 = time.perf_counter()
    result = train_dgean(s2, model_dir, args.factor, isotropic=True, model_config=mcfg, train=tcfg, device=device,
                         source={"name": "flyem training_sample2"}, log=log)
    train_sec = time.perf_counter() - t0
    log(f"\ntrained {result['steps']} steps in {train_sec:.0f} s ({recipe} recipe, budget {args.train_minutes} min)")
    if args.throughput_only:
        return _throughput(args, model_dir, device, s1, work)
    rows = evaluate(s1, args.factor, {"cubic": get_method("cubic"),
                                      "Sup-DGEAN": get_method("dgean", model=model_dir, device=device)})
    log(f"\n## Sup-DGEAN on FlyEM training_sample1, r = {args.factor} (trained on training_sample2)\n")
    log("| method | PSNR XY | PSNR XZ | PSNR YZ | SSIM XY | SSIM XZ | SSIM YZ | FSC-0.5 (nm) | seconds |")
    log("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        log(f"| {name} | {r['XY']['psnr']:.2f} | {r['XZ']['psnr']:.2f} | {r['YZ']['psnr']:.2f} | "
            f"{r['XY']['ssim']:.4f} | {r['XZ']['ssim']:.4f} | {r['YZ']['ssim']:.4f} | {r['fsc05_nm']:.1f} | "
            f"{r['seconds']:.1f} |")
    gain = rows["Sup-DGEAN"]["XY"]["psnr"] - rows["cubic"]["XY"]["psnr"]
    log(f"\ngain over cubic, PSNR XY: {gain:+.2f} dB (target >= +2.4 dB)")
    with open(os.path.join(args.out, "dgean_gpu.json"), "w") as f:
        json.dump({"train": {"steps": result["steps"], "seconds": train_sec, "history": result["history"]},
                   "eval": rows}, f, indent=1)
    if args.skip_throughput:
        return 0
    _throughput(args, model_dir, device, s1, work)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(os.path.join(model_dir, name), os.path.join(args.out, name))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _throughput(args, model_dir: str, device: str, s1: np.ndarray, work: str) -> int:
    tiles = [64, 128] if args.quick else [256, 512]
    mo = model_only(model_dir, args.factor, tiles, device, windows=2 if args.quick else 8)
    e2e = end_to_end(model_dir, args.factor, s1, work, 192 if args.quick else args.e2e_size,
                     tile=tiles[-1])
    log("\n## Throughput (output voxels per second, r = 8, bf16 on GPU)\n")
    log("| what | tile | Mvox/s |")
    log("|---|---|---|")
    for r in mo:
        log(f"| model only ({r['windows']} windows/batch) | {r['tile']} | {r['mvox_s']:.0f} |")
    log(f"| end-to-end executor, output {tuple(e2e['output_shape'])} | {tiles[-1]} | {e2e['mvox_s']:.0f} |")
    log(f"\nend-to-end / model-only: {e2e['mvox_s'] / mo[-1]['mvox_s']:.2f}")
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump({"model_only": mo, "end_to_end": e2e}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

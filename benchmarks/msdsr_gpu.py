"""MSDSR `gpu-default` end to end in one call, printing the BENCHMARKS.md table: everything trained on the
decimated input only (no ground truth), as a user would.

    source benchmarks/device_env.sh && python benchmarks/msdsr_gpu.py --data devdata --train-minutes 5   # GPU
    python benchmarks/msdsr_gpu.py --data ../shared/data/flyem_medulla_fibsem_10nm --smoke              # CPU check

``--data`` holds training_sample2_zyx_uint8.npy (FlyEM FIB-SEM, 250^3, 10 nm; flat, or under
training_sample2/).  Protocol (DESIGN.md): keep every r-th slice -> the anisotropic input; MSDSR trains on its XY
slices; the blockwise method's whole-volume call (``upsample_array``, the executor's reference) generates the
XZ/YZ planes at each --steps (DDIM) and --samples, fused by the mean; scored against the real volume on z in
[0, (n-1) r] next to linear and cubic: PSNR/SSIM per plane (XY over synthesised slices only), FSC-0.5.
``--smoke``: the cpu-tiny recipe on a 65 x 64 x 64 crop, on the CPU -- checks the path, not the quality.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from isovol.pipeline.methods import get_method, upsample_array
from isovol.pipeline.methods.msdsr import BOOK
from isovol.pipeline.methods.msdsr.method import MSDSR
from isovol.pipeline.methods.msdsr.trainer import train_msdsr
from isovol.pipeline.metrics import fsc, fsc_resolution, plane_scores


def log(msg: str) -> None:
    print(msg, flush=True)


def load(data: str) -> np.ndarray:
    name = "training_sample2_zyx_uint8.npy"
    for path in (os.path.join(data, name), os.path.join(data, "training_sample2", name)):
        if os.path.exists(path):
            return np.load(path)
    raise SystemExit(f"msdsr_gpu.py: {name} not found in {data} or {data}/training_sample2")


def score(ref: np.ndarray, out: np.ndarray, factor: int) -> dict:
    s = plane_scores(ref, out, factor)
    f, c = fsc(ref.astype(np.float64), out.astype(np.float64), 10.0)
    return {**s, "fsc05_nm": fsc_resolution(f, c)}


def row(name: str, r: dict, seconds: str) -> str:
    return (f"| {name} | {r['XY']['psnr']:.2f} | {r['XZ']['psnr']:.2f} | {r['YZ']['psnr']:.2f} | "
            f"{r['XY']['ssim']:.3f} | {r['XZ']['ssim']:.3f} | {r['YZ']['ssim']:.3f} | {r['fsc05_nm']:.1f} nm | "
            f"{seconds} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="devdata")
    ap.add_argument("--out", default=os.environ.get("OUT", "") or tempfile.mkdtemp(prefix="msdsr-gpu-"))
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--recipe", default="gpu-default")
    ap.add_argument("--train-minutes", type=float, default=5.0, help="training budget (overrides max_minutes)")
    ap.add_argument("--steps", default="5", help="DDIM step counts to score, a list")
    ap.add_argument("--samples", default="1,4", help="samples averaged per tile, a list")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--smoke", action="store_true", help="cpu-tiny on a small crop, on the CPU")
    args = ap.parse_args()
    r = args.factor
    vol = load(args.data)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        vol, args.recipe, args.steps, args.samples = vol[:65, 93:157, 93:157], "cpu-tiny", "1,2", "1"
        torch.set_num_threads(1)
    low = np.ascontiguousarray(vol[::r])
    truth = vol[: (low.shape[0] - 1) * r + 1]
    log(f"{platform.node()}: {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}; input "
        f"{low.shape} -> {truth.shape}, r = {r}, recipe {args.recipe}")
    _, recipe = BOOK.load(args.recipe)
    train = recipe.train if args.smoke else replace(recipe.train, max_minutes=args.train_minutes)
    model = os.path.join(args.out, "msdsr-model")
    t0 = time.perf_counter()
    res = train_msdsr(low, model, r, model_config=recipe.model, train=train, sampling=asdict(recipe.sampling),
                      device=device, log=log)
    train_s = time.perf_counter() - t0
    log(f"trained {res['steps']} steps in {train_s:.0f} s; last validation {res['history'][-1]}")
    lines = []
    for name in ("linear", "cubic"):
        t0 = time.perf_counter()
        out = upsample_array(low, r, get_method(name))
        lines.append(row(name, score(truth, out, r), f"– / {time.perf_counter() - t0:.1f} s"))
    for samples in map(int, args.samples.split(",")):
        for steps in map(int, args.steps.split(",")):
            meth = MSDSR(model, steps=steps, samples=samples, eta=args.eta, device=device)
            t0 = time.perf_counter()
            out = upsample_array(low, r, meth)
            if device == "cuda":
                torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            lines.append(row(f"MSDSR {args.recipe}, {steps} DDIM steps, {samples} sample(s)",
                             score(truth, out, r), f"{train_s:.0f} s / {sec:.1f} s"))
            log(lines[-1])
    log(f"\n{truth.shape} output, r = {r}, {device}, model {model}")
    log("| method | PSNR XY | XZ | YZ | SSIM XY | XZ | YZ | FSC-0.5 | train / upsample |")
    log("|---|---|---|---|---|---|---|---|---|")
    for line in lines:
        log(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

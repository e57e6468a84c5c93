"""MSDSR's sampler trade-off: quality and time at 1, 5, 20, 50 DDIM steps (and K averaged samples) on a small crop.

On a real isotropic FIB-SEM volume (FlyEM medulla, 10 nm), keep every r-th XY slice, train MSDSR on that stack's
own XY slices with a recipe (or load a trained model with --model), then upsample a crop of the decimated stack in
memory with the blockwise method's whole-volume call (``upsample_array``) at each step count, and compare the PSNR
on the synthesised slices (z not a multiple of r) against the truth with linear interpolation of the same crop.

    python benchmarks/msdsr_steps.py --data ../shared/data/flyem_medulla_fibsem_10nm --recipe cpu-demo \
        [--model DIR] [--steps 1,5,20,50] [--samples 1] [--eta 0] [--crop 64] [--set parameterization=v]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, replace

import numpy as np
import torch
import yaml

from isovol.pipeline.methods import get_method, upsample_array
from isovol.pipeline.methods.msdsr import BOOK
from isovol.pipeline.methods.msdsr.method import MSDSR
from isovol.pipeline.methods.msdsr.network import DenoiserConfig
from isovol.pipeline.methods.msdsr.trainer import train_msdsr
from isovol.pipeline.metrics import ssim


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def scores(truth: np.ndarray, out: np.ndarray, factor: int) -> dict[str, float]:
    between = np.arange(out.shape[0]) % factor != 0
    return {"psnr": psnr(truth[between], out[between]),
            "ssim_xz": float(np.mean([ssim(truth[:, i], out[:, i], 255.0) for i in range(0, out.shape[1], 4)]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sample", type=int, default=2)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--recipe", default="cpu-demo")
    ap.add_argument("--set", action="append", default=[], help="train field=value (YAML value)")
    ap.add_argument("--net", help="the denoiser instead of the recipe's: a YAML mapping of its fields")
    ap.add_argument("--model", help="a trained model directory (skip training)")
    ap.add_argument("--keep", help="train into this directory (kept) instead of a temporary one")
    ap.add_argument("--steps", default="1,5,20,50")
    ap.add_argument("--samples", default="1")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--crop", type=int, default=64, help="Y/X size of the centred crop")
    ap.add_argument("--slices", type=int, default=None, help="input slices of the crop [all]")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="append one JSON line per row to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = f"training_sample{args.sample}"
    vol = np.load(os.path.join(args.data, name, f"{name}_zyx_uint8.npy"))
    r = args.factor
    low = np.ascontiguousarray(vol[::r])
    truth_full = vol[: (low.shape[0] - 1) * r + 1]
    model = args.model
    if model is None:
        _, recipe = BOOK.load(args.recipe)
        changes = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
        train = replace(recipe.train, **changes)
        model = args.keep or tempfile.mkdtemp(prefix="msdsr-steps-")
        t0 = time.perf_counter()
        net = recipe.model if args.net is None else DenoiserConfig(**yaml.safe_load(args.net))
        res = train_msdsr(low, model, r, model_config=net, train=train, sampling=asdict(recipe.sampling),
                          device="cpu", log=print)
        print(f"trained {res['steps']} steps in {time.perf_counter() - t0:.0f} s; last validation {res['history'][-1]}")
    c, y0 = args.crop, (low.shape[1] - args.crop) // 2
    n = args.slices or low.shape[0]
    part = np.ascontiguousarray(low[:n, y0 : y0 + c, y0 : y0 + c])
    truth = truth_full[: (n - 1) * r + 1, y0 : y0 + c, y0 : y0 + c]
    lin = upsample_array(part, r, get_method("linear"))
    rows = [{"method": "linear", "steps": "", "samples": "", **scores(truth, lin, r), "seconds": 0.0}]
    for samples in map(int, args.samples.split(",")):
        for steps in map(int, args.steps.split(",")):
            meth = MSDSR(model, steps=steps, eta=args.eta, samples=samples, tile=args.tile, device="cpu")
            t0 = time.perf_counter()
            out = upsample_array(part, r, meth)
            rows.append({"method": "msdsr", "steps": steps, "samples": samples, **scores(truth, out, r),
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    mvox = lin.size / 1e6
    print(f"\n{name}, r = {r}, crop {lin.shape} ({mvox:.2f} Mvox), eta {args.eta}, model {model}")
    print("| method | DDIM steps | samples | PSNR (synthesised) | SSIM XZ | seconds | s per Mvox |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['steps']} | {row['samples']} | {row['psnr']:.2f} | {row['ssim_xz']:.3f} | "
              f"{row['seconds']:.1f} | {row['seconds'] / mvox:.1f} |")
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "eta": args.eta, "model": model, "recipe": args.recipe,
                                    "set": args.set}) + "\n")


if __name__ == "__main__":
    main()

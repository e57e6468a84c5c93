"""Dev script: how much does the lateral regression gain over linear interpolation, per CPU-minute of training?

On a real isotropic FIB-SEM volume (FlyEM medulla, 10 nm, ../shared/data/flyem_medulla_fibsem_10nm), keep every
r-th XY slice (the anisotropic input), train the U-Net on that stack's own XY slices with a recipe (a preset of
pipeline/methods/lateral_regression/recipes.yaml, optionally with training fields overridden), then upsample the
decimated stack in memory with a simple whole-volume inference -- every XZ and YZ plane's base (linear or cubic,
``base_rows``) through the network, the two predictions averaged, measured slices kept exact, rounded to the
input's dtype -- and compare the PSNR on the synthesised slices (z not a multiple of r) against the ground truth
with that of linear and cubic interpolation of the same input.  Not the blockwise method (method.py): a plain
reference for choosing the recipes.

    python benchmarks/lateral_regression_tune.py --data ../shared/data/flyem_medulla_fibsem_10nm \
        --recipe cpu-demo [--sample 1] [--factor 8] [--threads 2] [--set steps=600 --set patch=65]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
import yaml

from isovol.pipeline.checkpoints import WEIGHTS, load_tensors
from isovol.pipeline.methods.lateral_regression import BOOK
from isovol.pipeline.methods.lateral_regression.degrade import base_rows
from isovol.pipeline.methods.lateral_regression.network import build_unet
from isovol.pipeline.methods.lateral_regression.trainer import predict, train_regression


@torch.no_grad()
def infer_planes(net: torch.nn.Module, low: np.ndarray, factor: int, kind: str, align: int,
                 batch: int = 8) -> np.ndarray:
    """Every plane ``low[:, i, :]`` (rows: the kept Z slices) filled by the base and corrected by the network:
    (n_out, planes, width) float32 in [0, 1] units of ``low``."""
    planes = np.moveaxis(low, 1, 0)  # (planes, n, width)
    base = base_rows(planes, factor, kind)  # (planes, n_out, width)
    w = base.shape[-1]
    pad_w = -(-w // align) * align - w
    out = np.empty_like(base)
    for i in range(0, base.shape[0], batch):
        x = torch.from_numpy(base[i : i + batch]).unsqueeze(1)
        if pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, 0), mode="replicate")
        out[i : i + batch] = predict(net, x, align)[:, 0, :, :w].numpy()
    return np.moveaxis(out, 0, 1)


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(peak**2 / mse))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with training_sample1/ and training_sample2/")
    ap.add_argument("--sample", type=int, default=1, choices=(1, 2))
    ap.add_argument("--size", type=int, default=250, help="edge of the cubic region (from the corner)")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--recipe", default="cpu-demo", help="a lateral-regression preset or recipe file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training field (YAML value), e.g. --set steps=600")
    ap.add_argument("--model", default=None, help="override the U-Net: a preset name or a YAML mapping")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    name = f"training_sample{args.sample}"
    gt = np.load(os.path.join(args.data, name, f"{name}_zyx_uint8.npy"))[: args.size, : args.size, : args.size]
    r = args.factor
    low = np.ascontiguousarray(gt[::r])
    n_out = (low.shape[0] - 1) * r + 1
    truth = gt[:n_out]
    synth = np.array([z % r != 0 for z in range(n_out)])

    label, recipe = BOOK.load(args.recipe)
    train = recipe.train
    for item in args.set:
        key, value = item.split("=", 1)
        train = replace(train, **{key: yaml.safe_load(value)})
    model_cfg = recipe.model
    if args.model:
        spec = yaml.safe_load(args.model)
        model_cfg = BOOK.parse({"model": spec}, "--model").model
    with tempfile.TemporaryDirectory() as model_dir:
        t0 = time.perf_counter()
        result = train_regression(low, model_dir, r, model_config=model_cfg, train=copy.deepcopy(train),
                                  device="cpu", log=print)
        minutes = (time.perf_counter() - t0) / 60
        net = build_unet(model_cfg)
        net.load_state_dict(load_tensors(os.path.join(model_dir, WEIGHTS), "benchmark"))
    net.eval()
    t1 = time.perf_counter()
    scale = 255.0
    lowf = low.astype(np.float32) / scale
    xz = infer_planes(net, lowf, r, train.base, model_cfg.align)  # planes along Y: (n_out, y, x)
    yz = infer_planes(net, np.ascontiguousarray(np.swapaxes(lowf, 1, 2)), r, train.base, model_cfg.align)
    pred = 0.5 * (xz + np.swapaxes(yz, 1, 2))
    pred[::r] = lowf  # measured slices exact
    pred = np.clip(np.rint(pred * scale), 0, 255).astype(np.uint8)
    infer_s = time.perf_counter() - t1
    linear = np.clip(np.rint(np.moveaxis(base_rows(np.moveaxis(low, 0, -2), r, "linear"), -2, 0)), 0, 255)
    cubic = np.clip(np.rint(np.moveaxis(base_rows(np.moveaxis(low, 0, -2), r, "cubic"), -2, 0)), 0, 255)
    scores = {k: psnr(v[synth], truth[synth], 255.0) for k, v in
              (("regression", pred), ("linear", linear), ("cubic", cubic))}
    record = {"data": f"{name}[:{args.size}]^3 every {r}th slice {low.shape}", "recipe": label,
              "model": model_cfg.to_dict(), "train": {k: v for k, v in vars(train).items()},
              "steps": result["steps"], "train_minutes": round(minutes, 2), "inference_s": round(infer_s, 1),
              "psnr": {k: round(v, 3) for k, v in scores.items()},
              "gain_over_linear_db": round(scores["regression"] - scores["linear"], 3),
              "validation": result["history"][-1]}
    print(json.dumps(record))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

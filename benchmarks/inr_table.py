"""INR on a FlyEM crop at r = 8: linear, cubic, the consistency-only field (SDS weight 0) and INR + SDS, scored
against the full crop with the evaluation protocol's measures (PSNR / SSIM per plane, FSC-0.5) plus the seam figure
and seconds; then INR + SDS at fit budgets of 50 / 200 / 1000 steps (seconds per Mvox and quality).

    python benchmarks/inr_table.py --prior MODEL_DIR [--recipe cpu-demo] [--crop 121,128,128] [--budgets 50,200]
    python benchmarks/inr_table.py --smoke        # seconds: a tiny crop and the closed-form Gaussian prior

MODEL_DIR holds the prior: an MSDSR model (``isovol train INPUT MODEL_DIR --method inr``, or ``--train-prior``: the
recipe's prior trained on every 8th XY slice of the whole training_sample2, i.e. on the input only).
The input is every
8th slice of the crop; the whole volume is one in-memory call (``upsample_array``), whose voxels are those of any
blockwise run on the fit grid.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from typing import Any

import numpy as np
import torch

DATA = "../shared/data/flyem_medulla_fibsem_10nm"  # from the repository root; --data overrides it


def load_volume(data: str) -> np.ndarray:
    """training_sample2 (FlyEM FIB-SEM, 250^3 at 10 nm), memory-mapped, from ``data`` or ``data``/training_sample2."""
    name = "training_sample2_zyx_uint8.npy"
    for path in (os.path.join(data, name), os.path.join(data, "training_sample2", name)):
        if os.path.exists(path):
            return np.load(path, mmap_mode="r")
    raise SystemExit(f"{name} not found in {data} or {data}/training_sample2")
FACTOR = 8


def crop_of(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The centred crop of ``shape`` (Z = m * r + 1, so it starts and ends on a measured slice)."""
    lo = [(n - s) // 2 for n, s in zip(volume.shape, shape)]
    return np.ascontiguousarray(volume[tuple(slice(a, a + s) for a, s in zip(lo, shape))])


def row(name: str, truth: np.ndarray, out: np.ndarray, seconds: float, block: tuple[int, int, int]) -> dict:
    from isovol.pipeline.methods.base import upsample_array
    from isovol.pipeline.methods.interp import Interpolation
    from isovol.pipeline.metrics import seam_figure
    from isovol.workflows.measures import score

    start = upsample_array(np.ascontiguousarray(truth[::FACTOR]), FACTOR, Interpolation("linear"))
    moved = float(np.abs(out.astype(np.float32) - start).mean())

    s = score(truth, out, FACTOR, voxel_nm=10.0)
    seam = seam_figure(out, block, FACTOR)
    return {"name": name, **{f"psnr_{k}": s[k]["psnr"] for k in ("XY", "XZ", "YZ")},
            **{f"ssim_{k}": s[k]["ssim"] for k in ("XY", "XZ", "YZ")}, "fsc": s["fsc05_nm"],
            "seam": seam["ratio"], "seconds": seconds, "mvox": out.size / 1e6, "moved": moved}


def print_rows(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print("| method | PSNR XY | PSNR XZ | PSNR YZ | SSIM XY | SSIM XZ | SSIM YZ | FSC-0.5 nm | seam | s | s/Mvox "
          "| mean abs change from linear |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['psnr_XY']:.2f} | {r['psnr_XZ']:.2f} | {r['psnr_YZ']:.2f} | {r['ssim_XY']:.3f} | "
              f"{r['ssim_XZ']:.3f} | {r['ssim_YZ']:.3f} | {r['fsc']:.1f} | {_seam(r['seam'])} | {r['seconds']:.1f} | "
              f"{r['seconds'] / r['mvox']:.1f} | {r['moved']:.3f} |", flush=True)


def _seam(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio > 0 else "-"  # 0: the crop holds one fit block, there is no border


def timed(stack: np.ndarray, method: Any) -> tuple[np.ndarray, float]:
    from isovol.pipeline.methods.base import upsample_array

    t0 = time.perf_counter()
    out = upsample_array(stack, FACTOR, method)
    return out, time.perf_counter() - t0


def run(args: argparse.Namespace) -> None:
    from isovol.pipeline.methods.inr.method import INR
    from isovol.pipeline.methods.interp import Interpolation

    torch.set_num_threads(args.threads)
    volume = load_volume(args.data)
    truth = crop_of(volume, args.crop)
    stack = np.ascontiguousarray(truth[::FACTOR])
    options: dict[str, Any] = {"recipe": args.recipe, **args.option}
    if args.smoke:
        from isovol.pipeline.methods.inr.prior import save_gaussian

        model = os.path.join(tempfile.mkdtemp(), "gaussian")
        save_gaussian(model, float(stack.mean()) / 127.5 - 1, float(stack.std()) / 127.5)
    else:
        model = args.prior
        if args.train_prior and not os.path.exists(os.path.join(model, "config.json")):
            train_prior(model, args.recipe, volume)
    make = lambda **o: INR(model, device=args.device, **{**options, **o})  # noqa: E731
    block = make().block
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} cores, "
          f"torch threads {args.threads}, device {make()._device()}; crop {truth.shape} of training_sample2, input "
          f"{stack.shape} (every {FACTOR}th slice); recipe {args.recipe} {args.option or ''}; fit block {block}, "
          f"overlap {make().overlap}; prior {model}")
    rows = []
    for kind in ("linear", "cubic"):
        out, sec = timed(stack, Interpolation(kind))
        rows.append(row(kind, truth, out, sec, block))
    print_rows(rows, "classical")
    ablation = [("field, consistency only (SDS 0)", {"sds_weight": 0.0})] if "ablation" in args.rows else []
    for name, extra in (*ablation, ("INR + SDS", {})):
        method = make(**extra)
        out, sec = timed(stack, method)
        rows.append({**row(f"{name}, {method.fit.steps} steps", truth, out, sec, block), "steps": method.fit.steps})
        print_rows(rows[-1:], name)
    print_rows(rows, f"table ({args.recipe})")
    budgets = [rows[-1]] if rows[-1]["steps"] in args.budgets else []
    for steps in [b for b in args.budgets if b != rows[-1]["steps"]]:  # consistency only: its start, at any budget
        out, sec = timed(stack, make(steps=steps))
        budgets.append({**row(f"INR + SDS, {steps} steps", truth, out, sec, block), "steps": steps})
        print_rows(budgets[-1:], f"budget {steps}")
    if budgets:
        print_rows(sorted(budgets, key=lambda r: r["steps"]), "budgets")
    if args.seam_steps:  # fit blocks of half the size, so the crop has borders to measure
        half = tuple(max(1, b // 2) for b in block)
        out, sec = timed(stack, make(steps=args.seam_steps, block=list(half)))
        seams = [row(f"INR + SDS, fit block {half}, {args.seam_steps} steps", truth, out, sec, half)]
        for kind in ("linear",):
            lin, _ = timed(stack, Interpolation(kind))
            seams.append(row(f"{kind} (borders of the same grid)", truth, lin, 0.0, half))
        print_rows(seams, "seams")


def train_prior(model: str, recipe: str, volume: np.ndarray) -> None:
    """``isovol train --method inr --recipe RECIPE`` on every 8th slice of the whole volume (the input only)."""
    from isovol.workflows.train import run_train

    os.makedirs(os.path.dirname(os.path.abspath(model)), exist_ok=True)
    source = os.path.abspath(model) + ".input.npy"
    np.save(source, np.ascontiguousarray(volume[::FACTOR]))
    t0 = time.perf_counter()
    info = run_train(source, model, FACTOR, method="inr", recipe=recipe, processes=False, workers=1,
                     voxel_size=(80.0, 10.0, 10.0))
    print(f"# prior trained in {time.perf_counter() - t0:.0f} s: {info.get('line', '')}", flush=True)


def parse_option(text: str) -> tuple[str, Any]:
    import yaml

    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", help="the prior's model directory (an MSDSR model)")
    p.add_argument("--data", default=DATA, help="the folder holding training_sample2 (flat or in its folder)")
    p.add_argument("--train-prior", action="store_true", help="train the prior into --prior first if it is not there")
    p.add_argument("--recipe", default="cpu-demo")
    p.add_argument("--crop", default="121,128,128", help="Z,Y,X of the centred crop (Z = m * 8 + 1)")
    p.add_argument("--budgets", default="50,200,1000", help="fit steps to time, comma-separated ('' for none)")
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE fit option over the recipe")
    p.add_argument("--seam-steps", type=int, default=0, help="also fit half-size blocks for this many steps and "
                   "print their seam figure (0: no)")
    p.add_argument("--rows", default="ablation", help="'ablation' to include the consistency-only field, '' not")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="a tiny crop, the Gaussian prior, cpu-tiny: seconds")
    args = p.parse_args()
    args.option = dict(parse_option(o) for o in args.option)
    if args.smoke:
        args.crop, args.recipe, args.budgets, args.seam_steps = "17,32,32", "cpu-tiny", "3", 2
    elif not args.prior:
        p.error("--prior is required (or --smoke)")
    args.crop = tuple(int(v) for v in args.crop.split(","))
    args.budgets = [int(v) for v in args.budgets.split(",") if v]
    run(args)


if __name__ == "__main__":
    main()

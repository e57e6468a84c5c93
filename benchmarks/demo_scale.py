"""How far D2R's Stage I-II gets at the demo's scale on a CPU: train the lateral prior for a few minutes on the
bundled crop's every r-th XY slice, recover the whole crop (XZ and YZ, fused), score it against the crop.

The pseudo-isotropic volume is what Stage III learns from, so its gain over cubic bounds what the demo's D2R can
show.  Prints one table row per budget.  Usage::

    python benchmarks/demo_scale.py --minutes 1 4 [--factor 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from isovol.pipeline.degrade import decimate_z
from isovol.pipeline.methods import get_method, upsample_array
from isovol.pipeline.methods.d2r_prior.method import PriorRecovery
from isovol.pipeline.methods.d2r_prior.trainer import PriorTrainConfig, nafnet_config, train_prior
from isovol.pipeline.metrics import plane_scores
from isovol.workflows.demo_data import load_crop

#: a NAFNet between the presets `tiny` (0.03 M parameters, too small to learn) and `small` (5 M, too slow here)
MODEL = {"width": 16, "enc_blocks": [1, 1, 1], "middle_blocks": 1, "dec_blocks": [1, 1, 1], "time_dim": 32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="fast-sampler network calls")
    ap.add_argument("--prediction", choices=("noise", "x0"), default="noise", help="what the prior's net predicts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    truth, _ = load_crop()
    low, n = decimate_z(truth, args.factor)
    truth = truth[:n]
    cubic = plane_scores(truth, upsample_array(low, args.factor, get_method("cubic")), args.factor)
    print(f"crop {truth.shape}, every {args.factor}th slice kept -> {low.shape}; NAFNet {MODEL}; "
          f"{args.threads} thread(s); fast sampler, {args.steps} calls from t = 50; the net predicts "
          f"{args.prediction}")
    print("| Stage I budget | steps | Stage II s | PSNR XY pseudo (cubic) | gain XY | gain XZ | gain YZ |")
    print("|---|---|---|---|---|---|---|")
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as d:
            cfg = PriorTrainConfig(steps=10**6, batch=8, patch=65, lr=2e-3, warmup=50, ema=0.99, t_max=50,
                                   val_every=10**6, ckpt_every=10**6, val_patches=2, val_timesteps=1, val_restore=0,
                                   max_minutes=minutes)
            res = train_prior(low, d, args.factor, model_config=nafnet_config(MODEL), train=cfg, device="cpu",
                              sde={"prediction": args.prediction}, log=lambda s: None)
            t = time.perf_counter()
            method = PriorRecovery(d, sampler="fast", steps=args.steps, t_start=50, tile=64, margin=8, batch=64)
            pseudo = upsample_array(low, args.factor, method)
            secs = time.perf_counter() - t
        s = plane_scores(truth, pseudo, args.factor)
        gain = {p: s[p]["psnr"] - cubic[p]["psnr"] for p in ("XY", "XZ", "YZ")}
        print(f"| {minutes:g} min | {res['steps']} | {secs:.0f} | {s['XY']['psnr']:.2f} ({cubic['XY']['psnr']:.2f}) | "
              f"{gain['XY']:+.2f} | {gain['XZ']:+.2f} | {gain['YZ']:+.2f} |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

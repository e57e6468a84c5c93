"""D2R Stage I-II evidence in one call (and Stage III with --stage3): everything trained on the decimated
input only, no ground truth, as a user would.

    python benchmarks/d2r_gpu.py --data devdata --prior-minutes 4 --stage3-minutes 2 --stage3   # GPU
    python benchmarks/d2r_gpu.py --data devdata --prior-minutes 4 --prediction noise           # the paper's prior
    python benchmarks/d2r_gpu.py --data devdata --quick --stage3                                # CPU smoke run

``--data`` holds training_sample1_zyx_uint8.npy (FlyEM FIB-SEM, 250^3, 10 nm isotropic; a copy from
../shared/data/flyem_medulla_fibsem_10nm).  Protocol (DESIGN.md): keep every r-th slice -> the anisotropic
input; Stage I trains the IR-SDE prior on its XY slices; Stage II restores its XZ and YZ slices and fuses them
into the pseudo-isotropic volume; that is scored against the real volume on z in [0, (n-1) r] next to cubic
(PSNR/SSIM per plane, XY over synthesised slices only; FSC-0.5).  A sampler table compares reference
(T calls), posterior (T calls) and fast (<= 10 calls) on the same lateral slices: network calls, seconds
per 512 lateral slices, PSNR.  With --stage3, DGEAN is trained on the pseudo-isotropic volume (D2R-DGEAN)
and scored the same way.  Prints Markdown tables.
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
from isovol.pipeline.methods import d2r_prior, dgean, get_method, upsample_array
from isovol.pipeline.methods.d2r_prior.method import PriorRecovery
from isovol.pipeline.methods.d2r_prior.samplers import network_calls
from isovol.pipeline.methods.d2r_prior.trainer import train_prior
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.pipeline.metrics import fsc, fsc_resolution, plane_scores


def log(msg: str) -> None:
    print(msg, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def score(ref: np.ndarray, out: np.ndarray, factor: int) -> dict:
    s = plane_scores(ref, out, factor)
    f, c = fsc(ref.astype(np.float64), out.astype(np.float64), 10.0)
    return {**s, "fsc05_nm": fsc_resolution(f, c)}


def row(name: str, r: dict, extra: str = "") -> str:
    return (f"| {name} | {r['XY']['psnr']:.2f} | {r['XZ']['psnr']:.2f} | {r['YZ']['psnr']:.2f} | "
            f"{r['XY']['ssim']:.4f} | {r['XZ']['ssim']:.4f} | {r['YZ']['ssim']:.4f} | {r['fsc05_nm']:.1f} |{extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="devdata")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--prior-minutes", type=float, default=4.0)
    ap.add_argument("--stage3", action="store_true", help="also train and score D2R-DGEAN")
    ap.add_argument("--stage3-minutes", type=float, default=2.0)
    ap.add_argument("--sampler-slices", type=int, default=64, help="lateral slices timed per sampler")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="tiny models, small data: a CPU check of the path")
    ap.add_argument("--prediction", choices=("noise", "x0"), default="x0",
                    help="what Stage I's net predicts (docs/d2r.md): x0 as the gpu-default recipe, or the paper's "
                         "noise; ignored with --prior")
    ap.add_argument("--t-max", type=int, default=None,
                    help="train Stage I on t <= this only [x0: 50, as gpu-default; noise: all of 1..T, as the "
                         "paper]; every sampler then starts at t_max at most")
    ap.add_argument("--prior", default=None, help="use this trained prior (at --factor) and skip Stage I, e.g. "
                                                  "devruns/issue5/models/d2r/prior left by issue5_table.py")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    r = args.factor
    gt = np.load(os.path.join(args.data, "training_sample1_zyx_uint8.npy"))
    if args.quick:
        gt = gt[:65, :64, :64]
    low, n = decimate_z(gt, r)
    ref = gt[:n]
    work = tempfile.mkdtemp(prefix="isovol-d2r-")
    recipe = "cpu-tiny" if args.quick else "gpu-default"  # the presets of the d2r-prior and DGEAN recipe books
    log(f"# D2R Stage I-II evidence, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    log(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else platform.processor() or 'cpu'}; "
        f"torch {torch.__version__}; input {low.shape} (every {r}th slice of {gt.shape}), no ground truth used")

    # Stage I (or a prior trained elsewhere on the same decimated input, e.g. by `isovol train`)
    if args.prior:
        prior_dir, stage1 = args.prior, 0.0
        res = {"steps": None, "history": []}
        log(f"\nStage I: skipped, using the prior in {prior_dir}")
    else:
        prior_dir = os.path.join(work, "prior")
        prior_recipe = d2r_prior.BOOK.load(recipe)[1]
        mcfg, tcfg = prior_recipe.model, prior_recipe.train
        sde = {**prior_recipe.sde, "prediction": args.prediction}
        tcfg.t_max = args.t_max if args.t_max is not None else (50 if args.prediction == "x0" else None)
        tcfg.max_minutes = args.prior_minutes
        if args.quick:
            tcfg.steps = 20
        t0 = time.perf_counter()
        res = train_prior(low, prior_dir, r, model_config=mcfg, train=tcfg, sde=sde, device=device,
                          source={"name": "flyem training_sample1, every 8th slice"}, log=log)
        stage1 = time.perf_counter() - t0
        log(f"\nStage I: {res['steps']} steps in {stage1:.0f} s ({args.prediction} prediction, "
            f"t <= {tcfg.t_max or sde.get('T', 100)})")

    # Stage II over the whole volume (fast sampler), and the cubic baseline
    tile = 32 if args.quick else args.tile
    fast = PriorRecovery(prior_dir, factor=r, sampler="fast", tile=tile, margin=16, batch=64, device=device)
    t0 = time.perf_counter()
    pseudo = upsample_array(low, r, fast)
    sync()
    stage2 = time.perf_counter() - t0
    cubic = upsample_array(low, r, get_method("cubic"))
    rows = {"cubic": score(ref, cubic, r), "Stage II pseudo-isotropic (fast)": score(ref, pseudo, r)}
    for name, rr in rows.items():  # as soon as known: a call cut off by its time limit still leaves these
        log(f"  {name}: PSNR XY {rr['XY']['psnr']:.2f}, XZ {rr['XZ']['psnr']:.2f}, YZ {rr['YZ']['psnr']:.2f}")
    log(f"Stage II (fast sampler, whole volume, {2 * gt.shape[1]} lateral slices): {stage2:.1f} s; at that rate a "
        f"512^3 output takes {stage2 * 512**3 / pseudo.size / 60:.1f} min (target <= 2 min on one H100)")

    # sampler table on the first lateral slices (XZ planes through y < k), same tiles and seeds
    k = min(args.sampler_slices, low.shape[1])
    sub = low[:, :k, :]
    table = []
    for name, steps in (("reference", None), ("posterior", None), ("fast", 5), ("fast", 10)):
        meth = PriorRecovery(prior_dir, factor=r, sampler=name, steps=steps, tile=tile, margin=16, batch=64,
                             device=device)
        t0 = time.perf_counter()
        out = upsample_array(sub, r, meth)
        sync()
        sec = time.perf_counter() - t0
        per512 = sec / (sub.shape[1] + sub.shape[2]) * 512  # the sub-volume's XZ and YZ planes, per plane
        s = plane_scores(ref[:, :k, :], out, r, with_ssim=False)
        T = meth._sde().T
        start = meth.t_start or (T // 2 if name == "fast" else T)  # a prior trained on t <= t_max starts there
        table.append((name, start, network_calls(name, steps, T, meth.t_start), per512, s["XZ"]["psnr"]))
        log(f"  sampler {name}: start t {start}, {table[-1][2]} calls, {per512:.1f} s per 512 lateral slices, "
            f"PSNR XZ {s['XZ']['psnr']:.2f}")
    c = plane_scores(ref[:, :k, :], upsample_array(sub, r, get_method("cubic")), r, with_ssim=False)

    if args.stage3:
        model_dir = os.path.join(work, "d2r-dgean")
        dgean_recipe = dgean.BOOK.load(recipe)[1]
        dm, dt = dgean_recipe.model, dgean_recipe.train
        dt.max_minutes = args.stage3_minutes
        if args.quick:
            dt.steps = 10
        t0 = time.perf_counter()
        train_dgean(pseudo, model_dir, r, isotropic=False, model_config=dm, train=dt, device=device,
                    source={"name": "pseudo-isotropic Stage II volume"}, log=lambda s: None)
        stage3 = time.perf_counter() - t0
        out = upsample_array(low, r, get_method("dgean", model=model_dir, device=device))
        rows["D2R-DGEAN"] = score(ref, out, r)
        log(f"  D2R-DGEAN: PSNR XY {rows['D2R-DGEAN']['XY']['psnr']:.2f}")
        log(f"Stage III: {stage3:.0f} s")

    log(f"\n## FlyEM training_sample1, r = {r}, trained on the decimated input only\n")
    log("| volume | PSNR XY | PSNR XZ | PSNR YZ | SSIM XY | SSIM XZ | SSIM YZ | FSC-0.5 (nm) |")
    log("|---|---|---|---|---|---|---|---|")
    for name, rr in rows.items():
        log(row(name, rr))
    log(f"\n## Samplers on the sub-volume y < {k}: its {k} XZ and {low.shape[2]} YZ planes\n")
    log("| sampler | start t | network calls | s per 512 lateral slices | PSNR XZ |")
    log("|---|---|---|---|---|")
    log(f"| cubic (no prior) | - | 0 | - | {c['XZ']['psnr']:.2f} |")
    for name, start, calls, per512, p in table:
        log(f"| {name} | {start} | {calls} | {per512:.1f} | {p:.2f} |")
    log(f"\nwall time: Stage I {stage1:.0f} s, Stage II {stage2:.1f} s")
    with open(os.path.join(args.out, "d2r_gpu.json"), "w") as f:
        json.dump({"rows": rows, "samplers": table, "stage1_s": stage1, "stage2_s": stage2,
                   "prior_history": res["history"]}, f, indent=1, default=float)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

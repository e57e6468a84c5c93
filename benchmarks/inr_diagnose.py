"""Why SDS helps or not: does the prior point from the classical start towards the truth, and can the field hold
the truth at all?

1. Prior signal per noise level.  On 48 x 48 windows of XZ planes of the crop, at x = the linear interpolation,
   the expected SDS direction E[eps_hat(x_t) - eps] (averaged over ``--draws`` noises) is compared with the
   direction that would help, x - truth: their cosine over the rows between measured slices (> 0: SDS moves the
   field towards the truth).  The same on XY windows whose rows were decimated by r and linearly refilled (the
   prior's own domain), so a prior that knows XY but not XZ is told apart from one that knows neither.
2. Field capacity.  The field of the recipe fitted directly to the truth (every voxel known, ``--oracle-steps``
   steps): the PSNR it reaches bounds what any loss can get out of it.

    python benchmarks/inr_diagnose.py --prior MODEL_DIR [--recipe cpu-demo]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inr_table import DATA, FACTOR, crop_of, load_volume  # noqa: E402

T_STEPS = (20, 50, 100, 200, 300, 500, 700, 900)


def windows(truth: np.ndarray, approx: np.ndarray, n: int, size: int, rng: np.random.Generator, axis: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (truth, approx) windows of XZ planes (rows z) or XY slices (rows y), in [-1, 1]."""
    out_t, out_a = [], []
    for _ in range(n):
        if axis == "xz":
            y = int(rng.integers(truth.shape[1]))
            t, a = truth[:, y], approx[:, y]
        else:
            z = int(rng.integers(truth.shape[0]))
            t, a = truth[z], approx[z]
        r0 = int(rng.integers(0, (t.shape[0] - size) // FACTOR + 1)) * FACTOR  # windows start on a measured row
        c0 = int(rng.integers(t.shape[1] - size + 1))
        out_t.append(t[r0 : r0 + size, c0 : c0 + size])
        out_a.append(a[r0 : r0 + size, c0 : c0 + size])
    f = lambda v: torch.from_numpy(np.stack(v).astype(np.float32) / 127.5 - 1)[:, None]  # noqa: E731
    return f(out_t), f(out_a)


def row_decimated_xy(truth: np.ndarray) -> np.ndarray:
    """Every XY slice with only every r-th row kept and the rest refilled linearly (the XY analogue of linear)."""
    from isovol.pipeline.methods.interp import Interpolation

    kept = np.ascontiguousarray(truth[:, ::FACTOR].transpose(1, 0, 2))  # (rows, z, x)
    filled = Interpolation("linear").apply(kept.astype(np.float32), FACTOR, 0, (kept.shape[0] - 1) * FACTOR + 1)
    out = truth.astype(np.float32).copy()
    out[:, : filled.shape[0]] = filled.transpose(1, 0, 2)
    return out


@torch.no_grad()
def signal(prior, truth: torch.Tensor, approx: torch.Tensor, draws: int, gen: torch.Generator) -> dict[int, float]:
    between = torch.ones(truth.shape[-2], dtype=torch.bool)
    between[::FACTOR] = False
    want = (approx - truth)[:, :, between]
    out = {}
    for t in T_STEPS:
        tt = torch.full((approx.shape[0],), t)
        a = prior.alphas_cumprod[t]
        acc = torch.zeros_like(approx)
        for _ in range(draws):
            noise = torch.randn(tuple(approx.shape), generator=gen)
            acc += prior.eps(a.sqrt() * approx + (1 - a).sqrt() * noise, tt) - noise
        g = (acc / draws)[:, :, between]
        out[t] = float(torch.nn.functional.cosine_similarity(g.flatten(), want.flatten(), dim=0))
    return out


def oracle(truth: np.ndarray, method, steps: int) -> tuple[float, float]:
    """PSNR of the recipe's field fitted to every voxel of ``truth`` (one region, from linear)."""
    from isovol.pipeline.methods.base import upsample_array
    from isovol.pipeline.methods.inr.field import ResidualField
    from isovol.pipeline.metrics import psnr

    base = upsample_array(np.ascontiguousarray(truth[::FACTOR]), FACTOR, method).astype(np.float32)
    base_t = torch.from_numpy(base / 127.5 - 1)
    goal = torch.from_numpy(truth.astype(np.float32) / 127.5 - 1)
    gen = torch.Generator().manual_seed(0)
    field = ResidualField(truth.shape, method.field, gen)
    opt = torch.optim.Adam([{"params": list(field.grids.parameters()), "lr": method.fit.lr},
                            {"params": [p for n, p in field.named_parameters() if not n.startswith("grids.")],
                             "lr": method.fit.lr_mlp}])
    n = 32768
    for _ in range(steps):
        idx = [torch.randint(s, (n,), generator=gen) for s in truth.shape]
        coords = torch.stack(idx, -1).float()
        loss = ((base_t[tuple(idx)] + field(coords) - goal[tuple(idx)]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        zz, yy, xx = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in truth.shape), indexing="ij")
        res = field(torch.stack((zz, yy, xx), -1).view(-1, 3)).view(truth.shape).numpy()
    fitted = np.clip(np.rint(base + res * 127.5), 0, 255)
    synth = [z for z in range(truth.shape[0]) if z % FACTOR]
    return psnr(truth[synth], fitted[synth], 255.0), psnr(truth[synth], base[synth], 255.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--data", default=DATA, help="the folder holding training_sample2")
    p.add_argument("--recipe", default="cpu-demo")
    p.add_argument("--crop", default="121,128,128")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--oracle-steps", type=int, default=300)
    p.add_argument("--oracle-crop", default="65,64,64")
    args = p.parse_args()
    torch.set_num_threads(2)
    from isovol.pipeline.methods.base import upsample_array
    from isovol.pipeline.methods.inr.method import INR
    from isovol.pipeline.methods.interp import Interpolation

    volume = load_volume(args.data)
    truth = crop_of(volume, tuple(int(v) for v in args.crop.split(",")))
    linear = upsample_array(np.ascontiguousarray(truth[::FACTOR]), FACTOR, Interpolation("linear"))
    method = INR(args.prior, recipe=args.recipe)
    prior = method.prior()
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    xz = signal(prior, *windows(truth, linear, args.windows, 48, rng, "xz"), args.draws, gen)
    xy = signal(prior, *windows(truth, row_decimated_xy(truth), args.windows, 48, rng, "xy"), args.draws, gen)
    print(f"# prior {args.prior} (step {method.spec.get('step')}); {args.windows} windows of 48 x 48, {args.draws} "
          f"noise draws; {time.perf_counter() - t0:.0f} s")
    print("\n| t (of 1000) | cos(SDS, linear - truth), XZ planes | same, row-decimated XY slices |")
    print("|---|---|---|")
    for t in T_STEPS:
        print(f"| {t} | {xz[t]:+.3f} | {xy[t]:+.3f} |", flush=True)
    small = crop_of(volume, tuple(int(v) for v in args.oracle_crop.split(",")))
    t0 = time.perf_counter()
    fitted, start = oracle(small, _with_field(method), args.oracle_steps)
    print(f"\nfield capacity ({args.recipe} field, fitted to the truth of a {small.shape} crop for "
          f"{args.oracle_steps} steps, {time.perf_counter() - t0:.0f} s): PSNR_XY {fitted:.2f} dB (its linear start "
          f"{start:.2f} dB)")


def _with_field(method):
    """``method``'s field and rates on a linear base (what ``oracle`` fits)."""
    from isovol.pipeline.methods.interp import Interpolation

    base = Interpolation(method.fit.base)
    base.field, base.fit = method.field, method.fit
    return base


if __name__ == "__main__":
    main()

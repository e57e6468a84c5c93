"""INR end to end on one device, in one call: train the prior (``isovol train --method inr --recipe gpu-default``,
its time capped), upsample every 8th slice of training_sample2 blockwise through the executor with it
(``--method inr``), and print the table of benchmarks/inr_table.py with seconds per stage: linear, cubic,
lateral-regression (the regression baseline, its training capped too), consistency only, INR + SDS.

    python benchmarks/inr_gpu.py --data devdata --out /tmp/inr_gpu [--train-minutes 4] [--steps 1000]
    python benchmarks/inr_gpu.py --data ../shared/data/flyem_medulla_fibsem_10nm --smoke   # CPU: a small crop, cpu-tiny
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inr_table import FACTOR, crop_of, load_volume, print_rows, row  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/inr_gpu")
    p.add_argument("--recipe", default="gpu-default")
    p.add_argument("--train-minutes", type=float, default=4.0, help="cap on the prior's training")
    p.add_argument("--baseline-minutes", type=float, default=2.0,
                   help="cap on training lateral-regression, the regression baseline")
    p.add_argument("--steps", type=int, default=None, help="fit steps (default: the recipe's)")
    p.add_argument("--crop", default="249,250,250")
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--data", default="devdata", help="the folder holding training_sample2 (flat or in its folder)")
    args = p.parse_args()
    if args.smoke:
        args.recipe, args.crop, args.device, args.train_minutes = "cpu-tiny", "33,48,48", "cpu", 1.0
    from isovol.pipeline.methods.inr.method import INR
    from isovol.workflows.train import run_train
    from isovol.workflows.upsample import UpsampleRequest, upsample

    os.makedirs(args.out, exist_ok=True)
    truth = crop_of(load_volume(args.data), tuple(int(v) for v in args.crop.split(",")))
    source = os.path.join(args.out, "in.npy")
    np.save(source, np.ascontiguousarray(truth[::FACTOR]))
    recipe = os.path.join(args.out, "recipe.yaml")
    with open(recipe, "w") as f:
        yaml.safe_dump({"base": args.recipe, "prior": {"train": {"max_minutes": args.train_minutes}}}, f)
    model = os.path.join(args.out, "model")
    t0 = time.perf_counter()
    info = run_train(source, model, FACTOR, method="inr", recipe=recipe, device=args.device, processes=False,
                     workers=1, voxel_size=(80.0, 10.0, 10.0))
    train_s = time.perf_counter() - t0
    print(f"# prior trained in {train_s:.0f} s: {info.get('line', '')}", flush=True)
    baseline = os.path.join(args.out, "baseline")
    base_recipe = os.path.join(args.out, "baseline.yaml")
    with open(base_recipe, "w") as f:
        yaml.safe_dump({"base": "cpu-tiny" if args.smoke else "gpu-default",
                        "train": {"max_minutes": args.baseline_minutes}}, f)
    t0 = time.perf_counter()
    run_train(source, baseline, FACTOR, method="lateral-regression", recipe=base_recipe, device=args.device,
              processes=False, workers=1, voxel_size=(80.0, 10.0, 10.0))
    print(f"# lateral-regression trained in {time.perf_counter() - t0:.0f} s", flush=True)
    block = INR(model, device=args.device).block
    rows = []
    runs = [("linear", "linear", None, {}), ("cubic", "cubic", None, {}),
            ("lateral-regression", "lateral-regression", baseline, {}),
            ("field, consistency only (SDS 0)", "inr", model, {"sds_weight": 0.0}), ("INR + SDS", "inr", model, {})]
    for name, method, mdir, extra in runs:
        options = {**extra, **({"steps": args.steps} if args.steps and method == "inr" else {}),
                   **({"device": args.device} if args.device and method == "inr" else {})}
        out = os.path.join(args.out, f"{name.split(',')[0].replace(' ', '_')}.ome.zarr")
        t0 = time.perf_counter()
        summary = upsample(UpsampleRequest(input=source, output=out, factor=FACTOR, method=method, model=mdir,
                                           method_options=options, voxel_size=(80.0, 10.0, 10.0), overwrite=True,
                                           processes=False, workers=1, progress=False))
        sec = time.perf_counter() - t0
        assert summary.ok, summary
        import zarr

        result = zarr.open_array(store=os.path.join(out, "0"), mode="r")[...]
        label = f"{name}, {INR(model, **options).fit.steps} steps" if method == "inr" else name
        rows.append(row(label, truth, result, sec, block))
        print_rows(rows[-1:], name)
    print_rows(rows, f"end to end ({args.recipe}; prior {train_s:.0f} s; crop {truth.shape})")


if __name__ == "__main__":
    main()

"""`isovol demo`: the evaluation protocol on the bundled real crop, the learned methods included, small enough for a
laptop CPU.

The bundled isotropic FIB-SEM crop is written as ground truth and handed to ``isovol evaluate``: every r-th
slice is kept, lateral-regression (the fast learned baseline, isotropic CARE's idea) and D2R (Stage I prior on its
XY slices, Stage II recovery of its XZ/YZ slices, Stage III DGEAN) are trained on that decimated stack alone, and
the classical methods and the trained models upsample it back through the real blockwise executor; everything is
scored against the crop, each method against the best classical one.

The default recipe ``cpu-demo`` is the smallest D2R that beats cubic here: about 5 minutes on 2 cores (Stage I
1 800 steps, Stage III 600; budgeted in steps, so every run gives the same model), measured +0.20 dB PSNR_XY
over cubic.  ``--recipe cpu-tiny`` runs the flow in 20 s without a gain (a smoke run); ``gpu-default`` the
published sizes (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..pipeline.io.omezarr import write_image
from .demo_data import ATTRIBUTION, load_crop
from .evaluate import EvaluateRequest, evaluate

log = logging.getLogger(__name__)
DEMO_RECIPE = "cpu-demo"
BASELINE = "lateral-regression"


def _classical() -> list[str]:
    from ..pipeline.methods import Kind, registry

    return [e.name for e in registry.entries().values() if e.kind is Kind.CLASSICAL]


def _baseline_recipe(recipe: str) -> str:
    """The demo's recipe for lateral-regression: the same preset as D2R's, or cpu-demo when D2R's is a file."""
    from ..pipeline.methods import registry

    return recipe if recipe in registry.get(BASELINE).recipes else DEMO_RECIPE


def run_demo(out_dir: str, factor: int = 8, workers: int = 2, recipe: str = DEMO_RECIPE,
             block_shape: tuple[int, int, int] = (32, 64, 64), device: str | None = None,
             echo: Callable[[str], None] = log.info, cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the classical methods and D2R on the bundled crop; tell ``echo`` the table (the CLI prints it), leave
    the report in out_dir."""
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    truth, voxel = load_crop()
    gt_url = os.path.join(out_dir, "ground-truth.ome.zarr")
    write_image(gt_url, truth, voxel, attributes={"source": ATTRIBUTION, "note": "the bundled crop (isovol demo)"})
    echo(f"isovol demo: real FIB-SEM crop {truth.shape} at {voxel[0]:g} nm ({ATTRIBUTION}); every {factor}th "
         f"slice kept, lateral-regression and D2R trained on those {(truth.shape[0] - 1) // factor + 1} slices "
         f"only (recipe {recipe}), "
         f"then each method upsamples them back {factor}x")
    methods = [*_classical(), f"{BASELINE}:{_baseline_recipe(recipe)}", f"d2r:{recipe}"]
    req = EvaluateRequest(ground_truth=gt_url, factor=factor, out=out_dir, methods=methods,
                          workers=workers, block_shape=block_shape, device=device, progress=False,
                          **(cluster or {}))
    result = evaluate(req)
    metrics = result["metrics"]
    best = result["info"]["best_classical"]["psnr_XY"]
    echo(f"\n{'method':<16}{'PSNR XY':>9}{'XZ':>7}{'YZ':>7}{'SSIM XY':>9}{'FSC-0.5':>9}{'vs ' + best:>11}{'time':>8}")
    for key, r in metrics.items():
        spent = r["seconds"] + (r.get("train") or {}).get("total_s", 0.0)
        echo(f"{key:<16}{r['XY']['psnr']:>9.2f}{r['XZ']['psnr']:>7.2f}{r['YZ']['psnr']:>7.2f}{r['XY']['ssim']:>9.3f}"
             f"{r['fsc05_nm']:>6.0f} nm{r['vs_best_classical']['psnr_XY']:>+8.2f} dB{spent:>7.0f}s")
    d2r = next((r for k, r in metrics.items() if k.startswith("d2r")), None)
    if d2r is not None:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in d2r["train"]["stages_s"].items())
        echo(f"\nPSNR in dB, XY over the synthesised slices only; D2R trained on the decimated crop alone: "
             f"{stages}. A toy-scale model (0.1 M + 0.14 M parameters, minutes of CPU); the published sizes "
             f"train with --recipe gpu-default on a GPU (BENCHMARKS.md).")
    echo(f"outputs in {out_dir}/: report.md, metrics.json, comparison.png, fsc.png, work/ (an OME-Zarr per "
         f"method), models/ (the trained models); {time.perf_counter() - t0:.0f} s in all")
    return metrics

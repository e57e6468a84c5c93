"""The ``isovol`` commands that train: ``train`` (any learned method of the registry), ``evaluate`` (the protocol,
training what it is asked to on the decimated input) and ``demo``."""

from __future__ import annotations

import os
from typing import Any

import click

from ..pipeline.blocks import parse_shape
from ..pipeline.io.readers import parse_voxel_size
from ..pipeline.io.urls import parse_storage_options
from ..pipeline.methods.registry import DEFAULT_TRAINED
from .cli import cli
from .cli_options import (
    FACTOR,
    block_opt,
    cluster_opts,
    device_opt,
    factor_opt,
    input_storage_opt,
    progress_opt,
    voxel_opt,
)


def score_table(metrics: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """The console table: PSNR per plane, the XY gain over the best classical method (and over the learned
    baseline when it was scored), FSC-0.5 and SliceFID when computed."""
    fid = any(r.get("slicefid") for r in metrics.values())
    base = info.get("lateral_regression")
    best = info.get("best_classical", {}).get("psnr_XY", "classical")
    lines = [f"{'method':<24}{'PSNR XY':>9}{'XZ':>8}{'YZ':>8}{'vs ' + best + ' XY':>19}"
             + (f"{'vs baseline XY':>19}" if base else "") + f"{'FSC nm':>8}" + (f"{'SliceFID':>10}" if fid else "")]
    for name, r in metrics.items():
        lines.append(f"{name[:23]:<24}{r['XY']['psnr']:>9.2f}{r['XZ']['psnr']:>8.2f}{r['YZ']['psnr']:>8.2f}"
                     f"{r['vs_best_classical']['psnr_XY']:>+16.2f} dB"
                     + (f"{r['vs_lateral_regression']['psnr_XY']:>+16.2f} dB" if base else "")
                     + f"{r['fsc05_nm']:>8.1f}"
                     + (f"{r['slicefid']['mean']:>10.2f}" if fid and r.get("slicefid") else ""))
    return lines


@cli.command("train")
@click.argument("input_url", metavar="INPUT")
@click.argument("model_dir", metavar="MODEL_DIR")
@factor_opt("Z factor of INPUT (integer >= 2): the factor the model is trained for.")
@click.option("--method", default=DEFAULT_TRAINED, show_default=True, metavar="NAME",
              help="Learned method to train (`isovol methods` lists them and their recipes).")
@click.option("--recipe", default="gpu-default", show_default=True, metavar="PRESET|FILE",
              help="A preset of the method (cpu-tiny, cpu-demo, gpu-default) or a YAML file overriding its fields "
                   "(`base: PRESET` to start from a preset).")
@click.option("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1",
              help="Training region of INPUT [default: an anisotropic INPUT whole if its output is <= 256^3 "
                   "voxels, else a centred box of about that; a (pseudo-)isotropic INPUT whole].")
@click.option("--restart-from", default=None, metavar="STAGE",
              help="Delete this stage's outputs and the later ones, then run them again (D2R: prior, recover, "
                   "dgean).")
@cluster_opts
@device_opt
@input_storage_opt
@voxel_opt
def train_cmd(input_url: str, model_dir: str, factor: int, method: str, recipe: str, region: str | None,
              restart_from: str | None, workers: int | None, scheduler: str | None, cluster: str,
              cluster_config: str | None, retries: int, block_timeout: float | None, device: str | None,
              storage_options: str | None, voxel_size: str | None) -> None:
    """Train a learned method on INPUT into MODEL_DIR, which then serves `isovol upsample --method NAME --model
    MODEL_DIR`.  Each stage is cached; a rerun resumes at the first unfinished one."""
    from .train import run_train

    result = run_train(input_url, model_dir, factor, method=method, region=region, recipe=recipe, workers=workers,
                       device=device, storage_options=parse_storage_options(storage_options),
                       voxel_size=parse_voxel_size(voxel_size), restart_from=restart_from, cluster=cluster,
                       cluster_config=cluster_config, scheduler=scheduler, retries=retries,
                       block_timeout=block_timeout)
    click.echo(f"isovol: {result['line']}", err=True)


@cli.command()
@click.option("--out", "out_dir", default="isovol-demo", show_default=True, help="Folder for the results.")
@click.option("--factor", "-r", default=8, show_default=True, type=FACTOR, help="Z factor to simulate.")
@click.option("--recipe", default="cpu-demo", show_default=True, metavar="cpu-demo|cpu-tiny|gpu-default|FILE",
              help="D2R recipe (see isovol train): cpu-demo about 5 min on 2 cores, cpu-tiny 20 s (no gain).")
@cluster_opts
@device_opt
def demo(out_dir: str, factor: int, recipe: str, workers: int | None, scheduler: str | None, cluster: str,
         cluster_config: str | None, retries: int, block_timeout: float | None, device: str | None) -> None:
    """Evaluate the classical methods and D2R (trained on the decimated crop only) on the bundled real FIB-SEM
    crop: PSNR/SSIM/FSC against the original, a report and figures in --out (2 workers unless --workers)."""
    from .demo import run_demo

    run_demo(out_dir, factor=factor, workers=workers or 2, recipe=recipe, device=device, echo=click.echo,
             cluster={"scheduler": scheduler, "cluster": cluster, "cluster_config": cluster_config,
                      "retries": retries, "block_timeout": block_timeout})


@cli.command()
@click.argument("gt_url", metavar="GT")
@factor_opt("Z factor to simulate: every r-th slice of GT is kept.")
@click.option("--method", "methods", multiple=True, metavar="NAME[:MODEL_DIR|:RECIPE]",
              help="Method to score, repeatable: a classical one (cubic, linear, nearest), a learned one with its "
                   "model (NAME:MODEL_DIR), or one trained here on the decimated input (NAME[:RECIPE], e.g. d2r, "
                   "naive-lateral; RECIPE a preset or a file [gpu-default]). Cubic is always included as the "
                   "reference.")
@click.option("--self-supervised/--no-self-supervised", default=True, show_default=True,
              help="Methods trained here train on the decimated input only, as a user would (the protocol); "
                   "--no-self-supervised refuses them (models trained on ground truth enter as NAME:MODEL_DIR).")
@device_opt
@click.option("--out", "out_dir", required=True, metavar="REPORT_DIR",
              help="Folder for metrics.json, fsc.json, report.md, the figures and the work files.")
@click.option("--labels", "labels_url", default=None, metavar="LABELS",
              help="Dense neuron labels aligned with GT: adds the membrane-boundary F1 measure.")
@click.option("--inception", default=None, metavar="FILE",
              help="FID Inception weights as safetensors (made once by tools/convert_inception.py) for SliceFID.")
@block_opt
@cluster_opts
@voxel_opt
@input_storage_opt
@progress_opt
def evaluate(gt_url: str, factor: int, methods: tuple[str, ...], self_supervised: bool, device: str | None,
             out_dir: str, labels_url: str | None, inception: str | None, block_shape: str | None,
             workers: int | None, scheduler: str | None, cluster: str, cluster_config: str | None, retries: int,
             block_timeout: float | None, voxel_size: str | None, storage_options: str | None,
             no_progress: bool) -> None:
    """Score methods against isotropic ground truth GT by the evaluation protocol (docs/evaluate.md)."""
    from .evaluate import EvaluateRequest
    from .evaluate import evaluate as run

    req = EvaluateRequest(ground_truth=gt_url, factor=factor, out=out_dir, methods=list(methods),
                          voxel_size=parse_voxel_size(voxel_size),
                          storage_options=parse_storage_options(storage_options), labels=labels_url,
                          inception=inception, self_supervised=self_supervised, device=device,
                          workers=workers, scheduler=scheduler, cluster=cluster, cluster_config=cluster_config,
                          retries=retries, block_timeout=block_timeout,
                          block_shape=parse_shape(block_shape, "--block-shape"), progress=not no_progress)
    result = run(req)
    if inception is None:
        from .evaluate import SLICEFID_SKIP

        click.echo(SLICEFID_SKIP)
    for line in score_table(result["metrics"], result["info"]):
        click.echo(line)
    click.echo(f"isovol: evaluated {len(result['metrics'])} method(s) in {result['info']['seconds']:.1f} s; "
               f"report {os.path.join(out_dir, 'report.md')}", err=True)

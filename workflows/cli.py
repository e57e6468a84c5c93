"""The ``isovol`` command line. Errors a user can act on are printed as one line on stderr."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from typing import Any

import click

from ..pipeline import __version__
from ..pipeline.blocks import parse_shape
from ..pipeline.errors import IsovolError
from ..pipeline.io.readers import parse_voxel_size
from ..pipeline.io.urls import parse_storage_options, strip_url

log = logging.getLogger("isovol")


def _command_line() -> str:
    """The command as typed, with --storage-options values hidden (they may hold credentials)."""
    args, out, hide = sys.argv[1:], ["isovol"], False
    for a in args:
        if hide:
            out.append("'***'")
            hide = False
            continue
        if a.startswith("--storage-options") or a.startswith("--output-storage-options"):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "='***'")
            else:
                out.append(a)
                hide = True
            continue
        out.append(shlex.quote(strip_url(a) if "://" in a else a))
    return " ".join(out)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


storage_opt = click.option("--storage-options", "storage_options", default=None, metavar="JSON",
                           help="fsspec storage options for the input (and the output unless "
                                "--output-storage-options is given), e.g. '{\"anon\": true}'.")
voxel_opt = click.option("--voxel-size", default=None, metavar="Z,Y,X",
                         help="Input voxel size in nm; overrides what the file says.")
block_opt = click.option("--block-shape", default=None, metavar="Z,Y,X",
                         help="Output voxels per task; a whole multiple of the shard shape [default: the shard].")
shard_opt = click.option("--shard-shape", default=None, metavar="Z,Y,X",
                         help="Output shard shape [default: the block shape, else 256,256,256].")
cluster_opt = click.option("--cluster", type=click.Choice(["local", "local-gpu", "slurm", "pbs", "kubernetes"]),
                           default="local", show_default=True,
                           help="Where the blocks run; settings in deploy/<cluster>.yaml (see deploy/README.md).")
cluster_config_opt = click.option("--cluster-config", "cluster_config", default=None, metavar="FILE",
                                  type=click.Path(exists=True, dir_okay=False),
                                  help="YAML overriding keys of the cluster's default config.")
chunk_opt = click.option("--chunk-shape", default=None, metavar="Z,Y,X",
                         help="Inner chunk shape of each shard [default: 64,64,64].")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="isovol")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(quiet: bool) -> None:
    """Make anisotropic volume-EM stacks isotropic, block by block, on a dask cluster."""
    # our own lines at INFO; dask's chatter only when it matters (WARNING and up)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("isovol").setLevel(logging.WARNING if quiet else logging.INFO)


@cli.command()
@click.argument("input_url", metavar="INPUT")
@click.argument("output_url", metavar="OUTPUT")
@click.option("--factor", "-r", required=True, help="Z upsampling factor (integer >= 2).")
@click.option("--method", default="cubic", show_default=True,
              help="nearest, linear, cubic, dgean (with --model), d2r-recover (with --model PRIOR_DIR).")
@click.option("--model", "model_dir", default=None, metavar="DIR", help="Model directory of a learned method.")
@block_opt
@shard_opt
@chunk_opt
@click.option("--workers", type=int, default=None, help="Workers of the embedded LocalCluster [default: cores].")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Join an existing dask cluster instead.")
@cluster_opt
@cluster_config_opt
@click.option("--resume", is_flag=True, help="Continue an interrupted run: skip blocks marked done.")
@click.option("--overwrite", is_flag=True, help="Replace an existing isovol output.")
@voxel_opt
@storage_opt
@click.option("--output-storage-options", default=None, metavar="JSON", help="Storage options for the output.")
@click.option("--retries", type=int, default=2, show_default=True, help="Retries of a block after a transient error.")
@click.option("--block-timeout", type=float, default=None, metavar="SECONDS",
              help="Retry a block not finished this long after submission (it may wait behind one other block "
                   "per worker thread, so allow about twice a block's run time).")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def upsample(input_url: str, output_url: str, factor: str, method: str, model_dir: str | None,
             block_shape: str | None,
             shard_shape: str | None, chunk_shape: str | None, workers: int | None, scheduler: str | None,
             cluster: str, cluster_config: str | None, resume: bool, overwrite: bool, voxel_size: str | None,
             storage_options: str | None, output_storage_options: str | None, retries: int, block_timeout: float | None,
             no_progress: bool) -> None:
    """Upsample INPUT along Z by --factor into the OME-Zarr OUTPUT."""
    from .upsample import UpsampleRequest
    from .upsample import upsample as run

    req = UpsampleRequest(
        input=input_url, output=output_url, factor=factor, method=method, model=model_dir,
        block_shape=parse_shape(block_shape, "--block-shape"), shard_shape=parse_shape(shard_shape, "--shard-shape"),
        chunk_shape=parse_shape(chunk_shape, "--chunk-shape"), voxel_size=parse_voxel_size(voxel_size),
        storage_options=parse_storage_options(storage_options),
        output_storage_options=parse_storage_options(output_storage_options) if output_storage_options else None,
        resume=resume, overwrite=overwrite, workers=workers, scheduler=scheduler, cluster=cluster,
        cluster_config=cluster_config, retries=retries,
        block_timeout=block_timeout, progress=not no_progress, command=_command_line())
    summary = run(req)
    click.echo(f"isovol: {summary.line()}", err=True)
    for key, msg in list(summary.failed.items())[:5]:
        click.echo(f"isovol: block {key}: {msg}", err=True)
    if not summary.ok:
        click.echo("isovol: run incomplete; rerun the same command with --resume to finish it", err=True)
        sys.exit(1)


@cli.command()
@click.argument("input_url", metavar="INPUT")
@click.option("--factor", "-r", required=True, help="Z upsampling factor (integer >= 2).")
@click.option("--method", default="cubic", show_default=True)
@click.option("--model", "model_dir", default=None, metavar="DIR", help="Model directory of a learned method.")
@block_opt
@shard_opt
@chunk_opt
@voxel_opt
@storage_opt
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(input_url: str, factor: str, method: str, model_dir: str | None, block_shape: str | None,
         shard_shape: str | None, chunk_shape: str | None, voxel_size: str | None, storage_options: str | None,
         as_json: bool) -> None:
    """Print the block plan for INPUT: grid, tasks, bytes and peak memory per block."""
    from .upsample import UpsampleRequest, prepare

    req = UpsampleRequest(input=input_url, output="<plan>", factor=factor, method=method, model=model_dir,
                          block_shape=parse_shape(block_shape, "--block-shape"),
                          shard_shape=parse_shape(shard_shape, "--shard-shape"),
                          chunk_shape=parse_shape(chunk_shape, "--chunk-shape"),
                          voxel_size=parse_voxel_size(voxel_size) or (1.0, 1.0, 1.0),
                          storage_options=parse_storage_options(storage_options))
    vol, meth, p = prepare(req)
    info: dict[str, Any] = {"input": strip_url(input_url), "dtype": str(vol.dtype), "method": meth.name,
                            **p.describe()}
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    b = info["block_bytes"]
    rows = [
        ("input", f"{tuple(vol.shape)} {vol.dtype}"),
        ("output", f"{tuple(p.out_shape)} ({_fmt_bytes(info['output_bytes'])})"),
        ("factor / method", f"{p.factor} / {meth.name} (halo z={p.halo.z} y={p.halo.y} x={p.halo.x}, "
                            f"padding {p.padding})"),
        ("block / shard / chunk", f"{tuple(p.block_shape)} / {tuple(p.shard_shape)} / {tuple(p.chunk_shape)}"),
        ("grid", f"{tuple(p.grid)} = {len(p)} tasks"),
        ("per block", f"input {_fmt_bytes(b['input'])}, output {_fmt_bytes(b['output'])}, "
                      f"working {_fmt_bytes(b['working'])}"),
        ("peak memory per task", _fmt_bytes(b["peak"])),
        # a task hands its thread to the next block before its writes finish (workflows/executor.py)
        ("per worker thread", f"up to {_fmt_bytes(2 * b['peak'])}: one block computing, one finishing its writes"),
    ]
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


@cli.command()
@click.argument("input_url", metavar="INPUT")
@click.argument("output_url", metavar="OUTPUT")
@click.option("--prior", "prior_dir", required=True, metavar="PRIOR_DIR", help="Stage I prior (isovol train-prior).")
@click.option("--factor", "-r", default=None, help="Z factor; must match the prior's [default: the prior's].")
@click.option("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1", help="Recover only this part of INPUT.")
@click.option("--sampler", type=click.Choice(["reference", "posterior", "fast"]), default="fast", show_default=True)
@click.option("--steps", type=int, default=None, help="Network calls of the fast sampler (<= 10) [default: 5].")
@click.option("--t-start", type=int, default=None,
              help="Start step (truncated start) [default: T, fast: T/2; at most the prior's training t_max].")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (with slice and tile positions).")
@click.option("--fusion", type=click.Choice(["mean", "geometric"]), default="mean", show_default=True)
@click.option("--tile", type=int, default=128, show_default=True, help="Tile core size inside a slice.")
@click.option("--margin", type=int, default=16, show_default=True, help="Context around each tile, cropped.")
@block_opt
@click.option("--workers", type=int, default=None)
@click.option("--scheduler", default=None, metavar="ADDRESS")
@cluster_opt
@cluster_config_opt
@click.option("--resume", is_flag=True)
@click.option("--overwrite", is_flag=True)
@voxel_opt
@storage_opt
@click.option("--no-progress", is_flag=True)
def recover(input_url: str, output_url: str, prior_dir: str, factor: str | None, region: str | None, sampler: str,
            steps: int | None, t_start: int | None, seed: int, fusion: str, tile: int, margin: int,
            block_shape: str | None, workers: int | None, scheduler: str | None, cluster: str,
            cluster_config: str | None, resume: bool, overwrite: bool,
            voxel_size: str | None, storage_options: str | None, no_progress: bool) -> None:
    """D2R Stage II: restore the XZ and YZ slices of INPUT with the prior and write their fusion, a
    pseudo-isotropic OME-Zarr that `isovol train-dgean` accepts."""
    from ..pipeline.checkpoints import CONFIG, load_json
    from ..pipeline.geometry import check_factor
    from .upsample import UpsampleRequest
    from .upsample import upsample as run

    if not os.path.isdir(prior_dir):
        raise IsovolError(f"prior directory not found: {prior_dir}")
    if factor is None:
        factor = load_json(os.path.join(prior_dir, CONFIG), "prior").get("factor")
    r = check_factor(factor)
    req = UpsampleRequest(
        input=input_url, output=output_url, factor=r, method="d2r-recover", model=prior_dir,
        method_options={"factor": r, "sampler": sampler, "steps": steps, "t_start": t_start, "seed": seed,
                        "fusion": fusion, "tile": tile, "margin": margin},
        region=region, block_shape=parse_shape(block_shape, "--block-shape"),
        voxel_size=parse_voxel_size(voxel_size), storage_options=parse_storage_options(storage_options),
        resume=resume, overwrite=overwrite, workers=workers, scheduler=scheduler, cluster=cluster,
        cluster_config=cluster_config, progress=not no_progress,
        command=_command_line())
    summary = run(req)
    click.echo(f"isovol: {summary.line()}", err=True)
    if not summary.ok:
        click.echo("isovol: run incomplete; rerun the same command with --resume to finish it", err=True)
        sys.exit(1)


@cli.command("train")
@click.argument("input_url", metavar="INPUT")
@click.argument("model_dir", metavar="MODEL_DIR")
@click.option("--factor", "-r", required=True, help="Z factor of INPUT (integer >= 2).")
@click.option("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1",
              help="Training region of INPUT [default: all of it if its output is <= 256^3 voxels, else a "
                   "centred box of about that].")
@click.option("--recipe", default="gpu-default", show_default=True, metavar="cpu-demo|cpu-tiny|gpu-default|FILE",
              help="Settings of the three stages: a bundled recipe or a YAML file {prior, recover, dgean}.")
@click.option("--restart-from", type=click.Choice(["prior", "recover", "dgean"]), default=None,
              help="Delete this stage's outputs and the later ones, then run them again.")
@click.option("--workers", type=int, default=None, help="Workers of Stage II's cluster.")
@cluster_opt
@cluster_config_opt
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@storage_opt
@voxel_opt
def train_cmd(input_url: str, model_dir: str, factor: str, region: str | None, recipe: str,
              restart_from: str | None, workers: int | None, cluster: str, cluster_config: str | None,
              device: str | None, storage_options: str | None, voxel_size: str | None) -> None:
    """D2R end to end: Stage I (prior on XY) -> Stage II (recover the region's XZ/YZ, fuse) -> Stage III
    (DGEAN on the pseudo-isotropic region) into MODEL_DIR, which then serves `isovol upsample --method dgean
    --model MODEL_DIR`. Each stage is cached; a rerun resumes at the first unfinished one."""
    from ..pipeline.geometry import check_factor
    from .train import run_train

    result = run_train(input_url, model_dir, check_factor(factor), region=region, recipe=recipe, workers=workers,
                       device=device, storage_options=parse_storage_options(storage_options),
                       voxel_size=parse_voxel_size(voxel_size), restart_from=restart_from, cluster=cluster,
                       cluster_config=cluster_config)
    click.echo(f"isovol: {result['line']}", err=True)


@cli.command("train-dgean")
@click.argument("volume_url", metavar="VOLUME")
@click.argument("model_dir", metavar="MODEL_DIR")
@click.option("--factor", "-r", required=True, help="Z factor the model is trained for (any factor works later).")
@click.option("--isotropic", is_flag=True,
              help="VOLUME is real isotropic ground truth: also train along Z (Sup-DGEAN).")
@click.option("--lateral", is_flag=True,
              help="VOLUME is the anisotropic stack itself: train on its own Y/X sequences, without Stage I-II "
                   "(the naive lateral baseline).")
@click.option("--steps", type=int, default=None, help="Training steps [default: the recipe's].")
@click.option("--config", "recipe", default="default", show_default=True, metavar="tiny|default|FILE",
              help="Recipe: model size and training settings, or a YAML/JSON file {model: ..., train: ...}.")
@click.option("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1", help="Train on this part of VOLUME.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@storage_opt
def train_dgean_cmd(volume_url: str, model_dir: str, factor: str, isotropic: bool, lateral: bool, steps: int | None,
                    recipe: str, region: str | None, device: str | None, storage_options: str | None) -> None:
    """Train DGEAN on a (pseudo-)isotropic VOLUME into MODEL_DIR (resumes an interrupted training)."""
    from ..pipeline.geometry import check_factor
    from .train_dgean import run_train_dgean

    result = run_train_dgean(volume_url, model_dir, check_factor(factor), isotropic=isotropic, config=recipe,
                             steps=steps, region=region, device=device,
                             storage_options=parse_storage_options(storage_options), lateral=lateral)
    last = result["history"][-1]
    click.echo(f"isovol: trained {result['steps']} steps in {result['seconds']:.0f} s; validation PSNR "
               f"{last['psnr']:.2f} dB (cubic {last['cubic_psnr']:.2f} dB); model {model_dir} "
               f"sha256 {result['model_hash'][:12]}", err=True)


@cli.command("train-prior")
@click.argument("volume_url", metavar="INPUT")
@click.argument("prior_dir", metavar="PRIOR_DIR")
@click.option("--factor", "-r", required=True, help="Z factor of INPUT: XY slices lose all but every r-th row.")
@click.option("--steps", type=int, default=None, help="Training steps [default: the recipe's].")
@click.option("--config", "recipe", default="default", show_default=True, metavar="tiny|default|FILE",
              help="Recipe: NAFNet size, SDE and training settings, or a YAML/JSON file {model, sde, train}.")
@click.option("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1", help="Train on this part of INPUT.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@storage_opt
def train_prior_cmd(volume_url: str, prior_dir: str, factor: str, steps: int | None, recipe: str,
                    region: str | None, device: str | None, storage_options: str | None) -> None:
    """Train the D2R Stage I prior (IR-SDE) on XY slices of the anisotropic INPUT into PRIOR_DIR (resumes an
    interrupted training)."""
    from ..pipeline.geometry import check_factor
    from .train_prior import run_train_prior

    result = run_train_prior(volume_url, prior_dir, check_factor(factor), config=recipe, steps=steps,
                             region=region, device=device, storage_options=parse_storage_options(storage_options))
    last = result["history"][-1]
    quality = (f"restoration PSNR {last['psnr']:.2f} dB (cubic {last['cubic_psnr']:.2f} dB), " if "psnr" in last
               else "")
    click.echo(f"isovol: trained {result['steps']} steps in {result['seconds']:.0f} s; validation {quality}"
               f"loss {last['loss']:.5f}; prior {prior_dir} sha256 {result['model_hash'][:12]}", err=True)


@cli.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Print the methods as JSON (one object per method).")
def methods_cmd(as_json: bool) -> None:
    """List the methods isovol knows, built-in and from plugins (entry-point group isovol.methods)."""
    from ..pipeline.methods import registry

    rows = [e.describe() for e in registry.entries().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        model = "--model DIR" if r["needs_model"] else ""
        recipes = f"recipes {', '.join(r['recipes'])}" if r["recipes"] else ""
        click.echo(f"{r['name']:<{width}}  {r['kind']:<16}  {model:<11}  {r['description']}"
                   + (f" [{recipes}]" if recipes else ""))


@cli.command()
@click.argument("output_url", metavar="OUTPUT")
@storage_opt
@click.option("--json", "as_json", is_flag=True)
def status(output_url: str, storage_options: str | None, as_json: bool) -> None:
    """Report the progress of a run from OUTPUT alone (no cluster needed)."""
    from .bookkeeping import status as read_status

    info = read_status(output_url, parse_storage_options(storage_options))
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    pct = 100.0 * info["done"] / info["tasks"] if info["tasks"] else 0.0
    click.echo(f"{info['output']}: {info['state']}, {info['done']}/{info['tasks']} blocks done ({pct:.1f} %), "
               f"{info['remaining']} remaining; method {info['method']}, factor {info['factor']}")
    if info["remaining"]:
        sys.exit(3)


@cli.command()
@click.option("--out", "out_dir", default="isovol-demo", show_default=True, help="Folder for the results.")
@click.option("--factor", "-r", default=8, show_default=True, type=int)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--recipe", default="cpu-demo", show_default=True, metavar="cpu-demo|cpu-tiny|gpu-default|FILE",
              help="D2R recipe (see isovol train): cpu-demo about 5 min on 2 cores, cpu-tiny 20 s (no gain).")
@click.option("--device", default=None, help="torch device for D2R training [default: cuda if available, else cpu].")
def demo(out_dir: str, factor: int, workers: int, recipe: str, device: str | None) -> None:
    """Evaluate the classical methods and D2R (trained on the decimated crop only) on the bundled real FIB-SEM
    crop: PSNR/SSIM/FSC against the original, a report and figures in --out."""
    from .demo import run_demo

    run_demo(out_dir, factor=factor, workers=workers, recipe=recipe, device=device)


@cli.command()
@click.argument("gt_url", metavar="GT")
@click.option("--factor", "-r", required=True, help="Z factor to simulate: every r-th slice of GT is kept.")
@click.option("--method", "methods", multiple=True, metavar="NAME[:MODEL_DIR|:RECIPE]",
              help="Method to score, repeatable: cubic, linear, nearest, dgean:MODEL_DIR, and, trained here on "
                   "the decimated input, d2r[:RECIPE] (isovol train) and naive-lateral[:RECIPE] (DGEAN on the "
                   "input's own Y/X sequences); RECIPE: cpu-demo|cpu-tiny|gpu-default|FILE [gpu-default]. Cubic is "
                   "always included as the reference.")
@click.option("--self-supervised/--no-self-supervised", default=True, show_default=True,
              help="d2r and naive-lateral train on the decimated input only, as a user would (the protocol); "
                   "--no-self-supervised refuses them (models trained on ground truth enter as dgean:MODEL_DIR).")
@click.option("--device", default=None, help="torch device for the training done here [default: cuda if "
                                              "available, else cpu].")
@click.option("--out", "out_dir", required=True, metavar="REPORT_DIR",
              help="Folder for metrics.json, fsc.json, report.md, the figures and the work files.")
@click.option("--labels", "labels_url", default=None, metavar="LABELS",
              help="Dense neuron labels aligned with GT: adds the membrane-boundary F1 measure.")
@click.option("--inception", default=None, metavar="FILE",
              help="FID Inception weights as safetensors (made once by tools/convert_inception.py) for SliceFID.")
@block_opt
@click.option("--workers", type=int, default=None, help="Workers of the embedded LocalCluster [default: cores].")
@cluster_opt
@cluster_config_opt
@voxel_opt
@storage_opt
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def evaluate(gt_url: str, factor: str, methods: tuple[str, ...], self_supervised: bool, device: str | None,
             out_dir: str, labels_url: str | None,
             inception: str | None, block_shape: str | None, workers: int | None, cluster: str,
             cluster_config: str | None, voxel_size: str | None,
             storage_options: str | None, no_progress: bool) -> None:
    """Score methods against isotropic ground truth GT by the evaluation protocol (DESIGN.md)."""
    from .evaluate import EvaluateRequest
    from .evaluate import evaluate as run

    req = EvaluateRequest(ground_truth=gt_url, factor=factor, out=out_dir, methods=list(methods),
                          voxel_size=parse_voxel_size(voxel_size),
                          storage_options=parse_storage_options(storage_options), labels=labels_url,
                          inception=inception, self_supervised=self_supervised, device=device,
                          workers=workers, cluster=cluster,
                          cluster_config=cluster_config, block_shape=parse_shape(block_shape, "--block-shape"),
                          progress=not no_progress)
    result = run(req)
    fid = any(r.get("slicefid") for r in result["metrics"].values())
    click.echo(f"{'method':<24}{'PSNR XY':>9}{'XZ':>8}{'YZ':>8}{'gain XY':>9}{'FSC nm':>8}"
               + (f"{'SliceFID':>10}" if fid else ""))
    for name, r in result["metrics"].items():
        click.echo(f"{name[:23]:<24}{r['XY']['psnr']:>9.2f}{r['XZ']['psnr']:>8.2f}{r['YZ']['psnr']:>8.2f}"
                   f"{r['gain_over_cubic_db']['XY']:>+9.2f}{r['fsc05_nm']:>8.1f}"
                   + (f"{r['slicefid']['mean']:>10.2f}" if fid and r.get("slicefid") else ""))
    click.echo(f"isovol: evaluated {len(result['metrics'])} method(s) in {result['info']['seconds']:.1f} s; "
               f"report {os.path.join(out_dir, 'report.md')}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: click in non-standalone mode, so every error is a single stderr line."""
    try:
        cli.main(args=argv, prog_name="isovol", standalone_mode=False)
    except IsovolError as exc:
        click.echo(f"isovol: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("isovol: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f" ({ctx.command_path})" if ctx is not None else ""
        click.echo(f"isovol: error{where}: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code or 2)

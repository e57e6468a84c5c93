"""The ``isovol`` command line. Errors a user can act on are printed as one line on stderr."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from ..pipeline import __version__
from ..pipeline.blocks import parse_shape
from ..pipeline.errors import IsovolError
from ..pipeline.io.readers import parse_voxel_size
from ..pipeline.io.urls import mask_logs, mask_secrets, parse_storage_options, strip_url
from ..pipeline.methods.registry import REFERENCE
from .cli_options import (
    AUTO_FACTOR_HELP,
    block_opt,
    chunk_opt,
    cluster_opts,
    command_line,
    factor_opt,
    fmt_bytes,
    input_storage_opt,
    levels_value,
    method_opt,
    output_storage_opt,
    parse_method_options,
    progress_opt,
    pyramid_opts,
    shard_opt,
    storage_opt,
    voxel_opt,
)

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="isovol")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(quiet: bool) -> None:
    """Make anisotropic volume-EM stacks isotropic, block by block, on a dask cluster."""
    # our own lines at INFO; dask's chatter only when it matters (WARNING and up)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("isovol").setLevel(logging.WARNING if quiet else logging.INFO)
    mask_logs()  # storage-option values (credentials, an endpoint with user:password) never reach a log line


@cli.command()
@click.argument("input_url", metavar="INPUT")
@click.argument("output_url", metavar="OUTPUT")
@factor_opt(AUTO_FACTOR_HELP, auto=True)
@method_opt(REFERENCE, "Method to upsample with;")
@click.option("--model", "model_dir", default=None, metavar="DIR", help="Model directory of a learned method.")
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="A setting of the method, repeatable (e.g. tile=256 for dgean; sampler=fast, steps=5 for "
                   "d2r-prior); VALUE is read as YAML.")
@block_opt
@shard_opt
@chunk_opt
@cluster_opts
@click.option("--resume", is_flag=True, help="Continue an interrupted run: skip blocks marked done.")
@click.option("--verify", is_flag=True, help="With --resume: first check the shards of the blocks marked done "
              "against their markers (size, checksum) and redo the blocks that fail; restore damaged metadata.")
@click.option("--overwrite", is_flag=True, help="Replace an existing isovol output.")
@click.option("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1", help="Upsample only this part of INPUT.")
@voxel_opt
@storage_opt
@click.option("--output-storage-options", default=None, metavar="JSON", help="Storage options for the output.")
@pyramid_opts
@progress_opt
@click.option("--profile", is_flag=True, help="Print where the run's time went: seconds per phase of the blocks "
              "(read, method, encode, checksum, store, fsync, marker).")
def upsample(input_url: str, output_url: str, factor: int, method: str, model_dir: str | None,
             method_options: tuple[str, ...], block_shape: str | None, shard_shape: str | None,
             chunk_shape: str | None, workers: int | None, scheduler: str | None, cluster: str,
             cluster_config: str | None, retries: int, block_timeout: float | None, resume: bool, verify: bool,
             overwrite: bool,
             region: str | None, voxel_size: str | None, storage_options: str | None,
             output_storage_options: str | None, levels: str, no_pyramid: bool, no_progress: bool,
             profile: bool) -> None:
    """Upsample INPUT along Z by --factor into the OME-Zarr OUTPUT, then write its multiscale pyramid."""
    from .block_reports import failure_lines, remedy
    from .upsample import UpsampleRequest
    from .upsample import upsample as run

    req = UpsampleRequest(
        input=input_url, output=output_url, factor=factor, method=method, model=model_dir,
        method_options=parse_method_options(method_options), region=region,
        block_shape=parse_shape(block_shape, "--block-shape"), shard_shape=parse_shape(shard_shape, "--shard-shape"),
        chunk_shape=parse_shape(chunk_shape, "--chunk-shape"), voxel_size=parse_voxel_size(voxel_size),
        storage_options=parse_storage_options(storage_options),
        output_storage_options=parse_storage_options(output_storage_options) if output_storage_options else None,
        resume=resume, verify=verify, overwrite=overwrite, workers=workers, scheduler=scheduler, cluster=cluster,
        cluster_config=cluster_config, retries=retries,
        block_timeout=block_timeout, progress=not no_progress, command=command_line(),
        levels=levels_value(levels, no_pyramid))
    summary = run(req)
    click.echo(f"isovol: {summary.line()}", err=True)
    if profile:
        from .profile import table

        for line in table(summary.phases, summary.voxels, summary.done, summary.seconds, workers):
            click.echo(f"isovol: {line}", err=True)
    for line in failure_lines(summary):  # each distinct failure once; a damaged input chunk as an error line
        click.echo(line, err=True)
    if not summary.ok:
        click.echo(remedy(summary), err=True)
        sys.exit(1)


def _voxel_text(voxel: Any) -> str:
    return ",".join(f"{v:g}" for v in voxel) + " nm" if voxel else "unknown (pass --voxel-size Z,Y,X)"


def _levels_text(shapes: list[list[int]]) -> str:
    if not shapes:
        return "none: level 0 fits in one chunk"
    return f"{len(shapes)} level{'s' * (len(shapes) > 1)} after 0: " + ", ".join(str(tuple(s)) for s in shapes)


@cli.command()
@click.argument("input_url", metavar="INPUT")
@factor_opt(AUTO_FACTOR_HELP, auto=True)
@method_opt(REFERENCE, "Method whose halo and memory the plan uses;")
@click.option("--model", "model_dir", default=None, metavar="DIR", help="Model directory of a learned method.")
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE", help="A setting of the method.")
@block_opt
@shard_opt
@chunk_opt
@voxel_opt
@input_storage_opt
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(input_url: str, factor: int, method: str, model_dir: str | None, method_options: tuple[str, ...],
         block_shape: str | None, shard_shape: str | None, chunk_shape: str | None, voxel_size: str | None,
         storage_options: str | None, as_json: bool) -> None:
    """Print the block plan for INPUT: voxel sizes, grid, tasks, bytes and peak memory per block."""
    from ..pipeline.geometry import output_voxel_size
    from ..pipeline.pyramid import level_shapes
    from .upsample import UpsampleRequest, plan_warnings, prepare

    req = UpsampleRequest(input=input_url, output="<plan>", factor=factor, method=method, model=model_dir,
                          method_options=parse_method_options(method_options),
                          block_shape=parse_shape(block_shape, "--block-shape"),
                          shard_shape=parse_shape(shard_shape, "--shard-shape"),
                          chunk_shape=parse_shape(chunk_shape, "--chunk-shape"),
                          voxel_size=parse_voxel_size(voxel_size),
                          storage_options=parse_storage_options(storage_options), need_voxel_size=False)
    vol, meth, p = prepare(req)
    for warning in plan_warnings(vol, p):
        log.warning(warning)
    out_voxel = list(output_voxel_size(vol.voxel_size, p.factor)) if vol.voxel_size else None
    info: dict[str, Any] = {"input": strip_url(input_url), "dtype": str(vol.dtype), "method": meth.name,
                            "input_voxel_size_nm": list(vol.voxel_size) if vol.voxel_size else None,
                            "output_voxel_size_nm": out_voxel, **p.describe(),
                            "pyramid_levels": [list(s) for s in level_shapes(p.out_shape, p.chunk_shape, "auto")]}
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    b = info["block_bytes"]
    rows = [
        ("input", f"{tuple(vol.shape)} {vol.dtype}, voxel {_voxel_text(vol.voxel_size)}"),
        ("output", f"{tuple(p.out_shape)} ({fmt_bytes(info['output_bytes'])}), voxel {_voxel_text(out_voxel)}"),
        ("factor / method", f"{p.factor} / {meth.name} (halo z={p.halo.z} y={p.halo.y} x={p.halo.x}, "
                            f"padding {p.padding})"),
        ("block / shard / chunk", f"{tuple(p.block_shape)} / {tuple(p.shard_shape)} / {tuple(p.chunk_shape)}"),
        ("grid", f"{tuple(p.grid)} = {len(p)} tasks"),
        ("per block", f"input {fmt_bytes(b['input'])}, output {fmt_bytes(b['output'])}, "
                      f"working {fmt_bytes(b['working'])}"),
        ("peak memory per task", fmt_bytes(b["peak"])),
        # a task hands its thread to the next block before its writes finish (workflows/executor.py)
        ("per worker thread", f"up to {fmt_bytes(2 * b['peak'] + b['input'])}: one block computing, one finishing "
                              "its writes, the next one's input read"),
        ("pyramid (--levels auto)", _levels_text(info["pyramid_levels"])),
    ]
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")

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
@output_storage_opt
@click.option("--json", "as_json", is_flag=True, help="Print the progress as JSON.")
@click.option("--verify", is_flag=True, help="Also re-read the shards of the blocks marked done and check their "
              "sizes and checksums against the markers, and the metadata documents (no decoding); exit 4 when "
              "any is damaged.")
def status(output_url: str, storage_options: str | None, as_json: bool, verify: bool) -> None:
    """Report the progress of a run from OUTPUT alone (no cluster needed); exit 3 until it is complete."""
    from .bookkeeping import NOT_FINALISED
    from .bookkeeping import status as read_status
    from .verify import verify_output

    options = parse_storage_options(storage_options)
    info = read_status(output_url, options)
    report = verify_output(output_url, options) if verify else None
    if as_json:
        click.echo(json.dumps(info | ({"verify": report.to_dict()} if report else {}), indent=1))
    else:
        pct = 100.0 * info["done"] / info["tasks"] if info["tasks"] else 0.0
        state, hint = info["state"], ""
        if info["condition"] == NOT_FINALISED:
            state, hint = f"{NOT_FINALISED} (state {state})", "; rerun its command with --resume to finalise it"
        click.echo(f"{info['output']}: {state}, {info['done']}/{info['tasks']} blocks done ({pct:.1f} %), "
                   f"{info['remaining']} remaining; method {info['method']}, factor {info['factor']}{hint}")
        if report is not None:
            click.echo(f"{info['output']}: {report.line()}" + (f"; {report.remedy()}" if not report.ok else ""))
            for line in report.details():
                click.echo(f"  {line}")
    if report is not None and not report.ok:
        sys.exit(4)
    if info["condition"] != "complete":  # blocks remain, or the run was not finalised
        sys.exit(3)


from . import cli_train, cli_view  # noqa: E402,F401  (register train, evaluate, demo, pyramid and view)


def main(argv: list[str] | None = None) -> None:
    """Entry point: click in non-standalone mode, so every error is a single stderr line."""
    try:
        cli.main(args=argv, prog_name="isovol", standalone_mode=False)
    except IsovolError as exc:
        click.echo(f"isovol: error: {mask_secrets(str(exc))}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("isovol: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f" ({ctx.command_path})" if ctx is not None else ""
        click.echo(f"isovol: error{where}: {mask_secrets(exc.format_message())}", err=True)
        sys.exit(exc.exit_code or 2)

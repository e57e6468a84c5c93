"""The ``isovol`` commands for looking at an output: ``pyramid`` (add or repair its multiscale pyramid) and
``view`` (serve it over HTTP for neuroglancer and napari)."""

from __future__ import annotations

import os
import sys

import click

from ..pipeline.errors import InputError, OutputError
from ..pipeline.io.urls import is_local, local_path, parse_storage_options, strip_url
from .cli import cli
from .cli_options import cluster_opts, levels_value, output_storage_opt, progress_opt


@cli.command("pyramid")
@click.argument("output_url", metavar="OUTPUT")
@click.option("--levels", default="auto", show_default=True, metavar="N|auto",
              help="Levels after level 0, each 2x smaller in every axis by the mean; auto: until the smallest fits "
                   "in one chunk; 0 removes the pyramid.")
@click.option("--rebuild", is_flag=True, help="Write every level again, even blocks marked done.")
@cluster_opts
@output_storage_opt
@progress_opt
def pyramid_cmd(output_url: str, levels: str, rebuild: bool, workers: int | None, scheduler: str | None,
                cluster: str, cluster_config: str | None, retries: int, block_timeout: float | None,
                storage_options: str | None, no_progress: bool) -> None:
    """Add or repair the multiscale pyramid of the finished isovol output OUTPUT (blocks marked done are kept)."""
    from .pyramid import pyramid_command

    summary = pyramid_command(
        output_url, parse_storage_options(storage_options), levels_value(levels, False), rebuild=rebuild,
        cluster={"kind": cluster, "config_path": cluster_config, "workers": workers, "scheduler": scheduler},
        progress=not no_progress, retries=retries, timeout=block_timeout)
    click.echo(f"isovol: pyramid: {summary.line()}", err=True)
    for key, msg in list(summary.failed.items())[:5]:
        click.echo(f"isovol: {key}: {msg}", err=True)
    if not summary.ok:
        click.echo("isovol: pyramid incomplete; rerun the same command to finish it", err=True)
        sys.exit(1)


@cli.command("view")
@click.argument("output_url", metavar="OUTPUT")
@click.option("--port", type=int, default=8000, show_default=True, help="Port on 127.0.0.1 (0: any free one).")
@click.option("--open", "open_napari", is_flag=True, help="Also start napari on it, when napari is installed.")
def view_cmd(output_url: str, port: int, open_napari: bool) -> None:
    """Serve the local OME-Zarr OUTPUT over HTTP on 127.0.0.1 (CORS, byte ranges) until interrupted, and print
    how to open it in neuroglancer and napari."""
    from .view import make_server, viewer_lines
    from .view import open_napari as start_napari

    if not is_local(output_url):
        raise InputError(f"isovol view serves a local output; open {strip_url(output_url)} in the viewer directly")
    folder = local_path(output_url)
    if not os.path.isfile(os.path.join(folder, "zarr.json")):
        raise OutputError(f"{folder} is not a zarr v3 image (no zarr.json)")
    try:
        server = make_server(folder, port)
    except OSError as exc:
        raise InputError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    for line in viewer_lines(url, os.path.basename(os.path.normpath(folder))):
        click.echo(line)
    click.echo("press Ctrl-C to stop")
    sys.stdout.flush()
    viewer = start_napari(url) if open_napari else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if viewer is not None and viewer.poll() is None:
            viewer.terminate()

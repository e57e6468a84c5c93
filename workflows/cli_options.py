"""Options and parameter types every ``isovol`` command shares, defined once so each is validated and described
the same way everywhere."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any

import click
import yaml

from ..pipeline.errors import InputError
from ..pipeline.geometry import check_factor
from ..pipeline.io.urls import strip_url


class FactorType(click.ParamType):
    """The Z factor: an integer >= 2 (one validation and one message for every command)."""

    name = "factor"

    def __init__(self, auto: bool = False):
        self.auto = auto  # also "auto": round(z/xy) of the input's voxel size, resolved once the input is open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str | None:
        if value is None:  # missing: click's own "Missing option" check speaks
            return None
        if self.auto and isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return check_factor(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


class SecondsType(click.ParamType):
    """A positive number of seconds, or 'none' for no limit."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        from .run_settings import parse_seconds

        try:
            return parse_seconds(value, param.opts[0] if param is not None else "value")
        except InputError as exc:
            self.fail(str(exc), param, ctx)


SECONDS = SecondsType()
FACTOR = FactorType()
AUTO_FACTOR = FactorType(auto=True)
AUTO_FACTOR_HELP = "Z upsampling factor: an integer >= 2, or auto for round(z/xy) of the input's voxel size."


def command_line() -> str:
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


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_method_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs (VALUE read as YAML: 5, 0.5, true, null, fast) as keyword options."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option must be KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def factor_opt(help_text: str = "Z upsampling factor (integer >= 2).", required: bool = True,
               auto: bool = False) -> Callable:
    kind = AUTO_FACTOR if auto else FACTOR
    if required:  # no default at all: click 8.2+ takes an explicit default=None as a given value
        return click.option("--factor", "-r", type=kind, required=True, help=help_text)
    return click.option("--factor", "-r", type=kind, default=None, help=help_text)


storage_opt = click.option("--storage-options", "storage_options", default=None, metavar="JSON",
                           help="fsspec storage options for the input (and the output unless "
                                "--output-storage-options is given), e.g. '{\"anon\": true}'.")
input_storage_opt = click.option("--storage-options", "storage_options", default=None, metavar="JSON",
                                 help="fsspec storage options for INPUT (credentials, endpoint), e.g. "
                                      "'{\"anon\": true}'.")
output_storage_opt = click.option("--storage-options", "storage_options", default=None, metavar="JSON",
                                  help="fsspec storage options for OUTPUT (credentials, endpoint).")
voxel_opt = click.option("--voxel-size", default=None, metavar="Z,Y,X",
                         help="Input voxel size in nm; overrides what the file says.")
block_opt = click.option("--block-shape", default=None, metavar="Z,Y,X",
                         help="Output voxels per task; a whole multiple of the shard shape [default: the shard].")
shard_opt = click.option("--shard-shape", default=None, metavar="Z,Y,X",
                         help="Output shard shape [default: the block shape, else 256,256,256].")
chunk_opt = click.option("--chunk-shape", default=None, metavar="Z,Y,X",
                         help="Inner chunk shape of each shard [default: 64,64,64].")
device_opt = click.option("--device", default=None,
                          help="torch device of the training done here [default: cuda if available, else cpu].")
progress_opt = click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")


def cluster_opts(func: Callable) -> Callable:
    """Where blocks run, for every command that runs blocks: --workers, --scheduler, --cluster, --cluster-config,
    --retries, --block-timeout."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Workers of the embedded cluster [default: cores; the cluster config's for others]."),
        click.option("--scheduler", default=None, metavar="ADDRESS", help="Join an existing dask cluster instead."),
        click.option("--cluster", type=click.Choice(["local", "local-gpu", "slurm", "pbs", "kubernetes"]),
                     default="local", show_default=True,
                     help="Where the blocks run; settings in deploy/<cluster>.yaml (see deploy/README.md)."),
        click.option("--cluster-config", "cluster_config", default=None, metavar="FILE",
                     type=click.Path(exists=True, dir_okay=False),
                     help="YAML overriding keys of the cluster's default config."),
        click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
                     help="Retries of a block after a transient error."),
        click.option("--block-timeout", type=SECONDS, default=None,
                     help="Retry a block not finished this long after it started on its worker (it may wait "
                          "there for the compute of the block before it, so allow about twice a block's run "
                          "time)."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def method_opt(default: str | None, help_text: str) -> Callable:
    return click.option("--method", default=default, show_default=default is not None, metavar="NAME",
                        help=f"{help_text} `isovol methods` lists them.")


def pyramid_opts(func: Callable) -> Callable:
    """--levels and --no-pyramid: the multiscale pyramid written after level 0 (workflows/pyramid.py)."""
    func = click.option("--no-pyramid", is_flag=True,
                        help="Write level 0 only (and remove the pyramid of an output resumed with it).")(func)
    return click.option("--levels", default="auto", show_default=True, metavar="N|auto",
                        help="Pyramid levels after level 0, each 2x smaller in every axis by the mean; auto: "
                             "until the smallest fits in one chunk.")(func)


def levels_value(levels: str, no_pyramid: bool) -> int | str:
    """The pyramid request of --levels / --no-pyramid: 0 for none, else N or "auto"."""
    from ..pipeline.pyramid import parse_levels

    value = parse_levels(levels)
    if no_pyramid and value not in ("auto", 0):
        raise InputError("--no-pyramid excludes --levels")
    return 0 if no_pyramid else value

"""Helpers the workflow tests share for writing an input, running the installed command and reading what it wrote.

A plain module (not fixtures) so test modules import the functions by name; pytest puts this folder on
sys.path for the tests in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
import zarr

from isovol.pipeline.io.omezarr import write_image

ISOVOL = str(Path(sys.executable).with_name("isovol"))
#: one OpenMP thread, so a command does not fight the other tests (and dask workers) for the cores
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_isovol(*args: object, cwd: str | os.PathLike | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``isovol`` command as a user would."""
    return subprocess.run([ISOVOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=ONE_THREAD)


def error_line(res: subprocess.CompletedProcess) -> str:
    """The single non-empty stderr line of a refused command (non-zero exit, no traceback)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{res.stderr}"
    assert lines[0].startswith("isovol: error"), lines[0]
    assert res.returncode != 0 and "Traceback" not in res.stderr
    return lines[0]


def write_input(path: str | os.PathLike, volume: np.ndarray, factor: int) -> str:
    """``volume`` as an OME-Zarr input at 10 nm in Y/X and ``factor`` times that along Z (the anisotropic stack)."""
    url = str(path)
    write_image(url, volume, (10.0 * factor, 10.0, 10.0))
    return url


def write_recipe(path: str | os.PathLike, base: str | None = "cpu-tiny", **fields: object) -> str:
    """A recipe file as a user writes one for ``isovol train --recipe``: the fields given (``train={"steps": 5}``)
    over those of the preset ``base`` (None: over the defaults)."""
    spec = ({"base": base} if base else {}) | fields
    Path(path).write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def read_output(url: str | os.PathLike) -> np.ndarray:
    """Level 0 of an isovol output, read with plain zarr (not through isovol's reader)."""
    return zarr.open_array(store=os.path.join(str(url), "0"), mode="r")[...]


def tree(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file below ``path`` with its size and mtime (ns): a snapshot to prove nothing changed."""
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out

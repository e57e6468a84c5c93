"""Shared fixtures of the workflow tests: the real FIB-SEM crop, an in-process dask cluster, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isovol.workflows.demo_data import load_crop

ISOVOL = str(Path(sys.executable).with_name("isovol"))


@pytest.fixture(scope="session")
def crop() -> np.ndarray:
    """The bundled isotropic 129x128x128 uint8 FlyEM crop (10 nm)."""
    volume, voxel = load_crop()
    assert volume.shape == (129, 128, 128) and volume.dtype == np.uint8 and voxel == (10.0, 10.0, 10.0)
    return volume


@pytest.fixture(scope="module")
def client():
    """A real dask LocalCluster with two single-threaded in-process workers, shared by one test module."""
    from isovol.deploy.local import cluster_client

    with cluster_client(2, processes=False) as c:
        yield c


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the installed ``isovol`` command as a user would."""
    return subprocess.run([ISOVOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def isovol_exe() -> str:
    return ISOVOL


def tree(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file below ``path`` with its size and mtime (ns): a snapshot to prove nothing changed."""
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def snapshot():
    return tree

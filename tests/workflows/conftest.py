"""Shared fixtures of the workflow tests: the real FIB-SEM crop, a module's input and its cubic reference, an
in-process dask cluster, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from clirun import ISOVOL, run_isovol, tree, write_input

from isovol.pipeline.methods import get_method, upsample_array
from isovol.workflows.demo_data import load_crop


@pytest.fixture(scope="session")
def crop() -> np.ndarray:
    """The bundled isotropic 129x128x128 uint8 FlyEM crop (10 nm)."""
    volume, voxel = load_crop()
    assert volume.shape == (129, 128, 128) and volume.dtype == np.uint8 and voxel == (10.0, 10.0, 10.0)
    return volume


@pytest.fixture(scope="module")
def source(request, tmp_path_factory, volume) -> str:
    """The module's ``volume`` fixture written as an input at its ``FACTOR`` (a module may define its own)."""
    return write_input(tmp_path_factory.mktemp("input") / "in.ome.zarr", volume, request.module.FACTOR)


@pytest.fixture(scope="module")
def expected(request, volume) -> np.ndarray:
    """Cubic interpolation of the module's ``volume`` at its ``FACTOR`` in one in-memory call: what a blockwise
    cubic run must reproduce exactly."""
    return upsample_array(volume, request.module.FACTOR, get_method("cubic"))


@pytest.fixture(scope="module")
def client():
    """A real dask LocalCluster with two single-threaded in-process workers, shared by one test module."""
    from isovol.deploy.local import cluster_client

    with cluster_client(2, processes=False) as c:
        yield c


@pytest.fixture
def cli():
    return run_isovol


@pytest.fixture
def isovol_exe() -> str:
    return ISOVOL


@pytest.fixture
def snapshot():
    return tree

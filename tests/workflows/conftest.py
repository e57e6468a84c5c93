"""Shared fixtures of the workflow tests: the real FIB-SEM crop, an in-process dask cluster, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from clirun import ISOVOL, run_isovol, tree

from isovol.workflows.demo_data import load_crop


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


@pytest.fixture
def cli():
    return run_isovol


@pytest.fixture
def isovol_exe() -> str:
    return ISOVOL


@pytest.fixture
def snapshot():
    return tree

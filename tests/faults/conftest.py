"""Fixtures the fault tests share: one small input, its reference and one complete output, made once a session
(the tests copy the output before they harm it)."""

from __future__ import annotations

import numpy as np
import pytest
from faultkit import THREADS, isovol, low_volume, reference, run_state, upsample_args, write_input


@pytest.fixture(scope="session")
def low() -> np.ndarray:
    """Every 8th slice of 64 x 64 of the FIB-SEM crop: 17 x 64 x 64 uint8 -> 129 x 64 x 64, 68 blocks."""
    return low_volume()


@pytest.fixture(scope="session")
def source(low, tmp_path_factory) -> str:
    return write_input(tmp_path_factory.mktemp("input") / "in.ome.zarr", low)


@pytest.fixture(scope="session")
def expected(low) -> np.ndarray:
    return reference(low)


@pytest.fixture(scope="session")
def threads(tmp_path_factory) -> str:
    """A cluster config of threads in the command's process: the cheapest cluster for trials of the command."""
    path = tmp_path_factory.mktemp("cluster") / "threads.yaml"
    path.write_text(THREADS)
    return str(path)


@pytest.fixture(scope="session")
def complete(source, threads, tmp_path_factory) -> str:
    """A finished output of ``source`` (every level), never harmed: tests copy it."""
    out = tmp_path_factory.mktemp("complete") / "out.ome.zarr"
    res = isovol(*upsample_args(source, out, cluster=threads)[1:])
    assert res.returncode == 0 and run_state(out) == "complete", res.stderr
    return str(out)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a test of a minute or more (deselect with -m 'not slow')")

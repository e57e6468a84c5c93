"""Suite-wide settings."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """torch on one thread: the suite runs on 2 cores beside dask workers and subprocesses, where torch's
    default of one thread per core makes the small CPU models several times slower, not faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

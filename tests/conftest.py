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


@pytest.fixture(scope="session")
def prior_dir(tmp_path_factory) -> str:
    """A tiny Stage I prior trained 30 steps at r = 8 on the bundled crop's every 8th XY slice (17 x 128 x 128):
    poor restorations, dominated by the sampler's noise, so any change of tile, context or seed shows in the
    voxels.  Shared by the Stage II tests (pipeline/methods and workflows) and trained once."""
    from dataclasses import replace

    import numpy as np
    from tiny_recipes import prior_tiny

    from isovol.pipeline.methods.d2r_prior.trainer import train_prior
    from isovol.workflows.demo_data import load_crop

    mcfg, sde, tcfg = prior_tiny()
    tcfg = replace(tcfg, steps=30, val_every=30, ckpt_every=30, val_patches=2, val_timesteps=1, val_restore=1)
    path = str(tmp_path_factory.mktemp("prior") / "prior")
    train_prior(np.ascontiguousarray(load_crop()[0][::8]), path, 8, model_config=mcfg, train=tcfg, sde=sde,
                device="cpu", log=lambda _: None)
    return path

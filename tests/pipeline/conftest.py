"""Fixtures the pipeline tests share: the default IR-SDE and real lateral pairs for the prior and its samplers."""

from collections.abc import Callable

import numpy as np
import pytest
import torch

from isovol.pipeline.methods.d2r_prior.irsde import IRSDE
from isovol.workflows.demo_data import load_crop

Pair = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def sde() -> IRSDE:
    return IRSDE()


@pytest.fixture(scope="session")
def row_dropped() -> Callable[[tuple[slice, slice, slice]], Pair]:
    """x0, mu of a region (z, y, x) of the bundled crop: its XY slices as patches in [0, 1], and mu = every 4th
    row kept and linearly re-upsampled, the lateral degradation the prior learns to undo."""
    volume, _ = load_crop()

    def make(region: tuple[slice, slice, slice]) -> Pair:
        x0 = torch.from_numpy(volume[region].astype(np.float32) / 255.0)[:, None]
        mu = torch.nn.functional.interpolate(x0[:, :, ::4], size=x0.shape[-2:], mode="bilinear", align_corners=True)
        return x0, mu

    return make

"""The seam figure: the mean absolute jump across block borders over the mean absolute difference between
neighbours inside blocks; INR's independently fitted blocks stay within 1.5x."""

import numpy as np
import pytest
import torch

from isovol.pipeline.methods.base import upsample_array
from isovol.pipeline.methods.inr.field import FieldConfig
from isovol.pipeline.methods.inr.method import INR
from isovol.pipeline.methods.inr.prior import GaussianPrior
from isovol.pipeline.metrics import seam_figure
from isovol.workflows.demo_data import load_crop


def test_a_smooth_volume_has_no_seam_and_block_offsets_show():
    z, y, x = np.meshgrid(np.arange(24), np.arange(32), np.arange(32), indexing="ij")
    smooth = (z * 1.0 + y * 2.0 + x * 3.0).astype(np.float32)
    fig = seam_figure(smooth, (8, 16, 16))
    assert fig["ratio"] == pytest.approx(1.0)
    assert fig["y"]["border"] == pytest.approx(2.0) and fig["x"]["interior"] == pytest.approx(3.0)
    shifted = smooth + 10.0 * ((y // 16) + (x // 16))  # every block column its own offset
    fig = seam_figure(shifted, (8, 16, 16))
    assert fig["y"]["ratio"] == pytest.approx(6.0) and fig["x"]["ratio"] == pytest.approx(13 / 3)
    assert fig["z"]["ratio"] == pytest.approx(1.0) and fig["ratio"] == pytest.approx(6.0)


def test_z_interior_pairs_are_taken_at_the_borders_phase():
    """A stack that steps only into each measured slice (r = 4): the border at z = 8 steps like the interior pairs
    of its phase (ratio 1), not like the mean of all pairs (which would give 4)."""
    v = np.broadcast_to((np.arange(17) // 4).astype(np.float32)[:, None, None], (17, 4, 4))
    fig = seam_figure(v, (8, 4, 4), factor=4)
    assert fig["z"]["border"] == pytest.approx(1.0) and fig["z"]["ratio"] == pytest.approx(1.0)


def test_inr_blocks_stay_within_one_and_a_half_times_the_interior_differences():
    torch.set_num_threads(1)
    volume, _ = load_crop()
    truth = volume[:17, :32, :32]
    stack = np.ascontiguousarray(truth[::4])
    m = INR(None, prior=GaussianPrior(mean=float(stack.mean()) / 127.5 - 1, std=float(stack.std()) / 127.5),
            block=16, overlap=4, steps=15, planes=2, points=1024, lr=0.02, sds_weight=1.0)
    m.field = FieldConfig(spacings=(4, 2), features=2, hidden=8, layers=1)
    out = upsample_array(stack, 4, m)
    fig = seam_figure(out, m.block, factor=4)
    assert fig["ratio"] <= 1.5, fig

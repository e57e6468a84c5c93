"""Blockwise == whole for every block layout the user may ask for (issue 17 item 6): Stage II recovery
(``d2r-prior``) run by the command with blocks that cut its Z tiles must equal the single in-memory call, or the
planner must align the blocks with the tile grid itself -- either way, the voxels the user gets do not depend on
``--block-shape``."""

from __future__ import annotations

import numpy as np
import pytest
from faultkit import THREADS, isovol, mark_pending, read_level

from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import upsample_array
from isovol.workflows.demo_data import load_crop

R = 8
OPTIONS = {"tile": 32, "margin": 8, "steps": 2, "sampler": "fast", "seed": 7}


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """(5, 64, 48) uint8 at 80 x 10 x 10 nm -> (33, 64, 48): one whole 32-slice Z tile and a cut one."""
    return np.ascontiguousarray(load_crop()[0][: 4 * R + 1 : R, 10:74, 40:88])


@pytest.mark.slow  # the shared tiny prior (trained once per session) and a CPU recovery: about a minute
@mark_pending("block-layout")
def test_recovery_does_not_depend_on_the_block_shape(volume, prior_dir, tmp_path):
    block = "16,64,48"  # output z 16..32 cuts the 32-slice tile [0, 32)
    from isovol.pipeline.methods.d2r_prior.method import PriorRecovery

    whole = upsample_array(volume, R, PriorRecovery(prior_dir, **OPTIONS))
    source = str(tmp_path / "in.ome.zarr")
    write_image(source, volume, (10.0 * R, 10.0, 10.0))
    (tmp_path / "threads.yaml").write_text(THREADS)
    options = [a for k, v in OPTIONS.items() for a in ("--option", f"{k}={v}")]
    res = isovol("upsample", source, tmp_path / "out.ome.zarr", "--factor", R, "--method", "d2r-prior", "--model",
                 prior_dir, *options, "--block-shape", block, "--no-pyramid", "--no-progress", "--cluster-config",
                 tmp_path / "threads.yaml", timeout=300)
    assert res.returncode == 0, res.stderr
    got = read_level(tmp_path / "out.ome.zarr")
    differ = np.argwhere(got != whole)
    assert differ.size == 0, f"{len(differ)} voxels differ, at output z {sorted(set(differ[:, 0]))[:10]}"

"""MSDSR as a user runs it: `isovol train --method msdsr --recipe cpu-tiny` on the real crop decimated by 8, then
`isovol upsample --method msdsr` with blocks that do not align with its tiles gives the single-block result bit for
bit, keeps the measured slices and generates the others; a directory that holds no MSDSR model is refused in one
line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from clirun import read_output, run_isovol, write_input

R = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, crop):
    root = tmp_path_factory.mktemp("msdsr")
    low = np.ascontiguousarray(crop[: 4 * R + 1 : R, :32, :40])
    src = write_input(root / "in.ome.zarr", low, R)
    res = run_isovol("train", src, root / "model", "--factor", R, "--method", "msdsr", "--recipe", "cpu-tiny")
    assert res.returncode == 0, res.stderr
    return src, str(root / "model"), low


def test_train_publishes_a_model_with_its_stage(trained):
    _, model, _ = trained
    state = json.load(open(os.path.join(model, "train.json")))
    assert state["method"] == "msdsr" and state["recipe"] == "cpu-tiny"
    assert set(state["stages"]) == {"msdsr"} and state["stages"]["msdsr"]["done"]
    config = json.load(open(os.path.join(model, "config.json")))
    assert config["kind"] == "msdsr" and config["factor"] == R and config["sampling"]["steps"] == 2


def test_blockwise_upsample_equals_the_whole_volume_call_and_keeps_measured_slices(trained, tmp_path):
    """The CLI with blocks off the tile grid gives the bits of one in-memory whole-volume call."""
    from isovol.pipeline.methods import get_method, upsample_array

    src, model, low = trained
    out = tmp_path / "blocks.ome.zarr"
    res = run_isovol("upsample", src, out, "--factor", R, "--method", "msdsr", "--model", model, "--option",
                     "tile=16", "--option", "seed=3", "--block-shape", "16,16,24", "--shard-shape", "16,16,24",
                     "--workers", 2, "--no-progress")
    assert res.returncode == 0, res.stderr
    got = read_output(out)
    with torch_threads(1):  # the CLI's workers run torch on one thread (oneDNN's kernels vary with it)
        whole = upsample_array(low, R, get_method("msdsr", model, tile=16, seed=3))
    assert got.shape == ((low.shape[0] - 1) * R + 1, 32, 40)
    assert np.array_equal(got, whole), "a block layout changed voxels"
    assert np.array_equal(got[::R], low), "measured slices are kept exactly"
    assert len(np.unique(got[1::R])) > 10, "the slices between are generated"


class torch_threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.old)


def test_a_directory_without_an_msdsr_model_is_refused_in_one_line(trained, tmp_path):
    src, _, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"kind": "dgean", "model": {}}))
    res = run_isovol("upsample", src, tmp_path / "out.ome.zarr", "--factor", R, "--method", "msdsr", "--model",
                     empty, "--no-progress")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isovol: error:") and "does not hold a MSDSR model" in lines[0]
    assert not (tmp_path / "out.ome.zarr").exists()

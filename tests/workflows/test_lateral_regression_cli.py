"""lateral-regression as a user runs it: `isovol train --method lateral-regression --recipe cpu-tiny` on the real
crop decimated by 8, then `isovol upsample` with blocks that do not align with its tiles gives the single-block
result bit for bit, keeps the measured slices, and changes the synthesised ones (a trained model, not the base)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from clirun import read_output, run_isovol, write_input

R = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, crop):
    root = tmp_path_factory.mktemp("lateral-regression")
    low = np.ascontiguousarray(crop[::R, :64, :80])
    src = write_input(root / "in.ome.zarr", low, R)
    res = run_isovol("train", src, root / "model", "--factor", R, "--method", "lateral-regression", "--recipe",
                     "cpu-tiny")
    assert res.returncode == 0, res.stderr
    return src, str(root / "model"), low


def test_train_publishes_a_model_with_its_stage(trained):
    _, model, _ = trained
    state = json.load(open(os.path.join(model, "train.json")))
    assert state["method"] == "lateral-regression" and state["recipe"] == "cpu-tiny"
    assert set(state["stages"]) == {"regression"} and state["stages"]["regression"]["done"]
    config = json.load(open(os.path.join(model, "config.json")))
    assert config["kind"] == "lateral-regression" and config["factor"] == R
    assert os.path.isfile(os.path.join(model, "regression", "trainer.safetensors"))


def test_blockwise_upsample_equals_one_block_and_keeps_measured_slices(trained, tmp_path):
    src, model, low = trained
    outs = {}
    for name, block in (("one", "136,64,80"), ("blocks", "40,24,40")):
        shard = block if name == "one" else "40,24,40"
        res = run_isovol("upsample", src, tmp_path / f"{name}.ome.zarr", "--factor", R, "--method",
                         "lateral-regression", "--model", model, "--option", "tile=32", "--block-shape", block,
                         "--shard-shape", shard, "--workers", 2, "--no-progress")
        assert res.returncode == 0, res.stderr
        outs[name] = read_output(tmp_path / f"{name}.ome.zarr")
    assert outs["one"].shape == ((low.shape[0] - 1) * R + 1, 64, 80)
    assert np.array_equal(outs["one"], outs["blocks"]), "a block layout changed voxels"
    assert np.array_equal(outs["one"][::R], low), "measured slices are kept exactly"
    linear = tmp_path / "linear.ome.zarr"
    assert run_isovol("upsample", src, linear, "--factor", R, "--method", "linear", "--workers", 1,
                      "--no-progress").returncode == 0
    assert not np.array_equal(outs["one"], read_output(linear)), "the trained model changes the synthesised slices"

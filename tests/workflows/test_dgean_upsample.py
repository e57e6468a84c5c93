"""DGEAN through the real executor and the ``isovol`` command: blockwise output agrees with one whole-volume
call for any block layout, and train --method sup-dgean -> upsample --method dgean works end to end with
provenance."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from clirun import error_line, read_output, tree, write_recipe
from clirun import run_isovol as run
from tiny_recipes import dgean_tiny

from isovol.pipeline.errors import InputError, ResumeError
from isovol.pipeline.geometry import parse_region
from isovol.pipeline.io.omezarr import read_attributes, write_image
from isovol.pipeline.methods import upsample_array
from isovol.pipeline.methods.dgean.method import DGEANMethod
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 8
TILE = 32  # small tiles: several per block, partial ones at block edges


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ blockwise = single call


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, crop) -> str:
    """A tiny DGEAN trained a few steps at r = 8 with a full-scale output conv: its residual on top of cubic
    interpolation is ~10 grey levels, so a tiling or halo mistake cannot hide in the rounding."""
    mcfg, tcfg = dgean_tiny()
    path = str(tmp_path_factory.mktemp("dgean") / "model")
    train_dgean(crop[:64, :64, :64], path, FACTOR, isotropic=True, model_config=replace(mcfg, out_init_scale=1.0),
                train=replace(tcfg, steps=3, val_windows=4, val_every=3, ckpt_every=3), device="cpu",
                log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[:65:FACTOR, 10:74, 40:104])  # (9, 64, 64) uint8 -> (65, 64, 64)


@pytest.fixture(scope="module")
def single(volume, model_dir):
    """The in-memory reference, the whole volume in one call, per margin."""
    cache: dict[int, np.ndarray] = {}

    def get(margin: int) -> np.ndarray:
        if margin not in cache:
            cache[margin] = upsample_array(volume, FACTOR, DGEANMethod(model_dir, tile=TILE, margin=margin))
        return cache[margin]

    return get


@pytest.fixture(scope="module")
def blockwise(tmp_path_factory, client, source, model_dir, volume):
    """The executor's output for a block shape and margin (tile 32, so tiling happens inside blocks), run once
    and shared by the tests below."""
    cache: dict[tuple, np.ndarray] = {}
    loads: dict[tuple, tuple[int, int]] = {}  # model loads, blocks
    original = DGEANMethod._build

    def get(block: tuple[int, int, int], margin: int) -> np.ndarray:
        if (block, margin) not in cache:
            out = tmp_path_factory.mktemp("blockwise") / "out.ome.zarr"
            req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, method="dgean", model=model_dir,
                                  method_options={"tile": TILE, "margin": margin}, block_shape=block,
                                  progress=False)
            builds = []

            def counting(self, meta=False):
                builds.append(self)
                return original(self, meta=meta)

            with pytest.MonkeyPatch.context() as mp:  # the workers are threads of this process: they see it
                mp.setattr(DGEANMethod, "_build", counting)
                summary = upsample(req, client=client)
            assert summary.ok and summary.failed == {}
            loads[block, margin] = (len(builds), summary.total)
            got = read_output(out)
            assert got.shape == (65, 64, 64) and got.dtype == np.uint8
            np.testing.assert_array_equal(got[::FACTOR], volume)
            attrs = read_attributes(str(out))["isovol"]
            assert attrs["model_hash"] == sha256(os.path.join(model_dir, "model.safetensors"))
            assert attrs["method_config"] == {"name": "dgean", "model_hash": attrs["model_hash"],
                                              "precision": "fp32", "tile": TILE, "margin": margin}
            cache[block, margin] = got
        return cache[block, margin]

    get.loads = loads  # type: ignore[attr-defined]
    return get


def ids(case) -> str:
    return "x".join(map(str, case[0])) + f"-m{case[1]}"


#: shard Y/X a multiple of the tile (32): every block cuts the same global tiles as the single call
WHOLE_TILES = [((65, 64, 64), 16), ((16, 64, 64), 16), ((64, 32, 32), 16)]
#: Y/X multiples of 16 but not of the tile, and shapes where nothing divides anything (40 / 56 are not even
#: multiples of 16): the planner rounds their Y/X up to the tile grid (the method's ``block_multiple``); off that
#: grid a voxel could change by 1 through context beyond the margin
ALIGNED_16 = [((8, 32, 48), 32), ((64, 32, 48), 32)]
UNALIGNED = [((9, 40, 56), 16), ((9, 40, 56), 32)]


@pytest.mark.parametrize("case", WHOLE_TILES + ALIGNED_16 + UNALIGNED, ids=ids)
def test_blockwise_is_bit_identical_for_any_block_shape(blockwise, single, case):
    block, margin = case
    np.testing.assert_array_equal(blockwise(block, margin), single(margin))


def test_block_shapes_off_the_tile_grid_are_rounded_up_and_said(model_dir):
    from isovol.pipeline.blocks import BlockPlan

    method = DGEANMethod(model_dir, tile=TILE, margin=16)
    assert method.block_multiple == (1, TILE, TILE)
    plan = BlockPlan.build((17, 128, 128), FACTOR, method.halo, block_shape=(9, 40, 56),
                           block_multiple=method.block_multiple)
    assert plan.block_shape == (9, 64, 64)
    assert len(plan.notes) == 1 and "rounded up to 9,64,64" in plan.notes[0]


def test_the_model_loads_once_per_worker_not_per_block(blockwise):
    blockwise(*UNALIGNED[0])
    loads, blocks = blockwise.loads[UNALIGNED[0]]
    assert blocks == 8 * 1 * 1  # Z blocks of 9 of 65 slices; Y/X rounded up to the whole 64 x 64
    assert loads <= 1 + 2, f"{loads} loads for {blocks} blocks on 2 workers (one is the client's check)"


def test_resume_with_other_weights_is_refused_and_a_copy_of_the_same_is_not(tmp_path, client, source, model_dir):
    out = tmp_path / "out.ome.zarr"
    req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, method="dgean", model=model_dir,
                          method_options={"tile": TILE, "margin": 16}, block_shape=(64, 64, 64), progress=False)
    assert upsample(req, client=client).ok
    same = tmp_path / "same-weights-elsewhere"
    shutil.copytree(model_dir, same)
    again = upsample(replace(req, model=str(same), resume=True), client=client)
    assert again.ok and again.done == 0 and again.skipped == again.total, "the hash, not the path, names a model"
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    weights = other / "model.safetensors"
    from isovol.pipeline.checkpoints import load_tensors, save_tensors

    state = load_tensors(str(weights), "test")
    name = next(k for k in state if k.endswith("weight"))
    state[name] = state[name] * 1.01
    save_tensors(str(weights), state)
    before = tree(out)
    with pytest.raises(ResumeError, match="cannot resume .*model"):
        upsample(replace(req, model=str(other), resume=True), client=client)
    assert tree(out) == before


# ---------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, crop) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli")
    iso, aniso = str(d / "iso.ome.zarr"), str(d / "aniso.ome.zarr")
    write_image(iso, np.ascontiguousarray(crop[:64, :64, :64]), (10.0, 10.0, 10.0))
    write_image(aniso, np.ascontiguousarray(crop[::4, 64:, 64:]), (40.0, 10.0, 10.0))  # (33, 64, 64)
    return {"dir": str(d), "iso": iso, "aniso": aniso}


@pytest.fixture(scope="module")
def cli_model(cli_inputs) -> str:
    model = os.path.join(cli_inputs["dir"], "model")
    recipe = write_recipe(os.path.join(cli_inputs["dir"], "steps20.yaml"), train={"steps": 20})
    res = run("train", cli_inputs["iso"], model, "--method", "sup-dgean", "--factor", 4, "--recipe", recipe,
              "--device", "cpu", cwd=cli_inputs["dir"])
    assert res.returncode == 0, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("isovol: train: dgean ran") and "validation PSNR" in last, res.stderr
    return model


@pytest.fixture(scope="module")
def cli_output(cli_inputs, cli_model) -> str:
    out = os.path.join(cli_inputs["dir"], "out.ome.zarr")
    res = run("upsample", cli_inputs["aniso"], out, "--factor", 4, "--method", "dgean", "--model", cli_model,
              "--workers", 1, "--no-progress", cwd=cli_inputs["dir"])
    assert res.returncode == 0, res.stderr
    assert "1 done" in res.stderr.strip().splitlines()[-1], res.stderr
    return out


def test_train_command_leaves_a_model(cli_model):
    with open(os.path.join(cli_model, "config.json")) as f:
        config = json.load(f)
    assert config["factor"] == 4 and config["isotropic"] is True and config["step"] == 20
    assert config["source"]["shape"] == [64, 64, 64] and config["source"]["region"] == [[0, 64]] * 3
    # the stage's checkpoints in MODEL_DIR/dgean, its published model also at MODEL_DIR's root
    for name in ("model.safetensors", "train.json", "dgean/model.safetensors", "dgean/config.json",
                 "dgean/trainer.safetensors", "dgean/trainer.json"):
        assert os.path.exists(os.path.join(cli_model, name)), name
    assert sha256(os.path.join(cli_model, "model.safetensors")) == sha256(
        os.path.join(cli_model, "dgean", "model.safetensors"))
    assert json.load(open(os.path.join(cli_model, "train.json")))["method"] == "sup-dgean"


def test_upsample_command_with_the_trained_model(cli_inputs, cli_model, cli_output):
    attrs = read_attributes(cli_output)["isovol"]
    assert attrs["method"] == "dgean" and attrs["factor"] == 4
    assert attrs["model_hash"] == sha256(os.path.join(cli_model, "model.safetensors"))
    assert attrs["method_config"]["model_hash"] == attrs["model_hash"]
    assert "--method dgean" in attrs["command"] and "--model" in attrs["command"]
    aniso = read_output(cli_inputs["aniso"])
    got = read_output(cli_output)
    assert got.shape == (129, 64, 64) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[::4], aniso)
    # the command's defaults (CPU: 128 px tiles, 32 px margin) in one call, in this process
    np.testing.assert_array_equal(got, upsample_array(aniso, 4, DGEANMethod(cli_model)))


def test_dgean_without_a_model_is_one_line(cli_inputs, tmp_path):
    out = tmp_path / "out.ome.zarr"
    line = error_line(run("upsample", cli_inputs["aniso"], out, "--factor", 4, "--method", "dgean", cwd=tmp_path))
    assert "method 'dgean' needs --model MODEL_DIR" in line
    assert not out.exists()
    line = error_line(run("upsample", cli_inputs["aniso"], out, "--factor", 4, "--method", "dgean", "--model",
                          tmp_path / "nowhere", cwd=tmp_path))
    assert "model directory not found" in line
    assert not out.exists()


def test_train_region_outside_the_volume(cli_inputs, tmp_path):
    model = tmp_path / "model"
    line = error_line(run("train", cli_inputs["iso"], model, "--method", "sup-dgean", "--factor", 4, "--recipe",
                          "cpu-tiny", "--region", "0:100,0:64,0:64", cwd=tmp_path))
    assert "--region z range 0:100 lies outside the volume (size 64)" in line
    assert not model.exists(), "nothing is created for a refused request"


@pytest.mark.parametrize("region, message", [
    ("0:32,-4:64,0:64", "--region y range -4:64 lies outside the volume (size 64)"),
    ("0:32,0:64,64:65", "--region x range 64:65 lies outside the volume"),
    ("0:32,10:10,:", "--region y range 10:10 lies outside"),
    ("0:32,0:64", "--region must be Z0:Z1,Y0:Y1,X0:X1"),
    ("0:32,a:b,:", "with integers"),
])
def test_bad_regions(region, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_region(region, (64, 64, 64))


def test_regions():
    assert parse_region(None, (4, 5, 6)) == (slice(0, 4), slice(0, 5), slice(0, 6))
    assert parse_region("1:3, :2 ,4:", (4, 5, 6)) == (slice(1, 3), slice(0, 2), slice(4, 6))


def test_resume_with_another_model_is_refused(cli_inputs, cli_output, model_dir, tmp_path):
    before = tree(cli_output)
    line = error_line(run("upsample", cli_inputs["aniso"], cli_output, "--factor", 4, "--method", "dgean",
                          "--model", model_dir, "--resume", "--workers", 1, "--no-progress", cwd=tmp_path))
    assert "cannot resume" in line and "model:" in line and "use --overwrite" in line
    assert tree(cli_output) == before


def test_train_naive_lateral_trains_on_the_anisotropic_stack(cli_inputs, tmp_path):
    """--method naive-lateral: the naive baseline straight from the anisotropic input; a method that needs no
    training is one error."""
    model = os.path.join(cli_inputs["dir"], "lateral")
    recipe = write_recipe(tmp_path / "steps2.yaml", train={"steps": 2})
    res = run("train", cli_inputs["aniso"], model, "--method", "naive-lateral", "--factor", 4, "--recipe", recipe,
              "--device", "cpu", cwd=cli_inputs["dir"])
    assert res.returncode == 0, res.stderr
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    assert config["sampling"] == "lateral" and config["isotropic"] is False
    assert config["source"]["shape"] == [33, 64, 64] and config["source"]["sampling"] == "lateral"
    line = error_line(run("train", cli_inputs["aniso"], model + "2", "--method", "cubic", "--factor", 4))
    assert "method 'cubic' needs no training; methods to train: dgean, sup-dgean, naive-lateral" in line
    assert not os.path.exists(model + "2")


def test_gpu_layout_when_the_user_gives_none(monkeypatch, source, model_dir):
    """On a GPU, DGEAN asks for 1024-px blocks of four 64-slice shards (so shards pipeline inside a block);
    on a CPU, or when the user gives a layout, the planner's default and the user's choice stand."""
    from isovol.workflows.upsample import prepare

    def plan_of(**kw):
        req = UpsampleRequest(input=source, output="<plan>", factor=FACTOR, method="dgean", model=model_dir, **kw)
        return prepare(req)[2]

    cpu = plan_of()
    assert cpu.block_shape == cpu.shard_shape == (65, 64, 64)  # 256^3 clipped to the (65, 64, 64) output
    monkeypatch.setattr(DGEANMethod, "_device", lambda self: "cuda")
    gpu = plan_of()
    assert gpu.block_shape == (65, 64, 64) and gpu.shard_shape == (64, 64, 64), "four Z shards, clipped"
    assert [p.out_hi[0] - p.out_lo[0] for p in gpu.z_pieces(gpu.block((0, 0, 0)))] == [64, 1]
    user = plan_of(block_shape=(32, 64, 64))
    assert user.block_shape == user.shard_shape == (32, 64, 64)

"""LateralRegression with a tiny U-Net whose output layer is random (so the network changes most voxels): any block
layout -- blocks off the tile grid too, and through the real executor -- gives the bits of one whole-volume call;
the measured slices are kept; an untrained (zero-output) model is exactly ``--method linear``; the halo covers every
tile with its margin; refusals are one clear line; a pickled method carries no network."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import zarr

from isovol.pipeline.blocks import BlockPlan
from isovol.pipeline.errors import InputError
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import registry, upsample_array
from isovol.pipeline.methods.base import Halo
from isovol.pipeline.methods.lateral_regression.method import LateralRegression
from isovol.pipeline.methods.lateral_regression.network import UNetConfig, build_unet
from isovol.pipeline.trainers.state import publish
from isovol.workflows.demo_data import load_crop

FACTOR = 8
TILE = 32  # tiny: align 4, reach 13 -> margin 16; the blocks below mostly do not align with 32


def make_model(directory: str, *, scale: float, base: str = "linear", factor: int = FACTOR) -> str:
    """A tiny U-Net published as a trainer would (weights, then config.json, step 0); ``scale``: std of the random
    output layer (0: the untrained network, which returns its input)."""
    config = UNetConfig.preset("tiny")
    net = build_unet(config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        net.out.weight.copy_(torch.randn(net.out.weight.shape, generator=gen) * scale)
        net.out.bias.fill_(0.01 * scale)
    os.makedirs(directory, exist_ok=True)
    publish(directory, {k: v.contiguous() for k, v in net.state_dict().items()},
            {"kind": "lateral-regression", "model": config.to_dict(), "factor": factor, "base": base,
             "degradation": "pick", "normalization": {"offset": 0.0, "scale": 255.0}, "step": 0})
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(str(tmp_path_factory.mktemp("regression") / "model"), scale=0.5)


@pytest.fixture(scope="module")
def low() -> np.ndarray:
    """The bundled crop decimated to 80 nm (17 x 128 x 128 uint8), a 17 x 32 x 48 part of it."""
    return np.ascontiguousarray(load_crop()[0][::FACTOR][:, 8:40, 16:64])


@pytest.fixture(scope="module")
def method(model_dir) -> LateralRegression:
    return LateralRegression(model_dir, tile=TILE, batch=4)


@pytest.fixture(scope="module")
def whole(method, low) -> np.ndarray:
    return upsample_array(low, FACTOR, method)


def blockwise(method: LateralRegression, volume: np.ndarray, block_shape: tuple[int, int, int]) -> np.ndarray:
    """What the executor does, in memory: the plan's blocks, each read box edge-padded at the volume border."""
    plan = BlockPlan.build(volume.shape, FACTOR, method.halo, block_shape=block_shape)
    out = np.zeros(plan.out_shape, dtype=volume.dtype)
    for block in plan.blocks():
        idx = [np.clip(np.arange(a, b), 0, n - 1) for a, b, n in zip(block.in_lo, block.in_hi, volume.shape)]
        start, stop = plan.local_range(block)
        box = tuple(slice(a, b) for a, b in zip(block.out_lo, block.out_hi))
        out[box] = method.apply_at(volume[np.ix_(*idx)], FACTOR, start, stop, block.in_lo)
    return out


def test_the_network_changes_the_voxels_and_keeps_the_measured_slices(whole, low):
    linear = upsample_array(low, FACTOR, registry.get_method("linear"))
    assert whole.shape == (129, 32, 48) and whole.dtype == np.uint8
    assert np.array_equal(whole[::FACTOR], low), "kept slices are the input's"
    changed = whole != linear
    assert changed.mean() > 0.5 and np.abs(whole.astype(int) - linear).max() >= 4


@pytest.mark.parametrize("block_shape", [(40, 24, 40), (16, 56, 72), (64, 32, 32)])  # the last on the tile grid
def test_any_block_layout_gives_the_bits_of_the_whole(method, low, whole, block_shape):
    assert np.array_equal(blockwise(method, low, block_shape), whole)


def test_the_executor_gives_the_bits_of_the_whole(model_dir, low, whole, tmp_path, monkeypatch):
    from isovol.deploy.local import cluster_client
    from isovol.pipeline.methods.lateral_regression import ENTRIES
    from isovol.workflows.upsample import UpsampleRequest, upsample

    monkeypatch.setitem(registry.entries(), ENTRIES[0].name, ENTRIES[0])  # a no-op once it is built in
    source = str(tmp_path / "in.ome.zarr")
    write_image(source, low, (10.0 * FACTOR, 10.0, 10.0))
    out = tmp_path / "out.ome.zarr"
    req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, method="lateral-regression",
                          model=model_dir, method_options={"tile": TILE, "batch": 4}, block_shape=(40, 24, 40),
                          progress=False)
    with cluster_client(2, processes=False) as client:
        summary = upsample(req, client=client)
    assert summary.ok and summary.done == summary.total == 4 * 2 * 2
    assert np.array_equal(zarr.open_array(store=str(out / "0"), mode="r")[...], whole)


def test_tiles_have_no_seam(model_dir, low, whole):
    """The margin covers the receptive field: other tile sizes (other cuts) give the same voxels."""
    for tile in (16, 64):
        other = upsample_array(low, FACTOR, LateralRegression(model_dir, tile=tile, batch=4))
        assert np.abs(other.astype(int) - whole).max() <= 1 and (other != whole).mean() < 1e-3


def test_an_untrained_model_is_exactly_linear_interpolation(tmp_path, low):
    meth = LateralRegression(make_model(str(tmp_path / "zero"), scale=0.0), tile=TILE)
    for part in (low, low[:, 5:30, 7:40]):
        assert np.array_equal(upsample_array(part, FACTOR, meth),
                              upsample_array(part, FACTOR, registry.get_method("linear")))
    as_float = upsample_array(low[:, :16, :16].astype(np.float32), FACTOR, meth)
    np.testing.assert_array_equal(as_float, upsample_array(low[:, :16, :16].astype(np.float32), FACTOR,
                                                           registry.get_method("linear")))


def test_halo_covers_each_tile_with_its_margin_and_config_names_the_settings(tmp_path, method):
    assert method.margin == 16 and method.tile == TILE
    assert method.halo == Halo(z=6 + 1, y=TILE + 16, x=TILE + 16)  # ceil(48 / 8) slices + linear's upper tap
    cubic = LateralRegression(make_model(str(tmp_path / "cubic"), scale=0.5, base="cubic"), tile=TILE)
    assert cubic.halo == Halo(z=6 + 2, y=48, x=48)
    assert method.config() == {"name": "lateral-regression", "model_hash": method.model_hash, "base": "linear",
                               "tile": TILE, "margin": 16, "batch": 4, "precision": "fp32"}
    assert LateralRegression(method.model_dir, device="cpu").tile == 128
    with pytest.raises(ValueError, match="lacks the halo"):
        method.apply_at(np.zeros((9, 97, 97), np.uint8), FACTOR, 56, 64, (0, 0, 0))


def test_refusals_are_one_clear_line(model_dir, tmp_path, method):
    with pytest.raises(InputError, match="trained at factor 8, not 4: train one at this factor"):
        method.check_factor(4)
    with pytest.raises(InputError, match="trained at factor 8, not 4"):
        method.apply_at(np.zeros((20, 96, 96), np.uint8), 4, 0, 8, (0, 0, 0))
    method.check_input(np.dtype(np.uint8))
    method.check_input(np.dtype(np.float32))
    for dtype in (np.uint16, np.int8):
        with pytest.raises(InputError, match=rf"trained on values 0\.\.255, the input is {np.dtype(dtype)}"):
            method.check_input(np.dtype(dtype))
    with pytest.raises(InputError, match="model directory not found"):
        LateralRegression(str(tmp_path / "nowhere"))
    foreign = str(tmp_path / "foreign")
    shutil.copytree(model_dir, foreign)
    edit(foreign, kind="dgean")
    with pytest.raises(InputError, match="does not hold a lateral-regression model .*kind='dgean'"):
        LateralRegression(foreign)
    for change, message in (({"base": "quintic"}, "base 'quintic'"), ({"factor": 1}, "factor 1"),
                            ({"normalization": {"offset": 0}}, "bad model config")):
        edit(foreign, kind="lateral-regression", **change)
        with pytest.raises(InputError, match=message):
            LateralRegression(foreign)
        edit(foreign, **json.load(open(os.path.join(model_dir, "config.json"))))
    with pytest.raises(InputError, match="tile must be a multiple of 4"):
        LateralRegression(model_dir, tile=30)
    with pytest.raises(InputError, match="batch must be a positive integer"):
        LateralRegression(model_dir, batch=0)


def edit(directory: str, **changes) -> None:
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))


def test_a_pickled_method_carries_no_network(model_dir, method, low, whole):
    assert method._model is not None, "the whole-volume call loaded it"
    blob = pickle.dumps(method)
    assert len(blob) < os.path.getsize(os.path.join(model_dir, "model.safetensors")) / 4
    clone = pickle.loads(blob)
    assert clone._model is None and method._model is not None
    assert clone.config() == method.config() and clone.halo == method.halo
    assert np.array_equal(upsample_array(low, FACTOR, clone), whole)

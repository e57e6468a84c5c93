"""The MSDSR method with a tiny denoiser whose output layer is random (so it changes every generated voxel): any
block layout -- blocks off the tile grid too, and through the real executor -- gives the bits of one whole-volume
call; the measured slices are kept; the seed changes the sample, and the same seed gives it again; refusals are one
clear line; a pickled method carries no network."""

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
from isovol.pipeline.methods.msdsr.method import MSDSR, tile_starts, window
from isovol.pipeline.methods.msdsr.network import DenoiserConfig, build_denoiser
from isovol.pipeline.trainers.state import publish
from isovol.workflows.demo_data import load_crop

FACTOR = 8
TILE, OVERLAP = 16, 4  # stride 12: no block below is a multiple of it


def make_model(directory: str, *, factor: int = FACTOR, parameterization: str = "eps") -> str:
    """A tiny denoiser published as the trainer would (weights, then config.json, step 0), its output layer
    random."""
    config = DenoiserConfig.preset("tiny")
    net = build_denoiser(config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        net.out.weight.copy_(torch.randn(net.out.weight.shape, generator=gen) * 0.3)
    os.makedirs(directory, exist_ok=True)
    publish(directory, {k: v.contiguous() for k, v in net.state_dict().items()},
            {"kind": "msdsr", "model": config.to_dict(), "factor": factor, "parameterization": parameterization,
             "normalization": {"offset": 0.0, "scale": 255.0}, "sampling": {"steps": 2, "eta": 0.0, "samples": 1},
             "step": 0})
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(str(tmp_path_factory.mktemp("msdsr") / "model"))


@pytest.fixture(scope="module")
def low() -> np.ndarray:
    """9 slices of the bundled crop decimated to 80 nm, 20 x 28 of them."""
    return np.ascontiguousarray(load_crop()[0][::FACTOR][:9, 8:28, 16:44])


@pytest.fixture(scope="module")
def method(model_dir) -> MSDSR:
    return MSDSR(model_dir, tile=TILE, overlap=OVERLAP, batch=4, eta=1.0, seed=5)


@pytest.fixture(scope="module")
def whole(method, low) -> np.ndarray:
    return upsample_array(low, FACTOR, method)


def blockwise(method: MSDSR, volume: np.ndarray, block_shape: tuple[int, int, int]) -> np.ndarray:
    """What the executor does, in memory: the plan's blocks, each read box edge-padded at the volume border."""
    plan = BlockPlan.build(volume.shape, FACTOR, method.halo, block_shape=block_shape)
    out = np.zeros(plan.out_shape, dtype=volume.dtype)
    for block in plan.blocks():
        idx = [np.clip(np.arange(a, b), 0, n - 1) for a, b, n in zip(block.in_lo, block.in_hi, volume.shape)]
        start, stop = plan.local_range(block)
        box = tuple(slice(a, b) for a, b in zip(block.out_lo, block.out_hi))
        out[box] = method.apply_at(volume[np.ix_(*idx)], FACTOR, start, stop, block.in_lo)
    return out


def test_the_model_generates_the_voxels_between_and_keeps_the_measured_slices(whole, low):
    linear = upsample_array(low, FACTOR, registry.get_method("linear"))
    assert whole.shape == (65, 20, 28) and whole.dtype == np.uint8
    assert np.array_equal(whole[::FACTOR], low), "kept slices are the input's"
    assert (whole != linear).mean() > 0.5


@pytest.mark.parametrize("block_shape", [(24, 16, 16), (40, 8, 24)])
def test_any_block_layout_gives_the_bits_of_the_whole(method, low, whole, block_shape):
    assert np.array_equal(blockwise(method, low, block_shape), whole)


def test_the_executor_gives_the_bits_of_the_whole(model_dir, low, whole, tmp_path):
    """Real zarr v3 store, real dask cluster, two workers, blocks not aligned with the tiles."""
    from isovol.deploy.local import cluster_client
    from isovol.workflows.upsample import UpsampleRequest, upsample

    source = str(tmp_path / "in.ome.zarr")
    write_image(source, low, (10.0 * FACTOR, 10.0, 10.0))
    out = tmp_path / "out.ome.zarr"
    req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, method="msdsr", model=model_dir,
                          method_options={"tile": TILE, "overlap": OVERLAP, "batch": 4, "eta": 1.0, "seed": 5},
                          block_shape=(40, 16, 16), progress=False)
    with cluster_client(2, processes=False) as client:
        summary = upsample(req, client=client)
    assert summary.ok and summary.done == summary.total == 2 * 2 * 2
    assert np.array_equal(zarr.open_array(store=str(out / "0"), mode="r")[...], whole)


def test_the_seed_decides_the_sample(model_dir, low, whole):
    part = low[:3, :12, :12]
    a = upsample_array(part, FACTOR, MSDSR(model_dir, tile=TILE, overlap=OVERLAP, batch=4, eta=1.0, seed=5))
    b = upsample_array(part, FACTOR, MSDSR(model_dir, tile=TILE, overlap=OVERLAP, batch=4, eta=1.0, seed=6))
    assert not np.array_equal(a, b), "another seed, another sample"
    again = upsample_array(part, FACTOR, MSDSR(model_dir, tile=TILE, overlap=OVERLAP, batch=4, eta=1.0, seed=5))
    assert np.array_equal(a, again)


def test_averaging_samples_is_the_mean_of_their_blends(model_dir, low):
    """samples=2 averages two samples per tile: close to the mean of two single-sample runs' voxels."""
    part = low[:3, :12, :12]
    two = MSDSR(model_dir, tile=TILE, overlap=OVERLAP, batch=4, samples=2)
    out = upsample_array(part, FACTOR, two)
    assert two.config()["samples"] == 2 and np.array_equal(out[::FACTOR], part)
    assert np.array_equal(out, blockwise(two, part, (8, 8, 8)))


def test_tiles_blend_to_one_and_cover_every_voxel():
    w = window(TILE, OVERLAP)
    assert w.min() > 0 and w.max() == 1
    stride = TILE - OVERLAP
    assert np.allclose(w[stride:] + w[: TILE - stride], 1)
    for a, b in ((0, 1), (3, 40), (13, 14)):
        starts = tile_starts(a, b, TILE, stride)
        assert all(g % stride == 0 and g >= 0 and g + TILE > a and g < b for g in starts)
        covered = {z for g in starts for z in range(g, g + TILE)}
        assert set(range(a, b)) <= covered


def test_halo_and_config(method, model_dir):
    assert method.halo == Halo(z=TILE // FACTOR + 1, y=TILE, x=TILE)
    assert method.config() == {"name": "msdsr", "model_hash": method.model_hash, "tile": TILE, "overlap": OVERLAP,
                               "batch": 4, "steps": 2, "eta": 1.0, "samples": 1, "seed": 5, "precision": "fp32"}
    with pytest.raises(ValueError, match="lacks the halo"):
        method.apply_at(np.zeros((3, 40, 40), np.uint8), FACTOR, 8, 16, (0, 0, 0))


def edit(directory: str, **changes) -> None:
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))


def test_bad_model_directories_and_options_are_refused_in_one_line(model_dir, tmp_path, method):
    with pytest.raises(InputError, match="model directory not found"):
        MSDSR(str(tmp_path / "nowhere"))
    foreign = str(tmp_path / "foreign")
    shutil.copytree(model_dir, foreign)
    edit(foreign, kind="lateral-regression")
    with pytest.raises(InputError, match="does not hold a MSDSR model .*kind='lateral-regression'"):
        MSDSR(foreign)
    original = json.load(open(os.path.join(model_dir, "config.json")))
    for change, message in (({"parameterization": "score"}, "parameterization 'score'"), ({"factor": 1}, "factor 1"),
                            ({"normalization": {"offset": 0}}, "bad model config"),
                            ({"model": {"width": 8, "depth": 3, "blocks": 1}}, "model")):
        edit(foreign, **{**original, **change})
        with pytest.raises(InputError, match=message):
            MSDSR(foreign)
    edit(foreign, **original)
    os.remove(os.path.join(foreign, "model.safetensors"))
    with pytest.raises(InputError, match="has no model.safetensors"):
        MSDSR(foreign)
    for options, message in (({"tile": 30}, "tile must be a multiple of 4"),
                             ({"tile": TILE, "overlap": 9}, "overlap must be in 0..8"),
                             ({"steps": 0}, "steps must be a positive integer"), ({"eta": 2}, "eta must be"),
                             ({"samples": 0}, "samples must be"), ({"batch": 0}, "batch must be")):
        with pytest.raises(InputError, match=message):
            MSDSR(model_dir, **options)
    with pytest.raises(InputError, match="trained at factor 8, not 4: train one at this factor"):
        method.check_factor(4)
    with pytest.raises(InputError, match=r"trained on values 0\.\.255, the input is uint16"):
        method.check_input(np.dtype(np.uint16))


def test_a_pickled_method_carries_no_network(model_dir, method, low, whole):
    assert method._model is not None, "the whole-volume call loaded it"
    clone = pickle.loads(pickle.dumps(method))
    assert clone._model is None and clone.config() == method.config()
    assert np.array_equal(upsample_array(low[:3, :12, :12], FACTOR, clone),
                          upsample_array(low[:3, :12, :12], FACTOR, method))

"""DGEANMethod with a tiny trained model: exact kept slices, shapes and dtypes, any factor from one model,
refusal of corrupt or mismatched model directories, one model load per process, pickling without weights."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_recipes import dgean_tiny

from isovol.pipeline.checkpoints import file_sha256, save_tensors
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods import get_method, upsample_array
from isovol.pipeline.methods.dgean.method import DGEANMethod
from isovol.pipeline.methods.dgean.network import DGEANConfig, build_dgean
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.workflows.demo_data import load_crop

TRAINED_AT = 8


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return load_crop()[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, crop) -> str:
    """A tiny DGEAN trained a few steps at r = 8.  Its output conv starts at full scale, so the network's
    residual on top of cubic interpolation is large (~10 grey levels): every code path shows in the output."""
    mcfg, tcfg = dgean_tiny()
    mcfg = replace(mcfg, out_init_scale=1.0)
    tcfg = replace(tcfg, steps=3, val_windows=4, val_every=3, ckpt_every=3)
    path = str(tmp_path_factory.mktemp("dgean") / "model")
    train_dgean(crop[:64, :64, :64], path, TRAINED_AT, isotropic=True, model_config=mcfg, train=tcfg,
                device="cpu", log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[:33:8, 10:58, 30:70])  # (5, 48, 40) uint8, anisotropic 80 x 10 x 10 nm


@pytest.fixture(scope="module")
def method(model_dir) -> DGEANMethod:
    return DGEANMethod(model_dir, tile=32, margin=16)


@pytest.fixture
def copy(model_dir, tmp_path) -> str:
    """A private copy of the model directory, free to damage."""
    path = str(tmp_path / "model")
    shutil.copytree(model_dir, path)
    return path


def test_shape_dtype_and_exact_kept_slices(method, volume):
    out = upsample_array(volume, TRAINED_AT, method)
    assert out.shape == ((volume.shape[0] - 1) * TRAINED_AT + 1, *volume.shape[1:]) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[::TRAINED_AT], volume)
    cubic = upsample_array(volume, TRAINED_AT, get_method("cubic"))
    assert np.abs(out.astype(int) - cubic).mean() > 1, "the network contributes, not just the cubic baseline"


@pytest.mark.parametrize("dtype, scale", [(np.uint16, 257), (np.float32, 1 / 255)], ids=["uint16", "float32"])
def test_other_dtypes(method, volume, dtype, scale):
    data = (volume.astype(np.float64) * scale).astype(dtype)
    out = upsample_array(data, 4, method)
    assert out.dtype == dtype and out.shape == (17, *volume.shape[1:])
    np.testing.assert_array_equal(out[::4], data)
    reference = upsample_array(volume, 4, method).astype(np.float64) * scale
    tol = 1.0 * scale if dtype == np.float32 else 1.5 * scale  # uint8 rounding of the reference
    assert np.abs(out.astype(np.float64) - reference).max() <= tol


def test_any_factor_from_one_model(method, volume):
    """One model trained at r = 8 serves r = 2..10; a depth asked for by several factors gets one answer."""
    outs = {}
    for r in range(2, 11):
        out = upsample_array(volume, r, method)
        assert out.shape == ((volume.shape[0] - 1) * r + 1, *volume.shape[1:]) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[::r], volume)
        outs[r] = out.astype(int)
    half = outs[2][1::2]  # depth 1/2
    for r in (4, 6, 8, 10):
        assert np.abs(outs[r][r // 2 :: r] - half).max() <= 1, r
    assert np.abs(outs[3][1::3] - outs[6][2::6]).max() <= 1  # depth 1/3
    assert np.abs(outs[4][1::4] - outs[8][2::8]).max() <= 1  # depth 1/4


def test_any_sub_range_of_slices_matches_the_whole(method, volume):
    """The executor asks for arbitrary output ranges [start, stop): each must equal that part of the whole."""
    r, h = 8, method.halo
    padded = np.pad(volume, ((h.z, h.z + 1), (h.y, h.y), (h.x, h.x)), mode="edge")
    base = h.z * r
    whole = method.apply(padded, r, base, base + (volume.shape[0] - 1) * r + 1)
    for a, b in [(0, 1), (3, 5), (7, 18), (8, 9), (15, 33)]:
        np.testing.assert_array_equal(method.apply(padded, r, base + a, base + b), whole[a:b], err_msg=f"{a}:{b}")


def test_config_carries_hash_tile_margin_precision(method, model_dir):
    cfg = method.config()
    assert cfg == {"name": "dgean", "model_hash": file_sha256(os.path.join(model_dir, "model.safetensors")),
                   "tile": 32, "margin": 16, "precision": "fp32"}
    assert method.model_hash == cfg["model_hash"]
    # the margin, plus room to pull a tile onto the 16-px grid and to round its size up to 16
    assert (method.halo.z, method.halo.y, method.halo.x) == (1, 16 + 32, 16 + 32)


class _Trap:
    """Unpickling this creates a file: proof that nothing was unpickled if the file never appears."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle", "torch-save"])
def test_corrupt_weights_are_refused(copy, tmp_path, damage):
    weights = os.path.join(copy, "model.safetensors")
    trap = tmp_path / "unpickled"
    if damage == "truncated":
        data = open(weights, "rb").read()
        open(weights, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(weights, "wb").write(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        open(weights, "wb").close()
    elif damage == "pickle":
        open(weights, "wb").write(pickle.dumps({"weights": _Trap(str(trap))}))
    else:
        torch.save({"state": _Trap(str(trap))}, weights)
    with pytest.raises(InputError, match=r"model\.safetensors is not a readable safetensors file \(.+\)"):
        DGEANMethod(copy)
    assert not trap.exists(), "the file was unpickled"


def test_weights_of_another_architecture_are_refused(copy):
    path = os.path.join(copy, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["model"] = DGEANConfig.preset("tiny", widths=(8, 8, 16, 16, 64)).to_dict()
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(InputError, match="weights do not match the model config .*shape of"):
        DGEANMethod(copy)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(kind="msdsr"), "does not hold a DGEAN model"),
    (lambda c: c.pop("model"), "does not hold a DGEAN model"),
    (lambda c: c["model"].update(widthz=3), "bad model config .*unknown DGEAN config keys"),
    (lambda c: c["model"].update(widths=[8, 8]), "bad model config .*widths must be 5"),
])
def test_bad_configs_are_refused(copy, edit, message):
    path = os.path.join(copy, "config.json")
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(InputError, match=message):
        DGEANMethod(copy)


def test_missing_or_unreadable_parts_are_refused(copy, tmp_path):
    with pytest.raises(InputError, match="model directory not found"):
        DGEANMethod(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="model directory not found"):
        DGEANMethod(os.path.join(copy, "config.json"))  # a file, not a directory
    with open(os.path.join(copy, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(InputError, match="config.json is not valid JSON"):
        DGEANMethod(copy)
    os.remove(os.path.join(copy, "config.json"))
    with pytest.raises(InputError, match="config.json not found"):
        DGEANMethod(copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"kind": "dgean", "model": {}}))
    with pytest.raises(InputError, match="has no model.safetensors"):
        DGEANMethod(str(empty))


@pytest.mark.parametrize("margin", [8, -16, 20])
def test_margin_must_be_a_multiple_of_16(model_dir, margin):
    with pytest.raises(InputError, match="margin must be a non-negative multiple of 16"):
        DGEANMethod(model_dir, margin=margin)


def test_get_method_needs_a_model_for_dgean_and_none_for_classical(model_dir):
    with pytest.raises(InputError, match="method 'dgean' needs --model MODEL_DIR"):
        get_method("dgean")
    with pytest.raises(InputError, match="takes no --model"):
        get_method("cubic", model=model_dir)
    assert isinstance(get_method("dgean", model=model_dir, tile=64), DGEANMethod)


def test_weights_replaced_after_the_start_are_refused(copy, volume):
    meth = DGEANMethod(copy, tile=32, margin=16)
    other = build_dgean(DGEANConfig.preset("tiny", seed=1))
    save_tensors(os.path.join(copy, "model.safetensors"), other.state_dict())
    with pytest.raises(InputError, match="weights changed since the run started"):
        upsample_array(volume, 2, meth)


def test_the_model_loads_once_per_process(model_dir, volume, monkeypatch):
    builds = []
    original = DGEANMethod._build

    def counting(self, meta=False):
        builds.append(self)
        return original(self, meta=meta)

    monkeypatch.setattr(DGEANMethod, "_build", counting)
    meth = DGEANMethod(model_dir, tile=32, margin=16)
    assert len(builds) == 1, "the constructor checks the checkpoint once"
    assert meth._model is None, "...but keeps no model: the method is shipped to workers"
    first = upsample_array(volume, 4, meth)
    model = meth._model
    assert model is not None
    for r in (2, 4, 8):
        out = upsample_array(volume, r, meth)
        if r == 4:
            np.testing.assert_array_equal(out, first)
    assert meth._model is model and len(builds) == 2, "one load for all later blocks"

    # pickling drops the model (workers load their own, once)
    blob = pickle.dumps(meth)
    assert len(blob) < os.path.getsize(os.path.join(model_dir, "model.safetensors")) / 4
    clone = pickle.loads(blob)
    assert clone._model is None and meth._model is model
    assert clone.config() == meth.config() and clone.halo == meth.halo
    np.testing.assert_array_equal(upsample_array(volume, 4, clone), first)
    upsample_array(volume, 2, clone)
    assert len(builds) == 3

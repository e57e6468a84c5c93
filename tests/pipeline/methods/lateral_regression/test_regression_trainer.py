"""The lateral regression's degradation, trainer and recipes: the base is bit for bit the classical method's, kept
rows are picked or averaged, a tiny training on the bundled crop beats its base, a run killed at any checkpoint
write (or paused at a deadline) resumes to the weights of one never killed, and wrong settings are one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from isovol.pipeline import checkpoints
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods.base import cast_like
from isovol.pipeline.methods.interp import Interpolation
from isovol.pipeline.methods.lateral_regression import BOOK, KIND
from isovol.pipeline.methods.lateral_regression.degrade import (
    average_weights,
    base_rows,
    degrade_patch,
    kept_rows,
)
from isovol.pipeline.methods.lateral_regression.network import UNetConfig, build_unet
from isovol.pipeline.methods.lateral_regression.recipe import RegressionRecipe
from isovol.pipeline.methods.lateral_regression.trainer import (
    RegressionTrainConfig,
    normalization,
    train_regression,
)
from isovol.pipeline.trainers import state
from isovol.workflows.demo_data import load_crop

R = 8


@pytest.fixture(scope="module")
def low() -> np.ndarray:
    """The bundled crop's every 8th XY slice: 17 x 128 x 128 uint8, the anisotropic input."""
    return np.ascontiguousarray(load_crop()[0][::R])


def interpolate_z(stack: np.ndarray, factor: int, kind: str) -> np.ndarray:
    """``isovol upsample --method KIND`` in memory: the stack edge-padded by the halo, as the executor does."""
    method = Interpolation(kind)
    h = method.halo.z
    padded = np.pad(stack, ((h, h + 1), (0, 0), (0, 0)), mode="edge")
    return method.apply(padded, factor, h * factor, (h + stack.shape[0] - 1) * factor + 1)


# ---------------------------------------------------------------------------------------------- degradation


@pytest.mark.parametrize("kind", ["linear", "cubic"])
@pytest.mark.parametrize("factor", [2, 3, 8])
def test_base_rows_is_the_interpolation_method_bit_for_bit(kind, factor):
    rng = np.random.default_rng(factor)
    floats = rng.random((6, 5, 7)).astype(np.float32)  # (z, y, x)
    rows = np.moveaxis(floats, 0, -2)  # the same data as planes whose rows are z
    want = interpolate_z(floats, factor, kind)
    got = np.moveaxis(base_rows(rows, factor, kind), -2, 0)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    on_torch = base_rows(torch.from_numpy(np.ascontiguousarray(rows)), factor, kind)
    assert np.array_equal(np.moveaxis(on_torch.numpy(), -2, 0), want)
    # integer data: the method casts back (rounds) what base_rows computes in float32
    ints = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    raw = np.moveaxis(base_rows(np.moveaxis(ints, 0, -2), factor, kind), -2, 0)
    assert np.array_equal(cast_like(raw, np.uint8), interpolate_z(ints, factor, kind))


def test_pick_keeps_the_kept_rows_exactly_and_interpolates_the_rest():
    patch = torch.rand(3, 1, 4 * R + 1, 10)
    for kind in ("linear", "cubic"):
        base = degrade_patch(patch, R, kind, "pick")
        assert base.shape == patch.shape
        assert torch.equal(base[..., ::R, :], patch[..., ::R, :])
        assert torch.equal(base, base_rows(patch[..., ::R, :], R, kind))
        assert not torch.equal(base, patch)
    with pytest.raises(ValueError, match="does not have m\\*8 \\+ 1 inner rows"):
        degrade_patch(patch[..., :-1, :], R)


@pytest.mark.parametrize("factor", [3, 4])
def test_average_makes_each_kept_row_the_mean_of_its_section(factor):
    margin = factor // 2
    rng = np.random.default_rng(0)
    patch = rng.random((2 * margin + 3 * factor + 1, 6)).astype(np.float32)
    low = kept_rows(patch, factor, "average", margin)
    weights = average_weights(factor)
    assert sum(w for _, w in weights) == factor and len(weights) == 2 * margin + 1
    for j in range(4):
        c = margin + j * factor
        want = sum(w * patch[c + o].astype(np.float64) for o, w in weights) / factor
        np.testing.assert_allclose(low[j], want, rtol=1e-5)
    # a linear ramp along the rows keeps its centre values: the sections are centred
    ramp = np.repeat(np.arange(patch.shape[0], dtype=np.float32)[:, None], 6, axis=1)
    np.testing.assert_allclose(kept_rows(ramp, factor, "average", margin)[:, 0],
                               np.arange(margin, patch.shape[0] - margin, factor), rtol=1e-6)
    base = degrade_patch(patch, factor, "linear", "average", margin)
    assert base.shape == (3 * factor + 1, 6) and np.array_equal(base[::factor], low)
    # without a margin the edge sections average the rows they have
    edge = kept_rows(patch[margin:-margin], factor, "average")
    np.testing.assert_allclose(edge[0], patch[margin : 2 * margin + 1].mean(0) if factor % 2 else
                               (patch[margin : 2 * margin].sum(0) + 0.5 * patch[2 * margin]) / (margin + 0.5),
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------------- training


def tiny(**train) -> tuple[UNetConfig, RegressionTrainConfig]:
    _, recipe = BOOK.load("cpu-tiny")
    return recipe.model, replace(recipe.train, **train)


def run(volume: np.ndarray, path, **train) -> dict:
    model, cfg = tiny(**train)
    return train_regression(volume, str(path), R, model_config=model, train=cfg, device="cpu", log=lambda _: None)


def test_a_tiny_training_on_the_crop_beats_its_base(low, tmp_path):
    result = run(low, tmp_path / "model")
    history = result["history"]
    first, last = history[0], history[-1]
    assert result["finished"] and result["steps"] == tiny()[1].steps
    assert first["step"] == 0 and first["psnr"] == first["base_psnr"], "an untrained network returns its base"
    assert last["loss"] < first["loss"]
    assert last["psnr"] > last["base_psnr"] + 0.1 and last["base_psnr"] == first["base_psnr"]
    config = json.loads((tmp_path / "model" / checkpoints.CONFIG).read_text())
    assert config["kind"] == KIND == "lateral-regression" and config["factor"] == R
    assert (config["base"], config["degradation"]) == ("linear", "pick")
    assert config["normalization"] == {"offset": 0.0, "scale": 255.0}
    assert config["model"] == tiny()[0].to_dict() and config["train"]["steps"] == result["steps"] == config["step"]
    assert config["validation"] == last and "isovol_version" in config
    net = build_unet(config["model"])
    net.load_state_dict(checkpoints.load_tensors(str(tmp_path / "model" / checkpoints.WEIGHTS), "test"))
    assert result["model_hash"] == checkpoints.file_sha256(str(tmp_path / "model" / checkpoints.WEIGHTS))


# the resume tests exercise the other options: a cubic base, averaged sections, an EMA
STEPS, EVERY, WRITES = 10, 5, 8  # two checkpoints of four writes each: trainer.safetensors, trainer.json, model, config
RESUME = {"steps": STEPS, "ckpt_every": EVERY, "val_every": EVERY, "batch": 2, "val_patches": 2, "ema": 0.9,
          "base": "cubic", "degradation": "average"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, low) -> dict[str, torch.Tensor]:
    path = tmp_path_factory.mktemp("regression") / "model"
    run(low, path, **RESUME)
    return checkpoints.load_tensors(str(path / checkpoints.WEIGHTS), "test")


def kill_at(monkeypatch, n: int) -> None:
    """Simulate a kill just before the n-th checkpoint write (1-based)."""
    count = {"writes": 0}

    def counted(write):
        def wrapper(*args, **kwargs):
            count["writes"] += 1
            if count["writes"] == n:
                raise KeyboardInterrupt
            return write(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(state, "save_tensors", counted(checkpoints.save_tensors))
    monkeypatch.setattr(state, "save_json", counted(checkpoints.save_json))


def same_weights(path, uninterrupted) -> bool:
    weights = checkpoints.load_tensors(str(path / checkpoints.WEIGHTS), "test")
    return weights.keys() == uninterrupted.keys() and all(torch.equal(weights[k], v)
                                                           for k, v in uninterrupted.items())


@pytest.mark.parametrize("n", range(2, WRITES + 1))
def test_a_kill_between_any_two_writes_resumes_to_the_uninterrupted_result(n, low, tmp_path, monkeypatch,
                                                                          uninterrupted):
    kill_at(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        run(low, tmp_path / "model", **RESUME)
    monkeypatch.undo()
    result = run(low, tmp_path / "model", **RESUME)
    assert result["steps"] == STEPS and [h["step"] for h in result["history"]] == [0, 5, 10]
    assert same_weights(tmp_path / "model", uninterrupted)
    assert json.loads((tmp_path / "model" / checkpoints.CONFIG).read_text())["step"] == STEPS


def test_a_run_paused_at_its_deadline_resumes_to_the_uninterrupted_result(low, tmp_path, uninterrupted):
    model, cfg = tiny(**RESUME)
    paused = train_regression(low, str(tmp_path / "model"), R, model_config=model, train=cfg, device="cpu",
                              log=lambda _: None, deadline=0.0)
    assert not paused["finished"] and paused["steps"] == 0
    assert run(low, tmp_path / "model", **RESUME)["finished"]
    assert same_weights(tmp_path / "model", uninterrupted)


def test_a_rerun_with_other_settings_is_refused_in_one_line(low, tmp_path):
    path = tmp_path / "model"
    run(low, path, steps=2, ckpt_every=2, val_every=2)
    assert run(low, path, steps=3, ckpt_every=2, val_every=2)["steps"] == 3, "a longer budget resumes"
    for change, name in (({"lr": 0.01}, "train.lr"), ({"base": "cubic"}, "base"),
                         ({"degradation": "average"}, "degradation")):
        with pytest.raises(InputError) as info:
            run(low, path, steps=3, ckpt_every=2, val_every=2, **change)
        message = str(info.value)
        assert "\n" not in message and "trained with other settings" in message and name in message, message
    with pytest.raises(InputError, match="trained with other settings \\(factor"):
        model, cfg = tiny(steps=3, ckpt_every=2, val_every=2)
        train_regression(low, str(path), 4, model_config=model, train=cfg, device="cpu", log=lambda _: None)


def test_normalization_maps_the_dtype_range_or_the_float_range_to_0_1():
    assert normalization(np.zeros((2, 2, 2), np.uint8)) == {"offset": 0.0, "scale": 255.0}
    assert normalization(np.zeros((2, 2, 2), np.uint16)) == {"offset": 0.0, "scale": 65535.0}
    assert normalization(np.zeros((2, 2, 2), np.int16)) == {"offset": -32768.0, "scale": 65535.0}
    assert normalization(np.array([[[-1.5, 0.5]]], np.float32)) == {"offset": -1.5, "scale": 2.0}
    with pytest.raises(InputError, match="non-constant"):
        normalization(np.ones((2, 2, 2), np.float32))


def test_impossible_inputs_are_refused(low, tmp_path):
    with pytest.raises(InputError, match="smaller than a"):
        run(low[:, :20, :20], tmp_path / "a")
    with pytest.raises(InputError, match="training needs at least 2"):
        run(low[:1], tmp_path / "b")
    with pytest.raises(InputError, match="keeps fewer than 2 rows"):
        run(low, tmp_path / "c", patch=8)
    with pytest.raises(InputError, match="factor must be an integer >= 2"):
        model, cfg = tiny()
        train_regression(low, str(tmp_path / "d"), 1, model_config=model, train=cfg, device="cpu")


# ---------------------------------------------------------------------------------------------- recipes


def test_all_three_presets_parse():
    assert BOOK.names() == ["cpu-tiny", "cpu-demo", "gpu-default"]
    models = {}
    for name in BOOK.names():
        label, recipe = BOOK.load(name)
        assert label == name and isinstance(recipe, RegressionRecipe)
        assert isinstance(recipe.model, UNetConfig) and isinstance(recipe.train, RegressionTrainConfig)
        assert recipe.to_dict()["model"] == recipe.model.to_dict()
        models[name] = recipe.model
    assert models["cpu-tiny"] == UNetConfig.preset("tiny") and models["gpu-default"] == UNetConfig.preset("default")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "recipe.yaml"

    def write(text: str) -> str:
        path.write_text(text)
        return str(path)

    return write


def test_a_file_overrides_fields(spec):
    _, recipe = BOOK.load(spec("base: cpu-tiny\nmodel: {width: 4, depth: 1, convs: 1}\n"
                               "train: {steps: 7, base: cubic, degradation: average}\n"))
    _, plain = BOOK.load("cpu-tiny")
    assert recipe.model == UNetConfig(width=4, depth=1, convs=1)
    assert recipe.train == replace(plain.train, steps=7, base="cubic", degradation="average")
    assert BOOK.load(spec("model: small\n"))[1].model == UNetConfig.preset("small")


@pytest.mark.parametrize("text, message", [
    ("train: {stepz: 7}\n", "train: unknown key\\(s\\) stepz; valid: base, batch, beta2, .*, steps, .*warmup"),
    ("model: {widht: 8}\n", "model: unknown key\\(s\\) widht; valid: convs, depth, seed, width"),
    ("trian: {}\n", "unknown key\\(s\\) trian; valid: model, train"),
    ("model: huge\n", "unknown U-Net preset 'huge'; choose one of tiny, small, default"),
    ("model: [8]\n", "model must be a preset name"),
    ("model: {width: 0}\n", "width must be a positive integer"),
    ("train: {base: nearest}\n", "base must be linear or cubic, got 'nearest'"),
    ("train: {degradation: thick}\n", "degradation must be pick or average, got 'thick'"),
])
def test_bad_recipes_are_refused_in_one_line(spec, text, message):
    with pytest.raises(InputError, match=message) as info:
        BOOK.load(spec(text))
    assert "\n" not in str(info.value)

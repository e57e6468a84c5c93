"""MSDSR's trainer on the bundled crop's every 8th XY slice: a tiny model trains and its validation loss falls; a
run stopped and resumed ends with the weights of one never stopped; a directory of another run is refused."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from isovol.pipeline.checkpoints import load_tensors
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods.msdsr import BOOK
from isovol.pipeline.methods.msdsr.method import MSDSR
from isovol.pipeline.methods.msdsr.trainer import train_msdsr
from isovol.workflows.demo_data import load_crop

R = 8


@pytest.fixture(scope="module")
def low() -> np.ndarray:
    return np.ascontiguousarray(load_crop()[0][::R])


@pytest.fixture(scope="module")
def tiny():
    return BOOK.load("cpu-tiny")[1]


def train(low, directory, recipe, **changes):
    return train_msdsr(low, str(directory), R, model_config=recipe.model, train=replace(recipe.train, **changes),
                       sampling={"steps": 2, "eta": 0.0, "samples": 1}, device="cpu", log=lambda _: None)


def test_a_tiny_model_trains_and_its_loss_falls(low, tiny, tmp_path):
    res = train(low, tmp_path / "m", tiny)
    history = res["history"]
    assert res["finished"] and res["steps"] == tiny.train.steps
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert {"psnr", "linear_psnr", "train_loss"} <= set(history[-1])
    config = json.load(open(tmp_path / "m" / "config.json"))
    assert config["kind"] == "msdsr" and config["parameterization"] == "eps" and config["patch"] == 32
    assert config["sampling"] == {"steps": 2, "eta": 0.0, "samples": 1}
    assert MSDSR(str(tmp_path / "m")).steps == 2, "the recipe's sampling is the method's default"


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(low, tiny, tmp_path):
    short = dict(steps=20, val_every=10, ckpt_every=10, val_steps=0)
    train(low, tmp_path / "straight", tiny, **short)
    train(low, tmp_path / "resumed", tiny, **{**short, "steps": 10})
    train(low, tmp_path / "resumed", tiny, **short)
    a = load_tensors(os.path.join(tmp_path / "straight", "model.safetensors"), "model")
    b = load_tensors(os.path.join(tmp_path / "resumed", "model.safetensors"), "model")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    with pytest.raises(InputError, match=r"trained with other settings \(train.lr\); use a new directory"):
        train(low, tmp_path / "resumed", tiny, **{**short, "lr": 0.1})


def test_bad_requests_are_refused(low, tiny, tmp_path):
    with pytest.raises(InputError, match="expected a \\(z, y, x\\) volume"):
        train(low[0], tmp_path / "a", tiny)
    with pytest.raises(InputError, match="smaller than a 32x32 training patch"):
        train(low[:, :20, :20], tmp_path / "b", tiny)
    with pytest.raises(InputError, match="parameterization must be one of eps, x0, v"):
        BOOK.parse({"train": {"parameterization": "score"}}, "recipe")
    with pytest.raises(InputError, match="unknown key"):
        BOOK.parse({"sampling": {"stepz": 3}}, "recipe")
    assert set(BOOK.names()) == {"cpu-tiny", "cpu-demo", "gpu-default"}
    for name in BOOK.names():
        BOOK.load(name)

"""Checkpoints survive a kill at any write: a run killed between any two files of a checkpoint resumes from a
consistent step (the first checkpoint included) and ends with the weights of a run never killed; directories
that cannot resume are refused with one clear line."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_recipes import dgean_tiny, prior_tiny

from isovol.pipeline import checkpoints
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods.d2r_prior import trainer as prior
from isovol.pipeline.methods.dgean import trainer as dgean
from isovol.pipeline.trainers import state
from isovol.workflows.demo_data import load_crop

FACTOR = 4
STEPS, EVERY = 10, 5  # two checkpoints of four writes each: trainer.safetensors, trainer.json, model, config
WRITES = 8


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return load_crop()[0][:, :64, :64]


def train_dgean(volume: np.ndarray, model_dir) -> dict:
    mcfg, tcfg = dgean_tiny()
    tcfg = replace(tcfg, steps=STEPS, ckpt_every=EVERY, val_every=EVERY, batch=2, patch=32, val_windows=4)
    return dgean.train_dgean(volume, str(model_dir), FACTOR, isotropic=True, model_config=mcfg, train=tcfg,
                             device="cpu", log=lambda _: None)


def train_prior(volume: np.ndarray, prior_dir) -> dict:
    mcfg, sde, tcfg = prior_tiny()
    tcfg = replace(tcfg, steps=STEPS, ckpt_every=EVERY, val_every=EVERY, batch=2, patch=17)
    return prior.train_prior(volume[::FACTOR], str(prior_dir), FACTOR, model_config=mcfg, train=tcfg, sde=sde,
                             device="cpu", log=lambda _: None)


TRAINERS = {"dgean": train_dgean, "prior": train_prior}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, crop) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, run in TRAINERS.items():
        path = tmp_path_factory.mktemp(name) / "model"
        run(crop, path)
        out[name] = checkpoints.load_tensors(str(path / checkpoints.WEIGHTS), "test")
    return out


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


@pytest.mark.parametrize("name", TRAINERS)
@pytest.mark.parametrize("n", range(2, WRITES + 1))
def test_a_kill_between_any_two_writes_resumes_to_the_uninterrupted_result(name, n, tmp_path, crop, monkeypatch,
                                                                          uninterrupted):
    run = TRAINERS[name]
    kill_at(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        run(crop, tmp_path / "model")
    monkeypatch.undo()
    result = run(crop, tmp_path / "model")
    assert result["steps"] == STEPS and [h["step"] for h in result["history"]] == [0, 5, 10]
    weights = checkpoints.load_tensors(str(tmp_path / "model" / checkpoints.WEIGHTS), "test")
    assert all(torch.equal(weights[k], v) for k, v in uninterrupted[name].items())
    with open(tmp_path / "model" / checkpoints.CONFIG) as f:
        assert json.load(f)["step"] == STEPS


def test_a_kill_before_the_first_write_starts_afresh(tmp_path, crop, monkeypatch):
    kill_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_dgean(crop, tmp_path / "model")
    assert os.listdir(tmp_path / "model") == []
    monkeypatch.undo()
    assert train_dgean(crop, tmp_path / "model")["steps"] == STEPS


def test_directories_that_cannot_resume_are_refused(tmp_path, crop):
    model = tmp_path / "model"
    train_dgean(crop, model)
    published = tmp_path / "published"  # a model copied without its trainer state
    os.makedirs(published)
    for f in (checkpoints.WEIGHTS, checkpoints.CONFIG):
        shutil.copy(model / f, published / f)
    with pytest.raises(InputError, match="holds a finished model without its trainer state"):
        train_dgean(crop, published)
    # a checkpoint without the identity and record in its metadata (as written before they were kept there)
    tensors = checkpoints.load_tensors(str(model / state.TRAINER_STATE), "test")
    checkpoints.save_tensors(str(model / state.TRAINER_STATE), tensors)
    with pytest.raises(InputError, match="written by an earlier isovol whose checkpoints do not resume"):
        train_dgean(crop, model)
    # another trainer's checkpoint
    other = tmp_path / "prior"
    train_prior(crop, other)
    with pytest.raises(InputError, match="holds a 'irsde-prior' checkpoint, not a 'dgean' one"):
        train_dgean(crop, other)


def test_weights_and_config_of_different_checkpoints_are_refused_by_the_loaders(tmp_path, crop):
    """A kill between the two files of a publication (or a training still writing) leaves weights newer than
    the config; the methods refuse to use such a pair instead of labelling one model with another's record."""
    from isovol.pipeline.methods.d2r_prior.method import PriorRecovery
    from isovol.pipeline.methods.dgean.method import DGEANMethod

    model, prior_dir = tmp_path / "model", tmp_path / "prior"
    train_dgean(crop, model)
    train_prior(crop, prior_dir)
    DGEANMethod(str(model), device="cpu")
    PriorRecovery(str(prior_dir), factor=FACTOR, device="cpu")
    for path in (model, prior_dir):
        config = json.loads((path / checkpoints.CONFIG).read_text())
        checkpoints.save_json(str(path / checkpoints.CONFIG), {**config, "step": EVERY})
    with pytest.raises(InputError, match=f"weights of step {STEPS} but the config of step {EVERY}"):
        DGEANMethod(str(model), device="cpu")
    with pytest.raises(InputError, match=f"weights of step {STEPS} but the config of step {EVERY}"):
        PriorRecovery(str(prior_dir), factor=FACTOR, device="cpu")

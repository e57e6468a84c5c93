"""The D2R Stage I trainer on XY slices of a real anisotropic stack: it learns, checkpoints as safetensors +
plain JSON (EMA weights for inference), resumes from the last checkpoint, refuses other settings in the same
directory, honours a time budget, and its patches come from the right slices, degraded the right way."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_recipes import PRIOR_TINY, prior_tiny

from isovol.pipeline import checkpoints
from isovol.pipeline.degrade import DIHEDRAL, degrade_rows, undo_dihedral
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods.d2r_prior import trainer as prior
from isovol.pipeline.methods.d2r_prior.irsde import IRSDE
from isovol.pipeline.methods.d2r_prior.nafnet import NAFNetConfig, build_nafnet
from isovol.pipeline.methods.d2r_prior.trainer import (
    SDE_DEFAULTS,
    PatchSampler,
    PriorTrainConfig,
    normalization,
    train_prior,
)
from isovol.workflows.demo_data import load_crop

FACTOR = 4
STEPS = 150  # tiny recipe: validation loss ~0.0177 -> ~0.005-0.012 at 120-150 steps (seeds 0-3, r = 4 and 8)
FILES = ("config.json", "model.safetensors", "trainer.json", "trainer.safetensors")


@pytest.fixture(scope="module")
def aniso() -> np.ndarray:
    """The real crop as a factor-4 anisotropic stack: 33 XY slices of 128 x 128 (40 nm x 10 nm x 10 nm)."""
    return np.ascontiguousarray(load_crop()[0][::FACTOR])


def recipe(**train):
    mcfg, sde, tcfg = prior_tiny()
    return mcfg, sde, replace(tcfg, **train)


def train(volume, prior_dir, factor=FACTOR, deadline=None, **kw) -> tuple[dict, list[str]]:
    mcfg, sde, tcfg = recipe(**kw)
    lines: list[str] = []
    result = train_prior(volume, str(prior_dir), factor, model_config=mcfg, train=tcfg, sde=sde, device="cpu",
                         log=lines.append, deadline=deadline)
    return result, lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory, aniso) -> tuple[str, dict, list[str]]:
    prior_dir = str(tmp_path_factory.mktemp("prior") / "prior")
    result, lines = train(aniso, prior_dir, steps=STEPS, seed=1)
    return prior_dir, result, lines


def test_training_lowers_the_validation_loss(trained):
    _, result, lines = trained
    history = result["history"]
    assert result["steps"] == STEPS and [h["step"] for h in history] == [0, 50, 100, 150]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert all(np.isfinite([h["loss"], h["psnr"], h["cubic_psnr"]]).all() for h in history)
    # the restoration is measured next to mu (cubic) on the same fixed held-out patches
    assert len({h["cubic_psnr"] for h in history}) == 1 and history[-1]["psnr"] > history[0]["psnr"]
    assert lines[0] == ("training the Stage I prior at factor 4 on 29 XY slices of 128x128 (4 held out): "
                        "33x33 patches, batch 8, steps 0..150 on cpu")
    assert lines[1].startswith("step 0: validation loss") and f"step {STEPS}/{STEPS}" in lines[-1]


def test_checkpoint_files_and_plain_json_config(trained, aniso):
    prior_dir, result, _ = trained
    assert sorted(os.listdir(prior_dir)) == list(FILES)
    with open(os.path.join(prior_dir, "config.json")) as f:
        config = json.load(f)  # plain JSON: no NaN, nothing to unpickle
    assert config["kind"] == "irsde-prior" and config["factor"] == FACTOR and config["step"] == STEPS
    assert config["sde"] == {**SDE_DEFAULTS, "max_sigma": 50 / 255}
    assert config["normalization"] == {"offset": 0.0, "scale": 255.0}
    assert config["patch"] == {"rows": 33, "cols": 33}
    assert config["model"] == NAFNetConfig.preset("tiny").to_dict()
    assert config["train"]["steps"] == STEPS and config["train"]["ema"] == 0.99
    assert config["validation"] == result["history"][-1]
    assert result["model_hash"] == checkpoints.file_sha256(os.path.join(prior_dir, "model.safetensors"))
    for name in ("model.safetensors", "trainer.safetensors"):
        with open(os.path.join(prior_dir, name), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            json.loads(f.read(n))  # a safetensors header, not a pickle
    # model.safetensors holds the EMA weights: loadable into the configured net, and not the raw weights
    ema = checkpoints.load_tensors(os.path.join(prior_dir, "model.safetensors"), "test")
    net = build_nafnet(NAFNetConfig.from_dict(config["model"]))
    checkpoints.check_state(net, ema, "test")
    net.load_state_dict(ema)
    trainer = checkpoints.load_tensors(os.path.join(prior_dir, "trainer.safetensors"), "test")
    meta = checkpoints.load_metadata(os.path.join(prior_dir, "trainer.safetensors"), "test")
    assert json.loads(meta["record"])["step"] == STEPS and json.loads(meta["identity"])["kind"] == "irsde-prior"
    assert any(k.startswith("opt.") for k in trainer)
    assert all(torch.equal(trainer[f"ema.{k}"], v) for k, v in ema.items())  # the checkpoint keeps the EMA too
    raw = {k[len("model."):]: v for k, v in trainer.items() if k.startswith("model.")}
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in ema)
    # the saved prior restores held-out patches through the sampler API as Stage II will call it
    from isovol.pipeline.methods.d2r_prior.samplers import sample, seeded_noise

    x0 = torch.from_numpy(aniso[-1, :33, 40:73].astype(np.float32) / 255).reshape(1, 1, 33, 33)
    out = sample(IRSDE(**config["sde"]), net.eval(), degrade_rows(x0, FACTOR), noise=seeded_noise(0))
    assert out.shape == x0.shape and bool(torch.isfinite(out).all())
    # and Stage II takes the directory as it is
    from isovol.pipeline.methods import upsample_array
    from isovol.pipeline.methods.d2r_prior.method import PriorRecovery

    method = PriorRecovery(prior_dir, factor=FACTOR, tile=16, margin=4, device="cpu")
    assert method.model_hash == result["model_hash"]
    low = aniso[:4, :16, :16]
    got = upsample_array(low, FACTOR, method)
    assert got.shape == (13, 16, 16) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[::FACTOR], low)


def test_rerun_with_the_same_settings_is_a_no_op_and_longer_runs_continue(trained, tmp_path, aniso):
    prior_dir, result, _ = trained
    copy = tmp_path / "prior"
    os.makedirs(copy)
    for name in FILES:
        with open(os.path.join(prior_dir, name), "rb") as src, open(copy / name, "wb") as dst:
            dst.write(src.read())
    again, lines = train(aniso, copy, steps=STEPS, seed=1)
    assert again["steps"] == STEPS and again["model_hash"] == result["model_hash"]
    assert lines == [f"resuming training of {copy} at step {STEPS}"]
    more, lines = train(aniso, copy, steps=STEPS + 10, seed=1)
    assert lines[0] == f"resuming training of {copy} at step {STEPS}"
    assert more["steps"] == STEPS + 10 and more["history"][:-1] == result["history"]
    assert more["history"][-1]["step"] == STEPS + 10
    with open(copy / "config.json") as f:
        assert json.load(f)["step"] == STEPS + 10


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, aniso, monkeypatch):
    prior_dir = tmp_path / "prior"
    calls = {"n": 0}
    real = PatchSampler.sample

    def dying(self, batch, valid=False, rng=None):
        if not valid:
            calls["n"] += 1
            if calls["n"] > 30:
                raise KeyboardInterrupt  # killed during step 31; the last checkpoint is step 20
        return real(self, batch, valid, rng)

    monkeypatch.setattr(PatchSampler, "sample", dying)
    noisy = {"noise_poisson": 0.01, "noise_gaussian": 0.01}  # the optional noise model, exercised here
    with pytest.raises(KeyboardInterrupt):
        train(aniso, prior_dir, steps=40, ckpt_every=20, val_every=20, **noisy)
    with open(prior_dir / "config.json") as f:
        assert json.load(f)["step"] == 20
    monkeypatch.setattr(PatchSampler, "sample", real)
    result, lines = train(aniso, prior_dir, steps=40, ckpt_every=20, val_every=20, **noisy)
    assert lines[0] == f"resuming training of {prior_dir} at step 20"
    assert result["steps"] == 40 and [h["step"] for h in result["history"]] == [0, 20, 40]
    assert not [f for f in os.listdir(prior_dir) if f.startswith(".tmp")], "no torn temporary files are left"


@pytest.mark.parametrize("change, what", [
    ({"factor": 8}, "factor"),
    ({"lr": 5e-4}, "train.lr"),
    ({"patch": 41}, "patch, train.patch"),
    ({"noise_gaussian": 0.01}, "train.noise_gaussian"),
])
def test_changed_settings_are_refused(trained, aniso, change, what):
    prior_dir, _, _ = trained
    before = {f: os.stat(os.path.join(prior_dir, f)).st_mtime_ns for f in FILES}
    kw = {"steps": STEPS, "seed": 1, **change}
    with pytest.raises(InputError, match=f"trained with other settings \\({what}\\); use a new directory"):
        train(aniso, prior_dir, **kw)
    assert {f: os.stat(os.path.join(prior_dir, f)).st_mtime_ns for f in FILES} == before


def test_another_source_or_sde_is_refused(trained, aniso):
    prior_dir, _, _ = trained
    mcfg, sde, tcfg = recipe(steps=STEPS, seed=1)
    with pytest.raises(InputError, match=r"other settings \(source\)"):
        train_prior(aniso, prior_dir, FACTOR, model_config=mcfg, train=tcfg, sde=sde, device="cpu",
                    source={"url": "elsewhere"}, log=lambda s: None)
    with pytest.raises(InputError, match=r"other settings \(sde\)"):
        train_prior(aniso, prior_dir, FACTOR, model_config=mcfg, train=tcfg, sde={**sde, "T": 50}, device="cpu",
                    log=lambda s: None)


def test_a_time_budget_stops_with_a_checkpoint(tmp_path, aniso):
    result, lines = train(aniso, tmp_path / "prior", steps=100000, max_minutes=0.005, warmup=0)
    assert 0 < result["steps"] < 100000
    assert any(line.startswith("time budget of 0.005 min reached at step") for line in lines)
    with open(tmp_path / "prior" / "config.json") as f:
        config = json.load(f)
    assert config["step"] == result["steps"] == result["history"][-1]["step"]
    # the learning rate anneals within the budget (not over 100000 steps): it left the peak
    with open(tmp_path / "prior" / "trainer.json") as f:
        assert json.load(f)["param_groups"][0]["lr"] < 0.99 * PRIOR_TINY["train"]["lr"]


def test_patches_come_from_the_right_slices_in_every_orientation(aniso):
    """Training patches lie wholly in the training slices, validation patches in the held-out last 10 %; all
    eight symmetries occur, so both image axes become the degraded axis."""
    norm = normalization(aniso)
    sampler = PatchSampler(aniso, 33, 21, norm, holdout=0.1, seed=0)
    held = math.ceil(0.1 * aniso.shape[0])
    assert sampler.parts[True].shape[0] == held == 4 and sampler.codes == list(range(8))
    rng = np.random.default_rng(0)
    for valid, slices in ((False, aniso[:-held]), (True, aniso[-held:])):
        batch = sampler.sample(16, valid=valid, rng=rng)
        assert batch.shape == (16, 1, 33, 21) and batch.dtype == torch.float32
        codes = set()
        for patch in (np.rint(batch[:, 0].numpy() * 255).astype(np.uint8)):
            found = [c for c in range(8) if _find(slices, undo_dihedral(patch, c))]
            assert found, "every patch is a symmetry of a region of one slice of its part"
            codes.update(found)
        assert any(DIHEDRAL[c][0] for c in codes) and any(not DIHEDRAL[c][0] for c in codes)


def _find(slices: np.ndarray, patch: np.ndarray) -> bool:
    h, w = patch.shape
    for z, y, x in zip(*np.nonzero(slices[:, : slices.shape[1] - h + 1, : slices.shape[2] - w + 1] == patch[0, 0])):
        if np.array_equal(slices[z, y : y + h, x : x + w], patch):
            return True
    return False


def test_refusals(aniso, tmp_path):
    """Recipes (presets and files) are tested in tests/pipeline/methods/test_recipes.py."""
    assert PriorTrainConfig().noise_poisson == 0 and PriorTrainConfig().noise_gaussian == 0
    mcfg, sde, tcfg = prior_tiny()
    cases = [(aniso[0], FACTOR, tcfg, "expected a \\(z, y, x\\) volume"),
             (aniso, 1, tcfg, "factor must be an integer >= 2"),
             (aniso[:1], FACTOR, tcfg, "training needs at least 2"),
             (aniso[:, :20, :], FACTOR, tcfg, "smaller than a 33x33 training patch"),
             (aniso, 32, tcfg, "use a patch of at least 65 rows")]
    for volume, factor, cfg, message in cases:
        with pytest.raises(InputError, match=message):
            train_prior(volume, str(tmp_path / "p"), factor, model_config=mcfg, train=cfg, sde=sde, device="cpu")
    assert not os.path.exists(tmp_path / "p"), "nothing is created for a refused request"
    # a non-square patch that fits only one way round uses only the symmetries that fit
    sampler = PatchSampler(aniso[:, :33, :], 33, 64, normalization(aniso))
    assert sampler.codes == [c for c in range(8) if not DIHEDRAL[c][0]]
    assert prior.KIND == "irsde-prior"


def test_t_max_keeps_training_and_validation_timesteps_in_range(tmp_path, aniso, monkeypatch):
    """A prior sampled from a truncated start never needs the timesteps above it: train on 1..t_max only."""
    seen: list[int] = []
    real = IRSDE.loss

    def recording(self, net, x0, mu, t, noise):
        seen.extend(int(v) for v in torch.as_tensor(t).flatten())
        return real(self, net, x0, mu, t, noise)

    monkeypatch.setattr(IRSDE, "loss", recording)
    train(aniso, tmp_path / "prior", steps=20, val_every=20, ckpt_every=20, t_max=30)
    assert max(seen) == 30 and min(seen) >= 1, "validation spreads over 1..t_max, training stays in it"
    with pytest.raises(InputError, match=r"t_max must be in \[1, T=100\], got 101"):
        train(aniso, tmp_path / "other", steps=1, t_max=101)


def test_a_deadline_pauses_at_a_checkpoint_and_a_rerun_resumes(tmp_path, aniso):
    import time

    prior_dir = tmp_path / "prior"
    result, lines = train(aniso, prior_dir, steps=5, val_every=5, ckpt_every=5, deadline=time.time() - 1)
    assert result["finished"] is False and result["steps"] == 0
    assert any(line.startswith("paused at step 0 (deadline)") for line in lines)
    assert (prior_dir / "config.json").exists(), "the pause leaves a loadable checkpoint"
    result, lines = train(aniso, prior_dir, steps=5, val_every=5, ckpt_every=5)
    assert result["finished"] is True and result["steps"] == 5 and lines[0].startswith("resuming training of")


def test_the_time_budget_counts_over_resumed_runs(tmp_path, aniso):
    """A rerun of a directory whose budget is spent trains no further: the budget is the training's, not the
    call's (a budgeted batch job that pauses and resumes gets what an uninterrupted one gets)."""
    first, _ = train(aniso, tmp_path / "prior", steps=100000, max_minutes=0.005, warmup=0)
    with open(tmp_path / "prior" / "trainer.json") as f:
        assert json.load(f)["elapsed_s"] > 0.3
    again, lines = train(aniso, tmp_path / "prior", steps=100000, max_minutes=0.005, warmup=0)
    assert again["steps"] == first["steps"]
    assert any(line.startswith(f"time budget of 0.005 min reached at step {first['steps']}") for line in lines)


def test_an_x0_predicting_prior_keeps_its_parametrisation_to_stage_two(tmp_path, aniso):
    from isovol.pipeline.methods.d2r_prior.method import PriorRecovery

    mcfg, sde, tcfg = recipe(steps=3, val_every=3, ckpt_every=3)
    train_prior(aniso, str(tmp_path / "p"), FACTOR, model_config=mcfg, train=tcfg, sde={**sde, "prediction": "x0"},
                device="cpu", log=lambda s: None)
    with open(tmp_path / "p" / "config.json") as f:
        assert json.load(f)["sde"]["prediction"] == "x0"
    assert PriorRecovery(str(tmp_path / "p"))._sde().prediction == "x0"
    with pytest.raises(InputError, match="prediction must be one of"):
        train_prior(aniso, str(tmp_path / "q"), FACTOR, model_config=mcfg, train=tcfg,
                    sde={**sde, "prediction": "v"}, device="cpu", log=lambda s: None)

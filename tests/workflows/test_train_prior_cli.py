"""``isovol train --method d2r-prior`` (D2R's Stage I alone) as a user runs it: a real anisotropic OME-Zarr in, a
prior directory out that a rerun skips and other settings cannot reuse, one summary line; unusable input (a 2-D
image, a region outside the volume or smaller than a patch, a bad factor or recipe) is one ``isovol: error`` line,
a non-zero exit, and nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from clirun import error_line, tree, write_recipe
from clirun import run_isovol as run

from isovol.pipeline.io.omezarr import write_image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, crop) -> dict[str, str]:
    d = tmp_path_factory.mktemp("prior-cli")
    aniso = str(d / "aniso.ome.zarr")
    write_image(aniso, np.ascontiguousarray(crop[::4]), (40.0, 10.0, 10.0))  # (33, 128, 128), r = 4
    flat = str(d / "slice.npy")
    np.save(flat, crop[0])
    steps8 = write_recipe(d / "steps8.yaml", train={"steps": 8})
    steps10 = write_recipe(d / "steps10.yaml", train={"steps": 10})
    return {"dir": str(d), "aniso": aniso, "flat": flat, "steps8": steps8, "steps10": steps10}


def train(inputs, prior, *args, recipe="steps8", quiet=False):
    return run(*(["-q"] if quiet else []), "train", inputs["aniso"], prior, "--method", "d2r-prior", "--factor", 4,
               "--recipe", inputs[recipe], "--region", ":,0:96,:", "--device", "cpu", *args, cwd=inputs["dir"])


def test_train_prior_leaves_a_prior_and_refuses_other_settings(inputs):
    prior = os.path.join(inputs["dir"], "prior")
    res = train(inputs, prior)
    assert res.returncode == 0, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("isovol: train: prior ran ")
    assert "validation PSNR" in last and " vs cubic " in last and last.endswith(f"; model {prior}"), res.stderr
    assert "steps 0..8 on cpu" in res.stderr and "step 8/8" in res.stderr
    with open(os.path.join(prior, "config.json")) as f:
        config = json.load(f)
    assert config["kind"] == "irsde-prior" and config["factor"] == 4 and config["step"] == 8
    assert config["source"]["region"] == [[0, 33], [0, 96], [0, 128]] and config["source"]["shape"] == [33, 96, 128]
    assert config["source"]["dtype"] == "uint8" and config["source"]["url"].endswith("aniso.ome.zarr")
    # the stage's directory, and its published model at the root (what --model PRIOR reads)
    assert sorted(os.listdir(prior)) == ["config.json", "model.safetensors", "prior", "train.json"]
    assert sorted(os.listdir(os.path.join(prior, "prior"))) == ["config.json", "model.safetensors", "trainer.json",
                                                                "trainer.safetensors"]
    before = tree(prior)
    res = train(inputs, prior)
    assert res.returncode == 0, res.stderr
    assert "lateral prior: done in an earlier run" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("isovol: train: prior skipped; validation PSNR")
    assert {k: v for k, v in tree(prior).items() if k != "train.json"} == {
        k: v for k, v in before.items() if k != "train.json"}
    # other steps or another factor in the same directory: refused, naming what changed; nothing changed
    before = tree(prior)
    line = error_line(train(inputs, prior, recipe="steps10", quiet=True))
    assert "lateral prior settings changed since the last run" in line and "(prior.train.steps)" in line
    assert "--restart-from prior" in line
    line = error_line(train(inputs, prior, "--factor", 8, quiet=True))
    assert "lateral prior settings changed since the last run" in line and "(factor)" in line
    assert tree(prior) == before


@pytest.mark.parametrize("args, message", [
    (("{flat}", "--factor", "4"), "is not a 3-D volume (shape (128, 128)); isovol needs (z, y, x)"),
    (("{aniso}", "--factor", "4", "--region", "0:40,:,:"), "--region z range 0:40 lies outside the volume (size 33)"),
    (("{aniso}", "--factor", "4", "--region", "0:33,120:130,:"), "--region y range 120:130 lies outside"),
    (("{aniso}", "--factor", "1"), "factor must be an integer >= 2"),
    (("{aniso}", "--factor", "4", "--recipe", "huge"),
     "neither a d2r-prior recipe (cpu-tiny, cpu-demo, gpu-default) nor a file"),
    (("{aniso}", "--factor", "4", "--recipe", "{stepz}"), "train: unknown key(s) stepz; valid: batch, "),
    (("{aniso}", "--factor", "4", "--region", "0:33,0:20,:"), "smaller than a 33x33 training patch"),
])
def test_unusable_requests_are_one_line(inputs, tmp_path, args, message):
    prior = tmp_path / "prior"
    stepz = write_recipe(tmp_path / "stepz.yaml", train={"stepz": 8})
    args = [a.format(stepz=stepz, **inputs) for a in args]
    recipe = [] if "--recipe" in args else ["--recipe", inputs["steps8"]]
    line = error_line(run("-q", "train", args[0], prior, "--method", "d2r-prior", *args[1:], *recipe, "--device",
                          "cpu", cwd=tmp_path))
    assert message in line, line
    assert not prior.exists(), "nothing is created for a refused request"

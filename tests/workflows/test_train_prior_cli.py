"""``isovol train-prior`` as a user runs it: a real anisotropic OME-Zarr in, a resumable prior directory out,
one summary line; unusable input (a 2-D image, a region outside the volume, a bad factor or recipe) is one
``isovol: error`` line, a non-zero exit, and nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from clirun import error_line
from clirun import run_isovol as run

from isovol.pipeline.io.omezarr import write_image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, crop) -> dict[str, str]:
    d = tmp_path_factory.mktemp("prior-cli")
    aniso = str(d / "aniso.ome.zarr")
    write_image(aniso, np.ascontiguousarray(crop[::4]), (40.0, 10.0, 10.0))  # (33, 128, 128), r = 4
    flat = str(d / "slice.npy")
    np.save(flat, crop[0])
    return {"dir": str(d), "aniso": aniso, "flat": flat}


def test_train_prior_leaves_a_prior_and_resumes(inputs):
    prior = os.path.join(inputs["dir"], "prior")
    res = run("train-prior", inputs["aniso"], prior, "--factor", 4, "--config", "tiny", "--steps", 8,
              "--region", ":,0:96,:", "--device", "cpu", cwd=inputs["dir"])
    assert res.returncode == 0, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("isovol: trained 8 steps in ") and f"prior {prior} sha256 " in last, res.stderr
    assert "restoration PSNR" in last and "(cubic " in last
    with open(os.path.join(prior, "config.json")) as f:
        config = json.load(f)
    assert config["kind"] == "irsde-prior" and config["factor"] == 4 and config["step"] == 8
    assert config["source"]["region"] == [[0, 33], [0, 96], [0, 128]] and config["source"]["shape"] == [33, 96, 128]
    assert config["source"]["dtype"] == "uint8" and config["source"]["url"].endswith("aniso.ome.zarr")
    assert sorted(os.listdir(prior)) == ["config.json", "model.safetensors", "trainer.json", "trainer.safetensors"]
    res = run("train-prior", inputs["aniso"], prior, "--factor", 4, "--config", "tiny", "--steps", 10,
              "--region", ":,0:96,:", "--device", "cpu", cwd=inputs["dir"])
    assert res.returncode == 0, res.stderr
    assert f"resuming training of {prior} at step 8" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("isovol: trained 10 steps")
    # another factor in the same directory: refused, nothing changed
    before = {f: os.stat(os.path.join(prior, f)).st_mtime_ns for f in os.listdir(prior)}
    line = error_line(run("train-prior", inputs["aniso"], prior, "--factor", 8, "--config", "tiny", "--steps", 10,
                          "--region", ":,0:96,:", "--device", "cpu", cwd=inputs["dir"]))
    assert "trained with other settings (factor)" in line
    assert {f: os.stat(os.path.join(prior, f)).st_mtime_ns for f in os.listdir(prior)} == before


@pytest.mark.parametrize("args, message", [
    (("{flat}", "--factor", "4"), "is not a 3-D volume (shape (128, 128)); isovol needs (z, y, x)"),
    (("{aniso}", "--factor", "4", "--region", "0:40,:,:"), "--region z range 0:40 lies outside the volume (size 33)"),
    (("{aniso}", "--factor", "4", "--region", "0:33,120:130,:"), "--region y range 120:130 lies outside"),
    (("{aniso}", "--factor", "1"), "factor must be an integer >= 2"),
    (("{aniso}", "--factor", "4", "--config", "huge"), "neither a recipe (tiny, default) nor a file"),
    (("{aniso}", "--factor", "4", "--steps", "0"), "--steps must be positive"),
    (("{aniso}", "--factor", "4", "--region", "0:33,0:20,:"), "smaller than a 33x33 training patch"),
])
def test_unusable_requests_are_one_line(inputs, tmp_path, args, message):
    prior = tmp_path / "prior"
    args = [a.format(**inputs) for a in args]
    recipe = [] if "--config" in args else ["--config", "tiny"]
    line = error_line(run("train-prior", args[0], prior, *args[1:], *recipe, "--device", "cpu", cwd=tmp_path))
    assert message in line, line
    assert not prior.exists(), "nothing is created for a refused request"

"""`isovol upsample --method inr` as a user runs it: the fit-block layout, one-line refusals, and a killed run that
resumes to the bits of an uninterrupted one.  The prior is the closed-form Gaussian one in a model directory, so
these run without a trained diffusion model; `isovol train --method inr` (MSDSR's trainer) runs where msdsr is."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from clirun import error_line, read_output
from test_resume import done_markers, start_and_kill, summary_counts

from isovol.pipeline.methods.inr.prior import save_gaussian

FACTOR = 4
FIT = {"fit": {"steps": 3, "planes": 2, "points": 512, "lr": 0.02},
       "field": {"spacings": [4, 2], "features": 2, "hidden": 8, "layers": 1}, "block": 16, "overlap": 4}
BLOCK = "16,16,16"  # 17 x 32 x 48 output -> 2 x 2 x 3 = 12 blocks, one fit block each
TOTAL = 12


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[:17:FACTOR, :32, :48])


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory, volume) -> str:
    path = str(tmp_path_factory.mktemp("prior") / "gaussian")
    save_gaussian(path, float(volume.mean()) / 127.5 - 1, float(volume.std()) / 127.5, inr=FIT)
    return path


@pytest.mark.slow  # three CLI runs with their clusters: about a minute
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, volume, source, prior_dir, cli, isovol_exe,
                                                         monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the killed run's torch threads: those of the other runs
    args = ["upsample", source, "--factor", str(FACTOR), "--block-shape", BLOCK, "--method", "inr", "--model",
            prior_dir, "--workers", "1", "--no-pyramid"]
    out = tmp_path / "out.ome.zarr"
    before = start_and_kill([isovol_exe, args[0], args[1], str(out), *args[2:]], out, min_markers=3, cwd=tmp_path)
    assert 3 <= len(before) < TOTAL, f"the run was not interrupted ({len(before)}/{TOTAL} blocks done)"
    resumed = cli(args[0], args[1], out, *args[2:], "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    total, done, skipped, failed = summary_counts(resumed.stderr)
    assert (total, skipped, failed) == (TOTAL, len(before), 0)
    assert {k: v for k, v in done_markers(out).items() if k in before} == before
    clean = tmp_path / "clean.ome.zarr"
    once = cli(args[0], args[1], clean, *args[2:], cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    result = read_output(out)
    assert np.array_equal(result, read_output(clean)), "a resumed run must equal an uninterrupted one"
    assert result.shape == (17, 32, 48) and np.array_equal(result[::FACTOR], volume)  # measured slices kept


def test_a_block_shape_off_the_fit_grid_is_rounded_up(tmp_path, source, prior_dir, cli):
    res = cli("plan", source, "--factor", FACTOR, "--block-shape", "8,20,20", "--method", "inr", "--model",
              prior_dir, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["block_shape"] == [16, 32, 32]  # 8,20,20 rounded up to the 16-voxel grid


@pytest.mark.parametrize("extra, says", [
    ([], "needs --model"),
    (["--model", "MODEL", "--option", "stepz=3"], "unknown option(s) stepz"),
    (["--model", "MODEL", "--option", "t_range=[0.5, 0.1]"], "t_range"),
    (["--model", "NOWHERE"], "not found"),
])
def test_refusals_are_one_line(tmp_path, source, prior_dir, cli, extra, says):
    extra = [prior_dir if e == "MODEL" else str(tmp_path / "nowhere") if e == "NOWHERE" else e for e in extra]
    res = cli("upsample", source, tmp_path / "o.ome.zarr", "--factor", FACTOR, "--method", "inr", *extra)
    assert says in error_line(res)
    assert not (tmp_path / "o.ome.zarr").exists()


def test_methods_lists_inr(cli):
    rows = {r["name"]: r for r in json.loads(cli("methods", "--json").stdout)}
    assert rows["inr"]["kind"] == "fitted per block" and rows["inr"]["needs_model"]
    assert rows["inr"]["recipes"] == ["cpu-tiny", "cpu-demo", "gpu-default"]


@pytest.mark.skipif(importlib.util.find_spec("isovol.pipeline.methods.msdsr") is None,
                    reason="the INR prior is an MSDSR model; msdsr is not in this tree")
def test_train_then_upsample(tmp_path, source, cli):
    model = tmp_path / "model"
    res = cli("train", source, model, "--factor", FACTOR, "--method", "inr", "--recipe", "cpu-tiny", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    config = json.loads((model / "config.json").read_text())
    assert config["kind"] == "msdsr" and config["inr"]["block"] == [16, 16, 16]
    out = tmp_path / "out.ome.zarr"
    res = cli("upsample", source, out, "--factor", FACTOR, "--method", "inr", "--model", model, "--no-pyramid")
    assert res.returncode == 0, res.stderr
    assert read_output(out).shape == (17, 32, 48)

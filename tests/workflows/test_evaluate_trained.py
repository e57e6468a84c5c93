"""`isovol evaluate` training d2r and naive-lateral itself, on the decimated input only: wall time per stage in
metrics.json and the report, models cached under REPORT so a rerun resumes instead of retraining."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import yaml
from clirun import run_isovol, write_recipe

from isovol.pipeline.io.omezarr import write_image

FACTOR = 8


def run(*args) -> subprocess.CompletedProcess:
    return run_isovol(*args, timeout=600)


@pytest.fixture(scope="module")
def setup(crop, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("evaltrain")
    gt = str(d / "gt.ome.zarr")
    write_image(gt, np.ascontiguousarray(crop[:41, :64, :64]), (10.0, 10.0, 10.0))  # 6 slices kept at r = 8
    # cpu-tiny cut down further: a smoke test of the flow, not a model; each method reads its own recipe book
    dgean = {"steps": 4, "val_every": 4, "ckpt_every": 2, "val_windows": 4}
    (d / "d2r").mkdir()
    (d / "lateral").mkdir()
    recipe = write_recipe(d / "d2r" / "fast.yaml", prior={"train": {"steps": 6, "val_every": 6, "ckpt_every": 6}},
                          dgean={"train": dgean})
    lateral = write_recipe(d / "lateral" / "fast.yaml", train=dgean)
    return {"gt": gt, "recipe": recipe, "lateral": lateral, "out": str(d / "report")}


def evaluate(setup) -> subprocess.CompletedProcess:
    return run("evaluate", setup["gt"], "--factor", FACTOR, "--method", f"d2r:{setup['recipe']}",
               "--method", f"naive-lateral:{setup['lateral']}", "--out", setup["out"], "--workers", 2, "--device",
               "cpu", "--no-progress")


@pytest.fixture(scope="module")
def first(setup) -> subprocess.CompletedProcess:
    res = evaluate(setup)
    assert res.returncode == 0, res.stderr
    return res


def test_trained_rows_carry_wall_time_per_stage(setup, first):
    metrics = json.load(open(os.path.join(setup["out"], "metrics.json")))
    assert list(metrics) == ["cubic", "linear", "d2r:fast", "naive-lateral:fast"]
    d2r, lateral = metrics["d2r:fast"]["train"], metrics["naive-lateral:fast"]["train"]
    assert list(d2r["stages_s"]) == ["prior", "recover", "dgean"] and all(v > 0 for v in d2r["stages_s"].values())
    assert d2r["total_s"] == pytest.approx(sum(d2r["stages_s"].values()), abs=0.02)
    assert list(lateral["stages_s"]) == ["dgean"] and lateral["total_s"] > 0
    for row, recipe in ((d2r, setup["recipe"]), (lateral, setup["lateral"])):
        assert row["recipe"] == recipe and "decimated input (6 slices" in row["trained_on"]
    assert "train" not in metrics["cubic"]
    md = open(os.path.join(setup["out"], "report.md")).read()
    assert "## Training (self-supervised)" in md and "on the decimated input only" in md
    assert "| `naive-lateral:fast` | " in md


def test_models_were_trained_on_the_decimated_input_only(setup, first):
    models = os.path.join(setup["out"], "models", f"r{FACTOR}")
    state = json.load(open(os.path.join(models, "d2r_fast", "train.json")))
    assert state["input"]["shape"] == [6, 64, 64] and state["input"]["url"].endswith("work/input.ome.zarr")
    config = json.load(open(os.path.join(models, "naive-lateral_fast", "dgean", "config.json")))
    assert config["sampling"] == "lateral" and config["source"]["shape"] == [6, 64, 64]
    assert config["isotropic"] is False and config["step"] == 4


def test_rerun_resumes_instead_of_retraining(setup, first):
    before = json.load(open(os.path.join(setup["out"], "metrics.json")))
    res = evaluate(setup)
    assert res.returncode == 0, res.stderr
    assert "Stage III (DGEAN): done in an earlier run" in res.stderr
    assert "INFO: DGEAN: done in an earlier run" in res.stderr, "naive-lateral's one stage is not trained again"
    assert "DGEAN): starting" not in res.stderr and "INFO: DGEAN: starting" not in res.stderr
    after = json.load(open(os.path.join(setup["out"], "metrics.json")))
    for key in ("d2r:fast", "naive-lateral:fast"):
        assert after[key]["train"] == before[key]["train"]
        assert after[key]["XY"] == before[key]["XY"]


def test_trained_methods_need_self_supervision(setup, tmp_path):
    res = run("evaluate", setup["gt"], "--factor", FACTOR, "--method", "d2r", "--no-self-supervised", "--out",
              tmp_path / "r")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        "isovol: error: d2r would be trained here, on the decimated input only (--self-supervised)")
    res = run("evaluate", setup["gt"], "--factor", FACTOR, "--method", "d2r:no-such", "--out", tmp_path / "s")
    assert res.returncode == 2 and "neither a d2r recipe (cpu-tiny, cpu-demo, gpu-default) nor a file" in res.stderr


def test_another_factor_into_the_same_report_trains_its_own_models(setup, first):
    """A model serves the factor it was trained for: --factor 4 after 8 trains anew beside it, not over it."""
    res = run("evaluate", setup["gt"], "--factor", 4, "--method", f"d2r:{setup['recipe']}", "--out", setup["out"],
              "--workers", 2, "--device", "cpu", "--no-progress")
    assert res.returncode == 0, res.stderr
    models = os.path.join(setup["out"], "models")
    assert sorted(os.listdir(models)) == ["r4", "r8"]
    assert json.load(open(os.path.join(models, "r4", "d2r_fast", "train.json")))["factor"] == 4
    assert json.load(open(os.path.join(models, "r8", "d2r_fast", "train.json")))["factor"] == FACTOR


def test_a_changed_recipe_under_the_same_name_is_one_line_that_says_what_to_do(setup, first, tmp_path):
    """The cached model no longer matches: evaluate has no --restart-from, so it names the folder to delete."""
    recipe = yaml.safe_load(open(setup["recipe"]))
    recipe.setdefault("recover", {})["seed"] = 7
    changed = tmp_path / "fast.yaml"  # same name, so the same cache key d2r_fast
    changed.write_text(yaml.safe_dump(recipe))
    res = run("evaluate", setup["gt"], "--factor", FACTOR, "--method", f"d2r:{changed}", "--out", setup["out"],
              "--workers", 2, "--device", "cpu", "--no-progress")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]  # after the progress lines, the one error line
    assert line.startswith("isovol: error") and "Stage II (lateral recovery) settings changed" in line
    assert "recover.seed" in line
    assert "r8/d2r_fast or use a new --out" in line and "--restart-from" not in line

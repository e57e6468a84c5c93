"""`isovol train` end to end with the cpu-tiny recipe on the bundled real crop decimated by 8: the MODEL_DIR
serves `isovol upsample --method dgean`, a rerun skips every stage, a changed stage refuses and names itself,
--restart-from reruns that stage and the later ones only, a killed run resumes at the stage it was killed in,
and unusable requests are one error line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from clirun import ISOVOL, error_line, tree, write_recipe
from clirun import ONE_THREAD as ENV
from clirun import run_isovol as run
from test_golden import level0_sha256, tensors_sha256, torch_golden

from isovol.pipeline.io.omezarr import write_image
from isovol.workflows.train_stages import default_region

R = 8


def summary(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("isovol: train:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory, crop) -> str:
    url = str(tmp_path_factory.mktemp("train_in") / "in.ome.zarr")
    write_image(url, np.ascontiguousarray(crop[::R]), (80.0, 10.0, 10.0))  # (17, 128, 128) uint8
    return url


@pytest.fixture(scope="module")
def trained(tmp_path_factory, source) -> tuple[str, subprocess.CompletedProcess]:
    model = str(tmp_path_factory.mktemp("train") / "model")
    res = run("train", source, model, "--factor", R, "--recipe", "cpu-tiny", "--workers", 2)
    assert res.returncode == 0, res.stderr
    return model, res


@pytest.fixture(scope="module")
def upsampled(tmp_path_factory, trained, source) -> tuple[str, subprocess.CompletedProcess]:
    """The trained model's `isovol upsample --method dgean` of its own input, run once for the module."""
    out = str(tmp_path_factory.mktemp("dgean") / "up.ome.zarr")
    res = run("upsample", source, out, "--factor", R, "--method", "dgean", "--model", trained[0], "--workers", 1,
              "--no-progress")
    return out, res


def test_train_produces_a_model_that_upsample_accepts(trained, upsampled):
    model, res = trained
    assert "no --region given: training on the whole of" in res.stderr
    assert summary(res.stderr).startswith("isovol: train: prior ran")
    assert "recover ran" in res.stderr and "dgean ran" in res.stderr and "validation PSNR" in res.stderr
    for name in ("model.safetensors", "config.json", "train.json", "prior/model.safetensors",
                 "pseudo.ome.zarr/zarr.json"):
        assert os.path.exists(os.path.join(model, name)), name
    state = json.load(open(os.path.join(model, "train.json")))
    assert state["recipe"] == "cpu-tiny" and state["region"] == [[0, 17], [0, 128], [0, 128]]
    assert all(state["stages"][s]["done"] and state["stages"][s]["seconds"] > 0 for s in ("prior", "recover", "dgean"))
    assert len({state["stages"][s]["hash"] for s in ("prior", "recover", "dgean")}) == 3
    up = upsampled[1]
    assert up.returncode == 0, up.stderr


def test_seeded_cpu_tiny_run_matches_the_golden_outputs(trained, upsampled):
    """`train --recipe cpu-tiny` is seeded per step: on the recording's torch version, CPU capability and CPU
    vendor, each stage's output and the upsampled volume are the bytes recorded (on AMD before the method-registry
    refactor; on Intel later, golden.json says when)."""
    golden, reason = torch_golden("d2r_cpu_tiny")
    if golden is None:
        pytest.skip(reason)
    model = trained[0]
    out, up = upsampled
    assert up.returncode == 0, up.stderr
    assert tensors_sha256(os.path.join(model, "prior", "model.safetensors")) == golden["prior_tensors_sha256"], \
        "Stage I (prior) changed"
    assert level0_sha256(os.path.join(model, "pseudo.ome.zarr"))[0] == golden["pseudo_level0_sha256"], \
        "Stage II (pseudo-isotropic volume) changed"
    assert tensors_sha256(os.path.join(model, "model.safetensors")) == golden["model_tensors_sha256"], \
        "Stage III (DGEAN model) changed"
    digest, shape, dtype = level0_sha256(out)
    assert (shape, dtype) == (golden["shape"], golden["dtype"])
    assert digest == golden["dgean_level0_sha256"], "the dgean upsample of the unchanged model changed"


def test_rerun_skips_every_stage(trained, source):
    model, _ = trained
    before = {k: v for k, v in tree(model).items() if k != "train.json"}
    res = run("train", source, model, "--factor", R, "--recipe", "cpu-tiny")
    assert res.returncode == 0, res.stderr
    assert "prior skipped, recover skipped, dgean skipped" in summary(res.stderr)
    assert {k: v for k, v in tree(model).items() if k != "train.json"} == before


def _start(log_path, *args) -> subprocess.Popen:
    f = open(log_path, "w")
    return subprocess.Popen([ISOVOL, *map(str, args)], stdout=f, stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True)


def _wait(p: subprocess.Popen, log_path, until, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if until(open(log_path).read()):
            return
        assert p.poll() is None, f"finished before the kill point:\n{open(log_path).read()}"
        time.sleep(0.05)
    raise AssertionError(f"kill point not reached:\n{open(log_path).read()}")


def _kill(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)


def test_changed_stage_refuses_restart_and_kills_resume(trained, source, tmp_path):
    """A changed recover seed names Stage II and --restart-from; the restart is killed in Stage II; the identical
    command (a requeued batch job) goes on with the restart, resuming Stage II, and is killed in Stage III; a rerun
    without --restart-from resumes Stage III; Stage I is never touched."""
    model = str(tmp_path / "model")
    shutil.copytree(trained[0], model)  # copy2: mtimes kept
    prior_files = tree(os.path.join(model, "prior"))
    path = write_recipe(tmp_path / "seed1.yaml", recover={"seed": 1})
    args = ["train", source, model, "--factor", R, "--recipe", path, "--workers", 2]

    line = error_line(run(*args))
    assert "Stage II" in line and "recover.seed" in line and "--restart-from recover" in line

    log1 = tmp_path / "1.log"
    p = _start(log1, *args, "--restart-from", "recover")
    _wait(p, log1, lambda t: "pseudo.ome.zarr: 2 blocks, 0 already done" in t)
    _kill(p)
    text = open(log1).read()
    assert "Stage I (lateral prior): done in an earlier run" in text and "Stage III" not in text
    assert not os.path.exists(os.path.join(model, "model.safetensors"))  # the old Stage III model is gone

    log2 = tmp_path / "2.log"
    p = _start(log2, *args, "--restart-from", "recover")
    _wait(p, log2, lambda t: "Stage III (DGEAN): starting" in t
          and os.path.exists(os.path.join(model, "dgean", "trainer.json")))
    _kill(p)
    text = open(log2).read()
    assert "--restart-from recover: the restart begun by an earlier run with these settings goes on" in text
    assert "deleting the outputs" not in text
    assert "Stage I (lateral prior): done in an earlier run" in text
    assert "Stage II (lateral recovery): resuming" in text
    assert not json.load(open(os.path.join(model, "train.json")))["stages"]["dgean"]["done"]

    res = run(*args)
    assert res.returncode == 0, res.stderr
    assert "Stage III (DGEAN): resuming" in res.stderr and "resuming training of" in res.stderr
    assert "prior skipped, recover skipped, dgean ran" in summary(res.stderr)
    assert tree(os.path.join(model, "prior")) == prior_files
    state = json.load(open(os.path.join(model, "train.json")))
    assert state["recipe_settings"]["recover"]["seed"] == 1 and state["stages"]["dgean"]["done"]
    assert "restart" not in state  # done: the same --restart-from would now redo Stage II


def test_a_kill_while_a_restart_deletes_leaves_stages_that_start_afresh(trained, source, tmp_path, monkeypatch):
    """train.json drops the restarted stages before their files go, so a kill mid-delete never leaves a stage
    marked done with half its files; the plain rerun redoes them from scratch."""
    from isovol.workflows import train

    model = str(tmp_path / "model")
    shutil.copytree(trained[0], model)
    real = os.remove

    def killed(path):
        if path.endswith("model.safetensors"):
            raise KeyboardInterrupt  # the published weights: its config.json is already gone
        real(path)

    monkeypatch.setattr(os, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        train.run_train(source, model, R, recipe="cpu-tiny", restart_from="recover", workers=1, processes=False)
    monkeypatch.setattr(os, "remove", real)
    state = json.load(open(os.path.join(model, "train.json")))
    assert set(state["stages"]) == {"prior"} and state["restart"]["stage"] == "recover"
    assert not os.path.exists(os.path.join(model, "config.json")), "a half-deleted model is never loadable"
    # the files of the restarted stages are still there, but no longer marked done
    assert os.path.exists(os.path.join(model, "model.safetensors"))
    assert os.path.exists(os.path.join(model, "pseudo.ome.zarr", "zarr.json"))
    result = train.run_train(source, model, R, recipe="cpu-tiny", workers=1, processes=False)
    assert {s: r["ran"] for s, r in result["stages"].items()} == {"prior": False, "recover": True, "dgean": True}
    assert "restart" not in json.load(open(os.path.join(model, "train.json")))


def test_only_temporary_files_do_not_make_a_directory_foreign(tmp_path):
    """A kill inside the first atomic write of train.json leaves only its temporary file: not a foreign folder."""
    from isovol.workflows.train import _load_state

    (tmp_path / ".tmp-abc123").write_bytes(b"{")
    assert _load_state(str(tmp_path)) is None
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an `isovol train` directory"):
        _load_state(str(tmp_path))


def test_bad_requests_are_one_error_line(tmp_path, source):
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((64, 64), np.uint8))
    assert error_line(run("train", flat, tmp_path / "a", "--factor", R, "--recipe", "cpu-tiny"))
    line = error_line(run("train", source, tmp_path / "b", "--factor", R, "--recipe", "cpu-tiny",
                          "--region", "0:17,0:500,0:128"))
    assert "outside" in line
    line = error_line(run("train", source, tmp_path / "c", "--factor", R, "--recipe", "no-such-recipe"))
    assert "cpu-tiny" in line and "gpu-default" in line
    assert not any(os.path.exists(tmp_path / d) for d in "bc")


def test_default_region_is_about_256_cubed():
    assert default_region((17, 128, 128), 8) == ((slice(0, 17), slice(0, 128), slice(0, 128)), False)
    box, cut = default_region((200, 2000, 3000), 8)
    shape = [b.stop - b.start for b in box]
    out = (shape[0] - 1) * 8 + 1
    assert cut and 0.8 * 256**3 <= out * shape[1] * shape[2] <= 256**3
    assert all(0 <= b.start and b.stop <= n for b, n in zip(box, (200, 2000, 3000)))
    assert abs(box[2].start - (3000 - box[2].stop)) <= 1  # centred


def test_bundled_recipes_resolve_and_unknown_keys_are_refused(tmp_path):
    """The D2R recipes `isovol train` reads (every method's book: tests/pipeline/methods/test_recipes.py)."""
    from isovol.pipeline.errors import InputError
    from isovol.pipeline.methods import registry
    from isovol.workflows.train import recipe_names

    assert recipe_names() == ["cpu-tiny", "cpu-demo", "gpu-default"]
    book = registry.trainable("d2r").training.book
    demo = book.load("cpu-demo")[1].to_dict()
    assert demo["prior"]["sde"]["prediction"] == "x0" and demo["recover"]["t_start"] <= demo["prior"]["train"]["t_max"]
    gpu = book.load("gpu-default")[1].to_dict()
    assert gpu["recover"]["steps"] == 5 and gpu["prior"]["train"]["max_minutes"] == 4
    assert gpu["dgean"]["train"]["max_minutes"] == 10
    spec = book.load("cpu-tiny")[1].to_dict()
    path = tmp_path / "bad.yaml"
    for bad in ({**spec, "extra": {}}, {**spec, "recover": {**spec["recover"], "sed": 1}},
                {k: v for k, v in spec.items() if k != "dgean"}):
        write_recipe(path, None, **bad)
        with pytest.raises(InputError):
            book.load(str(path))
    write_recipe(path, prior={"train": {"t_max": 20}})
    with pytest.raises(InputError, match="recover starts at t=25 but the prior trains on t <= 20 only"):
        book.load(str(path))


def test_cluster_options_reach_stage_two(tmp_path, source, monkeypatch):
    """`isovol train --cluster/--cluster-config` go to Stage II's executor run; a bad config is refused first."""
    from click.testing import CliRunner

    from isovol.pipeline.errors import InputError
    from isovol.pipeline.methods.d2r_prior import trainer
    from isovol.workflows import upsample
    from isovol.workflows.cli import cli

    seen: dict[str, object] = {}

    def fake_upsample(req, client=None):
        seen.update(cluster=req.cluster, cluster_config=req.cluster_config, method=req.method)
        raise InputError("stopped before any block ran")

    def fake_prior(*args, **kwargs):  # Stage I done at once
        seen["prior"] = True
        return {"finished": True, "history": [{}]}

    monkeypatch.setattr(trainer, "train_prior", fake_prior)
    monkeypatch.setattr(upsample, "upsample", fake_upsample)
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("jobs: 3\n")
    res = CliRunner().invoke(cli, ["train", source, str(tmp_path / "m"), "--factor", str(R), "--recipe", "cpu-tiny",
                                   "--cluster", "slurm", "--cluster-config", str(cfg)])
    assert "stopped before any block ran" in str(res.exception)
    assert seen == {"prior": True, "cluster": "slurm", "cluster_config": str(cfg), "method": "d2r-prior"}

    seen.clear()
    cfg.write_text("jbos: 3\n")
    res = CliRunner().invoke(cli, ["train", source, str(tmp_path / "n"), "--factor", str(R), "--recipe", "cpu-tiny",
                                   "--cluster", "slurm", "--cluster-config", str(cfg)])
    assert isinstance(res.exception, InputError) and "unknown key(s) 'jbos'" in str(res.exception)
    assert not seen and not (tmp_path / "n").exists()


def test_a_deadline_pauses_before_a_stage_without_room(trained, source, tmp_path):
    """Budgeted batch calls: a passed deadline starts nothing (and says where a rerun resumes); a finished
    MODEL_DIR has nothing left to pause."""
    from isovol.workflows.train import run_train

    fresh = str(tmp_path / "m")
    result = run_train(source, fresh, R, recipe="cpu-tiny", workers=1, deadline=0.0, processes=False)
    assert result["paused"] == "prior" and "paused at prior (deadline)" in result["line"]
    assert not os.path.exists(os.path.join(fresh, "prior"))
    done = run_train(source, trained[0], R, recipe="cpu-tiny", workers=1, deadline=0.0, processes=False)
    assert done["paused"] is None and all(not r["ran"] for r in done["stages"].values())


def test_a_deadline_pauses_inside_stage_one_and_a_rerun_finishes_it_within_its_budget(source, tmp_path,
                                                                                         monkeypatch):
    """Stage I pauses at the deadline with a checkpoint (so a budgeted call needs no room for all of Stage I up
    front); the rerun resumes it and its time budget counts both runs."""
    from isovol.workflows import train as train_mod

    recipe = write_recipe(tmp_path / "long-prior.yaml", prior={"train": {"steps": 10**6, "max_minutes": 0.05,
                                                                         "ckpt_every": 10**6, "val_every": 10**6}})
    monkeypatch.setattr(train_mod, "_room", lambda stage: 0.0)  # start Stage I however close the deadline is
    model = str(tmp_path / "m")
    first = train_mod.run_train(source, model, R, recipe=str(recipe), workers=1, deadline=time.time() + 1.0,
                                processes=False)
    assert first["paused"] == "prior" and first["stages"]["prior"]["ran"]
    with open(os.path.join(model, "prior", "trainer.json")) as f:
        paused_at = json.load(f)
    assert 0 < paused_at["elapsed_s"] < 3.0, "paused before its 3 s budget was spent"
    second = train_mod.run_train(source, model, R, recipe=str(recipe), workers=1, processes=False)
    assert second["paused"] is None and all(r["ran"] for r in second["stages"].values())
    with open(os.path.join(model, "prior", "trainer.json")) as f:
        done = json.load(f)
    assert done["step"] > paused_at["step"] and 3.0 <= done["elapsed_s"] < 3.0 + 10.0
    assert os.path.isfile(os.path.join(model, "model.safetensors"))


def test_a_killed_stage_keeps_the_time_it_ran(tmp_path, source, monkeypatch):
    """train.json holds a running stage's seconds as it goes, so a killed run's time still counts in the report."""
    from isovol.pipeline.methods.d2r_prior import trainer
    from isovol.workflows import train

    model = str(tmp_path / "model")

    def saved_seconds() -> float:
        return json.load(open(os.path.join(model, "train.json")))["stages"]["prior"]["seconds"]

    def killed_once_the_clock_has_saved(*args, **kwargs):
        start = saved_seconds()
        for _ in range(2000):  # the clock ticks every 10 ms here; give up (and fail below) after 20 s
            if saved_seconds() > start:
                break
            time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "CLOCK_S", 0.01)
    monkeypatch.setattr(trainer, "train_prior", killed_once_the_clock_has_saved)
    with pytest.raises(KeyboardInterrupt):
        train.run_train(source, model, R, recipe="cpu-tiny", workers=1, processes=False)
    first = saved_seconds()
    assert first > 0, "the killed run's time was lost"
    with pytest.raises(KeyboardInterrupt):  # the next run adds its own time to it
        train.run_train(source, model, R, recipe="cpu-tiny", workers=1, processes=False)
    assert saved_seconds() > first

"""The ``isovol`` command as a user meets it: one clear stderr line per mistake, nothing left behind."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import zarr
from clirun import error_line

from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import get_method, upsample_array

FACTOR = 8


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR, :64, :64])  # (17, 64, 64)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, volume) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    zarr_in = str(d / "in.ome.zarr")
    write_image(zarr_in, volume, (80.0, 10.0, 10.0))
    np.save(d / "flat.npy", volume[0])
    np.save(d / "stack.npy", volume)
    (d / "somefile.txt").write_text("not a folder")
    return {"zarr": zarr_in, "flat": str(d / "flat.npy"), "npy": str(d / "stack.npy"),
            "file": str(d / "somefile.txt")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, inputs, client) -> str:
    """A complete output, made through the API."""
    from isovol.workflows.upsample import UpsampleRequest, upsample

    out = str(tmp_path_factory.mktemp("finished") / "out.ome.zarr")
    assert upsample(UpsampleRequest(input=inputs["zarr"], output=out, factor=FACTOR, block_shape=(64, 32, 32),
                                    progress=False), client=client).ok
    return out


BAD = [
    ("missing-input", ["{missing}", "{out}", "--factor", "8"], "input not found"),
    ("2d-npy", ["{flat}", "{out}", "--factor", "8", "--voxel-size", "80,10,10"], "not a 3-D volume"),
    ("unknown-method", ["{zarr}", "{out}", "--factor", "8", "--method", "bicubic"], "unknown method 'bicubic'"),
    ("factor-1", ["{zarr}", "{out}", "--factor", "1"], "factor must be an integer >= 2"),
    ("factor-0", ["{zarr}", "{out}", "--factor", "0"], "factor must be an integer >= 2"),
    ("factor-2.5", ["{zarr}", "{out}", "--factor", "2.5"], "non-integer"),
    ("factor-abc", ["{zarr}", "{out}", "--factor", "abc"], "factor must be an integer >= 2, got 'abc'"),
    ("no-factor", ["{zarr}", "{out}"], "--factor"),
    ("bad-json", ["{zarr}", "{out}", "--factor", "8", "--storage-options", "{anon: true"], "not valid JSON"),
    ("json-not-object", ["{zarr}", "{out}", "--factor", "8", "--storage-options", "[1, 2]"], "JSON object"),
    ("voxel-2", ["{zarr}", "{out}", "--factor", "8", "--voxel-size", "80,10"], "--voxel-size"),
    ("voxel-text", ["{zarr}", "{out}", "--factor", "8", "--voxel-size", "a,b,c"], "--voxel-size"),
    ("voxel-zero", ["{zarr}", "{out}", "--factor", "8", "--voxel-size", "0,10,10"], "--voxel-size"),
    ("voxel-negative", ["{zarr}", "{out}", "--factor", "8", "--voxel-size", "80,-10,10"], "--voxel-size"),
    ("no-voxel-size", ["{npy}", "{out}", "--factor", "8"], "no voxel size; pass --voxel-size"),
    ("bad-block", ["{zarr}", "{out}", "--factor", "8", "--block-shape", "16,0,16"], "--block-shape"),
    ("block-not-shard-multiple", ["{zarr}", "{out}", "--factor", "8", "--block-shape", "16,32,32",
                                  "--shard-shape", "10,32,32"], "whole multiple"),
    ("resume-and-overwrite", ["{zarr}", "{out}", "--factor", "8", "--resume", "--overwrite"], "exclude each other"),
    ("unknown-option", ["{zarr}", "{out}", "--factor", "8", "--fast"], "No such option"),
]


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_line(tmp_path, inputs, cli, name, args, message):
    out = tmp_path / "out.ome.zarr"
    values = {**inputs, "out": str(out), "missing": str(tmp_path / "nothing.zarr")}
    res = cli("upsample", *[a.format(**values) if a.startswith("{") and a.endswith("}") and a[1:-1] in values
                            else a for a in args], cwd=tmp_path)
    line = error_line(res)
    assert message in line
    assert not out.exists(), "a refused run must create nothing"
    assert os.listdir(tmp_path) == [], "a refused run must leave nothing anywhere"


def test_existing_output_is_refused_and_untouched(tmp_path, inputs, finished, cli, snapshot):
    before = snapshot(finished)
    line = error_line(cli("upsample", inputs["zarr"], finished, "--factor", FACTOR, "--method", "linear",
                          cwd=tmp_path))
    assert "exists" in line and "--resume" in line and "--overwrite" in line
    assert snapshot(finished) == before


def test_overwrite_refuses_a_foreign_folder(tmp_path, inputs, cli, snapshot):
    folder = tmp_path / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.csv").write_text("1,2,3\n")
    before = snapshot(folder)
    line = error_line(cli("upsample", inputs["zarr"], folder, "--factor", FACTOR, "--overwrite", cwd=tmp_path))
    assert "not an isovol output" in line
    assert snapshot(folder) == before


def test_overwrite_refuses_a_foreign_file(tmp_path, inputs, cli):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    line = error_line(cli("upsample", inputs["zarr"], target, "--factor", FACTOR, "--overwrite", cwd=tmp_path))
    assert "not an isovol output" in line
    assert target.read_text() == "keep me"


def test_output_under_a_regular_file(tmp_path, inputs, cli):
    """Unwritable for everyone, root included: a path below a regular file."""
    before = open(inputs["file"]).read()
    out = os.path.join(inputs["file"], "out.ome.zarr")
    line = error_line(cli("upsample", inputs["zarr"], out, "--factor", FACTOR, cwd=tmp_path))
    assert "cannot create output" in line
    assert open(inputs["file"]).read() == before and os.path.isfile(inputs["file"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_under_a_read_only_folder(tmp_path, inputs, cli):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = error_line(cli("upsample", inputs["zarr"], locked / "out.ome.zarr", "--factor", FACTOR,
                              cwd=tmp_path))
        assert "out.ome.zarr" in line
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


SECRETS = {"key": "AKIAFAKEKEY0123456789", "secret": "s3cr3t-Value/with+chars", "token": "tok-0123456789abcdef"}


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_storage_option_secrets_stay_hidden(tmp_path, inputs, volume, cli, form):
    blob = json.dumps(SECRETS)
    opt = ["--storage-options", blob] if form == "separate" else [f"--storage-options={blob}"]
    out = tmp_path / "out.ome.zarr"
    res = cli("upsample", inputs["zarr"], out, "--factor", FACTOR, "--workers", "1", "--block-shape", "129,64,64",
              *opt, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    command = zarr.open_group(str(out), mode="r").attrs["isovol"]["command"]
    assert "***" in command and "--storage-options" in command
    for value in SECRETS.values():
        assert value not in res.stderr and value not in res.stdout
        assert value not in command
        for dirpath, _dirs, names in os.walk(out):  # nowhere in the output: metadata, run record, markers
            for n in names:
                with open(os.path.join(dirpath, n), "rb") as f:
                    assert value.encode() not in f.read(), os.path.join(dirpath, n)
    assert np.array_equal(zarr.open_array(str(out / "0"), mode="r")[...],
                          upsample_array(volume, FACTOR, get_method("cubic")))


def test_storage_option_secrets_stay_out_of_errors(tmp_path, cli):
    res = cli("upsample", tmp_path / "missing.zarr", tmp_path / "out.ome.zarr", "--factor", FACTOR,
              "--storage-options", json.dumps(SECRETS), cwd=tmp_path)
    line = error_line(res)
    assert all(v not in line for v in SECRETS.values())


def test_plan_prints_grid_tasks_and_memory(tmp_path, inputs, cli):
    res = cli("plan", inputs["zarr"], "--factor", FACTOR, "--block-shape", "32,32,32", "--method", "cubic",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert re.search(r"^grid\s+\(5, 2, 2\) = 20 tasks$", text, re.M), text
    assert re.search(r"^peak memory per task\s+\d", text, re.M), text
    assert re.search(r"^per worker thread\s+up to \d.*one block computing, one finishing its writes, "
                     r"the next one's input read$", text, re.M), text
    assert re.search(r"^output\s+\(129, 64, 64\)", text, re.M), text
    assert "halo z=1" in text
    assert re.search(r"^pyramid \(--levels auto\)\s+\d levels? after 0: \(", text, re.M), text
    assert os.listdir(tmp_path) == [], "plan writes nothing"


def test_plan_json(tmp_path, inputs, cli):
    res = cli("plan", inputs["npy"], "--factor", FACTOR, "--block-shape", "16,32,64", "--shard-shape", "8,32,32",
              "--method", "linear", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["output_shape"] == [129, 64, 64]
    assert plan["grid"] == [9, 2, 1] and plan["tasks"] == 18
    assert plan["shard_shape"] == [8, 32, 32] and plan["method"] == "linear"
    b = plan["block_bytes"]
    assert b["peak"] == b["input"] + b["output"] + b["working"] > 16 * 32 * 64
    # the pyramid --levels auto writes: halvings (rounded up) until a level fits in one chunk
    shapes, chunk = [plan["output_shape"], *plan["pyramid_levels"]], plan["chunk_shape"]
    assert len(shapes) > 1
    assert all(b == [-(-n // 2) for n in a] for a, b in zip(shapes, shapes[1:]))
    assert all(n <= c for n, c in zip(shapes[-1], chunk)) and any(n > c for n, c in zip(shapes[-2], chunk))


def test_plan_refuses_bad_input(tmp_path, inputs, cli):
    assert "factor" in error_line(cli("plan", inputs["zarr"], "--factor", "1.5", cwd=tmp_path))


def test_status(tmp_path, finished, cli):
    res = cli("status", finished, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "complete, 12/12 blocks done" in res.stdout
    info = json.loads(cli("status", finished, "--json", cwd=tmp_path).stdout)
    assert (info["done"], info["tasks"], info["remaining"], info["method"], info["factor"]) == (12, 12, 0, "cubic", 8)


def test_status_of_an_incomplete_output(tmp_path, finished, cli):
    import shutil

    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(finished, copy)
    for key in ("0.0.0", "2.1.1"):
        os.remove(copy / ".isovol" / "done" / key)
    res = cli("status", copy, cwd=tmp_path)
    assert res.returncode == 3
    assert "10/12 blocks done" in res.stdout and "2 remaining" in res.stdout


def test_status_of_no_output(tmp_path, cli):
    assert "output not found" in error_line(cli("status", tmp_path / "none.zarr", cwd=tmp_path))
    (tmp_path / "plain").mkdir()
    assert "no isovol run record" in error_line(cli("status", tmp_path / "plain", cwd=tmp_path))


def test_demo(tmp_path, cli):
    """The README's main job: the protocol on the bundled crop, D2R trained on the decimated crop only."""
    # the flow with the 20-second recipe: the default cpu-demo trains for about 5 minutes (its gain is measured
    # in BENCHMARKS.md, not here)
    res = cli("demo", "--out", tmp_path / "demo", "--recipe", "cpu-tiny", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    from PIL import Image

    with Image.open(tmp_path / "demo" / "comparison.png") as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics) == {"nearest", "linear", "cubic", "lateral-regression:cpu-tiny", "d2r:cpu-tiny"}
    for plane in ("XY", "XZ", "YZ"):
        assert metrics["cubic"][plane]["psnr"] > metrics["nearest"][plane]["psnr"] > 15
        assert metrics["d2r:cpu-tiny"][plane]["psnr"] > 15  # a run of the flow: near cubic, not a useful model
    d2r = metrics["d2r:cpu-tiny"]["train"]
    assert set(d2r["stages_s"]) == {"prior", "recover", "dgean"} and "decimated input" in d2r["trained_on"]
    assert (tmp_path / "demo" / "models" / "r8" / "d2r_cpu-tiny" / "model.safetensors").is_file()
    assert "Training (self-supervised)" in (tmp_path / "demo" / "report.md").read_text()
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert [line.split()[0] for line in lines[header + 1 : header + 1 + len(metrics)]] == list(metrics)

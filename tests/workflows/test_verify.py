"""Damage after completion: shards truncated, zeroed or deleted and a corrupted ``0/zarr.json`` are named by
``isovol status --verify`` and repaired by ``upsample --resume --verify``, which redoes exactly the damaged blocks
and leaves the output bitwise equal to the undamaged one."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from clirun import error_line, read_output

from isovol.pipeline.io.integrity import vouch
from isovol.workflows.upsample import UpsampleRequest, upsample
from isovol.workflows.verify import verify_output

FACTOR = 4
# 129 x 128 x 128 output: 3 x 2 x 2 blocks of two 32-slice shards each (one in the last, one-slice row)
BLOCK, SHARD = "64,64,64", "32,64,64"
#: what is done to which shard of a finished output, and the block that owns it
HARM = {"0/c/1/0/1": ("truncated", "0.0.1"), "0/c/2/1/0": ("zeroed", "1.1.0"), "0/c/4/1/1": ("deleted", "2.1.1")}


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR])  # (33, 128, 128): every 4th slice of the real crop


@pytest.fixture(scope="module")
def clean(tmp_path_factory, client, source) -> str:
    """A finished output, never damaged: what a repaired one must equal byte for byte."""
    out = str(tmp_path_factory.mktemp("clean") / "out.ome.zarr")
    req = UpsampleRequest(input=source, output=out, factor=FACTOR, block_shape=(64, 64, 64),
                          shard_shape=(32, 64, 64), progress=False)
    assert upsample(req, client=client).ok
    return out


def files(root: str, under: str) -> dict[str, bytes]:
    base = os.path.join(root, under)
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(base) for f in names}


def harm(out: str) -> None:
    for key, (how, _) in HARM.items():
        path = os.path.join(out, key)
        size = os.path.getsize(path)
        if how == "truncated":
            os.truncate(path, size // 2)
        elif how == "zeroed":
            with open(path, "r+b") as f:
                f.write(bytes(size))
        else:
            os.remove(path)
    with open(os.path.join(out, "0", "zarr.json"), "r+b") as f:
        f.seek(40)
        f.write(b"\x00garbage")


def test_markers_and_the_run_vouch_for_what_is_stored(clean):
    """Every done marker names the shards its block stored with their size and CRC-32C, and the finished run
    records its metadata documents with a copy of each."""
    shards = files(clean, os.path.join("0", "c"))
    vouched = {}
    for name in os.listdir(os.path.join(clean, ".isovol", "done")):
        with open(os.path.join(clean, ".isovol", "done", name)) as f:
            vouched.update(json.load(f)["shards"])
    assert len(vouched) == len(shards) == 20
    assert vouched == {key: vouch(data) for key, data in shards.items()}
    with open(os.path.join(clean, ".isovol", "documents.json")) as f:
        docs = json.load(f)["documents"]
    for key in ("zarr.json", "0/zarr.json"):
        with open(os.path.join(clean, key), "rb") as f:
            data = f.read()
        assert {k: v for k, v in docs[key].items() if k != "text"} == vouch(data)
        assert docs[key]["text"].encode() == data


def test_damage_after_completion_is_named_and_repaired_bitwise(tmp_path, client, clean, source, expected, cli):
    out = str(tmp_path / "out.ome.zarr")  # same folder name: the name is part of the metadata
    shutil.copytree(clean, out)
    harm(out)

    found = cli("status", out, "--verify")
    assert found.returncode == 4, found.stderr
    lines = found.stdout.splitlines()
    assert "complete, 12/12 blocks done" in lines[0]  # what the markers say ...
    assert "3 of 12 done blocks damaged (3 shards) and metadata damaged (0/zarr.json)" in lines[1]  # ... and is
    assert "--resume --verify" in lines[1]
    assert len(lines) == 2 + 1 + 3, found.stdout  # status, summary, one line per damaged document and shard
    for key, (_how, block) in HARM.items():
        assert any(f"block {block}: shard {key}:" in ln for ln in lines), found.stdout

    req = UpsampleRequest(input=source, output=out, factor=FACTOR, block_shape=(64, 64, 64),
                          shard_shape=(32, 64, 64), progress=False, resume=True)
    assert upsample(req, client=client).skipped == 12, "a plain resume trusts the markers"
    repaired = upsample(UpsampleRequest(**{**req.__dict__, "verify": True}), client=client)
    assert repaired.ok and (repaired.done, repaired.skipped) == (3, 9), repaired.line()
    assert files(out, "0") == files(clean, "0")
    assert files(out, "zarr.json") == files(clean, "zarr.json")
    assert np.array_equal(read_output(out), expected)
    report = verify_output(out)
    assert report.ok and (report.blocks, report.shards, report.documents_checked) == (12, 20, True)


def test_verify_goes_with_resume(tmp_path, source, cli):
    out = tmp_path / "out.ome.zarr"
    res = cli("upsample", source, out, "--factor", FACTOR, "--verify", cwd=tmp_path)
    assert "--verify goes with --resume" in error_line(res) and res.returncode == 2
    assert not out.exists()


def test_damaged_pyramid_levels_are_named_and_repaired_bitwise(tmp_path, client, source, cli):
    """The pyramid's markers vouch for their shards too: status --verify names a damaged level's block, and
    --resume --verify redoes it (and the levels built from it) until the output equals an undamaged one."""
    req = UpsampleRequest(input=source, output=str(tmp_path / "clean" / "out.ome.zarr"), factor=FACTOR,
                          block_shape=(64, 64, 64), shard_shape=(32, 64, 64), progress=False, levels=2)
    assert upsample(req, client=client).ok
    clean = req.output
    out = str(tmp_path / "out.ome.zarr")
    shutil.copytree(clean, out)
    level1 = sorted(k for k in files(out, os.path.join("1", "c")))
    level2 = sorted(k for k in files(out, os.path.join("2", "c")))
    os.truncate(os.path.join(out, level1[0]), 5)
    os.remove(os.path.join(out, level2[-1]))

    found = cli("status", out, "--verify")
    assert found.returncode == 4, found.stderr
    details = [ln.strip() for ln in found.stdout.splitlines() if ln.strip().startswith("level ")]
    assert len(details) == 2, found.stdout
    assert details[0].startswith("level 1 block ") and f"shard {level1[0]}: " in details[0], found.stdout
    assert details[1].startswith("level 2 block ") and f"shard {level2[-1]}: " in details[1], found.stdout

    resumed = upsample(UpsampleRequest(**{**req.__dict__, "output": out, "resume": True, "verify": True}),
                       client=client)
    assert resumed.ok, resumed.line()
    for level in ("0", "1", "2"):
        assert files(out, level) == files(clean, level), level
    assert verify_output(out).ok

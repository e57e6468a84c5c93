"""isovol against a real S3 API: a moto server on loopback, started here, with IAM authentication enforced.

Every request goes to ``http://127.0.0.1:PORT`` through the real s3fs/botocore stack: the input is read
from S3 (an OME-Zarr image and a plain ``.npy`` read by byte ranges), the output written to S3, and the
result compared with the single in-memory call.  The server checks request signatures against IAM access
keys, so a wrong secret is really refused, and a read-only user really cannot write.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")
requests = pytest.importorskip("requests")
pytest.importorskip("moto.server")

from motos3 import MotoS3, clean_env  # noqa: E402

from isovol.pipeline.io.omezarr import open_level0, read_attributes, write_image  # noqa: E402
from isovol.pipeline.methods import get_method, upsample_array  # noqa: E402
from isovol.pipeline.pyramid import downsample_mean  # noqa: E402
from isovol.workflows.demo_data import load_crop  # noqa: E402

BUCKET = "isovol-test"
FACTOR = 8
WRONG_SECRET = "wRoNgSeCrEt-0123456789abcdefghijklmnopqrstuv"


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(str(tmp_path_factory.mktemp("moto")))
    try:
        server.fs().mkdir(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def low_res() -> np.ndarray:
    """Every 8th slice of the real FIB-SEM crop: 17 x 128 x 128 uint8."""
    vol, _ = load_crop()
    return np.ascontiguousarray(vol[::FACTOR])


@pytest.fixture(scope="module")
def zarr_input(moto_s3: MotoS3, low_res: np.ndarray) -> str:
    url = f"s3://{BUCKET}/in.ome.zarr"
    write_image(url, low_res, (80.0, 10.0, 10.0), storage_options=moto_s3.options(), chunks=(8, 64, 64))
    return url


def _isovol(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console script (falling back to its entry point) in a fresh process."""
    exe = os.path.join(os.path.dirname(sys.executable), "isovol")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-c", "from isovol.workflows.cli import main; main()"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=clean_env())


def _isovol_at_once(*commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Several ``_isovol`` commands run concurrently (independent processes), their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: _isovol(*args, timeout=timeout), commands))


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("isovol: error"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def _reference(vol: np.ndarray, factor: int) -> np.ndarray:
    return upsample_array(vol, factor, get_method("cubic"))


def _assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text


# ---------------------------------------------------------------------------------------------------------
# the whole path over S3


def test_upsample_s3_to_s3_cli(moto_s3: MotoS3, zarr_input: str, low_res: np.ndarray) -> None:
    """OME-Zarr on S3 -> `isovol upsample` -> OME-Zarr on S3: exact, marked done, status, resumable."""
    opts = moto_s3.options()
    secret = opts["secret"]
    out = f"s3://{BUCKET}/out.ome.zarr"
    res = _isovol("upsample", zarr_input, out, "--factor", str(FACTOR), "--block-shape", "64,64,64",
                  "--workers", "2", "--no-progress", "--storage-options", json.dumps(opts))
    assert res.returncode == 0, res.stderr
    _assert_no_secret(res.stdout + res.stderr, secret)

    expected = _reference(low_res, FACTOR)
    assert expected.shape == (129, 128, 128)
    got = open_level0(out, opts, mode="r")[...]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)

    # provenance is on S3 too, with the command as typed but without the secret
    attrs = read_attributes(out, opts)
    command = attrs["isovol"]["command"]
    assert command.startswith("isovol upsample") and "--storage-options" in command
    _assert_no_secret(json.dumps(attrs), secret)
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [10.0, 10.0,
                                                                                                      10.0]

    # the pyramid is written on S3 too: levels 1 and 2, each the mean of the level before
    assert [d["path"] for d in attrs["ome"]["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    level1 = open_level0(out, opts, mode="r", path="1")[...]
    np.testing.assert_array_equal(level1, downsample_mean(got))
    np.testing.assert_array_equal(open_level0(out, opts, mode="r", path="2")[...], downsample_mean(level1))

    # one done marker per block (grid 3 x 2 x 2), and no object anywhere in the output holds the secret
    fs = moto_s3.fs()
    markers = fs.ls(f"{BUCKET}/out.ome.zarr/.isovol/done", detail=False)
    assert sorted(m.rsplit("/", 1)[-1] for m in markers) == sorted(
        f"{z}.{y}.{x}" for z in range(3) for y in range(2) for x in range(2))
    for path in fs.find(f"{BUCKET}/out.ome.zarr"):
        if "/c/" not in path:  # metadata, run record, markers (not the shards of level 0 and the pyramid)
            _assert_no_secret(fs.cat_file(path).decode(), secret)

    # status reads the progress from S3 without a cluster
    st = _isovol("status", out, "--storage-options", json.dumps(opts))
    assert st.returncode == 0, st.stderr
    assert "complete, 12/12 blocks done" in st.stdout
    st_json = _isovol("status", out, "--json", "--storage-options", json.dumps(opts))
    info = json.loads(st_json.stdout)
    assert (info["done"], info["remaining"], info["state"]) == (12, 0, "complete")
    _assert_no_secret(st.stdout + st.stderr + st_json.stdout + st_json.stderr, secret)

    # resume over S3: every block is skipped and the data are untouched
    before = {p: fs.info(p)["ETag"] for p in fs.find(f"{BUCKET}/out.ome.zarr/0")}
    res = _isovol("upsample", zarr_input, out, "--factor", str(FACTOR), "--block-shape", "64,64,64",
                  "--workers", "1", "--no-progress", "--resume", "--storage-options", json.dumps(opts))
    assert res.returncode == 0, res.stderr
    assert "12 blocks: 0 done, 12 skipped (already done), 0 failed" in res.stderr
    _assert_no_secret(res.stdout + res.stderr, secret)
    assert {p: fs.info(p)["ETag"] for p in fs.find(f"{BUCKET}/out.ome.zarr/0")} == before
    np.testing.assert_array_equal(open_level0(out, opts, mode="r")[...], expected)


def test_upsample_npy_byte_ranges_api(moto_s3: MotoS3) -> None:
    """A plain .npy on S3 (read by byte ranges of Z slabs) through the Python API; endpoint_url top-level."""
    from isovol.pipeline.io.readers import NpyVolume, open_volume
    from isovol.workflows.upsample import UpsampleRequest, upsample

    vol, _ = load_crop()
    low = np.ascontiguousarray(vol[::4, :96, :80])  # 33 x 96 x 80: blocks do not tile it evenly
    opts = moto_s3.options(style="top-level")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    buf = io.BytesIO()
    np.save(buf, low)
    fs.pipe_file(f"{BUCKET}/raw/low.npy", buf.getvalue())

    src = f"s3://{BUCKET}/raw/low.npy"
    opened = open_volume(src, opts, voxel_size=(40.0, 10.0, 10.0))
    assert isinstance(opened, NpyVolume) and opened.shape == low.shape
    np.testing.assert_array_equal(opened.read_padded((5, -2, 70), (9, 4, 83)),
                                  np.pad(low[5:9, 0:4, 70:80], ((0, 0), (2, 0), (0, 3)), mode="edge"))

    out = f"s3://{BUCKET}/npy-out.ome.zarr"
    req = UpsampleRequest(input=src, output=out, factor=4, voxel_size=(40.0, 10.0, 10.0), storage_options=opts,
                          block_shape=(64, 48, 48), workers=2, processes=False, progress=False)
    summary = upsample(req)
    assert summary.ok and summary.done == 3 * 2 * 2, summary.line()
    np.testing.assert_array_equal(open_level0(out, opts, mode="r")[...], _reference(low, 4))
    assert len(moto_s3.fs().ls(f"{BUCKET}/npy-out.ome.zarr/.isovol/done")) == 12


# ---------------------------------------------------------------------------------------------------------
# credentials and missing locations: one clear line, no secret, nothing left behind


def test_wrong_secret_is_one_line_and_leaves_nothing(moto_s3: MotoS3, zarr_input: str) -> None:
    bad = moto_s3.options(secret=WRONG_SECRET)
    out = f"{BUCKET}/bad-creds.ome.zarr"
    # the server really refuses the signature (so this is not a vacuous "not found")
    with pytest.raises(PermissionError):
        s3fs.S3FileSystem(skip_instance_cache=True, **bad).cat_file(f"{BUCKET}/in.ome.zarr/zarr.json")

    res = _isovol("upsample", zarr_input, f"s3://{out}", "--factor", str(FACTOR), "--workers", "1",
                  "--storage-options", json.dumps(bad))
    line = _one_error_line(res)
    assert "access denied" in line and "credentials" in line, line
    assert "s3://isovol-test/in.ome.zarr" in line
    _assert_no_secret(res.stdout + res.stderr, WRONG_SECRET, moto_s3.admin[1])
    assert not moto_s3.fs().exists(out)
    assert moto_s3.fs().find(out) == []

    # status with the wrong secret: the same kind of line
    st = _isovol("status", f"s3://{BUCKET}/out.ome.zarr", "--storage-options", json.dumps(bad))
    assert st.returncode != 0
    assert len(st.stderr.strip().splitlines()) == 1 and st.stderr.startswith("isovol: error"), st.stderr
    _assert_no_secret(st.stdout + st.stderr, WRONG_SECRET)


def test_wrong_output_secret(moto_s3: MotoS3, zarr_input: str) -> None:
    """Input readable, output credentials wrong: refused before anything is written."""
    out = f"{BUCKET}/bad-out-creds.ome.zarr"
    res = _isovol("upsample", zarr_input, f"s3://{out}", "--factor", str(FACTOR), "--workers", "1",
                  "--storage-options", json.dumps(moto_s3.options()),
                  "--output-storage-options", json.dumps(moto_s3.options(secret=WRONG_SECRET)))
    line = _one_error_line(res)
    assert "access denied" in line and "credentials" in line and f"s3://{out}" in line, line
    _assert_no_secret(res.stdout + res.stderr, WRONG_SECRET, moto_s3.admin[1])
    assert moto_s3.fs().find(out) == []


def test_read_only_credentials_cannot_create_output(moto_s3: MotoS3, zarr_input: str) -> None:
    """A user who may read but not write: the output cannot be created, one line, nothing left."""
    ro = moto_s3.options(moto_s3.reader)
    with pytest.raises(PermissionError):  # the policy is enforced by the server
        s3fs.S3FileSystem(skip_instance_cache=True, **ro).pipe_file(f"{BUCKET}/probe", b"x")
    out = f"{BUCKET}/read-only.ome.zarr"
    res = _isovol("upsample", zarr_input, f"s3://{out}", "--factor", str(FACTOR), "--workers", "1",
                  "--storage-options", json.dumps(ro))
    line = _one_error_line(res)
    assert "access denied" in line and f"s3://{out}" in line, line
    _assert_no_secret(res.stdout + res.stderr, moto_s3.reader[1])
    assert moto_s3.fs().find(out) == []


@pytest.mark.parametrize("src", [f"s3://{BUCKET}/missing.ome.zarr", "s3://no-such-bucket-isovol/in.ome.zarr"],
                         ids=["prefix", "bucket"])
def test_input_not_found(moto_s3: MotoS3, src: str) -> None:
    out = f"{BUCKET}/never-{src.split('/')[2]}.ome.zarr"
    res = _isovol("upsample", src, f"s3://{out}", "--factor", str(FACTOR), "--workers", "1",
                  "--storage-options", json.dumps(moto_s3.options()))
    line = _one_error_line(res)
    assert "not found" in line and src in line, line
    _assert_no_secret(res.stdout + res.stderr, moto_s3.admin[1])
    assert moto_s3.fs().find(out) == []


def test_output_bucket_not_found(moto_s3: MotoS3, zarr_input: str) -> None:
    out = "s3://no-such-bucket-isovol/out.ome.zarr"
    res = _isovol("upsample", zarr_input, out, "--factor", str(FACTOR), "--workers", "1",
                  "--storage-options", json.dumps(moto_s3.options()))
    line = _one_error_line(res)
    assert out in line and "not found" in line, line
    _assert_no_secret(res.stdout + res.stderr, moto_s3.admin[1])


@pytest.mark.parametrize("kill_at", [1, 3])
def test_a_kill_while_overwrite_deletes_on_s3_leaves_an_output_the_rerun_clears(
        moto_s3: MotoS3, zarr_input: str, low_res: np.ndarray, monkeypatch: pytest.MonkeyPatch, kill_at: int) -> None:
    """On an object store a delete is many requests (minutes for a big output): the record says "deleting" until
    the last one, so a kill in between leaves an output the identical rerun recognises and replaces."""
    from isovol.pipeline.io.runrecord import RunState
    from isovol.pipeline.io.urls import filesystem
    from isovol.workflows.bookkeeping import Bookkeeper
    from isovol.workflows.upsample import UpsampleRequest, upsample

    opts = moto_s3.options()
    out = f"s3://{BUCKET}/killed-{kill_at}.ome.zarr"

    def req(**kw: Any) -> UpsampleRequest:
        return UpsampleRequest(input=zarr_input, output=out, factor=FACTOR, block_shape=(64, 64, 64), progress=False,
                               workers=1, processes=False, storage_options=opts, **kw)

    assert upsample(req()).ok
    fs = filesystem(out, opts)[0]  # fsspec's cached instance, the one upsample() gets
    real, calls = fs.rm, {"n": 0}

    def dying(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fs, "rm", dying)
    with pytest.raises(KeyboardInterrupt):
        upsample(req(overwrite=True))
    monkeypatch.undo()
    assert Bookkeeper(out, opts).read_record().state is RunState.DELETING
    summary = upsample(req())  # the identical command without --overwrite: the half-deleted output is cleared
    assert summary.ok and summary.skipped == 0
    np.testing.assert_array_equal(open_level0(out, opts, mode="r")[...], _reference(low_res, FACTOR))


def test_damage_on_s3_is_named_by_status_verify_and_repaired(moto_s3: MotoS3, zarr_input: str) -> None:
    """Objects truncated, zeroed or deleted and a corrupted 0/zarr.json after completion, on S3: the check of
    `status --verify` names them (reading bytes, no decoding), `--resume --verify` redoes those blocks, byte for
    byte."""
    from dataclasses import replace

    from isovol.deploy.local import cluster_client
    from isovol.workflows.upsample import UpsampleRequest, upsample
    from isovol.workflows.verify import verify_output

    opts = moto_s3.options()
    out, root = f"s3://{BUCKET}/verify.ome.zarr", f"{BUCKET}/verify.ome.zarr"
    req = UpsampleRequest(input=zarr_input, output=out, factor=FACTOR, block_shape=(64, 64, 64), progress=False,
                          storage_options=opts)
    fs = moto_s3.fs()
    with cluster_client(1, processes=False) as client:  # one cluster for both runs
        assert upsample(req, client=client).ok
        before = {p: fs.cat_file(p) for p in fs.find(root) if "/.isovol/" not in p}
        shards = {"1.0.1": f"{root}/0/c/1/0/1", "0.1.0": f"{root}/0/c/0/1/0", "2.1.1": f"{root}/0/c/2/1/1"}
        fs.pipe_file(shards["1.0.1"], before[shards["1.0.1"]][:100])
        fs.pipe_file(shards["0.1.0"], bytes(len(before[shards["0.1.0"]])))
        fs.rm(shards["2.1.1"])
        fs.pipe_file(f"{root}/0/zarr.json", b"{")

        found = verify_output(out, opts)  # what `isovol status --verify` prints (its CLI is tested on a local disk)
        assert "3 of 12 done blocks damaged (3 shards) and metadata damaged (0/zarr.json)" in found.line()
        for block, path in shards.items():
            assert any(f"block {block}: shard {path[len(root) + 1:]}:" in ln for ln in found.details())

        summary = upsample(replace(req, resume=True, verify=True), client=client)
    assert summary.ok and (summary.done, summary.skipped) == (3, 9), summary.line()
    assert {p: fs.cat_file(p) for p in fs.find(root) if "/.isovol/" not in p} == before
    assert verify_output(out, opts).ok


def _race_to_create(url: str, opts: dict[str, Any]) -> list[str]:
    """Two threads, each with its own S3 client, publish the first run record of ``url`` at the same moment;
    the owner tokens of those that succeeded."""
    import threading

    from isovol.pipeline.io.runrecord import RunRecord, RunState, owning
    from isovol.workflows.bookkeeping import Bookkeeper

    barrier, ready, won = threading.Barrier(2, timeout=60), threading.Barrier(2, timeout=60), []

    def create() -> None:
        with owning() as owner:
            keeper = Bookkeeper(url, opts)
            _ = keeper.fs  # the client is made before the race, not during it
            barrier.wait()
            if keeper.create_record(RunRecord(hash="ab" * 32, state=RunState.CREATING, owner=owner)):
                won.append(owner.token)
            ready.wait()

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_creating_an_output_on_s3_is_exclusive(moto_s3: MotoS3) -> None:
    """Two creators publish the first run record of one output at the same moment: the conditional PUT
    (If-None-Match: *) lets the server decide, so exactly one wins, and the record is the winner's -- never
    overwritten by the loser."""
    from isovol.workflows.bookkeeping import Bookkeeper

    opts = {**moto_s3.options(), "skip_instance_cache": True}
    for trial in range(5):
        out = f"s3://{BUCKET}/exclusive-{trial}.ome.zarr"
        won = _race_to_create(out, opts)
        assert len(won) == 1, f"trial {trial}: {len(won)} creators won"
        assert Bookkeeper(out, opts).read_record().owner.token == won[0]


# ---------------------------------------------------------------------------------------------------------
# secrets: no storage-option value anywhere, after runs that succeed and runs that fail

PLANTED = "pLaNtEd-SeCrEt-in-an-option-5d1e"  # a value of an option that is not secret-looking by name
PASTED = "pAsTeD-SeCrEt-as-endpoint-9c2b"  # a secret pasted where the endpoint belongs
URL_PASSWORD = "uRl-PaSsWoRd-3a7f"  # user:password in an endpoint URL


def _output_texts(fs: Any, root: str) -> str:
    """Every stored object of an output that is not shard data: metadata, run record, markers, documents."""
    return "\n".join(fs.cat_file(p).decode() for p in fs.find(root) if "/c/" not in p)


def test_storage_options_never_reach_output_logs_or_messages(moto_s3: MotoS3) -> None:
    """The key, the secret, any other option's value, a secret pasted into endpoint_url and an endpoint's
    user:password stay out of stdout, stderr (our log lines and the workers'), the run record and the output
    metadata -- after a complete run, a run failing on a damaged input chunk, and two refused requests."""
    opts = moto_s3.options() | {"config_kwargs": {"user_agent_extra": PLANTED}}
    secrets = (opts["key"], opts["secret"], PLANTED, PASTED, URL_PASSWORD, "alice:" + URL_PASSWORD)
    vol = np.random.default_rng(3).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    src, bad = f"s3://{BUCKET}/secrets-in.ome.zarr", f"s3://{BUCKET}/secrets-damaged.ome.zarr"
    for url in (src, bad):
        write_image(url, vol, (40.0, 10.0, 10.0), storage_options=moto_s3.options())
    fs = moto_s3.fs()
    (chunk,) = [p for p in fs.find(bad.removeprefix("s3://") + "/0") if "/c/" in p]
    fs.pipe_file(chunk, fs.cat_file(chunk)[:20])
    common = ["--factor", "4", "--workers", "1", "--no-progress", "--no-pyramid", "--storage-options"]

    with_password = opts | {"secret": WRONG_SECRET, "client_kwargs": {
        "endpoint_url": moto_s3.endpoint.replace("://", f"://alice:{URL_PASSWORD}@")}}
    done, failed, pasted, refused = _isovol_at_once(  # four processes at once: the test stays within seconds
        ["upsample", src, f"s3://{BUCKET}/secrets-out.ome.zarr", *common, json.dumps(opts)],
        ["upsample", bad, f"s3://{BUCKET}/secrets-failed.ome.zarr", *common, json.dumps(opts)],
        ["upsample", src, f"s3://{BUCKET}/never.ome.zarr", *common,
         json.dumps(opts | {"endpoint_url": PASTED, "client_kwargs": {}})],
        ["upsample", src, f"s3://{BUCKET}/never.ome.zarr", *common, json.dumps(with_password)])
    assert done.returncode == 0, done.stderr
    assert failed.returncode == 1 and "is damaged" in failed.stderr, failed.stderr
    assert "Invalid endpoint: ***" in _one_error_line(pasted)
    _one_error_line(refused)

    texts = [r.stdout + r.stderr for r in (done, failed, pasted, refused)]
    texts += [_output_texts(fs, f"{BUCKET}/secrets-{name}.ome.zarr") for name in ("out", "failed")]
    assert "complete" in texts[-2] and "incomplete" in texts[-1]  # the run records are among what was searched
    for text in texts:
        _assert_no_secret(text, *secrets)
    assert not fs.exists(f"{BUCKET}/never.ome.zarr")


def test_whole_shards_on_s3_are_the_objects_zarr_writes(moto_s3: MotoS3, low_res: np.ndarray) -> None:
    """isovol's shard writer on an object store (it runs on zarr's loop there): the objects zarr writes."""
    import zarr
    from zarr.codecs import BloscCodec

    from isovol.pipeline.io import loops, shard_writer
    from isovol.pipeline.io.omezarr import store_for

    opts = moto_s3.options()
    data = np.ascontiguousarray(np.concatenate([low_res] * 2)[:, :, :100])  # (34, 128, 100): edge shards in Z, X
    data[:16, :64, :64] = 0  # a shard of fill value only
    arrays = [zarr.create_array(store_for(f"s3://{BUCKET}/bytes-{name}.zarr", opts), shape=data.shape,
                                dtype=data.dtype, chunks=(8, 32, 32), shards=(16, 64, 64), fill_value=0,
                                compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"))
              for name in ("ours", "theirs")]
    assert shard_writer.layout_of(arrays[0]) is not None and not loops.own_loop_serves(arrays[0])
    for z in range(0, 34, 16):
        box = (slice(z, min(z + 16, 34)), slice(0, 128), slice(0, 100))
        loops.write(arrays[0], box, data[box])
    arrays[1][...] = data
    fs = moto_s3.fs()
    objects = [{key.split(".zarr/", 1)[1]: fs.cat(key) for key in fs.find(f"{BUCKET}/bytes-{name}.zarr")}
               for name in ("ours", "theirs")]
    assert objects[0] == objects[1] and "c/0/0/0" not in objects[0]

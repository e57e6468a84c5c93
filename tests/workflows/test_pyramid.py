"""The pyramid step end to end: levels written through the executor equal the mean of the level before computed in
one piece, over block layouts; markers per level make it resumable; ``isovol pyramid`` adds and repairs one; the
metadata validates as OME-Zarr 0.5 on every level."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import zarr

from isovol.pipeline.io.runrecord import RunState
from isovol.pipeline.pyramid import Downsample, downsample_mean
from isovol.workflows.bookkeeping import Bookkeeper
from isovol.workflows.cli import main
from isovol.workflows.pyramid import build_pyramid
from isovol.workflows.upsample import UpsampleRequest, upsample
from isovol.workflows.verify import verify_output

FACTOR = 4


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR, 5:60, 3:70])  # (33, 55, 67): odd sizes, cut cubes at the edges


def _run(source: str, out, client, **kw):
    kw.setdefault("levels", "auto")
    return upsample(UpsampleRequest(input=source, output=str(out), factor=FACTOR, progress=False, **kw), client=client)


def _levels(out) -> list[np.ndarray]:
    group = zarr.open_group(str(out), mode="r")
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    assert paths == [str(k) for k in range(len(paths))]
    return [group[p][...] for p in paths]


def _assert_exact(levels: list[np.ndarray]) -> None:
    for k in range(1, len(levels)):
        assert np.array_equal(levels[k], downsample_mean(levels[k - 1])), f"level {k}"


@pytest.mark.parametrize("layout", [
    {"block_shape": (48, 32, 64), "shard_shape": (16, 32, 32), "chunk_shape": (8, 16, 16)},
    {"block_shape": (40, 55, 40), "shard_shape": (40, 55, 20), "chunk_shape": (20, 11, 10)},
], ids=["blocks-of-shards", "odd-chunks"])
def test_every_level_is_the_mean_of_the_level_before_in_one_piece(tmp_path, client, source, expected, layout):
    out = tmp_path / "out.ome.zarr"
    summary = _run(source, out, client, **layout)
    assert summary.ok
    levels = _levels(out)
    assert np.array_equal(levels[0], expected)
    chunk = layout["chunk_shape"]
    assert all(n <= c for n, c in zip(levels[-1].shape, chunk)), "auto stops once a level fits in one chunk"
    assert any(n > c for n, c in zip(levels[-2].shape, chunk)), "... and not before"
    _assert_exact(levels)
    for k in range(1, len(levels)):  # markers of every level, counted for this run only
        assert len(os.listdir(out / ".isovol" / "pyramid" / str(k))) >= 1
    assert Bookkeeper(str(out), {}).read_record().state is RunState.COMPLETE
    report = verify_output(str(out))
    assert report.ok and report.documents_checked, report.line()


def test_levels_validate_as_ome_zarr_05(tmp_path, client, source):
    from ome_zarr_models.v05.image import Image

    out = tmp_path / "out.ome.zarr"
    assert _run(source, out, client, block_shape=(64, 64, 64), levels=2).ok
    image = Image.from_zarr(zarr.open_group(str(out), mode="r"))  # checks every level's array against the axes
    (ms,) = image.attributes.ome.multiscales
    assert [d.path for d in ms.datasets] == ["0", "1", "2"]
    assert [list(d.coordinateTransformations[0].scale) for d in ms.datasets] == \
        [[10.0, 10.0, 10.0], [20.0, 20.0, 20.0], [40.0, 40.0, 40.0]]
    assert [list(d.coordinateTransformations[1].translation) for d in ms.datasets] == \
        [[0.0] * 3, [5.0] * 3, [15.0] * 3]
    assert ms.type == "mean" and "mean" in ms.metadata["description"]


def test_a_failed_level_is_finished_by_resume_and_hidden_meanwhile(tmp_path, client, source, monkeypatch):
    out = tmp_path / "out.ome.zarr"
    calls = {"n": 0}
    real = Downsample.apply_at

    def flaky(self, data, *args):  # the third pyramid block fails once (in-process workers share this module)
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("bad block")
        return real(self, data, *args)

    monkeypatch.setattr(Downsample, "apply_at", flaky)
    layout = {"block_shape": (32, 32, 32), "chunk_shape": (16, 16, 16)}
    first = _run(source, out, client, **layout)
    assert not first.ok and any(k.startswith("level ") for k in first.failed)
    assert Bookkeeper(str(out), {}).read_record().state is RunState.INCOMPLETE
    ome = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ome["datasets"]] == ["0"], "a level being written is not listed"
    written = calls["n"]
    again = _run(source, out, client, resume=True, **layout)
    assert again.ok and again.done == 0, "level 0 is not redone"
    assert calls["n"] - written < written, "pyramid blocks marked done are skipped"
    _assert_exact(_levels(out))


def test_no_pyramid_and_its_removal_on_resume(tmp_path, client, source):
    out = tmp_path / "out.ome.zarr"
    assert _run(source, out, client, block_shape=(64, 64, 64), levels=0).ok
    assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == ["0", "zarr.json"]
    assert _run(source, out, client, block_shape=(64, 64, 64), levels=2, resume=True).ok
    assert len(_levels(out)) == 3
    assert _run(source, out, client, block_shape=(64, 64, 64), levels=0, resume=True).ok
    assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == ["0", "zarr.json"]
    assert not os.path.exists(out / ".isovol" / "pyramid" / "1")
    assert len(_levels(out)) == 1


def test_repair_rewrites_only_what_is_missing_and_rebuild_everything(tmp_path, client, source):
    out = tmp_path / "out.ome.zarr"
    assert _run(source, out, client, block_shape=(32, 32, 32), chunk_shape=(16, 16, 16), levels=3).ok
    before = _levels(out)
    tag = Bookkeeper(str(out), {}).read_record().tag
    shutil.rmtree(out / "2")  # a lost level: its markers no longer describe an array
    os.remove(out / ".isovol" / "pyramid" / "1" / "0.0.0")  # a lost marker
    summary = build_pyramid(client, str(out), {}, tag, 3, block_shape=(32, 32, 32), progress=False)
    level1 = len(os.listdir(out / ".isovol" / "pyramid" / "1"))
    # the one level-1 block without a marker, then every block after it (made from changed data)
    assert summary.ok and summary.skipped == level1 - 1 and summary.done == summary.total - summary.skipped
    after = _levels(out)
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
    full = build_pyramid(client, str(out), {}, tag, 3, block_shape=(32, 32, 32), fresh=True, progress=False)
    assert full.ok and full.done == full.total and full.skipped == 0


def _main(capsys, *args) -> tuple[int, str]:
    """``isovol ARGS`` in this process (the command's own code path, joined to the module's cluster)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_too_many_levels_are_refused_before_anything_is_written(tmp_path, client, source):
    from isovol.pipeline.errors import InputError

    out = tmp_path / "out.ome.zarr"
    with pytest.raises(InputError, match="--levels 9 is more than the 8 halvings"):
        _run(source, out, client, levels=9)
    assert not out.exists()


def test_pyramid_command_adds_a_pyramid_and_repairs_nothing_that_is_done(tmp_path, client, source, capsys):
    layout = {"block_shape": (128, 64, 64), "shard_shape": (32, 32, 32), "chunk_shape": (16, 16, 16)}
    out = tmp_path / "out.ome.zarr"
    assert _run(source, out, client, levels=0, **layout).ok
    join = ["--scheduler", client.scheduler.address, "--no-progress"]
    code, err = _main(capsys, "pyramid", out, "--levels", "2", *join)
    assert code == 0 and "isovol: pyramid: " in err, err
    levels = _levels(out)
    assert len(levels) == 3
    _assert_exact(levels)
    assert json.loads((out / ".isovol" / "run.json").read_text())["state"] == "complete"
    report = verify_output(str(out))  # the metadata the pyramid rewrote is what the output now records
    assert report.ok and report.documents_checked, report.line()
    made = tmp_path / "made.ome.zarr"  # a pyramid written by upsample: the command finds every block done
    assert _run(source, made, client, levels=2, **layout).ok
    code, err = _main(capsys, "pyramid", made, "--levels", "2", *join)
    assert code == 0 and re.search(r"pyramid: (\d+) blocks: 0 done, \1 skipped", err), err


@pytest.mark.parametrize("case", ["missing", "foreign", "levels", "incomplete"])
def test_pyramid_command_refusals(tmp_path, client, source, capsys, case):
    out = tmp_path / "out.ome.zarr"
    args = ["pyramid", out, "--scheduler", client.scheduler.address]
    if case == "foreign":
        zarr.create_group(str(out), zarr_format=3)
    elif case in ("levels", "incomplete"):
        assert _run(source, out, client, block_shape=(64, 64, 64), levels=0).ok
        if case == "levels":
            args += ["--levels", "-2"]
        else:
            os.remove(out / ".isovol" / "done" / "0.0.0")
    code, err = _main(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    expect = {"missing": "output not found", "foreign": "no isovol run record", "levels": "--levels",
              "incomplete": "level 0 is not complete"}[case]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("isovol: error") and expect in lines[0], err


# -- isovol view: the served image --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, client, source):
    """A finished output with a 3-level pyramid, served on a free port of 127.0.0.1 by the view server."""
    import threading

    from isovol.workflows.view import make_server

    out = tmp_path_factory.mktemp("served") / "iso.ome.zarr"
    assert _run(source, out, client, block_shape=(64, 64, 64), levels=3).ok
    server = make_server(str(out), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _get(url: str, **headers: str):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Origin": "http://localhost:9999", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_served_metadata_and_chunks_carry_cors_and_ranges(served):
    out, url = served
    status, headers, body = _get(url + "zarr.json")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(body)["attributes"]["ome"]["multiscales"][0]["datasets"][3]["path"] == "3"
    shard = next(p for p in sorted((out / "1" / "c").rglob("*")) if p.is_file())
    key = shard.relative_to(out).as_posix()
    data = shard.read_bytes()
    status, headers, body = _get(url + key, Range="bytes=-16")  # zarr reads the shard index at the end this way
    assert status == 206 and body == data[-16:] and headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Content-Range"] == f"bytes {len(data) - 16}-{len(data) - 1}/{len(data)}"
    assert _get(url + key, Range="bytes=2-11")[2] == data[2:12]
    assert _get(url + key)[2] == data
    assert _get(url + key, Range=f"bytes={len(data)}-")[0] == 416
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url + key, method="HEAD", headers={"Range": "bytes=-8"})) as r:
        assert r.status == 206 and r.headers["Content-Length"] == "8" and r.read() == b""
    assert _get(url + key, Range="bytes=0-3")[2] == data[:4], "a HEAD leaves nothing behind for the next request"
    assert _get(url + ".isovol/run.json")[0] == 404, "the run bookkeeping is not served"


def test_preflight_allows_range_requests(served):
    import urllib.request

    _, url = served
    req = urllib.request.Request(url + "zarr.json", method="OPTIONS",
                                 headers={"Origin": "http://localhost:9999", "Access-Control-Request-Headers": "range"})
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status == 204
        assert res.headers["Access-Control-Allow-Origin"] == "*"
        assert "Range" in res.headers["Access-Control-Allow-Headers"]


def test_zarr_and_ome_zarr_reader_open_every_level_over_http(served):
    out, url = served
    local = _levels(out)
    remote = zarr.open_group(url, mode="r")  # fsspec over HTTP: sharded reads through byte ranges
    assert all(np.array_equal(remote[str(k)][...], local[k]) for k in range(len(local)))
    ome_zarr = pytest.importorskip("ome_zarr", reason="ome-zarr-py is in the test extra")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    assert ome_zarr.__version__
    nodes = list(Reader(parse_url(url))())
    data = nodes[0].data
    assert len(data) == len(local) == 4
    assert all(np.array_equal(np.asarray(d), v) for d, v in zip(data, local))
    assert nodes[0].metadata["coordinateTransformations"][1][0]["scale"] == [20.0, 20.0, 20.0]


def test_view_command_prints_the_viewer_urls_and_serves(served, isovol_exe):
    import subprocess

    out, _ = served
    env = {**os.environ, "PATH": os.path.dirname(isovol_exe)}  # no napari on it: --open says so and serves on
    proc = subprocess.Popen([isovol_exe, "view", str(out), "--port", "0", "--open"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        url = lines[0].split(" at ")[1].strip()
        assert url.startswith("http://127.0.0.1:") and f"zarr3://{url}" in lines[1]
        assert f"napari --plugin napari-ome-zarr {url}" in lines[2]
        status, headers, _ = _get(url + "zarr.json")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "napari is not installed" in err


@pytest.mark.parametrize("target, message", [("s3://bucket/iso.ome.zarr", "serves a local output"),
                                             ("{tmp}", "not a zarr v3 image")])
def test_view_refuses_what_it_cannot_serve(tmp_path, capsys, target, message):
    code, err = _main(capsys, "view", target.format(tmp=tmp_path))
    assert code == 2 and err.strip().startswith("isovol: error") and message in err


def test_the_anisotropy_warning_comes_once_a_run_goes_ahead(tmp_path, client, source, caplog):
    """(--factor: the output voxel far from a cube is one warning line; a refused request is one error line.)"""
    import logging

    from isovol.pipeline.errors import ResumeError

    out = tmp_path / "out.ome.zarr"
    with caplog.at_level(logging.WARNING, logger="isovol"):
        assert upsample(UpsampleRequest(input=source, output=str(out), factor=2, progress=False), client=client).ok
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            "the output voxel 20,10,10 nm is 100% from isotropic; --factor 4 (or auto) gives 10 nm"]
        caplog.clear()
        with pytest.raises(ResumeError):
            upsample(UpsampleRequest(input=source, output=str(out), factor=8, resume=True, progress=False),
                     client=client)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

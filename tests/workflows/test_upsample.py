"""``upsample()``: what a request does to the output location (create, refuse, overwrite, resume), end to end."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from clirun import read_output

from isovol.pipeline.errors import InputError, OutputError, ResumeError, StaleRunError
from isovol.pipeline.identity import digest
from isovol.pipeline.io.readers import open_volume
from isovol.pipeline.io.runrecord import RunState
from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows import cli as cli_mod
from isovol.workflows import upsample as upsample_mod
from isovol.workflows.bookkeeping import Bookkeeper
from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 8


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR, 10:74, 40:104])  # (17, 64, 64) uint8


def request(source: str, out, **kw) -> UpsampleRequest:
    kw.setdefault("block_shape", (32, 32, 32))
    return UpsampleRequest(input=source, output=str(out), factor=FACTOR, progress=False, **kw)


def files(path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), path)] = (st.st_size, st.st_mtime_ns)
    return out


def test_fresh_run_records_a_complete_state(tmp_path, client, source, expected):
    out = tmp_path / "out.ome.zarr"
    summary = upsample(request(source, out), client=client)
    assert summary.ok and summary.done == summary.total == 5 * 2 * 2
    assert np.array_equal(read_output(out), expected)
    keeper = Bookkeeper(str(out), {})
    record = keeper.read_record()
    assert record.state is RunState.COMPLETE and record.tasks == 20
    assert record.hash == digest(record.components), "the record's hash is the identity of its components"
    assert keeper.done_keys(record.tag) == {f"{i}.{j}.{k}" for i in range(5) for j in range(2)
                                                    for k in range(2)}
    assert keeper.done_keys("another run") == set(), "markers of another run never count"
    assert keeper.done_keys(record.hash) == set(), "nor those of another generation of the same run"


def test_existing_output_is_refused_and_left_untouched(tmp_path, client, source):
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    before = files(out)
    with pytest.raises(OutputError, match="exists; pass --resume .* or --overwrite"):
        upsample(request(source, out), client=client)
    assert files(out) == before


def test_overwrite_recomputes_everything_on_the_same_cluster(tmp_path, client, source, expected):
    """A second identical run on the same client must really run (task keys must not hit old results)."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    again = upsample(request(source, out, overwrite=True), client=client)
    assert again.ok and again.done == again.total and again.skipped == 0
    assert np.array_equal(read_output(out), expected)
    assert len(os.listdir(out / ".isovol" / "done")) == again.total


def test_overwrite_with_another_layout_replaces_the_output(tmp_path, client, source, expected):
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    again = upsample(request(source, out, block_shape=(64, 64, 64), overwrite=True), client=client)
    assert again.ok and again.total == 3
    assert np.array_equal(read_output(out), expected)
    assert sorted(os.listdir(out / ".isovol" / "done")) == ["0.0.0", "1.0.0", "2.0.0"], "old markers must go"
    assert zarr.open_array(store=str(out / "0"), mode="r").shards == (64, 64, 64)


def test_overwrite_refuses_what_isovol_did_not_make(tmp_path, client, source):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    single = tmp_path / "notes.txt"
    single.write_text("important")
    for target in (folder, single):
        with pytest.raises(OutputError, match="not an isovol output; refusing to overwrite"):
            upsample(request(source, target, overwrite=True), client=client)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert single.read_text() == "important"


def test_resume_of_a_complete_output_does_nothing(tmp_path, client, source, expected):
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    shards = {k: v for k, v in files(out).items() if k.startswith("0/c/")}
    again = upsample(request(source, out, resume=True), client=client)
    assert again.ok and again.done == 0 and again.skipped == again.total == 20
    assert {k: v for k, v in files(out).items() if k.startswith("0/c/")} == shards
    assert np.array_equal(read_output(out), expected)


def test_resume_with_another_configuration_is_refused(tmp_path, client, source):
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    os.remove(out / ".isovol" / "done" / "0.0.0")
    before = files(out)
    for change in ({"method": "linear"}, {"block_shape": (16, 32, 32)}, {"factor": 4}):
        kw = {"block_shape": (32, 32, 32), "resume": True, **change}
        req = UpsampleRequest(input=source, output=str(out), progress=False, **{"factor": FACTOR, **kw})
        with pytest.raises(ResumeError, match="cannot resume .*differs from the recorded one") as info:
            upsample(req, client=client)
        assert "\n" not in str(info.value)
    assert files(out) == before, "a refused resume must not touch the output"


def test_resume_of_a_missing_output_just_runs(tmp_path, client, source, expected):
    out = tmp_path / "new.ome.zarr"
    summary = upsample(request(source, out, resume=True), client=client)
    assert summary.ok and summary.done == summary.total and summary.skipped == 0
    assert np.array_equal(read_output(out), expected)


@pytest.mark.parametrize("kw,error,match", [
    ({"resume": True, "overwrite": True}, InputError, "exclude each other"),
    ({"factor": 1}, InputError, "factor must be an integer >= 2"),
    ({"factor": 2.5}, InputError, "non-integer factors are not supported"),
    ({"method": "spline"}, InputError, "unknown method 'spline'"),
    ({"block_shape": (16, 32, 32), "shard_shape": (10, 32, 32)}, InputError, "whole multiple of the shard"),
])
def test_bad_requests_fail_before_the_output_is_touched(tmp_path, client, source, kw, error, match):
    out = tmp_path / "out.ome.zarr"
    req = UpsampleRequest(input=source, output=str(out), progress=False, **{"factor": FACTOR, **kw})
    with pytest.raises(error, match=match):
        upsample(req, client=client)
    assert not out.exists()


def test_output_must_not_be_the_input(client, source):
    with pytest.raises(InputError, match="must not be the input"):
        upsample(request(source, source + "/", overwrite=True), client=client)
    assert os.path.exists(os.path.join(source, "zarr.json"))


def test_npy_input_with_voxel_size(tmp_path, client, volume, expected):
    src = tmp_path / "stack.npy"
    np.save(src, volume)
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(InputError, match="carries no voxel size"):
        upsample(request(str(src), out), client=client)
    assert not out.exists()
    summary = upsample(request(str(src), out, voxel_size=(80.0, 10.0, 10.0)), client=client)
    assert summary.ok
    assert np.array_equal(read_output(out), expected)


class Broken(Interpolation):
    def __init__(self):
        super().__init__("cubic")

    def apply(self, data, factor, start, stop):
        raise ValueError("deterministic bug")


def test_cli_exits_non_zero_when_blocks_fail(tmp_path, client, source, monkeypatch, capsys):
    """The CLI path with a failing method, joined to the running cluster with --scheduler."""
    monkeypatch.setattr(upsample_mod, "get_method", lambda name, **_: Broken())
    out = tmp_path / "out.ome.zarr"
    argv = ["upsample", source, str(out), "--factor", str(FACTOR), "--block-shape", "64,64,64", "--no-progress",
            "--scheduler", client.scheduler.address]
    with pytest.raises(SystemExit) as info:
        cli_mod.main(argv)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "3 blocks: 0 done, 0 skipped (already done), 3 failed" in err
    assert "ValueError: deterministic bug" in err and "--resume" in err
    assert not os.listdir(out / ".isovol" / "done")


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])  # zarr.json, 0/, .isovol/done, the rest
def test_a_kill_while_overwrite_deletes_leaves_an_output_every_rerun_clears(tmp_path, client, source, expected,
                                                                           monkeypatch, kill_at):
    """--overwrite marks the record "deleting" and removes it last: a kill after any number of removals leaves an
    output that the plain, --resume and --overwrite reruns all recognise as half deleted and start afresh."""
    from fsspec.implementations.local import LocalFileSystem

    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    real, calls = LocalFileSystem.rm, {"n": 0}

    def dying(self, path, recursive=False, maxdepth=None):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real(self, path, recursive=recursive, maxdepth=maxdepth)

    monkeypatch.setattr(LocalFileSystem, "rm", dying)
    with pytest.raises(KeyboardInterrupt):
        upsample(request(source, out, overwrite=True), client=client)
    monkeypatch.setattr(LocalFileSystem, "rm", real)
    assert Bookkeeper(str(out), {}).read_record().state is RunState.DELETING
    with pytest.raises(InputError, match="unfinished isovol output .state deleting"):
        upsample(request(str(out), tmp_path / "again.ome.zarr"), client=client)  # never read as an input
    for kw in ({}, {"resume": True}, {"overwrite": True}):
        summary = upsample(request(source, out, **kw), client=client)
        assert summary.ok and summary.done == summary.total and summary.skipped == 0
        assert np.array_equal(read_output(out), expected)
        assert Bookkeeper(str(out), {}).read_record().state is RunState.COMPLETE
        if not kw.get("overwrite"):  # leave the next form a half-deleted output again
            keeper = Bookkeeper(str(out), {})
            keeper.write_record(keeper.read_record().with_state(RunState.DELETING))


@pytest.mark.parametrize("stage", ["before the image", "before the record says created"])
def test_a_kill_while_a_fresh_output_is_created_leaves_one_the_rerun_clears(tmp_path, client, source, expected,
                                                                           monkeypatch, stage):
    out = tmp_path / "out.ome.zarr"
    real = upsample_mod.create_image

    def dying(*args, **kwargs):
        if stage == "before the record says created":
            real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(upsample_mod, "create_image", dying)
    with pytest.raises(KeyboardInterrupt):
        upsample(request(source, out), client=client)
    monkeypatch.setattr(upsample_mod, "create_image", real)
    assert Bookkeeper(str(out), {}).read_record().state is RunState.CREATING
    summary = upsample(request(source, out), client=client)  # the identical command
    assert summary.ok and summary.done == summary.total
    assert np.array_equal(read_output(out), expected)


def test_a_bookkeeping_folder_without_a_record_is_a_half_created_output(tmp_path, client, source, expected):
    """Killed inside the first record write: only .isovol/ with a temporary file. Ours, so cleared, not refused;
    anything else beside it makes the folder the user's again."""
    out = tmp_path / "out.ome.zarr"
    (out / ".isovol" / "done").mkdir(parents=True)
    (out / ".isovol" / ".tmp-x1y2").write_bytes(b"{")
    assert upsample(request(source, out), client=client).ok
    assert np.array_equal(read_output(out), expected)
    mine = tmp_path / "mine"
    (mine / ".isovol").mkdir(parents=True)
    (mine / "data.raw").write_bytes(b"1")
    with pytest.raises(OutputError, match="not an isovol output; refusing to overwrite"):
        upsample(request(source, mine, overwrite=True), client=client)
    assert (mine / "data.raw").exists()


@pytest.mark.parametrize("state", ["running", "incomplete", "created"])
def test_an_unfinished_output_is_refused_as_an_input(tmp_path, client, source, state):
    """Its unfinished blocks read as zeros; a trainer or a second upsampling would take them for data."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    keeper = Bookkeeper(str(out), {})
    keeper.write_record(keeper.read_record().with_state(RunState(state)))
    with pytest.raises(InputError, match=f"unfinished isovol output \\(state {state}\\); finish it"):
        upsample(request(str(out), tmp_path / "next.ome.zarr"), client=client)


def test_an_array_of_an_unfinished_output_is_refused_as_an_input(tmp_path, client, source):
    """``A.ome.zarr/0`` names level 0 of an output whose bookkeeping lies one folder up; once the output is
    complete, the same array reads."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    keeper = Bookkeeper(str(out), {})
    complete = keeper.read_record()
    keeper.write_record(complete.with_state(RunState.RUNNING))
    with pytest.raises(InputError, match=r"out.ome.zarr/0 is part of an unfinished isovol output \(state running\)"):
        open_volume(str(out / "0"))
    keeper.write_record(complete)
    assert open_volume(str(out / "0")).shape == read_output(out).shape


def test_a_damaged_run_record_is_refused_for_resume_and_cleared_by_overwrite(tmp_path, client, source, expected):
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    keeper = Bookkeeper(str(out), {})
    tag = keeper.read_record().tag
    (out / ".isovol" / "run.json").write_text('{"hash": "ab')
    with pytest.raises(OutputError, match="the run record is damaged; rerun with --overwrite"):
        upsample(request(source, out, resume=True), client=client)
    with pytest.raises(InputError, match=r"unfinished isovol output \(state unknown \(damaged run record\)\)"):
        upsample(request(str(out), tmp_path / "next.ome.zarr"), client=client)
    assert not keeper.read_record(damaged_ok=True).readable
    with pytest.raises(StaleRunError):
        keeper.check_current(tag)  # a block still running for it stops before writing
    summary = upsample(request(source, out, overwrite=True), client=client)
    assert summary.ok and summary.done == summary.total
    assert np.array_equal(read_output(out), expected)
    assert keeper.read_record().state is RunState.COMPLETE


def test_a_run_sets_the_state_only_of_its_own_output(tmp_path, client, source):
    """A run whose output was replaced (or deleted) while it ran must not stamp its state on what is there now."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    keeper = Bookkeeper(str(out), {})
    record = keeper.read_record()
    upsample_mod._set_state(keeper, "an earlier generation", RunState.INCOMPLETE)
    assert keeper.read_record() == record
    upsample_mod._set_state(keeper, record.tag, RunState.INCOMPLETE)
    assert keeper.read_record() == record.with_state(RunState.INCOMPLETE)
    (out / ".isovol" / "run.json").unlink()
    upsample_mod._set_state(keeper, record.tag, RunState.COMPLETE)
    assert keeper.read_record() is None, "no record is made up for a deleted output"

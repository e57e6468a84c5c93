"""Never lose a voxel: an output is compared with the input by what it resolves to, created by one run only, and
a complete output stays complete and readable whatever happens to a later run on it.  Real zarr v3 outputs
made by real runs; the command line where a user would meet the problem."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import psutil
import pytest
from clirun import ISOVOL, ONE_THREAD, error_line, read_output, tree

from isovol.pipeline.errors import OutputError
from isovol.pipeline.io.readers import open_volume
from isovol.pipeline.io.runrecord import Owner, RunState, owning
from isovol.workflows import upsample as upsample_mod
from isovol.workflows.bookkeeping import Bookkeeper
from isovol.workflows.outputs import claim
from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 8


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR, 10:74, 40:104])  # (17, 64, 64) uint8


def request(source: str, out, **kw) -> UpsampleRequest:
    kw.setdefault("block_shape", (32, 32, 32))
    return UpsampleRequest(input=source, output=str(out), factor=FACTOR, progress=False, **kw)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, client, source, expected) -> str:
    """A complete isovol output (129 x 64 x 64), the input of a second upsampling."""
    out = tmp_path_factory.mktemp("earlier") / "a.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    assert np.array_equal(read_output(out), expected)
    return str(out)


# -- 1. the output is never the input, whatever the spelling ------------------------------------------------


@pytest.mark.parametrize("spelling", ["./a.ome.zarr/", "{abs}", "link.ome.zarr", "link.ome.zarr/", "a.ome.zarr/0",
                                      "a.ome.zarr/0/.."])
def test_overwrite_of_the_input_spelled_otherwise_is_refused(earlier, cli, spelling):
    """Input ``a.ome.zarr`` (an earlier output), output the same folder spelled otherwise or a folder inside it:
    one line, exit 2, not a byte touched."""
    folder = os.path.dirname(earlier)
    if not os.path.lexists(os.path.join(folder, "link.ome.zarr")):
        os.symlink(earlier, os.path.join(folder, "link.ome.zarr"))
    before = tree(earlier)
    res = cli("upsample", "a.ome.zarr", spelling.format(abs=earlier), "--factor", 2, "--overwrite",
              "--no-progress", cwd=folder)
    line = error_line(res)
    assert res.returncode == 2 and "the output must not" in line, line
    assert tree(earlier) == before
    assert sorted(os.listdir(folder)) == ["a.ome.zarr", "link.ome.zarr"]


def test_an_output_holding_the_input_is_refused(earlier, cli):
    """Input ``a.ome.zarr/0`` (a plain zarr array inside an earlier output), output ``a.ome.zarr``: deleting the
    output would delete the input."""
    before = tree(earlier)
    res = cli("upsample", os.path.join(earlier, "0"), "./a.ome.zarr", "--factor", 2, "--overwrite",
              "--voxel-size", "10,10,10", "--no-progress", cwd=os.path.dirname(earlier))
    assert res.returncode == 2 and "must not contain the input" in error_line(res)
    assert tree(earlier) == before


# -- 2. one output, one creator ------------------------------------------------------------------------------


def test_two_runs_that_both_found_no_output_create_it_once(tmp_path, client, source, expected, monkeypatch):
    """Both runs look, both find nothing, then both create (a barrier after the look forces the interleaving a
    race gives): exactly one creates and completes the output; the other refuses in one line and deletes
    nothing of it."""
    out = tmp_path / "out.ome.zarr"
    barrier, real = threading.Barrier(2, timeout=60), upsample_mod._output_state

    def look_then_wait(req):
        found = real(req)
        barrier.wait()
        return found

    monkeypatch.setattr(upsample_mod, "_output_state", look_then_wait)
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = upsample(request(source, out), client=client)
        except Exception as exc:  # what the loser raises is checked below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results.values() if not isinstance(r, Exception)]
    lost = [r for r in results.values() if isinstance(r, Exception)]
    assert len(won) == 1 and won[0].ok and won[0].done == won[0].total, results
    assert len(lost) == 1 and isinstance(lost[0], OutputError), results
    assert "is being created by another isovol run (pid" in str(lost[0]), lost[0]
    assert np.array_equal(read_output(out), expected)
    assert Bookkeeper(str(out), {}).read_record().state is RunState.COMPLETE


def test_two_commands_started_together_one_runs_one_refuses(tmp_path, source, expected):
    """Two real ``isovol upsample`` processes on one output: one exit 0, the other exit 2 with one line
    (whichever moment it looked), and the output complete and exact."""
    out = tmp_path / "out.ome.zarr"
    cmd = [ISOVOL, "upsample", source, str(out), "--factor", str(FACTOR), "--block-shape", "32,32,32",
           "--workers", "1", "--no-progress", "--no-pyramid"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
             for _ in range(2)]
    results = [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert "another isovol run" in error_line(loser) or "exists" in error_line(loser)
    assert np.array_equal(read_output(out), expected)


def half_created(out, owner: Owner) -> None:
    """Turn a complete output into one that ``owner`` is still creating, as its record would show."""
    keeper = Bookkeeper(str(out), {})
    keeper.write_record(keeper.read_record().with_state(RunState.CREATING, owner))


def test_a_live_owner_s_half_made_output_is_left_alone(tmp_path, client, source, expected):
    """A rerun clears what a killed run left half made -- but not while its owner (a live process on this host)
    is still at it, not even with --overwrite; once the owner is gone, the plain rerun clears it."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.05)
        half_created(out, replace(Owner.new(), pid=owner.pid))
        before = tree(out)
        for kw in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(OutputError, match=f"is being created by another isovol run .pid {owner.pid} on "):
                upsample(request(source, out, **kw), client=client)
            assert tree(out) == before
    finally:
        owner.kill()
        owner.wait()
    summary = upsample(request(source, out), client=client)
    assert summary.ok and summary.skipped == 0 and np.array_equal(read_output(out), expected)


def test_another_host_s_owner_is_cleared_only_by_overwrite(tmp_path, client, source, expected):
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    half_created(out, replace(Owner.new(), host="node-17.cluster", pid=4242))
    before = tree(out)
    for kw in ({}, {"resume": True}):
        with pytest.raises(OutputError, match="by an isovol run on another host .pid 4242 on node-17.cluster.*"
                                              "pass --overwrite if that run is gone"):
            upsample(request(source, out, **kw), client=client)
        assert tree(out) == before
    summary = upsample(request(source, out, overwrite=True), client=client)
    assert summary.ok and summary.skipped == 0 and np.array_equal(read_output(out), expected)


def test_of_two_runs_removing_one_output_exactly_one_claims_it(tmp_path, client, source):
    """--overwrite (or the clearing of a leftover) first claims the record it read; of two concurrent claimers
    exactly one wins, and a claim left by a run that died is passed over."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    keeper = Bookkeeper(str(out), {})
    record = keeper.read_record()
    barrier, done, won = threading.Barrier(4, timeout=60), threading.Barrier(4, timeout=60), []

    def try_claim() -> None:
        with owning() as owner:  # alive until every claimer has tried, as a remover is while it removes
            barrier.wait()
            if claim(Bookkeeper(str(out), {}), record, owner):
                won.append(owner)
            done.wait()

    threads = [threading.Thread(target=try_claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    # the winner's claim is there, its owner is gone (the block was left): the next claimer takes the next one
    assert os.path.exists(os.path.join(out, ".isovol", f"claim-{record.generation}-none-0"))
    with owning() as owner:
        assert claim(keeper, record, owner)
    assert os.path.exists(os.path.join(out, ".isovol", f"claim-{record.generation}-none-1"))
    with owning() as owner:
        keeper.write_record(record.with_state(RunState.DELETING, owner))
        assert not claim(keeper, record, owner), "the record changed since it was read: no claim"


# -- 7. a complete output stays complete; "all blocks done" is not "complete" --------------------------------


def _group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


def test_a_resume_of_a_complete_output_killed_at_start_up_leaves_it_complete(tmp_path, client, source, expected,
                                                                             cli):
    """``--resume`` of a complete output, SIGKILLed while its cluster starts (its first worker process is up):
    nothing was left to do, so the output is still complete and is still accepted as an input."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    before = tree(out)
    cmd = [ISOVOL, "upsample", source, str(out), "--factor", str(FACTOR), "--block-shape", "32,32,32",
           "--resume", "--no-pyramid", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ONE_THREAD)
    try:
        while len(_group_alive(proc.pid)) < 2 and proc.poll() is None:  # the CLI and its first worker process
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the kill must land during start-up"
    assert Bookkeeper(str(out), {}).read_record().state is RunState.COMPLETE
    assert tree(out) == before
    status = cli("status", out)
    assert status.returncode == 0 and "complete, 20/20 blocks done" in status.stdout
    assert open_volume(str(out)).shape == expected.shape, "still accepted as an input"


def test_all_blocks_done_but_not_finalised_is_named_and_exits_3(tmp_path, client, source, expected, cli):
    """Killed between its last done marker and recording completion, a run leaves every block marked and the
    state "running": status names that (exit 3, also with --json) and --resume finalises it."""
    out = tmp_path / "out.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    keeper = Bookkeeper(str(out), {})
    keeper.write_record(keeper.read_record().with_state(RunState.RUNNING))  # what such a kill leaves
    status = cli("status", out)
    assert status.returncode == 3, status.stderr
    assert "all blocks done, not finalised (state running), 20/20 blocks done" in status.stdout
    assert "--resume to finalise it" in status.stdout
    as_json = cli("status", out, "--json")
    assert as_json.returncode == 3
    info = json.loads(as_json.stdout)
    assert (info["state"], info["condition"], info["finalised"], info["remaining"]) == (
        "running", "all blocks done, not finalised", False, 0)

    summary = upsample(request(source, out, resume=True), client=client)
    assert summary.ok and summary.skipped == summary.total == 20
    assert cli("status", out).returncode == 0 and cli("status", out, "--json").returncode == 0
    assert json.loads(cli("status", out, "--json").stdout)["condition"] == "complete"
    assert np.array_equal(read_output(out), expected)

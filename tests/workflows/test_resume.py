"""Kill and resume: a real ``isovol upsample`` process group is SIGKILLed mid-run and resumed with --resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
from clirun import read_output

from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 4
BLOCK = "8,32,32"  # 129 x 128 x 128 output -> 17 x 4 x 4 = 272 small blocks
TOTAL = 272
SUMMARY = re.compile(r"isovol: (\d+) blocks: (\d+) done, (\d+) skipped \(already done\), (\d+) failed")


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR])  # (33, 128, 128): every 4th slice of the real crop


def done_markers(out) -> dict[str, int]:
    """Done markers (key -> mtime in ns); temp files of an interrupted marker write do not count."""
    d = os.path.join(str(out), ".isovol", "done")
    if not os.path.isdir(d):
        return {}
    return {n: os.stat(os.path.join(d, n)).st_mtime_ns for n in os.listdir(d) if not n.startswith(".tmp-")}


def partial_files(out) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(str(out)) for f in fs if f.endswith(".partial")]


def summary_counts(stderr: str) -> tuple[int, int, int, int]:
    found = SUMMARY.findall(stderr)
    assert len(found) == 1, stderr
    return tuple(int(v) for v in found[0])  # type: ignore[return-value]


def group_members(pgid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


def start_and_kill(cmd: list[str], out, min_markers: int, cwd) -> dict[str, int]:
    """Start ``cmd`` in its own session, wait for ``min_markers`` done markers, SIGKILL the whole group."""
    log = os.path.join(str(cwd), "killed-run.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.monotonic() + 120
        while len(done_markers(out)) < min_markers:
            assert proc.poll() is None, f"isovol ended before it could be interrupted: {open(log).read()}"
            assert time.monotonic() < deadline, "no progress within two minutes"
            time.sleep(0.01)
        members = group_members(proc.pid)  # the CLI with its LocalCluster, and the dask worker process(es)
        assert len(members) >= 2, [m.cmdline() for m in members]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_members(proc.pid), "a process of the killed run survived"
    assert proc.returncode == -signal.SIGKILL
    return done_markers(out)


def test_kill_and_resume(tmp_path, client, source, expected, cli, isovol_exe):
    out = tmp_path / "out.ome.zarr"
    args = ["upsample", source, str(out), "--factor", str(FACTOR), "--block-shape", BLOCK, "--method", "cubic"]
    before = start_and_kill([isovol_exe, *args, "--workers", "1"], out, min_markers=8, cwd=tmp_path)
    assert 8 <= len(before) < TOTAL, f"the run was not interrupted ({len(before)}/{TOTAL} blocks done)"

    status = cli("status", out)
    assert status.returncode == 3
    assert f"{len(before)}/{TOTAL} blocks done" in status.stdout and "running" in status.stdout

    resumed = cli(*args, "--workers", "2", "--resume", cwd=tmp_path)  # the worker count is free to change
    assert resumed.returncode == 0, resumed.stderr
    total, done, skipped, failed = summary_counts(resumed.stderr)
    assert (total, skipped, failed) == (TOTAL, len(before), 0), "only the missing blocks may be recomputed"
    assert done == TOTAL - len(before)
    after = done_markers(out)
    assert set(after) == {f"{i}.{j}.{k}" for i in range(17) for j in range(4) for k in range(4)}
    assert {k: after[k] for k in before} == before, "markers of finished blocks must not be rewritten"
    assert partial_files(out) == []

    result = read_output(out)
    assert np.array_equal(result, expected)
    clean = tmp_path / "clean.ome.zarr"
    assert upsample(UpsampleRequest(input=source, output=str(clean), factor=FACTOR, progress=False),
                    client=client).ok
    assert np.array_equal(result, read_output(clean)), "a resumed run must equal a clean run"
    assert cli("status", out).returncode == 0


def shard_path(out, key: str) -> str:
    return os.path.join(str(out), "0", "c", *key.split("."))


def test_torn_shards_are_rewritten_on_resume(tmp_path, client, source, expected, cli):
    """Shards broken by a crash (truncated, garbage, leftover temp files) of blocks without a done marker."""
    out = tmp_path / "out.ome.zarr"
    args = ["upsample", source, str(out), "--factor", str(FACTOR), "--block-shape", "32,64,64",
            "--no-progress"]
    req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, block_shape=(32, 64, 64), progress=False)
    assert upsample(req, client=client).ok  # 5 x 2 x 2 blocks
    markers = os.path.join(str(out), ".isovol", "done")
    truncated, garbage, missing, edge = "1.0.1", "2.1.0", "3.1.1", "4.1.1"  # 4.1.1: the last, one-slice row
    for key in (truncated, garbage, missing, edge):
        os.remove(os.path.join(markers, key))
    for key in (truncated, edge):
        with open(shard_path(out, key), "r+b") as f:
            f.truncate(os.path.getsize(shard_path(out, key)) // 2)
    with open(shard_path(out, garbage), "wb") as f:
        f.write(os.urandom(1000))
    os.remove(shard_path(out, missing))
    leftover = shard_path(out, "0.0.0") + ".0123456789abcdef.partial"
    with open(leftover, "wb") as f:
        f.write(b"half a shard")
    kept = {k: v for k, v in done_markers(out).items()}
    with pytest.raises(Exception):  # noqa: B017  the damage is real: the torn shards cannot be read
        read_output(out)

    resumed = cli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert summary_counts(resumed.stderr) == (20, 4, 16, 0)
    assert partial_files(out) == []
    assert np.array_equal(read_output(out), expected)
    assert {k: v for k, v in done_markers(out).items() if k in kept} == kept
    assert len(done_markers(out)) == 20


@pytest.fixture(scope="module")
def incomplete(tmp_path_factory, client, source) -> tuple[str, list[str]]:
    """A finished output with one done marker removed, so a resume would have work to do."""
    out = str(tmp_path_factory.mktemp("incomplete") / "out.ome.zarr")
    args = ["upsample", source, out, "--factor", str(FACTOR), "--block-shape", "64,64,64", "--no-progress"]
    assert upsample(UpsampleRequest(input=source, output=out, factor=FACTOR, block_shape=(64, 64, 64),
                                    progress=False), client=client).ok
    os.remove(os.path.join(out, ".isovol", "done", "1.1.1"))
    return out, args


@pytest.mark.parametrize("change", [["--factor", "8"], ["--method", "linear"], ["--method", "nearest"],
                                    ["--block-shape", "32,64,64"]])
def test_resume_with_a_changed_run_is_refused(tmp_path, incomplete, cli, change, snapshot):
    out, args = incomplete
    before = snapshot(out)
    opts = list(args)
    if change[0] in opts:
        opts[opts.index(change[0]) + 1] = change[1]
    else:
        opts += change
    res = cli(*opts, "--resume", cwd=tmp_path)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("isovol: error: cannot resume") and "--overwrite" in lines[0]
    assert snapshot(out) == before, "a refused resume must add no marker and touch nothing"
    assert "1.1.1" not in os.listdir(os.path.join(out, ".isovol", "done"))


def test_resume_of_a_missing_output_just_runs(tmp_path, source, expected, cli):
    out = tmp_path / "fresh.ome.zarr"
    res = cli("upsample", source, out, "--factor", FACTOR, "--block-shape", "64,64,64", "--workers", "1",
              "--resume", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert summary_counts(res.stderr) == (12, 12, 0, 0)
    assert np.array_equal(read_output(out), expected)


def finished_run(tmp_path, client, source):
    """A finished output of 20 blocks, its request, and the executor context of that run (what a worker gets)."""
    from isovol.workflows import block_task
    from isovol.workflows.bookkeeping import Bookkeeper
    from isovol.workflows.upsample import prepare

    out = tmp_path / "out.ome.zarr"
    req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, block_shape=(32, 64, 64), progress=False)
    assert upsample(req, client=client).ok
    vol, method, plan = prepare(req)
    keeper = Bookkeeper(str(out), {})
    return out, req, block_task.BlockContext(vol, method, plan, str(out), {}, keeper, keeper.read_record().tag)


@pytest.mark.parametrize("shard_writer", [True, False], ids=["isovol's shard writer", "zarr"])
def test_a_rewrite_withdraws_the_marker_before_it_deletes_shards(tmp_path, client, source, expected, monkeypatch,
                                                                 shard_writer):
    """A block marked done by another attempt (a timed-out one that went on) whose shard is torn.  isovol's shard
    writer writes whole shards without reading them (an edge shard too), so it simply replaces it.  zarr (layouts
    the shard writer does not serve) reads an edge shard to rewrite it and cannot: the block deletes its shards
    and writes them afresh, and the marker goes before the shard, so a kill in between never leaves a marked
    hole."""
    from isovol.pipeline.io import shard_writer as writer
    from isovol.workflows import block_task

    if not shard_writer:
        monkeypatch.setattr(writer, "layout_of", lambda array: None)
    out, _, ctx = finished_run(tmp_path, client, source)
    keeper = ctx.keeper
    block = next(b for b in ctx.plan.blocks() if b.key == "1.0.1")
    with open(shard_path(out, block.key), "r+b") as f:  # torn: zarr cannot read it to rewrite it in place
        f.truncate(os.path.getsize(shard_path(out, block.key)) // 2)
    seen = []
    real = block_task.clear_shards

    def clear(array, lo, hi):
        seen.append(block.key in keeper.done_keys())
        real(array, lo, hi)

    monkeypatch.setattr(block_task, "clear_shards", clear)
    block_task.run_block(ctx, block)
    assert seen == ([] if shard_writer else [False]), "the marker must be gone before the shards are deleted"
    assert block.key in keeper.done_keys(ctx.digest)  # marked again once rewritten
    assert np.array_equal(read_output(out), expected)


def test_a_late_marker_from_an_earlier_generation_of_the_output_does_not_count(tmp_path, client, source, expected):
    """A block still running for a killed client (external cluster) may mark itself done after --overwrite deleted
    its shards: same run hash, but an earlier generation of the output, so the resume recomputes the block."""
    out, req, _ = finished_run(tmp_path, client, source)
    marker = os.path.join(str(out), ".isovol", "done", "1.0.1")
    with open(marker, "rb") as f:
        late = f.read()
    assert upsample(UpsampleRequest(**{**req.__dict__, "overwrite": True}), client=client).ok
    os.remove(shard_path(out, "1.0.1"))  # the orphan's shard went with the overwrite ...
    with open(marker, "wb") as f:  # ... and its marker landed afterwards
        f.write(late)
    resumed = upsample(UpsampleRequest(**{**req.__dict__, "resume": True}), client=client)
    assert resumed.ok and resumed.done == 1 and resumed.skipped == 19
    assert np.array_equal(read_output(out), expected)


def test_a_block_of_a_replaced_run_does_not_write(tmp_path, client, source, expected):
    """A task of an earlier generation (still running on an external cluster after its client was killed and the
    output overwritten) stops before it writes, instead of putting its shards into the new output."""
    from isovol.pipeline.errors import StaleRunError
    from isovol.workflows import block_task

    out, req, stale = finished_run(tmp_path, client, source)
    assert upsample(UpsampleRequest(**{**req.__dict__, "overwrite": True}), client=client).ok
    block = next(b for b in stale.plan.blocks() if b.key == "2.1.0")
    before = os.stat(shard_path(out, block.key)).st_mtime_ns
    with pytest.raises(StaleRunError, match="deleted or replaced by another run"):
        block_task.run_block(stale, block)
    assert os.stat(shard_path(out, block.key)).st_mtime_ns == before
    assert np.array_equal(read_output(out), expected)

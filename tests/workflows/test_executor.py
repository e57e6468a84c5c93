"""The blockwise executor: any block decomposition is bit-exact, transient errors are retried, bugs are not.

All runs go through the real path (zarr v3 stores on disk, a real dask LocalCluster, whole-shard writes,
done markers) and are compared with the single in-memory call ``upsample_array`` on the real FIB-SEM crop.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
import zarr
from clirun import read_output, write_input

from isovol.pipeline.io.runrecord import RunState
from isovol.pipeline.methods import get_method, upsample_array
from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows import upsample as upsample_mod
from isovol.workflows.bookkeeping import Bookkeeper
from isovol.workflows.executor import Summary, is_transient
from isovol.workflows.upsample import UpsampleRequest, upsample

YX = (slice(20, 84), slice(30, 110))  # a 64 x 80 window of the crop: neither axis a power of two


def lowres(crop: np.ndarray, factor: int, nz: int | None = None) -> np.ndarray:
    """The crop decimated along Z by ``factor`` (slices 0, r, 2r, ...), as an anisotropic input of ``nz`` slices."""
    return np.ascontiguousarray(crop[::factor, YX[0], YX[1]][:nz])


def markers(url: str) -> set[str]:
    done = os.path.join(url, ".isovol", "done")
    return {n for n in os.listdir(done) if not n.startswith(".")} if os.path.isdir(done) else set()


# (method, factor, block_shape, shard_shape, chunk_shape, input slices); None = the default / all
CASES = [
    *[(m, r, (7, 33, 50), None, None, None) for m in ("nearest", "linear", "cubic") for r in (4, 8, 10)],
    ("cubic", 8, (1, 64, 80), None, None, 5),  # one output slice per block
    ("cubic", 8, (8, 64, 80), None, None, None),  # blocks aligned with the input slices
    ("cubic", 10, (3, 128, 33), None, None, 6),  # y clipped to the volume, x not dividing
    ("cubic", 8, (16, 32, 40), (8, 16, 20), (4, 8, 10), None),  # several shards per block, chunks per shard
    ("linear", 4, (14, 66, 100), (7, 33, 50), None, None),  # shards that do not divide the output
    ("nearest", 10, (20, 64, 40), (10, 32, 20), (5, 16, 20), None),
    ("cubic", 4, (500, 500, 500), None, None, None),  # one block for the whole volume
]


@pytest.mark.parametrize("method,factor,block,shard,chunk,nz", CASES, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else str(v))
def test_blockwise_equals_single_call(tmp_path, client, crop, method, factor, block, shard, chunk, nz):
    volume = lowres(crop, factor, nz)
    src = write_input(tmp_path / "in.ome.zarr", volume, factor)
    out = str(tmp_path / "out.ome.zarr")
    req = UpsampleRequest(input=src, output=out, factor=factor, method=method, block_shape=block,
                          shard_shape=shard, chunk_shape=chunk, progress=False)
    summary = upsample(req, client=client)
    assert summary.ok, summary.line()
    assert summary.done == summary.total and summary.skipped == 0 and not summary.failed

    expected = upsample_array(volume, factor, get_method(method))
    result = read_output(out)
    assert result.shape == ((volume.shape[0] - 1) * factor + 1,) + volume.shape[1:] == expected.shape
    assert result.dtype == volume.dtype == np.uint8
    assert np.array_equal(result, expected)
    assert np.array_equal(result[::factor], volume), "kept slices must be exact copies of the input"
    if method != "nearest":  # the synthesised slices are really new (not copies of a neighbour)
        assert not np.array_equal(result[1], result[0])

    arr = zarr.open_array(store=os.path.join(out, "0"), mode="r")
    want_shard = tuple(min(s, n) for s, n in zip(shard or block, result.shape))
    assert arr.shards == want_shard
    assert markers(out) == {".".join(map(str, i)) for i in np.ndindex(*[-(-n // min(b, n)) for n, b in
                                                                        zip(result.shape, block)])}


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_dtype_is_kept_and_exact(tmp_path, client, crop, dtype):
    base = lowres(crop, 8)
    volume = (base.astype(np.uint16) * 257) if dtype == "uint16" else (base.astype(np.float32) / 255.0)
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, method="cubic", block_shape=(12, 32, 48),
                                       progress=False), client=client)
    assert summary.ok
    result = read_output(out)
    assert result.dtype == np.dtype(dtype)
    assert np.array_equal(result, upsample_array(volume, 8, get_method("cubic")))
    assert np.array_equal(result[::8], volume)


# -- failure handling --------------------------------------------------------------------------------------------


class FlakyCubic(Interpolation):
    """Cubic interpolation whose first call on each input stack fails with ``exc`` (a file per stack, so the
    count survives retries on other workers or processes)."""

    def __init__(self, state_dir, exc: type[Exception] = ConnectionError):
        super().__init__("cubic")
        self.state_dir, self.exc = str(state_dir), exc

    def apply(self, data, factor, start, stop):
        tag = hashlib.sha1(data.tobytes() + f"{start}:{stop}:{data.shape}".encode()).hexdigest()
        try:
            os.close(os.open(os.path.join(self.state_dir, tag), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().apply(data, factor, start, stop)
        raise self.exc("simulated: connection reset by peer")


class SlowOnce(Interpolation):
    """Cubic interpolation whose very first call (of the whole run) hangs for ``seconds``."""

    def __init__(self, state_dir, seconds: float):
        super().__init__("cubic")
        self.flag, self.seconds = os.path.join(str(state_dir), "slow"), seconds

    def apply(self, data, factor, start, stop):
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            time.sleep(self.seconds)
        except FileExistsError:
            pass
        return super().apply(data, factor, start, stop)


@pytest.fixture
def inject(monkeypatch):
    """Make ``upsample`` use the given method object (the CLI offers only registered names)."""

    def _inject(method):
        monkeypatch.setattr(upsample_mod, "get_method", lambda name, **_: method)

    return _inject


def test_transient_errors_are_retried(tmp_path, client, crop, inject):
    state = tmp_path / "state"
    state.mkdir()
    inject(FlakyCubic(state))
    volume = lowres(crop, 8)
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(32, 32, 40), progress=False),
                       client=client)
    assert summary.ok, summary.line()
    assert summary.total == 5 * 2 * 2 and summary.done == summary.total
    assert summary.retried == len(os.listdir(state)) == summary.total  # every block failed once, then worked
    assert "retries" in summary.line()
    assert len(markers(out)) == summary.total
    assert np.array_equal(read_output(out), upsample_array(volume, 8, get_method("cubic")))


def test_transient_errors_beyond_the_retry_budget_fail(tmp_path, client, crop, inject):
    state = tmp_path / "state"
    state.mkdir()
    inject(FlakyCubic(state))
    src = write_input(tmp_path / "in.ome.zarr", lowres(crop, 8), 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(129, 32, 40), retries=0,
                                       progress=False), client=client)
    assert not summary.ok
    assert summary.retried == 0 and summary.done == 0
    assert set(summary.failed) == {"0.0.0", "0.0.1", "0.1.0", "0.1.1"}
    assert all("ConnectionError" in msg for msg in summary.failed.values())
    assert markers(out) == set()


class BrokenLastSlab(Interpolation):
    """Cubic interpolation with a deterministic bug: it raises on blocks of a single output slice."""

    def __init__(self):
        super().__init__("cubic")

    def apply(self, data, factor, start, stop):
        if stop - start == 1:
            raise ValueError("bad slab geometry")
        return super().apply(data, factor, start, stop)


def test_deterministic_errors_are_not_retried(tmp_path, client, crop, inject, cli):
    inject(BrokenLastSlab())
    volume = lowres(crop, 8)  # 17 slices -> 129 output slices; blocks of 16 leave one slice in the last row
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    req = UpsampleRequest(input=src, output=out, factor=8, block_shape=(16, 32, 40), progress=False)
    summary = upsample(req, client=client)
    bad = {"8.0.0", "8.0.1", "8.1.0", "8.1.1"}
    assert not summary.ok
    assert set(summary.failed) == bad
    assert all(msg.startswith("ValueError: bad slab geometry") for msg in summary.failed.values())
    assert summary.retried == 0, "a deterministic error must not be retried"
    assert summary.done == 32 and summary.total == 36 and summary.not_run == 0
    assert "4 failed" in summary.line()
    assert markers(out) == {f"{i}.{j}.{k}" for i in range(8) for j in range(2) for k in range(2)}
    assert Bookkeeper(out, {}).read_record().state is RunState.INCOMPLETE

    status = cli("status", out)
    assert status.returncode == 3, status.stderr
    assert "32/36" in status.stdout and "incomplete" in status.stdout

    # the bug fixed (same configuration), a resume computes exactly the failed blocks
    inject(get_method("cubic"))
    req.resume = True
    again = upsample(req, client=client)
    assert again.ok and again.skipped == 32 and again.done == 4
    assert np.array_equal(read_output(out), upsample_array(volume, 8, get_method("cubic")))
    assert cli("status", out).returncode == 0


class AlwaysBroken(Interpolation):
    def __init__(self):
        super().__init__("linear")

    def apply(self, data, factor, start, stop):
        raise RuntimeError("model weights do not match the architecture")


def test_stops_submitting_after_too_many_failures(tmp_path, client, crop, inject):
    inject(AlwaysBroken())
    src = write_input(tmp_path / "in.ome.zarr", lowres(crop, 8), 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(8, 16, 16), progress=False),
                       client=client)
    assert summary.total == 17 * 4 * 5
    assert summary.done == 0 and summary.retried == 0
    assert len(summary.failed) >= 10, "the executor gives up after max_failures (10) failed blocks"
    assert summary.not_run > 0 and len(summary.failed) + summary.not_run == summary.total
    assert "not run" in summary.line()
    assert markers(out) == set()


def test_block_timeout_is_retried(tmp_path, client, crop, inject):
    state = tmp_path / "state"
    state.mkdir()
    inject(SlowOnce(state, seconds=2.0))
    volume = lowres(crop, 8)
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(129, 64, 40), retries=5,
                                       block_timeout=0.75, progress=False), client=client)
    assert summary.ok, summary.line()
    assert summary.retried >= 1, "the hung block must have been given up on and resubmitted"
    assert markers(out) == {"0.0.0", "0.0.1"}
    assert np.array_equal(read_output(out), upsample_array(volume, 8, get_method("cubic")))


class SlowEvery(Interpolation):
    """Cubic interpolation that takes ``seconds`` for every block."""

    def __init__(self, seconds: float):
        super().__init__("cubic")
        self.seconds = seconds

    def apply(self, data, factor, start, stop):
        time.sleep(self.seconds)
        return super().apply(data, factor, start, stop)


def test_block_timeout_counts_from_when_the_block_starts_not_from_submission(tmp_path, client, crop, inject):
    """Four blocks per worker thread are submitted at once; the last ones start 1.8 s after the first, and then
    wait 0.6 s for the compute before them. A clock from submission would time them out (0.6 s of work, done
    3.0 s after submission, 2.0 s limit); a clock from the task's own start (its start event, 1.2 s) does not."""
    inject(SlowEvery(0.6))
    volume = lowres(crop, 8)
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(129, 32, 20), retries=0,
                                       block_timeout=2.0, progress=False), client=client)
    assert summary.total == 8 and summary.ok, summary.line()
    assert summary.retried == 0 and not summary.failed


def test_a_stuck_block_is_named_with_its_worker(tmp_path, client, crop, inject, monkeypatch, caplog):
    """Without --block-timeout a frozen worker is left to dask's worker-ttl (minutes): the wait must not be silent.
    A block running far longer than the others (here: past 0.3 s; the others take milliseconds) is named, once,
    with its worker, and the run still ends exact."""
    from isovol.workflows import cluster_watch

    monkeypatch.setattr(cluster_watch, "STALL_SECONDS", 0.3)
    state = tmp_path / "state"
    state.mkdir()
    inject(SlowOnce(state, seconds=2.5))
    volume = lowres(crop, 8)
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    with caplog.at_level("WARNING", logger=cluster_watch.__name__):
        summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(129, 32, 40),
                                           progress=False), client=client)
    assert summary.ok and summary.retried == 0, summary.line()
    stuck = [r.getMessage() for r in caplog.records if "has run for" in r.getMessage()]
    assert stuck, "the slow block must be named"
    assert len({m.split()[1] for m in stuck}) == len(stuck), f"each block is named once: {stuck}"
    assert all("worker-ttl" in m and "--block-timeout" in m for m in stuck), stuck
    assert all(any(f"on worker {w}" in m for w in client.nthreads()) for m in stuck), stuck
    assert np.array_equal(read_output(out), upsample_array(volume, 8, get_method("cubic")))


@pytest.mark.parametrize("exc,transient", [
    (ConnectionError("reset"), True),
    (TimeoutError("slow"), True),
    (OSError("SlowDown: please reduce your request rate"), True),
    (RuntimeError("503 Service Unavailable"), True),
    (Exception("ServiceUnavailable"), True),
    (ValueError("bad slab geometry"), False),
    (RuntimeError("CUDA out of memory"), False),
    (FileNotFoundError("no such file"), False),
    (PermissionError("denied"), False),
    (KeyError("x"), False),
])
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_is_transient_for_lost_workers():
    from distributed import KilledWorker

    assert is_transient(KilledWorker("isovol-block-0.0.0", "tcp://w:1", 3))


def test_summary_line():
    s = Summary(total=10, skipped=3, done=5, failed={"1.0.0": "ValueError: x", "2.0.0": "ValueError: y"}, retried=4,
                seconds=1.25)
    assert not s.ok
    assert s.line() == "10 blocks: 5 done, 3 skipped (already done), 2 failed, 4 retries in 1.2 s"
    assert Summary(total=2, done=2).ok and not Summary(total=2, done=1, not_run=1).ok


def _unretrieved_task_failing_with(exc: BaseException, capsys) -> str:
    """What asyncio prints on stderr when a task that raised ``exc`` is dropped with nobody awaiting it."""
    import asyncio
    import gc
    import logging

    async def fail() -> None:
        raise exc

    loop = asyncio.new_event_loop()
    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0.01))
    handler = logging.StreamHandler()  # to the stderr capsys holds now
    logging.getLogger("asyncio").addHandler(handler)
    try:
        del task
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
        loop.close()
    return capsys.readouterr().err


def test_an_abandoned_result_fetch_prints_no_traceback(capsys):
    """A block whose worker froze after finishing it is retried; distributed's inner gather task, given up, later
    ends in AllExit: asyncio's "never retrieved" traceback for it is dropped, any other task's is still shown."""
    from distributed.client import AllExit

    assert _unretrieved_task_failing_with(AllExit(), capsys) == ""
    assert "ValueError: kept" in _unretrieved_task_failing_with(ValueError("kept"), capsys)


def test_block_results_come_with_the_blocks_events_not_from_the_workers(tmp_path, client, crop, monkeypatch):
    """A finished block's small result (voxels, phase timings) travels on the run's event topic with the scheduler's
    messages: the client fetches nothing from the worker (no round trip per block; a worker frozen after its last
    block is never asked).  With fetching broken, every block and pyramid level is still done, none retried."""
    import distributed

    def no_fetch(self, *args, **kwargs):
        raise AssertionError("a block's result was fetched from its worker")

    monkeypatch.setattr(distributed.Future, "result", no_fetch)
    volume = lowres(crop, 8)
    src = write_input(tmp_path / "in.ome.zarr", volume, 8)
    out = str(tmp_path / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=8, block_shape=(32, 32, 40), levels=1,
                                       progress=False), client=client)
    assert summary.ok and summary.retried == 0, summary.line()
    assert summary.done == summary.total == 5 * 2 * 2
    assert summary.voxels == (volume.shape[0] - 1) * 8 * 64 * 80 + 64 * 80  # every block's count arrived
    assert summary.phases["encode"] > 0 and summary.phases["fsync"] > 0
    assert np.array_equal(read_output(out), upsample_array(volume, 8, get_method("cubic")))

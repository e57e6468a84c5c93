"""Workers killed, frozen or gone for good while ``isovol upsample`` runs on a real cluster of worker processes.

Each run uses ``gated-nearest``, a test method installed as a plugin (module + entry point, what pip leaves) so
that the command and its worker processes find it: it writes ``started-<pid>-<z>`` when a block starts and then
waits until the test opens its gate.  The test therefore knows which worker processes hold blocks before it kills
or stops them -- no sleeps, no races -- and every run must end bitwise equal to ``nearest`` over the whole volume
(what an unkilled run writes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from isovol.pipeline.degrade import decimate_z
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.io.runrecord import RunState
from isovol.pipeline.methods import get_method, upsample_array
from isovol.workflows.bookkeeping import Bookkeeper
from isovol.workflows.demo_data import load_crop

BIN = Path(sys.executable).parent
FACTOR = 8
MODULE = "isovol_gated_plugin"
PLUGIN = '''"""gated-nearest: nearest along Z; blocks wait at a gate (a folder) until the test opens it."""
import os
import time
from pathlib import Path

import numpy as np

from isovol.pipeline.methods import Halo, Kind, Method, MethodEntry


class GatedNearest(Method):
    name = "gated-nearest"
    halo = Halo(z=0, y=0, x=0)
    deterministic = True
    working_bytes_per_voxel = 0

    def __init__(self, gate):
        self.gate = Path(gate)

    def config(self):
        return {"name": self.name}

    def apply(self, data, factor, start, stop):
        j = np.arange(start, stop)
        return data[(2 * j + factor) // (2 * factor)]

    def apply_at(self, data, factor, start, stop, origin):
        z = int(origin[0])
        (self.gate / f"started-{os.getpid()}-{z}").touch()
        try:
            os.remove(self.gate / "pass-one")  # one block, whichever starts first, goes through
        except FileNotFoundError:
            while not (self.gate / "open").exists():
                time.sleep(0.01)
        return self.apply(data, factor, start, stop)


ENTRY = MethodEntry("gated-nearest", Kind.CLASSICAL, "test: nearest along Z behind a gate",
                    lambda model, **options: GatedNearest(**options))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of the commands: the plugin on the path (for the command and its workers), one thread."""
    where = tmp_path_factory.mktemp("plugin")
    info = where / f"{MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[isovol.methods]\ngated-nearest = {MODULE}:ENTRY\n")
    (where / f"{MODULE}.py").write_text(PLUGIN)
    path = os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def low() -> np.ndarray:
    """Every 8th slice of the bundled crop, 17 x 64 x 64 uint8: 129 output slices, 5 blocks of 32."""
    volume, _ = load_crop()
    low, _ = decimate_z(np.ascontiguousarray(volume[:, :64, :64]), FACTOR)
    return low


@pytest.fixture(scope="module")
def source(low, tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("input") / "in.ome.zarr")
    write_image(url, low, (10.0 * FACTOR, 10.0, 10.0))
    return url


@pytest.fixture(scope="module")
def expected(low) -> np.ndarray:
    return upsample_array(low, FACTOR, get_method("nearest"))


class Run:
    """``isovol upsample`` with gated-nearest in its own process group, killed with its workers on teardown."""

    def __init__(self, env: dict[str, str], source: str, tmp: Path, *args: str):
        self.gate, self.out = tmp / "gate", tmp / "out.ome.zarr"
        self.gate.mkdir(exist_ok=True)
        self.cmd = [str(BIN / "isovol"), "upsample", source, str(self.out), "--factor", str(FACTOR),
                    "--method", "gated-nearest", "--option", f"gate={self.gate}", "--block-shape", "32,64,64",
                    "--no-progress", *args]
        self.env = env
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def started(self) -> dict[int, set[int]]:
        """Worker pid -> input z of the blocks it started."""
        out: dict[int, set[int]] = {}
        for p in self.gate.glob("started-*"):
            _, pid, z = p.name.split("-")
            out.setdefault(int(pid), set()).add(int(z))
        return out

    def until(self, what: str, cond, timeout: float = 90.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = cond()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"isovol ended (exit {self.proc.returncode}) before {what}:\n{self.proc.stderr.read()}")
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}: {sorted(p.name for p in self.gate.iterdir())}")

    def open(self) -> None:
        (self.gate / "open").touch()

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"isovol hung for {timeout:.0f} s:\n{err}")
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the command and its workers, stopped ones too


@pytest.fixture
def run(env, source, tmp_path):
    runs: list[Run] = []

    def _run(*args: str) -> Run:
        runs.append(Run(env, source, tmp_path, *args))
        return runs[-1]

    yield _run
    for r in runs:
        r.kill()


def markers(out: Path) -> set[str]:
    """The done markers written so far (not the temporary files they are written through)."""
    done = out / ".isovol" / "done"
    return {p.name for p in done.iterdir() if not p.name.startswith(".")} if done.is_dir() else set()


def check_complete(code: int, err: str, out: Path, expected: np.ndarray) -> None:
    assert code == 0, err  # (dask may log the tracebacks of the workers it lost: its own business)
    assert Bookkeeper(str(out), {}).read_record().state is RunState.COMPLETE
    assert np.array_equal(zarr.open_array(store=str(out / "0"), mode="r")[...], expected)


def test_workers_killed_all_at_once_and_again_are_replaced(run, expected):
    """Both workers SIGKILLed while they hold blocks, then the replacement of one killed again: the nannies
    start new workers, the scheduler reruns the blocks (the run's context too, which lived on the dead workers)."""
    r = run("--workers", "2")
    first = r.until("both workers to hold a block", lambda: len(r.started()) >= 2 and r.started())
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    again = r.until("a new worker to hold a block", lambda: set(r.started()) - set(first))
    os.kill(min(again), signal.SIGKILL)
    r.open()
    check_complete(*r.finish(), r.out, expected)


def test_frozen_worker_is_restarted_after_the_block_timeout(run, expected):
    """A worker stopped (SIGSTOP) while it holds a block: the block times out, is resubmitted, and the frozen
    worker is restarted by its nanny, which also frees the block queued on it."""
    r = run("--workers", "2", "--block-timeout", "3")
    pids = r.until("both workers to hold a block", lambda: len(r.started()) >= 2 and r.started())
    os.kill(min(pids), signal.SIGSTOP)
    r.open()
    code, err = r.finish()
    assert "retry 1/2: TimeoutError" in err and "restarting its worker" in err, err
    check_complete(code, err, r.out, expected)


@pytest.fixture
def lone_worker(env, tmp_path):
    """A cluster that cannot replace a lost worker: a scheduler and one worker without a nanny, as separate
    processes (what ``--scheduler`` joins).  Yields (scheduler address, the worker's process)."""
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--scheduler-file", str(info), "--port", "0",
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(info), "--no-nanny",
                                   "--nthreads", "1", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:  # the scheduler may be writing the file right now
                address = json.loads(info.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        else:
            pytest.fail("the scheduler did not start within 60 s")
        yield address, procs[1]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_cluster_that_gives_no_worker_back_stops_resumably(run, lone_worker, tmp_path, expected):
    """The only worker killed, and nothing restarts it: after the cluster config's worker_wait the run stops
    with a clear line, exit 1, the output "incomplete" with its done blocks kept; --resume then finishes it."""
    address, worker = lone_worker
    config = tmp_path / "cluster.yaml"
    config.write_text("worker_wait: 1\n")
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "pass-one").touch()  # the first block to start goes through, the others wait
    r = run("--scheduler", address, "--cluster-config", str(config))
    r.until("a block done and another held", lambda: sum(map(len, r.started().values())) >= 2 and markers(r.out))
    worker.kill()
    code, err = r.finish(timeout=60)
    assert code == 1 and "Traceback" not in err, err
    assert "stopped: the cluster has had no workers for" in err, err
    assert "rerun the same command with --resume" in err
    keeper = Bookkeeper(str(r.out), {})
    assert keeper.read_record().state is RunState.INCOMPLETE
    kept = keeper.done_keys(keeper.read_record().tag)
    assert len(kept) == 1 and kept == markers(r.out)

    r.open()
    threads = tmp_path / "threads.yaml"
    threads.write_text("processes: false\n")  # any cluster will do for the resume: the cheapest
    again = run("--resume", "--workers", "1", "--cluster-config", str(threads))
    code, err = again.finish()
    assert "1 skipped" in err, err
    check_complete(code, err, r.out, expected)

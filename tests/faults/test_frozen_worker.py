"""A worker frozen before its blocks could report their start: ``--block-timeout`` must still free them.

``benchmarks/faults.py`` (frozen-timeout) found a run left at 270/272 blocks with ``--block-timeout 5`` when a worker
was SIGSTOPped at a random moment: the executor times a block from its start event, so a block the frozen worker
holds without having announced it never expires and nothing restarts that worker.  ``freeze-nearest`` (a test
method installed as a plugin, so the command's worker processes find it) makes that moment deterministic: the
second worker process to receive the method stops itself (SIGSTOP) while it unpacks it, before any of its blocks
starts.  The run must still end, bitwise equal to ``nearest``.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest
from faultkit import (
    ENV,
    Launch,
    done_markers,
    read_level,
    reference,
    run_state,
    upsample_args,
    voxels_lost,
    write_input,
)

from isovol.pipeline.methods import get_method, upsample_array
from isovol.workflows.demo_data import load_crop

MODULE = "isovol_freeze_plugin"
PLUGIN = '''"""freeze-nearest: nearest along Z; the second worker process to unpack the method stops itself."""
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np

from isovol.pipeline.methods import Halo, Kind, Method, MethodEntry


class FreezeNearest(Method):
    name = "freeze-nearest"
    halo = Halo(z=0, y=0, x=0)
    deterministic = True
    working_bytes_per_voxel = 0

    def __init__(self, gate):
        self.gate = str(gate)

    def config(self):
        return {"name": self.name}

    def __setstate__(self, state):
        self.__dict__.update(state)
        gate = Path(self.gate)
        if multiprocessing.parent_process() is None or not gate.is_dir():  # the command itself, or no gate
            return
        (gate / f"pid-{os.getpid()}").touch()
        pids = sorted(gate.glob("pid-*"), key=lambda p: p.stat().st_mtime_ns)
        if len(pids) >= 2 and pids[1].name == f"pid-{os.getpid()}" and not (gate / "frozen").exists():
            (gate / "frozen").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)

    def apply(self, data, factor, start, stop):
        j = np.arange(start, stop)
        return data[(2 * j + factor) // (2 * factor)]


ENTRY = MethodEntry("freeze-nearest", Kind.CLASSICAL, "test: nearest; one worker process freezes",
                    lambda model, **options: FreezeNearest(**options))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    where = tmp_path_factory.mktemp("plugin")
    info = where / f"{MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[isovol.methods]\nfreeze-nearest = {MODULE}:ENTRY\n")
    (where / f"{MODULE}.py").write_text(PLUGIN)
    return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(where), ENV.get("PYTHONPATH")]))}


@pytest.mark.slow  # about 20 s: the frozen worker is restarted after 2 x --block-timeout, its blocks rerun
def test_a_worker_frozen_before_its_blocks_start_is_restarted(env, source, low, tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "out.ome.zarr"
    gate.mkdir()
    run = Launch(upsample_args(source, out, "--workers", "2", "--method", "freeze-nearest", "--option",
                               f"gate={gate}", "--block-timeout", "2"), env=env)
    try:
        assert run.wait_for(lambda: (gate / "frozen").exists(), 120), run.stderr()
        ended = run.wait_for(lambda: not run.running(), 45, every=0.1)
        assert ended, f"hung at {len(done_markers(out))}/68 blocks done 45 s after a worker froze:\n{run.stderr()}"
    finally:
        run.kill()
    code, err = run.finish()
    assert code == 0 and run_state(out) == "complete", err
    assert np.array_equal(read_level(out), upsample_array(low, 8, get_method("nearest")))


@pytest.mark.slow  # about 20 s
def test_a_worker_frozen_mid_run_does_not_hang_the_client(tmp_path):
    """SIGSTOP a worker process while blocks flow (as benchmarks/faults.py does): blocks it was running time out,
    and a block it had finished whose result the client had not fetched yet must not hang the client (results are
    fetched with a time-out).  Whether the freeze lands in that window depends on timing: before the time-out,
    benchmarks/faults.py's frozen-worker row and a script doing what this test does hung in about half the runs;
    here the run must end exact whichever way the freeze falls."""
    low = np.ascontiguousarray(load_crop()[0][::8])  # 17 x 128 x 128: 272 blocks of 32^3
    src = write_input(tmp_path / "big.ome.zarr", low)
    out = tmp_path / "out.ome.zarr"
    run = Launch(upsample_args(src, out, "--workers", "2", "--block-timeout", "5"))
    try:
        assert run.wait_for(lambda: done_markers(out), 120), run.stderr()
        time.sleep(0.13)  # blocks keep finishing: some have results the client has not fetched yet
        victims = sorted(p.pid for p in psutil.Process(run.proc.pid).children(recursive=True)
                         if "spawn_main" in " ".join(p.cmdline()))  # the worker processes
        assert victims, "no worker process found"
        os.kill(victims[0], signal.SIGSTOP)
        ended = run.wait_for(lambda: not run.running(), 90, every=0.2)
        assert ended, f"hung at {len(done_markers(out))}/272 blocks 90 s after a worker froze:\n{run.stderr()}"
    finally:
        run.kill()
    code, err = run.finish()
    assert code == 0 and run_state(out) == "complete", err
    assert voxels_lost(out, reference(low)) == 0

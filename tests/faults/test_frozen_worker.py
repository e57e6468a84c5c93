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

import numpy as np
import pytest
from faultkit import ENV, Launch, done_markers, mark_pending, read_level, run_state, upsample_args

from isovol.pipeline.methods import get_method, upsample_array

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
        if len(pids) == 2 and pids[1].name == f"pid-{os.getpid()}" and not (gate / "frozen").exists():
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


@pytest.mark.slow  # about 20 s: a worker frozen for 2 x --block-timeout, restarted, its blocks rerun
@mark_pending("frozen-worker-random")
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

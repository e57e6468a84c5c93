"""The fault suite's kit, shared by ``tests/faults/`` and ``benchmarks/faults*.py``: run the installed ``isovol``
as a user would (a subprocess in its own session), SIGKILL it with all its workers at a seeded point, and judge
what it left: the run state, the done markers, and every voxel of every level against the in-memory reference.

A plain module (no fixtures), so the benchmarks import it too (they put this folder on ``sys.path``).  It reads
the output with plain zarr and JSON, never through isovol's own reader, so a bug there cannot hide a loss.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

ISOVOL = str(Path(sys.executable).with_name("isovol"))
#: one OpenMP thread per command (the suite runs beside dask workers on two cores); no proxy for loopback
ENV = {**{k: v for k, v in os.environ.items() if "proxy" not in k.lower()}, "OMP_NUM_THREADS": "1",
       "NO_PROXY": "127.0.0.1,localhost"}
FACTOR = 8
#: 68 blocks of an output of 129 x 64 x 64: enough for a kill to land between markers
BLOCK = "8,32,32"
#: a cluster config of threads in the command's own process: the cheapest cluster, for trials about the command
THREADS = "processes: false\n"

#: What main does not do yet, by test or case name -> the item of issue 17 whose fix makes it pass, with why.
#: The ONE list of expected failures of the fault suite (tests mark them ``xfail(strict=False)`` through
#: :func:`pending`, the benchmarks print them): remove a line once its fix has landed.
PENDING: dict[str, tuple[int, str]] = {
}


def mark_pending(name: str) -> Callable:
    """Decorator: the test ``name`` is expected to fail while it is listed in :data:`PENDING`."""
    def decorate(test: Callable) -> Callable:
        for mark in pending(name):
            test = mark(test)
        return test
    return decorate


def pending(name: str) -> list:
    """The xfail mark of a test or case listed in :data:`PENDING` (none otherwise)."""
    import pytest

    if name not in PENDING:
        return []
    item, why = PENDING[name]
    return [pytest.mark.xfail(strict=False, reason=f"issue 17 item {item}: {why}")]


def isovol(*args: object, cwd: str | os.PathLike | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``isovol ARGS`` to its end; a command still running after ``timeout`` is killed with its group and
    reported with returncode -9 and what it wrote so far."""
    proc = Launch([ISOVOL, *map(str, args)], cwd=cwd, env=env)
    code, err = proc.finish(timeout)
    return subprocess.CompletedProcess(proc.cmd, code, proc.stdout, err)


def _temp(what: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"isovol-{what}-")
    os.close(fd)
    return Path(name)


class Launch:
    """A command in its own session (so SIGKILL reaches its worker processes too), stderr kept in a file."""

    def __init__(self, cmd: list[str], cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None):
        self.cmd, self.cwd = cmd, cwd
        self.err_path, self.out_path = _temp("stderr"), _temp("stdout")
        with open(self.err_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=out, stderr=err,
                                         start_new_session=True)
        self.started = time.monotonic()

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, cond: Callable[[], object], timeout: float = 60.0, every: float = 0.005) -> bool:
        """Poll ``cond`` until it holds (True) or the command ends or ``timeout`` passes (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            if not self.running():
                return bool(cond())
            time.sleep(every)
        return False

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until the command ends, whichever comes first."""
        self.wait_for(lambda: False, seconds)

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to the whole group; True if the command was still running.  After SIGKILL, waits until
        no process of the group is left (a worker that outlives its client could still write)."""
        alive = self.running()
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=30)
            end = time.monotonic() + 30
            while _group_alive(self.proc.pid) and time.monotonic() < end:
                time.sleep(0.02)
        return alive

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        """Wait for the end: (exit code, stderr); a command past ``timeout`` is SIGKILLed and gives -9.
        Its stdout is then in :attr:`stdout`."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        err = self.stderr()
        self.stdout = self.out_path.read_text(errors="replace")
        self.err_path.unlink(missing_ok=True)
        self.out_path.unlink(missing_ok=True)
        return self.proc.returncode, err


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies answer too: only count processes that are not zombies
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


# -- what a run left ---------------------------------------------------------------------------------------------
def done_markers(out: str | os.PathLike, level: int = 0) -> set[str]:
    """Done markers of level 0 (or of pyramid ``level``), without the temporary files they are written through."""
    base = Path(out) / ".isovol" / ("done" if level == 0 else f"pyramid/{level}")
    return {p.name for p in base.iterdir() if not p.name.startswith(".")} if base.is_dir() else set()


def any_marked_done(root: str | os.PathLike) -> bool:
    """Whether any folder below ``root`` holds a done marker (a refused request must leave none)."""
    return any(p.parent.name == "done" and not p.name.startswith(".") for p in Path(root).rglob("*")
               if p.parent.parent.name == ".isovol")


def run_state(out: str | os.PathLike) -> str | None:
    """The state in the run record (``creating`` ... ``complete``), None without a readable one."""
    try:
        return json.loads((Path(out) / ".isovol" / "run.json").read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        return None


def read_level(out: str | os.PathLike, level: int = 0) -> np.ndarray | None:
    """Level ``level`` read with plain zarr; None when it cannot be read at all."""
    try:
        return zarr.open_array(store=str(Path(out) / str(level)), mode="r")[...]
    except Exception:
        return None


def pyramid(expected: np.ndarray, levels: int) -> list[np.ndarray]:
    """The reference level 0 and the ``levels`` means after it, as a finished run must hold them."""
    from isovol.pipeline.pyramid import downsample_mean

    out = [expected]
    for _ in range(levels):
        out.append(downsample_mean(out[-1]))
    return out


def written_levels(out: str | os.PathLike) -> int:
    """How many pyramid levels the output's multiscales metadata lists after level 0."""
    try:
        attrs = json.loads((Path(out) / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
        return len(attrs["datasets"]) - 1
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def voxels_lost(out: str | os.PathLike, expected: np.ndarray, levels: int | None = None) -> int:
    """Voxels of level 0 and of the pyramid levels that differ from the reference (all of a level that cannot
    be read or has the wrong shape): 0 means the output is exact."""
    levels = written_levels(out) if levels is None else levels
    lost = 0
    for k, want in enumerate(pyramid(expected, levels)):
        got = read_level(out, k)
        if got is None or got.shape != want.shape or got.dtype != want.dtype:
            lost += want.size
        else:
            lost += int(np.count_nonzero(got != want))
    return lost


def exact(out: str | os.PathLike, expected: np.ndarray) -> bool:
    """Complete, and every voxel of every level equal to the reference."""
    return run_state(out) == "complete" and voxels_lost(out, expected) == 0


def error_line(res: subprocess.CompletedProcess) -> str | None:
    """The one stderr line of a clear refusal (``isovol: error...``, no traceback), None if it is not one."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith("isovol: error") or "Traceback" in res.stderr:
        return None
    return lines[0]


def tree(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``path`` with its size and mtime (ns): a snapshot to prove nothing changed."""
    out = {}
    for p in Path(path).rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns if p.is_file() else 0)
    return out


# -- inputs and trials -------------------------------------------------------------------------------------------
def low_volume(seed: int | None = None) -> np.ndarray:
    """Every 8th slice of 64 x 64 of the bundled FIB-SEM crop, 17 x 64 x 64 uint8 (``seed`` picks the corner)."""
    from isovol.workflows.demo_data import load_crop

    volume, _ = load_crop()
    y, x = (0, 0) if seed is None else random.Random(seed).choice([(0, 0), (0, 64), (64, 0), (64, 64)])
    return np.ascontiguousarray(volume[::FACTOR, y:y + 64, x:x + 64])


def write_input(path: str | os.PathLike, low: np.ndarray, chunks: tuple[int, int, int] = (64, 64, 64)) -> str:
    from isovol.pipeline.io.omezarr import write_image

    write_image(str(path), low, (10.0 * FACTOR, 10.0, 10.0), chunks=chunks)
    return str(path)


def reference(low: np.ndarray, method: str = "cubic") -> np.ndarray:
    """What an uninterrupted run writes at level 0: the method over the whole volume in one in-memory call."""
    from isovol.pipeline.methods import get_method, upsample_array

    return upsample_array(low, FACTOR, get_method(method))


def upsample_args(source: str, out: str | os.PathLike, *extra: object, cluster: str | None = None) -> list[str]:
    """The command line of a trial's run: small blocks, no progress bar, ``cluster`` (a config file) if given."""
    args = [ISOVOL, "upsample", source, str(out), "--factor", str(FACTOR), "--block-shape", BLOCK, "--no-progress"]
    if cluster:
        args += ["--cluster-config", cluster]
    return args + [str(e) for e in extra]


@dataclass
class Trial:
    """What one kill -9 + resume trial found."""

    killed_with: int  # done markers when the kill landed (-1: killed on time, before any marker was counted)
    state_after_kill: str | None
    resume_code: int
    resume_err: str
    lost: int

    @property
    def exact(self) -> bool:
        return self.resume_code == 0 and self.lost == 0


def kill_and_resume(source: str, out: Path, expected: np.ndarray, *, markers: int | None = None,
                    after: float | None = None, extra: tuple[object, ...] = (), cluster: str | None = None,
                    cwd: str | os.PathLike | None = None, timeout: float = 120) -> Trial:
    """Start a run, SIGKILL its whole group once ``markers`` blocks are marked done (or ``after`` seconds),
    resume it with the same command plus ``--resume``, and count the voxels that differ from ``expected``."""
    run = Launch(upsample_args(source, out, *extra, cluster=cluster), cwd=cwd)
    if markers is not None:
        run.wait_for(lambda: len(done_markers(out)) >= markers, timeout)
    else:
        run.sleep(after or 0.0)
    count = len(done_markers(out))
    run.kill()
    run.finish()
    state = run_state(out)
    resumed = Launch(upsample_args(source, out, *extra, "--resume", cluster=cluster), cwd=cwd)
    code, err = resumed.finish(timeout)
    return Trial(count, state, code, err, voxels_lost(out, expected))


def seeded_points(seed: int, n: int, low: int, high: int) -> list[int]:
    """``n`` kill points drawn from [low, high] with ``seed`` (so a failing trial can be rerun as it was)."""
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def copy_output(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    shutil.copytree(src, dst, symlinks=True)
    return str(dst)

"""Scenarios of ``benchmarks/faults.py`` about workers, damage and inputs (kept apart to keep modules small).

Each takes the benchmark's ``Env`` and returns its ``Row``; see ``benchmarks/faults.py`` for the columns.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faultkit as fk
import numpy as np


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    trials: int = 0
    exact: int | None = 0  # None: not applicable
    clear: int | None = None
    lost: int = 0
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        def frac(n: int | None) -> str:
            return "-" if n is None else f"{n}/{self.trials}"
        return [self.scenario, str(self.trials), frac(self.exact), frac(self.clear), str(self.lost),
                "; ".join(dict.fromkeys(self.notes))]


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    head = ["scenario", "trials", "exact", "clear errors", "voxels lost", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def pending_note(row: Row, name: str) -> Row:
    """Name the issue 17 item whose fix is expected to change ``row`` (``faultkit.PENDING``)."""
    if name in fk.PENDING:
        row.notes.append(f"expected to change with issue 17 item {fk.PENDING[name][0]}")
    return row


def _big(env: Any) -> tuple[str, np.ndarray]:
    """A longer run for worker faults: all 128 x 128 of the crop's every 8th slice, 272 blocks."""
    if not getattr(env, "big", None):
        from isovol.workflows.demo_data import load_crop

        low = np.ascontiguousarray(load_crop()[0][::fk.FACTOR])
        env.big = (fk.write_input(env.work / "big.ome.zarr", low), fk.reference(low))
    return env.big


def workers_of(run: fk.Launch) -> list[int]:
    """The pids of the run's dask worker processes (the nannies' children, spawned by multiprocessing)."""
    import psutil

    try:
        kids = psutil.Process(run.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _judge(row: Any, env: Any, run: fk.Launch, out: Path, expected: np.ndarray, source: str, args: list,
           timeout: float = 240) -> None:
    """The run's end: exact as it stands, or a clear stop that ``--resume`` finishes (voxels lost after it).  A run
    still going after ``timeout`` s is counted hung, killed and resumed."""
    code, err = run.finish(timeout)
    if code == -9:
        row.notes.append(f"hung (at {len(fk.done_markers(out))} blocks done, no exit after {timeout:.0f} s): killed")
    row.trials += 1
    if code == 0 and fk.exact(out, expected):
        row.exact += 1
        row.clear += 1
        return
    row.clear += code == 1 and "Traceback" not in err and "--resume" in err
    row.notes.append(f"exit {code}{' with a traceback' if 'Traceback' in err else ''}; resumed"
                     f"{', exact' if code == -9 else ''}")
    res = fk.isovol(*fk.upsample_args(source, out, *args, "--resume")[1:], timeout=timeout)
    row.lost += fk.voxels_lost(out, expected) if res.returncode == 0 else expected.size


def worker_kill(env: Any, times: int, everyone: bool) -> Any:
    """SIGKILL one worker (``times`` times, 1.3 s apart, as in the issue) or all of them at a seeded random
    moment after the first block is done; the run must survive and end exact."""
    what = "all workers SIGKILLed at once" if everyone else f"a worker SIGKILLed {'once' if times == 1 else 'twice'}"
    row, rng = Row(what, clear=0), random.Random(env.seed * 31 + times + 7 * everyone)
    source, expected = _big(env)
    for _ in range(env.n(2, 5)):
        out, args = env.folder("workers") / "out.ome.zarr", ["--workers", "2"]
        run = fk.Launch(fk.upsample_args(source, out, *args))
        run.wait_for(lambda o=out: fk.done_markers(o), 180)
        run.sleep(rng.uniform(0.0, 1.5))
        for k in range(times):
            pids = workers_of(run)
            _signal(pids if everyone else [rng.choice(pids)] if pids else [], signal.SIGKILL)
            if k + 1 < times:
                run.sleep(1.3)
        _judge(row, env, run, out, expected, source, args)
    return row


def frozen(env: Any, timeout: bool) -> Any:
    """SIGSTOP one worker at a seeded moment after the first block: with ``--block-timeout 5`` the run must end
    exact by itself (it is counted hung after 90 s); without, it waits for dask's worker-ttl (5 min), so after a
    while the worker is SIGCONTed and "clear errors" counts whether the run had named the stalled block (it does
    after 120 s, so not in a --quick run)."""
    row = Row(f"a worker frozen (SIGSTOP), {'--block-timeout 5' if timeout else 'no --block-timeout'}", clear=0)
    rng = random.Random(env.seed * 13 + timeout)
    source, expected = _big(env)
    wait = env.n(20, 150)
    for _ in range(env.n(1, 3)):
        out = env.folder("frozen") / "out.ome.zarr"
        args = ["--workers", "2"] + (["--block-timeout", "5"] if timeout else [])
        run = fk.Launch(fk.upsample_args(source, out, *args))
        run.wait_for(lambda o=out: fk.done_markers(o), 180)
        run.sleep(rng.uniform(0.0, 1.0))
        pids = workers_of(run)
        victim = pids[rng.randrange(len(pids))] if pids else None
        _signal([victim] if victim else [], signal.SIGSTOP)
        stalled = True
        if not timeout and not run.wait_for(lambda r=run: not r.running(), wait, every=0.2):
            stalled = "has run for" in run.stderr()
            row.notes.append(f"still running after {wait} s; SIGCONT" + ("" if stalled else ", stall not named yet"))
            _signal([victim] if victim else [], signal.SIGCONT)
        before = row.clear
        _judge(row, env, run, out, expected, source, args, timeout=90 if timeout else 240)
        if not stalled and row.clear > before:  # ended well once thawed, but the stall went unnamed
            row.clear -= 1
    return pending_note(row, "frozen-worker-random" if timeout else "")


def damage(env: Any) -> Any:
    """Damage to a finished output, one kind a trial in turn, the shard seeded: ``status --verify`` must exit 4
    naming it (clear), ``--resume --verify`` must leave it exact."""
    kinds = ["truncated", "zeroed", "deleted", "0/zarr.json", "zarr.json", "marker"]
    row, rng = Row("damage after completion (shards, metadata, markers)", clear=0), random.Random(env.seed + 5)
    for i in range(env.n(6, 18)):
        kind = kinds[i % len(kinds)]
        out = Path(fk.copy_output(env.complete, env.folder("damage") / "complete.ome.zarr"))
        key = _harm(out, kind, rng)
        found = fk.isovol("status", out, "--verify")
        named = found.returncode == 4 and key in found.stdout
        if kind == "marker":  # a damaged marker vouches for nothing: the block is simply not done
            named = found.returncode == 3 and "67/68" in found.stdout
        res = fk.isovol(*fk.upsample_args(env.source, out, "--resume", "--verify", cluster=env.threads)[1:])
        lost = fk.voxels_lost(out, env.expected) if res.returncode == 0 else env.expected.size
        row.trials += 1
        row.clear += named
        row.exact += lost == 0 and fk.run_state(out) == "complete"
        row.lost += lost
        if not named or lost:
            row.notes.append(f"{kind}: status exit {found.returncode}, resume exit {res.returncode}")
    return row


def _harm(out: Path, kind: str, rng: random.Random) -> str:
    """Damage ``out`` the ``kind`` way; the key of what was damaged."""
    if kind in ("truncated", "zeroed", "deleted"):
        key = rng.choice(sorted(str(p.relative_to(out)) for p in (out / "0" / "c").rglob("*") if p.is_file()))
        path = out / key
        if kind == "truncated":
            os.truncate(path, path.stat().st_size // 2)
        elif kind == "zeroed":
            path.write_bytes(bytes(path.stat().st_size))
        else:
            path.unlink()
        return key
    if kind == "marker":
        path = rng.choice(sorted((out / ".isovol" / "done").iterdir()))
        path.write_bytes(b"{damaged")
        return str(path.relative_to(out))
    path = out / kind
    data = bytearray(path.read_bytes())
    data[rng.randrange(10, len(data) - 10)] ^= 0x5A
    path.write_bytes(bytes(data))
    return kind


def input_chunk(env: Any) -> Any:
    """One chunk of a plain zarr v3 input truncated: the run must say so on one line naming the array and the
    chunk, without a traceback; once the input is whole again, ``--resume`` must end exact."""
    import re

    import zarr

    row, rng = Row("a truncated input chunk", clear=0), random.Random(env.seed + 9)
    low = fk.low_volume()
    for _ in range(env.n(2, 6)):
        d = env.folder("chunk")
        url = str(d / "in.zarr")
        arr = zarr.create_array(store=url, shape=low.shape, chunks=(8, 32, 32), dtype=low.dtype)
        arr[...] = low
        chunks = sorted(p for p in Path(url, "c").rglob("*") if p.is_file())
        chunk = rng.choice(chunks)
        good = chunk.read_bytes()
        os.truncate(chunk, len(good) // 2)
        args = ["--voxel-size", "80,10,10"]
        res = fk.isovol("-q", *fk.upsample_args(url, d / "out.ome.zarr", *args, cluster=env.threads)[1:])
        parts = chunk.relative_to(url).parts[1:]
        pattern = r"[/.,\s]+".join(parts)
        named = [ln for ln in res.stderr.splitlines() if "in.zarr" in ln and re.search(pattern, ln)]
        row.trials += 1
        row.clear += res.returncode not in (0, -9) and "Traceback" not in res.stderr and len(named) == 1
        chunk.write_bytes(good)
        again = fk.isovol(*fk.upsample_args(url, d / "out.ome.zarr", *args, "--resume", cluster=env.threads)[1:])
        lost = fk.voxels_lost(d / "out.ome.zarr", env.expected) if again.returncode == 0 else env.expected.size
        row.exact += lost == 0
        row.lost += lost
    return pending_note(row, "truncated-input-chunk")


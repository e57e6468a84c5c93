"""The long part of the fault-injection suite (the fast part is ``tests/faults/``): many seeded trials of what a
crash, a sick cluster, a careless user or a damaged disk do to ``isovol upsample``, and a table of what held.

    python benchmarks/faults.py [--quick] [--seed N] [--out FILE] [--only NAME[,NAME...]]

Scenarios (``--only`` takes these names): ``kill-resume`` (kill -9 of the whole process group at seeded random
times, then ``--resume``), ``worker-kill-once`` / ``worker-kill-twice`` / ``worker-kill-all`` (worker processes
SIGKILLed during the run), ``frozen-timeout`` / ``frozen-no-timeout`` (a worker SIGSTOPped, with and without
``--block-timeout``; without, it is SIGCONTed after a wait), ``concurrent`` (two runs forked together on one output),
``resume-complete`` (a ``--resume`` of a complete output killed at a random time), ``damage`` (shards truncated,
zeroed, deleted, metadata and markers corrupted after completion: ``status --verify`` then ``--resume --verify``),
``input-chunk`` (an input chunk truncated: the error, then ``--resume`` once the input is whole again),
``bad-inputs`` (the table of ``tests/faults/badcases.py``).  ``benchmarks/faults_s3.py`` does S3.

Columns: trials; exact (the output ended bitwise equal to the reference, every level; for bad inputs: the folder
untouched); clear errors (the failure was reported as it must be: one line, named damage, a clean refusal); voxels
lost (voxels differing from the reference after the scenario's remedy -- must be 0).  A note names the issue 17
item (``faultkit.PENDING``) whose fix is expected to change a row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "faults"))

import faultkit as fk  # noqa: E402
import faults_scenarios as more  # noqa: E402
from faults_scenarios import Row, pending_note, table  # noqa: E402
from zygote import Zygote  # noqa: E402


@dataclass
class Env:
    """What every scenario shares: the work folder, the seed, the input and its reference."""

    work: Path
    seed: int
    quick: bool
    threads: str = ""
    source: str = ""
    expected: object = None
    complete: str = ""
    runtime: float = 0.0

    def folder(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))

    def n(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def setup(env: Env) -> None:
    """The input (17 x 64 x 64 of the FIB-SEM crop), its reference, a complete output and its run time."""
    low = fk.low_volume()
    env.source = fk.write_input(env.work / "in.ome.zarr", low)
    env.expected = fk.reference(low)
    env.threads = str(env.work / "threads.yaml")
    Path(env.threads).write_text(fk.THREADS)
    out = env.work / "complete.ome.zarr"
    start = time.monotonic()
    res = fk.isovol(*fk.upsample_args(env.source, out, cluster=env.threads)[1:])
    env.runtime = time.monotonic() - start
    assert res.returncode == 0 and fk.exact(out, env.expected), res.stderr
    env.complete = str(out)


def kill_resume(env: Env) -> Row:
    """kill -9 at a seeded random time in [0, 1.2 x a run's time] (start-up, blocks, pyramid, finalising); one
    trial in four on worker processes, the others on threads."""
    row, rng = Row("kill -9 + --resume at random times"), random.Random(env.seed)
    for i in range(env.n(20, 40)):
        procs = i % 4 == 3
        extra, cluster = (("--workers", "2"), None) if procs else ((), env.threads)
        after = rng.uniform(0.0, 1.2 * env.runtime * (2.0 if procs else 1.0))
        trial = fk.kill_and_resume(env.source, env.folder("kill") / "out.ome.zarr", env.expected, after=after,
                                   extra=extra, cluster=cluster)
        row.trials += 1
        row.exact += trial.exact
        row.lost += trial.lost
        if not trial.exact:
            row.notes.append(f"trial {i} (seed {env.seed}, {after:.2f} s): exit {trial.resume_code}")
    return row


def concurrent(env: Env) -> Row:
    """Two commands forked within a millisecond on one output: exactly one may proceed, the other must refuse
    with one line, exit 2; the output must end exact."""
    import threading

    row = Row("two runs started together on one output", clear=0)
    for _ in range(env.n(3, 10)):
        d = env.folder("race")
        out = d / "out.ome.zarr"
        args = fk.upsample_args(env.source, out, cluster=env.threads)[1:]
        zygotes, barrier, results = [Zygote(), Zygote()], threading.Barrier(2), [None, None]

        def go(i: int, zygotes=zygotes, barrier=barrier, results=results, args=args, d=d) -> None:
            barrier.wait()
            results[i] = zygotes[i].run(args, d, timeout=180)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        [z.close() for z in zygotes]
        codes = sorted(r.returncode for r in results)
        refused = [r for r in results if r.returncode == 2 and fk.error_line(r)]
        row.trials += 1
        row.exact += codes == [0, 2] and fk.exact(out, env.expected)
        row.clear += len(refused) == 1 and codes == [0, 2]
        row.lost += fk.voxels_lost(out, env.expected)
        if codes != [0, 2]:
            row.notes.append(f"exits {codes}")
    return pending_note(row, "concurrent-runs")


def resume_complete(env: Env) -> Row:
    """A ``--resume`` of a complete output killed during start-up (a random moment up to 0.5 s after it logged
    what it found): the output must stay complete (status exit 0), byte for byte."""
    row, rng = Row("killed --resume of a complete output", clear=0), random.Random(env.seed + 1)
    for _ in range(env.n(5, 15)):
        out = Path(fk.copy_output(env.complete, env.folder("again") / "complete.ome.zarr"))
        before = fk.tree(out / "0")
        run = fk.Launch(fk.upsample_args(env.source, out, "--resume", cluster=env.threads))
        run.wait_for(lambda r=run: "already done" in r.stderr(), 120)
        run.sleep(rng.uniform(0.0, 0.5))
        run.kill()
        run.finish()
        status = fk.isovol("status", out)
        row.trials += 1
        row.exact += fk.tree(out / "0") == before and fk.voxels_lost(out, env.expected) == 0
        row.clear += status.returncode == 0 and fk.run_state(out) == "complete"
        row.lost += fk.voxels_lost(out, env.expected)
    return pending_note(row, "killed-resume-on-complete")


def bad_inputs(env: Env) -> Row:
    """The bad-input table; voxels lost counts the voxels of the earlier output that a case destroyed."""
    import badcases

    row = Row("bad inputs and options", exact=0, clear=0)
    base = badcases.make_base(env.folder("bad") / "base")
    prev = fk.read_level(base / "prev.ome.zarr")
    zygote = Zygote()
    try:
        for case in badcases.CASES:
            work = env.folder("case") / "case"
            outcome = badcases.run_case(case, base, work, zygote)
            row.trials += 1
            row.clear += outcome.ok
            row.exact += not outcome.changed or case.mode != "refuse"
            lost = 0
            if any(c.startswith("prev.ome.zarr") for c in outcome.changed):  # the earlier output, harmed
                got = fk.read_level(work / "prev.ome.zarr")
                lost = prev.size if got is None or got.shape != prev.shape else int((got != prev).sum())
            row.lost += lost
            if not outcome.ok:
                item = fk.PENDING.get(case.name, (None, ""))[0]
                row.notes.append(f"{case.name}" + (f" (item {item}" if item else " (NEW") +
                                 (f", {lost} voxels lost)" if lost else ")"))
    finally:
        zygote.close()
    return row


SCENARIOS: dict[str, Callable[[Env], Row]] = {
    "kill-resume": kill_resume,
    "worker-kill-once": lambda env: more.worker_kill(env, 1, False),
    "worker-kill-twice": lambda env: more.worker_kill(env, 2, False),
    "worker-kill-all": lambda env: more.worker_kill(env, 1, True),
    "frozen-timeout": lambda env: more.frozen(env, timeout=True),
    "frozen-no-timeout": lambda env: more.frozen(env, timeout=False),
    "concurrent": concurrent,
    "resume-complete": resume_complete,
    "damage": more.damage,
    "input-chunk": more.input_chunk,
    "bad-inputs": bad_inputs,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials (minutes on 2 cores)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", default=None, help="also write the table (Markdown) to this file")
    ap.add_argument("--only", default=None, help=f"comma-separated scenarios of: {', '.join(SCENARIOS)}")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="isovol-faults-"))
    env = Env(work, args.seed, args.quick)
    started = time.monotonic()
    try:
        setup(env)
        rows = []
        for name in names:
            t0 = time.monotonic()
            rows.append(SCENARIOS[name](env))
            print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = (f"`python benchmarks/faults.py {' '.join(argv if argv is not None else sys.argv[1:])}` -- "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{os.cpu_count()} cores, {time.monotonic() - started:.0f} s\n\n{table(rows)}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(r.lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

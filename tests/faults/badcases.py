"""The bad-input table: requests a hostile user or an unlucky typo makes, each of which ``isovol`` must refuse with
ONE stderr line starting ``isovol: error``, exit 2 (the code of a bad request), and nothing created, changed or
marked done.  A few (issue 17 item 10) may instead go ahead with one warning line: ``refuse-or-warn`` cases.

Every case runs in a fresh copy of a small folder (``make_base``): a valid input ``in.ome.zarr`` and ``in.npy``
and a finished isovol output ``prev.ome.zarr``; the folder's snapshot before and after must be equal.  Shared by
``test_bad_inputs.py`` and ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faultkit import THREADS, error_line, isovol, tree
from zygote import Zygote

#: a secret as a careless user pastes it: it must never be echoed
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzEXAMPLEKEY"


@dataclass(frozen=True)
class Case:
    """One bad request: ``args`` after ``isovol`` run in the case folder (``{abs}`` is its absolute path)."""

    name: str
    args: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    code: int = 2
    #: "refuse", or "refuse-or-warn": refused as above, or going ahead with a WARNING line matching ``warn``
    mode: str = "refuse"
    warn: str = ""
    #: stop the case once it goes ahead (see GO_AHEAD); False for a warning that can only come from the data
    stop: bool = True


@dataclass
class Outcome:
    """What a case did, and whether that is the clear refusal (or warning) it owes."""

    name: str
    code: int
    stderr: str
    changed: list[str]
    ok: bool
    why: str


UP = ("upsample",)
IN = "in.ome.zarr"


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def _npy(name: str, array: np.ndarray) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        np.save(d / name, array, allow_pickle=array.dtype == object)
    return setup


def _truncated_npy(d: Path) -> None:
    size = (d / "in.npy").stat().st_size
    os.truncate(d / "in.npy", size // 2)


class Canary:
    """An object whose unpickling makes a folder: a loaded pickle shows in the case folder's snapshot."""

    def __reduce__(self):
        return (os.mkdir, ("unpickled",))


def _pickle_npy(d: Path) -> None:
    arr = np.empty((2, 2, 2), dtype=object)
    arr[...] = Canary()
    with open(d / "evil.npy", "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)


def _damage_json(rel: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        p = d / rel
        p.write_bytes(p.read_bytes()[:40] + b"\x00garbage")
    return setup


def _state(state: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        p = d / "prev.ome.zarr" / ".isovol" / "run.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "state": state}))
    return setup


def _symlink(d: Path) -> None:
    (d / "link.ome.zarr").symlink_to("prev.ome.zarr")


def _user_folder(d: Path) -> None:
    (d / "thesis").mkdir()
    (d / "thesis" / "chapter1.txt").write_text("years of work")


def _float(kind: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        low = np.load(d / "in.npy").astype(np.float32 if kind == "nan" else np.complex64)
        if kind == "nan":
            low[2, 8, 8] = np.nan
            (d / "threads.yaml").write_text(THREADS)
        else:
            low = low + 1j
        np.save(d / f"{kind}.npy", low)
    return setup


def _tiny(d: Path) -> None:
    np.save(d / "tiny.npy", np.arange(32, dtype=np.uint8).reshape(2, 4, 4))


def _yaml(text: str) -> Callable[[Path], None]:
    return _write("cluster.yaml", text)


V = ("--voxel-size", "40,10,10")
F4 = ("--factor", "4")


def _up(*args: str) -> tuple[str, ...]:
    """``upsample in.ome.zarr out.ome.zarr --factor 4`` with ``args`` added (a later --factor wins)."""
    return (*UP, IN, "out.ome.zarr", *F4, *args)


CASES: list[Case] = [
    # -- the input: where it is, what it is
    Case("missing-npy", (*UP, "nope.npy", "out.ome.zarr", *F4)),
    Case("missing-zarr", (*UP, "nope.ome.zarr", "out.ome.zarr", *F4)),
    Case("unknown-url-scheme", (*UP, "nosuch://bucket/in.ome.zarr", "out.ome.zarr", *F4)),
    Case("http-nothing-listening", (*UP, "http://127.0.0.1:9/in.ome.zarr", "out.ome.zarr", *F4)),
    Case("empty-folder", (*UP, "empty.zarr", "out.ome.zarr", *F4), lambda d: (d / "empty.zarr").mkdir()),
    Case("text-as-npy", (*UP, "bad.npy", "out.ome.zarr", *F4, *V), _write("bad.npy", "hello, not an array\n")),
    Case("truncated-npy", (*UP, "in.npy", "out.ome.zarr", *F4, *V), _truncated_npy),
    Case("pickled-npy-never-loaded", (*UP, "evil.npy", "out.ome.zarr", *F4, *V), _pickle_npy),
    Case("garbage-tiff", (*UP, "bad.tif", "out.ome.zarr", *F4, *V), _write("bad.tif", os.urandom(4096))),
    Case("damaged-input-metadata", (*UP, "prev.ome.zarr/0", "out.ome.zarr", *F4),
         _damage_json("prev.ome.zarr/0/zarr.json")),
    Case("2d-npy", (*UP, "flat.npy", "out.ome.zarr", *F4, *V), _npy("flat.npy", np.zeros((16, 16), np.uint8))),
    Case("one-slice", (*UP, "one.npy", "out.ome.zarr", *F4, *V), _npy("one.npy", np.zeros((1, 16, 16), np.uint8))),
    Case("no-voxel-size", (*UP, "in.npy", "out.ome.zarr", *F4)),
    Case("voxel-size-text", (*UP, "in.npy", "out.ome.zarr", *F4, "--voxel-size", "a,b,c")),
    Case("voxel-size-zero", (*UP, "in.npy", "out.ome.zarr", *F4, "--voxel-size", "0,10,10")),
    Case("input-left-running", (*UP, "prev.ome.zarr", "out.ome.zarr", *F4), _state("running")),
    # -- the factor
    Case("factor-0", _up("--factor", "0")),
    Case("factor-1", _up("--factor", "1")),
    Case("factor-text", _up("--factor", "many")),
    Case("factor-2.5", _up("--factor", "2.5")),
    # -- the layout
    Case("block-shape-zero", _up("--block-shape", "0,64,64")),
    Case("block-shape-text", _up("--block-shape", "a,b,c")),
    Case("block-shape-two-values", _up("--block-shape", "64,64")),
    Case("block-shape-negative", _up("--block-shape", "-8,64,64")),
    Case("block-not-whole-shards", _up("--block-shape", "48,64,64", "--shard-shape", "32,64,64")),
    Case("shard-shape-zero", _up("--shard-shape", "0,0,0")),
    Case("region-text", _up("--region", "all of it")),
    Case("region-outside", _up("--region", "0:99,0:16,0:16")),
    Case("levels-negative", _up("--levels", "-1")),
    Case("levels-text", _up("--levels", "lots")),
    Case("levels-too-many", _up("--levels", "40")),
    Case("levels-and-no-pyramid", _up("--levels", "2", "--no-pyramid")),
    # -- the cluster and the run's knobs (item 9: checked before anything is created)
    Case("workers-0", _up("--workers", "0")),
    Case("workers-negative", _up("--workers", "-1")),
    Case("workers-text", _up("--workers", "two")),
    Case("retries-negative", _up("--retries", "-1")),
    Case("block-timeout-negative", _up("--block-timeout", "-5")),
    Case("block-timeout-zero", _up("--block-timeout", "0")),
    Case("cluster-config-missing", _up("--cluster-config", "nope.yaml")),
    Case("cluster-config-bad-yaml", _up("--cluster-config", "cluster.yaml"), _yaml("workers: [2\nprocesses: no\n")),
    Case("cluster-config-unknown-key", _up("--cluster-config", "cluster.yaml"), _yaml("wrokers: 2\n")),
    Case("cluster-config-not-a-mapping", _up("--cluster-config", "cluster.yaml"), _yaml("- workers\n- 2\n")),
    Case("cluster-config-wrong-type", _up("--cluster-config", "cluster.yaml"), _yaml("workers: many\n")),
    Case("scheduler-with-slurm", _up("--scheduler", "tcp://127.0.0.1:9", "--cluster", "slurm")),
    # -- storage options
    Case("storage-options-not-json", _up("--storage-options", "{anon: true")),
    Case("storage-options-a-list", _up("--storage-options", "[1, 2]")),
    Case("secret-in-endpoint-url", (*UP, "s3://bucket/in.ome.zarr", "out.ome.zarr", *F4, "--storage-options",
                                    json.dumps({"endpoint_url": SECRET, "key": "AKIAEXAMPLE", "secret": SECRET}))),
    # -- the method
    Case("method-unknown", _up("--method", "magic")),
    Case("option-not-key-value", _up("--option", "tile")),
    Case("option-unknown", _up("--option", "sharpness=11")),
    Case("learned-method-without-model", _up("--method", "dgean")),
    Case("model-folder-missing", _up("--method", "dgean", "--model", "no-model")),
    # -- the output
    Case("resume-and-overwrite", _up("--resume", "--overwrite")),
    Case("verify-without-resume", _up("--verify")),
    Case("output-exists", (*UP, IN, "prev.ome.zarr", *F4)),
    Case("overwrite-a-user-folder", (*UP, IN, "thesis", *F4, "--overwrite"), _user_folder),
    Case("resume-another-run", (*UP, IN, "prev.ome.zarr", "--factor", "8", "--resume")),
    Case("output-is-input", (*UP, IN, IN, *F4, "--overwrite")),
    # item 1: an earlier output as the input, the output the same folder spelled otherwise, with --overwrite
    Case("output-is-input-trailing-slash", (*UP, "prev.ome.zarr", "./prev.ome.zarr/", *F4, "--overwrite")),
    Case("output-is-input-absolute", (*UP, "prev.ome.zarr", "{abs}/prev.ome.zarr", *F4, "--overwrite")),
    Case("output-is-input-via-symlink", (*UP, "prev.ome.zarr", "link.ome.zarr", *F4, "--overwrite"), _symlink),
    Case("output-inside-input", (*UP, "prev.ome.zarr", "prev.ome.zarr/0", *F4, "--overwrite")),
    Case("output-contains-input", (*UP, "prev.ome.zarr/0", "prev.ome.zarr", *F4, *V, "--overwrite")),
    # -- status
    Case("status-missing-output", ("status", "nope.ome.zarr")),
    Case("status-user-folder", ("status", "thesis"), _user_folder),
    # -- item 10: refused, or one warning line and on
    Case("factor-10000", (*UP, "tiny.npy", "out.ome.zarr", "--factor", "10000", "--voxel-size", "100000,10,10"),
         _tiny, mode="refuse-or-warn", warn="factor|[KMGT]iB|large"),
    Case("block-shape-1", _up("--block-shape", "1,1,1"), mode="refuse-or-warn", warn="block|task"),
    Case("nan-input", (*UP, "nan.npy", "out.ome.zarr", *F4, *V, "--cluster-config", "threads.yaml"),
         _float("nan"), mode="refuse-or-warn", warn="nan|finite", stop=False),
    Case("complex-input", (*UP, "complex.npy", "out.ome.zarr", *F4, *V), _float("complex"), mode="refuse-or-warn",
         warn="complex"),
]
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"


def make_base(where: Path) -> Path:
    """The folder every case starts from: ``in.ome.zarr`` (5 x 16 x 16 uint8 at 40/10/10 nm), ``in.npy`` (the
    same voxels) and ``prev.ome.zarr``, a finished isovol output of it at factor 4 (made by the command)."""
    from isovol.pipeline.io.omezarr import write_image
    from isovol.workflows.demo_data import load_crop

    where.mkdir(parents=True, exist_ok=True)
    low = np.ascontiguousarray(load_crop()[0][::8, :16, :16][:5])
    write_image(str(where / IN), low, (40.0, 10.0, 10.0))
    np.save(where / "in.npy", low)
    (where / "threads.yaml").write_text(THREADS)
    res = isovol("upsample", IN, "prev.ome.zarr", *F4, "--cluster-config", "threads.yaml", "--no-progress",
                 cwd=where)
    assert res.returncode == 0, res.stderr
    (where / "threads.yaml").unlink()
    return where


#: the line a run logs once it goes ahead (planned, output made): a case that gets there was not refused, and a
#: refuse-or-warn case has warned by then if it warns at all, so the case is stopped there
GO_AHEAD = " already done, method "


def run_case(case: Case, base: Path, work: Path, zygote: Zygote, timeout: float = 60.0) -> Outcome:
    """Run ``case`` in a fresh copy of ``base`` at ``work`` and judge it."""
    shutil.copytree(base, work, symlinks=True)
    if case.setup:
        case.setup(work)
    before = tree(work)
    args = [a.replace("{abs}", str(work)) for a in case.args]
    res = zygote.run(args, work, timeout, stop_at=GO_AHEAD if case.stop else None)
    after = tree(work)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    ok, why = judge(case, res.returncode, res.stderr, changed)
    return Outcome(case.name, res.returncode, res.stderr, changed, ok, why)


def judge(case: Case, code: int, err: str, changed: list[str]) -> tuple[bool, str]:
    """(ok, what is wrong) for a case's exit code, stderr and changed paths."""
    if SECRET in err:
        return False, "the secret is echoed on stderr"
    line = error_line(_Res(code, err))
    refused = line is not None and code == case.code and not changed
    if refused or case.mode == "refuse":
        if line is None:
            return False, f"not one 'isovol: error' line (exit {code}): {err.strip()[-400:]!r}"
        if code != case.code:
            return False, f"exit {code}, not {case.code}: {line}"
        if changed:
            return False, f"refused but changed {changed[:4]}: {line}"
        return True, line
    warnings = [ln for ln in err.splitlines() if "WARNING" in ln and re.search(case.warn, ln, re.I)]
    if "Traceback" in err or len(warnings) != 1:
        return False, f"neither refused nor one warning line (exit {code}): {err.strip()[-400:]!r}"
    return True, warnings[0]


@dataclass
class _Res:
    returncode: int
    stderr: str

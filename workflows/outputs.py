"""Taking an output location for a run, so that no run ever deletes what another run is making.

An output is created by publishing its first run record exclusively (``Bookkeeper.create_record``: a hard-link
publish locally, a conditional PUT on S3): of two runs started at the same moment exactly one creates it, and the
other refuses without touching it.  While an output is being created or deleted its record names its owner
(:class:`~isovol.pipeline.io.runrecord.Owner`); a later run clears what an interrupted one left half made only
when that owner is gone -- never while it is alive on this host; an owner on another host cannot be asked, so
only ``--overwrite`` (the user's word that it is gone) clears its output.  Removing an output (``--overwrite``,
or clearing a leftover) starts with an exclusive claim on the record as it was read, so two runs never delete
one output at once.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

from ..pipeline.errors import OutputError
from ..pipeline.io.runrecord import META_DIR, RUN_RECORD, Owner, RunRecord, RunState
from ..pipeline.io.urls import strip_url
from .bookkeeping import Bookkeeper

log = logging.getLogger(__name__)

#: run-record states of an output that an interrupted run left half made, and what it was left half
UNFINISHED = {RunState.CREATING: "created", RunState.DELETING: "deleted"}
#: how many claims on one record a run tries when earlier claimers died holding theirs
MAX_CLAIMS = 100


def take_leftover(fs: Any, path: str, url: str, keeper: Bookkeeper, owner: Owner, overwrite: bool) -> bool:
    """Clear an output that an interrupted run left half created or half deleted; refuse one whose owner may
    still be at work.  Returns whether an output is (still) there: False after clearing, and for a folder holding
    only the bookkeeping of a run killed before its first record, which a new run creates over."""
    if not fs.isdir(path):
        return True  # a file: --overwrite refuses it
    record = keeper.read_record(damaged_ok=True)
    if record is None:
        return not bare_bookkeeping(fs, path)
    if record.state not in UNFINISHED:
        return True
    check_gone(record, url, overwrite)
    log.info("%s was left half %s by an interrupted run; removing it", strip_url(url), UNFINISHED[record.state])
    remove_output(fs, path, url, keeper, owner)
    return False


def check_gone(record: RunRecord, url: str, overwrite: bool) -> None:
    """Refuse to touch an output being created or deleted by an owner that is alive (or, on another host, may
    be: unless ``overwrite`` says it is gone).  A record without an owner (isovol before owners) has none."""
    if record.owner is None:
        return
    alive = record.owner.alive()
    doing = "being deleted" if record.state is RunState.DELETING else "being created"
    if alive:
        raise OutputError(f"{strip_url(url)} is {doing} by another isovol run ({record.owner.describe()}); "
                          "let it finish or stop it, then rerun")
    if alive is None and not overwrite:
        raise OutputError(f"{strip_url(url)} is {doing} by an isovol run on another host "
                          f"({record.owner.describe()}); rerun once it has finished, or pass --overwrite if that "
                          "run is gone")


def bare_bookkeeping(fs: Any, path: str) -> bool:
    """Only ``.isovol/`` with at most temporary files in it: killed before the first run record was published."""
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    meta = posixpath.join(path, META_DIR)
    return names == [META_DIR] and all(posixpath.basename(f).startswith(".tmp-") for f in fs.find(meta))


def remove_output(fs: Any, path: str, url: str, keeper: Bookkeeper, owner: Owner) -> None:
    """Delete a previous isovol output (for --overwrite, or a leftover), but never a folder isovol did not make.

    The record is claimed, then marked "deleting" with this run as its owner, and removed last, so a kill at any
    point of a long delete (minutes on an object store) leaves an output that the next run recognises as half
    deleted -- by an owner that is gone -- and clears."""
    is_dir = fs.isdir(path)
    record = keeper.read_record(damaged_ok=True) if is_dir else None
    if not is_dir or (record is None and fs.ls(path) and not bare_bookkeeping(fs, path)):  # the user's
        raise OutputError(f"{strip_url(url)} exists and is not an isovol output; refusing to overwrite it")
    if record is not None:
        if not claim(keeper, record, owner):
            raise OutputError(f"{strip_url(url)} is being replaced or cleared by another isovol run at the same "
                              "time; rerun once it has finished")
        keeper.write_record(record.with_state(RunState.DELETING, owner))
    meta = posixpath.join(path, META_DIR)
    for p in fs.ls(path, detail=False):
        if posixpath.basename(p.rstrip("/")) != META_DIR:
            fs.rm(p, recursive=True)
    if fs.exists(meta):
        for p in fs.ls(meta, detail=False):
            if posixpath.basename(p.rstrip("/")) != RUN_RECORD:
                fs.rm(p, recursive=True)
    fs.rm(path, recursive=True)


def claim(keeper: Bookkeeper, record: RunRecord, owner: Owner) -> bool:
    """The exclusive right to remove the output whose record reads ``record``: a claim file named after that
    record (its generation and owner), created exclusively; a claim whose holder died is passed over for the
    next one.  The claim counts only if the record is still the one read: another claimer that won earlier has
    rewritten it."""
    base = f"claim-{record.generation or record.hash or 'none'}-{record.owner.token if record.owner else 'none'}"
    body = json.dumps(owner.to_dict()).encode()
    for n in range(MAX_CLAIMS):
        key = posixpath.join(META_DIR, f"{base}-{n}")
        if keeper.create(key, body):
            if keeper.read_record(damaged_ok=True) == record:
                return True
            _withdraw(keeper, key)
            return False
        holder = _holder(keeper, key)
        if holder is None or holder.alive() is not False:  # alive, on another host, or unreadable: not ours
            return False
    return False


def _holder(keeper: Bookkeeper, key: str) -> Owner | None:
    try:
        return Owner.from_dict(json.loads(keeper.read(key) or b"null"))
    except ValueError:  # not JSON, or not an owner (DamagedRecord is a ValueError)
        return None


def _withdraw(keeper: Bookkeeper, key: str) -> None:
    try:
        keeper.fs.rm(keeper.output_path(key))
    except FileNotFoundError:
        pass


def refusal(keeper: Bookkeeper, url: str) -> OutputError:
    """Why a run could not create the output: another run created it first (and may still be at it)."""
    record = keeper.read_record(damaged_ok=True)
    if record is not None and record.owner is not None and record.state in UNFINISHED:
        return OutputError(f"{strip_url(url)} is being created by another isovol run ({record.owner.describe()}); "
                           "once it has finished, pass --resume to continue it or --overwrite to replace it")
    return OutputError(f"output {strip_url(url)} exists; pass --resume to continue it or --overwrite to replace it")

"""The run record an isovol output keeps in ``OUTPUT/.isovol/run.json``: which run made it and how far it got.

It is read by the executor's bookkeeping (resume, stale-run checks, ``isovol status``) and by the readers, which
refuse an unfinished output as an input.  The JSON on disk keeps the keys isovol has always written (``hash``,
``generation``, ``components``, ``tasks``, ``plan``, ``state``), so outputs made by earlier versions -- those
from before generations included -- still load and resume.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from ..errors import InputError

log = logging.getLogger(__name__)

#: an isovol output keeps its bookkeeping in this folder and its run record in this file inside it
META_DIR, RUN_RECORD = ".isovol", "run.json"


class RunState(str, Enum):
    """How far the run that made an output got; a str, so it compares with and serialises as its value."""

    CREATING = "creating"  # record written, image being set up: a kill here leaves nothing worth keeping
    CREATED = "created"  # image set up, no block run yet
    RUNNING = "running"
    COMPLETE = "complete"  # every block done: the output may be read
    INCOMPLETE = "incomplete"  # the run ended with failed blocks: --resume finishes it
    DELETING = "deleting"  # --overwrite is removing it: a kill here leaves nothing worth keeping

    @property
    def unfinished(self) -> bool:
        """Left half made (or half deleted) by an interrupted run: the next run clears it."""
        return self in (RunState.CREATING, RunState.DELETING)


class DamagedRecord(ValueError):
    """The run record cannot be read as one (not JSON, not a mapping, fields of the wrong type)."""


#: tokens of the owners at work in this process (see :func:`owning`): threads share a pid, so the pid alone
#: cannot tell whether an owner in this process is still at work
_LIVE: set[str] = set()


def _pid_namespace() -> str:
    """Two containers may share a host name but not their process ids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """Who is creating or deleting an output (kept in the run record while it does), so that a later run tells a
    live owner's half-made output, which it must leave alone, from a dead one's, which it clears."""

    host: str
    pid: int
    token: str
    since: float
    pidns: str = ""

    @classmethod
    def new(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(8), time.time(), _pid_namespace())

    def alive(self) -> bool | None:
        """True or False on this host (pid namespace); None for an owner on another host, which cannot be asked."""
        if self.host != socket.gethostname() or self.pidns != _pid_namespace():
            return None
        if self.pid == os.getpid():
            return self.token in _LIVE
        import psutil

        try:
            proc = psutil.Process(self.pid)
            # a later process given the same pid is not the owner
            return proc.create_time() <= self.since + 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {time.strftime('%H:%M:%S UTC', time.gmtime(self.since))}"

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "token": self.token, "since": self.since, "pidns": self.pidns}

    @classmethod
    def from_dict(cls, data: Any) -> Owner:
        if not isinstance(data, dict):
            raise DamagedRecord("the owner is not a JSON object")
        try:
            owner = cls(host=data["host"], pid=int(data["pid"]), token=data["token"], since=float(data["since"]),
                        pidns=data.get("pidns", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedRecord(f"the owner is damaged: {exc}") from None
        if not all(isinstance(v, str) for v in (owner.host, owner.token, owner.pidns)):
            raise DamagedRecord("an owner field has the wrong type")
        return owner


@contextmanager
def owning() -> Iterator[Owner]:
    """An owner for the span of a create or delete: alive while the block runs, dead once it is left (by a
    return, an error or an interrupt) -- as a killed process is."""
    owner = Owner.new()
    _LIVE.add(owner.token)
    try:
        yield owner
    finally:
        _LIVE.discard(owner.token)


@dataclass(frozen=True)
class RunRecord:
    """What an output's run record says.  ``hash`` is the run's identity (``identity.digest`` of its
    ``components``); ``generation`` is made anew each time the output is created; ``state`` is None when a
    record carries none (unknown); ``owner`` is who is creating or deleting the output (None otherwise)."""

    hash: str
    components: dict[str, Any] = field(default_factory=dict)
    tasks: int = 0
    plan: dict[str, Any] = field(default_factory=dict)
    state: RunState | None = None
    generation: str | None = None
    owner: Owner | None = None

    @property
    def tag(self) -> str:
        """What a done marker must carry to count in this output: the run hash and the output's generation.  A
        block of an earlier generation of the same run -- say a task still running on an external cluster when
        its client was killed and the output overwritten -- may mark itself done after its shards were deleted;
        its marker then does not count."""
        return f"{self.hash}:{self.generation}" if self.generation else self.hash  # outputs made before generations

    @property
    def readable(self) -> bool:
        """False for the stand-in of a damaged record (see :meth:`unreadable`): it names no run."""
        return bool(self.hash)

    def with_state(self, state: RunState, owner: Owner | None = None) -> RunRecord:
        """The record in ``state``, owned by ``owner`` (an owner is kept only while it creates or deletes)."""
        return replace(self, state=state, owner=owner)

    @classmethod
    def unreadable(cls) -> RunRecord:
        """Stands in for a damaged record where a caller may go on without one (clearing or deleting the
        output): it names no run, so no marker or resume matches it."""
        return cls(hash="")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hash": self.hash, "components": self.components, "tasks": self.tasks,
                               "plan": self.plan}
        if self.state is not None:
            out["state"] = self.state.value
        if self.generation is not None:
            out["generation"] = self.generation
        if self.owner is not None:
            out["owner"] = self.owner.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """Lenient about missing keys (records of earlier versions), strict about types: anything else is a
        :class:`DamagedRecord`."""
        if not isinstance(data, dict):
            raise DamagedRecord(f"a run record is a JSON object, not {type(data).__name__}")
        state = data.get("state")
        owner = None if data.get("owner") is None else Owner.from_dict(data["owner"])
        try:
            record = cls(hash=data.get("hash", ""), components=data.get("components", {}),
                         tasks=int(data.get("tasks", 0)), plan=data.get("plan", {}),
                         state=None if state is None else RunState(state), generation=data.get("generation"),
                         owner=owner)
        except (TypeError, ValueError) as exc:
            raise DamagedRecord(str(exc)) from None
        if not (isinstance(record.hash, str) and isinstance(record.components, dict)
                and isinstance(record.plan, dict) and isinstance(record.generation, (str, type(None)))):
            raise DamagedRecord("a run record field has the wrong type")
        return record

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise DamagedRecord(f"not JSON: {exc}") from None
        return cls.from_dict(data)


def refuse_unfinished(fs: Any, path: str, shown: str, here: bool) -> None:
    """Refuse an isovol output that is not complete, given as the output (``here``: ``path`` holds a
    :data:`META_DIR`) or as one of its arrays (``A.ome.zarr/0``: the folder above holds one): its unfinished
    blocks read as zeros, which a trainer or a second upsampling would take for data."""
    parent = posixpath.dirname(path.rstrip("/"))
    if here:
        root = path
    elif parent and parent != path and fs.exists(posixpath.join(parent, META_DIR, RUN_RECORD)):
        root = parent
    else:
        return
    try:
        record = RunRecord.from_json(fs.cat_file(posixpath.join(root, META_DIR, RUN_RECORD)))
        state = record.state.value if record.state is not None else "unknown"
    except FileNotFoundError:
        state = RunState.CREATING.value
    except DamagedRecord:
        state = "unknown (damaged run record)"
    if state != RunState.COMPLETE.value:
        raise InputError(f"{shown} is {'part of ' if root != path else ''}an unfinished isovol output (state "
                         f"{state}); finish it with the command that made it and --resume (`isovol status` shows "
                         "its progress)")


"""Run record and per-block done markers, kept beside the image in ``OUTPUT/.isovol/``.

A marker is written only after its block's shards are durable, so "marked done" always means "on disk".
The run record (:class:`~isovol.pipeline.io.runrecord.RunRecord`) holds the run's identity, the digest of
everything that determines the result (layout, factor, method, model, config); whether a resumed run may keep
what is there is decided by :func:`isovol.pipeline.identity.decide`, so results of two configurations are never
mixed in one output.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from ..pipeline import identity
from ..pipeline.errors import OutputError, ResumeError, StaleRunError
from ..pipeline.io.atomic import atomic_write, exclusive_write
from ..pipeline.io.runrecord import META_DIR, RUN_RECORD, DamagedRecord, RunRecord, RunState
from ..pipeline.io.urls import describe_error, filesystem, is_local, strip_url

log = logging.getLogger(__name__)

DONE_DIR = "done"
#: where the pyramid levels keep their done markers: PYRAMID_DIR/<level>/<block> (workflows/pyramid.py)
PYRAMID_DIR = "pyramid"


def _exclusive_put(fs: Any, path: str, data: bytes, local: bool) -> bool:
    """Write a small file only if none has its name: True if this call made it.  Locally a hard-link publish;
    on S3 a conditional PUT (If-None-Match: *), which the store decides; other fsspec stores check, then write."""
    if local:
        return exclusive_write(path, data)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):  # a store client without exclusive writes: check, then write
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True


def _atomic_put(fs: Any, path: str, data: bytes, local: bool) -> None:
    """Write a small file whole: temp + fsync + rename locally, a single PUT elsewhere."""
    if not local:
        fs.pipe_file(path, data)
        return
    atomic_write(path, data)


@dataclass
class Bookkeeper:
    """Markers and run record of one output location (works on any fsspec filesystem)."""

    url: str
    storage_options: dict[str, Any]

    def __post_init__(self) -> None:
        self._fs: Any = None
        self._root: str = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "_fs": None, "_root": ""}

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, root = filesystem(self.url, self.storage_options)
            self._root = posixpath.join(root.rstrip("/"), META_DIR)
        return self._fs

    @property
    def root(self) -> str:
        _ = self.fs
        return self._root

    @property
    def local(self) -> bool:
        return is_local(self.url)

    # -- run record --------------------------------------------------------------------------------
    def read_record(self, damaged_ok: bool = False) -> RunRecord | None:
        """The run record, None when there is none; a damaged one is an error, or with ``damaged_ok``
        :meth:`RunRecord.unreadable` (for callers that clear the output or only ask whether it is current)."""
        path = posixpath.join(self.root, RUN_RECORD)
        try:
            text = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # storage errors (credentials, missing bucket): one clear line, not a traceback
            raise OutputError(f"cannot read {strip_url(self.url)}: {describe_error(exc)}") from None
        try:
            return RunRecord.from_json(text)
        except DamagedRecord as exc:
            if damaged_ok:
                return RunRecord.unreadable()
            log.debug("damaged run record in %s: %s", strip_url(self.url), exc)
            raise OutputError(f"{strip_url(self.url)}: the run record is damaged; rerun with --overwrite") from None

    def write_record(self, record: RunRecord) -> None:
        _atomic_put(self.fs, posixpath.join(self.root, RUN_RECORD), record.to_json().encode(), self.local)

    def create_record(self, record: RunRecord) -> bool:
        """Write the first run record of a new output, exclusively: False (nothing written) when the output
        already has one -- of two runs creating one output at the same moment, exactly one gets True."""
        return self.create(posixpath.join(META_DIR, RUN_RECORD), record.to_json().encode())

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` (relative to the output) only if it does not exist yet; True if this call made it."""
        try:
            return _exclusive_put(self.fs, self.output_path(key), data, self.local)
        except Exception as exc:  # storage errors (credentials, missing bucket): one clear line
            raise OutputError(f"cannot create output {strip_url(self.url)}: {describe_error(exc)}") from None

    def check_current(self, tag: str) -> None:
        """Refuse to write for a run that is no longer the output's: the output was deleted or replaced (another
        generation) while this task ran, e.g. a task left running on an external cluster by a killed client."""
        record = self.read_record(damaged_ok=True)
        if record is None or not record.readable or record.tag != tag:
            raise StaleRunError(f"{strip_url(self.url)} was deleted or replaced by another run; a block of the "
                                f"earlier run stops before writing")

    def check_resume(self, components: dict[str, Any]) -> RunRecord:
        """The recorded run, if it has the identity of ``components``; otherwise a ResumeError naming exactly
        the settings that differ."""
        record = self.read_record()
        if record is None:
            raise ResumeError(f"{strip_url(self.url)} exists but has no isovol run record; "
                              "use --overwrite to replace it")
        decision = identity.decide(record.hash, record.components, record.state is RunState.COMPLETE,
                                   identity.digest(components), components)
        if decision.verdict is identity.Verdict.REFUSE:
            reason = f"the run differs from the recorded one ({decision.reason})"
            raise ResumeError(f"cannot resume {strip_url(self.url)}: {reason}; use --overwrite to start over", reason)
        return record

    # -- markers -------------------------------------------------------------------------------------
    def marker_path(self, key: str) -> str:
        return posixpath.join(self.root, DONE_DIR, key)

    def mark_done(self, key: str, digest: str, shards: dict[str, Any] | None = None) -> None:
        """Mark a block done, vouching for the ``shards`` it stored (key -> size and checksum, see
        ``pipeline/io/integrity.py``), which ``isovol status --verify`` checks later."""
        body: dict[str, Any] = {"block": key, "hash": digest, "time": time.time()}
        if shards is not None:
            body["shards"] = shards
        _atomic_put(self.fs, self.marker_path(key), json.dumps(body).encode(), self.local)

    def unmark(self, key: str) -> None:
        """Withdraw a block's marker (before its shards are deleted and written again)."""
        try:
            self.fs.rm(self.marker_path(key))
        except FileNotFoundError:
            pass

    def done_keys(self, digest: str | None = None) -> set[str]:
        """Keys of blocks marked done (for run ``digest`` if given; markers of another run do not count)."""
        return set(self.done_markers(digest))

    def done_markers(self, digest: str | None = None) -> dict[str, dict[str, Any]]:
        """The markers of blocks marked done, by key (their contents only when ``digest`` is given)."""
        directory = posixpath.join(self.root, DONE_DIR)
        try:
            paths = self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return {}
        paths = [p for p in paths if not posixpath.basename(p.rstrip("/")).startswith(".tmp-")]
        if digest is None:
            return {posixpath.basename(p.rstrip("/")): {} for p in paths}
        markers = {}
        # one call for all: concurrent requests on an object store, where a resume may read 10^5 markers
        for p, raw in self.fs.cat(paths, on_error="omit").items() if paths else ():
            try:
                body = json.loads(raw)
            except ValueError:  # a damaged marker vouches for nothing
                continue
            if isinstance(body, dict) and body.get("hash") == digest:
                markers[posixpath.basename(p.rstrip("/"))] = body
        return markers

    def ensure_writable(self) -> None:
        try:
            self.fs.makedirs(posixpath.join(self.root, DONE_DIR), exist_ok=True)
        except Exception as exc:
            raise OutputError(f"cannot write to {strip_url(self.url)}: {describe_error(exc)}") from None

    # -- any file of the output (checks and repairs of workflows/verify.py) ---------------------------------
    def output_path(self, key: str) -> str:
        """Where ``key`` (relative to the output: ``0/zarr.json``, ``.isovol/documents.json``) lies on :attr:`fs`."""
        return posixpath.join(posixpath.dirname(self.root), key)

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key`` (relative to the output), None when there is no such file."""
        try:
            return self.fs.cat_file(self.output_path(key))
        except (FileNotFoundError, IsADirectoryError):
            return None
        except Exception as exc:  # storage errors: one clear line, not a traceback
            raise OutputError(f"cannot read {key} of {strip_url(self.url)}: {describe_error(exc)}") from None

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` (relative to the output) whole: a reader sees the old file or the new one."""
        _atomic_put(self.fs, self.output_path(key), data, self.local)


#: what ``isovol status`` calls an output whose blocks are all marked done but whose run was not finalised (killed
#: between its last block and recording completion, or its pyramid failed): ``--resume`` finalises it
NOT_FINALISED = "all blocks done, not finalised"


def status(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Progress of a run, read from its record and markers alone (no cluster).  ``condition`` is what a user
    acts on: ``complete`` (readable), :data:`NOT_FINALISED`, or ``blocks remaining``."""
    keeper = Bookkeeper(url, dict(storage_options or {}))
    record = keeper.read_record()
    if record is None:
        fs, path = filesystem(url, storage_options)
        if not fs.exists(path):
            raise OutputError(f"output not found: {strip_url(url)}")
        raise OutputError(f"{strip_url(url)} has no isovol run record")
    done = keeper.done_keys(record.tag) if record.readable else set()
    method = record.components.get("method")
    remaining = max(record.tasks - len(done), 0)
    finalised = record.state is RunState.COMPLETE
    condition = "blocks remaining" if remaining or not record.tasks else "complete" if finalised else NOT_FINALISED
    return {"output": strip_url(url), "state": record.state.value if record.state else "unknown",
            "condition": condition, "finalised": finalised,
            "tasks": record.tasks, "done": len(done), "remaining": remaining,
            "method": method.get("name") if isinstance(method, dict) else None,
            "factor": record.components.get("factor"), "hash": record.hash or None}

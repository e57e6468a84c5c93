"""Run record and per-block done markers, kept beside the image in ``OUTPUT/.isovol/``.

A marker is written only after its block's shards are durable, so "marked done" always means "on disk".
The run record holds a hash of everything that determines the result (layout, factor, method, model,
config); a resumed run must match it exactly or it is refused, so results of two configurations are never
mixed in one output.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from ..pipeline.errors import OutputError, ResumeError, StaleRunError
from ..pipeline.io.atomic import atomic_write
from ..pipeline.io.readers import META_DIR, RUN_RECORD
from ..pipeline.io.urls import describe_error, filesystem, is_local, strip_url

DONE_DIR = "done"


def run_hash(components: dict[str, Any]) -> str:
    blob = json.dumps(components, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def marker_tag(record: dict[str, Any]) -> str:
    """What a done marker must carry to count in the output ``record`` describes: the run hash and the output's
    generation (made anew each time the output is created).  A block of an earlier generation of the same run --
    say a task still running on an external cluster when its client was killed and the output overwritten --
    may mark itself done after its shards were deleted; its marker then does not count."""
    generation = record.get("generation")
    return f"{record['hash']}:{generation}" if generation else record["hash"]  # outputs made before generations


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
    def read_record(self, damaged_ok: bool = False) -> dict[str, Any] | None:
        """The run record, None when there is none; a damaged one is an error, or ``{}`` with ``damaged_ok``."""
        path = posixpath.join(self.root, RUN_RECORD)
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            if damaged_ok:
                return {}
            raise OutputError(f"{strip_url(self.url)}: the run record is damaged; rerun with --overwrite") from None
        except Exception as exc:  # storage errors (credentials, missing bucket): one clear line, not a traceback
            raise OutputError(f"cannot read {strip_url(self.url)}: {describe_error(exc)}") from None

    def write_record(self, record: dict[str, Any]) -> None:
        _atomic_put(self.fs, posixpath.join(self.root, RUN_RECORD),
                    json.dumps(record, indent=1, sort_keys=True).encode(), self.local)

    def check_current(self, tag: str) -> None:
        """Refuse to write for a run that is no longer the output's: the output was deleted or replaced (another
        generation) while this task ran, e.g. a task left running on an external cluster by a killed client."""
        record = self.read_record(damaged_ok=True)
        if record is None or "hash" not in record or marker_tag(record) != tag:
            raise StaleRunError(f"{strip_url(self.url)} was deleted or replaced by another run; a block of the "
                                f"earlier run stops before writing")

    def check_resume(self, components: dict[str, Any]) -> dict[str, Any]:
        """The recorded run, if it matches ``components``; otherwise a ResumeError naming what changed."""
        record = self.read_record()
        if record is None:
            raise ResumeError(f"{strip_url(self.url)} exists but has no isovol run record; "
                              "use --overwrite to replace it")
        if record.get("hash") != run_hash(components):
            old = record.get("components", {})
            detail = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in _changes(old, components))
            reason = f"the run differs from the recorded one ({detail or 'hash mismatch'})"
            raise ResumeError(f"cannot resume {strip_url(self.url)}: {reason}; use --overwrite to start over", reason)
        return record

    # -- markers -------------------------------------------------------------------------------------
    def marker_path(self, key: str) -> str:
        return posixpath.join(self.root, DONE_DIR, key)

    def mark_done(self, key: str, digest: str) -> None:
        body = json.dumps({"block": key, "hash": digest, "time": time.time()}).encode()
        _atomic_put(self.fs, self.marker_path(key), body, self.local)

    def unmark(self, key: str) -> None:
        """Withdraw a block's marker (before its shards are deleted and written again)."""
        try:
            self.fs.rm(self.marker_path(key))
        except FileNotFoundError:
            pass

    def done_keys(self, digest: str | None = None) -> set[str]:
        """Keys of blocks marked done (for run ``digest`` if given; markers of another run do not count)."""
        directory = posixpath.join(self.root, DONE_DIR)
        try:
            paths = self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return set()
        keys = set()
        for p in paths:
            name = posixpath.basename(p.rstrip("/"))
            if name.startswith(".tmp-"):
                continue
            if digest is not None:
                try:
                    if json.loads(self.fs.cat_file(p)).get("hash") != digest:
                        continue
                except (json.JSONDecodeError, FileNotFoundError):
                    continue
            keys.add(name)
        return keys

    def ensure_writable(self) -> None:
        try:
            self.fs.makedirs(posixpath.join(self.root, DONE_DIR), exist_ok=True)
        except Exception as exc:
            raise OutputError(f"cannot write to {strip_url(self.url)}: {describe_error(exc)}") from None


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) of every difference; nested mappings are compared key by key, so a long
    component (e.g. the method config) names the setting that changed instead of two truncated dumps."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", a, b))
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def status(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Progress of a run, read from its record and markers alone (no cluster)."""
    keeper = Bookkeeper(url, dict(storage_options or {}))
    record = keeper.read_record()
    if record is None:
        fs, path = filesystem(url, storage_options)
        if not fs.exists(path):
            raise OutputError(f"output not found: {strip_url(url)}")
        raise OutputError(f"{strip_url(url)} has no isovol run record")
    done = keeper.done_keys(marker_tag(record)) if "hash" in record else set()
    total = int(record.get("tasks", 0))
    return {"output": strip_url(url), "state": record.get("state", "unknown"), "tasks": total,
            "done": len(done), "remaining": max(total - len(done), 0),
            "method": record.get("components", {}).get("method", {}).get("name"),
            "factor": record.get("components", {}).get("factor"), "hash": record.get("hash")}

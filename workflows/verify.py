"""Is a finished output still what its run wrote?  ``isovol status --verify`` and ``upsample --resume --verify``.

Each done marker vouches for the shards its block stored (size and CRC-32C, see ``pipeline/io/integrity.py``), and
a finished run records its metadata documents (``zarr.json``, ``0/zarr.json``) with a copy of each in
``.isovol/documents.json``.  Checking reads the stored bytes and compares sizes and checksums -- no decoding, so
it runs at the speed of the disk -- and names every block whose shards were truncated, overwritten or deleted
after its marker was written.  Repairing withdraws those markers and deletes the damaged shards (in that order,
as the executor does), so the resumed run redoes exactly those blocks, and writes damaged metadata documents back
from their recorded copies.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..pipeline.errors import OutputError
from ..pipeline.io.integrity import damage, vouch
from ..pipeline.io.omezarr import LEVEL0
from ..pipeline.io.runrecord import META_DIR
from ..pipeline.io.urls import strip_url
from .bookkeeping import PYRAMID_DIR, Bookkeeper
from .cli_options import fmt_bytes

log = logging.getLogger(__name__)

#: the metadata documents of an output, and where a finished run records them (with a copy of each)
DOCUMENTS = ("zarr.json", f"{LEVEL0}/zarr.json")
DOCUMENTS_RECORD = f"{META_DIR}/documents.json"
#: shards read at once: an object store needs many requests in flight to give its bandwidth; a local disk is
#: read fastest by a few threads (benchmarks/verify_cost.py) -- and memory stays bounded by a few shards each
READERS_REMOTE, READERS_LOCAL = 16, min(4, os.cpu_count() or 1)


@dataclass
class Report:
    """What a check found: blocks and bytes checked, and every damaged shard and document with the reason."""

    blocks: int = 0
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    damaged: dict[str, dict[str, str]] = field(default_factory=dict)  # block -> {shard key -> why}
    documents: dict[str, str] = field(default_factory=dict)  # damaged document -> why
    documents_checked: bool = False
    unchecked: int = 0  # done blocks whose markers (written by an earlier isovol) vouch for no shards

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.documents

    def line(self) -> str:
        """One line that says whether the output is intact and what to do when not."""
        size = f"{self.shards} shards, {fmt_bytes(self.bytes)}"
        if self.ok:
            text = f"verified {self.blocks} done blocks ({size}) in {self.seconds:.1f} s: intact"
            text += ", metadata intact" if self.documents_checked else ""
        else:
            parts = []
            if self.damaged:
                n = sum(len(v) for v in self.damaged.values())
                parts.append(f"{len(self.damaged)} of {self.blocks} done blocks damaged ({n} shards)")
            if self.documents:
                parts.append(f"metadata damaged ({', '.join(sorted(self.documents))})")
            text = " and ".join(parts)
        if self.unchecked:
            text += f"; {self.unchecked} blocks marked by an earlier isovol record no checksums and were not checked"
        return text

    def remedy(self) -> str:
        """What to run about the damage found ("" when none)."""
        if self.ok:
            return ""
        if DOCUMENTS_RECORD in self.documents:  # nothing left to restore the metadata from
            return "the metadata cannot be restored; rerun the upsample with --overwrite"
        return "rerun the upsample with --resume --verify to repair"

    def details(self) -> list[str]:
        """One line per damaged document and shard."""
        out = [f"metadata {doc}: {why}" for doc, why in sorted(self.documents.items())]
        for block in sorted(self.damaged, key=_block_order):
            name = f"level {block.replace('/', ' block ')}" if "/" in block else f"block {block}"
            out += [f"{name}: shard {key}: {why}" for key, why in sorted(self.damaged[block].items())]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "blocks": self.blocks, "shards": self.shards, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "damaged": self.damaged, "documents": self.documents,
                "documents_checked": self.documents_checked, "unchecked": self.unchecked}


def _block_order(key: str) -> tuple[int, ...]:
    """Level 0's blocks first, then each pyramid level's (``"<level>/<block>"``), each in grid order."""
    level, _, block = key.rpartition("/")
    try:
        return (int(level or 0), *(int(v) for v in block.split(".")))
    except ValueError:
        return (-1,)


def verify(keeper: Bookkeeper, tag: str, readers: int | None = None) -> Report:
    """Check the shards of every block marked done for run ``tag``, and the metadata documents, without
    decoding anything (``readers`` threads; default by the kind of storage)."""
    t0 = time.perf_counter()
    readers = readers or (READERS_LOCAL if keeper.local else READERS_REMOTE)
    report = Report()
    jobs = []
    for block, marker in {**keeper.done_markers(tag), **pyramid_markers(keeper)}.items():
        shards = marker.get("shards")
        if not isinstance(shards, dict):
            report.unchecked += 1
            continue
        report.blocks += 1
        jobs += [(block, key, expected) for key, expected in shards.items()]

    def check(job: tuple[str, str, Any]) -> tuple[str, str, int, str | None]:
        block, key, expected = job
        data = keeper.read(key)
        return block, key, len(data or b""), _why(data, expected)

    for block, key, size, why in _bounded_map(check, jobs, readers):
        report.shards += 1
        report.bytes += size
        if why is not None:
            report.damaged.setdefault(block, {})[key] = why
    report.documents_checked, report.documents = _check_documents(keeper, tag)
    report.seconds = time.perf_counter() - t0
    return report


def pyramid_markers(keeper: Bookkeeper) -> dict[str, dict[str, Any]]:
    """The done markers of every pyramid level, by ``"<level>/<block>"``.  A level's markers all belong to the
    pyramid now listed: building a level afresh removes its earlier markers first (workflows/pyramid.py)."""
    base = posixpath.join(keeper.root, PYRAMID_DIR)
    try:
        paths = [p for p in keeper.fs.find(base) if not posixpath.basename(p).startswith(".tmp-")]
    except FileNotFoundError:
        return {}
    markers = {}
    for p, raw in keeper.fs.cat(paths, on_error="omit").items() if paths else ():
        level, block = posixpath.relpath(p, base).split("/")[-2:]
        try:
            body = json.loads(raw)
        except ValueError:  # a damaged marker vouches for nothing (and its block is redone by the pyramid)
            continue
        if isinstance(body, dict):
            markers[f"{level}/{block}"] = body
    return markers


def _unmark(keeper: Bookkeeper, block: str) -> None:
    """Withdraw a block's marker, a pyramid level's (``"<level>/<block>"``) or level 0's."""
    if "/" not in block:
        keeper.unmark(block)
        return
    try:
        keeper.fs.rm(posixpath.join(keeper.root, PYRAMID_DIR, block))
    except FileNotFoundError:
        pass


def _why(data: bytes | None, expected: Any) -> str | None:
    if expected is not None and not (isinstance(expected, dict) and isinstance(expected.get("size"), int)):
        return "its record in the done marker is unreadable"
    return damage(data, expected)


def _bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
    """``map`` on ``threads`` threads with at most a few items in flight per thread (bounded memory)."""
    items = list(items)
    step = 4 * threads
    with ThreadPoolExecutor(threads, thread_name_prefix="isovol-verify") as pool:
        for i in range(0, len(items), step):
            yield from pool.map(fn, items[i:i + step])


def _read_documents_record(keeper: Bookkeeper, tag: str) -> dict[str, Any] | None:
    """The recorded documents of run ``tag``; None when this run recorded none (unfinished, or an earlier
    isovol); a damaged record is an OutputError."""
    raw = keeper.read(DOCUMENTS_RECORD)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        docs = record["documents"]
        if not isinstance(docs, dict):
            raise TypeError("documents is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"{DOCUMENTS_RECORD} is damaged ({exc})") from None
    return docs if record.get("tag") == tag else None


def _check_documents(keeper: Bookkeeper, tag: str) -> tuple[bool, dict[str, str]]:
    try:
        docs = _read_documents_record(keeper, tag)
    except OutputError as exc:
        return True, {DOCUMENTS_RECORD: str(exc)}
    if docs is None:
        return False, {}
    found = {}
    for key, expected in docs.items():
        why = _why(keeper.read(key), expected)
        if why is not None:
            found[key] = why
    return True, found


def record_documents(keeper: Bookkeeper, tag: str) -> None:
    """Record the metadata documents of a finished run (size, checksum and a copy of each), once per output
    generation: a resumed run keeps what the first finish recorded."""
    try:
        if _read_documents_record(keeper, tag) is not None:
            return
    except OutputError:
        pass  # a damaged record is replaced
    docs = {}
    for key in DOCUMENTS:
        data = keeper.read(key)
        try:
            json.loads(data or b"")
        except ValueError:  # damaged before anything vouched for it (an output of an earlier isovol): vouch for none
            log.warning("%s: %s is not JSON; its metadata is not recorded", strip_url(keeper.url), key)
            return
        docs[key] = {**vouch(data), "text": data.decode()}  # type: ignore[dict-item,union-attr]
    keeper.put(DOCUMENTS_RECORD, json.dumps({"tag": tag, "documents": docs}, indent=1).encode())


def repair(keeper: Bookkeeper, tag: str) -> Report:
    """Check the output and undo what is damaged so that a resume redoes it: damaged documents are written
    back from their recorded copies; each damaged block loses its marker first, then its damaged shards."""
    report = verify(keeper, tag)
    if report.ok:
        log.info("%s: %s", strip_url(keeper.url), report.line())
        return report
    if DOCUMENTS_RECORD in report.documents:
        raise OutputError(f"{strip_url(keeper.url)}: {report.documents[DOCUMENTS_RECORD]}; {report.remedy()}")
    log.warning("%s: %s; repairing", strip_url(keeper.url), report.line())
    for line in report.details():
        log.info("%s", line)
    _restore_documents(keeper, tag, report.documents)
    for block, shards in report.damaged.items():
        _unmark(keeper, block)  # before any shard goes: a kill here must not leave a marked block without its shards
        for key in shards:
            if keeper.read(key) is not None:
                keeper.fs.rm(keeper.output_path(key))
    log.info("withdrew the markers of %d damaged blocks; they are redone now", len(report.damaged))
    return report


def _restore_documents(keeper: Bookkeeper, tag: str, damaged: dict[str, str]) -> None:
    if not damaged:
        return
    docs = _read_documents_record(keeper, tag) or {}
    for key in damaged:
        copy = docs[key]
        text = copy.get("text") if isinstance(copy, dict) else None
        if text is None or damage(text.encode(), copy) is not None:
            raise OutputError(f"{strip_url(keeper.url)}: {key} is damaged and its recorded copy too; rerun with "
                              "--overwrite")
        keeper.put(key, text.encode())
        log.info("restored %s from its recorded copy", key)


def verify_output(url: str, storage_options: dict[str, Any] | None = None) -> Report:
    """``isovol status --verify``: check an output against its run's markers and recorded documents."""
    keeper = Bookkeeper(url, dict(storage_options or {}))
    record = keeper.read_record()
    if record is None or not record.readable:
        raise OutputError(f"{strip_url(url)} has no isovol run record to verify against")
    return verify(keeper, record.tag)

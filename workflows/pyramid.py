"""The pyramid step: levels 1..N of an output, each from the level before, through the blockwise executor.

It runs after level 0 (``isovol upsample``) or on its own (``isovol pyramid OUTPUT``, which adds or repairs a
pyramid).  Each level is a run of the executor with its own done markers in ``OUTPUT/.isovol/pyramid/<level>/``,
counted only for the output's run (hash and generation) and the level's layout, so a rerun skips the blocks
already written.  Once a level had blocks to write, every later level is written afresh: its markers were made
from data that has changed.  The ``multiscales`` metadata lists the new levels only once all are written, so
a viewer never sees a half-made level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import time
from dataclasses import dataclass, replace
from typing import Any

from ..pipeline import identity
from ..pipeline.errors import OutputError
from ..pipeline.io.atomic import atomic_write
from ..pipeline.io.ome import level0, multiscales
from ..pipeline.io.omezarr import (
    LEVEL0,
    create_level,
    dataset,
    ome_attributes,
    open_level0,
    posixpath_name,
    read_attributes,
    write_ome,
)
from ..pipeline.io.readers import ZarrVolume
from ..pipeline.io.runrecord import RunState
from ..pipeline.io.urls import describe_error, strip_url
from ..pipeline.pyramid import DESCRIPTION, METHOD, Downsample, LevelPlan, level_layout, level_shapes, level_transform
from .block_task import BlockContext
from .bookkeeping import PYRAMID_DIR, Bookkeeper
from .executor import Summary, execute
from .verify import DOCUMENTS_RECORD, record_documents

log = logging.getLogger(__name__)


@dataclass
class LevelMarkers:
    """Done markers of one pyramid level, in the place of the executor's Bookkeeper.  A block still writes only
    while the output holds the run ``tag`` (``check_current``), and marks itself done with the level's digest."""

    keeper: Bookkeeper
    level: str
    tag: str

    @property
    def directory(self) -> str:
        return posixpath.join(self.keeper.root, PYRAMID_DIR, self.level)

    def check_current(self, digest: str) -> None:
        self.keeper.check_current(self.tag)

    def mark_done(self, key: str, digest: str, shards: dict[str, Any] | None = None) -> None:
        """As :meth:`Bookkeeper.mark_done`: the marker vouches for the ``shards`` the block stored."""
        body = json.dumps({"block": key, "level": self.level, "hash": digest, "time": time.time(),
                           **({"shards": shards} if shards is not None else {})}).encode()
        path = posixpath.join(self.directory, key)
        if self.keeper.local:
            atomic_write(path, body)
        else:
            self.keeper.fs.pipe_file(path, body)

    def unmark(self, key: str) -> None:
        try:
            self.keeper.fs.rm(posixpath.join(self.directory, key))
        except FileNotFoundError:
            pass

    def done_keys(self, digest: str) -> set[str]:
        try:
            paths = self.keeper.fs.ls(self.directory, detail=False)
        except FileNotFoundError:
            return set()
        keys = set()
        for p in paths:
            name = posixpath.basename(p.rstrip("/"))
            try:
                if not name.startswith(".tmp-") and json.loads(self.keeper.fs.cat_file(p)).get("hash") == digest:
                    keys.add(name)
            except (ValueError, FileNotFoundError):
                continue
        return keys

    def clear(self) -> None:
        if self.keeper.fs.exists(self.directory):
            self.keeper.fs.rm(self.directory, recursive=True)


def _level_url(url: str, level: int) -> str:
    return f"{url.rstrip('/')}/{level}"


def _reusable(url: str, options: dict[str, Any], k: int, shape: tuple, chunks: tuple, shards: tuple,
              dtype: Any) -> Any:
    """Level ``k``'s array when it exists with the layout wanted, else None."""
    try:
        arr = open_level0(url, options, mode="r", path=str(k))
    except Exception:  # missing or unreadable: made afresh
        return None
    same = (arr.shape, arr.dtype, arr.chunks, arr.shards or arr.chunks) == (tuple(shape), dtype, chunks, shards)
    return arr if same else None


def _image_ome(url: str, options: dict[str, Any], levels: int) -> dict[str, Any]:
    """The ``ome`` attribute listing levels 0..``levels`` with their scale and translation."""
    ms = multiscales(read_attributes(url, options))
    if not ms:
        raise OutputError(f"{strip_url(url)} has no OME multiscales metadata")
    _, _, scale, trans = level0(ms[0])
    datasets = [dataset(str(k), *level_transform(scale, trans, k)) for k in range(levels + 1)]
    down = {"type": METHOD, "metadata": {"description": DESCRIPTION, "method": "isovol.pipeline.pyramid"
                                         ".downsample_mean"}} if levels else None
    return ome_attributes(ms[0].get("name") or posixpath_name(url), tuple(scale), tuple(trans),  # type: ignore
                          datasets=datasets, downscaling=down)


def build_pyramid(client: Any, url: str, options: dict[str, Any], tag: str, levels: int | str | None = "auto", *,
                  block_shape: tuple[int, int, int] | None = None, fresh: bool = False, progress: bool = True,
                  retries: int = 2, timeout: float | None = None) -> Summary:
    """Write (or finish) levels 1..N of the output at ``url`` whose level 0 is complete for run ``tag``.

    ``fresh``: level 0 changed in this run, so every level is written again.  Returns one summary for all levels
    (block keys of failures prefixed with their level)."""
    keeper = Bookkeeper(url, dict(options))
    if not levels:  # no pyramid: remove one an earlier run made, touching nothing else
        if _remove_pyramid(url, options, keeper):
            record_documents(keeper, tag)
        return Summary(total=0)
    try:
        base = open_level0(url, options, mode="r")
    except Exception as exc:
        raise OutputError(f"cannot read level 0 of {strip_url(url)} ({describe_error(exc)}); isovol status --verify "
                          "names what is damaged") from None
    shapes = level_shapes(base.shape, base.chunks, levels)
    block = block_shape or base.shards or base.chunks
    total, listed = Summary(total=0), True
    for k, shape in enumerate(shapes, start=1):
        chunks, shards, level_block = level_layout(shape, base.chunks, base.shards or base.chunks, block)
        plan = LevelPlan(shapes[k - 2] if k > 1 else base.shape, shape, level_block)
        digest = identity.digest({"run": tag, "level": k, "method": METHOD, "shape": list(shape),
                                  "block": list(plan.block_shape), "shards": list(shards)})
        markers = LevelMarkers(keeper, str(k), tag)
        reuse = not fresh and _reusable(url, options, k, shape, chunks, shards, base.dtype) is not None
        done = markers.done_keys(digest) if reuse else set()
        todo = [b for b in plan.blocks() if b.key not in done]
        if todo and listed:  # levels being written are not listed meanwhile
            _list_levels(url, options, keeper, k - 1)
            listed = False
        if not reuse:
            markers.clear()
            create_level(url, options, str(k), shape=shape, dtype=base.dtype, chunks=chunks, shards=shards)
        fresh = fresh or bool(todo)  # the levels after one that changed are made afresh
        ctx = BlockContext(ZarrVolume(_level_url(url, k - 1), options), Downsample(), plan,  # type: ignore
                           url, dict(options), markers, digest, level=str(k))  # type: ignore[arg-type]
        summary = execute(client, ctx, todo, total=len(plan), skipped=len(plan) - len(todo), retries=retries,
                          timeout=timeout, progress=progress)
        log.info("pyramid level %d %s: %s", k, tuple(shape), summary.line())
        _add(total, summary, k)
        if not summary.ok:
            return total
    _drop_levels_from(url, options, keeper, len(shapes) + 1)
    _list_levels(url, options, keeper, len(shapes))
    record_documents(keeper, tag)  # the metadata as it now is, for status --verify
    return total


def _remove_pyramid(url: str, options: dict[str, Any], keeper: Bookkeeper) -> bool:
    """Drop every level after 0 and list level 0 alone; False when there was no pyramid to remove."""
    ms = multiscales(read_attributes(url, options)) or [{}]
    listed = len(ms[0].get("datasets") or ()) > 1
    dropped = _drop_levels_from(url, options, keeper, 1)
    if listed:
        _list_levels(url, options, keeper, 0)
    return listed or dropped


def _list_levels(url: str, options: dict[str, Any], keeper: Bookkeeper, levels: int) -> None:
    """Rewrite the multiscales metadata to list levels 0..``levels``.  The recorded copy of the metadata
    (workflows/verify.py) no longer matches, so it goes first; the finished pyramid records it again."""
    with contextlib.suppress(FileNotFoundError):
        keeper.fs.rm(keeper.output_path(DOCUMENTS_RECORD))
    write_ome(url, options, _image_ome(url, options, levels))


def _add(total: Summary, part: Summary, level: int) -> None:
    total.total += part.total
    total.skipped += part.skipped
    total.done += part.done
    total.retried += part.retried
    total.not_run += part.not_run
    total.seconds += part.seconds
    total.failed.update({f"level {level} {k}": v for k, v in part.failed.items()})
    total.stopped = total.stopped or part.stopped


def _drop_levels_from(url: str, options: dict[str, Any], keeper: Bookkeeper, first: int) -> bool:
    """Remove levels ``first`` and up left by an earlier, deeper pyramid (and their markers); True if any."""
    fs = keeper.fs
    root = posixpath.dirname(keeper.root)
    found = False
    for p in fs.ls(root, detail=False):
        name = posixpath.basename(p.rstrip("/"))
        if name.isdigit() and int(name) >= first and name != LEVEL0:
            fs.rm(p, recursive=True)
            LevelMarkers(keeper, name, "").clear()
            found = True
    return found


def pyramid_command(url: str, options: dict[str, Any], levels: int | str, *, rebuild: bool, cluster: dict[str, Any],
                    progress: bool = True, retries: int = 2, timeout: float | None = None) -> Summary:
    """``isovol pyramid OUTPUT``: add or repair the pyramid of a finished output, on a cluster of its own."""
    from ..deploy.clusters import open_cluster

    keeper = Bookkeeper(url, dict(options))
    record = keeper.read_record()
    if record is None:
        fs = keeper.fs
        if not fs.exists(posixpath.dirname(keeper.root)):
            raise OutputError(f"output not found: {strip_url(url)}")
        raise OutputError(f"{strip_url(url)} has no isovol run record; isovol pyramid works on isovol outputs")
    if len(keeper.done_keys(record.tag)) < record.tasks:
        raise OutputError(f"{strip_url(url)}: level 0 is not complete; finish it with isovol upsample ... --resume")
    base = open_level0(url, options, mode="r")
    level_shapes(base.shape, base.chunks, levels)  # too many levels: refused before the state changes
    block = tuple(record.plan.get("block_shape") or ()) or None  # level 0's, so the markers of a repair match
    summary, started = None, False
    try:
        with open_cluster(**cluster) as client:
            # "running" only once there is a cluster to work on: a kill during start-up leaves the output complete
            keeper.write_record(record.with_state(RunState.RUNNING))
            started = True
            summary = build_pyramid(client, url, options, record.tag, levels, block_shape=block,  # type: ignore
                                    fresh=rebuild, progress=progress, retries=retries, timeout=timeout)
    finally:
        current = keeper.read_record()
        if started and current is not None and current.tag == record.tag:
            ok = summary is not None and summary.ok
            keeper.write_record(current.with_state(RunState.COMPLETE if ok else RunState.INCOMPLETE))
    return summary


def with_pyramid(level0: Summary, pyramid: Summary) -> Summary:
    """Level 0's summary (its counts, which the run record's tasks are) with the pyramid's failures and blocks
    not run added, so one verdict covers the whole run; the pyramid's own counts are logged per level."""
    return replace(level0, failed={**level0.failed, **pyramid.failed}, not_run=level0.not_run + pyramid.not_run,
                   stopped=level0.stopped or pyramid.stopped)

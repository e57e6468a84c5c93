"""`isovol upsample`: open the input, plan blocks, prepare (or resume) the output, run the executor."""

from __future__ import annotations

import logging
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..deploy.clusters import check_cluster, load_config, open_cluster
from ..pipeline import __version__
from ..pipeline.blocks import BlockPlan, Shape3
from ..pipeline.errors import InputError, OutputError
from ..pipeline.geometry import (
    CONVENTION,
    anisotropy_warning,
    auto_factor,
    check_factor,
    output_shape,
    output_voxel_size,
    parse_region,
)
from ..pipeline.identity import digest as identity_digest
from ..pipeline.io.omezarr import create_image, remove_partials
from ..pipeline.io.readers import RegionVolume, Vec3, Volume, open_volume
from ..pipeline.io.runrecord import META_DIR, RUN_RECORD, RunRecord, RunState
from ..pipeline.io.urls import describe_error, filesystem, strip_url
from ..pipeline.methods import Method, get_method
from ..pipeline.methods.registry import REFERENCE
from ..pipeline.pyramid import level_shapes
from .bookkeeping import Bookkeeper
from .cluster_watch import WORKER_WAIT
from .executor import BlockContext, Summary, execute
from .pyramid import build_pyramid, with_pyramid
from .verify import record_documents, repair

log = logging.getLogger(__name__)


@dataclass
class UpsampleRequest:
    input: str
    output: str
    factor: Any
    method: str = REFERENCE
    model: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. tile / device of a learned method
    region: str | None = None  # Z0:Z1,Y0:Y1,X0:X1 of the input, in input voxels
    block_shape: Shape3 | None = None
    shard_shape: Shape3 | None = None
    chunk_shape: Shape3 | None = None
    voxel_size: Vec3 | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    output_storage_options: dict[str, Any] | None = None
    resume: bool = False
    verify: bool = False  # with resume: check the done blocks' shards first and redo those that fail
    overwrite: bool = False
    workers: int | None = None
    scheduler: str | None = None
    cluster: str = "local"  # deploy/clusters.py KINDS: local, local-gpu, slurm, pbs, kubernetes
    cluster_config: str | None = None  # a YAML overriding keys of deploy/<cluster>.yaml
    processes: bool = True
    overlap: bool = True  # pipeline a block's Z shards (read / compute / write) where the method allows it
    retries: int = 2
    block_timeout: float | None = None
    progress: bool = True
    command: str = ""
    #: pyramid levels after level 0: "auto" (until one chunk), N, or 0/None for none; the CLI asks for "auto", the
    #: API for none unless told (its callers write intermediates and test outputs; `isovol pyramid` adds one later)
    levels: int | str | None = 0
    need_voxel_size: bool = True  # False for `isovol plan`, which says "unknown" instead of refusing

    @property
    def out_options(self) -> dict[str, Any]:
        return self.storage_options if self.output_storage_options is None else self.output_storage_options


def prepare(req: UpsampleRequest) -> tuple[Volume, Method, BlockPlan]:
    """Validate the request and open the input: everything that can fail before the output is touched."""
    auto = isinstance(req.factor, str) and req.factor.strip().lower() == "auto"
    factor = 0 if auto else check_factor(req.factor)
    method = get_method(req.method, model=req.model, **req.method_options)
    if not auto:
        method.check_factor(factor)  # a method trained for one factor (the Stage II prior) refuses the others here
    if req.resume and req.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if req.verify and not req.resume:
        raise InputError("--verify goes with --resume (to only check an output: isovol status --verify)")
    if strip_url(req.input) == strip_url(req.output):
        raise InputError("the output must not be the input")
    vol = open_volume(req.input, req.storage_options, req.voxel_size)
    if req.region:
        vol = RegionVolume(vol, parse_region(req.region, vol.shape))
    if vol.shape[0] < 2:
        raise InputError(f"{strip_url(req.input)} has {vol.shape[0]} Z slice(s); at least 2 are needed")
    if vol.voxel_size is None and req.need_voxel_size:
        raise InputError(f"{strip_url(req.input)} carries no voxel size; pass --voxel-size Z,Y,X (nm)")
    if auto:
        factor = auto_factor(vol.voxel_size, strip_url(req.input))
        method.check_factor(factor)
    method.check_input(vol.dtype)
    block_shape = req.block_shape or method.preferred_block_shape(output_shape(vol.shape, factor))
    shard_shape = req.shard_shape
    if shard_shape is None and req.block_shape is None:  # the method's layout only when the user chose none
        shard_shape = method.preferred_shard_shape(block_shape)
    plan = BlockPlan.build(vol.shape, factor, method.halo, block_shape=block_shape,
                           shard_shape=shard_shape, chunk_shape=req.chunk_shape,
                           itemsize=vol.dtype.itemsize, working_bytes_per_voxel=method.working_bytes_per_voxel,
                           block_multiple=method.block_multiple)
    level_shapes(plan.out_shape, plan.chunk_shape, req.levels)  # too many levels: refused before any block runs
    return vol, method, plan


def run_components(vol: Volume, method: Method, plan: BlockPlan) -> dict[str, Any]:
    """Everything that determines the output; hashed into the run record."""
    return {
        "input": {"url": strip_url(vol.url), "shape": list(vol.shape), "dtype": str(vol.dtype),
                  "voxel_size": list(vol.voxel_size or ()), "translation": list(vol.translation),
                  "region": vol.region},
        "layout": {k: plan.describe()[k] for k in ("output_shape", "block_shape", "shard_shape", "chunk_shape",
                                                   "padding")},
        "factor": plan.factor,
        "method": method.config(),
        "model": method.model_hash,
        "isovol": __version__,
    }


def _output_state(req: UpsampleRequest) -> tuple[Any, str, bool]:
    try:
        fs, path = filesystem(req.output, req.out_options)
        return fs, path, bool(fs.exists(path))
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"cannot access {strip_url(req.output)}: {describe_error(exc)}") from None


#: run-record states of an output that an interrupted run left half made (nothing in it is worth keeping), and
#: what it was left half
UNFINISHED = {RunState.CREATING: "created", RunState.DELETING: "deleted"}


def _leftover(fs: Any, path: str, keeper: Bookkeeper) -> RunState | None:
    """The state (creating or deleting) of an output an interrupted run left half made, else None."""
    if not fs.isdir(path):
        return None
    record = keeper.read_record(damaged_ok=True)
    if record is not None:
        return record.state if record.state in UNFINISHED else None
    return RunState.CREATING if _bare_bookkeeping(fs, path) else None


def _bare_bookkeeping(fs: Any, path: str) -> bool:
    """Only ``.isovol/`` with at most temporary files in it: killed before the first run record was written."""
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    meta = posixpath.join(path, META_DIR)
    return names == [META_DIR] and all(posixpath.basename(f).startswith(".tmp-") for f in fs.find(meta))


def _remove_output(fs: Any, path: str, url: str, keeper: Bookkeeper) -> None:
    """Delete a previous isovol output for --overwrite, but never a folder isovol did not make.

    The run record is marked "deleting" first and removed last, so a kill at any point of a long delete (minutes
    on an object store) leaves an output that the next run recognises as half deleted and clears."""
    is_dir = fs.isdir(path)
    record = keeper.read_record(damaged_ok=True) if is_dir else None
    if not is_dir or (record is None and fs.ls(path) and not _bare_bookkeeping(fs, path)):  # the user's
        raise OutputError(f"{strip_url(url)} exists and is not an isovol output; refusing to overwrite it")
    if record is not None and record.state is not RunState.DELETING:
        keeper.write_record(record.with_state(RunState.DELETING))
    meta = posixpath.join(path, META_DIR)
    for p in fs.ls(path, detail=False):
        if posixpath.basename(p.rstrip("/")) != META_DIR:
            fs.rm(p, recursive=True)
    if fs.exists(meta):
        for p in fs.ls(meta, detail=False):
            if posixpath.basename(p.rstrip("/")) != RUN_RECORD:
                fs.rm(p, recursive=True)
    fs.rm(path, recursive=True)


def upsample(req: UpsampleRequest, client: Any = None) -> Summary:
    """Run (or resume) one upsampling; returns the summary. Raises IsovolError for unusable requests."""
    if client is None:
        check_cluster(req.cluster, req.cluster_config, req.scheduler)  # a bad cluster config fails before any write
    vol, method, plan = prepare(req)
    components = run_components(vol, method, plan)
    digest = identity_digest(components)
    keeper = Bookkeeper(req.output, dict(req.out_options))
    fs, path, exists = _output_state(req)
    unfinished = _leftover(fs, path, keeper) if exists else None
    if unfinished is not None:
        log.info("%s was left half %s by an interrupted run; removing it", strip_url(req.output),
                 UNFINISHED[unfinished])
        _remove_output(fs, path, req.output, keeper)
        exists = False
    fresh = not exists or req.overwrite
    if exists and not (req.resume or req.overwrite):
        raise OutputError(f"output {strip_url(req.output)} exists; pass --resume to continue it or --overwrite "
                          "to replace it")
    if exists and req.resume:
        record = keeper.check_resume(components)
        removed = remove_partials(req.output, req.out_options)
        if removed:
            log.info("removed %d partial file(s) left by an interrupted writer", removed)
        if req.verify:
            repair(keeper, record.tag)
    if fresh:
        if exists:
            _remove_output(fs, path, req.output, keeper)
        record = _create(req, vol, method, plan, components, digest, keeper)
    tag = record.tag
    warning = anisotropy_warning(vol.voxel_size, plan.factor)  # once the run goes ahead: a refusal is one line
    if warning:
        log.warning(warning)
    done = keeper.done_keys(tag)
    todo = [b for b in plan.blocks() if b.key not in done]
    log.info("%s -> %s: %d blocks, %d already done, method %s, factor %d", strip_url(req.input),
             strip_url(req.output), len(plan), len(plan) - len(todo), req.method, plan.factor)
    ctx = BlockContext(vol, method, plan, req.output, dict(req.out_options), keeper, tag, overlap=req.overlap)
    _set_state(keeper, tag, RunState.RUNNING)
    if client is None:
        wait = float(load_config(req.cluster or "local", req.cluster_config)["worker_wait"])
        with open_cluster(req.cluster, req.cluster_config, req.workers, req.scheduler,
                          processes=req.processes) as own:
            summary = _execute(own, ctx, todo, plan, req, wait)
    else:
        summary = _execute(client, ctx, todo, plan, req, WORKER_WAIT)
    if summary.ok:
        record_documents(keeper, tag)  # before "complete": a finished output's metadata can be verified
    _set_state(keeper, tag, RunState.COMPLETE if summary.ok else RunState.INCOMPLETE)
    return summary


def _execute(client: Any, ctx: BlockContext, todo: list, plan: BlockPlan, req: UpsampleRequest,
             worker_wait: float) -> Summary:
    from ..deploy.plugins import register

    register(client)  # models load once per worker and stay for later runs on this cluster (idempotent)
    summary = execute(client, ctx, todo, total=len(plan), skipped=len(plan) - len(todo), retries=req.retries,
                      timeout=req.block_timeout, progress=req.progress, worker_wait=worker_wait)
    if summary.ok and (req.levels or req.resume):  # the pyramid; levels 0 on a resume removes an earlier one
        summary = with_pyramid(summary, build_pyramid(
            client, req.output, dict(req.out_options), ctx.digest, req.levels, block_shape=plan.block_shape,
            fresh=bool(todo), progress=req.progress, retries=req.retries, timeout=req.block_timeout))
    return summary


def _create(req: UpsampleRequest, vol: Volume, method: Method, plan: BlockPlan, components: dict[str, Any],
            digest: str, keeper: Bookkeeper) -> RunRecord:
    provenance = {
        "method": req.method,  # the registry's name, as asked for; method_config names what ran (e.g. dgean for d2r)
        "method_config": method.config(),
        "factor": plan.factor,
        "model_hash": method.model_hash,
        "isovol_version": __version__,
        "command": req.command,
        "input": strip_url(req.input),
        "input_shape": list(vol.shape),
        "input_voxel_size_nm": list(vol.voxel_size or ()),
        "z_convention": CONVENTION,
        "padding": plan.padding,
        "run_hash": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record = RunRecord(hash=digest, generation=uuid.uuid4().hex[:16], components=components, tasks=len(plan),
                       plan=plan.describe(), state=RunState.CREATING)
    try:
        # the record first ("creating"), so a kill while the image is set up leaves an output the next run clears
        keeper.write_record(record)
        keeper.ensure_writable()
        create_image(req.output, req.out_options, shape=plan.out_shape, dtype=vol.dtype,
                     chunks=plan.chunk_shape, shards=plan.shard_shape,
                     voxel_size=output_voxel_size(vol.voxel_size, plan.factor),  # type: ignore[arg-type]
                     translation=vol.translation, provenance=provenance)
        record = record.with_state(RunState.CREATED)
        keeper.write_record(record)
        return record
    except Exception as exc:
        _cleanup_new(req)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot create output {strip_url(req.output)}: {describe_error(exc)}") from None


def _cleanup_new(req: UpsampleRequest) -> None:
    """Leave nothing behind when a fresh output could not be set up."""
    try:
        fs, path = filesystem(req.output, req.out_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:  # best effort: the original error is what the user needs to see
        pass


def _set_state(keeper: Bookkeeper, tag: str, state: RunState) -> None:
    """Record how far the run got -- only while the output is still this run's: one deleted or replaced by
    another run meanwhile keeps the state that run gives it."""
    record = keeper.read_record()
    if record is None or record.tag != tag:
        log.warning("%s was deleted or replaced by another run; its state is left as that run set it",
                    strip_url(keeper.url))
        return
    keeper.write_record(record.with_state(state))

"""The two kinds of training stage as ``isovol train`` runs them, and the training region.

A train stage reads its data into memory (the input's training region, or the whole output of the stage before)
and calls the method's trainer; a blockwise stage runs a registered method over the training region through the
executor, with the model of an earlier stage (pipeline/methods/training.py).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from ..pipeline.errors import InputError, IsovolError, ResumeError
from ..pipeline.geometry import parse_region
from ..pipeline.io.readers import open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.methods.training import FROM_PREVIOUS, ISOTROPIC, BlockwiseStage, Stage, TrainContext, Training

log = logging.getLogger(__name__)

#: default region of a method trained on the anisotropic stack: the whole volume if its output has at most this
#: many voxels, else a centred box of about it
DEFAULT_OUTPUT_VOXELS = 256**3
#: a method trained on a (pseudo-)isotropic volume reads all of it unless it exceeds this (then --region is asked)
MAX_TRAIN_BYTES = 4 << 30


class SettingsChanged(InputError):
    """A cached stage was trained with other settings.  ``reason`` says which; the message adds what
    ``isovol train`` takes to redo it (a caller without ``--restart-from``, such as evaluate, words its own)."""

    def __init__(self, reason: str, stage: str):
        super().__init__(f"{reason}; pass --restart-from {stage} to redo it and the stages after it "
                         f"(or use a new MODEL_DIR)")
        self.reason, self.stage = reason, stage


def default_region(shape: tuple[int, int, int], factor: int) -> tuple[tuple[slice, slice, slice], bool]:
    """The whole volume if its output is at most 256^3 voxels, else a centred box whose output is about 256^3;
    returns (box, whether it is smaller than the volume)."""
    nz, ny, nx = shape
    if ((nz - 1) * factor + 1) * ny * nx <= DEFAULT_OUTPUT_VOXELS:
        return (slice(0, nz), slice(0, ny), slice(0, nx)), False
    side = round(DEFAULT_OUTPUT_VOXELS ** (1 / 3))
    z = min(nz, max(4, (side - 1) // factor + 1))  # at least the 4 slices of a DGEAN window
    out_z = (z - 1) * factor + 1
    xy = max(1, int(math.sqrt(DEFAULT_OUTPUT_VOXELS / out_z)))
    y, x = min(ny, xy), min(nx, xy)
    if y < xy:  # a narrow volume: give the other lateral axis the rest
        x = min(nx, DEFAULT_OUTPUT_VOXELS // (out_z * y))
    elif x < xy:
        y = min(ny, DEFAULT_OUTPUT_VOXELS // (out_z * x))
    box = tuple(slice((n - k) // 2, (n - k) // 2 + k) for n, k in zip(shape, (z, y, x)))
    return box, True  # type: ignore[return-value]


def region_text(box: tuple[slice, slice, slice]) -> str:
    return ",".join(f"{b.start}:{b.stop}" for b in box)


def training_region(vol: Any, url: str, region: str | None, factor: int,
                    training: Training) -> tuple[tuple[slice, slice, slice], str]:
    """``--region``, else the default: about 256^3 output voxels of an anisotropic stack, or all of a
    (pseudo-)isotropic volume that fits in memory; returns the box and a line saying which (logged by the caller
    once the request is accepted, so a refused one stays one error line)."""
    name = f"{strip_url(url)} {tuple(vol.shape)}"
    if region:
        box = parse_region(region, vol.shape)
        note = f"training region {region_text(box)} of {name}"
    elif training.trains_on == ISOTROPIC:
        box = parse_region(None, vol.shape)
        nbytes = int(np.prod(vol.shape)) * vol.dtype.itemsize
        if nbytes > MAX_TRAIN_BYTES:
            raise InputError(f"{strip_url(url)} is {nbytes / 2**30:.1f} GiB; choose a training --region")
        note = f"no --region given: training on the whole of {name}"
    else:
        box, cut = default_region(vol.shape, factor)
        note = "no --region given: training on " + (f"the centred region {region_text(box)} of {name} (output "
                                                    f"about 256^3 voxels)" if cut else f"the whole of {name}")
    slices = box[0].stop - box[0].start
    if slices < training.min_slices:
        raise InputError(f"the region has {slices} Z slice(s); this method needs at least {training.min_slices}")
    return box, note


def run_stage(stage: Stage, previous: Stage | None, run: dict[str, Any]) -> dict[str, Any]:
    """Run one stage; returns {"paused": bool, "validation": last validation record (train stages)}."""
    if isinstance(stage, BlockwiseStage):
        _blockwise(stage, run)
        return {"paused": False}
    data, source = _stage_data(stage, previous, run)
    ctx = TrainContext(np.ascontiguousarray(data), os.path.join(run["model_dir"], stage.path), run["factor"],
                       run["device"], source, log.info, run["deadline"])
    result = stage.run(ctx)
    if not result.get("finished", True):
        return {"paused": True}
    history = result.get("history") or [{}]
    return {"paused": False, "validation": dict(history[-1])}


def _stage_data(stage: Stage, previous: Stage | None, run: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    if stage.source == FROM_PREVIOUS and previous is not None:
        url = os.path.join(run["model_dir"], previous.path)
        pv = open_volume(url)
        data = pv.read(tuple(slice(0, n) for n in pv.shape))
        return data, {"url": os.path.abspath(url), "stage": f"{previous.title} output",
                      "shape": list(data.shape), "dtype": str(data.dtype)}
    box = run["box"]
    data = run["vol"].read(box)
    return data, {"url": strip_url(run["input_url"]), "region": [[b.start, b.stop] for b in box],
                  "shape": list(data.shape), "dtype": str(data.dtype)}


def _blockwise(stage: BlockwiseStage, run: dict[str, Any]) -> None:
    from .upsample import UpsampleRequest, upsample

    out = os.path.join(run["model_dir"], stage.path)  # one left half made by a killed run is cleared by upsample
    options = dict(stage.options)
    if run["device"]:
        options["device"] = run["device"]
    req = UpsampleRequest(input=run["input_url"], output=out, factor=run["factor"], method=stage.method,
                          model=os.path.join(run["model_dir"], stage.model_from), method_options=options,
                          region=region_text(run["box"]), voxel_size=run["voxel_size"],
                          storage_options=run["options"], resume=os.path.exists(out), workers=run["workers"],
                          processes=run["processes"], cluster=run["cluster"], cluster_config=run["cluster_config"],
                          scheduler=run["scheduler"], retries=run["retries"], block_timeout=run["block_timeout"],
                          command=f"isovol train ({stage.title})")
    try:
        summary = upsample(req)
    except ResumeError as exc:  # e.g. another isovol version: the executor's advice (--overwrite) is not ours
        raise SettingsChanged(f"{stage.title} cannot resume {out}: {exc.reason}", stage.name) from None
    log.info("%s: %s", stage.title, summary.line())
    if not summary.ok:
        raise IsovolError(f"{stage.title} did not finish ({summary.line()}); rerun the same "
                          f"command to resume it")

"""`isovol train-dgean`: load a (pseudo-)isotropic volume (or a region of it) and train DGEAN on it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..pipeline.errors import InputError
from ..pipeline.io.readers import open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.trainers.dgean import resolve_recipe, train_dgean

log = logging.getLogger("isovol")

#: refuse to pull more than this into memory without an explicit --region
MAX_TRAIN_BYTES = 4 << 30


def parse_region(text: str | None, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """``Z0:Z1,Y0:Y1,X0:X1`` (empty bounds allowed) -> slices, checked against ``shape``."""
    if not text:
        return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    parts = text.split(",")
    if len(parts) != 3:
        raise InputError(f"--region must be Z0:Z1,Y0:Y1,X0:X1, got {text!r}")
    out = []
    for part, n, axis in zip(parts, shape, "zyx"):
        try:
            a, b = (p.strip() for p in part.split(":"))
            lo, hi = int(a) if a else 0, int(b) if b else n
        except ValueError:
            raise InputError(f"--region must be Z0:Z1,Y0:Y1,X0:X1 with integers, got {text!r}") from None
        if not 0 <= lo < hi <= n:
            raise InputError(f"--region {axis} range {lo}:{hi} lies outside the volume (size {n})")
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def load_training_volume(volume_url: str, region: str | None,
                         storage_options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the training region into memory (refusing a huge volume without --region) and describe it."""
    vol = open_volume(volume_url, storage_options)
    box = parse_region(region, vol.shape)
    nbytes = int(np.prod([s.stop - s.start for s in box])) * vol.dtype.itemsize
    if nbytes > MAX_TRAIN_BYTES and not region:
        raise InputError(f"{strip_url(volume_url)} is {nbytes / 2**30:.1f} GiB; choose a training --region")
    data = vol.read(box)
    source = {"url": strip_url(volume_url), "region": [[s.start, s.stop] for s in box],
              "shape": list(data.shape), "dtype": str(data.dtype)}
    return data, source


def set_steps(train: Any, steps: int | None) -> None:
    """Apply ``--steps`` to a training config."""
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be positive, got {steps}")
        train.steps = steps


def run_train_dgean(volume_url: str, model_dir: str, factor: int, *, isotropic: bool, config: str,
                    steps: int | None, region: str | None, device: str | None,
                    storage_options: dict[str, Any], lateral: bool = False) -> dict[str, Any]:
    """``lateral``: VOLUME is the anisotropic stack; train on its own Y/X sequences (the naive baseline)."""
    if lateral and isotropic:
        raise InputError("--lateral and --isotropic exclude each other: --lateral trains on the anisotropic stack")
    mcfg, tcfg = resolve_recipe(config)
    set_steps(tcfg, steps)
    data, source = load_training_volume(volume_url, region, storage_options)
    kind = "isotropic" if isotropic else "anisotropic (lateral Y/X windows)" if lateral else "pseudo-isotropic"
    log.info("training DGEAN (%s) at factor %d on %s region %s %s, %d steps", config, factor, kind,
             strip_url(volume_url), tuple(data.shape), tcfg.steps)
    if lateral:
        source["sampling"] = "lateral"
    return train_dgean(data, model_dir, factor, isotropic=isotropic, model_config=mcfg, train=tcfg,
                       device=device, source=source, log=log.info, lateral=lateral)

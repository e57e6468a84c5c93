"""`isovol train-prior`: load an anisotropic volume (or a region of it) and train the D2R Stage I prior on its
XY slices."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..pipeline.errors import InputError
from ..pipeline.io.readers import open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.trainers.prior import resolve_recipe, train_prior
from .train_dgean import MAX_TRAIN_BYTES, parse_region

log = logging.getLogger("isovol")


def run_train_prior(volume_url: str, prior_dir: str, factor: int, *, config: str, steps: int | None,
                    region: str | None, device: str | None, storage_options: dict[str, Any]) -> dict[str, Any]:
    mcfg, sde, tcfg = resolve_recipe(config)
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be positive, got {steps}")
        tcfg.steps = steps
    vol = open_volume(volume_url, storage_options)
    box = parse_region(region, vol.shape)
    nbytes = int(np.prod([s.stop - s.start for s in box])) * vol.dtype.itemsize
    if nbytes > MAX_TRAIN_BYTES and not region:
        raise InputError(f"{strip_url(volume_url)} is {nbytes / 2**30:.1f} GiB; choose a training --region")
    data = vol.read(box)
    source = {"url": strip_url(volume_url), "region": [[s.start, s.stop] for s in box],
              "shape": list(data.shape), "dtype": str(data.dtype)}
    return train_prior(data, prior_dir, factor, model_config=mcfg, train=tcfg, sde=sde, device=device,
                       source=source, log=log.info)

"""`isovol train-prior`: load an anisotropic volume (or a region of it) and train the D2R Stage I prior on its
XY slices."""

from __future__ import annotations

import logging
from typing import Any

from ..pipeline.trainers.prior import resolve_recipe, train_prior
from .train_dgean import load_training_volume, set_steps

log = logging.getLogger("isovol")


def run_train_prior(volume_url: str, prior_dir: str, factor: int, *, config: str, steps: int | None,
                    region: str | None, device: str | None, storage_options: dict[str, Any]) -> dict[str, Any]:
    mcfg, sde, tcfg = resolve_recipe(config)
    set_steps(tcfg, steps)
    data, source = load_training_volume(volume_url, region, storage_options)
    return train_prior(data, prior_dir, factor, model_config=mcfg, train=tcfg, sde=sde, device=device,
                       source=source, log=log.info)

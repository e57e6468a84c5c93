"""The small training settings the trainer and method tests train with: the ``tiny`` recipes the DGEAN and prior
trainers had before the recipes moved into each method's ``recipes.yaml``.  The tests' step counts and loss margins
were measured with these settings (``cpu-tiny`` there is another, shorter recipe made for the whole D2R flow), so
they are spelt out here once and built through the methods' own recipe parsers.

A plain module (not fixtures), so any test imports it by name: pytest puts ``tests/`` on sys.path for its
conftest.py.
"""

from __future__ import annotations

from typing import Any

from isovol.pipeline.methods.d2r_prior.recipe import parse as parse_prior
from isovol.pipeline.methods.d2r_prior.trainer import SDE_DEFAULTS
from isovol.pipeline.methods.dgean.recipe import parse as parse_dgean

DGEAN_TINY: dict[str, Any] = {
    "model": "tiny",
    "train": {"steps": 300, "batch": 4, "patch": 32, "val_every": 100, "val_windows": 16, "ckpt_every": 100,
              "warmup": 20, "lr": 1e-3},
}
PRIOR_TINY: dict[str, Any] = {
    "model": "tiny",
    "sde": dict(SDE_DEFAULTS),
    "train": {"steps": 200, "batch": 8, "patch": 33, "lr": 1e-3, "warmup": 20, "ema": 0.99, "val_every": 50,
              "val_patches": 8, "val_timesteps": 4, "val_restore": 2, "ckpt_every": 100},
}


def dgean_tiny(**train: Any) -> tuple[Any, Any]:
    """(DGEANConfig, TrainConfig) of the tiny DGEAN recipe, with ``train`` overriding its training settings."""
    recipe = parse_dgean({**DGEAN_TINY, "train": {**DGEAN_TINY["train"], **train}}, "tiny test recipe")
    return recipe.model, recipe.train


def prior_tiny(**train: Any) -> tuple[Any, dict[str, Any], Any]:
    """(NAFNetConfig, SDE settings, PriorTrainConfig) of the tiny prior recipe, with ``train`` overriding its
    training settings."""
    recipe = parse_prior({**PRIOR_TINY, "train": {**PRIOR_TINY["train"], **train}}, "tiny test recipe")
    return recipe.model, dict(recipe.sde), recipe.train

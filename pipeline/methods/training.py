"""How a learned method is trained, as data the generic ``isovol train`` runner (workflows/train.py) executes.

A method's training is a list of stages.  A :class:`TrainStage` trains in memory on a volume (the training region
of the input, or the output of the stage before) and writes a model directory; a :class:`BlockwiseStage` runs
another registered method through the blockwise executor and writes an OME-Zarr volume.  D2R is three stages
(prior, recover, dgean) taken from other methods' packages; a plain method is one.  The runner caches each stage
under an identity (``pipeline/identity.py``): its settings, the input and the stage before.

Nothing here knows about zarr, dask or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .recipes import RecipeBook

#: where a train stage's data comes from
FROM_INPUT, FROM_PREVIOUS = "input", "previous"
#: what a method trains on: the anisotropic stack to be upsampled (``evaluate`` may then train it on the decimated
#: ground truth, as a user would), or a (pseudo-)isotropic volume
ANISOTROPIC, ISOTROPIC = "anisotropic", "isotropic"


@dataclass(frozen=True)
class TrainContext:
    """What a train stage is given: the data (z, y, x) in memory, its directory, and how to report."""

    data: np.ndarray
    directory: str
    factor: int
    device: str | None
    source: dict[str, Any]
    log: Callable[[str], None]
    deadline: float | None = None


@dataclass(frozen=True)
class TrainStage:
    """Trains in memory: ``run(ctx)`` returns the trainer's result ({"finished": bool, "history": [...], ...});
    its directory holds the published model (model.safetensors, config.json) when finished."""

    name: str
    title: str
    settings: dict[str, Any]  # everything that changes its result (normalised, JSON-able)
    run: Callable[[TrainContext], dict[str, Any]]
    source: str = FROM_INPUT
    output: str = ""  # folder in MODEL_DIR [default: the stage's name]
    pauses: bool = True  # checkpoints and stops at a deadline by itself

    @property
    def path(self) -> str:
        return self.output or self.name


@dataclass(frozen=True)
class BlockwiseStage:
    """Runs the registered ``method`` (with the model of stage ``model_from``) over the training region through
    the executor, writing the OME-Zarr ``output`` in MODEL_DIR; resumable by its blocks' done markers."""

    name: str
    title: str
    settings: dict[str, Any]
    method: str
    model_from: str
    options: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    pauses: bool = False

    @property
    def path(self) -> str:
        return self.output or f"{self.name}.ome.zarr"


Stage = TrainStage | BlockwiseStage


@dataclass(frozen=True)
class Training:
    """A learned method's training: its recipe book and the stages a recipe turns into.  The last stage is a
    :class:`TrainStage`; its published model is linked into MODEL_DIR, which then serves ``--model``."""

    book: RecipeBook
    stages: Callable[[Any], list[Stage]]
    trains_on: str = ANISOTROPIC
    min_slices: int = 2  # Z slices the training region needs at least
    describe_data: str = "the input"

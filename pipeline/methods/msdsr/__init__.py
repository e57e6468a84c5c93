"""MSDSR (Jiang et al., CVPRW 2024): a 2-D diffusion model trained on the sharp XY slices of the anisotropic volume
itself, where a random subset of rows is kept clean and the rest generated; at inference the measured slices are
the kept rows of each XZ and YZ plane and the model generates the rows between them.  No isotropic ground truth.

- ``network.py`` the denoising U-Net, ``diffusion.py`` the schedule, row masks, loss and DDIM, ``trainer.py`` its
  training, ``method.py`` the blockwise method, ``recipe.py`` + ``recipes.yaml`` the recipes.  docs/msdsr.md.
"""

from __future__ import annotations

import copy
from typing import Any

from ..recipes import RecipeBook
from ..registry import Kind, MethodEntry
from ..training import ANISOTROPIC, TrainContext, Training, TrainStage

NAME = "msdsr"
KIND = NAME  # config.json kind of its models


def _parse(spec: dict[str, Any], where: str) -> Any:
    from .recipe import parse

    return parse(spec, where)


BOOK = RecipeBook(__name__, _parse, NAME)


def build(model: str, **options: Any) -> Any:
    from .method import MSDSR

    return MSDSR(model, **options)


def train_stage(recipe: Any, *, name: str = "msdsr", title: str = "MSDSR denoiser") -> TrainStage:
    """Train the denoiser with ``recipe`` (a :class:`recipe.MSDSRRecipe`) on the XY slices of the input's region."""

    def run(ctx: TrainContext) -> dict[str, Any]:
        from dataclasses import asdict

        from .trainer import train_msdsr

        return train_msdsr(ctx.data, ctx.directory, ctx.factor, model_config=recipe.model,
                           train=copy.deepcopy(recipe.train), sampling=asdict(recipe.sampling), device=ctx.device,
                           source=ctx.source, log=ctx.log, deadline=ctx.deadline)

    return TrainStage(name, title, recipe.to_dict(), run)


ENTRIES = (
    MethodEntry(NAME, Kind.LEARNED,
                "row-masked 2-D diffusion trained on the XY slices, generating the XZ/YZ planes between the measured "
                "slices (MSDSR); seeded, DDIM", build, needs_model=True,
                training=Training(BOOK, lambda recipe: [train_stage(recipe)], trains_on=ANISOTROPIC, min_slices=2,
                                  describe_data="the XY slices of the anisotropic stack")),
)

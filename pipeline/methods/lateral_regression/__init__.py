"""lateral-regression: the baseline a lab would run instead of a diffusion method -- isotropic CARE's idea (Weigert
et al., CSBDeep): a 2-D U-Net learns, on the volume's own sharp XY slices with rows removed at the factor's stride,
to restore the rows between measured ones from a classical interpolation; applied to each block's XZ and YZ
planes and fused by the mean, with the measured slices kept exact.  One forward pass per plane: fast.

- ``network.py`` the U-Net, ``trainer.py`` its training, ``method.py`` the blockwise method, ``recipe.py`` +
  ``recipes.yaml`` the recipes.
"""

from __future__ import annotations

import copy
from typing import Any

from ..recipes import RecipeBook
from ..registry import Kind, MethodEntry
from ..training import ANISOTROPIC, BlockwiseStage, TrainContext, Training, TrainStage

NAME = "lateral-regression"
KIND = NAME  # config.json kind of its models


def _parse(spec: dict[str, Any], where: str) -> Any:
    from .recipe import parse

    return parse(spec, where)


BOOK = RecipeBook(__name__, _parse, NAME)


def build(model: str, **options: Any) -> Any:
    from .method import LateralRegression

    return LateralRegression(model, **options)


def train_stage(recipe: Any, *, name: str = "regression", title: str = "lateral regression") -> TrainStage:
    """Train the U-Net with ``recipe`` (a :class:`recipe.RegressionRecipe`) on the XY slices of the input's region."""

    def run(ctx: TrainContext) -> dict[str, Any]:
        from .trainer import train_regression

        return train_regression(ctx.data, ctx.directory, ctx.factor, model_config=recipe.model,
                                train=copy.deepcopy(recipe.train), device=ctx.device, source=ctx.source,
                                log=ctx.log, deadline=ctx.deadline)

    return TrainStage(name, title, recipe.to_dict(), run)


def apply_stage(model_from: str, *, name: str = "recover", title: str = "regression recovery",
                output: str = "") -> BlockwiseStage:
    """Run the model stage ``model_from`` trained over the training region (D2R's Stage II with this method)."""
    return BlockwiseStage(name, title, {"method": NAME}, NAME, model_from, output=output)


ENTRIES = (
    MethodEntry(NAME, Kind.LEARNED,
                "2-D U-Net trained on the XY slices, applied to the XZ/YZ planes (isotropic CARE's idea): the fast "
                "learned baseline", build, needs_model=True,
                training=Training(BOOK, lambda recipe: [train_stage(recipe)], trains_on=ANISOTROPIC, min_slices=2,
                                  describe_data="the XY slices of the anisotropic stack")),
)

"""The D2R lateral prior: an IR-SDE restorer trained on the XY slices of the anisotropic volume (D2R's Stage I),
and the blockwise recovery that samples it on each block's XZ / YZ slices and fuses them (Stage II).

- ``nafnet.py`` the network, ``irsde.py`` the SDE, ``samplers.py`` its samplers, ``trainer.py`` the training,
  ``method.py`` the blockwise recovery, ``recipe.py`` + ``recipes.yaml`` the recipes.
- ``isovol train --method d2r-prior`` trains a prior; ``isovol upsample --method d2r-prior --model DIR`` recovers a
  pseudo-isotropic volume (options: ``--option sampler=fast`` etc., see ``recipe.RecoverSettings``).  D2R takes
  :func:`prior_stage` and :func:`recover_stage` as its Stages I and II.
"""

from __future__ import annotations

import copy
from typing import Any

from ..recipes import RecipeBook
from ..registry import Kind, MethodEntry
from ..training import ANISOTROPIC, BlockwiseStage, TrainContext, Training, TrainStage

NAME = "d2r-prior"


def _parse(spec: dict[str, Any], where: str) -> Any:
    from .recipe import parse

    return parse(spec, where)


BOOK = RecipeBook(__name__, _parse, NAME)


def build(model: str, **options: Any) -> Any:
    from .method import PriorRecovery

    return PriorRecovery(model, **options)


def prior_stage(recipe: Any, *, name: str = "prior", title: str = "lateral prior") -> TrainStage:
    """Train the prior with ``recipe`` (a :class:`recipe.PriorRecipe`) on the XY slices of the input's region."""

    def run(ctx: TrainContext) -> dict[str, Any]:
        from .trainer import train_prior

        return train_prior(ctx.data, ctx.directory, ctx.factor, model_config=recipe.model,
                           train=copy.deepcopy(recipe.train), sde=recipe.sde, device=ctx.device, source=ctx.source,
                           log=ctx.log, deadline=ctx.deadline)

    return TrainStage(name, title, recipe.to_dict(), run)


def recover_stage(settings: Any, prior: str, *, name: str = "recover", title: str = "lateral recovery",
                  output: str = "") -> BlockwiseStage:
    """Recover the input's region with the prior that stage ``prior`` trained (``settings``: a
    :class:`recipe.RecoverSettings`)."""
    opts = settings.to_dict()
    return BlockwiseStage(name, title, opts, NAME, prior, options=opts, output=output)


ENTRIES = (
    MethodEntry(NAME, Kind.LEARNED,
                "D2R's lateral prior (IR-SDE on the XY slices); upsampling recovers and fuses XZ/YZ (Stage II)",
                build, needs_model=True,
                training=Training(BOOK, lambda recipe: [prior_stage(recipe)], trains_on=ANISOTROPIC, min_slices=2,
                                  describe_data="the XY slices of the anisotropic stack")),
)

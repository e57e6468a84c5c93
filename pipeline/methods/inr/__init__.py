"""INR with a 2-D diffusion prior (Lee & Jeong, MICCAI 2024): per fit block, a neural field in physical coordinates
(a classical interpolation plus a learned residual) optimised for measurement consistency on the measured slices
and for score distillation (SDS) from a 2-D diffusion prior of the XY slices on rendered XZ / YZ planes.

- ``prior.py`` what a prior is (and a closed-form Gaussian one); ``msdsr_prior.py`` the adapter to MSDSR, whose
  denoiser is the prior (used unconditionally); ``field.py`` the field; ``fit.py`` one region's fit;
  ``method.py`` the blockwise method on a global grid of fit blocks; ``recipe.py`` + ``recipes.yaml`` the recipes.
  docs/inr.md.
"""

from __future__ import annotations

from typing import Any

from ..recipes import RecipeBook
from ..registry import Kind, MethodEntry
from ..training import ANISOTROPIC, TrainContext, Training, TrainStage

NAME = "inr"


def _parse(spec: dict[str, Any], where: str) -> Any:
    from .recipe import parse

    return parse(spec, where)


BOOK = RecipeBook(__name__, _parse, NAME)


def build(model: str, **options: Any) -> Any:
    from .method import INR

    return INR(model, **options)


def train_stage(recipe: Any, *, name: str = "prior", title: str = "INR prior (MSDSR denoiser)") -> TrainStage:
    """Train the prior with ``recipe`` (a :class:`recipe.INRRecipe`): MSDSR's trainer, through the adapter."""

    def run(ctx: TrainContext) -> dict[str, Any]:
        from .msdsr_prior import train_prior

        return train_prior(ctx, recipe.prior, recipe.unconditional, recipe.settings.to_dict())

    return TrainStage(name, title, recipe.to_dict(), run)


ENTRIES = (
    MethodEntry(NAME, Kind.FITTED,
                "a neural field per fit block, started at linear interpolation and fitted to the measured slices "
                "with score distillation from a 2-D diffusion prior of the XY slices (an MSDSR model)", build,
                needs_model=True,
                training=Training(BOOK, lambda recipe: [train_stage(recipe)], trains_on=ANISOTROPIC, min_slices=2,
                                  describe_data="the XY slices of the anisotropic stack")),
)

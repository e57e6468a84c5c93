"""D2R: self-supervised isotropic reconstruction in three stages, each another method's step (docs/d2r.md).

Stage I trains the lateral prior on the input's XY slices (``d2r_prior.prior_stage``), Stage II recovers the
training region's XZ / YZ slices with it through the blockwise executor (``d2r_prior.recover_stage``), and
Stage III trains DGEAN on that pseudo-isotropic volume (``dgean.train_stage``).  MODEL_DIR then holds the DGEAN
that ``isovol upsample --method d2r --model MODEL_DIR`` runs.  A recipe (``recipes.yaml``) names or spells out
the settings of each stage: ``{prior, recover, dgean}``.
"""

from __future__ import annotations

from typing import Any

from ..recipes import RecipeBook
from ..registry import Kind, MethodEntry
from ..training import ANISOTROPIC, FROM_PREVIOUS, Stage, Training

NAME = "d2r"
#: where each stage writes in MODEL_DIR (kept from the first release, so its layout is the documented one)
PRIOR_DIR, PSEUDO, DGEAN_DIR = "prior", "pseudo.ome.zarr", "dgean"


def _parse(spec: dict[str, Any], where: str) -> Any:
    from .recipe import parse

    return parse(spec, where)


def _expand(spec: dict[str, Any]) -> dict[str, Any]:
    from .recipe import expand

    return expand(spec)


BOOK = RecipeBook(__name__, _parse, NAME, _expand)


def _dgean_build(model: str, **options: Any) -> Any:
    from ..dgean import build

    return build(model, **options)


def stages(recipe: Any) -> list[Stage]:
    from .. import d2r_prior, dgean, lateral_regression

    if recipe.lateral == "regression":  # Stages I-II from lateral-regression, the same Stage III
        return [lateral_regression.train_stage(recipe.regression, title="Stage I (lateral regression)"),
                lateral_regression.apply_stage("regression", title="Stage II (regression recovery)", output=PSEUDO),
                dgean.train_stage(recipe.dgean, title="Stage III (DGEAN)", source=FROM_PREVIOUS)]
    return [d2r_prior.prior_stage(recipe.prior, title="Stage I (lateral prior)"),
            d2r_prior.recover_stage(recipe.recover, "prior", title="Stage II (lateral recovery)", output=PSEUDO),
            dgean.train_stage(recipe.dgean, title="Stage III (DGEAN)", source=FROM_PREVIOUS)]


ENTRIES = (
    MethodEntry(NAME, Kind.LEARNED,
                "D2R: lateral prior -> recovery -> DGEAN, trained on the anisotropic stack alone; upsampling runs "
                "the DGEAN", lambda model, **opts: _dgean_build(model, **opts), needs_model=True,
                training=Training(BOOK, stages, trains_on=ANISOTROPIC, min_slices=4,
                                  describe_data="the anisotropic stack")),
)

"""DGEAN: the fast 3-D network that synthesises the slices between each four measured ones (D2R's Stage III).

- ``network.py`` the network, ``method.py`` the blockwise method, ``trainer.py`` + ``windows.py`` its training,
  ``recipe.py`` + ``recipes.yaml`` its recipes.
- Three registry entries share them, differing only in what the network trains on: ``dgean`` a pseudo-isotropic
  volume (D2R's Stage II output), ``sup-dgean`` real isotropic ground truth (also along Z), ``naive-lateral`` the
  anisotropic stack's own Y/X sequences (the naive lateral baseline).  D2R's Stage III is :func:`train_stage`.

Importing this package stays cheap (no torch): ``isovol methods`` imports every method package.
"""

from __future__ import annotations

import copy
from typing import Any

from ..recipes import RecipeBook
from ..registry import Kind, MethodEntry
from ..training import ANISOTROPIC, FROM_INPUT, ISOTROPIC, TrainContext, Training, TrainStage

#: what the network trains on -> (isotropic, lateral) of the trainer
SAMPLINGS = {"pseudo-isotropic": (False, False), "isotropic": (True, False), "lateral": (False, True)}


def _parse(spec: dict[str, Any], where: str) -> Any:
    from .recipe import parse

    return parse(spec, where)


BOOK = RecipeBook(__name__, _parse, "dgean")


def build(model: str, **options: Any) -> Any:
    from .method import DGEANMethod

    return DGEANMethod(model, **options)


def train_stage(recipe: Any, sampling: str = "pseudo-isotropic", *, name: str = "dgean",
                title: str = "DGEAN", source: str = FROM_INPUT) -> TrainStage:
    """Train DGEAN with ``recipe`` (a :class:`recipe.DGEANRecipe`) on ``sampling`` data."""
    isotropic, lateral = SAMPLINGS[sampling]
    settings = recipe.to_dict()
    if sampling != "pseudo-isotropic":
        settings["sampling"] = sampling

    def run(ctx: TrainContext) -> dict[str, Any]:
        import numpy as np

        from .trainer import train_dgean

        source_info = {**ctx.source, "sampling": "lateral"} if lateral else ctx.source
        return train_dgean(np.ascontiguousarray(ctx.data), ctx.directory, ctx.factor, isotropic=isotropic,
                           lateral=lateral, model_config=recipe.model, train=copy.deepcopy(recipe.train),
                           device=ctx.device, source=source_info, log=ctx.log, deadline=ctx.deadline)

    return TrainStage(name, title, settings, run, source=source)


def _entry(name: str, sampling: str, trains_on: str, data: str, description: str) -> MethodEntry:
    training = Training(BOOK, lambda recipe: [train_stage(recipe, sampling)], trains_on=trains_on,
                        min_slices=4, describe_data=data)
    return MethodEntry(name, Kind.LEARNED, description, build, needs_model=True, training=training)


ENTRIES = (
    _entry("dgean", "pseudo-isotropic", ISOTROPIC, "a pseudo-isotropic volume",
           "DGEAN trained on a pseudo-isotropic volume (e.g. D2R's Stage II output)"),
    _entry("sup-dgean", "isotropic", ISOTROPIC, "real isotropic ground truth",
           "DGEAN trained on real isotropic ground truth, along Z too (Sup-DGEAN, the supervised bound)"),
    _entry("naive-lateral", "lateral", ANISOTROPIC, "the anisotropic stack's own Y/X sequences",
           "DGEAN trained on the anisotropic stack's own Y/X sequences, without Stage I-II (the naive baseline)"),
)

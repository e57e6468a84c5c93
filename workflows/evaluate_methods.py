"""Which methods ``isovol evaluate`` scores, read from ``--method`` through the registry, and the training of the
ones it trains itself -- always on the decimated input, never on the ground truth (the protocol)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from ..pipeline.checkpoints import load_json
from ..pipeline.errors import InputError
from ..pipeline.methods import registry
from ..pipeline.methods.registry import CLASSICAL_REFERENCES
from ..pipeline.methods.training import ANISOTROPIC

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "gpu-default"


@dataclass
class MethodSpec:
    key: str  # the name in metrics.json and the report
    name: str  # the registry's method
    model: str | None = None
    recipe: str | None = None  # set: trained here with this recipe (`isovol train --recipe`)

    @property
    def trained_here(self) -> bool:
        return self.recipe is not None


def safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _recipe_key(recipe: str) -> str:
    base = os.path.basename(os.path.normpath(recipe))
    return base.rsplit(".", 1)[0] if base.endswith((".yaml", ".yml")) else base


def _one(spec: str) -> MethodSpec:
    """``NAME`` (classical, or trained here with the default recipe), ``NAME:MODEL_DIR`` (a trained model),
    ``NAME:RECIPE`` (trained here with that recipe: a preset or a file)."""
    name, sep, arg = (p.strip() for p in spec.partition(":"))
    entry = registry.get(name)
    here = entry.training is not None and entry.training.trains_on == ANISOTROPIC
    if sep and not entry.needs_model:
        raise InputError(f"method {name!r} takes no model directory (--method {spec!r})")
    if not entry.needs_model:
        return MethodSpec(name, name)
    if arg and not (here and arg in entry.recipes) and os.path.isdir(arg):
        return MethodSpec(f"{name}:{os.path.basename(os.path.normpath(arg))}", name, model=arg)
    if not here:
        if arg:
            raise InputError(f"model directory not found: {arg} (--method {spec!r})")
        raise InputError(f"method {name!r} needs a model directory: --method {name}:MODEL_DIR")
    recipe = arg or DEFAULT_RECIPE
    entry.training.book.raw(recipe)  # a bad recipe fails now, before any work
    return MethodSpec(name if not arg else f"{name}:{_recipe_key(recipe)}", name, recipe=recipe)


def parse_methods(specs: list[str]) -> list[MethodSpec]:
    """The methods to score: the classical references always (cubic first, the reference of the gains since the
    first release; linear, often the best classical method on EM), then the ones asked for."""
    out: list[MethodSpec] = []
    for spec in [*CLASSICAL_REFERENCES, *specs]:
        m = _one(spec)
        if any(o.key == m.key for o in out):
            if m.key in CLASSICAL_REFERENCES:
                continue  # a reference given explicitly as well
            raise InputError(f"method {m.key!r} given twice")
        out.append(m)
    return out


def train_method(spec: MethodSpec, in_url: str, slices: int, factor: int, req: Any) -> dict[str, Any]:
    """Train ``spec`` with ``isovol train`` on the decimated input into REPORT/models/rFACTOR/KEY (a model serves
    the factor it was trained for, so another --factor into the same REPORT trains anew), resuming what an
    earlier run left; returns {"model", "recipe", "trained_on", "stages_s": {stage: s}, "total_s"} with the wall
    time of each stage summed over runs."""
    from .train import STATE, SettingsChanged, run_train

    model_dir = os.path.join(req.out, "models", f"r{factor}", safe(spec.key))
    trained_on = f"the decimated input ({slices} slices, every {factor}th of the ground truth)"
    log.info("evaluate: training %s (recipe %s) on %s", spec.key, spec.recipe, trained_on)
    try:
        result = run_train(os.path.abspath(in_url), model_dir, factor, method=spec.name, recipe=spec.recipe,
                           workers=req.workers, device=req.device, processes=req.processes, cluster=req.cluster,
                           cluster_config=req.cluster_config, scheduler=req.scheduler, retries=req.retries,
                           block_timeout=req.block_timeout)
    except SettingsChanged as exc:  # evaluate has no --restart-from: say what to do here
        raise InputError(f"{exc.reason}; the cached model was trained with other settings: delete {model_dir} "
                         f"or use a new --out") from None
    stages = load_json(os.path.join(model_dir, STATE), "train state")["stages"]
    # in the order the stages run (train.json keeps its keys sorted)
    secs = {k: round(float(stages[k].get("seconds", 0.0)), 2) for k in result["stages"] if k in stages}
    return {"model": model_dir, "recipe": spec.recipe, "trained_on": trained_on, "stages_s": secs,
            "total_s": round(sum(secs.values()), 2)}

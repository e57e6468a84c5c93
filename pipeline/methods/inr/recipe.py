"""INR's recipe: the prior (an MSDSR recipe's ``model`` and ``train``, trained by ``isovol train --method inr``, with
a fraction ``unconditional`` of its samples keeping no row), and the per-block fit the published model carries into
``isovol upsample --method inr``: ``fit`` (``fit.FitConfig``: steps, learning rates, SDS weight, noise range, ...),
``field`` (``field.FieldConfig``), the fit ``block`` (output voxels; the executor's blocks are multiples of it) and
the ``overlap`` each fit sees around its block.  Presets in ``recipes.yaml`` beside this file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import InputError
from ..recipes import check_keys, settings_from_dict
from .field import FieldConfig
from .fit import FitConfig

FIT_KEYS = ("fit", "field", "block", "overlap")


@dataclass(frozen=True)
class FitSettings:
    fit: FitConfig = field(default_factory=FitConfig)
    field: FieldConfig = field(default_factory=FieldConfig)
    block: tuple[int, int, int] = (64, 64, 64)
    overlap: int = 16

    def to_dict(self) -> dict[str, Any]:
        return {"fit": self.fit.to_dict(), "field": self.field.to_dict(), "block": list(self.block),
                "overlap": self.overlap}


@dataclass(frozen=True)
class INRRecipe:
    prior: Any  # an msdsr recipe (MSDSRRecipe)
    unconditional: float
    settings: FitSettings

    def to_dict(self) -> dict[str, Any]:
        """Normalised: what identifies a training (the fit settings ride along into config.json)."""
        return {"prior": self.prior.to_dict(), "unconditional": self.unconditional, **self.settings.to_dict()}


def _block(value: Any, where: str) -> tuple[int, int, int]:
    items = [value] * 3 if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(items, (list, tuple)) or len(items) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items)):
        raise InputError(f"{where}: block must be a positive integer or three (z, y, x), got {value!r}")
    return tuple(items)  # type: ignore[return-value]


def parse_fit(spec: dict[str, Any] | None, where: str) -> FitSettings:
    """The fit settings of a recipe or of a model's ``inr`` entry (missing keys: the defaults)."""
    spec = check_keys(spec, FIT_KEYS, where)
    default = FitSettings()
    fit = settings_from_dict(FitConfig, spec.get("fit"), f"{where}: fit")
    fld = settings_from_dict(FieldConfig, spec.get("field"), f"{where}: field")
    block = _block(spec.get("block", list(default.block)), where)
    overlap = spec.get("overlap", default.overlap)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise InputError(f"{where}: overlap must be an integer >= 0, got {overlap!r}")
    return FitSettings(fit, fld, block, overlap)


def parse(spec: dict[str, Any], where: str) -> INRRecipe:
    from .msdsr_prior import parse_prior

    spec = check_keys(spec, ("prior", "unconditional", *FIT_KEYS), where)
    unconditional = spec.get("unconditional", 0.5)
    if isinstance(unconditional, bool) or not isinstance(unconditional, (int, float)) or not 0 <= unconditional <= 1:
        raise InputError(f"{where}: unconditional must be a fraction in [0, 1], got {unconditional!r}")
    settings = parse_fit({k: spec[k] for k in FIT_KEYS if k in spec}, where)
    return INRRecipe(parse_prior(spec.get("prior") or {}, f"{where}: prior"), float(unconditional), settings)


def load_fit(name_or_path: str) -> FitSettings:
    """The fit settings of an INR preset or recipe file (its prior section is not read)."""
    from . import BOOK

    label, spec = BOOK.raw(name_or_path)
    check_keys(spec, ("prior", "unconditional", *FIT_KEYS), f"inr recipe {label}")
    return parse_fit({k: spec[k] for k in FIT_KEYS if k in spec}, f"inr recipe {label}")

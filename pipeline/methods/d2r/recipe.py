"""The D2R recipe: one section per stage.  A section is a mapping of settings, or the name of a preset of the
method the stage comes from (``prior: cpu-demo`` is d2r-prior's ``cpu-demo``, ``dgean: cpu-demo`` DGEAN's).

``lateral`` chooses Stages I-II: ``irsde`` (the paper's: the IR-SDE prior, then its recovery; sections ``prior``
and ``recover``) or ``regression`` (lateral-regression trained on the XY slices, then run blockwise over the
training region; section ``regression``), so Stage III's DGEAN learns from a better pseudo-isotropic volume at
the same output speed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from ..d2r_prior.recipe import PriorRecipe, RecoverSettings, parse_recover
from ..dgean.recipe import DGEANRecipe
from ..recipes import check_keys

SECTIONS = ("lateral", "prior", "recover", "regression", "dgean")
LATERALS = ("irsde", "regression")


@dataclass(frozen=True)
class D2RRecipe:
    prior: PriorRecipe | None
    recover: RecoverSettings | None
    dgean: DGEANRecipe
    lateral: str = "irsde"
    regression: Any = None  # a lateral_regression RegressionRecipe when lateral is "regression"

    def to_dict(self) -> dict[str, Any]:
        if self.lateral == "regression":
            return {"lateral": "regression", "regression": self.regression.to_dict(), "dgean": self.dgean.to_dict()}
        return {"prior": self.prior.to_dict(), "recover": self.recover.to_dict(), "dgean": self.dgean.to_dict()}


def _section(spec: dict[str, Any], key: str, where: str, book: Any) -> Any:
    part = spec.get(key)
    if part is None:
        raise InputError(f"{where}: section {key!r} is missing")
    if isinstance(part, str):
        if part not in book.names():
            raise InputError(f"{where}: {key}: {part!r} is not a {book.method} recipe ({', '.join(book.names())})")
        return book.load(part)[1]
    return book.parse(part, f"{where}: {key}")


def expand(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with each section that names a preset of another book spelt out as that preset's settings, so that
    a file with ``base:`` overrides single fields of it (``prior: {train: {steps: 6}}`` keeps the rest of the
    base's prior) instead of replacing the whole section by the defaults."""
    from .. import d2r_prior, dgean, lateral_regression

    out = dict(spec)
    for key, book in (("prior", d2r_prior.BOOK), ("dgean", dgean.BOOK), ("regression", lateral_regression.BOOK)):
        if isinstance(out.get(key), str) and out[key] in book.names():
            out[key] = book.raw(out[key])[1]
    return out


def parse(spec: dict[str, Any], where: str) -> D2RRecipe:
    from .. import d2r_prior, dgean

    spec = check_keys(spec, SECTIONS, where)
    lateral = spec.get("lateral", "irsde")
    if lateral not in LATERALS:
        raise InputError(f"{where}: lateral must be one of {', '.join(LATERALS)}, got {lateral!r}")
    if lateral == "regression":
        from .. import lateral_regression

        return D2RRecipe(None, None, _section(spec, "dgean", where, dgean.BOOK), lateral,
                         _section(spec, "regression", where, lateral_regression.BOOK))
    prior = _section(spec, "prior", where, d2r_prior.BOOK)
    recover = parse_recover(spec.get("recover"), f"{where}: recover")
    start = recover.start(prior.sde["T"])
    if prior.train.t_max is not None and start > prior.train.t_max:
        raise InputError(f"{where}: recover starts at t={start} but the prior trains on t <= {prior.train.t_max} "
                         f"only; set recover.t_start <= prior.train.t_max")
    return D2RRecipe(prior, recover, _section(spec, "dgean", where, dgean.BOOK))

"""Registry of upsampling methods by name."""

from __future__ import annotations

from ..errors import InputError
from .base import Halo, Method, upsample_array
from .interp import Interpolation

CLASSICAL = Interpolation.KINDS


def available() -> tuple[str, ...]:
    return CLASSICAL + LEARNED


LEARNED = ("dgean", "d2r-recover")


def get_method(name: str, model: str | None = None, **options: object) -> Method:
    """Build a method from its name (and model directory for learned ones), or refuse clearly."""
    if name in CLASSICAL:
        if model:
            raise InputError(f"method {name!r} takes no --model")
        return Interpolation(name)
    if name == "dgean":
        if not model:
            raise InputError("method 'dgean' needs --model MODEL_DIR (train one with `isovol train-dgean`)")
        from .dgean import DGEANMethod

        return DGEANMethod(model, **options)  # type: ignore[arg-type]
    if name == "d2r-recover":
        if not model:
            raise InputError("Stage II recovery needs --prior PRIOR_DIR (train one with `isovol train-prior`)")
        from .prior import PriorRecovery

        return PriorRecovery(model, **options)  # type: ignore[arg-type]
    raise InputError(f"unknown method {name!r}; choose one of: {', '.join(available())}")


__all__ = ["Halo", "Method", "available", "get_method", "upsample_array"]

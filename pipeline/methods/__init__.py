"""Registry of upsampling methods by name."""

from __future__ import annotations

from ..errors import InputError
from .base import Halo, Method, upsample_array
from .interp import Interpolation

CLASSICAL = Interpolation.KINDS


def available() -> tuple[str, ...]:
    return CLASSICAL


def get_method(name: str) -> Method:
    """Build a method from its name, or refuse with the list of known ones."""
    if name in CLASSICAL:
        return Interpolation(name)
    raise InputError(f"unknown method {name!r}; choose one of: {', '.join(available())}")


__all__ = ["Halo", "Method", "available", "get_method", "upsample_array"]

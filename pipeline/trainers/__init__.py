"""Training loops. They take arrays in memory and write checkpoints; no zarr, no dask."""

from dataclasses import fields
from typing import Any, TypeVar

from ..errors import InputError

T = TypeVar("T")


def settings_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a training-settings dataclass, refusing unknown keys so a typo cannot silently change a run."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown training settings {unknown}; known: {sorted(known)}")
    return cls(**data)

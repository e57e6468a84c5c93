"""How a run is carried out -- workers, retries, block time-out -- checked once, for the CLI and the Python API
alike, before any output is created (a bad value found later would leave a half-made output behind)."""

from __future__ import annotations

import math
from typing import Any

from ..pipeline.errors import InputError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_workers(workers: Any) -> int | None:
    """None (the cluster's default) or a whole number >= 1: 0 used to mean "the default" and -1 to hang."""
    if workers is None:
        return None
    if not _is_int(workers) or workers < 1:
        raise InputError(f"--workers must be a whole number >= 1 (or left out for the default), got {workers!r}")
    return workers


def check_retries(retries: Any) -> int:
    if not _is_int(retries) or retries < 0:
        raise InputError(f"--retries must be a whole number >= 0, got {retries!r}")
    return retries


def parse_seconds(value: Any, name: str = "--block-timeout") -> float | None:
    """A positive, finite number of seconds, or None / 'none' for no limit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError(f"{name} must be a positive number of seconds or 'none', got {value!r}")
    return seconds


def check_run_settings(workers: Any, retries: Any, block_timeout: Any) -> None:
    """Refuse (InputError) workers, retries or a block time-out the executor cannot honour."""
    check_workers(workers)
    check_retries(retries)
    if isinstance(block_timeout, str):  # the API takes a number or None; 'none' is the command line's spelling
        raise InputError(f"--block-timeout must be a positive number of seconds or None, got {block_timeout!r}")
    parse_seconds(block_timeout)

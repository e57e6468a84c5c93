"""A zarr input that cannot be decoded -- a chunk truncated, zeroed or overwritten -- named in one line.

zarr raises the codec's own error (``RuntimeError: Zstd decompression error``) without saying which stored
object it came from, and a run then ends in a worker traceback per block.  After a failed read this module reads
the box again stored object by stored object (shard, or chunk when unsharded) to find the damaged one and turns
the failure into a ``DamagedInputError`` whose message names the array and the object's key:
``input chunk c/0/1/0 of in.zarr/0 is damaged (RuntimeError: ...)``.  Storage errors (OSError, throttling,
time-outs) are not damage: they are left to the executor's retries."""

from __future__ import annotations

import itertools
from typing import Any

from ..errors import InputError, IsovolError
from .loops import read

#: every damage message starts so (the run's failure summary prints each damaged chunk once)
PREFIX = "input chunk "
_TRANSIENT = ("throttl", "slow down", "slowdown", "timeout", "timed out", "connection", "503", "500 ")


class DamagedInputError(InputError):
    """A stored object of the input could not be decoded: the input needs repair, a retry will not help."""


def is_damage_message(message: str) -> bool:
    return message.startswith(PREFIX)


def may_be_damage(exc: BaseException) -> bool:
    """A failure that could come from undecodable bytes, not from the storage or from isovol itself."""
    if isinstance(exc, (OSError, MemoryError, IsovolError)) or not isinstance(exc, Exception):
        return False
    text = f"{type(exc).__name__} {exc}".lower()
    return not any(w in text for w in _TRANSIENT)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def locate_damage(array: Any, selection: tuple, name: str) -> DamagedInputError | None:
    """Read ``selection`` (ints and bounded slices, one per axis of the zarr ``array``) one stored object at a
    time; the error for the first that fails to decode, or None when every part reads (a passing fault)."""
    grid = getattr(array, "shards", None) or array.chunks
    spans = []
    for sel, g in zip(selection, grid):
        lo, hi = (sel, sel + 1) if isinstance(sel, int) else (sel.start or 0, sel.stop)
        spans.append([(c, max(lo, c * g), min(hi, (c + 1) * g)) for c in range(lo // g, -(-hi // g))])
    for parts in itertools.product(*spans):
        try:
            array[tuple(slice(a, b) for _, a, b in parts)]
        except Exception as exc:  # noqa: BLE001 - sorted right below
            if not may_be_damage(exc):
                raise
            key = array.metadata.encode_chunk_key(tuple(c for c, _, _ in parts))
            return DamagedInputError(f"{PREFIX}{key} of {name} is damaged ({_one_line(exc)})")
    return None


def read_or_name_damage(array: Any, selection: tuple, name: str) -> Any:
    """``array[selection]``; a decode failure raises the DamagedInputError that names the stored object."""
    try:
        return read(array, selection)
    except Exception as exc:
        if not may_be_damage(exc):
            raise
        damage = locate_damage(array, selection, name)
        if damage is None:
            raise
        raise damage from None

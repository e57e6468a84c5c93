"""Resume identity: the one rule that decides whether earlier work may be kept.

Everything isovol caches -- an output's blocks (the executor's run record), a stage of ``isovol train``, a trainer
checkpoint, a model ``isovol evaluate`` trained -- carries the settings that changed its result.  Its identity is
the hash of those settings together with the identity of what it was made from (the input, the stage before).
Given what was recorded and what is asked now, :func:`decide` says: start fresh (nothing recorded), skip (done
with the same identity), resume (same identity, not done) or refuse -- and when it refuses, :func:`differences`
names exactly the settings that differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any


def digest(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (keys sorted, no spaces)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def identity(settings: dict[str, Any], upstream: str = "") -> str:
    """The identity of work made with ``settings`` from something whose identity is ``upstream``."""
    return digest({"previous": upstream, **settings})


def differences(old: Any, new: Any, prefix: str = "",
                ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) of every setting that differs; mappings are compared key by key, so a long setting
    names the field that changed.  Keys in ``ignore`` (dotted) are left out."""
    skip = set(ignore)
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}{k}"
            if key not in skip:
                out += differences(old.get(k), new.get(k), f"{key}.", skip)
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def short(value: Any, limit: int = 80) -> str:
    """``value`` as compact JSON cut to ``limit`` characters: an error line stays one readable line."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(changes: list[tuple[str, Any, Any]], values: bool = True, limit: int = 6) -> str:
    """``a.b: 1 -> 2; c: ...`` (or just the keys), at most ``limit`` of them."""
    parts = [f"{k}: {short(a)} -> {short(b)}" if values else k for k, a, b in changes[:limit]]
    if len(changes) > limit:
        parts.append(f"and {len(changes) - limit} more")
    return "; ".join(parts) if values else ", ".join(parts)


class Verdict(str, Enum):
    FRESH = "fresh"  # nothing recorded: start
    SKIP = "skip"  # done with the same identity
    RESUME = "resume"  # same identity, not done: go on from what is there
    REFUSE = "refuse"  # other settings: keeping the work would mix two results


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` says, with the settings that differ when it refuses."""

    verdict: Verdict
    changes: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def reason(self) -> str:
        return describe(list(self.changes)) if self.changes else "the recorded identity differs"


def decide(recorded_identity: str | None, recorded_settings: dict[str, Any] | None, done: bool,
           current_identity: str, current_settings: dict[str, Any], ignore: Iterable[str] = ()) -> Decision:
    """Skip, resume, start fresh or refuse (naming the settings that differ; ``ignore``: keys that may change
    without changing the identity, such as a training's step budget)."""
    if recorded_identity is None:
        return Decision(Verdict.FRESH)
    changes = differences(recorded_settings or {}, current_settings, ignore=ignore)
    if recorded_identity != current_identity and (changes or not ignore):
        return Decision(Verdict.REFUSE, tuple(changes))
    return Decision(Verdict.SKIP if done else Verdict.RESUME)

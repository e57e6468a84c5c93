"""The one registry of methods: the built-in ones and third-party ones found through the Python entry-point group
``isovol.methods``.  ``upsample``, ``plan``, ``train``, ``evaluate`` and ``methods`` all ask it, so no other module
names a method (docs/architecture.md, "How to add a method").

An entry point names a :class:`MethodEntry` (or a sequence of them), e.g. in a plugin's ``setup.cfg``::

    [options.entry_points]
    isovol.methods =
        example-nearest = isovol_example_plugin:ENTRY

Built-in packages list theirs in ``ENTRIES``; importing a package must stay cheap (no torch), since ``isovol
methods`` imports them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from importlib import import_module, metadata
from typing import Any

from ..errors import InputError
from .base import Method
from .training import Training

log = logging.getLogger(__name__)

GROUP = "isovol.methods"
#: the evaluation protocol's reference, and what ``upsample`` and ``plan`` use when no --method is given
REFERENCE = "cubic"
#: what ``isovol train`` trains when no --method is given
DEFAULT_TRAINED = "d2r"
#: classical methods ``isovol evaluate`` always scores, so every method is judged against the best of them
CLASSICAL_REFERENCES = ("cubic", "linear")
#: the learned baseline every other learned method is judged against when it is scored (isotropic CARE's idea)
LEARNED_BASELINE = "lateral-regression"

#: the built-in method packages, each with an ``ENTRIES`` sequence (a new built-in method adds one line here)
BUILTIN = (
    "isovol.pipeline.methods.interp",
    "isovol.pipeline.methods.dgean",
    "isovol.pipeline.methods.d2r_prior",
    "isovol.pipeline.methods.d2r",
    "isovol.pipeline.methods.lateral_regression",
    "isovol.pipeline.methods.msdsr",
    "isovol.pipeline.methods.inr",
)


class Kind(str, Enum):
    CLASSICAL = "classical"
    LEARNED = "learned"
    FITTED = "fitted per block"


@dataclass(frozen=True)
class MethodEntry:
    """What the registry knows of a method.  ``build(model, **options)`` returns the blockwise :class:`Method`
    (``model`` is the model directory of a learned method, None otherwise); ``training`` says how ``isovol train``
    makes that model (None: the method needs no training)."""

    name: str
    kind: Kind
    description: str
    build: Callable[..., Method]
    needs_model: bool = False
    training: Training | None = None

    def __post_init__(self) -> None:
        """A plugin's mistake fails when its module loads (a warning then), not later in every command."""
        object.__setattr__(self, "kind", Kind(self.kind))  # "classical" is accepted; an unknown kind is refused
        if not isinstance(self.name, str) or not self.name or not callable(self.build):
            raise TypeError(f"MethodEntry {self.name!r}: name must be a non-empty string and build callable")

    @property
    def recipes(self) -> tuple[str, ...]:
        return tuple(self.training.book.names()) if self.training else ()

    def create(self, model: str | None = None, **options: Any) -> Method:
        """The method, or one clear refusal when ``--model`` is missing or not wanted."""
        if self.needs_model and not model:
            hint = f" (train one with `isovol train INPUT MODEL_DIR --method {self.name}`)" if self.training else ""
            raise InputError(f"method {self.name!r} needs --model MODEL_DIR{hint}")
        if not self.needs_model and model:
            raise InputError(f"method {self.name!r} takes no --model")
        return self.build(model, **options) if self.needs_model else self.build(None, **options)

    def describe(self) -> dict[str, Any]:
        """The row ``isovol methods --json`` prints."""
        return {"name": self.name, "kind": self.kind.value, "needs_model": self.needs_model,
                "trainable": self.training is not None,
                "trains_on": self.training.trains_on if self.training else None,
                "recipes": list(self.recipes), "description": self.description}


_entries: dict[str, MethodEntry] | None = None


def _collect(found: Any, origin: str) -> list[MethodEntry]:
    items = [found] if isinstance(found, MethodEntry) else list(found)
    bad = [x for x in items if not isinstance(x, MethodEntry)]
    if bad:
        raise TypeError(f"{origin} gives {type(bad[0]).__name__}, not a MethodEntry")
    return items


def _plugins() -> Iterable[tuple[str, list[MethodEntry]]]:
    for ep in metadata.entry_points(group=GROUP):
        try:
            items = _collect(ep.load(), f"entry point {ep.name} ({ep.value})")
        except Exception as exc:  # a broken plugin must not take isovol down: say so and go on without it
            log.warning("method plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
            continue
        yield f"{ep.name} ({ep.value})", items


def entries() -> dict[str, MethodEntry]:
    """Every method by name: built-ins first, then plugins (a plugin may not replace a built-in)."""
    global _entries
    if _entries is None:
        found: dict[str, MethodEntry] = {}
        for module in BUILTIN:
            for e in _collect(import_module(module).ENTRIES, module):
                found[e.name] = e
        for origin, items in _plugins():
            for e in items:
                if e.name in found:
                    log.warning("method plugin %s: %r is taken by another method; ignored", origin, e.name)
                    continue
                found[e.name] = e
        _entries = found
    return _entries


def reset() -> None:
    """Forget what was found (a test that installs a plugin calls this)."""
    global _entries
    _entries = None


def names() -> tuple[str, ...]:
    return tuple(entries())


def get(name: str) -> MethodEntry:
    """The entry called ``name``, or one line listing the methods there are."""
    try:
        return entries()[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(names())} "
                         f"(`isovol methods` describes them)") from None


def trainable(name: str) -> MethodEntry:
    """The entry of a method ``isovol train`` can train, else one clear line."""
    entry = get(name)
    if entry.training is None:
        learned = [e.name for e in entries().values() if e.training is not None]
        raise InputError(f"method {name!r} needs no training; methods to train: {', '.join(learned)}")
    return entry


def get_method(name: str, model: str | None = None, **options: Any) -> Method:
    """Build a method from its name (and model directory for learned ones), or refuse clearly."""
    return get(name).create(model, **options)

"""Recipes: a method's training settings as a typed dataclass, with its presets in one commented YAML file in the
method's package (``recipes.yaml``: ``cpu-tiny`` for tests, ``cpu-demo``, ``gpu-default``, ...).

``--recipe`` takes a preset name or a YAML file.  A file overrides fields: of the preset it names with
``base: PRESET``, else of the dataclass defaults.  Unknown keys are refused with the list of valid ones, at every
level, so a typo fails in one line instead of silently training with defaults.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from importlib.resources import files
from typing import Any, Generic, TypeVar

import yaml

from ..errors import InputError, yaml_problem

R = TypeVar("R")
T = TypeVar("T")
BASE = "base"


def parse_yaml(text: str, label: str) -> dict[str, Any]:
    """The mapping in ``text`` (YAML or JSON); ``label`` names it in the messages."""
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{label} is not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(spec, dict):
        raise InputError(f"{label}: expected a mapping of settings, got {type(spec).__name__}")
    return spec


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping by mapping (a scalar or list replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def check_keys(data: Any, valid: Iterable[str], where: str) -> dict[str, Any]:
    """``data`` as a mapping whose keys are all in ``valid``, else one line naming the bad and the valid keys."""
    valid = sorted(valid)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping with keys {', '.join(valid)}, got {data!r}")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")
    return data


def settings_from_dict(cls: type[T], data: Any, where: str) -> T:
    """A settings dataclass from a mapping, refusing unknown keys and values of the wrong kind."""
    assert is_dataclass(cls)
    data = check_keys(data, [f.name for f in fields(cls)], where)
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from None


class RecipeBook(Generic[R]):
    """The presets of one method (``recipes.yaml`` in ``package``) and the parser that makes its typed recipe."""

    def __init__(self, package: str, parse: Callable[[dict[str, Any], str], R], method: str,
                 expand: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        """``expand``: a preset's mapping as fields a file may override one by one (D2R spells out the sections
        that name another book's preset); None: the mapping as it is."""
        self.package, self.parse, self.method, self.expand = package, parse, method, expand
        self._presets: dict[str, dict[str, Any]] | None = None

    def presets(self) -> dict[str, dict[str, Any]]:
        if self._presets is None:
            text = files(self.package).joinpath("recipes.yaml").read_text()
            raw = parse_yaml(text, f"{self.method} recipes")
            self._presets = {str(k): v or {} for k, v in raw.items()}
        return self._presets

    def names(self) -> list[str]:
        return list(self.presets())

    def raw(self, name_or_path: str) -> tuple[str, dict[str, Any]]:
        """(label, settings mapping) of a preset or a recipe file, ``base:`` resolved."""
        presets = self.presets()
        if name_or_path in presets:
            return name_or_path, copy.deepcopy(presets[name_or_path])
        if not os.path.isfile(name_or_path):
            raise InputError(f"--recipe {name_or_path!r} is neither a {self.method} recipe "
                             f"({', '.join(presets)}) nor a file")
        with open(name_or_path) as f:
            spec = parse_yaml(f.read(), f"recipe {name_or_path}")
        base = spec.pop(BASE, None)
        if base is not None:
            if base not in presets:
                raise InputError(f"recipe {name_or_path}: base {base!r} is not a {self.method} recipe "
                                 f"({', '.join(presets)})")
            spec = merge(self.expand(presets[base]) if self.expand else presets[base], spec)
        return os.path.abspath(name_or_path), spec

    def load(self, name_or_path: str) -> tuple[str, R]:
        """(label, typed recipe): the label is the preset's name or the file's absolute path."""
        label, spec = self.raw(name_or_path)
        return label, self.parse(spec, f"{self.method} recipe {os.path.basename(label)}")

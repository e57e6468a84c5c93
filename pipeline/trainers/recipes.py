"""Recipe files: the YAML that `isovol train` and the stage trainers read, refused the same way everywhere, so a
typo in a section name fails in one line instead of silently training with defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import yaml

from ..errors import InputError


def parse_recipe(text: str, label: str, sections: Sequence[str]) -> dict[str, Any]:
    """The mapping in recipe ``text`` (YAML or JSON); ``label`` names it in the messages."""
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{label} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise InputError(f"{label}: expected a mapping with sections {', '.join(sections)}")
    unknown = sorted(set(spec) - set(sections))
    if unknown:
        raise InputError(f"{label}: unknown sections {unknown}; known: {', '.join(sections)}")
    return spec


def read_recipe_file(path: str, sections: Sequence[str], *, option: str, names: Sequence[str],
                     label: str | None = None) -> dict[str, Any]:
    """:func:`parse_recipe` of the file at ``path``; a missing file is refused naming ``option`` and the bundled
    recipe ``names`` (a name that is neither is most likely a misspelt recipe)."""
    if not os.path.isfile(path):
        raise InputError(f"{option} {path!r} is neither a recipe ({', '.join(names)}) nor a file")
    with open(path) as f:
        return parse_recipe(f.read(), label or path, sections)

"""The method registry: every built-in is listed with what a user needs to know, unknown names and misuse are one
clear line, every preset of every learned method parses, and no module outside the registry wiring and the demo
names a method (docs/architecture.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.methods import Kind, registry

ROOT = Path(__file__).resolve().parents[3]
BUILT_IN = {"nearest": Kind.CLASSICAL, "linear": Kind.CLASSICAL, "cubic": Kind.CLASSICAL, "dgean": Kind.LEARNED,
            "sup-dgean": Kind.LEARNED, "naive-lateral": Kind.LEARNED, "d2r-prior": Kind.LEARNED,
            "d2r": Kind.LEARNED, "lateral-regression": Kind.LEARNED, "msdsr": Kind.LEARNED,
            "inr": Kind.FITTED}


def test_every_built_in_is_listed_with_its_kind():
    entries = registry.entries()
    assert {n: entries[n].kind for n in BUILT_IN} == BUILT_IN
    for e in entries.values():
        assert e.description and "\n" not in e.description
        assert e.needs_model == (e.kind is not Kind.CLASSICAL)


def test_isovol_methods_json_describes_each_method():
    exe = Path(sys.executable).with_name("isovol")
    res = subprocess.run([str(exe), "methods", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(BUILT_IN) <= set(rows)
    assert rows["cubic"] == {"name": "cubic", "kind": "classical", "needs_model": False, "trainable": False,
                             "trains_on": None, "recipes": [], "description": rows["cubic"]["description"]}
    assert rows["d2r"]["recipes"] == ["cpu-tiny", "cpu-demo", "gpu-default"] and rows["d2r"]["needs_model"]
    assert rows["naive-lateral"]["trains_on"] == "anisotropic" and rows["sup-dgean"]["trains_on"] == "isotropic"


@pytest.mark.parametrize("name", [n for n, e in registry.entries().items() if e.training is not None])
def test_every_preset_of_every_learned_method_parses(name):
    book = registry.get(name).training.book
    assert book.names() == ["cpu-tiny", "cpu-demo", "gpu-default"]
    for preset in book.names():
        label, recipe = book.load(preset)
        assert label == preset
        json.dumps(recipe.to_dict())  # what the stage identity hashes must be plain JSON
        assert registry.get(name).training.stages(recipe), "a recipe turns into at least one stage"


def test_misuse_is_one_clear_line():
    with pytest.raises(InputError, match="unknown method 'cubik'; choose one of: nearest, linear, cubic"):
        registry.get("cubik")
    with pytest.raises(InputError, match="needs --model MODEL_DIR .*isovol train INPUT MODEL_DIR --method d2r"):
        registry.get_method("d2r")
    with pytest.raises(InputError, match="takes no --model"):
        registry.get_method("linear", model="somewhere")
    with pytest.raises(InputError, match="takes no options"):
        registry.get_method("linear", tile=3)
    with pytest.raises(InputError, match="needs no training; methods to train: dgean, sup-dgean"):
        registry.trainable("cubic")


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


def test_no_method_name_in_workflows_outside_the_demo():
    """Method names come from the registry; a literal name in workflows/ is a second list that goes stale."""
    names = set(registry.names())
    found = {f"{p.relative_to(ROOT)}: {s!r}" for p in sorted((ROOT / "workflows").glob("*.py"))
             if p.name != "demo.py" for s in _string_literals(p) if s in names}
    assert not found, sorted(found)

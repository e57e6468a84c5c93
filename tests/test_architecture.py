"""The rooms of docs/architecture.md, checked on the source: pipeline/ never imports workflows/, deploy/ or
dask.distributed; deploy/ never imports workflows/.  An import that breaks them fails here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"pipeline": ("workflows", "deploy", "distributed", "dask.distributed"), "deploy": ("workflows",)}


def _imports(path: Path) -> list[str]:
    """Every module a file imports, relative imports resolved against its place in the tree."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module or "")
    return out


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_keep_to_their_imports(room):
    bad = []
    for path in sorted((ROOT / room).rglob("*.py")):
        for mod in _imports(path):
            name = mod.removeprefix("isovol.")
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[room]):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_import_reader_sees_relative_imports():
    """The check above is only worth something if it resolves relative imports: a known one."""
    assert "workflows.train_stages" in _imports(ROOT / "workflows" / "train.py")
    assert "pipeline.methods.registry" in _imports(ROOT / "pipeline" / "methods" / "interp.py")

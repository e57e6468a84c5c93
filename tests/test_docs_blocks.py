"""The fenced blocks of README.md and docs/ marked runnable (```` ```bash runnable ```` or ```` ```python runnable ````)
run, in order, in one folder per document, on a small real input ``raw.ome.zarr`` (the bundled FIB-SEM crop, every
8th slice, 80 x 10 x 10 nm): a command or snippet shown to users that stops working fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
RUNNERS = {"bash": ["bash", "-euo", "pipefail", "-c"], "python": [sys.executable, "-c"]}


def runnable_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line) of every block whose info string has the word ``runnable``."""
    out = []
    for m in FENCE.finditer(text):
        words = m.group("info").split()
        if "runnable" in words[1:]:
            out.append((words[0], textwrap.dedent(m.group("body")), text.count("\n", 0, m.start()) + 1))
    return out


def test_the_reader_finds_marked_blocks_only():
    text = "a\n```bash\nfalse\n```\n\n  ```python runnable\n  print(1)\n  ```\n```bash runnable\nls\n```\n"
    assert runnable_blocks(text) == [("python", "print(1)\n", 6), ("bash", "ls\n", 9)]


@pytest.mark.parametrize("doc", [d for d in DOCS if runnable_blocks(d.read_text())], ids=lambda d: d.name)
def test_runnable_blocks_run(doc, tmp_path):
    from isovol.pipeline.io.omezarr import write_image
    from isovol.workflows.demo_data import load_crop

    crop, _ = load_crop()
    write_image(str(tmp_path / "raw.ome.zarr"), np.ascontiguousarray(crop[::8]), (80.0, 10.0, 10.0))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for lang, code, line in runnable_blocks(doc.read_text()):
        assert lang in RUNNERS, f"{doc.name}:{line}: no runner for {lang!r}"
        res = subprocess.run([*RUNNERS[lang], code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, f"{doc.name}:{line} failed:\n{code}\n--- stdout\n{res.stdout}\n--- stderr\n" \
                                    f"{res.stderr}"


def test_the_readme_has_runnable_blocks():
    langs = [lang for lang, _, _ in runnable_blocks((ROOT / "README.md").read_text())]
    assert "bash" in langs and "python" in langs

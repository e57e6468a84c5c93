#!/usr/bin/env python3
"""Set up isovol in ./.venv with nothing but Python 3, then run the demo or the test suite.

    python3 bootstrap.py demo     # the main job: the demo on the bundled real FIB-SEM crop
    python3 bootstrap.py test     # lint + the whole test suite (what CI runs)

Extra arguments go to ``isovol demo`` or to pytest.  The environment is reinstalled only when setup.cfg
or the constraints change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ISOVOL_VENV", ROOT / ".venv"))
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def _bin(name: str) -> str:
    return str(VENV / ("Scripts" if os.name == "nt" else "bin") / name)


def _digest(extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in (ROOT / "setup.cfg", ROOT / "pyproject.toml", CONSTRAINTS):
        h.update(f.read_bytes())
    return h.hexdigest()


def venv_usable() -> bool:
    """The venv's Python runs and has pip. A kill during venv creation (in ensurepip) leaves bin/python without
    pip: such a venv is not usable and is made anew."""
    try:
        return subprocess.call([_bin("python"), "-m", "pip", "--version"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) == 0
    except OSError:  # no interpreter there (or not runnable)
        return False


def ensure_env(extra: str) -> None:
    stamp = VENV / ".isovol-installed"
    want = _digest(extra)
    if stamp.exists() and stamp.read_text() == want:
        return
    if not venv_usable():
        # a half-made venv (pyvenv.cfg written) is cleared; a directory that is no venv is never emptied
        clear = (VENV / "pyvenv.cfg").exists()
        print(f"bootstrap: {'recreating' if clear else 'creating'} {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=clear).create(VENV)
    spec = f".[{extra}]" if extra else "."
    print(f"bootstrap: installing isovol{f'[{extra}]' if extra else ''} (first run takes a few minutes)", flush=True)
    subprocess.check_call([_bin("python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-c", str(CONSTRAINTS), "torch", "-e", spec], cwd=ROOT)
    stamp.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "demo":
        ensure_env("")
        return subprocess.call([_bin("isovol"), "demo", *rest], cwd=ROOT)
    ensure_env("test")
    lint = subprocess.call([_bin("ruff"), "check", "."], cwd=ROOT)
    tests = subprocess.call([_bin("python"), "-m", "pytest", "-q", *rest], cwd=ROOT)
    return lint or tests


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

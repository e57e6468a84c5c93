"""The README promise and packaging consistency: environment.yml and setup.cfg ask for the same things."""

import configparser
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!\[ ]", spec.strip(), maxsplit=1)[0].lower()


def _spec(spec: str) -> str:
    return re.sub(r"\[.*?\]", "", spec.replace(" ", "")).lower()


def test_environment_yml_matches_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pip_reqs = {_name(r): _spec(r) for r in cfg["options"]["install_requires"].strip().splitlines()}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and _name(dep) not in ("python", "pip"):
            name = CONDA_NAMES.get(_name(dep), _name(dep))
            conda[name] = name + _spec(dep)[len(_name(dep)):]
    assert conda == pip_reqs


def test_torch_is_pinned_on_the_test_path_and_a_range_in_the_package():
    constraints = (ROOT / "requirements" / "constraints.txt").read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", constraints, re.M)
    cfg = (ROOT / "setup.cfg").read_text()
    assert re.search(r"^\s*torch>=[\d.]+,<\d+$", cfg, re.M)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 bootstrap.py test" in readme and "python3 bootstrap.py demo" in readme
    assert "bootstrap.py test" in ci


def test_every_source_package_is_installed():
    """A package missing from setup.cfg works in an editable install and vanishes from a wheel."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {"isovol." + ".".join(p.parent.relative_to(ROOT).parts)
             for top in ("pipeline", "workflows", "deploy") for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"not in setup.cfg packages: {sorted(found - listed)}"


def _bootstrap(monkeypatch, venv_dir: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("isovol_bootstrap", ROOT / "bootstrap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "VENV", venv_dir)
    return mod


def _fake_python(venv_dir: Path, body: str) -> None:
    py = venv_dir / "bin" / "python"
    py.parent.mkdir(parents=True, exist_ok=True)
    py.write_text(f"#!/bin/sh\n{body}\n")
    py.chmod(0o755)


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script stands in for the venv's python")
@pytest.mark.parametrize("case, usable, clear", [
    ("killed-in-ensurepip", False, True),  # bin/python and pyvenv.cfg, no pip: cleared and made anew
    ("killed-before-config", False, False),  # a bare directory: filled in, never cleared
    ("complete", True, None),  # pip works: only the install runs
])
def test_bootstrap_recreates_a_venv_left_without_pip(case, usable, clear, tmp_path, monkeypatch):
    """A kill during venv creation leaves bin/python but no pip; the next run must make the venv anew instead of
    failing in pip install forever. No real venv is made here: the builder and pip are recorded."""
    venv_dir = tmp_path / "venv"
    venv_dir.mkdir()
    if case != "killed-before-config":
        (venv_dir / "pyvenv.cfg").write_text("home = /usr/bin\n")
        _fake_python(venv_dir, f'exec "{sys.executable}" "$@"' if usable else "exit 1  # No module named pip")
    bs = _bootstrap(monkeypatch, venv_dir)
    assert bs.venv_usable() is usable
    built, installed = [], []

    class Builder:
        def __init__(self, **kw):
            built.append(kw)

        def create(self, path):
            assert Path(path) == venv_dir

    monkeypatch.setattr(bs.venv, "EnvBuilder", Builder)
    monkeypatch.setattr(bs.subprocess, "check_call", lambda cmd, **kw: installed.append(cmd))
    bs.ensure_env("test")
    assert built == ([] if usable else [{"with_pip": True, "clear": clear}])
    assert len(installed) == 1 and installed[0][1:4] == ["-m", "pip", "install"]
    assert (venv_dir / ".isovol-installed").read_text() == bs._digest("test")
    installed.clear()
    bs.ensure_env("test")  # stamped: nothing is checked or installed again
    assert installed == [] and len(built) == (0 if usable else 1)

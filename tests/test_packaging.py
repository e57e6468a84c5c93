"""The README promise and packaging consistency: environment.yml and setup.cfg ask for the same things."""

import configparser
import re
from pathlib import Path

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

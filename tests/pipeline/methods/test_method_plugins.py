"""docs/plugins.md, executed: its example module and entry-point line, installed into a temporary folder, give a
method the registry, ``isovol methods`` and the blockwise executor all know, with exactly ``nearest``'s voxels.

The module and the ``[isovol.methods]`` section are taken from the page itself, so the page cannot rot.  They are
installed as a module plus a ``*.dist-info`` folder (METADATA, entry_points.txt) on sys.path: what pip would leave.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from isovol.pipeline.degrade import decimate_z
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import Kind, registry, upsample_array
from isovol.workflows.demo_data import load_crop
from isovol.workflows.upsample import UpsampleRequest, upsample

DOC = Path(__file__).resolve().parents[3] / "docs" / "plugins.md"
MODULE = "isovol_example_plugin"
NAME = "example-nearest"
ISOVOL = str(Path(sys.executable).with_name("isovol"))
BUILTINS = ("nearest", "linear", "cubic")
FACTOR = 8


def fenced(lang: str) -> str:
    """The one fenced block of ``lang`` in docs/plugins.md (the page promises exactly one)."""
    blocks = re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"docs/plugins.md must hold exactly one ```{lang} block, found {len(blocks)}"
    return blocks[0]


def install(where: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution as pip installs it: its modules and ``dist-0.1.dist-info`` with METADATA and entry points."""
    info = where / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for name, text in modules.items():
        (where / f"{name}.py").write_text(text)


@pytest.fixture
def fresh_registry(monkeypatch):
    """Plugins on sys.path are found only by a registry that looks again: forget before and after the test."""
    registry.reset()
    yield
    registry.reset()
    for name in (MODULE, "isovol_clashing_plugin"):
        sys.modules.pop(name, None)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch, fresh_registry) -> Path:
    """The page's plugin, installed in ``tmp_path`` and importable."""
    section = fenced("ini")
    assert section.startswith("[isovol.methods]\n") and f"{NAME} = {MODULE}:ENTRY" in section
    install(tmp_path, MODULE, section, {MODULE: fenced("python")})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def low() -> np.ndarray:
    """A real anisotropic stack: the bundled crop's every 8th slice (17 x 45 x 50 uint8), sides that no block
    shape below divides."""
    volume, _ = load_crop()
    low, length = decimate_z(np.ascontiguousarray(volume[:, :45, :50]), FACTOR)
    assert low.shape == (17, 45, 50) and length == 129
    return low


def test_the_page_holds_one_runnable_module(plugin_dir):
    text = fenced("python")
    compile(text, "isovol_example_plugin.py", "exec")
    assert "class ExampleNearest(Method)" in text and "Interpolation" not in text, "the example shows the interface"


def test_registry_finds_the_plugin(plugin_dir):
    entry = registry.get(NAME)
    assert entry.kind is Kind.CLASSICAL and not entry.needs_model and entry.training is None
    assert registry.names()[:len(BUILTINS)] == BUILTINS, "built-ins first"
    method = registry.get_method(NAME)
    assert method.name == NAME and method.z_split_exact and method.deterministic
    assert method.config()["name"] == NAME


def test_isovol_methods_lists_the_plugin(plugin_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([ISOVOL, "methods", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "not loaded" not in res.stderr, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(BUILTINS) <= set(rows)
    assert rows[NAME] == {"name": NAME, "kind": "classical", "needs_model": False, "trainable": False,
                          "trains_on": None, "recipes": [], "description": registry.get(NAME).description}


def test_blockwise_equals_whole_equals_nearest(plugin_dir, tmp_path_factory, low):
    plugin = registry.get_method(NAME)
    whole = upsample_array(low, FACTOR, plugin)
    nearest = upsample_array(low, FACTOR, registry.get_method("nearest"))
    assert whole.dtype == low.dtype and whole.shape == (129, 45, 50)
    assert np.array_equal(whole, nearest), "example-nearest must give nearest's voxels"
    assert np.array_equal(whole[::FACTOR], low), "kept slices are exact"

    from isovol.deploy.local import cluster_client

    work = tmp_path_factory.mktemp("run")
    source = str(work / "in.ome.zarr")
    write_image(source, low, (10.0 * FACTOR, 10.0, 10.0))
    out = work / "out.ome.zarr"
    req = UpsampleRequest(input=source, output=str(out), factor=FACTOR, method=NAME, block_shape=(7, 20, 24),
                          progress=False)
    with cluster_client(2, processes=False) as client:
        summary = upsample(req, client=client)
    assert summary.ok and summary.done == summary.total == 19 * 3 * 3
    blockwise = zarr.open_array(store=str(out / "0"), mode="r")[...]
    assert blockwise.dtype == low.dtype and np.array_equal(blockwise, whole)


CLASHING = """from isovol.pipeline.methods import Kind, MethodEntry

ENTRY = MethodEntry("nearest", Kind.CLASSICAL, "an impostor", lambda model, **options: None)
"""


def test_a_broken_plugin_only_warns(tmp_path, monkeypatch, fresh_registry, caplog):
    install(tmp_path, "isovol_broken_plugin", "[isovol.methods]\nbroken = isovol_no_such_module:ENTRY\n", {})
    install(tmp_path, "isovol_clashing_plugin", "[isovol.methods]\nnearest = isovol_clashing_plugin:ENTRY\n",
            {"isovol_clashing_plugin": CLASHING})
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        names = registry.names()
    assert set(BUILTINS) <= set(names) and "broken" not in names
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken" in w and "not loaded" in w for w in warnings), warnings
    assert any("'nearest' is taken" in w for w in warnings), warnings
    assert registry.get("nearest").description != "an impostor", "a plugin cannot take a built-in's name"
    assert registry.get_method("nearest").name == "nearest"

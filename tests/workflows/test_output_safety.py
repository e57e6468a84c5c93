"""Never lose a voxel: an output is compared with the input by what it resolves to, created by one run only, and
a complete output stays complete and readable whatever happens to a later run on it.  Real zarr v3 outputs
made by real runs; the command line where a user would meet the problem."""

from __future__ import annotations

import os

import numpy as np
import pytest
from clirun import error_line, read_output, tree

from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 8


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR, 10:74, 40:104])  # (17, 64, 64) uint8


def request(source: str, out, **kw) -> UpsampleRequest:
    kw.setdefault("block_shape", (32, 32, 32))
    return UpsampleRequest(input=source, output=str(out), factor=FACTOR, progress=False, **kw)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, client, source, expected) -> str:
    """A complete isovol output (129 x 64 x 64), the input of a second upsampling."""
    out = tmp_path_factory.mktemp("earlier") / "a.ome.zarr"
    assert upsample(request(source, out), client=client).ok
    assert np.array_equal(read_output(out), expected)
    return str(out)


# -- 1. the output is never the input, whatever the spelling ------------------------------------------------


@pytest.mark.parametrize("spelling", ["./a.ome.zarr/", "{abs}", "link.ome.zarr", "link.ome.zarr/", "a.ome.zarr/0",
                                      "a.ome.zarr/0/.."])
def test_overwrite_of_the_input_spelled_otherwise_is_refused(earlier, cli, spelling):
    """Input ``a.ome.zarr`` (an earlier output), output the same folder spelled otherwise or a folder inside it:
    one line, exit 2, not a byte touched."""
    folder = os.path.dirname(earlier)
    if not os.path.lexists(os.path.join(folder, "link.ome.zarr")):
        os.symlink(earlier, os.path.join(folder, "link.ome.zarr"))
    before = tree(earlier)
    res = cli("upsample", "a.ome.zarr", spelling.format(abs=earlier), "--factor", 2, "--overwrite",
              "--no-progress", cwd=folder)
    line = error_line(res)
    assert res.returncode == 2 and "the output must not" in line, line
    assert tree(earlier) == before
    assert sorted(os.listdir(folder)) == ["a.ome.zarr", "link.ome.zarr"]


def test_an_output_holding_the_input_is_refused(earlier, cli):
    """Input ``a.ome.zarr/0`` (a plain zarr array inside an earlier output), output ``a.ome.zarr``: deleting the
    output would delete the input."""
    before = tree(earlier)
    res = cli("upsample", os.path.join(earlier, "0"), "./a.ome.zarr", "--factor", 2, "--overwrite",
              "--voxel-size", "10,10,10", "--no-progress", cwd=os.path.dirname(earlier))
    assert res.returncode == 2 and "must not contain the input" in error_line(res)
    assert tree(earlier) == before

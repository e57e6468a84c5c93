"""Bad values and bad inputs are refused as one clear line before anything is created, or reported once as one
warning line: run settings (workers, retries, time-out), block plans that would take hours, outputs far larger
than their input, dtypes no method serves, NaN / inf in the input, damaged input chunks."""

from __future__ import annotations

import numpy as np
import pytest
from clirun import error_line, write_input
from clirun import run_isovol as run

from isovol.pipeline.errors import InputError
from isovol.workflows.upsample import UpsampleRequest

FACTOR = 4


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    vol = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    return write_input(tmp_path_factory.mktemp("in") / "in.ome.zarr", vol, FACTOR)


# ------------------------------------------------------------------------------------------ run settings


@pytest.mark.parametrize("args, expect", [
    (["--workers", "0"], "--workers"),
    (["--workers", "-1"], "--workers"),
    (["--retries", "-1"], "--retries"),
    (["--block-timeout", "-5"], "--block-timeout"),
    (["--block-timeout", "0"], "--block-timeout"),
    (["--block-timeout", "nan"], "--block-timeout"),
    (["--block-timeout", "soon"], "--block-timeout"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_run_settings_are_one_line_and_create_nothing(tmp_path, small, args, expect):
    out = tmp_path / "out.ome.zarr"
    res = run("upsample", small, out, "--factor", FACTOR, "--no-progress", *args)
    line = error_line(res)
    assert expect in line and res.returncode == 2, line
    assert not out.exists()


def test_block_timeout_none_means_no_limit(tmp_path, small):
    out = tmp_path / "out.ome.zarr"
    res = run("upsample", small, out, "--factor", FACTOR, "--no-progress", "--workers", "1",
              "--block-timeout", "none", "--no-pyramid")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("kw", [{"workers": 0}, {"workers": -1}, {"workers": 1.5}, {"retries": -1},
                                {"block_timeout": -5}, {"block_timeout": 0}, {"block_timeout": "1-5"},
                                {"block_timeout": float("inf")}], ids=str)
def test_the_api_refuses_bad_run_settings_before_anything_is_created(tmp_path, small, kw):
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(InputError, match="workers|retries|block-timeout"):
        UpsampleRequest(input=small, output=str(out), factor=FACTOR, progress=False, **kw)
    assert not out.exists()

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


# ------------------------------------------------------------------------------------ plans and inputs


def test_tiny_blocks_by_the_thousand_are_refused(tmp_path, small):
    out = tmp_path / "out.ome.zarr"
    line = error_line(run("upsample", small, out, "--factor", FACTOR, "--block-shape", "1,1,1", "--no-progress"))
    assert "makes 21504 blocks of 1 voxels" in line and "--block-shape 64,64,64" in line, line
    assert not out.exists()
    assert "makes 21504 blocks" in error_line(run("plan", small, "--factor", FACTOR, "--block-shape", "1,1,1"))


def test_a_huge_factor_is_one_warning_line_with_the_output_size(small):
    """--factor 10000 on a 6 KiB input: plan (and upsample) say how large the output is, in the one line that
    also says the factor is far from isotropic -- not a second warning about the same factor."""
    res = run("plan", small, "--factor", 10000)
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1, res.stderr
    assert "from isotropic" in warnings[0] and "the output is 48.8 MiB, 8334x the input" in warnings[0]


def test_a_factor_without_voxel_size_still_gets_the_size_warning(tmp_path):
    src = tmp_path / "in.npy"
    np.save(src, np.zeros((4, 8, 8), np.uint8))
    res = run("plan", src, "--factor", 100)
    assert res.returncode == 0, res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if "WARNING" in ln]
    assert "75x the input" in line, line
    res = run("plan", src, "--factor", 8)
    assert "WARNING" not in res.stderr, res.stderr


@pytest.mark.parametrize("dtype, expect", [("bool", "boolean"), ("complex64", "complex64"),
                                           ("complex128", "imaginary")])
def test_boolean_and_complex_inputs_are_one_line_and_create_nothing(tmp_path, dtype, expect):
    src = tmp_path / "in.npy"
    np.save(src, (np.arange(4 * 8 * 8).reshape(4, 8, 8) % 3).astype(dtype))
    out = tmp_path / "out.ome.zarr"
    line = error_line(run("upsample", src, out, "--factor", FACTOR, "--voxel-size", "40,10,10", "--no-progress"))
    assert expect in line and "Warning" not in line, line
    assert not out.exists()


def test_nan_and_inf_inputs_are_counted_in_one_warning_line_at_the_end(tmp_path):
    vol = np.random.default_rng(1).random((6, 32, 32), dtype=np.float32)
    vol[2, 10, 10], vol[4, 20, 5] = np.nan, np.inf
    src = write_input(tmp_path / "f.ome.zarr", vol, FACTOR)
    out = tmp_path / "out.ome.zarr"
    res = run("upsample", src, out, "--factor", FACTOR, "--block-shape", "8,16,16", "--workers", "1",
              "--no-progress", "--no-pyramid")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "NaN or inf" in ln]
    assert len(lines) == 1, res.stderr
    from clirun import read_output

    bad = int((~np.isfinite(read_output(out))).sum())
    assert f"2 input voxel(s) are NaN or inf and {bad} output voxel(s)" in lines[0], lines[0]
    assert bad > 2


# ---------------------------------------------------------------------------------------- damaged input


def test_a_truncated_input_chunk_is_one_error_line_naming_array_and_chunk(tmp_path):
    """Used to end in ~30 stderr lines with a worker traceback per block; now: the summary line, one error line
    naming the chunk (once, however many blocks read it) and what to do; no traceback; the output incomplete."""
    import zarr

    vol = np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=vol.shape, chunks=(4, 32, 32), dtype="uint8")
    arr[...] = vol
    chunk = tmp_path / "in.zarr" / "c" / "0" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    out = tmp_path / "out.ome.zarr"
    res = run("-q", "upsample", tmp_path / "in.zarr", out, "--factor", FACTOR, "--voxel-size", "40,10,10",
              "--block-shape", "16,32,32", "--workers", "2", "--no-progress")
    assert res.returncode == 1 and "Traceback" not in res.stderr and "Compute Failed" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    damage = [ln for ln in lines if "is damaged" in ln]
    assert len(damage) == 1, res.stderr
    assert damage[0].startswith("isovol: error: input chunk c/0/1/0 of ") and "in.zarr is damaged (" in damage[0]
    assert "2 blocks need it (0.1.0, 1.1.0)" in damage[0]
    assert len(lines) == 3 and "repair or replace the damaged input" in lines[-1], res.stderr
    status = run("status", out)
    assert status.returncode == 3 and "incomplete" in status.stdout, status.stdout

"""``--factor auto`` from the input's voxel size, the warning when a factor leaves the output far from isotropic,
and what ``plan`` says about voxel sizes (text and JSON)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.geometry import anisotropy_warning, auto_factor
from isovol.pipeline.io.omezarr import write_image
from isovol.workflows.cli import main


@pytest.mark.parametrize("voxel, factor", [((40.0, 4.0, 4.0), 10), ((80.0, 10.0, 10.0), 8), ((25.0, 8.0, 9.0), 3),
                                           ((29.0, 10.0, 10.0), 3), ((15.0, 10.0, 10.0), 2)])
def test_auto_is_the_rounded_ratio_of_z_to_xy(voxel, factor):
    assert auto_factor(voxel, "in") == factor


def test_auto_refuses_without_a_voxel_size_or_on_isotropic_data():
    with pytest.raises(InputError, match="needs the voxel size of in.npy.*--voxel-size"):
        auto_factor(None, "in.npy")
    with pytest.raises(InputError, match="already about isotropic"):
        auto_factor((12.0, 10.0, 10.0), "in")


def test_the_warning_names_the_factor_that_fixes_it():
    text = anisotropy_warning((40.0, 4.0, 4.0), 8)
    assert text == "the output voxel 5,4,4 nm is 25% from isotropic; --factor 10 (or auto) gives 4 nm"
    assert anisotropy_warning((40.0, 4.0, 4.0), 10) is None
    assert anisotropy_warning((42.0, 4.0, 4.0), 10) is None, "5 % off is within the 10 % tolerance"
    assert anisotropy_warning(None, 8) is None
    assert "no integer factor does better" in anisotropy_warning((25.0, 10.0, 10.0), 2)  # 12.5 nm: 2 or 3 equally


@pytest.fixture(scope="module")
def cremi_like(tmp_path_factory, crop) -> str:
    """A serial-section-like input: 40 x 4 x 4 nm."""
    url = str(tmp_path_factory.mktemp("cremi") / "cremi.ome.zarr")
    write_image(url, np.ascontiguousarray(crop[::8, :64, :64]), (40.0, 4.0, 4.0))
    return url


def _plan(capsys, *args) -> tuple[int, str, str]:
    try:
        main(["plan", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_resolves_auto_and_shows_both_voxel_sizes(cremi_like, capsys):
    code, out, _ = _plan(capsys, cremi_like, "--factor", "auto", "--json")
    info = json.loads(out)
    assert code == 0 and info["factor"] == 10
    assert info["input_voxel_size_nm"] == [40.0, 4.0, 4.0] and info["output_voxel_size_nm"] == [4.0, 4.0, 4.0]
    code, out, _ = _plan(capsys, cremi_like, "--factor", "auto")
    assert code == 0 and "voxel 40,4,4 nm" in out and "voxel 4,4,4 nm" in out


def test_plan_warns_once_when_the_factor_leaves_the_output_anisotropic(cremi_like, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="isovol"):
        code, out, _ = _plan(capsys, cremi_like, "--factor", "8")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert code == 0 and warnings == ["the output voxel 5,4,4 nm is 25% from isotropic; --factor 10 (or auto) "
                                      "gives 4 nm"]
    assert "voxel 5,4,4 nm" in out


def test_auto_without_a_voxel_size_is_one_clear_line(tmp_path, crop, capsys):
    np.save(tmp_path / "stack.npy", crop[::8, :32, :32])
    code, out, err = _plan(capsys, tmp_path / "stack.npy", "--factor", "auto")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith("isovol: error: --factor auto needs the voxel size of") and "--voxel-size" in lines[0]
    code, out, _ = _plan(capsys, tmp_path / "stack.npy", "--factor", "auto", "--voxel-size", "80,10,10", "--json")
    assert code == 0 and json.loads(out)["factor"] == 8

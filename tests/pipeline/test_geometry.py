"""The Z convention: integer factors only, (n-1)*r+1 output slices, tight input spans."""

import numpy as np
import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.geometry import (
    check_factor,
    input_span,
    output_length,
    output_shape,
    output_voxel_size,
)


@pytest.mark.parametrize("value, expected", [(2, 2), ("8", 8), (8.0, 8), ("3.0", 3), (np.int64(4), 4), (100, 100)])
def test_check_factor_accepts_integral_values(value, expected):
    """Guards against refusing a valid factor given as a string or an integral float (CLI and YAML inputs)."""
    got = check_factor(value)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value", [1, 0, -3, 2.5, "2.5", "abc", True, False, None, float("nan"), float("inf"), "", [2]])
def test_check_factor_refuses_with_input_error(value):
    """Guards against silently accepting (or crashing on) factors the grid arithmetic cannot honour."""
    with pytest.raises(InputError, match="factor must be an integer >= 2"):
        check_factor(value)


def test_check_factor_says_non_integer_is_unsupported():
    """Guards against a vague message when the user asks for a fractional factor."""
    with pytest.raises(InputError, match="non-integer"):
        check_factor(2.5)


@pytest.mark.parametrize("n, r, expected", [(1, 4, 1), (2, 2, 3), (16, 8, 121), (129, 10, 1281)])
def test_output_length_is_n_minus_one_times_r_plus_one(n, r, expected):
    """Guards against an off-by-one in the output length (n*r or n*r-1 are the usual mistakes)."""
    assert output_length(n, r) == expected


def test_output_shape_scales_z_only_and_voxel_size_divides_z():
    """Guards against touching Y/X or the wrong axis when mapping shapes and voxel sizes."""
    assert output_shape((17, 30, 40), 4) == (65, 30, 40)
    assert output_voxel_size((40.0, 8.0, 6.0), 8) == (5.0, 8.0, 6.0)


@pytest.mark.parametrize("r", [2, 3, 4, 7, 8])
def test_input_span_is_the_tight_bracket_of_every_output_slice(r):
    """Guards against reading too few input slices (wrong values at block ends) or needlessly many."""
    n_out = 6 * r + 1
    for z0 in range(n_out):
        for z1 in range(z0 + 1, n_out + 1):
            needed = set()
            for z in range(z0, z1):
                needed.add(z // r)
                if z % r:
                    needed.add(z // r + 1)
            assert input_span(z0, z1, r) == (min(needed), max(needed) + 1), (z0, z1)


def test_input_span_refuses_empty_range():
    """Guards against silently planning an empty block."""
    with pytest.raises(ValueError):
        input_span(5, 5, 2)

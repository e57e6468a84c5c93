"""The data checks of a plan: refused dtypes, tiny-block plans, the growth warning, NaN / inf counting."""

import itertools

import numpy as np
import pytest

from isovol.pipeline.blocks import BlockPlan
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods import Halo, get_method
from isovol.pipeline.plan_checks import (
    check_block_count,
    check_dtype,
    nonfinite_counts,
    nonfinite_warning,
    size_note,
)


@pytest.mark.parametrize("dtype", ["bool", "complex64", "complex128", "U4", "datetime64[s]"])
def test_non_grey_dtypes_are_refused(dtype):
    with pytest.raises(InputError):
        check_dtype(np.dtype(dtype))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32", "float64"])
def test_grey_dtypes_pass(dtype):
    check_dtype(np.dtype(dtype))


def test_many_tiny_blocks_are_refused_but_few_or_big_ones_pass():
    with pytest.raises(InputError, match="at least 32768 voxels"):
        check_block_count(BlockPlan.build((6, 32, 32), 4, Halo(), block_shape=(1, 1, 1)))
    check_block_count(BlockPlan.build((2, 8, 8), 4, Halo(), block_shape=(1, 1, 1)))  # 320 blocks: fine
    check_block_count(BlockPlan.build((65, 512, 512), 8, Halo(), block_shape=(32, 32, 32)))  # 32^3 blocks


def test_size_note_only_past_64x():
    assert size_note(BlockPlan.build((10, 64, 64), 32, Halo())) is None
    note = size_note(BlockPlan.build((10, 64, 64), 100, Halo()))
    assert note == "the output is 3.5 MiB, 90x the input (check --factor)"


@pytest.mark.parametrize("block", [(4, 8, 8), (5, 16, 3), (33, 16, 16)], ids=str)
def test_nonfinite_counts_count_each_input_voxel_once_over_any_layout(block):
    rng = np.random.default_rng(0)
    vol = rng.random((9, 16, 16)).astype(np.float32)
    bad = rng.random(vol.shape) < 0.02
    vol[bad] = np.nan
    method = get_method("cubic")
    plan = BlockPlan.build(vol.shape, 4, method.halo, block_shape=block)
    total_in = total_out = 0
    pad = 8  # the edge padding of any block's read box is a slice of the volume edge-padded once
    padded = np.pad(vol, pad, mode="edge")
    for b in plan.blocks():
        data = padded[tuple(slice(lo + pad, hi + pad) for lo, hi in zip(b.in_lo, b.in_hi))]
        out = method.apply(data, 4, *plan.local_range(b))
        i, o = nonfinite_counts(plan, b, data, out)
        total_in, total_out = total_in + i, total_out + o
    assert total_in == int(bad.sum())
    assert total_out > total_in


def test_integers_are_not_counted_and_nothing_to_say_is_none():
    plan = BlockPlan.build((3, 4, 4), 2, Halo())
    (b,) = list(itertools.islice(plan.blocks(), 1))
    assert nonfinite_counts(plan, b, np.zeros((4, 4, 4), np.uint8), np.zeros(b.out_shape, np.uint8)) == (0, 0)
    assert nonfinite_warning(0, 0) is None

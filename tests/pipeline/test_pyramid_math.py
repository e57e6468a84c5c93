"""The pyramid's arithmetic: the 2x mean against a voxel-by-voxel reference, blockwise == whole over block
layouts, level shapes and the pixel-centre convention of each level's scale and translation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.pyramid import (
    LevelPlan,
    downsample_mean,
    level_layout,
    level_shapes,
    level_transform,
    parse_levels,
)


def _reference(data: np.ndarray) -> np.ndarray:
    """Each output voxel the mean of the voxels of its 2x2x2 cube that exist, rounded half to even for integers."""
    out = np.empty(tuple(-(-n // 2) for n in data.shape), dtype=np.float64)
    for idx in itertools.product(*(range(n) for n in out.shape)):
        cube = data[tuple(slice(2 * i, 2 * i + 2) for i in idx)]
        out[idx] = cube.astype(np.float64).mean()
    if np.issubdtype(data.dtype, np.integer):
        out = np.rint(out)
    return out.astype(data.dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("shape", [(6, 8, 4), (7, 5, 9), (1, 3, 2)])
def test_mean_equals_the_voxel_by_voxel_reference(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        data = rng.normal(size=shape).astype(dtype)
    got = downsample_mean(data)
    assert got.dtype == data.dtype and got.shape == tuple(-(-n // 2) for n in shape)
    if dtype is np.float32:
        np.testing.assert_allclose(got, _reference(data), rtol=1e-6)
    else:
        assert np.array_equal(got, _reference(data))


def test_integer_means_round_half_to_even():
    data = np.zeros((2, 2, 2), np.uint8)
    data[0, 0, 0] = 4  # mean 0.5 -> 0
    assert downsample_mean(data)[0, 0, 0] == 0
    data[0, 0, 1] = 8  # mean 1.5 -> 2
    assert downsample_mean(data)[0, 0, 0] == 2


@pytest.mark.parametrize("block", [(3, 5, 7), (2, 2, 2), (5, 64, 3), (64, 64, 64)])
def test_blockwise_equals_whole_over_block_layouts(block):
    from isovol.workflows.demo_data import load_crop

    crop, _ = load_crop()
    src = crop[:61, :47, :90]  # odd sizes: cut cubes at the far edges
    whole = downsample_mean(src)
    plan = LevelPlan(src.shape, whole.shape, block)
    out = np.full_like(whole, 255)
    for b in plan.blocks():
        data = src[tuple(slice(a, c) for a, c in zip(b.in_lo, b.in_hi))]
        out[tuple(slice(a, c) for a, c in zip(b.out_lo, b.out_hi))] = downsample_mean(data)
    assert len(plan) == int(np.prod([-(-n // min(k, n)) for n, k in zip(whole.shape, block)]))
    assert np.array_equal(out, whole)


def test_auto_levels_stop_when_one_chunk_holds_the_level():
    assert level_shapes((129, 128, 128), (64, 64, 64), "auto") == [(65, 64, 64), (33, 32, 32)]
    assert level_shapes((64, 64, 64), (64, 64, 64), "auto") == []
    assert level_shapes((300, 40, 40), (64, 64, 64), "auto")[-1] == (38, 5, 5)


def test_a_number_of_levels_is_exact_and_bounded():
    assert level_shapes((129, 128, 128), (64, 64, 64), 3) == [(65, 64, 64), (33, 32, 32), (17, 16, 16)]
    assert level_shapes((129, 128, 128), (64, 64, 64), 0) == []
    assert level_shapes((8, 8, 8), (4, 4, 4), 3)[-1] == (1, 1, 1)
    with pytest.raises(InputError, match="more than the 3 halvings"):
        level_shapes((8, 8, 8), (4, 4, 4), 4)


@pytest.mark.parametrize("text, value", [("auto", "auto"), (None, "auto"), ("AUTO", "auto"), ("0", 0), ("4", 4)])
def test_levels_option(text, value):
    assert parse_levels(text) == value


@pytest.mark.parametrize("text", ["-1", "two", "1.5", ""])
def test_bad_levels_are_refused(text):
    with pytest.raises(InputError, match="--levels"):
        parse_levels(text)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_each_level_voxel_sits_at_the_centre_of_the_voxels_it_averages(level):
    scale0, trans0 = (6.25, 8.0, 9.0), (125.0, -40.5, 3000.0)
    scale, trans = level_transform(scale0, trans0, level)
    f = 2 ** level
    for j in (0, 1, 7):
        centres0 = [t + s * np.arange(f * j, f * (j + 1)) for s, t in zip(scale0, trans0)]
        for axis in range(3):
            assert trans[axis] + scale[axis] * j == pytest.approx(centres0[axis].mean())
    assert scale == [s * f for s in scale0]
    assert level_transform(scale0, trans0, 0) == (list(scale0), list(trans0))


def test_level_layout_halves_shards_and_blocks_in_whole_chunks():
    # level 1 of a 257^3 output with 64^3 chunks, 128^3 shards and 256^3 blocks
    assert level_layout((129, 128, 128), (64, 64, 64), (128, 128, 128), (256, 256, 256)) == \
        ((64, 64, 64), (64, 64, 64), (128, 128, 128))
    # never below one chunk, never beyond the level (rounded up to whole chunks)
    assert level_layout((33, 32, 32), (64, 64, 64), (64, 64, 64), (64, 64, 64)) == \
        ((33, 32, 32), (33, 32, 32), (33, 32, 32))
    chunks, shards, block = level_layout((300, 200, 100), (16, 32, 32), (48, 64, 64), (96, 128, 192))
    assert chunks == (16, 32, 32) and shards == (16, 32, 32) and block == (48, 64, 96)
    assert all(s % c == 0 for s, c in zip(shards, chunks)) and all(b % s == 0 for b, s in zip(block, shards))


def test_64_bit_integers_and_negative_values():
    data = np.array([-3, -4, -4, -4, -4, -4, -4, -4], np.int16).reshape(2, 2, 2)  # mean -3.875 -> -4
    assert downsample_mean(data)[0, 0, 0] == -4
    data = np.array([-4, -4, -4, -4, -4, -4, 0, 0], np.int32).reshape(2, 2, 2)  # mean -3 exactly
    assert downsample_mean(data)[0, 0, 0] == -3
    big = np.full((2, 2, 2), 2**40, np.int64)
    assert downsample_mean(big)[0, 0, 0] == 2**40

"""Block planning: exact tiling of the output, read boxes that carry span + halo, and shape rules."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from isovol.pipeline.blocks import PADDING, BlockPlan, parse_shape
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods import Halo, upsample_array
from isovol.pipeline.methods.interp import Interpolation

CASES = [
    # in_shape, factor, halo, block, shard, chunk
    ((9, 40, 50), 4, Halo(z=1), (8, 16, 16), (8, 16, 16), (4, 8, 8)),  # out (33, 40, 50): nothing divides
    ((10, 32, 32), 3, Halo(z=1, y=2, x=3), (12, 32, 16), (6, 16, 16), (3, 8, 8)),  # block = 2 shards in Z
    ((17, 20, 24), 8, Halo(), (16, 8, 24), (16, 8, 8), (8, 8, 8)),
    ((5, 7, 9), 10, Halo(z=1), (7, 3, 4), (7, 3, 4), (7, 3, 4)),  # odd sizes, factor > block
    ((2, 5, 5), 2, Halo(z=2, y=1, x=1), (1, 2, 2), (1, 1, 1), (1, 1, 1)),  # one-voxel shards
]


def plan_of(case):
    in_shape, r, halo, block, shard, chunk = case
    return BlockPlan.build(in_shape, r, halo, block_shape=block, shard_shape=shard, chunk_shape=chunk)


@pytest.mark.parametrize("case", CASES)
def test_blocks_tile_the_output_exactly_once(case):
    """Guards against gaps or overlaps between blocks (lost voxels or two writers on one shard)."""
    plan = plan_of(case)
    assert plan.out_shape == ((case[0][0] - 1) * case[1] + 1,) + case[0][1:]
    count = np.zeros(plan.out_shape, dtype=np.int32)
    blocks = list(plan.blocks())
    assert len(blocks) == len(plan) == int(np.prod(plan.grid))
    assert len({b.key for b in blocks}) == len(blocks)
    for b in blocks:
        assert all(0 <= lo < hi <= n for lo, hi, n in zip(b.out_lo, b.out_hi, plan.out_shape))
        count[tuple(slice(lo, hi) for lo, hi in zip(b.out_lo, b.out_hi))] += 1
    assert count.min() == 1 and count.max() == 1


@pytest.mark.parametrize("case", CASES)
def test_blocks_start_on_shard_boundaries(case):
    """Guards against a block sharing a shard with its neighbour (shards must be written whole by one task)."""
    plan = plan_of(case)
    for b in plan.blocks():
        assert all(lo % s == 0 for lo, s in zip(b.out_lo, plan.shard_shape))
        assert all(hi % s == 0 or hi == n for hi, s, n in zip(b.out_hi, plan.shard_shape, plan.out_shape))


@pytest.mark.parametrize("case", CASES)
def test_read_box_contains_span_plus_halo_and_local_range_maps_back(case):
    """Guards against a read box that misses a tap or halo, and against local_range pointing at wrong slices."""
    plan = plan_of(case)
    r, h = plan.factor, plan.halo
    for b in plan.blocks():
        need = set()
        for z in range(b.out_lo[0], b.out_hi[0]):
            need.update({z // r - h.z, z // r + (1 if z % r else 0) + h.z})
        assert b.in_lo[0] == min(need) and b.in_hi[0] == max(need) + 1
        assert b.in_lo[1:] == (b.out_lo[1] - h.y, b.out_lo[2] - h.x)
        assert b.in_hi[1:] == (b.out_hi[1] + h.y, b.out_hi[2] + h.x)
        assert b.in_shape == tuple(hi - lo for lo, hi in zip(b.in_lo, b.in_hi))
        start, stop = plan.local_range(b)
        assert stop - start == b.out_shape[0]
        assert start + b.in_lo[0] * r == b.out_lo[0]  # local j sits at input position in_lo + j / r
        assert start % r == b.out_lo[0] % r


@pytest.mark.parametrize("kind", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("case", CASES)
def test_blockwise_result_equals_single_call(case, kind):
    """Guards the end-to-end invariant at the pipeline level: plan + edge-padded reads + apply == one call."""
    in_shape, r = case[0], case[1]
    method = Interpolation(kind)
    plan = BlockPlan.build(in_shape, r, method.halo, block_shape=case[3], shard_shape=case[4], chunk_shape=case[5])
    vol = np.random.default_rng(1).integers(0, 256, size=in_shape, dtype=np.uint8)
    expected = upsample_array(vol, r, method)
    out = np.zeros(plan.out_shape, dtype=vol.dtype)
    for b in plan.blocks():
        pad = [(max(-lo, 0), max(hi - n, 0)) for lo, hi, n in zip(b.in_lo, b.in_hi, in_shape)]
        box = tuple(slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(b.in_lo, b.in_hi, in_shape))
        data = np.pad(vol[box], pad, mode="edge")
        assert data.shape == b.in_shape
        got = method.apply(data, r, *plan.local_range(b))
        out[tuple(slice(lo, hi) for lo, hi in zip(b.out_lo, b.out_hi))] = got
    np.testing.assert_array_equal(out, expected)


def test_block_must_be_a_whole_multiple_of_shard():
    """Guards against a block layout in which two tasks would write parts of the same shard."""
    with pytest.raises(InputError, match="whole multiple of the shard"):
        BlockPlan.build((100, 512, 512), 4, Halo(), block_shape=(96, 256, 256), shard_shape=(64, 256, 256))
    with pytest.raises(InputError, match="whole multiple of the chunk"):
        BlockPlan.build((100, 512, 512), 4, Halo(), shard_shape=(64, 256, 256), chunk_shape=(48, 64, 64))


def test_bad_shapes_are_refused():
    """Guards against zero/negative or wrong-length shapes reaching the integer arithmetic."""
    with pytest.raises(InputError, match="positive"):
        BlockPlan.build((10, 10, 10), 2, Halo(), block_shape=(0, 8, 8))
    with pytest.raises(InputError, match="positive"):
        BlockPlan.build((10, 10, 10), 2, Halo(), shard_shape=(8, 8))


def test_defaults_and_clipping_to_small_volumes():
    """Guards against small volumes being split into many mostly-empty blocks or shards larger than the array."""
    plan = BlockPlan.build((5, 20, 30), 4, Halo(z=1))
    assert plan.out_shape == (17, 20, 30)
    assert plan.block_shape == plan.shard_shape == plan.chunk_shape == (17, 20, 30)
    assert len(plan) == 1
    plan = BlockPlan.build((100, 1000, 300), 4, Halo())
    assert plan.block_shape == (256, 256, 256) and plan.shard_shape == (256, 256, 256)
    assert plan.chunk_shape == (64, 64, 64)
    assert plan.grid == (2, 4, 2)
    # shard from the block when only the block is given; a clipped block spans its whole axis
    plan = BlockPlan.build((40, 300, 100), 2, Halo(), block_shape=(128, 128, 128))
    assert plan.shard_shape == (79, 128, 100) and plan.block_shape == (79, 128, 100)
    # a chunk that no longer divides the clipped shard becomes the shard
    assert plan.chunk_shape == (79, 64, 100)


def test_describe_reports_the_plan():
    """Guards against `isovol plan` printing numbers that disagree with the plan it runs."""
    plan = BlockPlan.build((9, 40, 50), 4, Halo(z=1, y=2, x=3), block_shape=(16, 16, 16), shard_shape=(8, 16, 16),
                           chunk_shape=(8, 8, 8), itemsize=2)
    d = plan.describe()
    assert d["input_shape"] == [9, 40, 50] and d["output_shape"] == [33, 40, 50]
    assert d["factor"] == 4 and d["tasks"] == 3 * 3 * 4 == len(plan)
    assert d["block_shape"] == [16, 16, 16] and d["shard_shape"] == [8, 16, 16] and d["chunk_shape"] == [8, 8, 8]
    assert d["grid"] == [3, 3, 4] and d["halo"] == [1, 2, 3] and d["padding"] == PADDING == "edge"
    assert d["output_bytes"] == 33 * 40 * 50 * 2
    sizes = d["block_bytes"]
    assert sizes["output"] == 16 * 16 * 16 * 2
    assert sizes["working"] == 16 * 16 * 16 * 8
    assert sizes["peak"] == sizes["input"] + sizes["output"] + sizes["working"]
    # the planned input buffer is an upper bound for every block's read box
    assert sizes["input"] >= max(int(np.prod(b.in_shape)) for b in plan.blocks()) * 2


@pytest.mark.parametrize("r, block", list(itertools.product([2, 3, 5, 8], [1, 2, 3, 5, 7, 16])))
def test_planned_input_bytes_bound_every_block(r, block):
    """Guards against under-estimating per-block memory (a worker that runs out of memory at run time)."""
    plan = BlockPlan.build((23, 4, 4), r, Halo(z=1), block_shape=(block, 4, 4), shard_shape=(block, 4, 4),
                           chunk_shape=(block, 4, 4))
    assert plan.max_block_bytes()["input"] >= max(int(np.prod(b.in_shape)) for b in plan.blocks())


def test_parse_shape():
    """Guards against accepting malformed --block-shape values."""
    assert parse_shape(None, "--block-shape") is None
    assert parse_shape("64,128,256", "--block-shape") == (64, 128, 256)
    assert parse_shape(" 1, 2 ,3", "--block-shape") == (1, 2, 3)
    for bad in ("64,128", "1,2,3,4", "a,b,c", "0,1,1", "-1,2,3", "", "1.5,2,3"):
        with pytest.raises(InputError, match="--block-shape must be three positive integers"):
            parse_shape(bad, "--block-shape")


def test_z_pieces_cut_a_block_at_its_shards_and_read_what_each_piece_needs():
    plan = BlockPlan.build((31, 40, 50), 4, Halo(z=1, y=3, x=2), block_shape=(64, 40, 50), shard_shape=(16, 40, 50))
    for block in plan.blocks():
        pieces = plan.z_pieces(block)
        assert [p.out_lo[0] for p in pieces] == list(range(block.out_lo[0], block.out_hi[0], 16))
        assert pieces[-1].out_hi == block.out_hi and all(p.key == block.key for p in pieces)
        for p in pieces:
            assert p.out_lo[1:] == block.out_lo[1:] and p.out_hi[1:] == block.out_hi[1:]
            alone = replace(plan, block_shape=(16, 40, 50)).block((p.out_lo[0] // 16, 0, 0))
            assert (p.in_lo, p.in_hi, p.out_lo, p.out_hi) == (alone.in_lo, alone.in_hi, alone.out_lo, alone.out_hi)
    last = plan.z_pieces(plan.block((1, 0, 0)))
    assert [(p.out_lo[0], p.out_hi[0]) for p in last] == [(64, 80), (80, 96), (96, 112), (112, 121)]


@pytest.mark.parametrize("block, shard, expect", [
    ((64, 64, 64), None, (128, 128, 128)),  # the layout: blocks at z = 64, 192 cut the 128 tiles
    ((128, 256, 384), None, (128, 256, 384)),  # already on the grid: unchanged, no note
    ((64, 64, 64), (64, 64, 64), (128, 128, 128)),  # a multiple of the shard too
    ((48, 48, 48), (48, 48, 48), (384, 384, 384)),  # lcm(128, 48)
    ((24, 520, 40), None, (128, 520, 128)),  # an axis the block spans whole (the output is 520 wide) stays
])
def test_blocks_are_rounded_up_to_the_method_tile_grid_with_a_note(block, shard, expect):
    plan = BlockPlan.build((33, 520, 520), 8, Halo(), block_shape=block, shard_shape=shard, block_multiple=128)
    clipped = tuple(min(e, n) for e, n in zip(expect, plan.out_shape))
    assert plan.block_shape == clipped
    assert all(b % s == 0 or b == n for b, s, n in zip(plan.block_shape, plan.shard_shape, plan.out_shape))
    if expect == block:
        assert plan.notes == []
    else:
        (note,) = plan.notes
        assert f"rounded up to {','.join(map(str, expect))}" in note and "tile grid of 128" in note


def test_a_method_without_a_tile_grid_keeps_the_users_block():
    plan = BlockPlan.build((33, 520, 520), 8, Halo(), block_shape=(24, 40, 40))
    assert plan.block_shape == (24, 40, 40) and plan.notes == []

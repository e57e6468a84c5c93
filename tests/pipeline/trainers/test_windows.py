"""WindowSampler: shapes, which voxels a window holds, the held-out X slab, the axes used, too-small volumes.

The test volume stores each voxel's own coordinates (value = z * 10^4 + y * 10^2 + x), so every sampled
voxel says where it came from and a window can be checked against direct numpy indexing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isovol.pipeline.methods.dgean.windows import WindowBatch, WindowSampler

SHAPE = (40, 48, 64)  # z, y, x; every coordinate < 100
R, P = 4, 16


@pytest.fixture(scope="module")
def coords() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (z * 10_000 + y * 100 + x).astype(np.int32)  # < 2^24: exact in float32


def sampler(volume, axes=("z", "y", "x"), factor=R, patch=P, **kw) -> WindowSampler:
    return WindowSampler(volume, factor, patch, axes, scale=1.0, **kw)


def decode(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = values.numpy().astype(np.int64)
    return v // 10_000, v // 100 % 100, v % 100


def split_of(width: int, patch: int = P, holdout: float = 0.15) -> int:
    return width - max(math.ceil(width * holdout), patch)


def locate(window: torch.Tensor) -> tuple[str, int, int, int, int]:
    """Sequence axis of one (4, P, P) window, its first sequence coordinate, its step, and the in-plane
    origin (rows, columns) in the order the view permutes them."""
    zyx = decode(window)
    seq = [name for name, c in zip("zyx", zyx) if all(np.unique(c[k]).size == 1 for k in range(4))]
    assert len(seq) == 1, f"no single sequence axis: {seq}"
    axis = seq[0]
    s = zyx["zyx".index(axis)][:, 0, 0]
    rows, cols = [zyx["zyx".index(a)] for a in "zyx" if a != axis]
    return axis, int(s[0]), int(s[1] - s[0]), int(rows[0, 0, 0]), int(cols[0, 0, 0])


def direct(volume: np.ndarray, axis: str, s: int, r0: int, c0: int, p: int = P) -> np.ndarray:
    """The (p, p) slice at sequence coordinate ``s`` by plain numpy indexing (rows/cols in z, y, x order)."""
    rr, cc = slice(r0, r0 + p), slice(c0, c0 + p)
    index = {"z": (s, rr, cc), "y": (rr, s, cc), "x": (rr, cc, s)}[axis]
    return volume[index]


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_shapes_and_depths(coords, factor):
    s = sampler(coords, factor=factor)
    for valid in (False, True):
        b = s.sample(3, valid=valid)
        assert isinstance(b, WindowBatch)
        assert b.window.shape == (3, 1, 4, P, P) and b.window.dtype == torch.float32
        assert b.target.shape == (3, factor - 1, P, P) and b.target.dtype == torch.float32
        torch.testing.assert_close(b.depths, torch.arange(1, factor, dtype=torch.float32) / factor)


def test_scale_maps_to_unit_range(coords):
    volume = (coords % 256).astype(np.uint8)
    b = WindowSampler(volume, R, P, ("z", "y", "x"), scale=255.0).sample(4)
    assert 0.0 <= float(b.window.min()) and float(b.window.max()) <= 1.0
    assert float(b.window.max()) > 0.5


def test_validation_windows_are_the_right_slices(coords):
    """Un-augmented windows: slices at s, s+r, s+2r, s+3r; targets the r-1 slices between s+r and s+2r."""
    s = sampler(coords)
    seen = set()
    for batch in s.validation_set(48, 8):
        for w, t in zip(batch.window[:, 0], batch.target):
            axis, s0, step, r0, c0 = locate(w)
            seen.add(axis)
            assert step == R
            for k in range(4):
                np.testing.assert_array_equal(w[k].numpy(), direct(coords, axis, s0 + k * R, r0, c0))
            for k in range(1, R):
                np.testing.assert_array_equal(t[k - 1].numpy(), direct(coords, axis, s0 + R + k, r0, c0))
    assert seen == {"z", "y", "x"}


def test_augmented_training_windows_stay_consistent(coords):
    """Flips, transposes and reversal move whole windows: four slices r apart along one axis, and the
    targets are the slices between the middle two, in order."""
    s = sampler(coords)
    for _ in range(6):
        b = s.sample(8)
        for w, t in zip(b.window[:, 0], b.target):
            axis, s0, step, _, _ = locate(w)
            assert step in (R, -R)
            a = "zyx".index(axis)
            seq_w = decode(w)[a][:, 0, 0]
            seq_t = decode(t)[a]
            np.testing.assert_array_equal(seq_w, s0 + step * np.arange(4))
            for k in range(R - 1):
                assert np.all(seq_t[k] == seq_w[1] + np.sign(step) * (k + 1))
            # the in-plane content of every slice is the same p x p patch, possibly flipped or transposed
            others = [decode(w)[i] for i in range(3) if i != a]
            assert all(np.unique(o).size == P for o in others)


def test_validation_never_touches_a_training_voxel(coords):
    s = sampler(coords)
    split = split_of(SHAPE[2])
    train_x = np.concatenate([decode(torch.cat([b.window.flatten(), b.target.flatten()]))[2]
                              for b in (s.sample(16) for _ in range(10))])
    val_x = np.concatenate([decode(torch.cat([b.window.flatten(), b.target.flatten()]))[2]
                            for b in s.validation_set(160, 16)])
    assert train_x.max() < split <= val_x.min()
    assert s.parts[True].shape[2] == SHAPE[2] - split


def test_validation_set_is_fixed(coords):
    a = sampler(coords, seed=1).validation_set(16, 4)
    b = sampler(coords, seed=2).validation_set(16, 4)
    assert len(a) == 4
    for x, y in zip(a, b):
        assert torch.equal(x.window, y.window) and torch.equal(x.target, y.target)


def test_isotropic_axes_include_z_pseudo_isotropic_only_lateral(coords):
    iso = sampler(coords, axes=("z", "y", "x"))
    pseudo = sampler(coords, axes=("y", "x"))
    assert iso.axes[False] == ("z", "y", "x")
    assert pseudo.axes[False] == pseudo.axes[True] == ("y", "x")

    def used(s: WindowSampler) -> set[str]:
        return {locate(w)[0] for _ in range(8) for w in s.sample(8).window[:, 0]}

    assert used(iso) == {"z", "y", "x"}
    assert used(pseudo) == {"y", "x"}


def test_an_axis_too_short_for_a_window_is_dropped(coords):
    """Z of 12 slices holds no 13-slice window at r = 4: an isotropic sampler falls back to Y and X; the
    held-out slab (10 px of X) holds no X sequence either, so validation uses Y alone."""
    s = sampler(coords[:12], patch=8)
    assert s.axes[False] == ("y", "x")
    assert s.axes[True] == ("y",)
    assert {locate(w)[0] for w in s.sample(16, valid=True).window[:, 0]} == {"y"}


@pytest.mark.parametrize("shape, axes, factor, patch", [
    ((12, 48, 64), ("z",), 4, 16),  # 12 slices, 13 needed
    ((40, 12, 12), ("z", "y", "x"), 4, 16),  # no 16 px patch anywhere
    ((40, 20, 64), ("y", "x"), 8, 16),  # 25 slices: Y is too short, and so is the held-out X slab (16)
])
def test_too_small_volume_is_refused(coords, shape, axes, factor, patch):
    volume = coords[: shape[0], : shape[1], : shape[2]]
    with pytest.raises(ValueError, match="holds no"):
        WindowSampler(volume, factor, patch, axes, scale=1.0)


# -- the naive lateral baseline: windows along Y/X of the anisotropic stack itself -------------------------

ANISO = (6, 48, 64)  # a stack of 6 coarse slices: rows and columns are at the fine pitch


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in ANISO), indexing="ij")
    return (z * 10_000 + y * 100 + x).astype(np.int32)


def test_lateral_windows_are_y_x_sequences_of_whole_coarse_planes(stack):
    s = sampler(stack, axes=("y", "x"), lateral=True)
    seen = set()
    for batch in s.validation_set(32, 8):
        assert batch.window.shape == (8, 1, 4, ANISO[0], P) and batch.target.shape == (8, R - 1, ANISO[0], P)
        for w, t in zip(batch.window[:, 0], batch.target):
            axis, s0, step, r0, c0 = locate(w)
            seen.add(axis)
            assert step == R and r0 == 0  # every plane holds all coarse Z slices
            for k in range(4):
                np.testing.assert_array_equal(w[k].numpy(), direct(stack, axis, s0 + k * R, 0, c0)[:, :P])
            for k in range(1, R):
                np.testing.assert_array_equal(t[k - 1].numpy(), direct(stack, axis, s0 + R + k, 0, c0)[:, :P])
    assert seen == {"y", "x"}
    for _ in range(4):  # augmented: flipped, never transposed (Z stays the rows)
        b = s.sample(8)
        z = decode(b.window)[0]
        assert np.all(np.unique(z, axis=-1).shape[-1] == 1)  # constant along each row: rows are Z
        assert sorted(np.unique(z)) == list(range(ANISO[0]))


def test_lateral_refuses_z_sequences(stack):
    with pytest.raises(ValueError, match="lateral windows run along y/x"):
        sampler(stack, axes=("z", "y", "x"), lateral=True)


def test_a_narrow_volume_keeps_every_training_axis():
    """100 columns and 56 px patches: a patch-wide held-out slab would leave 44 columns, too few for Z and Y
    windows, so the slab is the plain 15 % (15 columns, enough for 13-slice X sequences) and training keeps
    Z, Y and X.  Validation never touches a training column either way."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in (60, 60, 100)), indexing="ij")
    vol = (z * 10_000 + y * 100 + x).astype(np.int32)
    s = WindowSampler(vol, R, 56, ("z", "y", "x"), scale=1.0)
    assert s.axes[False] == ("z", "y", "x") and s.axes[True] == ("x",)
    assert s.parts[False].shape[2] == 85
    train_x = decode(s.sample(8).window)[2]
    val_x = decode(s.sample(8, valid=True).window)[2]
    assert train_x.max() < 85 <= val_x.min()

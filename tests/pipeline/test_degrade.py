"""The axial degradation of the D2R prior on real FIB-SEM slices: mu is exactly the cubic method's output on an
XZ/YZ slice, kept rows are copies, augmentation comes before degradation, noise is off unless asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isovol.pipeline.degrade import (
    DIHEDRAL,
    add_noise,
    augment,
    decimate_z,
    degrade_rows,
    dihedral,
    patch_rows,
    transposes,
    undo_dihedral,
    upsample_rows,
)
from isovol.pipeline.methods.base import upsample_array
from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows.demo_data import load_crop


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return load_crop()[0]  # (129, 128, 128) uint8, 10 nm isotropic


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_degrading_an_xy_like_slice_is_the_cubic_method_on_a_real_xz_slice(crop, factor):
    """An XZ slice of the isotropic crop, rows kept every r, cubic back == ``--method cubic`` on the stack that
    kept every r-th Z slice: bit for bit in float32, and identical after the method's rounding to uint8."""
    low, length = decimate_z(crop, factor)
    cubic = upsample_array(low, factor, Interpolation("cubic"))  # (length, 128, 128) uint8
    cubic_f = upsample_array(low.astype(np.float32), factor, Interpolation("cubic"))
    for y in (0, 37, 127):
        xz = crop[:length, y, :]  # an XZ slice: Z rows, X columns
        mu = degrade_rows(xz, factor)
        assert mu.shape == xz.shape and mu.dtype == np.float32
        np.testing.assert_array_equal(np.clip(np.rint(mu), 0, 255).astype(np.uint8), cubic[:, y, :])
        np.testing.assert_array_equal(degrade_rows(xz.astype(np.float32), factor), cubic_f[:, y, :])
        # YZ slices too, and the recovery path: the same routine on the low-resolution rows alone
        np.testing.assert_array_equal(degrade_rows(crop[:length, :, y].astype(np.float32), factor), cubic_f[:, :, y])
        np.testing.assert_array_equal(upsample_rows(low[:, y, :], factor), mu)


def test_a_batch_of_tensors_equals_the_numpy_slices_and_phases_shift_the_grid(crop):
    factor = 4
    vol = torch.from_numpy(crop[:, 5:9, :].astype(np.float32) / 255).permute(1, 0, 2).unsqueeze(1)  # (4,1,129,128)
    for phase in range(factor):
        n = (vol.shape[2] - 1 - phase) // factor + 1
        rows = phase + (n - 1) * factor + 1
        mu = degrade_rows(vol[..., :rows, :], factor, phase)
        assert mu.shape == (4, 1, rows, 128) and mu.dtype == torch.float32
        for b in range(4):
            np.testing.assert_array_equal(mu[b, 0].numpy(), degrade_rows(vol[b, 0, :rows].numpy(), factor, phase))
        # from the first kept row on: the cubic method on the stack that kept slices phase, phase + r, ...
        stack = crop[phase::factor, 5:9, :].astype(np.float32) / 255
        expect = upsample_array(stack, factor, Interpolation("cubic")).transpose(1, 0, 2)
        np.testing.assert_array_equal(mu[:, 0, phase:].numpy(), expect)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_kept_rows_are_exact_copies(crop, dtype):
    img = (crop[40, :, :113] if dtype == np.uint8 else crop[40, :, :113] / dtype(255)).astype(dtype)
    for factor, phase in ((2, 0), (3, 2), (8, 0), (8, 5)):
        mu = degrade_rows(img, factor, phase)
        assert mu.shape == img.shape
        assert mu.dtype == (np.float64 if dtype == np.float64 else np.float32)
        np.testing.assert_array_equal(mu[phase::factor], img[phase::factor].astype(mu.dtype))
        # the interpolated rows do change (it is a degradation, not a copy)
        between = [y for y in range(img.shape[0]) if (y - phase) % factor]
        assert not np.array_equal(mu[between], img[between].astype(mu.dtype))


def test_rows_outside_the_kept_span_are_edge_replicated_extrapolation(crop):
    """Rows before ``phase`` and after the last kept row: the cubic kernel on edge-replicated kept rows (the
    padding the cubic method uses at a volume border); rows in between do not depend on them."""
    factor, phase = 4, 1
    img = crop[60, :31, :].astype(np.float32)  # kept rows 1, 5, ..., 29; rows 0 and 30 lie outside
    mu = degrade_rows(img, factor, phase)
    kept = img[phase::factor]
    padded = np.pad(kept[:, None], ((2, 3), (0, 0), (0, 0)), mode="edge")  # (z, y=1, x) for the method
    ref = Interpolation("cubic").apply(padded, factor, 2 * factor - phase, 2 * factor - phase + img.shape[0])
    np.testing.assert_array_equal(mu, ref[:, 0])
    span = degrade_rows(img[: phase + (len(kept) - 1) * factor + 1], factor, phase)
    np.testing.assert_array_equal(mu[: span.shape[0]], span)


def test_patch_rows_put_the_last_row_on_the_kept_grid():
    assert patch_rows(8, 129) == 129 and patch_rows(4, 129) == 129 and patch_rows(5, 129) == 126
    assert patch_rows(8, 128) == 121 and patch_rows(2, 2) == 1
    for factor in (2, 3, 8):
        rows = patch_rows(factor, 100)
        assert (rows - 1) % factor == 0 and rows <= 100 < rows + factor


def test_non_square_and_edge_cases(crop):
    img = torch.from_numpy(crop[7:9, :33, :57].astype(np.float32)).unsqueeze(1)  # (2, 1, 33, 57)
    assert degrade_rows(img, 8).shape == (2, 1, 33, 57)
    assert degrade_rows(img.transpose(-1, -2), 8).shape == (2, 1, 57, 33)
    assert degrade_rows(crop[0, :9, :5], 8).shape == (9, 5)  # the smallest: two kept rows
    with pytest.raises(ValueError, match="keeps fewer than 2 rows.*at least 9 rows"):
        degrade_rows(crop[0, :8], 8)
    with pytest.raises(ValueError, match="at least 11 rows"):
        degrade_rows(crop[0, :10], 8, phase=2)
    with pytest.raises(ValueError, match=r"phase must lie in \[0, 4\)"):
        degrade_rows(crop[0], 4, phase=4)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="factor must be an integer >= 2"):
            degrade_rows(crop[0], bad)
    with pytest.raises(ValueError, match="expected an image"):
        degrade_rows(crop[0, 0], 2)
    with pytest.raises(ValueError, match="at least 2 rows"):
        upsample_rows(crop[0, :1], 4)


def test_augmentation_is_the_eight_symmetries_and_each_is_undone(crop):
    img = crop[11, :33, :50]  # non-square, real
    seen = set()
    for code in range(len(DIHEDRAL)):
        out = dihedral(img, code)
        assert out.shape == ((50, 33) if transposes(code) else (33, 50))
        np.testing.assert_array_equal(undo_dihedral(out, code), img)
        t = torch.from_numpy(img.copy()).reshape(1, 1, 33, 50)
        np.testing.assert_array_equal(dihedral(t, code)[0, 0].numpy(), out)
        np.testing.assert_array_equal(undo_dihedral(dihedral(t, code), code), t)
        seen.add(out.tobytes() + bytes(out.shape))
    assert len(seen) == 8, "the eight symmetries are distinct on a real image"
    rng = np.random.default_rng(3)
    drawn = set()
    for _ in range(200):
        out = augment(img, rng)
        drawn.add(out.tobytes() + bytes(out.shape))
    assert drawn == seen, "augment draws every symmetry, and nothing else"


def test_augment_before_degrade_picks_the_degraded_axis(crop):
    """With a transposing symmetry applied first, the degradation hits the image's columns: undoing the
    symmetry afterwards gives the column-degraded image, with the kept columns exact."""
    img = crop[90, :41, :41].astype(np.float32)
    for code in range(len(DIHEDRAL)):
        restored = undo_dihedral(degrade_rows(np.ascontiguousarray(dihedral(img, code)), 8), code)
        assert restored.shape == img.shape
        if transposes(code):
            kept = slice(None, None, 8) if not DIHEDRAL[code][1] else slice(40, None, -8)
            np.testing.assert_array_equal(restored[:, kept], img[:, kept])
            if code == 4:  # transpose only
                np.testing.assert_array_equal(restored, degrade_rows(img.T, 8).T)
        else:
            np.testing.assert_array_equal(restored[::8], img[::8])


def test_noise_is_off_by_default_and_poisson_gaussian_when_asked(crop):
    img = crop[20].astype(np.float32) / 255
    assert add_noise(img) is img
    t = torch.from_numpy(img)
    assert add_noise(t, 0.0, 0.0, np.random.default_rng(0)) is t
    alpha, sigma = 0.01, 0.02
    for x in (img, t):
        a = add_noise(x, alpha, sigma, np.random.default_rng(1))
        b = add_noise(x, alpha, sigma, np.random.default_rng(1))
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(a, b)  # the same generator state, the same noise
        err = (a - img).astype(np.float64)
        assert abs(err.mean()) < 3e-3
        # signal-dependent variance alpha * x + sigma^2 (D2R eq. 15), checked on dark and bright halves
        for sel in (img < np.median(img), img >= np.median(img)):
            expect = alpha * img[sel].mean() + sigma**2
            assert 0.85 < err[sel].var() / expect < 1.15
    with pytest.raises(ValueError, match=">= 0"):
        add_noise(img, -1.0)

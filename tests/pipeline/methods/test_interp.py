"""Classical Z interpolation against independent references, and the blockwise bit-exactness invariant."""

import numpy as np
import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.methods import Halo, Method, get_method, upsample_array
from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows.demo_data import load_crop

KINDS = ("nearest", "linear", "cubic")
FACTORS = (2, 3, 4, 8, 10)


@pytest.fixture(scope="module")
def crop():
    vol, _ = load_crop()
    return vol[:, :40, :48]


def positions(n, r):
    """Input position z / r of every output slice, and its integer part and fraction (float64)."""
    z = np.arange((n - 1) * r + 1)
    i = z // r
    return z, i, (z - i * r) / r


def ref_linear(vol, r):
    _, i, t = positions(vol.shape[0], r)
    v = vol.astype(np.float64)
    nxt = np.minimum(i + 1, vol.shape[0] - 1)
    t = t[:, None, None]
    return (1 - t) * v[i] + t * v[nxt]


def ref_cubic(vol, r):
    """Catmull-Rom (== Keys a = -0.5) in polynomial form, edge-replicated taps, float64."""
    n = vol.shape[0]
    _, i, t = positions(n, r)
    v = vol.astype(np.float64)
    p0, p1, p2, p3 = (v[np.clip(i + k, 0, n - 1)] for k in (-1, 0, 1, 2))
    t = t[:, None, None]
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                  + (3 * p1 - p0 - 3 * p2 + p3) * t**3)


def to_uint8(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def assert_within_one_grey_level(got, ref_float):
    """|got - round(ref)| <= 1 everywhere, and equal almost everywhere (float32 vs float64 rounding ties)."""
    diff = np.abs(got.astype(np.int16) - to_uint8(ref_float).astype(np.int16))
    assert diff.max() <= 1
    assert np.mean(diff == 0) > 0.99


@pytest.mark.parametrize("r", FACTORS)
@pytest.mark.parametrize("kind", KINDS)
def test_kept_slices_are_exact_copies_and_shape_follows_convention(crop, kind, r):
    """Guards against shifting the grid (input slice i must land at output z = i*r) or altering kept slices."""
    low = crop[::8]
    out = upsample_array(low, r, Interpolation(kind))
    assert out.shape == ((low.shape[0] - 1) * r + 1,) + low.shape[1:]
    assert out.dtype == low.dtype
    np.testing.assert_array_equal(out[::r], low)


@pytest.mark.parametrize("r", FACTORS)
def test_linear_float64_equals_np_interp_per_voxel(r):
    """Guards against wrong linear weights (e.g. t and 1-t swapped, or t measured from the wrong slice)."""
    rng = np.random.default_rng(r)
    vol = rng.normal(size=(7, 5, 6)) * 100
    out = upsample_array(vol, r, Interpolation("linear"))
    z, _, _ = positions(vol.shape[0], r)
    for y in range(vol.shape[1]):
        for x in range(vol.shape[2]):
            expected = np.interp(z / r, np.arange(vol.shape[0]), vol[:, y, x])
            np.testing.assert_allclose(out[:, y, x], expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("r", FACTORS)
def test_linear_uint8_matches_closed_form_within_rounding(crop, r):
    """Guards against truncation instead of rounding, or arithmetic done in uint8 (wraparound)."""
    low = crop[::8]
    out = upsample_array(low, r, Interpolation("linear"))
    assert_within_one_grey_level(out, ref_linear(low, r))


@pytest.mark.parametrize("r", [2, 3, 4, 5, 8])
def test_nearest_rounds_half_up_to_the_later_slice(r):
    """Guards against the tie rule flipping (t = 0.5 must go to slice i+1) or an off-by-one phase."""
    vol = np.arange(6, dtype=np.uint8).repeat(4).reshape(6, 2, 2) * 10
    out = upsample_array(vol, r, Interpolation("nearest"))
    z = np.arange(out.shape[0])
    expected_slice = np.floor(z / r + 0.5).astype(int)  # round half up
    np.testing.assert_array_equal(out, vol[expected_slice])
    if r % 2 == 0:
        assert out[r // 2, 0, 0] == vol[1, 0, 0]
        assert out[r // 2 - 1, 0, 0] == vol[0, 0, 0]


@pytest.mark.parametrize("r", FACTORS)
def test_cubic_float64_equals_independent_keys_reference(r):
    """Guards against wrong Keys weights (a != -0.5), wrong tap order, or non-replicate edge handling."""
    rng = np.random.default_rng(100 + r)
    vol = rng.normal(size=(9, 4, 5)) * 50
    out = upsample_array(vol, r, Interpolation("cubic"))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref_cubic(vol, r), rtol=0, atol=1e-11)


@pytest.mark.parametrize("r", FACTORS)
def test_cubic_uint8_real_data_matches_reference_within_one_grey_level(crop, r):
    """Guards against float32 accumulation or rounding errors beyond one grey level on real EM data."""
    low = crop[::8]
    out = upsample_array(low, r, Interpolation("cubic"))
    assert_within_one_grey_level(out, ref_cubic(low, r))


@pytest.mark.parametrize("r", [2, 4, 8])
def test_cubic_reproduces_quadratics_in_the_interior(r):
    """Guards against a kernel that is not Keys a=-0.5 (only that choice reproduces degree-2 polynomials)."""
    n = 10
    zz = np.arange(n, dtype=np.float64)[:, None, None]
    yy = np.arange(3, dtype=np.float64)[None, :, None]
    xx = np.arange(4, dtype=np.float64)[None, None, :]
    f = lambda s: 3.0 + 0.7 * s - 0.45 * s**2 + yy * s + 0.1 * xx * s**2  # noqa: E731
    vol = np.broadcast_to(f(zz), (n, 3, 4)).copy()
    out = upsample_array(vol, r, Interpolation("cubic"))
    z = np.arange(r, (n - 2) * r + 1)  # all four taps inside the volume
    expected = f(z[:, None, None] / r)
    np.testing.assert_allclose(out[z], expected, rtol=0, atol=1e-10)
    # linear does not, which shows this test can tell the kernels apart
    lin = upsample_array(vol, r, Interpolation("linear"))
    assert np.abs(lin[z] - expected).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_output_dtype_equals_input_dtype(kind, dtype):
    """Guards against returning float results (or float64 for float32) that change the output array's type."""
    vol = (np.arange(4 * 3 * 3) % 17).reshape(4, 3, 3).astype(dtype)
    out = Interpolation(kind).apply(np.pad(vol, ((1, 2), (0, 0), (0, 0)), mode="edge"), 4, 4, 4 + 13)
    assert out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_cubic_overshoot_is_clipped_not_wrapped(dtype):
    """Guards against integer wraparound: a step edge overshoots below min and above max of the dtype."""
    info = np.iinfo(dtype)
    col = np.array([info.min] * 4 + [info.max] * 4, dtype=np.float64)
    vol = np.broadcast_to(col[:, None, None], (8, 2, 2)).astype(dtype)
    ref = ref_cubic(vol, 4)
    assert ref.min() < info.min and ref.max() > info.max  # the case really overshoots
    out = upsample_array(vol, 4, Interpolation("cubic"))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out[ref <= info.min], info.min)
    np.testing.assert_array_equal(out[ref >= info.max], info.max)
    expected = np.clip(np.rint(ref), info.min, info.max)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1


def padded_stack(vol, halo_z):
    return np.pad(vol, ((halo_z, halo_z + 1), (0, 0), (0, 0)), mode="edge")


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("r", FACTORS)
@pytest.mark.parametrize("kind", KINDS)
def test_any_sub_range_is_bit_exact_with_the_whole_call(crop, kind, r, dtype):
    """Guards the blockwise invariant: a block computed alone (sub-range, sub-stack) equals the whole call."""
    method = Interpolation(kind)
    low = crop[::16, :16, :16].astype(dtype)
    if dtype == np.float32:
        low = low / np.float32(7.3)
    hz = method.halo.z
    stack = padded_stack(low, hz)
    first, total = hz * r, (hz + low.shape[0] - 1) * r + 1  # the range whose taps all lie in the stack
    whole = method.apply(stack, r, first, total)
    rng = np.random.default_rng(r)
    ranges = [(s, s + 1) for s in range(first, total)]
    ranges += [tuple(sorted(rng.choice(np.arange(first, total + 1), 2, replace=False))) for _ in range(40)]
    for start, stop in ranges:
        np.testing.assert_array_equal(method.apply(stack, r, start, stop), whole[start - first:stop - first])
        # the stack a block would read: just the slices its output needs, plus the halo
        a = max(start // r - method.halo.z, 0)
        b = min(-(-(stop - 1) // r) + 1 + method.halo.z, stack.shape[0])
        part = method.apply(stack[a:b], r, start - a * r, stop - a * r)
        np.testing.assert_array_equal(part, whole[start - first:stop - first],
                                      err_msg=f"[{start}, {stop}) from stack[{a}:{b}]")


def test_upsample_array_is_the_unpadded_centre_of_a_padded_call():
    """Guards against upsample_array cropping the Y/X halo on the wrong side for methods that declare one."""

    class BlurX(Method):
        """Linear along Z, then a 3-tap [1, 2, 1]/4 filter along X (needs an X halo of 1); returns the core
        without the Y/X halo, as the Method contract says."""

        name = "blurx"
        halo = Halo(z=0, y=2, x=1)

        def apply(self, data, factor, start, stop):
            z = Interpolation("linear").apply(data.astype(np.float64), factor, start, stop)
            blurred = (z[:, :, :-2] + 2 * z[:, :, 1:-1] + z[:, :, 2:]) / 4
            return blurred[:, self.halo.y : -self.halo.y, :]

    vol = np.random.default_rng(0).normal(size=(5, 6, 7))
    out = upsample_array(vol, 3, BlurX())
    z = ref_linear(vol, 3)
    zp = np.pad(z, ((0, 0), (0, 0), (1, 1)), mode="edge")
    expected = (zp[:, :, :-2] + 2 * zp[:, :, 1:-1] + zp[:, :, 2:]) / 4
    assert out.shape == (13, 6, 7)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_halo_and_config():
    """Guards against cubic losing its Z halo (block edges would read the wrong taps) or config drifting."""
    assert Interpolation("cubic").halo == Halo(z=1)
    assert Interpolation("linear").halo == Halo() and Interpolation("nearest").halo == Halo()
    assert Interpolation("cubic").config()["kernel"] == "keys a=-0.5"
    assert Interpolation("cubic").deterministic


def test_unknown_kinds_are_refused():
    """Guards against a typo in --method silently falling back to some default."""
    with pytest.raises(ValueError):
        Interpolation("bicubic")
    with pytest.raises(InputError, match="nearest, linear, cubic"):
        get_method("bicubic")
    assert isinstance(get_method("cubic"), Interpolation)
    with pytest.raises(ValueError, match="z, y, x"):
        Interpolation("linear").apply(np.zeros((4, 4)), 2, 0, 3)

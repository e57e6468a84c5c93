"""Per-plane PSNR/SSIM as the evaluation protocol defines them."""

import numpy as np
import pytest

from isovol.pipeline.metrics import PSNR_CAP, data_range, fsc, fsc_resolution, plane_scores, psnr, ssim
from isovol.workflows.demo_data import load_crop


@pytest.fixture(scope="module")
def crop():
    vol, _ = load_crop()
    return vol[:33, :48, :40]


def test_data_range_follows_dtype():
    """Guards against scoring uint8 with range 1 or float with 255 (shifts every PSNR by 48 dB)."""
    assert data_range(np.uint8) == 255 and data_range(np.uint16) == 65535
    assert data_range(np.int16) == 65535
    assert data_range(np.float32) == 1.0


def test_psnr_of_identical_images_is_the_documented_cap(crop):
    """Guards against inf/nan in tables when a plane is reproduced exactly."""
    assert psnr(crop[0], crop[0], 255) == PSNR_CAP == 100.0


@pytest.mark.parametrize("delta, frac", [(1, 1.0), (10, 0.25), (3, 0.5)])
def test_psnr_matches_closed_form_for_a_known_mse(crop, delta, frac):
    """Guards against a wrong formula (e.g. 20*log10 of MSE, or range 256)."""
    ref = crop[5].astype(np.int16)
    test = ref.copy()
    n = int(round(frac * ref.size))
    test.flat[:n] += delta
    mse = delta**2 * n / ref.size
    assert psnr(ref, test, 255) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)


def test_psnr_is_symmetric_and_uses_float_arithmetic():
    """Guards against uint8 subtraction wrapping around (0 - 255 == 1 in uint8)."""
    a = np.zeros((8, 8), np.uint8)
    b = np.full((8, 8), 255, np.uint8)
    assert psnr(a, b, 255) == pytest.approx(0.0, abs=1e-12)
    assert psnr(b, a, 255) == psnr(a, b, 255)


def test_ssim_identical_is_one_and_degrades_with_noise(crop):
    """Guards against an SSIM that does not peak at 1 for identical images or ignores differences."""
    img = crop[3]
    assert ssim(img, img, 255) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 20, img.shape), 0, 255)
    s = ssim(img, noisy, 255)
    assert 0 < s < 0.95
    assert ssim(img, np.clip(img + np.random.default_rng(0).normal(0, 5, img.shape), 0, 255), 255) > s


def test_ssim_is_invariant_to_nothing_it_should_not_be(crop):
    """Guards against a mean-only comparison: a shifted copy has the same histogram but lower SSIM."""
    img = crop[3].astype(np.float64)
    assert ssim(img, np.roll(img, 3, axis=1), 255) < 0.9


def test_plane_scores_xy_uses_only_synthesised_slices(crop):
    """Guards against kept slices entering the XY mean (they are exact copies and inflate the score)."""
    r = 4
    ref = crop
    test = ref.copy()
    test[::r] = 255 - test[::r]  # kept slices ruined, synthesised slices perfect
    scores = plane_scores(ref, test, r)
    assert scores["XY"]["psnr"] == PSNR_CAP and scores["XY"]["ssim"] == pytest.approx(1.0)
    assert scores["XZ"]["psnr"] < 30 and scores["YZ"]["psnr"] < 30  # XZ/YZ see every plane
    test = ref.copy()
    test[1::r] = 255 - test[1::r]  # one synthesised phase ruined
    scores = plane_scores(ref, test, r)
    ruined = np.mean([psnr(ref[z], test[z], 255) for z in range(1, ref.shape[0], r)])
    assert ruined < 30
    assert scores["XY"]["psnr"] == pytest.approx((ruined + 2 * PSNR_CAP) / 3)  # phases 1, 2, 3 of r = 4


def test_plane_scores_average_per_plane(crop):
    """Guards against pooling the whole volume's MSE instead of averaging per-plane PSNR."""
    r = 2
    ref = crop[:9]
    test = ref.astype(np.int16)
    test[1] += 1  # only synthesised slice 1 differs, by one grey level everywhere
    scores = plane_scores(ref, test.astype(ref.dtype), r, with_ssim=False)
    n_synth = 4  # z = 1, 3, 5, 7
    expected = (10 * np.log10(255**2 / 1.0) + (n_synth - 1) * PSNR_CAP) / n_synth
    assert scores["XY"]["psnr"] == pytest.approx(expected)
    assert "ssim" not in scores["XY"]
    assert set(scores) == {"XY", "XZ", "YZ"}


def test_plane_scores_refuses_mismatched_shapes(crop):
    """Guards against silently broadcasting a volume of the wrong length against the reference."""
    with pytest.raises(ValueError, match="shapes differ"):
        plane_scores(crop[:9], crop[:10], 2)


# -- FSC against closed forms (white noise: flat power, so a shell's correlation is a fraction of its voxels) --

N = 64  # cube side: 32 shells of width 1/64 cycles per voxel


def _noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, N, N))


def _filter(vol: np.ndarray, keep: np.ndarray, fill_seed: int | None = None) -> np.ndarray:
    """Keep the Fourier coefficients where ``keep``; elsewhere zero, or independent noise of the same power."""
    f = np.fft.fftn(vol)
    other = np.fft.fftn(_noise(fill_seed)) if fill_seed is not None else 0.0
    return np.fft.ifftn(np.where(keep, f, other)).real


def _k() -> tuple[np.ndarray, np.ndarray]:
    kz, ky, kx = np.meshgrid(*[np.fft.fftfreq(N)] * 3, indexing="ij")
    return np.abs(kz), np.sqrt(kz * kz + ky * ky + kx * kx)


@pytest.mark.parametrize("window,axial", [(True, False), (False, False), (True, True)])
def test_fsc_of_a_volume_with_itself_reaches_nyquist(crop, window, axial):
    v = crop.astype(np.float64)
    freq, curve = fsc(v, v.copy(), 10.0, window=window, axial=axial)
    assert np.allclose(curve, 1.0)
    assert fsc_resolution(freq, curve) == pytest.approx(1 / freq[-1])
    assert 20.0 <= 1 / freq[-1] <= 20.0 * 1.05  # Nyquist: two 10 nm voxels (last shell centre)


def test_fsc_ideal_isotropic_low_pass_cuts_at_its_radius():
    kc = 0.2  # cycles per voxel: period 5 voxels
    v = _noise()
    _, rad = _k()
    freq, curve = fsc(v, _filter(v, rad < kc), window=False)
    inside, outside = (freq > 1 / N) & (freq < kc - 1 / N), freq > kc + 1 / N  # shell 0 holds only the mean
    assert np.all(curve[inside] > 0.999) and np.all(np.abs(curve[outside]) < 0.1)  # round-off over round-off
    assert fsc_resolution(freq, curve) == pytest.approx(1 / kc, rel=0.05)
    _, hann = fsc(v, _filter(v, rad < kc), window=True)  # the window smears the edge by about two shells
    assert fsc_resolution(freq, hann) == pytest.approx(1 / kc, rel=0.1)


def test_fsc_of_axial_decimation_follows_the_shell_fraction():
    """Keeping |k_z| < k0 keeps a fraction k0/|k| of each shell: the 3-D curve is sqrt(k0/|k|) when the rest is
    removed (crossing 0.5 at 4 k0) and k0/|k| when it is filled with uncorrelated power, as aliasing does
    (crossing at 2 k0: interpolation at r = 8 reads 8 voxels).  The axial curve cuts at k0 itself."""
    k0 = 1 / 16  # Nyquist of every 8th slice
    v = _noise()
    kz, _ = _k()
    removed, aliased = _filter(v, kz < k0), _filter(v, kz < k0, fill_seed=1)
    band = np.unique(kz[kz < k0]).size * 2 - 1  # k_z planes kept: 7 of 64, so the band's half-width is
    k0 = band / (2 * N)  # 3.5 / 64 cycles per voxel on this grid
    freq, curve = fsc(v, removed, window=False)
    far = freq > 2 * k0
    assert np.allclose(curve[far], np.sqrt(k0 / freq[far]), atol=0.06)
    assert fsc_resolution(freq, curve) == pytest.approx(1 / (4 * k0), rel=0.08)
    freq, curve = fsc(v, aliased, window=False)
    assert np.allclose(curve[far], k0 / freq[far], atol=0.06)
    assert fsc_resolution(freq, curve) == pytest.approx(1 / (2 * k0), rel=0.08)
    freq, curve = fsc(v, aliased, window=False, axial=True)
    assert np.all(curve[(freq > 1 / N) & (freq < k0 - 1 / N)] > 0.999)
    assert np.all(np.abs(curve[freq > k0 + 1 / N]) < 0.1)
    assert fsc_resolution(freq, curve) == pytest.approx(16.0, rel=0.05)  # between planes 3/64 (kept) and 4/64


def test_fsc_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        fsc(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))

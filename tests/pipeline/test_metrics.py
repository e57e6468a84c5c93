"""Per-plane PSNR/SSIM as the evaluation protocol defines them."""

import numpy as np
import pytest

from isovol.pipeline.metrics import PSNR_CAP, data_range, plane_scores, psnr, ssim
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

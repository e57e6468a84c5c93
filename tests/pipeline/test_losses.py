"""DGEAN losses: identities of SSIM / FFL / Gini, the perceptual distances, LPIPS loading, the total."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from isovol.pipeline.losses import (
    DGEANLoss,
    FilterBankDistance,
    LPIPSAlex,
    _gaussian_1d,
    _separable,
    continuity_loss,
    focal_frequency_loss,
    gini,
    load_lpips,
    ssim,
)
from isovol.workflows.demo_data import load_crop


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    """Nine consecutive real FIB-SEM slices, 64 x 64, in [0, 1]."""
    volume, _ = load_crop()
    return torch.from_numpy(volume[56:65, 20:84, 30:94].astype(np.float32) / 255.0)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = _gaussian_1d(sigma, max(1, int(np.ceil(3 * sigma))), 0, x.dtype, x.device)
    return _separable(x.unsqueeze(1), g, g)[:, 0]


def test_ssim_is_one_for_identical_images_and_drops_with_degradation(slices):
    x = slices[:4]
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, _blur(x, 2.0)) < ssim(x, _blur(x, 1.0)) < 1
    small = slices[:2, :7, :9]  # smaller than the window: falls back to the largest odd window
    assert ssim(small, small).item() == pytest.approx(1.0, abs=1e-6)
    p = _blur(x, 1.0).requires_grad_()
    (1 - ssim(p, x)).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_focal_frequency_loss_zero_for_identical_and_grows_with_blur(slices):
    x = slices[:4]
    assert focal_frequency_loss(x, x).item() == 0.0
    assert 0 < focal_frequency_loss(_blur(x, 1.0), x) < focal_frequency_loss(_blur(x, 2.0), x)
    p = _blur(x, 1.0).requires_grad_()
    focal_frequency_loss(p, x).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_gini_of_equal_values_is_zero_and_of_one_hot_is_n_minus_1_over_n(n):
    assert gini(torch.full((n,), 0.7)).item() == pytest.approx(0.0, abs=1e-7)
    one_hot = torch.zeros(n)
    one_hot[n // 2] = 3.0
    assert gini(one_hot).item() == pytest.approx((n - 1) / n, rel=1e-6)
    assert gini(torch.zeros(n)).item() == 0.0
    batch = torch.stack([torch.ones(n), one_hot])  # over the last dim
    assert gini(batch).shape == (2,)


def test_filter_bank_distance_zero_for_identical_and_larger_for_blurrier(slices):
    p = FilterBankDistance()
    x = slices[:3]
    torch.testing.assert_close(p(x, x), torch.zeros(3))
    d1, d2, d3 = p(x, _blur(x, 1.0)), p(x, _blur(x, 2.0)), p(x, _blur(x, 3.0))
    assert (0 < d1).all() and (d1 < d2).all() and (d2 < d3).all()
    torch.testing.assert_close(p(x, _blur(x, 2.0)), p(_blur(x, 2.0), x))  # symmetric
    assert p(x, x + 0.1).max() < 1e-6  # a brightness offset is not a structural change


def test_continuity_penalises_uneven_steps_more_than_even_ones(slices):
    first, last = slices[:1], slices[8:9]
    t = torch.arange(1, 8).reshape(1, 7, 1, 1) / 8
    even = first[:, None] * (1 - t) + last[:, None] * t  # a linear blend: equal-sized steps
    jump = torch.cat([first[:, None].expand(1, 4, -1, -1), last[:, None].expand(1, 3, -1, -1)], dim=1)
    p = FilterBankDistance()
    c_even, c_jump = continuity_loss(first, even, last, p), continuity_loss(first, jump, last, p)
    # the jump puts all change into one of 8 steps: Gini = 7/8, the maximum; the blend is far more even
    assert c_jump["smoothness"].item() == pytest.approx(7 / 8, rel=1e-4)
    assert c_even["smoothness"] < 0.5 * c_jump["smoothness"]
    assert c_even["consistency"] < c_jump["consistency"]


def _lpips_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) * 0.05 for k, v in LPIPSAlex().state_dict().items()}


def test_lpips_loader_accepts_the_right_keys_and_refuses_wrong_ones(tmp_path, slices):
    tensors = _lpips_tensors()
    good = tmp_path / "lpips_alex.safetensors"
    save_file(tensors, str(good))
    model = load_lpips(good)
    for k, v in tensors.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    x = torch.stack([slices[0], slices[4]])
    y = torch.stack([slices[1], _blur(slices[4:5], 2.0)[0]])
    torch.testing.assert_close(model(x, x), torch.zeros(2))
    assert (model(x, y) > 0).all()

    # the reference LPIPS names are accepted as aliases
    reference = {(f"lin{k[3]}.model.1.weight" if k.startswith("lin") else k): v for k, v in tensors.items()}
    reference["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    alias = tmp_path / "reference_names.safetensors"
    save_file(reference, str(alias))
    torch.testing.assert_close(load_lpips(alias)(x, y), model(x, y))

    wrong_key = dict(tensors)
    wrong_key["lin5.weight"] = wrong_key.pop("lin4.weight")
    path = tmp_path / "wrong_key.safetensors"
    save_file(wrong_key, str(path))
    with pytest.raises(ValueError, match=r"missing \['lin4.weight'\].*unexpected \['lin5.weight'\]"):
        load_lpips(path)

    wrong_shape = dict(tensors)
    wrong_shape["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    path = tmp_path / "wrong_shape.safetensors"
    save_file(wrong_shape, str(path))
    with pytest.raises(ValueError, match="features.3.weight"):
        load_lpips(path)

    with pytest.raises(ValueError, match="at least 32"):
        model(x[:, :16, :16], y[:, :16, :16])


def test_total_loss_reports_each_term_and_weights_them(slices):
    first, last, target = slices[:1], slices[8:9], slices[1:8][None]
    loss = DGEANLoss()
    same = loss(target, target, first, last)
    assert same["l1"] == 0 and same["ffl"] == 0 and same["ssim"].abs() < 1e-6
    assert same["consistency"] > 0  # real slices do change along Z
    pred = (_blur(target[0], 1.0)[None]).requires_grad_()
    terms = loss(pred, target, first, last)
    assert set(terms) == {"l1", "ssim", "ffl", "consistency", "smoothness", "continuity", "total"}
    expected = terms["l1"] + terms["ssim"] + 100 * terms["ffl"] + 0.1 * (terms["consistency"] + terms["smoothness"])
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert torch.isfinite(pred.grad).all()
    no_cont = loss(pred.detach(), target)
    assert no_cont["continuity"] == 0

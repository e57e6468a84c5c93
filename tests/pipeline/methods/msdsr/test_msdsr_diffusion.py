"""MSDSR's diffusion: the cosine schedule, the row masks (kept rows clean in x_t at every step, the loss blind to
them), the parameterisations, and DDIM's reproducibility from its seeded noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isovol.pipeline.methods.d2r_prior.samplers import per_sample_noise
from isovol.pipeline.methods.msdsr import diffusion as D
from isovol.pipeline.methods.msdsr.network import build_denoiser

R = 8


class Spy(torch.nn.Module):
    """Records every network input; outputs a fixed function of it (so DDIM moves)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.clone(), t.clone()))
        return 0.3 * torch.tanh(x[:, :1] * 2)


def images(n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_the_cosine_schedule():
    ab = D.cosine_alpha_bar()
    assert ab.shape == (1000,) and bool((ab[1:] < ab[:-1]).all())
    assert 0.999 < float(ab[0]) < 1 and float(ab[-1]) < 1e-4
    betas = 1 - ab[1:] / ab[:-1]
    assert float(betas.max()) <= 0.999 + 1e-12


def test_training_masks_cover_the_keep_ratios():
    rng = np.random.default_rng(0)
    masks = D.train_masks(400, 48, R, rng)
    kept = masks.sum(dim=(1, 2, 3)).numpy()
    assert kept.min() >= round(48 / (R + 1)) and kept.max() <= 24
    assert kept.min() <= 7 and kept.max() >= 22, "the whole range 1/(r+1) .. 1/2 is drawn"
    positions = masks[:, 0, :, 0].sum(0)
    assert bool((positions > 0).all()), "kept rows anywhere"
    regular = D.train_masks(50, 48, R, np.random.default_rng(1), regular_fraction=1.0)
    for m in regular[:, 0, :, 0]:
        rows = torch.nonzero(m)[:, 0]
        steps = set((rows[1:] - rows[:-1]).tolist())
        assert len(steps) == 1 and 2 <= steps.pop() <= R + 1 and int(rows[0]) < R + 1


def test_kept_rows_are_exact_in_x_t_at_every_step_and_in_the_result():
    x0 = images()
    mask = D.regular_mask(16, 3, R)  # global rows 3..18: z = 8 and 16 kept (local rows 5 and 13)
    assert torch.nonzero(mask[0, 0, :, 0])[:, 0].tolist() == [5, 13]
    t = torch.tensor([999, 500, 1])
    x_t = D.q_sample(x0, t, torch.randn_like(x0), mask.expand(3, 1, 16, 1))
    assert torch.equal(x_t[:, :, [5, 13]], x0[:, :, [5, 13]])
    spy = Spy()
    out = D.ddim(spy, x0, mask, 7, per_sample_noise([1, 2, 3]), eta=1.0)
    assert len(spy.seen) == 7
    for x, _ in spy.seen:
        assert torch.equal(x[:, :1, [5, 13]], x0[:, :, [5, 13]]), "clean rows written into x_t"
        assert torch.equal(x[:, 1:, :, :], mask.expand(3, 1, 16, 16)), "the network sees the mask"
    assert [int(t[0]) for _, t in spy.seen] == D.ddim_timesteps(7)
    assert torch.equal(out[:, :, [5, 13]], x0[:, :, [5, 13]])
    assert not torch.equal(out[:, :, 6], x0[:, :, 6])


def test_the_loss_ignores_kept_rows():
    goal = images()
    mask = D.regular_mask(16, 0, R).expand(3, 1, 16, 1)
    pred = goal.clone().requires_grad_(True)
    off = pred + 5 * mask  # wrong on kept rows only
    loss = D.masked_l1(off, goal, mask)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(pred.grad.abs().sum()) == 0.0
    wrong = goal + 0.5 * (1 - mask)
    assert abs(float(D.masked_l1(wrong, goal, mask)) - 0.5) < 1e-6


@pytest.mark.parametrize("param", D.PARAMETERIZATIONS)
def test_an_oracle_network_recovers_x0_under_each_parameterization(param):
    x0, noise = images(), torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 400, 900])
    mask = torch.zeros(3, 1, 16, 1)
    x_t = D.q_sample(x0, t, noise, mask)

    class Oracle(torch.nn.Module):
        def forward(self, x, tt):
            return D.target(x0, noise, tt, param)

    est_x0, est_eps = D.predict(Oracle(), x_t, t, mask, param)
    assert torch.allclose(est_x0, x0, atol=1e-3) and torch.allclose(est_eps, noise, atol=1e-3)
    assert torch.allclose(D.denoise(Oracle(), x_t, t, parameterization=param), x0.clamp(-1, 1), atol=1e-3)


def test_ddim_is_reproducible_from_its_seeds():
    net = build_denoiser({"width": 8, "depth": 2, "blocks": 1})
    torch.nn.init.normal_(net.out.weight, std=0.2)
    x0, mask = images(), D.regular_mask(16, 0, R)
    for eta in (0.0, 1.0):
        a = D.ddim(net, x0, mask, 4, per_sample_noise([7, 8, 9]), eta)
        b = D.ddim(net, x0, mask, 4, per_sample_noise([7, 8, 9]), eta)
        c = D.ddim(net, x0, mask, 4, per_sample_noise([7, 8, 10]), eta)
        assert torch.equal(a, b)
        assert torch.equal(a[:2], c[:2]) and not torch.equal(a[2], c[2]), "each sample has its own seed"
    with pytest.raises(ValueError, match="DDIM steps must be in 1..1000"):
        D.ddim_timesteps(0)
    assert D.ddim_timesteps(1) == [999] and D.ddim_timesteps(5) == [999, 749, 500, 250, 0]


def test_interpolated_rows_are_linear_between_kept_rows():
    from isovol.pipeline.methods.lateral_regression.degrade import base_rows

    x = images(2, 17)
    mask = D.regular_mask(17, 0, R).expand(2, 1, 17, 1)
    got = D.interpolate_rows(x, mask)
    assert torch.allclose(got, base_rows(x[..., ::R, :], R, "linear"), atol=1e-6)
    odd = torch.zeros(1, 1, 17, 1)
    odd[0, 0, [3, 10]] = 1
    got = D.interpolate_rows(x[:1], odd)
    assert torch.equal(got[0, 0, :4], x[0, 0, 3].expand(4, -1))
    assert torch.equal(got[0, 0, 10:], x[0, 0, 10].expand(7, -1))
    assert torch.allclose(got[0, 0, 5], x[0, 0, 3] + 2 / 7 * (x[0, 0, 10] - x[0, 0, 3]))
    assert torch.equal(D.interpolate_rows(x[:1], torch.zeros(1, 1, 17, 1)), torch.zeros(1, 1, 17, 17))
    net = build_denoiser({"width": 8, "depth": 2, "blocks": 1, "linear": True})
    assert D.net_input(net, x, mask).shape == (2, 3, 17, 17)


@pytest.mark.parametrize("param", D.PARAMETERIZATIONS)
def test_ddim_with_an_oracle_network_returns_the_truth(param):
    """A network that knows x0 answers its parameterisation's target at every x_t: DDIM must land on x0."""
    x0 = images()

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            ab = D.alpha_bar(t).view(-1, 1, 1, 1)
            eps = (x[:, :1] - ab.sqrt() * x0) / (1 - ab).sqrt()
            return D.target(x0, eps, t, param)

    for steps in (1, 5, 20):
        out = D.ddim(Oracle(), x0, D.regular_mask(16, 0, R), steps, per_sample_noise([1, 2, 3]), eta=1.0,
                     parameterization=param)
        # eps at t = T-1 divides by sqrt(alpha-bar) ~ 1e-4: float32 noise is amplified there (why eps is poor
        # with few steps)
        tol = 1e-2 if (param, steps) == ("eps", 1) else 1e-3
        assert torch.allclose(out, x0, atol=tol), (param, steps, float((out - x0).abs().max()))


def test_an_untrained_residual_network_gives_linear_interpolation():
    """residual: the diffusion runs on x0 minus the linear interpolation; a zero output (the zero-initialised
    network) therefore lands on linear interpolation at one step, whatever the noise."""
    from isovol.pipeline.methods.lateral_regression.degrade import base_rows

    net = build_denoiser({"width": 8, "depth": 2, "blocks": 1, "linear": True, "residual": True})
    x0 = images(2, 16)[..., :16, :]
    mask = D.regular_mask(16, 0, R)
    out = D.ddim(net, x0, mask, 1, per_sample_noise([1, 2]), parameterization="v")
    lin = base_rows(x0[..., :9:R, :], R, "linear")
    assert torch.allclose(out[..., :9, :], lin, atol=1e-3)  # v = 0: x0 = sqrt(alpha-bar_T) x_T ~ 1e-4 noise
    assert torch.equal(out[..., [0, 8], :], x0[..., [0, 8], :])
    with pytest.raises(ValueError, match="residual needs linear"):
        build_denoiser({"width": 8, "depth": 2, "residual": True})

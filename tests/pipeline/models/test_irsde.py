"""IR-SDE: schedule, closed-form marginals against Monte Carlo and a fine Euler simulation, the OU bridge, the loss."""

import math

import numpy as np
import pytest
import torch

from isovol.pipeline.methods.d2r_prior.irsde import IRSDE, theta_schedule
from isovol.pipeline.methods.d2r_prior.nafnet import build_nafnet


@pytest.fixture(scope="module")
def pair(row_dropped) -> tuple[torch.Tensor, torch.Tensor]:
    return row_dropped(np.s_[10:14, :33, :40])


def _t(*steps: int) -> torch.Tensor:
    return torch.tensor(steps, dtype=torch.long)


def test_schedule_reaches_eps_and_max_sigma(sde):
    assert sde.T == 100
    assert sde.thetabar[0] == 0
    assert math.isclose(float(sde.decay(sde.T)), 0.005, rel_tol=1e-9)  # exp(-thetabar_T) = eps by choice of dt
    assert math.isclose(float(sde.std(sde.T)), 50 / 255 * math.sqrt(1 - 0.005**2), rel_tol=1e-6)
    assert math.isclose(sde.dt, 0.10409, rel_tol=1e-3)  # -ln(eps) / sum theta_1..T for the cosine schedule
    stds = sde.std(torch.arange(0, 101)).flatten()
    assert stds[0] == 0 and bool((stds[1:] > stds[:-1]).all())
    thetas = theta_schedule(100, "cosine")
    assert thetas.shape == (101,) and bool((thetas[1:] > thetas[:-1]).all()) and 0 < thetas[0] < thetas[-1] < 1
    for schedule in ("linear", "constant"):
        other = IRSDE(schedule=schedule)
        assert math.isclose(float(other.decay(other.T)), 0.005, rel_tol=1e-9)


def test_coefficients_broadcast_per_sample(sde, pair):
    x0, mu = pair
    t = _t(1, 10, 50, 100)
    assert sde.std(t).shape == (4, 1, 1, 1) and sde.std(t).dtype == torch.float32
    m = sde.mean(x0, mu, t)
    assert m.shape == x0.shape and m.dtype == torch.float32
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(m[i : i + 1], sde.mean(x0[i : i + 1], mu[i : i + 1], ti))
    torch.testing.assert_close(sde.mean(x0, mu, _t(0, 0, 0, 0)), x0)


def test_q_sample_moments_match_closed_form(sde):
    """Monte Carlo over 40k pixels per sample: the empirical mean/std of x_t equal m_t / std_t."""
    t = _t(1, 5, 20, 50, 100)
    x0 = torch.full((5, 1, 200, 200), 0.8)
    mu = torch.full_like(x0, 0.2)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = sde.q_sample(x0, mu, t, noise)
    n = 200 * 200
    mean, std = xt.mean((1, 2, 3)), xt.std((1, 2, 3))
    want_mean = sde.mean(x0, mu, t)[:, 0, 0, 0]
    want_std = sde.std(t).flatten()
    assert bool(((mean - want_mean).abs() < 5 * want_std / math.sqrt(n)).all())
    assert bool(((std / want_std - 1).abs() < 5 / math.sqrt(2 * n)).all())


def test_fine_euler_simulation_of_the_forward_sde_matches_closed_form(sde):
    """Integrate dx = theta (mu - x) dt + sigma dW with 20 Euler sub-steps per step (theta constant per step)."""
    gen = torch.Generator().manual_seed(1)
    x0, mu = 0.8, 0.2
    x = torch.full((1, 1, 250, 200), x0)
    mu_t = torch.full_like(x, mu)
    sub = 20
    checked = []
    for t in range(1, sde.T + 1):
        for _ in range(sub):
            x = sde.forward_step(x, mu_t, t, torch.randn(x.shape, generator=gen), dt=sde.dt / sub)
        if t in (10, 30, 60, 100):
            n = x.numel()
            want_mean = float(mu + (x0 - mu) * sde.decay(t))
            want_std = float(sde.std(t))
            assert abs(float(x.mean()) - want_mean) < 5 * want_std / math.sqrt(n) + 2e-3, t
            assert abs(float(x.std()) / want_std - 1) < 0.02, t
            checked.append(t)
    assert checked == [10, 30, 60, 100]


def test_optimal_prev_is_the_one_step_posterior_mean_and_eq6(sde, pair):
    x0, mu = pair
    t = _t(1, 2, 50, 100)
    x = sde.q_sample(x0, mu, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)))
    prev = sde.optimal_prev(x, x0, mu, t)
    torch.testing.assert_close(prev, sde.posterior(x, x0, mu, t, t - 1)[0])
    # eq (6) written out with the per-step decay A = exp(-theta_t dt), B = exp(-thetabar_t), C = exp(-thetabar_{t-1})
    th = sde.thetas[t].reshape(-1, 1, 1, 1)
    a = torch.exp(-th * sde.dt)
    b = torch.exp(-sde.thetabar[t]).reshape(-1, 1, 1, 1)
    c = torch.exp(-sde.thetabar[t - 1]).reshape(-1, 1, 1, 1)
    eq6 = a * (1 - c**2) / (1 - b**2) * (x - mu) + c * (1 - a**2) / (1 - b**2) * (x0 - mu) + mu
    torch.testing.assert_close(prev, eq6.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(sde.optimal_prev(x, x0, mu, t)[0], prev[0])
    assert (prev - x0).abs().mean() < (x - x0).abs().mean()  # a step towards the data


def test_posterior_is_a_consistent_gaussian_bridge(sde):
    """For every 0 <= s < t: std >= 0; averaging q(x_s | x_t, x0) over x_t ~ q(x_t | x0) gives q(x_s | x0) exactly."""
    x0 = torch.full((1, 1, 1, 1), 0.8, dtype=torch.float64)
    mu = torch.full_like(x0, 0.2)
    for t in (1, 2, 7, 30, 51, 99, 100):
        for s in sorted({0, 1, t // 2, t - 1}):
            if s >= t:
                continue
            c_xt, c_x0, var = sde._bridge(t, s, x0)
            assert float(var) >= 0
            # E[mean] = mu + (c_xt B + c_x0)(x0 - mu) must equal m_s; Var = c_xt^2 v_t + var must equal v_s
            torch.testing.assert_close(mu + (c_xt * sde.decay(t, x0) + c_x0) * (x0 - mu), sde.mean(x0, mu, s))
            torch.testing.assert_close(c_xt**2 * sde.std(t, x0) ** 2 + var, sde.std(s, x0) ** 2,
                                       rtol=1e-9, atol=1e-15)
    x = torch.rand(2, 1, 8, 8)
    x0 = torch.rand(2, 1, 8, 8)
    mean, std = sde.posterior(x, x0, torch.rand(2, 1, 8, 8), _t(100, 37), 0)
    torch.testing.assert_close(mean, x0)
    assert bool((std == 0).all())
    with pytest.raises(ValueError, match="s < t"):
        sde.posterior(x, x0, x0, _t(5, 5), _t(5, 4))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        sde.mean(x, x0, _t(101, 1))


def test_predict_x0_inverts_q_sample_and_start(sde, pair):
    x0, mu = pair
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = _t(1, 30, 70, 100)
    xt = sde.q_sample(x0, mu, t, noise)
    torch.testing.assert_close(sde.predict_x0(xt, mu, noise, t), x0, rtol=0, atol=2e-4)
    torch.testing.assert_close(sde.noise_to_score(noise, t), -noise / sde.std(t))
    torch.testing.assert_close(sde.start(mu, noise), mu + sde.std(sde.T) * noise)
    torch.testing.assert_close(sde.start(mu, noise, 40), mu + sde.std(40) * noise)
    torch.testing.assert_close(sde.start(mu, noise, 100), sde.q_sample(mu, mu, 100, noise))


def test_reverse_step_with_true_score_moves_towards_optimal_prev(sde, pair):
    """The reverse Euler mean with the exact conditional score is close to eq (6) (first-order discretisation)."""
    x0, mu = pair
    t = _t(20, 40, 60, 80)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    xt = sde.q_sample(x0, mu, t, noise)
    euler = xt - sde.reverse_drift(xt, mu, sde.noise_to_score(noise, t), t)
    target = sde.optimal_prev(xt, x0, mu, t)
    assert (euler - target).abs().mean() < 0.1 * (xt - target).abs().mean()
    zero_noise = torch.zeros_like(noise)
    step = sde.reverse_sde_step(xt, mu, sde.noise_to_score(noise, t), t, zero_noise)
    torch.testing.assert_close(step, euler)


def test_loss_is_finite_differentiable_and_learns(sde, pair):
    torch.manual_seed(0)
    net = build_nafnet("tiny")
    x0, mu = pair
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(1, sde.T + 1, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = sde.loss(net, x0, mu, t, noise)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    # the oracle (true noise) beats a net that predicts no noise
    oracle = sde.loss(lambda x, m, tt: noise, x0, mu, t, noise)
    blind = sde.loss(lambda x, m, tt: torch.zeros_like(x), x0, mu, t, noise)
    assert float(oracle) < 0.2 * float(blind)
    # a net answering in bfloat16 (autocast) is promoted before the SDE arithmetic
    low = sde.loss(lambda x, m, tt: noise.bfloat16(), x0, mu, t, noise)
    assert low.dtype == torch.float32 and abs(float(low) - float(oracle)) < 0.05 * float(blind)


def test_config_round_trip_and_validation():
    sde = IRSDE(T=50, max_sigma=30 / 255, eps=0.01, schedule="linear")
    again = IRSDE.from_dict(sde.to_dict())
    assert again.to_dict() == sde.to_dict() and torch.equal(again.thetabar, sde.thetabar)
    assert sde.to("cpu") is sde
    with pytest.raises(ValueError, match="unknown IRSDE keys"):
        IRSDE.from_dict({**sde.to_dict(), "sigma": 1})
    with pytest.raises(ValueError, match="data units"):
        IRSDE(max_sigma=50)
    with pytest.raises(ValueError, match="schedule"):
        IRSDE(schedule="quadratic")
    with pytest.raises(ValueError, match="eps"):
        IRSDE(eps=0)

"""Samplers: an oracle network is recovered, network calls are as advertised, seeded noise is reproducible."""

import numpy as np
import pytest
import torch

from isovol.pipeline.methods.d2r_prior.irsde import IRSDE
from isovol.pipeline.methods.d2r_prior.nafnet import build_nafnet
from isovol.pipeline.methods.d2r_prior.samplers import (
    fast_timesteps,
    network_calls,
    per_sample_noise,
    sample,
    seeded_noise,
)


@pytest.fixture(scope="module")
def pair(row_dropped) -> tuple[torch.Tensor, torch.Tensor]:
    return row_dropped(np.s_[20:23, 5:46, 7:55])


@pytest.fixture(scope="module")
def random_net() -> torch.nn.Module:
    """A tiny NAFNet whose blocks are active (the paper's zero init would make them identities)."""
    torch.manual_seed(0)
    net = build_nafnet("tiny").eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)
    return net


class Counting:
    """Wraps a net and counts its calls; checks the arguments it receives."""

    def __init__(self, net):
        self.net, self.calls, self.steps = net, 0, []

    def __call__(self, x, mu, t):
        assert x.shape == mu.shape and t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls += 1
        self.steps.append(int(t[0]))
        return self.net(x, mu, t)


def _rmse(a, b) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def test_oracle_is_recovered_by_every_sampler(sde, pair):
    x0, mu = pair
    assert _rmse(mu, x0) > 0.02  # mu is a real degradation
    oracle = sde.noise_oracle(x0)
    results = {}
    for sampler in ("reference", "posterior", "fast"):
        net = Counting(oracle)
        out = sample(sde, net, mu, sampler, noise=seeded_noise(7), clip=False)
        assert out.shape == x0.shape and out.dtype == x0.dtype
        assert net.calls == network_calls(sampler, None, sde.T)
        results[sampler] = out
    assert network_calls("reference", None, 100) == network_calls("posterior", None, 100) == 100
    assert network_calls("fast", None, 100) == 5
    low = sample(sde, lambda x, m, t: oracle(x, m, t).bfloat16(), mu, "fast", noise=seeded_noise(7), clip=False)
    assert low.dtype == torch.float32 and _rmse(low, x0) < 0.01  # a bfloat16 (autocast) net is promoted
    # posterior steps with the true x0 are exact; only float error remains
    torch.testing.assert_close(results["posterior"], x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(results["fast"], x0, rtol=0, atol=1e-5)
    # Euler-Maruyama keeps the noise of its last step, sigma_1 sqrt(dt) = std_1 (0.0037): measured RMSE 0.0037
    assert _rmse(results["reference"], x0) < 1.5 * float(sde.std(1))
    assert float((results["reference"] - x0).abs().max()) < 0.03


@pytest.mark.parametrize("steps, t_start", [(1, 50), (3, 50), (5, 100), (10, 30), (2, 2)])
def test_fast_sampler_any_schedule_recovers_the_oracle(sde, pair, steps, t_start):
    x0, mu = pair
    net = Counting(sde.noise_oracle(x0))
    out = sample(sde, net, mu, "fast", steps=steps, t_start=t_start, noise=seeded_noise(1))
    assert net.calls == steps == network_calls("fast", steps, sde.T, t_start)
    assert net.steps == fast_timesteps(t_start, steps)
    torch.testing.assert_close(out, x0.clamp(0, 1), rtol=0, atol=1e-5)


def test_truncated_reference_and_posterior(sde, pair):
    x0, mu = pair
    for sampler in ("reference", "posterior"):
        net = Counting(sde.noise_oracle(x0))
        out = sample(sde, net, mu, sampler, t_start=40, noise=seeded_noise(2))
        assert net.calls == 40 == network_calls(sampler, None, sde.T, t_start=40)
        assert net.steps == list(range(40, 0, -1))
        assert _rmse(out, x0) < 1.5 * float(sde.std(1))


def test_fast_timesteps_and_refusals(sde, pair):
    assert fast_timesteps(50, 5) == [50, 40, 30, 20, 10]
    assert fast_timesteps(50, 1) == [50]
    assert fast_timesteps(100, 10) == list(range(100, 0, -10))
    x0, mu = pair
    oracle = sde.noise_oracle(x0)
    with pytest.raises(ValueError, match="at most 10"):
        sample(sde, oracle, mu, "fast", steps=11, t_start=100)
    with pytest.raises(ValueError, match="t_start >= steps"):
        fast_timesteps(3, 5)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(sde, oracle, mu, "ddim")
    with pytest.raises(ValueError, match="one step per timestep"):
        network_calls("reference", 10, 100)
    with pytest.raises(ValueError, match="t_start"):
        sample(sde, oracle, mu, "fast", t_start=101)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(sde, oracle, mu, "fast", timesteps=[30, 30, 10])
    net = Counting(oracle)
    out = sample(sde, net, mu, "fast", timesteps=[60, 25, 4], noise=seeded_noise(3))
    assert net.steps == [60, 25, 4]
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_seeded_noise_is_a_pure_function():
    a, b = seeded_noise(11), seeded_noise(11)
    assert torch.equal(a(5, (2, 1, 8, 9)), b(5, (2, 1, 8, 9)))
    assert torch.equal(a(5, (2, 1, 8, 9)), a(5, (2, 1, 8, 9)))  # no hidden state between calls
    assert not torch.equal(a(5, (2, 1, 8, 9)), a(4, (2, 1, 8, 9)))
    assert not torch.equal(a(5, (2, 1, 8, 9)), seeded_noise(12)(5, (2, 1, 8, 9)))
    big = seeded_noise(2**70 + 3)(0, (4000,))  # any integer seed, e.g. from global coordinates
    assert abs(float(big.mean())) < 0.1 and abs(float(big.std()) - 1) < 0.1
    assert seeded_noise(1, dtype=torch.float64)(0, (3,)).dtype == torch.float64
    seeds = [3, 9, 4]
    batch = per_sample_noise(seeds)(7, (3, 1, 5, 6))
    for i, s in enumerate(seeds):
        assert torch.equal(batch[i], seeded_noise(s)(7, (1, 5, 6)))
    with pytest.raises(ValueError, match="3 seeds"):
        per_sample_noise(seeds)(7, (2, 1, 5, 6))


@pytest.mark.parametrize("sampler", ["reference", "posterior", "fast"])
def test_same_seed_same_output_other_seed_other_output(sde, pair, random_net, sampler):
    _, mu = pair
    mu = mu[:2, :, :20, :24]
    first = sample(sde, random_net, mu, sampler, noise=seeded_noise(5))
    again = sample(sde, random_net, mu, sampler, noise=seeded_noise(5))
    other = sample(sde, random_net, mu, sampler, noise=seeded_noise(6))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3
    assert float(first.min()) >= 0 and float(first.max()) <= 1  # clipped to the data range
    assert not first.requires_grad  # sampled under no_grad although the net has trainable parameters


def test_per_sample_seeds_make_a_slice_independent_of_its_batch(sde, pair, random_net):
    _, mu = pair
    both = sample(sde, random_net, mu[:2], "fast", noise=per_sample_noise([100, 200]))
    alone = sample(sde, random_net, mu[1:2], "fast", noise=per_sample_noise([200]))
    swapped = sample(sde, random_net, mu[[1, 0]], "fast", noise=per_sample_noise([200, 100]))
    torch.testing.assert_close(both[1:2], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(both[[1, 0]], swapped, rtol=0, atol=1e-6)


def test_clip_false_returns_the_raw_estimate(sde, pair):
    x0, mu = pair
    shifted = x0 * 3 - 1  # partly outside [0, 1]
    assert float(shifted.min()) < 0 and float(shifted.max()) > 1
    raw = sample(sde, sde.noise_oracle(shifted), mu, "fast", noise=seeded_noise(0), clip=False)
    torch.testing.assert_close(raw, shifted, rtol=0, atol=1e-5)
    clipped = sample(sde, sde.noise_oracle(shifted), mu, "fast", noise=seeded_noise(0))
    torch.testing.assert_close(clipped, shifted.clamp(0, 1), rtol=0, atol=1e-5)


def test_an_x0_predicting_prior_is_recovered_by_every_sampler(pair):
    """With ``prediction="x0"`` the net's answer is x0 itself: an x0 oracle is exact in one call from t = T,
    the posterior sampler is exact, and the reference sampler keeps only its last step's noise."""
    x0, mu = pair
    sde = IRSDE(prediction="x0")
    oracle = Counting(lambda x, m, t: x0)
    one = sample(sde, oracle, mu, "fast", steps=1, t_start=sde.T, noise=seeded_noise(3), clip=False)
    assert oracle.calls == 1
    torch.testing.assert_close(one, x0, rtol=0, atol=1e-6)
    post = sample(sde, lambda x, m, t: x0, mu, "posterior", noise=seeded_noise(3), clip=False)
    torch.testing.assert_close(post, x0, rtol=0, atol=1e-5)
    ref = sample(sde, lambda x, m, t: x0, mu, "reference", noise=seeded_noise(3), clip=False)
    assert _rmse(ref, x0) < 1.5 * float(sde.std(1))


def test_x0_and_noise_answers_convert_both_ways(pair):
    x0, mu = pair
    sde = IRSDE(prediction="x0")
    t = torch.tensor([1, 30, 60, 100])[: x0.shape[0]]
    x = sde.q_sample(x0, mu, t, torch.randn_like(x0))
    noise = sde.as_noise(x0, x, mu, t)
    torch.testing.assert_close(sde.predict_x0(x, mu, noise, t), x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(sde.as_x0(x0, x, mu, t), x0)
    # the loss of an x0 prior is the L1 of its answer
    assert float(sde.loss(lambda xt, m, tt: x0 + 0.01, x0, mu, t, torch.randn_like(x0))) == pytest.approx(0.01)
    assert sde.to_dict()["prediction"] == "x0" and "prediction" not in IRSDE().to_dict()
    assert IRSDE.from_dict(sde.to_dict()).prediction == "x0"
    with pytest.raises(ValueError, match="prediction must be one of"):
        IRSDE(prediction="v")

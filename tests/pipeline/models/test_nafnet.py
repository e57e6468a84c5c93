"""Conditional NAFNet: any tile size, parameter budget, config round trip, time conditioning, locality."""

import json

import pytest
import torch

from isovol.pipeline.methods.d2r_prior.nafnet import PRESETS as NAFNET_PRESETS
from isovol.pipeline.methods.d2r_prior.nafnet import (
    ConditionalNAFNet,
    NAFNetConfig,
    build_nafnet,
    count_parameters,
    estimate_macs,
)


def _activate(net: ConditionalNAFNet, seed: int = 0) -> ConditionalNAFNet:
    """Give the zero-initialised residual scales random values so every block contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def tiny() -> ConditionalNAFNet:
    torch.manual_seed(0)
    return _activate(build_nafnet("tiny"))


def _images(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=gen), torch.rand(b, 1, h, w, generator=gen)


@pytest.mark.parametrize("hw", [(37, 50), (5, 7), (2, 2), (1, 9), (32, 32), (64, 20)])
def test_any_tile_size(tiny, hw):
    x, mu = _images(2, *hw)
    with torch.no_grad():
        out = tiny(x, mu, torch.tensor([1, 100]))
    assert out.shape == (2, 1, *hw) and torch.isfinite(out).all()


def test_default_is_the_light_irsde_class():
    net = build_nafnet("default")
    n = count_parameters(net)
    assert 15e6 <= n <= 25e6, n
    assert net.config.levels == 4 and net.config.width == 64
    assert count_parameters(build_nafnet("tiny")) < 50_000
    macs = estimate_macs("tiny", 64, 64)
    assert macs == pytest.approx(estimate_macs("tiny", 128, 128) / 4, rel=0.01)  # fully convolutional


def test_config_round_trip_and_refusals():
    cfg = NAFNetConfig.preset("default", sca_window=7, time_dim=32)
    text = json.dumps(cfg.to_dict())
    again = NAFNetConfig.from_dict(json.loads(text))
    assert again == cfg and again.enc_blocks == [14, 1, 1, 1]
    net_a, net_b = build_nafnet(NAFNetConfig.preset("tiny")), build_nafnet(NAFNetConfig.preset("tiny").to_dict())
    assert net_a.config == net_b.config
    assert sorted(NAFNET_PRESETS) == ["default", "small", "tiny"]
    with pytest.raises(ValueError, match="unknown NAFNet config keys"):
        NAFNetConfig.from_dict({**cfg.to_dict(), "widht": 32})
    with pytest.raises(ValueError, match="unknown NAFNet preset"):
        build_nafnet("huge")
    with pytest.raises(ValueError, match="same"):
        NAFNetConfig(enc_blocks=[1, 1], dec_blocks=[1])
    with pytest.raises(ValueError, match="sca_window"):
        NAFNetConfig(sca_window=4)
    with pytest.raises(ValueError, match="x_t and mu"):
        build_nafnet("tiny")(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), 1)


def test_time_embedding_changes_the_output(tiny):
    x, mu = _images(1, 24, 24, seed=1)
    with torch.no_grad():
        outs = [tiny(x, mu, torch.tensor([t])) for t in (1, 2, 50, 100)]
        same = tiny(x, mu, 50)  # an int is broadcast to the batch
    for a, b in zip(outs, outs[1:]):
        assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(same, outs[2])


def test_inputs_are_x_minus_mu_and_mu_and_samples_are_independent(tiny):
    x, mu = _images(3, 20, 28, seed=2)
    t = torch.tensor([5, 60, 90])
    with torch.no_grad():
        batch = tiny(x, mu, t)
        single = torch.cat([tiny(x[i : i + 1], mu[i : i + 1], t[i : i + 1]) for i in range(3)])
        other_mu = tiny(x, mu.flip(-1), t)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    assert (batch - other_mu).abs().max() > 1e-4  # the condition matters


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(1)
    net = _activate(build_nafnet("tiny")).train()
    x, mu = _images(2, 16, 20, seed=3)
    net(x, mu, torch.tensor([3, 70])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_local_channel_attention_is_tiling_consistent():
    """With sca_window, a crop aligned to the 2**levels grid gives the same interior as the whole tile."""
    torch.manual_seed(2)
    local = _activate(build_nafnet(NAFNetConfig.preset("tiny", sca_window=5)))
    torch.manual_seed(2)
    global_ = _activate(build_nafnet(NAFNetConfig.preset("tiny")))
    x, mu = _images(1, 96, 96, seed=4)
    crop = (slice(None), slice(None), slice(32, 96), slice(32, 96))
    m = 24  # margin beyond the receptive field's reach from the crop border
    with torch.no_grad():
        whole, part = local(x, mu, 10), local(x[crop], mu[crop], 10)
        g_whole, g_part = global_(x, mu, 10), global_(x[crop], mu[crop], 10)
    torch.testing.assert_close(part[..., m:-m, m:-m], whole[crop][..., m:-m, m:-m], rtol=1e-5, atol=1e-6)
    assert (g_part[..., m:-m, m:-m] - g_whole[crop][..., m:-m, m:-m]).abs().max() > 1e-5  # global pooling is not


def test_runs_under_bfloat16_autocast(tiny):
    x, mu = _images(1, 16, 16, seed=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(x, mu, 30)
    with torch.no_grad():
        ref = tiny(x, mu, 30)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05

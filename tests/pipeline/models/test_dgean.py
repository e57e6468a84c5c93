"""DGEAN: shapes for any factor and tile, one encoding for all depths, residual-on-cubic start, learning."""

import json

import numpy as np
import pytest
import torch

from isovol.pipeline.losses import DGEANLoss
from isovol.pipeline.methods.dgean.network import (
    DGEAN,
    DGEANConfig,
    build_dgean,
    count_parameters,
    cubic_at_depths,
    estimate_macs,
    keys_weights_torch,
)
from isovol.pipeline.methods.interp import Interpolation, keys_weights
from isovol.workflows.demo_data import load_crop


@pytest.fixture(scope="module")
def tiny() -> DGEAN:
    return build_dgean("tiny").eval()


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    volume, _ = load_crop()
    return torch.from_numpy(volume.astype(np.float32) / 255.0)


def _window(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 4, h, w, generator=g)


def test_one_model_serves_every_factor_from_one_encoding(tiny):
    x = _window(2, 37, 50)
    with torch.no_grad():
        feats = tiny.encode(x)
        for r in range(2, 11):
            depths = torch.arange(1, r) / r
            out = tiny.decode(feats, x, depths)
            assert out.shape == (2, r - 1, 37, 50)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("hw", [(16, 16), (37, 50), (5, 7), (20, 33), (64, 48)])
def test_any_tile_size(tiny, hw):
    x = _window(1, *hw)
    with torch.no_grad():
        out = tiny(x, [0.5])
    assert out.shape == (1, 1, *hw)


def test_all_depths_in_one_batch_equal_one_depth_at_a_time():
    model = build_dgean(DGEANConfig.preset("tiny", out_init_scale=1.0)).eval()  # a visible residual
    x = _window(2, 24, 40, seed=1)
    depths = torch.tensor([0.125, 0.3, 0.5, 0.875])
    with torch.no_grad():
        together = model(x, depths)
        apart = torch.cat([model(x, depths[i : i + 1]) for i in range(len(depths))], dim=1)
        per_sample = model(x, depths.expand(2, -1).clone())  # (B, D) form
    assert (together - cubic_at_depths(x, depths)).abs().max() > 1e-3  # not trivially the baseline
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, per_sample)


def test_encoder_does_not_depend_on_depths(tiny, monkeypatch):
    x = _window(1, 32, 32, seed=2)
    seen = []
    original = tiny.encode

    def spy(inp):
        feats = original(inp)
        seen.append([f.clone() for f in feats])
        return feats

    monkeypatch.setattr(tiny, "encode", spy)
    with torch.no_grad():
        a = tiny(x, [0.25])
        tiny(x, [0.1, 0.9, 0.6])
    for f, g in zip(*seen):
        torch.testing.assert_close(f, g, rtol=0, atol=0)
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(tiny.decode(tiny.encode(x), x, [0.25]), a)


def test_cubic_baseline_matches_the_shipped_interpolation():
    for t in (0.0, 0.125, 1 / 3, 0.5, 0.9):
        torch.testing.assert_close(keys_weights_torch(torch.tensor(t, dtype=torch.float64)),
                                   torch.tensor(keys_weights(t), dtype=torch.float64))
    rng = np.random.default_rng(0)
    stack = rng.random((6, 9, 11), dtype=np.float32)
    r = 4
    i = 2  # interior input slice: window i-1 .. i+2
    ref = Interpolation("cubic").apply(stack, r, i * r, (i + 1) * r)  # kept slice i, then r-1 in between
    window = torch.from_numpy(stack[i - 1 : i + 3])[None, None]
    ours = cubic_at_depths(window, torch.arange(1, r) / r)[0].numpy()
    np.testing.assert_allclose(ours, ref[1:], atol=1e-6)


def test_cubic_baseline_stays_float32_under_bf16_autocast():
    """The residual is learned on top of the shipped cubic: autocast must not round that base to bf16 (it would
    move uint8 data near white by a grey level)."""
    rng = np.random.default_rng(1)
    window = torch.from_numpy(rng.random((2, 1, 4, 16, 16), dtype=np.float32) * 0.2 + 0.8)
    depths = torch.arange(1, 8) / 8
    ref = cubic_at_depths(window, depths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = cubic_at_depths(window, depths)
        model = build_dgean(DGEANConfig.preset("tiny", out_init_scale=0.0)).eval()
        with torch.no_grad():
            out = model(window, depths)
    assert base.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(base, ref, rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_starts_close_to_cubic_interpolation(crop):
    x = crop[40:44, :48, :48][None, None]
    depths = torch.arange(1, 8) / 8
    for name in ("tiny", "small"):
        model = build_dgean(name).eval()
        with torch.no_grad():
            diff = model(x, depths) - cubic_at_depths(x, depths)
        assert diff.abs().max() < 0.02, name
    exact = build_dgean(DGEANConfig.preset("tiny", out_init_scale=0.0)).eval()
    with torch.no_grad():
        torch.testing.assert_close(exact(x, depths), cubic_at_depths(x, depths))


def test_a_few_steps_on_real_data_lower_the_loss(crop):
    torch.manual_seed(0)
    r, size = 4, 32
    # windows of 4 slices r apart along Z of the (isotropic) crop; targets are the r-1 slices in between
    starts = [(8, 10, 20), (30, 60, 5), (52, 33, 70), (70, 80, 40)]
    xs, ys = [], []
    for z, y, x in starts:
        block = crop[z - r : z + 2 * r + 1, y : y + size, x : x + size]  # offsets -1 .. 2 in units of r
        xs.append(block[0 : 3 * r + 1 : r])
        ys.append(block[r + 1 : 2 * r])
    x, target = torch.stack(xs)[:, None], torch.stack(ys)
    depths = torch.arange(1, r) / r
    model = build_dgean("tiny").train()
    loss_fn = DGEANLoss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)  # the paper's learning rate

    def loss() -> torch.Tensor:
        return loss_fn(model(x, depths), target, x[:, 0, 1], x[:, 0, 2])["total"]

    with torch.no_grad():
        before = loss().item()
    for _ in range(12):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < before * 0.95, (before, after)


def test_config_round_trip_presets_and_seeded_embedding():
    cfg = DGEANConfig.preset("small", seed=3)
    again = DGEANConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown DGEAN config keys"):
        DGEANConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="unknown DGEAN preset"):
        DGEANConfig.preset("huge")
    with pytest.raises(ValueError, match="widths"):
        DGEANConfig(widths=(8, 8))
    a, b = build_dgean("tiny"), build_dgean(DGEANConfig.preset("tiny").to_dict())
    assert "z_frequencies" in a.state_dict()
    for key, value in a.state_dict().items():  # same seed: same embedding and same initial weights
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    c = build_dgean(DGEANConfig.preset("tiny", seed=1))
    assert not torch.equal(a.z_frequencies, c.z_frequencies)
    assert count_parameters(a) < 300_000


def test_refuses_bad_windows_and_depths(tiny):
    with pytest.raises(ValueError, match="window of shape"):
        tiny(torch.zeros(1, 1, 3, 16, 16), [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny(torch.zeros(1, 1, 4, 16, 16), [1.5])


def test_variants_run_and_cost_estimate_is_consistent():
    x = _window(1, 20, 24)
    for overrides in ({"xy_embedding": True}, {"skip_join": "add"}, {"norm": "none"}):
        model = build_dgean(DGEANConfig.preset("tiny", **overrides)).eval()
        with torch.no_grad():
            assert model(x, [0.3, 0.7]).shape == (1, 2, 20, 24)
    macs = estimate_macs("tiny", n_depths=7)
    assert macs["per_output_voxel"] < macs["per_output_voxel_one_depth_per_pass"]
    # convolutions scale exactly with H*W; only the tiny depth MLP does not
    assert estimate_macs("tiny", 7, 64, 48)["per_output_voxel"] == pytest.approx(macs["per_output_voxel"], rel=1e-3)

"""SliceFID: the Fréchet distance against closed forms, the exact low-rank route, and the slices it compares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isovol.pipeline.metrics import plane_scores
from isovol.pipeline.slicefid import SliceFID, frechet_distance, frechet_distance_features, plane_stacks


def closed_form_diagonal(mu1, var1, mu2, var2) -> float:
    """|mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2: the Fréchet distance of Gaussians with diagonal covariances."""
    return float(np.sum((np.asarray(mu1) - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2))


def test_diagonal_gaussians_match_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    fd = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert fd == pytest.approx(closed_form_diagonal(mu1, var1, mu2, var2), rel=1e-10)
    assert fd == pytest.approx(5.0 + (4 + 1 + 0 + (np.sqrt(2) - np.sqrt(0.5)) ** 2), rel=1e-10)


def test_commuting_covariances_match_the_closed_form():
    """S1, S2 with the same eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i)."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    a, b = np.array([1, 2, 3, 4, 5, 6.0]), np.array([6, 1, 0.5, 2, 3, 1.0])
    fd = frechet_distance(np.zeros(6), q @ np.diag(a) @ q.T, np.ones(6), q @ np.diag(b) @ q.T)
    assert fd == pytest.approx(6 + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum(), rel=1e-9)


def test_identical_distributions_and_sets_give_zero():
    s = np.cov(np.random.default_rng(1).normal(size=(50, 5)), rowvar=False)
    assert frechet_distance(np.ones(5), s, np.ones(5), s) == pytest.approx(0.0, abs=1e-9)
    feats = np.random.default_rng(2).normal(size=(30, 64))  # rank-deficient: 30 samples, 64 dims
    assert frechet_distance_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_features(feats, feats[::-1]) == pytest.approx(0.0, abs=1e-9)  # order-free


@pytest.mark.parametrize("n1, n2", [(12, 9), (40, 55)])  # rank-deficient (SVD route) and full rank (sqrtm route)
def test_feature_route_equals_the_covariance_route(n1, n2):
    rng = np.random.default_rng(n1)
    d = 24
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n2, d)) * 1.5 + 0.3
    direct = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance_features(a, b) == pytest.approx(direct, rel=1e-8)


def test_samples_approach_the_population_distance():
    rng = np.random.default_rng(3)
    mu1, mu2, var1, var2 = np.zeros(3), np.array([1.0, 0, 0]), np.array([1.0, 2, 3]), np.array([4.0, 2, 1])
    a = mu1 + rng.normal(size=(40000, 3)) * np.sqrt(var1)
    b = mu2 + rng.normal(size=(40000, 3)) * np.sqrt(var2)
    assert frechet_distance_features(a, b) == pytest.approx(closed_form_diagonal(mu1, var1, mu2, var2), rel=0.02)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance_features(np.zeros((3, 4)), np.zeros((3, 5)))


def test_planes_are_the_slices_plane_scores_uses():
    vol = np.arange(9 * 5 * 7).reshape(9, 5, 7)
    stacks = plane_stacks(vol, 4)
    assert [s.shape for s in stacks.values()] == [(6, 5, 7), (5, 9, 7), (7, 9, 5)]
    assert np.array_equal(stacks["XY"], vol[[1, 2, 3, 5, 6, 7]])  # synthesised slices only
    assert np.array_equal(stacks["XZ"][2], vol[:, 2]) and np.array_equal(stacks["YZ"][3], vol[:, :, 3])
    assert set(stacks) == set(plane_scores(vol.astype(np.uint8), vol.astype(np.uint8), 4, with_ssim=False))


class Moments(torch.nn.Module):
    """A stand-in feature extractor: per-image mean, spread and gradient energy (fast; checks the plumbing)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert x.ndim == 4 and x.shape[1] == 1 and 0 <= float(x.min()) and float(x.max()) <= 1
        gy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), gy], 1)


def test_slicefid_scores_per_plane_with_counts():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 256, (9, 6, 5)).astype(np.uint8)
    model = Moments()
    fid = SliceFID(model, truth, 4, batch=4)
    assert model.calls == 2 + 2 + 2  # 6 XY, 6 XZ, 5 YZ slices in batches of 4
    same = fid.score(truth.copy())
    assert all(same[p] == pytest.approx(0.0, abs=1e-12) for p in ("XY", "XZ", "YZ"))
    assert same["slices"] == {"XY": 6, "XZ": 6, "YZ": 5} and same["feature_dim"] == 3
    assert same["rank_deficient"] is False  # more slices than the 3 stand-in features
    smooth = fid.score(np.full_like(truth, 128))
    assert all(smooth[p] > 0.01 for p in ("XY", "XZ", "YZ"))
    assert smooth["mean"] == pytest.approx(np.mean([smooth[p] for p in ("XY", "XZ", "YZ")]))

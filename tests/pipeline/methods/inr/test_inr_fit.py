"""INR: the field starts at its classical interpolation, consistency keeps the measured slices, the SDS gradient
points where a closed-form prior says, fits are seeded per fit block, and the result depends on the fit grid only
(not on the executor's blocks)."""

import numpy as np
import pytest
import torch

from isovol.pipeline.blocks import BlockPlan
from isovol.pipeline.errors import InputError
from isovol.pipeline.methods.base import upsample_array
from isovol.pipeline.methods.inr.field import FieldConfig
from isovol.pipeline.methods.inr.fit import FitConfig, Fitter, Problem, sds_gradient
from isovol.pipeline.methods.inr.method import INR
from isovol.pipeline.methods.inr.prior import GaussianPrior
from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows.demo_data import load_crop

R = 4
SMALL = {"block": 16, "overlap": 4, "planes": 2, "points": 512, "lr": 0.02}
FIELD = FieldConfig(spacings=(4, 2), features=2, hidden=8, layers=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-exact comparisons hold for a given torch thread count; pin it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """Every 4th slice of a 17 x 32 x 32 corner of the bundled FlyEM crop: 5 slices, 2 x 2 x 2 fit blocks."""
    volume, _ = load_crop()
    return np.ascontiguousarray(volume[:17:R, :32, :32])


def method(**options) -> INR:
    m = INR(None, prior=GaussianPrior(), **{**SMALL, **options})
    m.field = FIELD
    return m


@pytest.mark.parametrize("base", ["linear", "cubic"])
def test_step_zero_is_the_classical_interpolation(stack, base):
    """No fit steps, or a fresh field (its residual is zero): the classical method's output, bit for bit."""
    expected = upsample_array(stack, R, Interpolation(base))
    assert np.array_equal(upsample_array(stack, R, method(steps=0, base=base)), expected)
    problem = Problem(torch.rand(12, 10, 10), torch.rand(3, 10, 10), torch.tensor([0, 4, 8]), R)
    fitter = Fitter(problem, GaussianPrior(), FitConfig(), FIELD, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(fitter.residual((slice(0, 12), slice(0, 10), slice(0, 10))), torch.zeros(12, 10, 10))


def test_sds_gradient_points_to_the_gaussian_mean():
    """For i.i.d. N(mu, s^2) pixels the expected SDS gradient is c(t) (x - mu), c > 0: averaged over noise it is
    parallel to x - mu, and descending it moves the image towards mu."""
    prior = GaussianPrior(mean=0.3, std=0.2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, 16, 16), generator=gen) * 2 - 1
    t = torch.full((512,), 300)
    noise = torch.randn((512, 1, 16, 16), generator=gen)
    grad = sds_gradient(prior, x.expand(512, -1, -1, -1), t, noise, "sigma2").mean(0)
    cos = torch.nn.functional.cosine_similarity(grad.flatten(), (x - 0.3).flatten(), dim=0)
    assert cos > 0.98
    a = prior.alphas_cumprod[300]
    expected = (1 - a) * (a * (1 - a)).sqrt() / (a * 0.04 + 1 - a) * (x[0] - 0.3)
    assert torch.allclose(grad, expected, atol=0.05)


def test_sds_alone_moves_the_field_towards_the_prior():
    """A fit with SDS only (no consistency) on a region far from the prior's mean moves its planes towards it."""
    base = torch.full((16, 16, 16), 0.8)
    problem = Problem(base, base[::4].clone(), torch.arange(0, 16, 4), R)
    cfg = FitConfig(steps=30, sds_weight=1.0, consistency_weight=0.0, planes=2, lr=0.05, t_range=(0.2, 0.6))
    fitter = Fitter(problem, GaussianPrior(mean=-0.5, std=0.1), cfg, FIELD, torch.Generator().manual_seed(0),
                    torch.device("cpu"))
    fitter.run()
    assert float(fitter.residual((slice(0, 16),) * 3).mean()) < -0.05


def test_consistency_keeps_the_measured_slices(stack):
    """A prior pulling hard away from the data: the field moves between the measured slices but stays on them;
    the output's measured slices are the input's exactly."""
    z = stack.astype(np.float32) / 127.5 - 1
    base = torch.from_numpy(np.repeat(z, R, axis=0)[: (len(z) - 1) * R + 1, :16, :16].copy())
    rows = torch.arange(0, base.shape[0], R)
    problem = Problem(base, base[rows].clone(), rows, R)
    cfg = FitConfig(steps=40, sds_weight=1.0, consistency_weight=50.0, planes=2, points=2048, lr=0.05)
    fitter = Fitter(problem, GaussianPrior(mean=-0.9, std=0.05), cfg, FIELD, torch.Generator().manual_seed(0),
                    torch.device("cpu"))
    fitter.run()
    res = fitter.residual((slice(0, base.shape[0]), slice(0, 16), slice(0, 16))).abs()
    between = torch.ones(base.shape[0], dtype=torch.bool)
    between[rows] = False
    assert res[between].mean() > 3 * res[rows].mean()
    out = upsample_array(stack, R, method(steps=10, sds_weight=5.0))
    assert np.array_equal(out[::R], stack)


def test_fits_are_seeded_per_fit_block(stack):
    """The same layout twice: the same bits; another seed: other voxels."""
    a = upsample_array(stack, R, method(steps=4))
    assert np.array_equal(a, upsample_array(stack, R, method(steps=4)))
    assert not np.array_equal(a, upsample_array(stack, R, method(steps=4, seed=1)))


def blockwise(volume: np.ndarray, m: INR, block: tuple[int, int, int]) -> np.ndarray:
    """What the executor computes: each planned block read with its halo (edge-padded) and cropped."""
    plan = BlockPlan.build(volume.shape, R, m.halo, block_shape=block, block_multiple=m.block_multiple)
    out = np.zeros(plan.out_shape, volume.dtype)
    for b in plan.blocks():
        idx = [np.clip(np.arange(lo, hi), 0, n - 1) for lo, hi, n in zip(b.in_lo, b.in_hi, volume.shape)]
        start, stop = plan.local_range(b)
        out[tuple(slice(lo, hi) for lo, hi in zip(b.out_lo, b.out_hi))] = m.apply_at(
            volume[np.ix_(*idx)], R, start, stop, b.in_lo)
    return out


def test_the_result_depends_on_the_fit_grid_not_on_the_executor_blocks(stack):
    """Executor blocks that are multiples of the fit block (and a whole-volume call): identical voxels; a block
    shape off the grid is rounded up to it by the planner."""
    m = method(steps=3)
    whole = upsample_array(stack, R, m)
    for block in [(16, 16, 16), (32, 16, 32), (16, 32, 48)]:
        assert np.array_equal(blockwise(stack, m, block), whole), block
    plan = BlockPlan.build(stack.shape, R, m.halo, block_shape=(20, 8, 16), block_multiple=m.block_multiple)
    assert plan.block_shape == (17, 16, 16) and plan.notes  # 32 along Z, clipped to the volume


def test_options_are_checked():
    with pytest.raises(InputError, match="unknown option"):
        INR(None, prior=GaussianPrior(), stepz=3)
    with pytest.raises(InputError, match="weighting"):
        INR(None, prior=GaussianPrior(), weighting="snr")
    with pytest.raises(InputError, match="block"):
        INR(None, prior=GaussianPrior(), block=[16, 0, 16])
    m = INR(None, prior=GaussianPrior(), recipe="cpu-tiny", steps=7)
    assert m.block == (16, 16, 16) and m.fit.steps == 7 and m.field.spacings == (4, 2)

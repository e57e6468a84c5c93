"""Fitting one region's field: measurement consistency plus score distillation from a 2-D diffusion prior.

The field (``field.py``) starts as the classical interpolation.  Each step draws, from one seeded generator,

- ``points`` measured voxels: the consistency loss is the mean squared difference between the field re-degraded
  (``pick``: its value on the measured slice; ``average``: the weighted mean of the ``r`` rows of the slice's
  section, ``lateral_regression.degrade.average_weights``) and the measurement;
- ``planes`` rendered XZ / YZ planes (a random axis and index each, a random window of ``patch`` pixels or the
  largest that fits, in multiples of the prior's alignment): the SDS term.  A step t is drawn uniformly from
  ``t_range`` (fractions of the schedule), the plane x is noised to x_t = sqrt(a) x + sqrt(1-a) eps, the prior
  estimates eps, and the gradient ``w(t) (eps_hat - eps)`` is pushed through the rendered plane (the prior's
  Jacobian skipped, as in DreamFusion).  ``weighting``: ``sigma2`` w = 1 - a (DreamFusion's), ``uniform``
  w = 1, ``x0`` w = sqrt((1-a)/a), i.e. exactly (rendered - denoised).

Everything is in the prior's units ([-1, 1]); the residual goes back to data units only at the end, added to the
base in data units, so an untouched field returns the classical interpolation exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..lateral_regression.degrade import average_weights
from .field import FieldConfig, ResidualField, plane_coords
from .prior import Prior

WEIGHTINGS = ("sigma2", "uniform", "x0")
DEGRADATIONS = ("pick", "average")
RENDER_CHUNK = 1 << 18  # points per forward pass when rendering a whole region


@dataclass(frozen=True)
class FitConfig:
    steps: int = 200
    lr: float = 0.01  # Adam, grid features
    lr_mlp: float = 0.002  # Adam, MLP
    sds_weight: float = 1.0  # 0: the consistency-only ablation
    consistency_weight: float = 1.0
    t_range: tuple[float, float] = (0.02, 0.5)  # SDS noise levels, fractions of the prior's schedule
    weighting: str = "sigma2"
    planes: int = 4  # rendered planes per step
    patch: int = 0  # SDS on random patch x patch windows of the planes (0: the largest window that fits)
    points: int = 8192  # measured voxels per step
    degradation: str = "pick"
    base: str = "linear"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "t_range", tuple(float(v) for v in self.t_range))
        lo, hi = self.t_range
        if len(self.t_range) != 2 or not 0 <= lo <= hi <= 1:
            raise ValueError(f"t_range must be two fractions 0 <= lo <= hi <= 1, got {list(self.t_range)}")
        for name in ("steps", "planes", "points", "patch"):
            value, least = getattr(self, name), 1 if name in ("planes", "points") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        for name in ("lr", "lr_mlp", "sds_weight", "consistency_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name, valid in (("weighting", WEIGHTINGS), ("degradation", DEGRADATIONS), ("base", ("linear", "cubic"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["t_range"] = list(self.t_range)
        return d


@dataclass
class Problem:
    """One fit region in the prior's units: ``base`` (Z, Y, X) the classical start, ``measured`` (M, Y, X) the
    measured slices, ``rows`` (M,) their local output z, ``factor`` the slice spacing."""

    base: Tensor
    measured: Tensor
    rows: Tensor
    factor: int


def sds_weight(a: Tensor, weighting: str) -> Tensor:
    if weighting == "sigma2":
        return 1 - a
    if weighting == "uniform":
        return torch.ones_like(a)
    return ((1 - a) / a).sqrt()


def sds_gradient(prior: Prior, x: Tensor, t: Tensor, noise: Tensor, weighting: str) -> Tensor:
    """w(t) (eps_hat(x_t, t) - eps) for images ``x`` (B, 1, H, W) noised with ``noise`` at steps ``t`` (B,)."""
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1).to(x.dtype)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    with torch.no_grad():
        eps = prior.eps(x_t, t)
    return sds_weight(a, weighting) * (eps - noise)


def sds_loss(prior: Prior, x: Tensor, t: Tensor, noise: Tensor, weighting: str) -> Tensor:
    """A loss whose gradient in ``x`` is the SDS gradient, averaged over pixels."""
    grad = sds_gradient(prior, x.detach(), t, noise, weighting)
    return (grad * x).sum() / x.numel()


class Fitter:
    """Fits one region's field; ``generator`` is its only source of randomness."""

    def __init__(self, problem: Problem, prior: Prior | None, cfg: FitConfig, field_cfg: FieldConfig,
                 generator: torch.Generator, device: torch.device):
        self.p, self.prior, self.cfg, self.gen, self.device = problem, prior, cfg, generator, device
        self.shape = tuple(problem.base.shape)
        self.field = ResidualField(self.shape, field_cfg, generator).to(device)  # type: ignore[arg-type]
        grids = list(self.field.grids.parameters())
        mlp = [p for n, p in self.field.named_parameters() if not n.startswith("grids.")]
        self.opt = torch.optim.Adam([{"params": grids, "lr": cfg.lr}, {"params": mlp, "lr": cfg.lr_mlp}])
        taps = [(0, 1.0)] if cfg.degradation == "pick" else average_weights(problem.factor)
        self.taps = torch.tensor([o for o, _ in taps], device=device)
        self.tap_w = torch.tensor([w for _, w in taps], device=device, dtype=torch.float32)

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(high, (n,), generator=self.gen).to(self.device)

    def consistency(self) -> Tensor:
        """Mean squared error of the re-degraded field on ``points`` random measured voxels."""
        p, n = self.p, self.cfg.points
        m, y, x = self._randint(len(p.rows), n), self._randint(self.shape[1], n), self._randint(self.shape[2], n)
        z = p.rows.to(self.device)[m][:, None] + self.taps[None]  # (n, taps)
        inside = (z >= 0) & (z < self.shape[0])
        zc = z.clamp(0, self.shape[0] - 1)
        yy, xx = y[:, None].expand_as(zc), x[:, None].expand_as(zc)
        coords = torch.stack((zc, yy, xx), -1).view(-1, 3).float()
        values = (p.base[zc, yy, xx].view(-1) + self.field(coords)).view(zc.shape)
        w = self.tap_w[None] * inside
        model = (values * w).sum(1) / w.sum(1)
        return ((model - p.measured.to(self.device)[m, y, x]) ** 2).mean()

    def render_planes(self, align: int) -> Tensor:
        """``planes`` random XZ / YZ windows (B, 1, H, W): ``patch`` pixels square, else the largest that fit, rounded
        down to multiples of ``align``."""
        nz, ny, nx = self.shape
        h, w = nz // align * align, min(ny, nx) // align * align
        if self.cfg.patch:
            h, w = min(h, self.cfg.patch // align * align), min(w, self.cfg.patch // align * align)
        if h < align or w < align:
            raise ValueError(f"a fit region of {self.shape} is smaller than the prior's tile alignment {align}")
        coords, bases = [], []
        for _ in range(self.cfg.planes):
            axis = "xz" if int(self._randint(2, 1)) == 0 else "yz"
            index = int(self._randint(ny if axis == "xz" else nx, 1))
            cols = nx if axis == "xz" else ny
            z0, c0 = int(self._randint(nz - h + 1, 1)), int(self._randint(cols - w + 1, 1))
            coords.append(plane_coords(self.shape, axis, index, self.device).view(nz, cols, 3)[z0 : z0 + h,
                                                                                              c0 : c0 + w])
            bases.append(self.p.base[z0 : z0 + h, index, c0 : c0 + w] if axis == "xz" else
                         self.p.base[z0 : z0 + h, c0 : c0 + w, index])
        residual = self.field(torch.stack(coords).reshape(-1, 3)).view(len(coords), h, w)
        return (torch.stack(bases) + residual)[:, None]

    def sds(self) -> Tensor:
        prior, cfg = self.prior, self.cfg
        assert prior is not None
        x = self.render_planes(getattr(prior, "align", 1))
        n_t = prior.alphas_cumprod.shape[0]
        lo, hi = int(round(cfg.t_range[0] * (n_t - 1))), int(round(cfg.t_range[1] * (n_t - 1)))
        t = (torch.randint(hi - lo + 1, (x.shape[0],), generator=self.gen) + lo).to(self.device)
        noise = torch.randn(tuple(x.shape), generator=self.gen).to(self.device)
        return sds_loss(prior, x, t, noise, cfg.weighting)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        loss = cfg.consistency_weight * self.consistency()
        info = {"consistency": float(loss.detach())}
        if cfg.sds_weight > 0 and self.prior is not None:
            s = self.sds()
            info["sds"] = float(s.detach())
            loss = loss + cfg.sds_weight * s
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return info

    def run(self) -> list[dict[str, float]]:
        return [self.step() for _ in range(self.cfg.steps)]

    @torch.no_grad()
    def residual(self, box: tuple[slice, slice, slice]) -> Tensor:
        """The learned residual (prior units) over the sub-box ``box`` of the region, on the CPU."""
        zs, ys, xs = (torch.arange(s.start, s.stop, device=self.device, dtype=torch.float32) for s in box)
        zz, yy, xx = torch.meshgrid(zs, ys, xs, indexing="ij")
        coords = torch.stack((zz, yy, xx), -1).view(-1, 3)
        parts = [self.field(coords[i : i + RENDER_CHUNK]) for i in range(0, len(coords), RENDER_CHUNK)]
        return torch.cat(parts).view(zz.shape).cpu()


def fit_region(problem: Problem, prior: Prior | None, cfg: FitConfig, field_cfg: FieldConfig, seed: int,
               box: tuple[slice, slice, slice], device: torch.device) -> tuple[Tensor, list[dict[str, float]]]:
    """Fit the field of ``problem`` from ``seed`` and return its residual over ``box`` (prior units) and the
    per-step losses."""
    gen = torch.Generator().manual_seed(seed)
    problem = Problem(problem.base.to(device), problem.measured.to(device), problem.rows, problem.factor)
    fitter = Fitter(problem, prior, cfg, field_cfg, gen, device)
    history = fitter.run()
    return fitter.residual(box), history


"""MSDSR's diffusion: a pixel-space DDPM over 2-D images whose clean rows condition the generation of the others.

- Schedule: cosine (Nichol & Dhariwal), ``T`` = 1000 steps, alpha-bar clipped so that beta <= 0.999.
- Images live in [-1, 1] (the trainer maps [0, 1] data there).
- Row masks (B, 1, H, 1), 1 on kept rows.  Training draws per sample a keep ratio in [1/(r+1), 1/2] and that many
  rows at random positions (the paper), or, for a ``regular_fraction`` of the samples, every s-th row at a random
  phase with s in 2..r+1 (the geometry inference sees); inference keeps the rows whose global z is a multiple of r.
- The clean rows are written into x_t at every step (:func:`with_rows`), the network sees x_t and the mask, and
  the loss ignores the kept rows (:func:`masked_l1`).
- Parameterisations: ``eps`` (the paper's), ``x0`` and ``v`` (Salimans & Ho); :func:`predict` turns any of them
  into (x0, eps) estimates.
- DDIM (:func:`ddim`) with any number of steps and eta; its noise comes from a caller-given ``NoiseFn`` (seeded per
  tile by the method), so a sample is a pure function of (network, conditioning, seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

NoiseFn = Callable[[int, tuple[int, ...]], Tensor]

T_STEPS = 1000
PARAMETERIZATIONS = ("eps", "x0", "v")


def cosine_alpha_bar(steps: int = T_STEPS, s: float = 0.008) -> Tensor:
    """alpha-bar_t for t = 0..steps-1 (t = 0 the first noising step), float64, betas clipped at 0.999."""
    f = [math.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2 for i in range(steps + 1)]
    betas = [min(1 - f[i + 1] / f[i], 0.999) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)


_ALPHA_BAR = cosine_alpha_bar()


def alpha_bar(t: Tensor) -> Tensor:
    """alpha-bar at integer steps ``t`` (any shape), float32, on t's device."""
    return _ALPHA_BAR.to(torch.float32).to(t.device)[t]


def _bcast(a: Tensor) -> Tensor:
    return a.view(-1, 1, 1, 1)


def with_rows(x_t: Tensor, x0: Tensor, mask: Tensor) -> Tensor:
    """x_t with the kept rows replaced by the clean rows of ``x0`` (the conditioning)."""
    return torch.where(mask.bool(), x0, x_t)


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, mask: Tensor) -> Tensor:
    """The forward process on the generated rows; kept rows stay clean."""
    ab = _bcast(alpha_bar(t))
    return with_rows(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, x0, mask)


def target(x0: Tensor, noise: Tensor, t: Tensor, parameterization: str) -> Tensor:
    """What the network learns to output."""
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        ab = _bcast(alpha_bar(t))
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0
    raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")


def interpolate_rows(x: Tensor, mask: Tensor) -> Tensor:
    """Every row of ``x`` (B, 1, H, W) linearly interpolated between the nearest kept rows above and below (the
    nearest kept row beyond the first / last one); rows where no row is kept are 0."""
    h = x.shape[-2]
    idx = torch.arange(h, device=x.device).view(1, 1, h, 1).expand(mask.shape[0], 1, h, 1)
    kept = mask.bool()
    prev = torch.where(kept, idx, torch.full_like(idx, -1)).cummax(dim=2).values
    nxt = torch.where(kept, idx, torch.full_like(idx, h)).flip(2).cummin(dim=2).values.flip(2)
    prev, nxt = torch.where(prev < 0, nxt, prev), torch.where(nxt >= h, prev, nxt)
    none = prev >= h
    prev, nxt = prev.clamp(0, h - 1), nxt.clamp(0, h - 1)
    span = (nxt - prev).clamp_min(1).to(x.dtype)
    w = ((idx - prev).to(x.dtype) / span).clamp(0, 1)
    a = torch.gather(x, 2, prev.expand(-1, -1, -1, x.shape[-1]))
    b = torch.gather(x, 2, nxt.expand(-1, -1, -1, x.shape[-1]))
    return torch.where(none, torch.zeros_like(a), a + w * (b - a))


def _flag(net: torch.nn.Module, name: str) -> bool:
    return bool(getattr(getattr(net, "config", None), name, False))


def diffused(net: torch.nn.Module, x0: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """(the image the diffusion runs on, the linear conditioning or None): x0 itself, or -- for a ``residual``
    network -- x0 minus the linear interpolation of its kept rows (0 on the kept rows), so that an untrained
    network (output 0) gives linear interpolation."""
    if not _flag(net, "linear"):
        return x0, None
    lin = interpolate_rows(x0, mask.to(x0.dtype).expand(x0.shape[0], 1, x0.shape[2], 1))
    return (x0 - lin if _flag(net, "residual") else x0), lin


def net_input(net: torch.nn.Module, x_t: Tensor, mask: Tensor, lin: Tensor | None = None) -> Tensor:
    """What the network sees: x_t, the mask, and (for a ``linear`` network) the kept rows interpolated (``lin``,
    computed from x_t's clean rows when not given)."""
    m = mask.to(x_t.dtype).expand(x_t.shape[0], 1, x_t.shape[2], 1)
    parts = [x_t, m.expand_as(x_t)]
    if _flag(net, "linear"):
        parts.append(interpolate_rows(x_t, m) if lin is None else lin)
    return torch.cat(parts, dim=1)


def predict(net: torch.nn.Module, x_t: Tensor, t: Tensor, mask: Tensor, parameterization: str = "eps",
            lin: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(x0 estimate, eps estimate) of the diffused image from the network's output at x_t (kept rows clean)."""
    x = net_input(net, x_t, mask, lin).contiguous(memory_format=torch.channels_last)
    out = net(x, t).to(x_t.dtype)
    ab = _bcast(alpha_bar(t)).to(x_t.dtype)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    if parameterization == "eps":
        return (x_t - s * out) / a, out
    if parameterization == "x0":
        return out, (x_t - a * out) / s
    if parameterization == "v":
        return a * x_t - s * out, s * x_t + a * out
    raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")


def denoise(net: torch.nn.Module, x_t: Tensor, t: Tensor | int, mask: Tensor | None = None,
            parameterization: str = "eps", lin: Tensor | None = None) -> Tensor:
    """The network's estimate of the clean image from x_t at step t, clipped to [-1, 1], kept rows exact
    (``mask`` None: no row is kept, an unconditional denoiser).  For a ``residual`` network x_t is the noisy
    residual and ``lin`` the linear conditioning; the estimate is of the image (lin + residual)."""
    if mask is None:
        mask = torch.zeros(x_t.shape[0], 1, x_t.shape[2], 1, dtype=x_t.dtype, device=x_t.device)
    if isinstance(t, int):
        t = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    x0, _ = predict(net, x_t, t, mask, parameterization, lin)
    if _flag(net, "residual"):
        if lin is None:
            raise ValueError("a residual network needs its linear conditioning (lin)")
        return (lin + with_rows(x0, torch.zeros_like(x0), mask)).clamp(-1, 1)
    return with_rows(x0.clamp(-1, 1), x_t, mask)


def masked_l1(pred: Tensor, goal: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the generated rows only (kept rows contribute nothing)."""
    weight = (1 - mask.to(pred.dtype)).expand_as(pred)
    return ((pred - goal).abs() * weight).sum() / weight.sum().clamp_min(1)


def train_masks(batch: int, rows: int, factor: int, rng: np.random.Generator, regular_fraction: float = 0.0
                ) -> Tensor:
    """(B, 1, rows, 1) float masks of kept rows: random rows at a keep ratio in [1/(r+1), 1/2], or (with
    probability ``regular_fraction``) every s-th row from a random phase, s in 2..r+1.  At least one row kept."""
    masks = np.zeros((batch, 1, rows, 1), dtype=np.float32)
    for b in range(batch):
        if rng.random() < regular_fraction:
            stride = int(rng.integers(2, factor + 2))
            masks[b, 0, int(rng.integers(stride)) :: stride, 0] = 1
        else:
            ratio = rng.uniform(1 / (factor + 1), 1 / 2)
            keep = max(1, int(round(ratio * rows)))
            masks[b, 0, rng.choice(rows, size=keep, replace=False), 0] = 1
    return torch.from_numpy(masks)


def regular_mask(rows: int, z0: int, factor: int) -> Tensor:
    """(1, 1, rows, 1) mask of the rows whose global z (``z0`` + row) is a measured slice (a multiple of r)."""
    z = torch.arange(rows) + z0
    return (z % factor == 0).to(torch.float32).view(1, 1, rows, 1)


def ddim_timesteps(steps: int) -> list[int]:
    """``steps`` timesteps from T-1 down to 0, evenly spaced (one step: T-1, a single x0 estimate from noise)."""
    if steps < 1 or steps > T_STEPS:
        raise ValueError(f"DDIM steps must be in 1..{T_STEPS}, got {steps}")
    if steps == 1:
        return [T_STEPS - 1]
    return sorted({int(round(v)) for v in np.linspace(0, T_STEPS - 1, steps)}, reverse=True)


@torch.no_grad()
def ddim(net: torch.nn.Module, x0_rows: Tensor, mask: Tensor, steps: int, noise: NoiseFn, eta: float = 0.0,
         parameterization: str = "eps") -> Tensor:
    """A DDIM sample (B, 1, H, W) whose kept rows are those of ``x0_rows`` (values elsewhere ignored).

    x_T is ``noise(0, shape)``; step k (from t to the next smaller t') draws ``noise(k + 1, shape)`` when eta > 0.
    x0 estimates are clipped to [-1, 1]; the clean rows are written into x_t at every step and into the result.
    A ``residual`` network diffuses x0 minus the linear interpolation of the kept rows (:func:`diffused`).
    """
    shape = tuple(x0_rows.shape)
    mask = mask.to(x0_rows.device, x0_rows.dtype).expand(shape[0], 1, shape[2], 1)
    rows, lin = diffused(net, x0_rows, mask)  # residual: the diffused image's kept rows are 0
    base = lin if _flag(net, "residual") else torch.zeros_like(x0_rows)
    x = with_rows(noise(0, shape).to(x0_rows.device, x0_rows.dtype), rows, mask)
    ts = ddim_timesteps(steps)
    x0 = x
    for k, t in enumerate(ts):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        x0, eps = predict(net, x, tt, mask, parameterization, lin)
        x0 = (base + x0).clamp(-1, 1) - base  # the image estimate stays in [-1, 1]
        if k == len(ts) - 1:
            break
        ab, ab_prev = float(_ALPHA_BAR[t]), float(_ALPHA_BAR[ts[k + 1]])
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # consistent with the clipped x0
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise(k + 1, shape).to(x.device, x.dtype)
        x = with_rows(x, rows, mask)
    return with_rows(base + x0, x0_rows, mask)

"""What the INR fit needs of a 2-D diffusion prior, and a closed-form one for tests.

A prior works on images (B, 1, H, W) in [-1, 1] (the data's normalisation ``(v - offset) / scale`` maps it to
[0, 1], then ``2 v - 1``), with a DDPM schedule ``alphas_cumprod`` (T,) and the noise estimate ``eps(x_t, t)``
of x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps.  The real prior is an MSDSR denoiser used unconditionally
(``msdsr_prior.py``, the one place that knows MSDSR's API); :class:`GaussianPrior` is the toy whose score is known
exactly, so the direction of the SDS gradient can be tested.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

T_STEPS = 1000


class Prior(Protocol):
    """A 2-D diffusion prior: the schedule, the data normalisation and the noise estimate."""

    alphas_cumprod: Tensor  # (T,) float32, on the prior's device
    offset: float
    scale: float
    device: torch.device

    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The estimate of the noise in ``x_t`` (B, 1, H, W) at integer steps ``t`` (B,); no gradient needed."""
        ...


def cosine_alphas(steps: int = T_STEPS, s: float = 0.008) -> Tensor:
    """The cosine schedule's alpha-bar (Nichol & Dhariwal), betas clipped at 0.999: the toy prior's schedule."""
    f = [math.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2 for i in range(steps + 1)]
    betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(torch.float32)


class GaussianPrior:
    """Pixels i.i.d. N(``mean``, ``std``^2) in [-1, 1] units: x_t is Gaussian too, and the optimal noise estimate is
    ``sqrt(1-a) (x_t - sqrt(a) mean) / (a std^2 + 1 - a)``.  Its expected SDS gradient is then exactly
    ``sqrt(a (1-a)) / (a std^2 + 1 - a) * (x - mean)``: it pulls every pixel towards ``mean``."""

    def __init__(self, mean: float = 0.0, std: float = 0.5, *, offset: float = 0.0, scale: float = 255.0,
                 device: str = "cpu"):
        self.mean, self.std = float(mean), float(std)
        self.offset, self.scale = float(offset), float(scale)
        self.device = torch.device(device)
        self.alphas_cumprod = cosine_alphas().to(self.device)

    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x_t.dtype)
        return (1 - a).sqrt() * (x_t - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)


GAUSSIAN_KIND = "gaussian-prior"  # config.json kind of a closed-form prior's model directory (tests, smoke runs)


class GaussianNet(torch.nn.Module):
    """The closed-form prior's two numbers as a module, so its model directory loads like any other."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(()))
        self.std = torch.nn.Parameter(torch.ones(()))


def gaussian_from(net: GaussianNet, spec: dict, device: torch.device) -> GaussianPrior:
    norm = spec["normalization"]
    return GaussianPrior(float(net.mean), float(net.std), offset=float(norm["offset"]), scale=float(norm["scale"]),
                         device=str(device))


def save_gaussian(model_dir: str, mean: float, std: float, *, offset: float = 0.0, scale: float = 255.0,
                  inr: dict | None = None) -> None:
    """A model directory holding a :class:`GaussianPrior` (``inr``: the fit settings it carries)."""
    import os

    from ...checkpoints import CONFIG, WEIGHTS, save_json, save_tensors

    os.makedirs(model_dir, exist_ok=True)
    save_tensors(os.path.join(model_dir, WEIGHTS), {"mean": torch.tensor(float(mean)),
                                                     "std": torch.tensor(float(std))})
    config = {"kind": GAUSSIAN_KIND, "model": {}, "normalization": {"offset": offset, "scale": scale}}
    save_json(os.path.join(model_dir, CONFIG), {**config, **({"inr": inr} if inr is not None else {})})

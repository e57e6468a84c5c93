"""MSDSR's denoiser: a small 2-D U-Net with a timestep embedding, on two input channels (the noisy image x_t with
the clean rows written in, and the row mask; with ``linear``, a third: the kept rows linearly interpolated, the
conditioning isotropic CARE's regression starts from) and one output channel (the parameterisation's target: epsilon, x0
or v, ``diffusion.py``).

Width and depth come from the recipe (the paper's network is the 274 M-parameter LDM CelebA-HQ U-Net; ours is
small on purpose, a CPU trains it in minutes).  Per level ``blocks`` residual blocks (GroupNorm, SiLU, 3x3
convolution, the time embedding added between the two convolutions), 2x2 average pooling down, nearest upsampling
and concatenated skips up, a zero-initialised output convolution.  Tiles must be multiples of ``align = 2**depth``.
GroupNorm normalises over the whole tile, so a tile's result depends on all of it: the blockwise method therefore
always runs whole tiles on a global grid (method.py), never a block's part of one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DenoiserConfig:
    width: int = 32  # channels of the first level; doubled at each level below (at most 4x)
    depth: int = 3  # 2x2 poolings
    blocks: int = 1  # residual blocks per level
    seed: int = 0  # weight initialisation
    linear: bool = False  # a third input channel: the kept rows linearly interpolated (beyond the paper)
    residual: bool = False  # diffuse x0 minus that interpolation (needs linear; beyond the paper)

    def __post_init__(self) -> None:
        for name in ("width", "depth", "blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.linear, bool) or not isinstance(self.residual, bool):
            raise ValueError(f"linear and residual must be true or false, got {self.linear!r}, {self.residual!r}")
        if self.residual and not self.linear:
            raise ValueError("residual needs linear: true (the residual is taken from the linear interpolation)")
        if self.width % 4:
            raise ValueError(f"width must be a multiple of 4 (GroupNorm groups), got {self.width}")

    @property
    def align(self) -> int:
        return 2**self.depth

    @property
    def inputs(self) -> int:
        return 3 if self.linear else 2

    def channels(self, level: int) -> int:
        return self.width * min(2**level, 4)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoiserConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown denoiser keys {unknown}; valid: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str) -> DenoiserConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown denoiser preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 8, "depth": 2, "blocks": 1},
    "small": {"width": 32, "depth": 3, "blocks": 1},
    "default": {"width": 96, "depth": 3, "blocks": 2},
}


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _groups(c: int) -> int:
    return math.gcd(c, 8)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(temb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Denoiser(nn.Module):
    """``forward(x, t)``: x (B, inputs, H, W) = (x_t in [-1, 1]-ish, row mask in {0, 1}[, interpolated rows]), t (B,)
    integer timesteps ->
    (B, 1, H, W); H and W multiples of ``config.align``."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        c, d, n = config, config.depth, config.blocks
        temb = 4 * c.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.embed = nn.Sequential(nn.Linear(c.width, temb), nn.SiLU(), nn.Linear(temb, temb))
            self.inp = nn.Conv2d(c.inputs, c.width, 3, padding=1)
            self.down = nn.ModuleList()
            prev = c.width
            for level in range(d):
                blocks = nn.ModuleList()
                for _ in range(n):
                    blocks.append(ResBlock(prev, c.channels(level), temb))
                    prev = c.channels(level)
                self.down.append(blocks)
            self.middle = nn.ModuleList([ResBlock(prev, c.channels(d), temb), ResBlock(c.channels(d),
                                                                                       c.channels(d), temb)])
            prev = c.channels(d)
            self.up = nn.ModuleList()
            for level in reversed(range(d)):
                blocks = nn.ModuleList()
                for i in range(n):
                    blocks.append(ResBlock(prev + (c.channels(level) if i == 0 else 0), c.channels(level), temb))
                    prev = c.channels(level)
                self.up.append(blocks)
            self.norm = nn.GroupNorm(_groups(prev), prev)
            self.out = nn.Conv2d(prev, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = self.config.align
        if x.shape[-2] % a or x.shape[-1] % a:
            raise ValueError(f"tile size {tuple(x.shape[-2:])} is not a multiple of {a}")
        emb = self.embed(timestep_embedding(t, self.config.width))
        h = self.inp(x)
        skips = []
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        for block in self.middle:
            h = block(h, emb)
        for blocks, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            for i, block in enumerate(blocks):
                h = block(torch.cat([h, skip], dim=1) if i == 0 else h, emb)
        return self.out(F.silu(self.norm(h)))


def build_denoiser(config: DenoiserConfig | dict[str, Any] | str) -> Denoiser:
    if isinstance(config, str):
        config = DenoiserConfig.preset(config)
    elif isinstance(config, dict):
        config = DenoiserConfig.from_dict(config)
    return Denoiser(config)

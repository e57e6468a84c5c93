"""The 2-D U-Net of the lateral regression method: it maps a plane whose rows between measured rows were filled by
a classical interpolation (the base) to the sharp plane, as a residual over the base.

Small on purpose (a CPU trains it in minutes): ``depth`` 2x2 average poolings, ``convs`` 3x3 convolutions with
ReLU per level, channels doubling per level, nearest upsampling and concatenated skips, a zero-initialised 1x1
output convolution, so an untrained network returns the base exactly.  Average pooling and nearest upsampling make
the network equivariant to shifts by multiples of ``align = 2**depth`` -- what lets the blockwise method cut planes
into tiles on a global grid and get the same voxels in any block layout (method.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class UNetConfig:
    width: int = 32  # channels of the first level; doubled at each level below
    depth: int = 3  # 2x2 poolings
    convs: int = 2  # 3x3 convolutions per level
    seed: int = 0  # weight initialisation

    def __post_init__(self) -> None:
        for name in ("width", "depth", "convs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def align(self) -> int:
        """Shifts by multiples of this leave the output shifted the same (and tiles must be multiples of it)."""
        return 2**self.depth

    @property
    def reach(self) -> int:
        """Pixels on each side that can change a pixel's output (an upper bound of the receptive radius)."""
        r = self.convs * 2**self.depth  # bottleneck
        for level in range(self.depth):
            r += 2 * self.convs * 2**level + 2**level  # encoder + decoder convolutions, pooling / upsampling
        return r

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown U-Net keys {unknown}; valid: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str) -> UNetConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 8, "depth": 2, "convs": 1},
    "small": {"width": 16, "depth": 3, "convs": 2},
    "default": {"width": 32, "depth": 4, "convs": 2},
}


def _stack(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """``forward(x)``: x (B, 1, H, W) in [0, 1], H and W multiples of ``config.align`` -> (B, 1, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w, d, c = config.width, config.depth, config.convs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.down = nn.ModuleList(_stack(1 if i == 0 else w * 2 ** (i - 1), w * 2**i, c) for i in range(d))
            self.middle = _stack(w * 2 ** (d - 1), w * 2**d, c)
            self.up = nn.ModuleList(_stack(w * 2 ** (i + 1) + w * 2**i, w * 2**i, c) for i in reversed(range(d)))
            self.out = nn.Conv2d(w, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        a = self.config.align
        if x.shape[-2] % a or x.shape[-1] % a:
            raise ValueError(f"plane size {tuple(x.shape[-2:])} is not a multiple of {a}")
        skips, h = [], x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        h = self.middle(h)
        for block, skip in zip(self.up, reversed(skips)):
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], dim=1))
        return x + self.out(h)


def build_unet(config: UNetConfig | dict[str, Any] | str) -> UNet:
    if isinstance(config, str):
        config = UNetConfig.preset(config)
    elif isinstance(config, dict):
        config = UNetConfig.from_dict(config)
    return UNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

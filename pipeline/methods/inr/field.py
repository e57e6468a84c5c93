"""The neural field of one fit region: a classical interpolation plus a learned residual.

value(z, y, x) = base(z, y, x) + mlp(features(z, y, x)), where ``base`` is the ``linear`` / ``cubic`` interpolation
of the measured slices on the output grid and ``features`` concatenates, over a few levels, trilinear lookups in
dense feature grids of a given spacing (a multi-resolution dense grid, Instant-NGP's encoding without the hash:
a fit region is small enough to store every level densely).  Coordinates are physical: output voxels, which are
isotropic, so a level's spacing means the same length along Z, Y and X.  The MLP's last layer starts at zero, so
the field at step 0 IS the classical interpolation, bit for bit, and a short budget cannot start worse.

Plain torch, CPU and CUDA.  Lookups use ``grid_sample`` with one batch item: on CPU its backward accumulates in a
fixed order, so a fit is bitwise reproducible for a given seed and thread count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class FieldConfig:
    spacings: tuple[int, ...] = (8, 4, 2, 1)  # output voxels between the grid points of each level
    features: int = 4  # per level
    hidden: int = 32
    layers: int = 2  # hidden layers of the MLP
    init: float = 1e-2  # grid features start uniform in [-init, init]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacings", tuple(self.spacings))
        if not self.spacings or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.spacings):
            raise ValueError(f"spacings must be positive integers, got {list(self.spacings)}")
        for name in ("features", "hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.init < 1:
            raise ValueError(f"init must be in [0, 1), got {self.init}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacings"] = list(self.spacings)
        return d


@dataclass
class Region:
    """The voxel grid a field covers: ``shape`` (z, y, x) output voxels."""

    shape: tuple[int, int, int]
    dims: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.dims = [max(n - 1, 1) for n in self.shape]


class ResidualField(nn.Module):
    """The learned residual over a region; :meth:`forward` takes voxel coordinates (N, 3) as (z, y, x) floats."""

    def __init__(self, shape: tuple[int, int, int], config: FieldConfig, generator: torch.Generator):
        super().__init__()
        self.region, self.config = Region(tuple(shape)), config  # type: ignore[arg-type]
        grids = []
        for s in config.spacings:
            size = [-(-(n - 1) // s) + 1 for n in shape]  # grid points at 0, s, 2s, ... covering the region
            g = (torch.rand((1, config.features, *size), generator=generator) * 2 - 1) * config.init
            grids.append(nn.Parameter(g))
        self.grids = nn.ParameterList(grids)
        width = config.features * len(config.spacings)
        layers: list[nn.Module] = []
        for _ in range(config.layers):
            lin = nn.Linear(width, config.hidden)
            _init_linear(lin, generator)
            layers += [lin, nn.SiLU()]
            width = config.hidden
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.mlp = nn.Sequential(*layers)

    def encode(self, coords: Tensor) -> Tensor:
        """(N, 3) voxel coordinates -> (N, features * levels)."""
        feats = []
        for s, g in zip(self.config.spacings, self.grids):
            extent = torch.tensor([(n - 1) * s for n in g.shape[2:]], dtype=coords.dtype, device=coords.device)
            unit = coords / extent.clamp_min(1) * 2 - 1  # [-1, 1] over the grid's span (align_corners)
            pts = unit.flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants (x, y, z)
            f = F.grid_sample(g, pts, mode="bilinear", padding_mode="border", align_corners=True)
            feats.append(f.view(g.shape[1], -1).t())
        return torch.cat(feats, dim=1)

    def forward(self, coords: Tensor) -> Tensor:
        return self.out(self.mlp(self.encode(coords))).squeeze(-1)


def _init_linear(lin: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default (Kaiming-uniform-like) bounds, drawn from ``generator`` so a fit is seeded."""
    bound = 1 / lin.in_features**0.5
    with torch.no_grad():
        lin.weight.copy_(torch.rand(lin.weight.shape, generator=generator) * 2 * bound - bound)
        lin.bias.copy_(torch.rand(lin.bias.shape, generator=generator) * 2 * bound - bound)


def plane_coords(shape: tuple[int, int, int], axis: str, index: int, device: torch.device) -> Tensor:
    """Voxel coordinates (Z * C, 3) of the XZ plane y = ``index`` (axis "xz") or the YZ plane x = ``index``
    ("yz"), rows = z, columns = x or y."""
    nz, ny, nx = shape
    z = torch.arange(nz, device=device, dtype=torch.float32)
    cols = torch.arange(nx if axis == "xz" else ny, device=device, dtype=torch.float32)
    zz, cc = torch.meshgrid(z, cols, indexing="ij")
    fixed = torch.full_like(zz, float(index))
    pts = (zz, fixed, cc) if axis == "xz" else (zz, cc, fixed)
    return torch.stack(pts, dim=-1).view(-1, 3)


def volume_coords(shape: tuple[int, int, int], z: Tensor, device: torch.device) -> Tensor:
    """Voxel coordinates of whole XY slices at the given z (Z', Y, X, 3) flattened to (Z' * Y * X, 3)."""
    ys = torch.arange(shape[1], device=device, dtype=torch.float32)
    xs = torch.arange(shape[2], device=device, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(z.to(device, torch.float32), ys, xs, indexing="ij")
    return torch.stack((zz, yy, xx), dim=-1).view(-1, 3)

"""lateral-regression as an executor method: the 2-D U-Net (``network.py``) restores every XZ and every YZ plane of a
block from its base (``linear`` or ``cubic`` interpolation along Z); the two are fused by the mean and the measured
slices are put back exactly.

For one block: the input is normalised with the model's ``normalization``; the base is computed with
:class:`isovol.pipeline.methods.interp.Interpolation`, exactly what ``isovol upsample --method linear|cubic`` gives
(before rounding); every XZ plane (fixed y; rows = output z, columns = x) and every YZ plane (fixed x; rows = z,
columns = y) of the block's core goes through the U-Net, and the result is ``base + scale * (r_xz + r_yz) / 2`` with
``r = unet(x) - x`` the network's residual: the mean of the two restorations mapped back to the data range, written
so that a network whose output is zero (an untrained one) returns the base voxel for voxel, i.e. ``--method linear``.

Tiles on a global grid (overlap-tile): a plane is cut into tile cores of ``tile`` x ``tile`` pixels at multiples
of ``tile`` in global output z and in global x (or y); each tile is read with a margin ``M`` on every side, ``M``
the U-Net's reach (an upper bound of its receptive radius) rounded up to its alignment ``2**depth``, and cropped
back to its core.  As the margin covers the whole receptive field and the pooling grid is aligned, a core pixel is
what a pass over the whole plane gives: there is no seam at all, which is better than blending overlapping tiles
(a blend still mixes two approximations and makes voxels depend on which tiles a block cut).  The halo makes every
tile lie inside the padded block (Y/X: ``tile + M``; Z: the tile's rows and margin in input slices plus the base's
taps), so a tile's input is the same array whatever the block, and tiles that hold only measured slices of the
block are skipped (they would be overwritten).

Exactness: every tile has one shape and goes through the network in batches of a fixed size (the last padded
with zeros), so a tile's result does not depend on its batch neighbours, and each core voxel is assigned once, from
its one tile; on CPU (fp32) any block layout therefore gives the very bits of one whole-volume call (tested), for
a given batch (part of ``config``) and torch thread count (oneDNN's kernels change the last bit with either).  On
CUDA the network runs under bf16 autocast: fast, close, not bit-tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ...errors import InputError
from ..base import Halo, cast_like
from ..checkpointed import CheckpointMethod
from ..interp import Interpolation

NAME = "lateral-regression"
BASES = ("linear", "cubic")
#: input slices the base reads beyond a row's own slice i (linear: i, i+1; cubic: i-1 .. i+2)
TAPS = {"linear": (0, 1), "cubic": (1, 2)}
#: tile core and fixed batch when none is given (CPU, CUDA); tile is rounded up to the U-Net's alignment
TILES = {"cpu": 128, "cuda": 256}
BATCHES = {"cpu": 4, "cuda": 16}
#: planes whose base is computed in one pass: bounds the memory of the padded base (planes x rows x columns)
PLANES_PER_PASS = 16


class _Cut(NamedTuple):
    """One tile along an axis: its core starts at global ``g``; the block's part of the core is global [a, b)."""

    g: int
    a: int
    b: int


def _cuts(c0: int, c1: int, tile: int) -> list[_Cut]:
    return [_Cut(g, max(g, c0), min(g + tile, c1)) for g in range(c0 // tile * tile, c1, tile)]


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class LateralRegression(CheckpointMethod):
    name = NAME
    KIND = NAME
    WHAT = "model"
    TITLE = "lateral-regression model"
    working_bytes_per_voxel = 24  # the base and the two residuals in float32, their sum

    def __init__(self, model_dir: str, *, device: str | None = None, tile: int | None = None,
                 batch: int | None = None):
        self._open(model_dir)
        self.device = device
        self._read_config()
        kind = "cuda" if self._device().startswith("cuda") else "cpu"
        align = self.unet.align
        self.margin = _round_up(self.unet.reach, align)
        self.tile = _round_up(TILES[kind], align) if tile is None else _positive_int(tile, "tile")
        if self.tile % align:
            raise InputError(f"tile must be a multiple of {align} (the U-Net's 2**depth), got {self.tile}")
        self.batch = BATCHES[kind] if batch is None else _positive_int(batch, "batch")
        reach = self.tile + self.margin
        self.halo = Halo(z=-(-reach // self.factor) + TAPS[self.base][1], y=reach, x=reach)
        self._build(meta=True)  # a corrupt or mismatched checkpoint is refused now, on the client

    def _read_config(self) -> None:
        """The U-Net, factor, base and normalization of config.json, or one line naming what is wrong."""
        from .network import UNetConfig

        spec = self.spec
        try:
            self.unet = UNetConfig.from_dict(spec["model"])
            norm = spec["normalization"]
            self.offset, self.scale = float(norm["offset"]), float(norm["scale"])
            self.factor, self.base = spec["factor"], spec["base"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{self.model_dir}: bad model config ({type(exc).__name__}: {exc})") from None
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise InputError(f"{self.model_dir}: bad model config (factor {self.factor!r})")
        if self.base not in BASES:
            raise InputError(f"{self.model_dir}: bad model config (base {self.base!r}; one of {', '.join(BASES)})")
        if not (np.isfinite(self.offset) and np.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"{self.model_dir}: bad model config (normalization {norm!r})")

    def _network(self) -> Any:
        from .network import build_unet

        return build_unet(self.spec["model"])

    def _load(self) -> Any:
        import torch

        return super()._load().to(memory_format=torch.channels_last)  # oneDNN: 1.3-2.7x faster on CPU

    def _precision(self) -> str:
        return "bf16" if self._device().startswith("cuda") else "fp32"

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "model_hash": self.model_hash, "base": self.base, "tile": self.tile,
                "margin": self.margin, "batch": self.batch, "precision": self._precision()}

    def check_factor(self, factor: int) -> None:
        if factor != self.factor:
            raise InputError(f"the model in {self.model_dir} was trained at factor {self.factor}, not {factor}: "
                             f"train one at this factor with `isovol train --method {NAME}`")

    def check_input(self, dtype: np.dtype) -> None:
        """A model trained on one integer range restores garbage on another (uint16 values scaled by 255)."""
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            if self.offset != float(info.min) or self.scale != float(info.max) - float(info.min):
                raise InputError(f"the model in {self.model_dir} was trained on values {self.offset:g}.."
                                 f"{self.offset + self.scale:g}, the input is {dtype} ({info.min}..{info.max}): "
                                 f"train a model on data of this type")

    # -- the work ----------------------------------------------------------------------------------------------
    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        self.check_factor(factor)
        hy, hx = self.halo.y, self.halo.x
        ny, nx = data.shape[1] - 2 * hy, data.shape[2] - 2 * hx
        raw = data.astype(np.float32)
        base = Interpolation(self.base).apply(raw[:, hy : hy + ny, hx : hx + nx], factor, start, stop)
        z0 = origin[0] * factor  # global output z of local row 0
        # tile rows on the global grid; those holding only measured slices of the block are not needed
        zcuts = [c for c in _cuts(z0 + start, z0 + stop, self.tile) if c.b - c.a > 1 or c.a % factor]
        residual = np.zeros((2, stop - start, ny, nx), dtype=np.float32)
        if zcuts:
            rows = (zcuts[0].g - self.margin - z0, zcuts[-1].g + self.tile + self.margin - z0)
            self._check_rows(rows, factor, data.shape[0])
            xz = self._tiles(raw, residual[0], factor, rows, z0, start, zcuts, origin[2], hy)
            yz = self._tiles(raw.transpose(0, 2, 1), residual[1].transpose(0, 2, 1), factor, rows, z0, start,
                             zcuts, origin[1], hx)
            self._run(xz)
            self._run(yz)
        fused = base + np.float32(self.scale) * ((residual[0] + residual[1]) * np.float32(0.5))
        out = cast_like(fused, data.dtype)
        js = np.arange(start, stop)
        for j in js[js % factor == 0]:  # kept slices are the measured ones, exactly
            out[j - start] = data[j // factor, hy : hy + ny, hx : hx + nx]
        return out

    def _check_rows(self, rows: tuple[int, int], factor: int, zin: int) -> None:
        lo, hi = TAPS[self.base]
        if rows[0] // factor - lo < 0 or (rows[1] - 1) // factor + hi > zin - 1:
            raise ValueError(f"a stack of {zin} slices cannot give output rows {rows} at factor {factor}: it "
                             f"lacks the halo of {self.halo.z} slices")

    def _tiles(self, stack: np.ndarray, target: np.ndarray, factor: int, rows: tuple[int, int], z0: int,
               start: int, zcuts: list[_Cut], col_origin: int, h: int) -> Iterator[tuple[np.ndarray, tuple, tuple]]:
        """Every tile of the core planes of ``stack`` (z, planes + 2h, columns + 2h; local output row 0 at global
        z ``z0``, column 0 at global ``col_origin``): (its normalised input, where its core's part goes in
        ``target`` (core rows from local ``start``, planes, columns), which part of the core that is).  ``rows``:
        the local output rows the tiles read."""
        t, m = self.tile, self.margin
        n_planes, n_cols = target.shape[1], target.shape[2]
        zc0, cc0 = z0 + start, col_origin + h  # global z and column of the core's first row and column
        ccuts = _cuts(cc0, cc0 + n_cols, t)
        interp = Interpolation(self.base)
        offset, scale = np.float32(self.offset), np.float32(self.scale)
        for p0 in range(0, n_planes, PLANES_PER_PASS):
            p1 = min(p0 + PLANES_PER_PASS, n_planes)
            chunk = interp.apply(stack[:, h + p0 : h + p1, :], factor, *rows)  # (rows, planes, columns)
            chunk = (chunk - offset) / scale
            for i in range(p0, p1):
                for zc in zcuts:
                    lz = zc.g - m - z0 - rows[0]
                    for cc in ccuts:
                        lc = cc.g - m - col_origin
                        tile = chunk[lz : lz + t + 2 * m, i - p0, lc : lc + t + 2 * m]
                        dest = (slice(zc.a - zc0, zc.b - zc0), i, slice(cc.a - cc0, cc.b - cc0))
                        part = (slice(zc.a - zc.g, zc.b - zc.g), slice(cc.a - cc.g, cc.b - cc.g))
                        yield tile, (target, dest), part

    def _run(self, tiles: Iterator[tuple[np.ndarray, tuple, tuple]]) -> None:
        """Tiles through the U-Net in batches of ``batch`` (the last one padded with zeros); each tile's residual
        core (``unet(x) - x``, margin cropped) is assigned to its destination."""
        import torch

        t, m, size = self.tile, self.margin, self.tile + 2 * self.margin
        dev = torch.device(self._device())
        model = self.model
        buf = np.zeros((self.batch, 1, size, size), dtype=np.float32)
        pending: list[tuple[tuple, tuple]] = []

        def flush() -> None:
            buf[len(pending) :] = 0
            x = torch.from_numpy(buf).to(dev).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                pred = model(x)
            core = (pred.float()[:, 0, m : m + t, m : m + t] - x[:, 0, m : m + t, m : m + t]).cpu().numpy()
            for k, ((target, dest), part) in enumerate(pending):
                target[dest] = core[k][part]
            pending.clear()

        for tile, where, part in tiles:
            buf[len(pending), 0] = tile
            pending.append((where, part))
            if len(pending) == self.batch:
                flush()
        if pending:
            flush()

"""D2R Stage II as an executor method: restore the XZ and YZ slices of each block with the lateral prior,
and fuse the two recovered volumes into a pseudo-isotropic one.

For one block the condition mu is the cubic interpolation along Z (the routine Stage I degrades with:
Keys cubic convolution, see ``pipeline.degrade``).  Every XZ slice (fixed y) and every YZ slice (fixed x) of
mu is cut into tiles of a ``tile`` x ``tile`` core plus a ``margin`` of context on each side; each tile is
restored by the IR-SDE sampler and its margin cropped away.  The two stacks are fused by the mean (or the
geometric mean) and the kept slices are put back exactly.

Reproducibility: tile cores lie on a global grid (multiples of ``tile`` in output z and in x or y), and the
noise of a tile is seeded from (seed, plane, global slice index, global tile index) and nothing else, so a
rerun, a retry, or another block layout whose blocks are whole multiples of ``tile`` gives the same voxels
(up to the floating-point behaviour of batched convolutions).  ``recover_block_shape`` picks such blocks, and
``block_multiple`` makes the planner round any other block shape up to them.
Tiles are cropped, not blended: a blend across tile borders would need the neighbouring tiles of the next
block, i.e. a halo of a whole tile.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from ...errors import InputError
from ..base import Halo, cast_like
from ..checkpointed import CheckpointMethod
from ..interp import Interpolation

KIND = "irsde-prior"
FUSIONS = ("mean", "geometric")


def tile_seed(seed: int, plane: str, index: int, tz: int, tx: int) -> int:
    digest = hashlib.sha256(f"{seed}:{plane}:{index}:{tz}:{tx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PriorRecovery(CheckpointMethod):
    name = "d2r-prior"
    KIND = KIND
    WHAT = "prior"
    TITLE = "Stage I prior"
    deterministic = False
    working_bytes_per_voxel = 24

    def __init__(self, prior_dir: str, *, factor: int | None = None, sampler: str = "fast",
                 steps: int | None = None, t_start: int | None = None, seed: int = 0, tile: int = 128,
                 margin: int = 16, fusion: str = "mean", batch: int = 16, device: str | None = None):
        self._open(prior_dir)
        if factor is not None and int(self.spec.get("factor", -1)) != factor:
            raise InputError(f"the prior in {prior_dir} was trained at factor {self.spec.get('factor')}, "
                             f"not {factor}: train one at this factor with `isovol train --method d2r-prior`")
        if fusion not in FUSIONS:
            raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if tile < 16 or margin < 0:
            raise InputError(f"tile must be >= 16 and margin >= 0, got {tile}, {margin}")
        from .samplers import _resolve  # validates sampler / steps / t_start against the SDE

        t_start = self._start_within_training(sampler, t_start)
        try:
            _resolve(self._sde(), sampler, steps, t_start)
        except ValueError as exc:
            raise InputError(f"sampler: {exc}") from None
        self.sampler, self.steps, self.t_start, self.seed = sampler, steps, t_start, int(seed)
        self.tile, self.margin, self.fusion, self.batch, self.device = tile, margin, fusion, batch, device
        self.block_multiple = tile  # tiles lie on a global grid: a block edge off it cuts tiles into other samples
        self.factor = int(self.spec["factor"])
        self.halo = Halo(z=1 + math.ceil(margin / self.factor), y=margin, x=margin)
        self._build(meta=True)  # refuse a corrupt or mismatched prior now, on the client

    def _start_within_training(self, sampler: str, t_start: int | None) -> int | None:
        """A prior trained on t <= t_max only (``train.t_max``) has never seen larger t: a sampler whose default
        start lies above starts at t_max instead, and an explicit start above it is refused."""
        t_max = (self.spec.get("train") or {}).get("t_max")
        if t_max is None:
            return t_start
        if t_start is not None:
            if int(t_start) > int(t_max):
                raise InputError(f"sampler: the prior in {self.model_dir} trained on t <= {t_max} only; "
                                 f"start at t_start <= {t_max}, not {t_start}")
            return t_start
        T = self._sde().T
        return int(t_max) if (T // 2 if sampler == "fast" else T) > int(t_max) else None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "model_hash": self.model_hash, "sampler": self.sampler, "steps": self.steps,
                "t_start": self.t_start, "seed": self.seed, "tile": self.tile, "margin": self.margin,
                "fusion": self.fusion, "precision": "bf16" if self._device().startswith("cuda") else "fp32"}

    def _sde(self):
        from .irsde import IRSDE

        try:
            return IRSDE.from_dict(self.spec["sde"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{self.model_dir}: bad SDE settings in config.json ({exc})") from None

    def _network(self) -> Any:
        from .nafnet import build_nafnet

        return build_nafnet(self.spec["model"])

    def preferred_block_shape(self, out_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return recover_block_shape(self.tile, out_shape)

    def check_factor(self, factor: int) -> None:
        if factor != self.factor:
            raise InputError(f"the prior in {self.model_dir} was trained at factor {self.factor}, not {factor}: "
                             f"train one at this factor with `isovol train --method d2r-prior`")

    def check_input(self, dtype: np.dtype) -> None:
        """A prior trained on one integer range restores garbage on another (uint16 values scaled by 255)."""
        dtype = np.dtype(dtype)
        norm = self.spec.get("normalization", {"offset": 0.0, "scale": 255.0})
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            if float(norm["offset"]) != 0.0 or float(norm["scale"]) != float(info.max):
                raise InputError(f"the prior in {self.model_dir} was trained on values {norm['offset']:g}.."
                                 f"{norm['offset'] + norm['scale']:g}, the input is {dtype} (0..{info.max}): "
                                 f"train a prior on data of this type")

    # -- the work ----------------------------------------------------------------------------------------
    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        self.check_factor(factor)
        m = self.margin
        norm = self.spec.get("normalization", {"offset": 0.0, "scale": 255.0})
        work = (data.astype(np.float32) - np.float32(norm["offset"])) / np.float32(norm["scale"])
        mu = Interpolation("cubic").apply(work, factor, start - m, stop + m)  # (nz + 2m, ny + 2m, nx + 2m)
        z_global = origin[0] * factor + start  # global output z of the first core row
        xz = self._restore(np.moveaxis(mu, 1, 0), "xz", origin[1] + m, z_global, origin[2] + m)  # (ny, nz, nx)
        yz = self._restore(np.moveaxis(mu, 2, 0), "yz", origin[2] + m, z_global, origin[1] + m)  # (nx, nz, ny)
        a, b = np.moveaxis(xz, 0, 1), np.moveaxis(yz, 0, 2)  # both (nz, ny, nx)
        fused = np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None)) if self.fusion == "geometric" else (a + b) / 2
        out = cast_like(fused * np.float32(norm["scale"]) + np.float32(norm["offset"]), data.dtype)
        js = np.arange(start, stop)
        for j in js[js % factor == 0]:  # kept slices are the measured ones, exactly
            out[j - start] = data[j // factor, m : m + out.shape[1], m : m + out.shape[2]]
        return out

    def _restore(self, planes: np.ndarray, plane: str, first_index: int, z0: int, c0: int) -> np.ndarray:
        """Restore the core of each image in ``planes`` (n + 2m, Z + 2m, C + 2m); core image i (planes[i + m])
        is global slice ``first_index + i``; the core's first row is global z ``z0``, first column ``c0``."""
        import torch

        from .samplers import per_sample_noise, sample

        m, s = self.margin, self.tile
        n, zt, ct = planes.shape[0] - 2 * m, planes.shape[1] - 2 * m, planes.shape[2] - 2 * m
        out = np.empty((n, zt, ct), dtype=np.float32)
        # tile cores on the global grid: rows [k*s, (k+1)*s) in global z, columns likewise
        zs = range((z0 // s) * s, z0 + zt, s)
        cs = range((c0 // s) * s, c0 + ct, s)
        jobs = []
        for i in range(n):
            for gz in zs:
                for gc in cs:
                    lz0, lz1 = max(gz, z0) - z0, min(gz + s, z0 + zt) - z0
                    lc0, lc1 = max(gc, c0) - c0, min(gc + s, c0 + ct) - c0
                    jobs.append((i, gz // s, gc // s, lz0, lz1, lc0, lc1))
        sde = self._sde().to(self._device())
        dev = self._device()
        groups: dict[tuple[int, int], list] = {}
        for job in jobs:
            groups.setdefault((job[4] - job[3], job[6] - job[5]), []).append(job)
        for batch_jobs in (g[k : k + self.batch] for g in groups.values() for k in range(0, len(g), self.batch)):
            tiles = np.stack([planes[i + m, lz0 : lz1 + 2 * m, lc0 : lc1 + 2 * m]
                              for i, _, _, lz0, lz1, lc0, lc1 in batch_jobs])
            seeds = [tile_seed(self.seed, plane, first_index + i, tz, tc) for i, tz, tc, *_ in batch_jobs]
            mu = torch.from_numpy(tiles).unsqueeze(1).to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.startswith("cuda")):
                x = sample(sde, self.model, mu, self.sampler, self.steps, per_sample_noise(seeds, dev),
                           self.t_start)
            x = x.float()[:, 0, m : x.shape[2] - m, m : x.shape[3] - m].cpu().numpy()
            for (i, _, _, lz0, lz1, lc0, lc1), t in zip(batch_jobs, x):
                out[i, lz0:lz1, lc0:lc1] = t
        return out


def recover_block_shape(tile: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Blocks that are whole multiples of the tile (so tiles are the same in any layout), 2 tiles deep in Z
    and 4 across, clipped to the output."""
    return (min(2 * tile, shape[0]), min(4 * tile, shape[1]), min(4 * tile, shape[2]))

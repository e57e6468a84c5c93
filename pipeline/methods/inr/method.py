"""INR as an executor method: a neural field fitted per fit block, on a global grid of fit blocks.

The output is cut into fit blocks of ``block`` (z, y, x) output voxels at multiples of ``block`` from voxel 0.  Each
fit block gets its own field (``field.py``), fitted (``fit.py``) on the block plus ``overlap`` voxels on every side
(edge-padded at the volume border, as the executor pads) and seeded from (seed, the fit block's grid index); only
the block itself is written.  A fit therefore depends on the fit grid, never on the executor's blocks, as long as
those are whole multiples of the fit block -- ``block_multiple`` makes the planner choose such blocks -- and then any
executor block and shard shape (and a whole-volume call) gives the same voxels, bit for bit on CPU (fp32, a given
torch thread count).  Blockwise is NOT the same as one field over the whole volume: a field fitted on a region
depends on the region.  Neighbouring fields disagree a little at their borders; the overlap keeps that seam small
(``pipeline/metrics.py`` ``seam_figure`` measures it).

The measured slices are written back exactly (``pick``); with ``average`` the slices are not samples of the output,
and the consistency term alone ties them to the data.  Settings: the published model's ``inr`` entry (what
``isovol train --method inr`` recorded), else the defaults; ``--option recipe=NAME|FILE`` takes the fit settings of
an INR recipe, and single ``--option`` keys (``steps=50``, ``sds_weight=0``, ...) override fields of ``fit``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import fields, replace
from typing import Any

import numpy as np

from ...errors import InputError
from ..base import Halo, cast_like
from ..checkpointed import CheckpointMethod
from ..interp import Interpolation
from . import msdsr_prior
from .fit import FitConfig, Problem, fit_region
from .prior import GAUSSIAN_KIND, GaussianNet, gaussian_from
from .recipe import FitSettings

log = logging.getLogger(__name__)

NAME = "inr"


def fit_seed(seed: int, index: tuple[int, int, int]) -> int:
    """The generator seed of the fit block at grid ``index``: a function of its position and the run's seed."""
    digest = hashlib.blake2b(f"inr:{seed}:{index[0]}:{index[1]}:{index[2]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def settings(spec: dict[str, Any] | None, options: dict[str, Any]) -> FitSettings:
    """The fit settings: a model's ``inr`` entry (else the defaults), replaced by ``recipe=NAME|FILE``, then single
    options (``block``, ``overlap`` and the fields of ``fit``) on top."""
    from .recipe import load_fit, parse_fit

    options = dict(options)
    recipe = options.pop("recipe", None)
    base = load_fit(str(recipe)) if recipe is not None else parse_fit(spec, "the model's inr settings")
    keys = {f.name for f in fields(FitConfig)}
    unknown = sorted(set(options) - keys - {"block", "overlap"})
    if unknown:
        raise InputError(f"method inr: unknown option(s) {', '.join(unknown)}; valid: device, recipe, block, "
                         f"overlap, {', '.join(sorted(keys))}")
    layout = {k: options.pop(k) for k in ("block", "overlap") if k in options}
    try:
        fit = replace(base.fit, **options)
    except (TypeError, ValueError) as exc:
        raise InputError(f"method inr: {exc}") from None
    merged = parse_fit({**base.to_dict(), **layout, "fit": fit.to_dict()}, "--option")
    return merged


class INR(CheckpointMethod):
    name = NAME
    KIND = msdsr_prior.KIND
    WHAT = "model"
    TITLE = "INR prior (an MSDSR model; train one with `isovol train --method inr`)"
    deterministic = False  # seeded per fit block
    working_bytes_per_voxel = 64  # the region's base, the residual and the field's grids (float32)

    def __init__(self, model_dir: str | None, *, device: str | None = None, prior: Any = None, **options: Any):
        """``prior``: a ready :class:`prior.Prior` instead of a model directory (tests, the closed-form prior)."""
        self._prior = prior
        if prior is None:
            self.KIND = _kind_of(str(model_dir))
            self._open(str(model_dir))
            if self.KIND == msdsr_prior.KIND:
                msdsr_prior.check_plain(dict(self.spec.get("model") or {}), str(model_dir))
            self._build(meta=True)
        else:
            self.model_dir, self.spec, self.model_hash, self._model = None, {}, "prior:" + type(prior).__name__, None
        self.device = device
        chosen = settings(self.spec.get("inr"), options)
        self.fit, self.field, self.block, self.overlap = chosen.fit, chosen.field, chosen.block, chosen.overlap
        self.block_multiple = self.block
        o = self.overlap
        # Z in input slices: a fit region reads ceil(o / r) + 1 slices below its block and ceil(o / r) + 2 above
        # (the base's cubic taps); r >= 2 bounds that by ceil(o / 2) + 2
        self.halo = Halo(z=-(-o // 2) + 2, y=o, x=o)

    def _network(self) -> Any:
        if self.KIND == GAUSSIAN_KIND:
            return GaussianNet()
        return msdsr_prior.network(self.spec)

    def prior(self) -> Any:
        """The prior this method distils from: the one given, else the model directory's (loaded once per worker)."""
        if self._prior is not None:
            return self._prior
        import torch

        dev = torch.device(self._device())
        if self.KIND == GAUSSIAN_KIND:
            return gaussian_from(self.model, self.spec, dev)
        return msdsr_prior.MSDSRPrior(self.model, self.spec, dev)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "model_hash": self.model_hash, "fit": self.fit.to_dict(),
                "field": self.field.to_dict(), "block": list(self.block), "overlap": self.overlap,
                "precision": "bf16-prior" if self._device().startswith("cuda") else "fp32"}

    def check_input(self, dtype: np.dtype) -> None:
        if self._prior is None and np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(np.dtype(dtype))
            norm = self.spec.get("normalization", {})
            if (norm.get("offset"), norm.get("scale")) != (float(info.min), float(info.max) - float(info.min)):
                raise InputError(f"the prior in {self.model_dir} was trained on values normalised by {norm}, the "
                                 f"input is {np.dtype(dtype)}: train a prior on data of this type")

    # -- the work ----------------------------------------------------------------------------------------------
    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        """Fit every fit block of the core and write its part of the core."""
        import torch

        h = self.halo
        ny, nx = data.shape[1] - 2 * h.y, data.shape[2] - 2 * h.x
        z0 = origin[0] * factor
        core = ((z0 + start, z0 + stop), (origin[1] + h.y, origin[1] + h.y + ny),
                (origin[2] + h.x, origin[2] + h.x + nx))  # global output box
        for (a, _), b in zip(core, self.block):
            if a % b:
                raise ValueError(f"block at global {a} is not on the fit grid of {self.block}: the executor's "
                                 f"blocks must be whole multiples of the fit block")
        out = np.empty((stop - start, ny, nx), dtype=np.float32)
        prior = self.prior() if self.fit.sds_weight > 0 else None
        dev = torch.device(self._device())
        grid = [range(a // b, -(-c // b)) for (a, c), b in zip(core, self.block)]
        for kz in grid[0]:
            for ky in grid[1]:
                for kx in grid[2]:
                    self._fit_block((kz, ky, kx), core, data, factor, origin, out, prior, dev)
        result = cast_like(out, data.dtype)
        if self.fit.degradation == "pick":  # the measured slices, exactly
            js = np.arange(start, stop)
            for j in js[js % factor == 0]:
                result[j - start] = data[j // factor, h.y : h.y + ny, h.x : h.x + nx]
        return result

    def _fit_block(self, index: tuple[int, int, int], core: tuple, data: np.ndarray, factor: int,
                   origin: tuple[int, int, int], out: np.ndarray, prior: Any, dev: Any) -> None:
        import torch

        o = self.overlap
        lo = [k * b - o for k, b in zip(index, self.block)]  # the fit region, global output voxels
        hi = [(k + 1) * b + o for k, b in zip(index, self.block)]
        base, measured, rows = self._region(data, factor, origin, lo, hi)
        keep = [(max(a, k * b), min(c, (k + 1) * b)) for (a, c), k, b in zip(core, index, self.block)]
        box = tuple(slice(k0 - lo_, k1 - lo_) for (k0, k1), lo_ in zip(keep, lo))
        dest = tuple(slice(k0 - c0, k1 - c0) for (k0, k1), (c0, _) in zip(keep, core))
        base_box = base[box]
        if self.fit.steps == 0:
            out[dest] = base_box
            return
        offset, scale = self._norm(prior, data.dtype)
        to_prior = (base - np.float32(offset)) / np.float32(scale) * 2 - 1
        problem = Problem(torch.from_numpy(to_prior), torch.from_numpy(
            (measured - np.float32(offset)) / np.float32(scale) * 2 - 1), torch.from_numpy(rows), factor)
        residual, _ = fit_region(problem, prior, self.fit, self.field, fit_seed(self.fit.seed, index), box, dev)
        out[dest] = base_box + residual.numpy() * np.float32(scale / 2)

    def _norm(self, prior: Any, dtype: np.dtype) -> tuple[float, float]:
        if prior is not None:
            return prior.offset, prior.scale
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(np.dtype(dtype))
            return float(info.min), float(info.max) - float(info.min)
        return 0.0, 1.0

    def _region(self, data: np.ndarray, factor: int, origin: tuple[int, int, int], lo: list[int], hi: list[int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fit region's classical base (float32, data units), its measured slices and their local rows.  Reads
        beyond ``data`` are edge-padded: they only happen past the volume border (blocks on the fit grid), where
        the executor pads the same way."""
        i0, i1 = lo[0] // factor - 1, (hi[0] - 1) // factor + 3  # input slices the base reads (cubic taps)
        want = ((i0, i1), (lo[1], hi[1]), (lo[2], hi[2]))
        stack = _window(data, want, origin).astype(np.float32)
        base = Interpolation(self.fit.base).apply(stack, factor, lo[0] - i0 * factor, hi[0] - i0 * factor)
        first = -(-lo[0] // factor)
        slices = np.arange(first, (hi[0] - 1) // factor + 1)
        measured = stack[slices - i0]
        rows = slices * factor - lo[0]
        if self.fit.degradation == "average":  # every slice whose section reaches into the region
            reach = factor // 2
            slices = np.arange(-(-(lo[0] - reach) // factor), (hi[0] - 1 + reach) // factor + 1)
            measured, rows = stack[slices - i0], slices * factor - lo[0]
        return base, np.ascontiguousarray(measured), rows


def _kind_of(model_dir: str) -> str:
    """The prior kind a model directory holds (an MSDSR model, or the closed-form Gaussian one); unreadable or
    other kinds are left to ``CheckpointMethod._open`` to refuse, as an MSDSR model."""
    import json
    import os

    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            kind = json.load(f).get("kind")
    except (OSError, ValueError, AttributeError):
        return msdsr_prior.KIND
    return GAUSSIAN_KIND if kind == GAUSSIAN_KIND else msdsr_prior.KIND


def _window(data: np.ndarray, want: tuple[tuple[int, int], ...], origin: tuple[int, int, int]) -> np.ndarray:
    """``data`` (first voxel at global ``origin``) over the global box ``want``, edge-padded where it reaches out."""
    idx = [np.clip(np.arange(a - o, b - o), 0, n - 1) for (a, b), o, n in zip(want, origin, data.shape)]
    return data[np.ix_(*idx)]

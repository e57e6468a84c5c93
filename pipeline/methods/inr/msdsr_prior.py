"""The adapter to MSDSR: the INR prior IS an MSDSR denoiser (one 2-D diffusion network in isovol), used
unconditionally -- no row kept, every row generated.  This module is the only place that knows MSDSR's API
(``pipeline/methods/msdsr``: ``network.build_denoiser``, ``diffusion.alpha_bar`` / ``predict`` / ``train_masks``,
``trainer.train_msdsr``, ``recipe.parse``); everything is imported lazily, so the INR package imports (and its tests
with the closed-form prior run) where MSDSR is absent.

Training delegates to MSDSR's trainer.  MSDSR keeps at least one clean row in every training sample; a prior used
unconditionally must also have seen images with none, so ``unconditional`` (a fraction of the samples) makes
those samples' row masks empty.  The masks are drawn from the trainer's per-step generator, so training stays a
pure function of (seed, step) and resumes bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ...errors import InputError

KIND = "msdsr"  # config.json kind of the models the INR method loads


def _msdsr() -> Any:
    try:
        from .. import msdsr
    except ImportError:
        raise InputError("the INR prior is an MSDSR model, and this isovol has no msdsr method") from None
    return msdsr


def network(spec: dict[str, Any]) -> torch.nn.Module:
    """The untrained denoiser a model directory's config.json describes."""
    _msdsr()
    from ..msdsr.network import build_denoiser

    return build_denoiser(spec["model"])


class MSDSRPrior:
    """An MSDSR denoiser as a :class:`prior.Prior`: every row generated (an all-zero row mask)."""

    def __init__(self, net: torch.nn.Module, spec: dict[str, Any], device: torch.device):
        from ..msdsr import diffusion as D

        self._d, self.net, self.device = D, net, device
        self.parameterization = spec.get("parameterization", "eps")
        self.offset = float(spec["normalization"]["offset"])
        self.scale = float(spec["normalization"]["scale"])
        self.alphas_cumprod = D.alpha_bar(torch.arange(D.T_STEPS, device=device))

    @torch.no_grad()
    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        mask = torch.zeros(x_t.shape[0], 1, x_t.shape[2], 1, dtype=x_t.dtype, device=x_t.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x_t.device.type == "cuda"):
            _, eps = self._d.predict(self.net, x_t, t, mask, self.parameterization)
        return eps.float()


class UncheckedPrior:
    """A ``prior`` section kept as written where this isovol has no msdsr (training then says so in one line)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = copy.deepcopy(spec)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.spec)


def parse_prior(spec: dict[str, Any], where: str) -> Any:
    """The ``prior`` section of an INR recipe as an MSDSR recipe (its ``model`` and ``train``), checked by MSDSR's
    own parser; where msdsr is absent, its keys only."""
    from ..recipes import check_keys

    try:
        from ..msdsr.recipe import parse
    except ImportError:
        return UncheckedPrior(check_keys(spec, ("model", "train", "sampling"), where))
    prior = parse(spec, where)
    check_plain(prior.model.to_dict(), where)
    return prior


def check_plain(model: dict[str, Any], where: str) -> None:
    """The prior must model plain images: an MSDSR denoiser conditioned on the linear interpolation of kept rows
    (``linear`` / ``residual``) has no such rows to lean on when every row is generated."""
    bad = [k for k in ("linear", "residual") if model.get(k)]
    if bad:
        raise InputError(f"{where}: the INR prior must be an unconditioned MSDSR denoiser; {' and '.join(bad)} "
                         f"must be false")


@contextlib.contextmanager
def _unconditional_masks(fraction: float) -> Iterator[None]:
    """MSDSR's training masks with a ``fraction`` of them emptied (drawn from the same per-step generator)."""
    from ..msdsr import diffusion as D

    draw = D.train_masks

    def masks(batch: int, rows: int, factor: int, rng: Any, regular_fraction: float = 0.0) -> Tensor:
        out = draw(batch, rows, factor, rng, regular_fraction)
        empty = torch.from_numpy(rng.random(batch) < fraction)
        out[empty] = 0
        return out

    D.train_masks = masks
    try:
        yield
    finally:
        D.train_masks = draw


def train_prior(ctx: Any, prior: Any, unconditional: float, fit: dict[str, Any]) -> dict[str, Any]:
    """Train the MSDSR denoiser of ``prior`` (an MSDSR recipe) on the XY slices of ``ctx.data``; the fit settings
    ``fit`` go into the published config.json (key ``inr``), which ``upsample --method inr`` reads."""
    _msdsr()
    from dataclasses import asdict

    from ..msdsr.trainer import train_msdsr

    with _unconditional_masks(unconditional):
        result = train_msdsr(ctx.data, ctx.directory, ctx.factor, model_config=prior.model,
                             train=copy.deepcopy(prior.train), sampling=asdict(prior.sampling), device=ctx.device,
                             source=ctx.source, log=ctx.log, deadline=ctx.deadline)
    if result.get("finished"):
        record_fit(ctx.directory, fit)
    return result


def record_fit(model_dir: str, fit: dict[str, Any]) -> None:
    """Add the INR fit settings to a published MSDSR config.json (atomically; the weights are not touched)."""
    import os

    from ...checkpoints import CONFIG, load_json, save_json

    path = os.path.join(model_dir, CONFIG)
    config = load_json(path, "model")
    if config.get("inr") != fit:
        save_json(path, {**config, "inr": fit})

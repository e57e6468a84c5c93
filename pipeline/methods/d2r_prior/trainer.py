"""D2R Stage I: train the lateral prior, a conditional IR-SDE restorer, on XY slices of the anisotropic volume.

Each training image is a patch of an XY slice (a slice along axis 0), given a random flip / 90-degree rotation
(which also decides whether image rows or columns become the degraded axis), then degraded like an axial
slice by :func:`isovol.pipeline.degrade.degrade_rows`: keep every r-th row, cubic back.  That is the
condition mu; the IR-SDE learns to go from mu + noise back to the patch (maximum-likelihood loss,
t uniform in [1, T]).

Patch geometry: ``phase + m*r + 1`` rows at phase 0, i.e. ``m*r + 1`` rows whose first and last rows are kept,
so every degraded row lies between two kept rows, exactly as in an axial slice, whose output spans
z in [0, (n - 1) r] (no extrapolated rows ever reach the loss).  The position of a patch in its slice is
random, so the kept rows fall on every image row over training; a random row phase would add nothing.
The recipe's ``patch`` is rounded down to the nearest m*r + 1 (129 at r = 8 or r = 4: 16*8+1 = 32*4+1).

Normalisation: intensities map to [0, 1] by ``(v - offset) / scale``, recorded in ``config.json``: integer
volumes use their dtype's range (offset 0, scale 255 for uint8, 65535 for uint16), like DGEAN; float volumes
use their own min..max.

AdamW with warm-up and cosine decay (annealing within a ``max_minutes`` budget too), gradient clipping, an
EMA of the weights (used for validation and saved as ``model.safetensors`` for inference), bf16 autocast on
CUDA.  Validation on held-out XY slices (the last ``holdout`` fraction of Z, at least one slice): the ML
loss on fixed patches at fixed timesteps and noise, and the PSNR of a fast-sampler restoration of a few fixed
patches next to the PSNR of mu itself (cubic).  Checkpoints (safetensors + JSON, atomic) every ``ckpt_every``
steps and at the end; a rerun resumes, a rerun with other settings is refused.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ... import __version__
from ...checkpoints import WEIGHTS, check_state, file_sha256
from ...degrade import DIHEDRAL, add_noise, degrade_rows, dihedral, patch_rows, transposes
from ...errors import InputError
from ...trainers.common import data_scale, lr_at, psnr_batch
from ...trainers.state import prefixed, publish, published_step, resume, save_checkpoint

KIND = "irsde-prior"

#: The published IR-SDE settings of D2R / EDiffSR: T = 100, cosine theta schedule, max sigma 50/255.
SDE_DEFAULTS: dict[str, Any] = {"T": 100, "max_sigma": 50 / 255, "eps": 0.005, "schedule": "cosine"}


@dataclass
class PriorTrainConfig:
    steps: int = 20000
    batch: int = 16
    patch: int = 129  # rows (the degraded axis), rounded down to m*r + 1
    patch_cols: int | None = None  # None: square
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta2: float = 0.99
    warmup: int = 500
    grad_clip: float = 1.0
    ema: float = 0.999  # with the usual warm-up min(ema, (1 + n) / (10 + n)) over the first updates
    val_every: int = 1000
    val_patches: int = 32  # held-out patches for the validation loss ...
    val_timesteps: int = 4  # ... each at this many timesteps spread over [1, T]
    val_restore: int = 4  # patches restored by the fast sampler for the validation PSNR
    holdout: float = 0.1  # the last fraction of Z (at least one slice) is held out
    ckpt_every: int = 2000
    noise_poisson: float = 0.0  # extra Poisson-Gaussian noise on the condition's kept rows ([0, 1] units)
    noise_gaussian: float = 0.0
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget: stop (and checkpoint) when it runs out
    t_max: int | None = None  # train on timesteps 1..t_max only (None: all of 1..T); see validation_set



def nafnet_config(spec: Any):
    """A NAFNetConfig from a preset name, a mapping, or a NAFNetConfig."""
    from .nafnet import NAFNetConfig

    try:
        if isinstance(spec, str):
            return NAFNetConfig.preset(spec)
        if isinstance(spec, NAFNetConfig):
            return spec
        if isinstance(spec, dict):
            return NAFNetConfig.from_dict(spec)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model config: {exc}") from None
    raise InputError(f"model config must be a preset name or a mapping, got {spec!r}")


def check_sde(sde: dict[str, Any] | None) -> dict[str, Any]:
    """The SDE settings with the published defaults filled in; unknown keys and impossible values refused."""
    from .irsde import IRSDE

    if sde is not None and not isinstance(sde, dict):
        raise InputError(f"SDE settings must be a mapping, got {sde!r}")
    try:  # IRSDE.from_dict knows the keys (the published ones and options such as prediction)
        return IRSDE.from_dict({**SDE_DEFAULTS, **(sde or {})}).to_dict()
    except (TypeError, ValueError) as exc:
        raise InputError(f"SDE settings: {exc}") from None


def normalization(volume: np.ndarray) -> dict[str, float]:
    """(v - offset) / scale maps the volume to [0, 1]: the dtype's range for integers, min..max for floats."""
    if np.issubdtype(volume.dtype, np.integer) or volume.dtype == bool:
        return {"offset": 0.0, "scale": data_scale(volume.dtype) if volume.dtype != bool else 1.0}
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise InputError(f"a float volume needs finite, non-constant values to normalise, got {lo}..{hi}")
    return {"offset": lo, "scale": hi - lo}


# --------------------------------------------------------------------------------------------- patches


class PatchSampler:
    """Patches of XY slices, held as a tensor on the training device, split along Z into training slices and
    held-out slices (the last ``holdout`` fraction, at least one); a patch never mixes the two.

    A patch of ``rows`` x ``cols`` is cut, then put through a symmetry (:data:`DIHEDRAL`): for symmetries that
    transpose, a ``cols`` x ``rows`` region is cut so that every patch comes out ``rows`` x ``cols``.
    """

    def __init__(self, volume: np.ndarray, rows: int, cols: int, norm: dict[str, float],
                 device: str | torch.device = "cpu", holdout: float = 0.1, seed: int = 0):
        vol = torch.as_tensor(np.ascontiguousarray(volume)).to(device)
        self.rows, self.cols, self.norm = rows, cols, norm
        self.device = torch.device(device)
        self.gen = np.random.default_rng(seed)
        nz, h, w = vol.shape
        held = max(1, int(math.ceil(nz * holdout)))
        if nz - held < 1:
            raise ValueError(f"volume {tuple(vol.shape)} has {nz} XY slice(s): training needs at least 2 "
                             f"(the last {held} are held out for validation)")
        self.parts = {False: vol[: nz - held], True: vol[nz - held :]}
        self.codes = [c for c in range(len(DIHEDRAL)) if self._fits(c, h, w)]
        if not self.codes:
            raise ValueError(f"XY slices of {h}x{w} are smaller than a {rows}x{cols} training patch; "
                             f"choose a smaller patch or a larger region")

    def _fits(self, code: int, h: int, w: int) -> bool:
        ph, pw = (self.cols, self.rows) if transposes(code) else (self.rows, self.cols)
        return h >= ph and w >= pw

    def _one(self, valid: bool, rng: np.random.Generator) -> torch.Tensor:
        part = self.parts[valid]
        code = self.codes[int(rng.integers(len(self.codes)))]
        ph, pw = (self.cols, self.rows) if transposes(code) else (self.rows, self.cols)
        z = int(rng.integers(part.shape[0]))
        y0, x0 = int(rng.integers(part.shape[1] - ph + 1)), int(rng.integers(part.shape[2] - pw + 1))
        return dihedral(part[z, y0 : y0 + ph, x0 : x0 + pw], code)

    def sample(self, batch: int, valid: bool = False, rng: np.random.Generator | None = None) -> torch.Tensor:
        """A (B, 1, rows, cols) float32 batch in [0, 1]."""
        rng = rng or self.gen
        x = torch.stack([self._one(valid, rng) for _ in range(batch)]).unsqueeze(1).float()
        return ((x - self.norm["offset"]) / self.norm["scale"]).clamp_(0, 1)


@dataclass
class ValidationSet:
    x0: torch.Tensor  # (N, 1, P, Q) held-out patches
    mu: torch.Tensor  # their degraded condition
    t: torch.Tensor  # (N * K,) timesteps
    noise: torch.Tensor  # (N * K, 1, P, Q)
    restore: int  # the first ``restore`` patches are restored by the sampler


def validation_set(sampler: PatchSampler, factor: int, cfg: PriorTrainConfig, T: int, device: torch.device,
                   seed: int = 12345) -> ValidationSet:
    """Fixed held-out patches, timesteps and noise (same seed, same set: comparable across resumes)."""
    rng = np.random.default_rng(seed)
    x0 = sampler.sample(max(cfg.val_patches, cfg.val_restore, 1), valid=True, rng=rng)
    mu = degrade_rows(x0, factor)
    k = max(1, cfg.val_timesteps)
    ts = torch.linspace(1, cfg.t_max or T, k).round().long().to(device)
    t = ts.repeat_interleave(x0.shape[0])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((x0.shape[0] * k,) + tuple(x0.shape[1:]), generator=g).to(device)
    return ValidationSet(x0, mu, t, noise, max(0, cfg.val_restore))


# ------------------------------------------------------------------------------------------------ EMA


class EMA:
    """An exponential moving average of a model's weights, kept as a second model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        new_p = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


# ------------------------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate(sde: Any, net: torch.nn.Module, val: ValidationSet, batch: int, amp: bool, seed: int,
             t_max: int | None = None) -> dict[str, float]:
    """ML loss on the fixed held-out set, and PSNR of a fast-sampler restoration next to that of mu (cubic);
    a prior trained on 1..t_max is restored from min(T / 2, t_max), where it has learnt."""
    from .samplers import sample, seeded_noise

    net.eval()
    k = val.t.shape[0] // val.x0.shape[0]
    x0, mu = val.x0.repeat(k, 1, 1, 1), val.mu.repeat(k, 1, 1, 1)
    losses = []
    for i in range(0, x0.shape[0], batch):
        s = slice(i, i + batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = sde.loss(net, x0[s], mu[s], val.t[s], val.noise[s])
        losses.append(float(loss.float()) * x0[s].shape[0])
    out = {"loss": sum(losses) / x0.shape[0]}
    if val.restore:
        m, truth = val.mu[: val.restore], val.x0[: val.restore]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            t_start = None if t_max is None else min(sde.T // 2, t_max)
            pred = sample(sde, net, m, sampler="fast", noise=seeded_noise(seed, device=m.device),
                          steps=min(5, t_start or 5), t_start=t_start)
        out["psnr"] = psnr_batch(pred.float(), truth)
        out["cubic_psnr"] = psnr_batch(m, truth)
    return out


def _describe(v: dict[str, Any]) -> str:
    text = f"validation loss {v['loss']:.5f}"
    if "psnr" in v:
        text += f", restoration PSNR {v['psnr']:.2f} dB (cubic {v['cubic_psnr']:.2f} dB)"
    return text


def train_prior(volume: np.ndarray, prior_dir: str, factor: int, *, model_config: Any, train: PriorTrainConfig,
                sde: dict[str, Any] | None = None, device: str | None = None, source: dict[str, Any] | None = None,
                log: Callable[[str], None] = print, deadline: float | None = None) -> dict[str, Any]:
    """Train (or resume training) the Stage I prior on the XY slices of ``volume`` (z, y, x) and leave a
    loadable prior in ``prior_dir``; returns {"steps", "history", "seconds", "finished", "model_hash"},
    ``finished`` False when it paused at ``deadline`` (a ``time.time()``; checkpointed, a rerun resumes).
    ``max_minutes`` counts training time over all runs of the directory, so a paused and resumed run gets the
    same budget and learning-rate schedule as an uninterrupted one; ``deadline`` changes neither."""
    from .irsde import IRSDE
    from .nafnet import build_nafnet

    if volume.ndim != 3:
        raise InputError(f"expected a (z, y, x) volume, got shape {tuple(volume.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
        raise InputError(f"factor must be an integer >= 2, got {factor!r}")
    factor = int(factor)
    sde_cfg = check_sde(sde)
    rows = patch_rows(factor, train.patch)
    cols = train.patch_cols if train.patch_cols is not None else rows
    if rows < 2 * factor + 1 or cols < 1:
        raise InputError(f"a {train.patch}-row patch keeps fewer than 3 rows at factor {factor}; "
                         f"use a patch of at least {2 * factor + 1} rows")
    if train.batch < 1 or train.steps < 0 or not 0 < train.holdout < 1:
        raise InputError(f"batch must be >= 1, steps >= 0 and holdout in (0, 1), got {train.batch}, "
                         f"{train.steps}, {train.holdout}")
    if train.t_max is not None and not 1 <= train.t_max <= sde_cfg["T"]:
        raise InputError(f"t_max must be in [1, T={sde_cfg['T']}], got {train.t_max}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    amp = dev.type == "cuda"
    norm = normalization(volume)
    try:
        sampler = PatchSampler(volume, rows, cols, norm, dev, holdout=train.holdout, seed=train.seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    identity = {"kind": KIND, "factor": factor, "model": model_config.to_dict(), "sde": sde_cfg,
                "normalization": norm, "patch": {"rows": rows, "cols": cols},
                "degradation": "keep rows 0, r, 2r, ...; Keys cubic (a=-0.5) back: isovol.pipeline.degrade",
                "train": asdict(train), "source": source or {}}
    os.makedirs(prior_dir, exist_ok=True)
    torch.manual_seed(train.seed)
    model = build_nafnet(model_config).to(dev)
    ema = EMA(model, train.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(0.9, train.beta2),
                            weight_decay=train.weight_decay)
    step, history, spent = _resume(prior_dir, identity, model, ema, opt, log)
    if step < train.steps:
        n_train, n_held = sampler.parts[False].shape[0], sampler.parts[True].shape[0]
        log(f"training the Stage I prior at factor {factor} on {n_train} XY slices of {volume.shape[1]}x"
            f"{volume.shape[2]} ({n_held} held out): {rows}x{cols} patches, batch {train.batch}, "
            f"steps {step}..{train.steps} on {dev}")
    sdeobj = IRSDE(**sde_cfg).to(dev)
    val = validation_set(sampler, factor, train, sdeobj.T, dev)
    val_seed = train.seed + 4242

    def validate() -> dict[str, Any]:
        return {"step": step, **evaluate(sdeobj, ema.model, val, train.batch, amp, val_seed, train.t_max)}

    if not history:
        history.append(validate())
        log(f"step 0: {_describe(history[-1])}")
    t0 = last_log = time.perf_counter()
    finished = True
    model.train()
    loss = torch.zeros(())
    while step < train.steps:
        elapsed = spent + time.perf_counter() - t0
        if train.max_minutes is not None and elapsed > 60 * train.max_minutes:
            log(f"time budget of {train.max_minutes:g} min reached at step {step}")
            if history[-1]["step"] != step:
                history.append(validate())
            _save(prior_dir, identity, model, ema, opt, step, history, elapsed)
            break
        if deadline is not None and time.time() > deadline:
            log(f"paused at step {step} (deadline); a rerun resumes here")
            _save(prior_dir, identity, model, ema, opt, step, history, elapsed)
            finished = False
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train, elapsed)  # type: ignore[arg-type]
        # seeded per step, so a run resumed at any step trains exactly what an uninterrupted one does
        sampler.gen = np.random.default_rng([train.seed, step])
        torch.manual_seed(train.seed * 1_000_003 + step)
        x0 = sampler.sample(train.batch)
        cond = add_noise(x0, train.noise_poisson, train.noise_gaussian, np.random.default_rng([train.seed, step, 1]))
        mu = degrade_rows(cond, factor)
        t = torch.randint(1, (train.t_max or sdeobj.T) + 1, (train.batch,), device=dev)
        noise = torch.randn_like(x0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = sdeobj.loss(model, x0, mu, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()
        ema.update(model)
        step += 1
        if step % train.val_every == 0 or step == train.steps:
            history.append(validate())
            model.train()
        if step % train.ckpt_every == 0 or step == train.steps:
            _save(prior_dir, identity, model, ema, opt, step, history, spent + time.perf_counter() - t0)
        if time.perf_counter() - last_log > 10 or step == train.steps:
            last_log = time.perf_counter()
            log(f"step {step}/{train.steps}: loss {float(loss.detach()):.5f}; {_describe(history[-1])} "
                f"at step {history[-1]['step']}, {time.perf_counter() - t0:.0f} s")
    if published_step(prior_dir) != step:
        _save(prior_dir, identity, model, ema, opt, step, history, spent + time.perf_counter() - t0)
    return {"steps": step, "history": history, "seconds": time.perf_counter() - t0, "finished": finished,
            "model_hash": file_sha256(os.path.join(prior_dir, WEIGHTS))}


def _save(prior_dir: str, identity: dict[str, Any], model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
          step: int, history: list[dict[str, Any]], elapsed: float) -> None:
    """The checkpoint keeps the raw weights for training on and the EMA weights; the EMA is published."""
    weights = ema.model.state_dict()
    save_checkpoint(prior_dir, identity, model, opt,
                    {"step": step, "history": history, "elapsed_s": elapsed, "ema_updates": ema.updates},
                    extra={f"ema.{k}": v for k, v in weights.items()})
    publish(prior_dir, weights, {**identity, "step": step, "validation": history[-1], "isovol_version": __version__})


def _resume(prior_dir: str, identity: dict[str, Any], model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
            log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]], float]:
    """(step, validation history, training seconds spent so far) of the directory's last checkpoint."""
    got = resume(prior_dir, identity, model, opt, "prior", log)
    if got is None:
        return 0, [], 0.0
    tensors, record = got
    ema_state = prefixed(tensors, "ema.")
    check_state(ema.model, ema_state, "prior directory")
    ema.model.load_state_dict(ema_state)
    ema.updates = int(record["ema_updates"])
    return int(record["step"]), list(record["history"]), float(record["elapsed_s"])

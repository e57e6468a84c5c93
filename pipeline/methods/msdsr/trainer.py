"""Train MSDSR's denoiser on the XY slices of the anisotropic volume itself (no isotropic ground truth).

Each training image is a square ``patch`` (48 by default, rounded down to the network's ``align``) of an XY slice
(a slice along axis 0) under a random one of the 8 symmetries of the square (flips and 90-degree rotations:
:class:`isovol.pipeline.methods.d2r_prior.trainer.PatchSampler`).  Per sample a row mask is drawn
(:func:`diffusion.train_masks`: keep ratios 1/2 .. 1/(r+1) at random rows, or a regular stride for a
``regular_fraction`` of the samples), the image is noised at a uniform random step t with its kept rows left clean,
and the network predicts the parameterisation's target; the L1 loss ignores the kept rows.

AdamW with warm-up and cosine decay (``trainers/common.lr_at``), gradient clipping, EMA weights (validated and
published), bf16 autocast on CUDA only.  Every step draws from ``np.random.default_rng([seed, step])`` and
``torch.manual_seed(seed * 1_000_003 + step)``, so a run killed and resumed at any checkpoint ends with the
weights of one never killed; the checkpoint is the shared one-file resumable state (``trainers/state.py``).

Validation on the held-out XY slices (the last ``holdout`` fraction of Z), on fixed patches whose kept rows are
every r-th row (the inference geometry): the masked L1 at fixed steps and noise, and -- when ``val_steps`` > 0 --
the PSNR of a seeded DDIM sample of the generated rows next to that of linear interpolation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ... import __version__
from ...checkpoints import WEIGHTS, check_state, file_sha256
from ...errors import InputError
from ...trainers.common import lr_at
from ...trainers.state import prefixed, publish, published_step, resume, save_checkpoint
from ..d2r_prior.samplers import per_sample_noise
from ..d2r_prior.trainer import EMA, PatchSampler
from ..lateral_regression.degrade import base_rows
from ..lateral_regression.trainer import normalization
from . import diffusion as D
from .network import DenoiserConfig, build_denoiser

KIND = "msdsr"


@dataclass
class MSDSRTrainConfig:
    steps: int = 20000
    batch: int = 32
    patch: int = 48  # square, rounded down to a multiple of the network's align
    lr: float = 2e-4
    warmup: int = 500
    weight_decay: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 1.0
    ema: float = 0.999  # with the usual warm-up min(ema, (1 + n) / (10 + n)); 0: publish the raw weights
    holdout: float = 0.1
    val_every: int = 1000
    val_patches: int = 32
    val_steps: int = 10  # DDIM steps of the validation sample (0: no sampling in validation)
    ckpt_every: int = 2000
    seed: int = 0
    max_minutes: float | None = None
    parameterization: str = "eps"  # eps (the paper's) | x0 | v
    regular_fraction: float = 0.0  # samples whose kept rows are a regular stride (the inference geometry)

    def __post_init__(self) -> None:
        if self.parameterization not in D.PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(D.PARAMETERIZATIONS)}, got "
                             f"{self.parameterization!r}")
        if not 0 <= self.regular_fraction <= 1:
            raise ValueError(f"regular_fraction must be in [0, 1], got {self.regular_fraction}")
        if self.val_steps < 0:
            raise ValueError(f"val_steps must be >= 0, got {self.val_steps}")


@dataclass
class ValidationSet:
    x0: torch.Tensor  # (N, 1, P, P) in [-1, 1]
    mask: torch.Tensor  # (1, 1, P, 1): every r-th row kept
    t: torch.Tensor  # (N,) fixed steps
    noise: torch.Tensor  # (N, 1, P, P)


def validation_set(sampler: PatchSampler, factor: int, cfg: MSDSRTrainConfig, seed: int = 12345) -> ValidationSet:
    """Fixed held-out patches, steps and noise (same seed, same set: comparable across runs and resumes)."""
    x = sampler.sample(max(1, cfg.val_patches), valid=True, rng=np.random.default_rng(seed)) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, D.T_STEPS - 1, x.shape[0]).round().long().to(x.device)
    noise = torch.randn(tuple(x.shape), generator=gen).to(x.device)
    return ValidationSet(x, D.regular_mask(x.shape[-2], 0, factor).to(x.device), t, noise)


@torch.no_grad()
def evaluate(net: torch.nn.Module, val: ValidationSet, cfg: MSDSRTrainConfig, factor: int, amp: bool
             ) -> dict[str, float]:
    """Masked loss at fixed (t, noise); PSNR of a seeded DDIM sample and of linear interpolation on the rows
    between kept rows (in [0, 1]), on at most 8 patches."""
    net.eval()
    mask = val.mask.expand(val.x0.shape[0], 1, val.x0.shape[2], 1)
    losses = []
    for i in range(0, val.x0.shape[0], cfg.batch):
        s = slice(i, i + cfg.batch)
        y0, lin = D.diffused(net, val.x0[s], mask[s])
        x_t = D.q_sample(y0, val.t[s], val.noise[s], mask[s])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = net(D.net_input(net, x_t, mask[s], lin), val.t[s]).float()
        goal = D.target(y0, val.noise[s], val.t[s], cfg.parameterization)
        losses.append(float(D.masked_l1(out, goal, mask[s])) * x_t.shape[0])
    result = {"loss": sum(losses) / val.x0.shape[0]}
    if cfg.val_steps:
        n = min(8, val.x0.shape[0])
        x0, m = val.x0[:n], mask[:n]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            sample = D.ddim(net, x0, m, cfg.val_steps, per_sample_noise(range(n)), 0.0, cfg.parameterization)
        rows = val.x0.shape[-2]
        kept = (rows - 1) // factor * factor + 1  # linear needs a kept last row: score rows [0, kept)
        lin = base_rows(x0[..., 0:kept:factor, :], factor, "linear")
        between = (1 - m[..., :kept, :]).expand_as(lin).bool()
        truth = (x0[..., :kept, :] + 1) / 2
        result["psnr"] = _psnr((sample.float()[..., :kept, :] + 1) / 2, truth, between)
        result["linear_psnr"] = _psnr((lin + 1) / 2, truth, between)
    return result


def _psnr(pred: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> float:
    mse = float(((pred.clamp(0, 1) - truth) ** 2)[where].mean())
    return 10 * np.log10(1 / max(mse, 1e-10))


def _describe(v: dict[str, Any]) -> str:
    text = f"validation loss {v['loss']:.4f}"
    if "psnr" in v:
        text += f", sample PSNR {v['psnr']:.2f} dB (linear {v['linear_psnr']:.2f} dB)"
    return text


def _check(volume: np.ndarray, factor: int, model_config: Any, train: MSDSRTrainConfig) -> int:
    if volume.ndim != 3:
        raise InputError(f"expected a (z, y, x) volume, got shape {tuple(volume.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
        raise InputError(f"factor must be an integer >= 2, got {factor!r}")
    if not isinstance(model_config, DenoiserConfig):
        raise InputError(f"model_config must be a DenoiserConfig, got {model_config!r}")
    if train.batch < 1 or train.steps < 0 or not 0 < train.holdout < 1:
        raise InputError(f"batch must be >= 1, steps >= 0 and holdout in (0, 1), got {train.batch}, "
                         f"{train.steps}, {train.holdout}")
    patch = train.patch // model_config.align * model_config.align
    if patch < max(model_config.align, 4):
        raise InputError(f"patch {train.patch} is smaller than the network's alignment {model_config.align}")
    return patch


def train_msdsr(volume: np.ndarray, model_dir: str, factor: int, *, model_config: DenoiserConfig,
                train: MSDSRTrainConfig, sampling: dict[str, Any] | None = None, device: str | None = None,
                source: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                deadline: float | None = None) -> dict[str, Any]:
    """Train (or resume) the denoiser on the XY slices of ``volume`` (z, y, x) and leave a loadable model in
    ``model_dir``; returns {"finished", "history", "steps", "seconds", "model_hash"}.  ``sampling``: the
    recipe's inference defaults, recorded in config.json (they do not change the weights)."""
    patch = _check(volume, factor, model_config, train)
    factor = int(factor)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = dev.type == "cuda"
    norm = normalization(volume)
    try:
        sampler = PatchSampler(volume, patch, patch, norm, dev, holdout=train.holdout, seed=train.seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    identity = {"kind": KIND, "factor": factor, "model": model_config.to_dict(), "normalization": norm,
                "patch": patch, "schedule": {"name": "cosine", "steps": D.T_STEPS}, "train": asdict(train),
                "source": source or {}}
    os.makedirs(model_dir, exist_ok=True)
    torch.manual_seed(train.seed)
    model = build_denoiser(model_config).to(dev)
    ema = EMA(model, train.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(0.9, train.beta2),
                            weight_decay=train.weight_decay)
    step, history, spent = _resume(model_dir, identity, model, ema, opt, log)
    if step < train.steps:
        log(f"training MSDSR at factor {factor} on {sampler.parts[False].shape[0]} XY slices of "
            f"{volume.shape[1]}x{volume.shape[2]}: {patch}x{patch} patches, {train.parameterization} "
            f"parameterisation, batch {train.batch}, steps {step}..{train.steps} on {dev}")
    val = validation_set(sampler, factor, train)
    meta = {"sampling": sampling or {}}

    def validate() -> dict[str, Any]:
        return {"step": step, **evaluate(ema.model, val, train, factor, amp)}

    if not history:
        history.append(validate())
        log(f"step 0: {_describe(history[-1])}")
    t0 = last_log = time.perf_counter()
    finished, losses = True, []
    model.train()
    while step < train.steps:
        elapsed = spent + time.perf_counter() - t0
        if train.max_minutes is not None and elapsed > 60 * train.max_minutes:
            log(f"time budget of {train.max_minutes:g} min reached at step {step}")
            if history[-1]["step"] != step:
                history.append(validate())
            _save(model_dir, identity, meta, model, ema, opt, step, history, elapsed)
            break
        if deadline is not None and time.time() > deadline:
            log(f"paused at step {step} (deadline); a rerun resumes here")
            _save(model_dir, identity, meta, model, ema, opt, step, history, elapsed)
            finished = False
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train, elapsed)  # type: ignore[arg-type]
        loss = _step(model, opt, sampler, train, factor, step, amp)
        ema.update(model)
        losses.append(loss)
        step += 1
        if step % train.val_every == 0 or step == train.steps:
            history.append({**validate(), "train_loss": float(np.mean(losses[-train.val_every:]))})
            model.train()
        if step % train.ckpt_every == 0 or step == train.steps:
            _save(model_dir, identity, meta, model, ema, opt, step, history, spent + time.perf_counter() - t0)
        if time.perf_counter() - last_log > 10 or step == train.steps:
            last_log = time.perf_counter()
            log(f"step {step}/{train.steps}: loss {np.mean(losses[-50:]):.4f}; {_describe(history[-1])} at step "
                f"{history[-1]['step']}, {time.perf_counter() - t0:.0f} s")
    if published_step(model_dir) != step:
        _save(model_dir, identity, meta, model, ema, opt, step, history, spent + time.perf_counter() - t0)
    return {"finished": finished, "history": history, "steps": step, "seconds": time.perf_counter() - t0,
            "model_hash": file_sha256(os.path.join(model_dir, WEIGHTS))}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, sampler: PatchSampler, train: MSDSRTrainConfig,
          factor: int, step: int, amp: bool) -> float:
    """One optimisation step, seeded by (seed, step) alone."""
    rng = np.random.default_rng([train.seed, step])
    sampler.gen = rng
    torch.manual_seed(train.seed * 1_000_003 + step)
    x0 = sampler.sample(train.batch) * 2 - 1
    mask = D.train_masks(train.batch, x0.shape[-2], factor, rng, train.regular_fraction).to(x0.device)
    t = torch.from_numpy(rng.integers(0, D.T_STEPS, train.batch)).to(x0.device)
    noise = torch.randn(tuple(x0.shape)).to(x0.device)
    y0, lin = D.diffused(model, x0, mask)
    x_t = D.q_sample(y0, t, noise, mask)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(D.net_input(model, x_t, mask, lin), t)
    loss = D.masked_l1(out.float(), D.target(y0, noise, t, train.parameterization), mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if train.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    opt.step()
    return float(loss.detach())


def _save(model_dir: str, identity: dict[str, Any], meta: dict[str, Any], model: torch.nn.Module, ema: EMA,
          opt: torch.optim.Optimizer, step: int, history: list[dict[str, Any]], elapsed: float) -> None:
    """The checkpoint keeps the raw weights for training on and the EMA weights; the EMA is published."""
    weights = ema.model.state_dict() if ema.decay > 0 else model.state_dict()
    save_checkpoint(model_dir, identity, model, opt,
                    {"step": step, "history": history, "elapsed_s": elapsed, "ema_updates": ema.updates},
                    extra={f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    config = {**{k: identity[k] for k in ("kind", "model", "factor", "normalization", "patch", "schedule",
                                          "train", "source")},
              "parameterization": identity["train"]["parameterization"], "sampling": meta["sampling"],
              "step": step, "validation": history[-1], "isovol_version": __version__}
    publish(model_dir, {k: v.detach().clone() for k, v in weights.items()}, config)


def _resume(model_dir: str, identity: dict[str, Any], model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
            log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]], float]:
    got = resume(model_dir, identity, model, opt, "model", log)
    if got is None:
        return 0, [], 0.0
    tensors, record = got
    ema_state = prefixed(tensors, "ema.")
    check_state(ema.model, ema_state, "model directory")
    ema.model.load_state_dict(ema_state)
    ema.updates = int(record["ema_updates"])
    return int(record["step"]), list(record["history"]), float(record["elapsed_s"])

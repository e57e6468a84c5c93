"""Train the lateral regression U-Net on the XY slices of the anisotropic volume (isotropic CARE's idea).

Each training image is a patch of an XY slice (a slice along axis 0), given a random one of the 8 symmetries of
the square (which also decides whether image rows or columns become the degraded axis), then degraded like an
axial plane by :func:`degrade.degrade_patch`: keep every r-th row (``pick``) or average the section around it
(``average``), fill the rows between with the recipe's ``base`` interpolation (linear or cubic, exactly as
``isovol upsample --method linear|cubic``).  The U-Net maps the base to the sharp patch (a residual over its
input); the loss is L1 over the rows between kept rows only -- the blockwise method keeps measured rows exact.

Patch geometry: ``m*r + 1`` rows at phase 0 (:func:`isovol.pipeline.degrade.patch_rows`; the recipe's ``patch``
rounded down), so the first and last rows are kept, as in an axial plane; columns: ``patch`` rounded down to a
multiple of the network's ``align``.  The U-Net needs both sizes to be multiples of ``align``: the base is padded
at the bottom by replicating its last (kept) row up to the next multiple -- what the linear base itself gives
beyond the last kept row, and the padding a volume border gets -- and the output cropped back.  Kept rows so stay
at rows 0, r, 2r, ... of the network's grid, as they do on the blockwise method's global grid.  ``average``
patches are cut with ``r // 2`` extra rows above and below, so every section averages real rows.

Normalisation: integer volumes map to [0, 1] by their dtype's range (offset 0, scale 255 for uint8; signed types
from their minimum), floats by their min..max (recorded in ``config.json``, checked by the blockwise method).
AdamW with warm-up and cosine decay (annealing within ``max_minutes`` too), gradient clipping, an EMA of the
weights (validated and published; ``ema: 0`` publishes the raw weights), bf16 autocast on CUDA only.  Each step
draws from ``np.random.default_rng([seed, step])``, so a run killed and resumed at any checkpoint ends with the
weights of one never killed.  Validation on held-out XY slices (the last ``holdout`` fraction of Z, at least one
slice), on fixed patches: L1 loss, and the PSNR of the prediction and of the base on the synthesised rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import __version__
from ...checkpoints import WEIGHTS, check_state, file_sha256
from ...degrade import patch_rows
from ...errors import InputError
from ...trainers.common import lr_at, psnr_batch
from ...trainers.state import prefixed, publish, published_step, resume, save_checkpoint
from ..d2r_prior.trainer import EMA, PatchSampler
from ..d2r_prior.trainer import normalization as float_normalization
from .degrade import BASES, DEGRADATIONS, average_margin, check_factor, degrade_patch
from .network import UNetConfig, build_unet

KIND = "lateral-regression"


@dataclass
class RegressionTrainConfig:
    steps: int = 4000
    batch: int = 16
    patch: int = 129  # rows rounded down to m*r + 1, columns down to a multiple of the network's align
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema: float = 0.999  # with the usual warm-up min(ema, (1 + n) / (10 + n)); 0: publish the raw weights
    holdout: float = 0.1  # the last fraction of Z (at least one slice) is held out
    val_every: int = 500
    val_patches: int = 32
    ckpt_every: int = 1000
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget: stop (and checkpoint) when it runs out
    base: str = "linear"  # the classical interpolation the network corrects: linear | cubic
    degradation: str = "pick"  # pick (every r-th row) | average (serial sections: the mean of r rows)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ValueError(f"base must be {' or '.join(BASES)}, got {self.base!r}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be {' or '.join(DEGRADATIONS)}, got {self.degradation!r}")


def normalization(volume: np.ndarray) -> dict[str, float]:
    """(v - offset) / scale maps the volume to [0, 1]: an integer dtype's whole range (offset 0, scale 255 for
    uint8; offset -32768, scale 65535 for int16, so negative values are kept), floats their own min..max."""
    if volume.dtype == bool:
        return {"offset": 0.0, "scale": 1.0}
    if np.issubdtype(volume.dtype, np.integer):
        info = np.iinfo(volume.dtype)
        return {"offset": float(info.min), "scale": float(info.max) - float(info.min)}
    return float_normalization(volume)


def geometry(factor: int, patch: int, align: int) -> tuple[int, int, int]:
    """(rows, cols, padded rows) of a training patch: ``m*r + 1`` rows, ``cols`` a multiple of ``align``, and the
    rows the network sees after padding to a multiple of ``align``."""
    rows = patch_rows(factor, patch)
    cols = patch // align * align
    if rows < factor + 1 or cols < align:
        raise InputError(f"a patch of {patch} keeps fewer than 2 rows at factor {factor} or is narrower than the "
                         f"network's alignment {align}; use a patch of at least {max(factor + 1, align)}")
    return rows, cols, -(-rows // align) * align


def predict(net: torch.nn.Module, base: torch.Tensor, align: int) -> torch.Tensor:
    """The network on a (B, 1, H, W) base whose W is a multiple of ``align``: H padded at the bottom by
    replicating the last row up to a multiple of ``align``, the output cropped back to H."""
    h = base.shape[-2]
    pad = -(-h // align) * align - h
    x = F.pad(base, (0, 0, 0, pad), mode="replicate") if pad else base
    return net(x)[..., :h, :]


def synthesised(rows: int, factor: int) -> torch.Tensor:
    """Indices of the rows between kept rows (those the loss and the validation see)."""
    return torch.tensor([y for y in range(rows) if y % factor], dtype=torch.long)


@dataclass
class ValidationSet:
    target: torch.Tensor  # (N, 1, rows, cols) held-out sharp patches
    base: torch.Tensor  # their base planes


def validation_set(sampler: PatchSampler, factor: int, cfg: RegressionTrainConfig, margin: int,
                   seed: int = 12345) -> ValidationSet:
    """Fixed held-out patches (same seed, same set: comparable across runs and resumes)."""
    x = sampler.sample(max(1, cfg.val_patches), valid=True, rng=np.random.default_rng(seed))
    base = degrade_patch(x, factor, cfg.base, cfg.degradation, margin)
    return ValidationSet(x[..., margin : x.shape[-2] - margin, :].contiguous(), base)


@torch.no_grad()
def evaluate(net: torch.nn.Module, val: ValidationSet, factor: int, align: int, batch: int,
             amp: bool) -> dict[str, float]:
    """L1 loss and PSNR of the prediction, and PSNR of the base, on the synthesised rows of the held-out set."""
    net.eval()
    rows = synthesised(val.target.shape[-2], factor).to(val.target.device)
    losses, psnrs, bases = [], [], []
    for i in range(0, val.target.shape[0], batch):
        base, target = val.base[i : i + batch], val.target[i : i + batch]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred = predict(net, base, align).float()
        p, t, b = pred[..., rows, :], target[..., rows, :], base[..., rows, :]
        n = target.shape[0]
        losses.append(float((p - t).abs().mean()) * n)
        psnrs.append(psnr_batch(p, t) * n)
        bases.append(psnr_batch(b, t) * n)
    total = val.target.shape[0]
    return {"loss": sum(losses) / total, "psnr": sum(psnrs) / total, "base_psnr": sum(bases) / total}


def _describe(v: dict[str, Any]) -> str:
    return f"validation L1 {v['loss']:.5f}, PSNR {v['psnr']:.2f} dB (base {v['base_psnr']:.2f} dB)"


def train_regression(volume: np.ndarray, model_dir: str, factor: int, *, model_config: UNetConfig,
                     train: RegressionTrainConfig, device: str | None = None, source: dict[str, Any] | None = None,
                     log: Callable[[str], None] = print, deadline: float | None = None) -> dict[str, Any]:
    """Train (or resume training) the U-Net on the XY slices of ``volume`` (z, y, x) and leave a loadable model in
    ``model_dir``; returns {"finished", "history", "steps", "seconds", "model_hash"}, ``finished`` False when it
    paused at ``deadline`` (a ``time.time()``; checkpointed, a rerun resumes).  ``history``: one record per
    validation, {"step", "loss", "psnr", "base_psnr"}.  ``max_minutes`` counts training time over all runs of the
    directory, so a paused and resumed run gets the same budget and learning-rate schedule as an uninterrupted
    one; ``deadline`` changes neither."""
    if volume.ndim != 3:
        raise InputError(f"expected a (z, y, x) volume, got shape {tuple(volume.shape)}")
    try:
        factor = check_factor(factor)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not isinstance(model_config, UNetConfig):
        raise InputError(f"model_config must be a UNetConfig, got {model_config!r}")
    if train.batch < 1 or train.steps < 0 or not 0 < train.holdout < 1:
        raise InputError(f"batch must be >= 1, steps >= 0 and holdout in (0, 1), got {train.batch}, "
                         f"{train.steps}, {train.holdout}")
    align = model_config.align
    rows, cols, padded = geometry(factor, train.patch, align)
    margin = average_margin(factor) if train.degradation == "average" else 0
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    amp = dev.type == "cuda"
    norm = normalization(volume)
    try:
        sampler = PatchSampler(volume, rows + 2 * margin, cols, norm, dev, holdout=train.holdout, seed=train.seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    identity = {"kind": KIND, "factor": factor, "model": model_config.to_dict(), "base": train.base,
                "degradation": train.degradation, "normalization": norm,
                "patch": {"rows": rows, "cols": cols, "padded_rows": padded, "margin": margin},
                "train": asdict(train), "source": source or {}}
    os.makedirs(model_dir, exist_ok=True)
    torch.manual_seed(train.seed)
    model = build_unet(model_config).to(dev)
    ema = EMA(model, train.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(0.9, train.beta2),
                            weight_decay=train.weight_decay)
    step, history, spent = _resume(model_dir, identity, model, ema, opt, log)
    if step < train.steps:
        n_train, n_held = sampler.parts[False].shape[0], sampler.parts[True].shape[0]
        log(f"training the lateral regression at factor {factor} on {n_train} XY slices of {volume.shape[1]}x"
            f"{volume.shape[2]} ({n_held} held out): {rows}x{cols} patches (network {padded}x{cols}), "
            f"{train.base} base, {train.degradation}ed rows, batch {train.batch}, steps {step}..{train.steps} "
            f"on {dev}")
    val = validation_set(sampler, factor, train, margin)
    loss_rows = synthesised(rows, factor).to(dev)

    def validate() -> dict[str, Any]:
        return {"step": step, **evaluate(ema.model, val, factor, align, train.batch, amp)}

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
            _save(model_dir, identity, model, ema, opt, step, history, elapsed)
            break
        if deadline is not None and time.time() > deadline:
            log(f"paused at step {step} (deadline); a rerun resumes here")
            _save(model_dir, identity, model, ema, opt, step, history, elapsed)
            finished = False
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train, elapsed)  # type: ignore[arg-type]
        # seeded per step, so a run resumed at any step trains exactly what an uninterrupted one does
        sampler.gen = np.random.default_rng([train.seed, step])
        torch.manual_seed(train.seed * 1_000_003 + step)
        x = sampler.sample(train.batch)
        base = degrade_patch(x, factor, train.base, train.degradation, margin)
        target = x[..., margin : margin + rows, :]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred = predict(model, base, align)
        loss = (pred.float()[..., loss_rows, :] - target[..., loss_rows, :]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()
        ema.update(model)
        step += 1
        if step % train.val_every == 0 or step == train.steps:
            history.append(validate())
            model.train()
        if step % train.ckpt_every == 0 or step == train.steps:
            _save(model_dir, identity, model, ema, opt, step, history, spent + time.perf_counter() - t0)
        if time.perf_counter() - last_log > 10 or step == train.steps:
            last_log = time.perf_counter()
            log(f"step {step}/{train.steps}: loss {float(loss.detach()):.5f}; {_describe(history[-1])} at step "
                f"{history[-1]['step']}, {time.perf_counter() - t0:.0f} s")
    if published_step(model_dir) != step:
        _save(model_dir, identity, model, ema, opt, step, history, spent + time.perf_counter() - t0)
    return {"finished": finished, "history": history, "steps": step, "seconds": time.perf_counter() - t0,
            "model_hash": file_sha256(os.path.join(model_dir, WEIGHTS))}


def _save(model_dir: str, identity: dict[str, Any], model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
          step: int, history: list[dict[str, Any]], elapsed: float) -> None:
    """The checkpoint keeps the raw weights for training on and the EMA weights; the EMA is published."""
    weights = ema.model.state_dict()
    save_checkpoint(model_dir, identity, model, opt,
                    {"step": step, "history": history, "elapsed_s": elapsed, "ema_updates": ema.updates},
                    extra={f"ema.{k}": v for k, v in weights.items()})
    config = {"kind": KIND, "model": identity["model"], "factor": identity["factor"], "base": identity["base"],
              "degradation": identity["degradation"], "normalization": identity["normalization"],
              "patch": identity["patch"], "train": identity["train"], "step": step, "validation": history[-1],
              "source": identity["source"], "isovol_version": __version__}
    publish(model_dir, weights, config)


def _resume(model_dir: str, identity: dict[str, Any], model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
            log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]], float]:
    """(step, validation history, training seconds spent so far) of the directory's last checkpoint."""
    got = resume(model_dir, identity, model, opt, "model", log)
    if got is None:
        return 0, [], 0.0
    tensors, record = got
    ema_state = prefixed(tensors, "ema.")
    check_state(ema.model, ema_state, "model directory")
    ema.model.load_state_dict(ema_state)
    ema.updates = int(record["ema_updates"])
    return int(record["step"]), list(record["history"]), float(record["elapsed_s"])

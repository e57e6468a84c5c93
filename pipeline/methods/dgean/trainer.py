"""Training DGEAN on a (pseudo-)isotropic volume: the Stage III trainer and the supervised Sup-DGEAN.

The loss is the paper's L1 + SSIM + 100 FFL + 0.1 continuity (pipeline/losses.py).  Optimiser: Adam
(beta 0.9/0.99, lr 2e-4 as in the paper) with warm-up and cosine decay over a fixed step budget, since our
runs are budgeted in minutes rather than 60 epochs.  bf16 autocast on CUDA.  Checkpoints (safetensors + JSON)
are written atomically every ``ckpt_every`` steps and at the end; a rerun with the same settings resumes from
the last one, a rerun with other settings is refused.
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
from ...checkpoints import WEIGHTS, file_sha256
from ...errors import InputError
from ...losses import DGEANLoss, load_lpips
from ...trainers.common import data_scale, lr_at, psnr_batch
from ...trainers.state import publish, published_step, resume, save_checkpoint
from .config import DGEANConfig
from .network import build_dgean, cubic_at_depths
from .windows import WindowSampler


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 8
    patch: int = 64
    lr: float = 2e-4
    beta2: float = 0.99
    warmup: int = 100
    val_every: int = 250
    val_windows: int = 64
    ckpt_every: int = 500
    w_ffl: float = 100.0
    w_cont: float = 0.1
    holdout: float = 0.15
    seed: int = 0
    lpips: str | None = None  # path to LPIPS-AlexNet weights (safetensors); None: the offline filter bank
    max_minutes: float | None = None  # wall-clock budget: stop (and checkpoint) when it runs out



@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, loss_fn: DGEANLoss, amp: bool) -> dict[str, float]:
    model.eval()
    psnrs, cubic, losses = [], [], []
    for b in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred = model(b.window, b.depths)
        pred = pred.float()
        losses.append(float(loss_fn(pred, b.target)["total"]))
        psnrs.append(psnr_batch(pred, b.target))
        cubic.append(psnr_batch(cubic_at_depths(b.window, b.depths), b.target))
    model.train()
    return {"loss": float(np.mean(losses)), "psnr": float(np.mean(psnrs)), "cubic_psnr": float(np.mean(cubic))}


def train_dgean(volume: np.ndarray, model_dir: str, factor: int, *, isotropic: bool, model_config: DGEANConfig,
                train: TrainConfig, device: str | None = None, source: dict[str, Any] | None = None,
                log: Callable[[str], None] = print, lateral: bool = False,
                deadline: float | None = None) -> dict[str, Any]:
    """Train (or resume training) and leave a loadable model in ``model_dir``; returns the final record, with
    ``finished`` False when it paused at ``deadline`` (a ``time.time()``; checkpointed, a rerun resumes).

    ``max_minutes`` counts training time over all runs of the directory, so a paused and resumed training
    gets the same budget and learning-rate schedule as an uninterrupted one; ``deadline`` changes neither.

    ``lateral=True``: ``volume`` is the anisotropic stack itself and windows run along its Y and X (the naive
    lateral baseline, see windows.py)."""
    if lateral and isotropic:
        raise InputError("lateral training takes the anisotropic stack; it cannot also be isotropic ground truth")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.startswith("cuda")
    os.makedirs(model_dir, exist_ok=True)
    identity = {"kind": "dgean", "factor": factor, "isotropic": isotropic, "model": model_config.to_dict(),
                "train": asdict(train), "normalization": {"scale": data_scale(volume.dtype)},
                "source": source or {}}
    if lateral:
        identity["sampling"] = "lateral"  # absent for (pseudo-)isotropic training, so older models still resume
    torch.manual_seed(train.seed)
    model = build_dgean(model_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(0.9, train.beta2))
    step, history, spent = _resume(model_dir, identity, model, opt, log)
    axes = ("z", "y", "x") if isotropic else ("y", "x")
    try:
        sampler = WindowSampler(volume, factor, train.patch, axes, identity["normalization"]["scale"], device,
                                holdout=train.holdout, seed=train.seed + step, lateral=lateral)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    perceptual = load_lpips(train.lpips).to(device) if train.lpips else None
    loss_fn = DGEANLoss(train.w_ffl, train.w_cont, perceptual=perceptual).to(device)
    val = sampler.validation_set(train.val_windows, train.batch)
    if not history:
        history.append({"step": 0, **evaluate(model, val, loss_fn, amp)})
        log(f"step 0: validation loss {history[-1]['loss']:.4f}, PSNR {history[-1]['psnr']:.2f} dB "
            f"(cubic {history[-1]['cubic_psnr']:.2f} dB)")
    t0, last_log = time.perf_counter(), time.perf_counter()
    finished = True
    model.train()
    while step < train.steps:
        elapsed = spent + time.perf_counter() - t0
        if train.max_minutes is not None and elapsed > 60 * train.max_minutes:
            log(f"time budget of {train.max_minutes:g} min reached at step {step}")
            history.append({"step": step, **evaluate(model, val, loss_fn, amp)})
            _save(model_dir, identity, model, opt, step, history, elapsed)
            break
        if deadline is not None and time.time() > deadline:
            log(f"paused at step {step} (deadline); a rerun resumes here")
            _save(model_dir, identity, model, opt, step, history, elapsed)
            finished = False
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train, elapsed)
        sampler.gen = np.random.default_rng([train.seed, step])  # per step: a resumed run trains the same
        b = sampler.sample(train.batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred = model(b.window, b.depths)
        terms = loss_fn(pred.float(), b.target, b.window[:, 0, 1], b.window[:, 0, 2])
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % train.val_every == 0 or step == train.steps:
            history.append({"step": step, **evaluate(model, val, loss_fn, amp)})
        if step % train.ckpt_every == 0 or step == train.steps:
            _save(model_dir, identity, model, opt, step, history, spent + time.perf_counter() - t0)
        if time.perf_counter() - last_log > 10 or step == train.steps:
            last_log = time.perf_counter()
            v = history[-1]
            log(f"step {step}/{train.steps}: loss {float(terms['total'].detach()):.4f}, "
                f"validation PSNR {v['psnr']:.2f} dB (cubic {v['cubic_psnr']:.2f}) at step {v['step']}, "
                f"{time.perf_counter() - t0:.0f} s")
    if published_step(model_dir) != step:
        _save(model_dir, identity, model, opt, step, history, spent + time.perf_counter() - t0)
    return {"steps": step, "history": history, "seconds": time.perf_counter() - t0, "finished": finished,
            "model_hash": file_sha256(os.path.join(model_dir, WEIGHTS))}


def _save(model_dir: str, identity: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
          step: int, history: list[dict[str, Any]], elapsed: float = 0.0) -> None:
    save_checkpoint(model_dir, identity, model, opt, {"step": step, "history": history, "elapsed_s": elapsed})
    publish(model_dir, model.state_dict(), {**identity, "step": step, "validation": history[-1],
                                            "isovol_version": __version__})


def _resume(model_dir: str, identity: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
            log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]], float]:
    """(step, validation history, training seconds spent so far) of the directory's last checkpoint."""
    got = resume(model_dir, identity, model, opt, "model", log, also=("sampling",))
    if got is None:
        return 0, [], 0.0
    record = got[1]
    return int(record["step"]), list(record["history"]), float(record["elapsed_s"])

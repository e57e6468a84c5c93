"""Small pieces every trainer shares: the intensity scale, the learning-rate schedule, a batch PSNR."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def data_scale(dtype: np.dtype) -> float:
    """Intensity that maps to 1.0 (the networks work on [0, 1])."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def lr_at(step: int, cfg: Any, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10 %.  Under a time budget the decay follows whichever runs out
    first, steps or minutes, so a budgeted run still ends annealed instead of being cut off at a high rate."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_minutes:
        t = max(t, elapsed / (60 * cfg.max_minutes))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def psnr_batch(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = torch.mean((pred.float().clamp(0, 1) - target.float()) ** 2, dim=(-2, -1))
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())

"""Training windows for DGEAN: four slices spaced r apart and the r-1 slices between the middle two.

On a (pseudo-)isotropic volume any axis can play "Z". D2R trains along the lateral axes (Y and X) of the
pseudo-isotropic volume, whose sequences look like what a Z sequence of a truly isotropic volume would;
with real isotropic ground truth ("Sup-DGEAN") Z itself is used too.  Flips, 90-degree rotations and
reversal of the sequence are applied on the fly.

``lateral=True`` is the naive lateral baseline: the volume is the *anisotropic* stack itself, and windows run
along Y and X of its XY slices (rows and columns are sampled at the fine pitch, so every r-th of them and the
ones between are a training pair).  Each window slice is then a (Z, X) or (Z, Y) plane with coarse Z, so the
patch is ``min(patch, nz)`` by ``patch`` and never transposed; the gap between those planes and the fine XY
planes seen at inference is what makes the baseline naive.  Validation windows come from a held-out slab (the last
fraction of the patch's second in-plane axis), which training windows never touch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

AXES = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (2, 0, 1)}  # permutation bringing the sequence axis first


@dataclass
class WindowBatch:
    window: torch.Tensor  # (B, 1, 4, P, P) in [0, 1]
    target: torch.Tensor  # (B, r-1, P, P)
    depths: torch.Tensor  # (r-1,)


class WindowSampler:
    """Samples windows from a volume held as a tensor on the training device.

    The volume is split along X into a training part and a held-out part (the last ``holdout`` fraction, at
    least one patch wide); every window lies wholly inside one part, so validation never sees a training voxel.
    When a patch-wide held-out slab would leave the training part too narrow for some axis (a 250-wide volume
    with 128 px patches keeps 122 columns: only X sequences fit), the slab is the plain ``holdout`` fraction
    instead, provided it still holds validation windows (X sequences need only 3r + 1 columns): training
    windows along every axis matter more than validation along every axis.
    """

    def __init__(self, volume: np.ndarray | torch.Tensor, factor: int, patch: int, axes: tuple[str, ...],
                 scale: float, device: str | torch.device = "cpu", holdout: float = 0.15, seed: int = 0,
                 lateral: bool = False):
        vol = torch.as_tensor(np.ascontiguousarray(volume)) if isinstance(volume, np.ndarray) else volume
        vol = vol.to(device)
        self.factor, self.patch, self.scale = factor, patch, float(scale)
        self.lateral = lateral
        if lateral and (set(axes) - {"y", "x"} or vol.shape[0] < 2):
            raise ValueError(f"lateral windows run along y/x of a stack of at least 2 slices, got axes {axes} "
                             f"and shape {tuple(vol.shape)}")
        self.rows = min(patch, vol.shape[0]) if lateral else patch  # window slice height (coarse Z if lateral)
        self.device = torch.device(device)
        self.gen = np.random.default_rng(seed)
        base = int(math.ceil(vol.shape[2] * holdout))
        best: tuple[tuple[bool, int], dict, dict] | None = None
        for held in (max(base, patch), base):  # a patch-wide slab first; the plain fraction if it trains more axes
            split = vol.shape[2] - held
            parts = {False: vol[:, :, :split], True: vol[:, :, split:]}
            found = {part: tuple(a for a in axes if self._fits(v, a)) for part, v in parts.items()}
            rank = (bool(found[True]), len(found[False]))  # usable validation first, then training axes
            if best is None or rank > best[0]:
                best = (rank, parts, found)
        _, self.parts, self.axes = best  # type: ignore[misc]
        for part, name in ((False, "training"), (True, "validation")):
            if not self.axes[part]:
                raise ValueError(f"volume {tuple(vol.shape)}: its {name} part {tuple(self.parts[part].shape)} "
                                 f"holds no {patch}px window of {3 * factor + 1} slices along {'/'.join(axes)}")
        self.depths = torch.arange(1, factor, dtype=torch.float32, device=self.device) / factor

    def _fits(self, vol: torch.Tensor, axis: str) -> bool:
        n, h, w = (vol.shape[i] for i in AXES[axis])
        return n >= 3 * self.factor + 1 and h >= self.rows and w >= self.patch

    def _one(self, axis: str, valid: bool, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        view = self.parts[valid].permute(*AXES[axis])
        n, h, w = view.shape
        r, p, q = self.factor, self.patch, self.rows
        s0 = int(rng.integers(0, n - 3 * r))
        y0, x0 = int(rng.integers(0, h - q + 1)), int(rng.integers(0, w - p + 1))
        seq = view[s0 : s0 + 3 * r + 1, y0 : y0 + q, x0 : x0 + p]
        if not valid:
            if rng.random() < 0.5:
                seq = seq.flip(0)  # a sequence read backwards is as valid as forwards
            if rng.random() < 0.5:
                seq = seq.flip(1)
            if rng.random() < 0.5:
                seq = seq.flip(2)
            if not self.lateral and rng.random() < 0.5:  # lateral planes are anisotropic: never transposed
                seq = seq.transpose(1, 2)
        return seq[0 : 3 * r + 1 : r], seq[r + 1 : 2 * r]  # offsets -1, 0, 1, 2; the slices between 0 and 1

    def sample(self, batch: int, valid: bool = False, rng: np.random.Generator | None = None) -> WindowBatch:
        rng = rng or self.gen
        axes = self.axes[valid]
        pairs = [self._one(axes[int(rng.integers(len(axes)))], valid, rng) for _ in range(batch)]
        window = torch.stack([w for w, _ in pairs]).unsqueeze(1).float() / self.scale
        target = torch.stack([t for _, t in pairs]).float() / self.scale
        return WindowBatch(window, target, self.depths)

    def validation_set(self, count: int, batch: int, seed: int = 12345) -> list[WindowBatch]:
        """A fixed set of held-out windows (same seed, same windows: comparable across resumes)."""
        rng = np.random.default_rng(seed)
        return [self.sample(batch, valid=True, rng=rng) for _ in range(max(1, count // batch))]

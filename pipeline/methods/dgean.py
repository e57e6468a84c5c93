"""DGEAN as an upsampling method of the executor.

Each output slice between input slices i and i+1 comes from the window (i-1, i, i+1, i+2); a window is
encoded once and all r-1 depths are decoded in one batch, so any factor works, including ones the model was
not trained on.  Kept slices (z mod r = 0) are exact copies of the input.

Y/X are processed in tiles: a core of ``tile`` pixels plus a ``margin`` of context on each side, which is
cropped away (overlap-tile).  Cores start at multiples of ``tile`` from the block's first pixel, so when the
output shard's Y/X size is a multiple of ``tile`` every block cuts the same global tiles and the blockwise
result equals the single-call result; otherwise outputs differ only where a different tile border moved the
context (bounded by the margin; tested).  A blending window would hide seams but make every voxel depend on
which tiles a block happened to cut, which is what the crop avoids.

The model loads lazily, once per process that holds the method (the executor ships the method to each
worker once), runs bf16 autocast on CUDA and fp32 on CPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..checkpoints import CONFIG, WEIGHTS, check_state, file_sha256, load_json, load_tensors
from ..errors import InputError
from .base import Halo, Method, cast_like


def _scale(dtype: np.dtype) -> float:
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


class DGEANMethod(Method):
    name = "dgean"
    working_bytes_per_voxel = 16

    def __init__(self, model_dir: str, *, device: str | None = None, tile: int | None = None, margin: int = 32,
                 windows_per_batch: int = 4, precision: str = "auto"):
        if not os.path.isdir(model_dir):
            raise InputError(f"model directory not found: {model_dir}")
        self.model_dir = os.path.abspath(model_dir)
        self.spec = load_json(os.path.join(self.model_dir, CONFIG), "model")
        if self.spec.get("kind") != "dgean" or "model" not in self.spec:
            raise InputError(f"{model_dir} does not hold a DGEAN model (config.json kind={self.spec.get('kind')!r})")
        weights = os.path.join(self.model_dir, WEIGHTS)
        if not os.path.exists(weights):
            raise InputError(f"{model_dir} has no {WEIGHTS}")
        self.model_hash = file_sha256(weights)
        if margin < 0 or margin % 16:
            raise InputError(f"margin must be a non-negative multiple of 16, got {margin}")
        self.device = device
        self.tile = tile
        self.margin = margin
        self.windows_per_batch = windows_per_batch
        self.precision = precision
        self.halo = Halo(z=1, y=margin, x=margin)
        self._model: Any = None
        self._check_loadable()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def _device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _tile(self) -> int:
        return self.tile or (512 if self._device().startswith("cuda") else 128)

    def _amp(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self._device().startswith("cuda"))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "model_hash": self.model_hash, "tile": self._tile(), "margin": self.margin,
                "precision": "bf16" if self._amp() else "fp32"}

    def _check_loadable(self) -> None:
        """Refuse a corrupt or mismatched checkpoint now, on the client, not on every worker."""
        self._build()

    def _build(self):
        from ..models.dgean import build_dgean

        try:
            model = build_dgean(self.spec["model"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.model_dir}: bad model config ({exc})") from None
        state = load_tensors(os.path.join(self.model_dir, WEIGHTS), "model")
        check_state(model, state, f"model {self.model_dir}")
        model.load_state_dict(state)
        return model.eval()

    @property
    def model(self):
        if self._model is None:
            if file_sha256(os.path.join(self.model_dir, WEIGHTS)) != self.model_hash:
                raise InputError(f"{self.model_dir}: weights changed since the run started")
            self._model = self._build().to(self._device())
        return self._model

    def apply(self, data: np.ndarray, factor: int, start: int, stop: int) -> np.ndarray:
        import torch

        m, tile = self.margin, self._tile()
        zin, yh, xh = data.shape
        ny, nx = yh - 2 * m, xh - 2 * m
        out = np.empty((stop - start, ny, nx), dtype=data.dtype)
        js = np.arange(start, stop)
        for j in js[js % factor == 0]:
            out[j - start] = data[j // factor, m : m + ny, m : m + nx]
        windows = sorted({int(j // factor) for j in js[js % factor != 0]})
        if not windows:
            return out
        scale = _scale(data.dtype)
        dev = self._device()
        depths = torch.arange(1, factor, dtype=torch.float32, device=dev) / factor
        model = self.model
        for y0 in range(0, ny, tile):
            cy = min(tile, ny - y0)
            for x0 in range(0, nx, tile):
                cx = min(tile, nx - x0)
                for b0 in range(0, len(windows), self.windows_per_batch):
                    batch = windows[b0 : b0 + self.windows_per_batch]
                    stack = np.stack([data[i - 1 : i + 3, y0 : y0 + cy + 2 * m, x0 : x0 + cx + 2 * m]
                                      for i in batch])
                    x = torch.from_numpy(stack.astype(np.float32) / scale).unsqueeze(1).to(dev)
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._amp()):
                        pred = model(x, depths)
                    pred = pred.float()[:, :, m : m + cy, m : m + cx].clamp_(0, 1).mul_(scale).cpu().numpy()
                    for w, i in enumerate(batch):
                        for k in range(1, factor):
                            j = i * factor + k
                            if start <= j < stop:
                                out[j - start, y0 : y0 + cy, x0 : x0 + cx] = cast_like(pred[w, k - 1], data.dtype)
        return out

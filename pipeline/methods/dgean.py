"""DGEAN as an upsampling method of the executor.

Each output slice between input slices i and i+1 comes from the window (i-1, i, i+1, i+2); a window is
encoded once and all r-1 depths are decoded in one batch, so any factor works, including ones the model was
not trained on.  Kept slices (z mod r = 0) are exact copies of the input.

Y/X are processed in tiles: a core plus a ``margin`` of context on each side, cropped away (overlap-tile).
Tile cores are cut on a global grid, at multiples of ``tile`` in volume coordinates, and a block's first
tile is pulled back to a multiple of 16 px, because the network (four stride-2 levels) is shift-equivariant
only for shifts that are multiples of 16.  So when block Y/X borders fall on multiples of ``tile`` every
block cuts the very tiles of a single call and the results are identical; any other layout changes a voxel
only through context beyond the margin (measured: at most 1 grey level, far below 0.1 % of the voxels;
tested).  A blending window would hide seams but make every voxel depend on which tiles a block happened to
cut, which is what the crop avoids.

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

#: the network halves Y/X four times: it is shift-equivariant for shifts that are multiples of this
ALIGN = 16


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
        if margin < 0 or margin % ALIGN:
            raise InputError(f"margin must be a non-negative multiple of {ALIGN}, got {margin}")
        if tile is not None and (tile < ALIGN or tile % ALIGN):
            raise InputError(f"tile must be a positive multiple of {ALIGN}, got {tile}")
        self.device = device
        self.tile = tile
        self.margin = margin
        self.windows_per_batch = windows_per_batch
        self.precision = precision
        # context: the margin, up to 15 px to pull a tile back onto the 16-grid, and up to 15 px to round the
        # tile's size up to a multiple of 16
        self.halo = Halo(z=1, y=margin + 2 * ALIGN, x=margin + 2 * ALIGN)
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
        """Refuse a corrupt or mismatched checkpoint now, on the client, not on every worker (the network is
        built on the meta device: shapes only, no memory, no initialisation)."""
        self._build(meta=True)

    def _build(self, meta: bool = False):
        import torch

        from ..models.dgean import build_dgean

        try:
            if meta:
                with torch.device("meta"):
                    model = build_dgean(self.spec["model"])
            else:
                model = build_dgean(self.spec["model"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.model_dir}: bad model config ({exc})") from None
        state = load_tensors(os.path.join(self.model_dir, WEIGHTS), "model")
        check_state(model, state, f"model {self.model_dir}")
        if not meta:
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
        h = self.halo
        return self.apply_at(data, factor, start, stop, (-h.z, -h.y, -h.x))

    def _segments(self, g0: int, n: int) -> list[tuple[int, int]]:
        """Cut the global core range [g0, g0 + n) into tiles: cuts at multiples of ``tile``, the first tile
        pulled back to a multiple of 16 (the network is shift-equivariant only for such shifts)."""
        tile = self._tile()
        first = g0 - g0 % ALIGN
        cuts = [first] + list(range((first // tile + 1) * tile, g0 + n, tile)) + [g0 + n]
        return list(zip(cuts[:-1], cuts[1:]))

    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        import torch

        m, hy = self.margin, self.halo.y
        zin, yh, xh = data.shape
        ny, nx = yh - 2 * hy, xh - 2 * hy
        out = np.empty((stop - start, ny, nx), dtype=data.dtype)
        js = np.arange(start, stop)
        for j in js[js % factor == 0]:
            out[j - start] = data[j // factor, hy : hy + ny, hy : hy + nx]
        windows = sorted({int(j // factor) for j in js[js % factor != 0]})
        if not windows:
            return out
        scale = _scale(data.dtype)
        dev = self._device()
        depths = torch.arange(1, factor, dtype=torch.float32, device=dev) / factor
        model = self.model
        gy0, gx0 = origin[1] + hy, origin[2] + hy  # global position of the first core voxel
        for ya, yb in self._segments(gy0, ny):
            for xa, xb in self._segments(gx0, nx):
                # tile input in local coordinates: the segment plus the margin, its size a multiple of 16
                ly0, lx0 = ya - m - origin[1], xa - m - origin[2]
                ly1 = ly0 + _round_up(yb - ya + 2 * m, ALIGN)
                lx1 = lx0 + _round_up(xb - xa + 2 * m, ALIGN)
                # the part of the segment that belongs to this block, in core coordinates
                cy0, cy1 = max(ya, gy0) - gy0, min(yb, gy0 + ny) - gy0
                cx0, cx1 = max(xa, gx0) - gx0, min(xb, gx0 + nx) - gx0
                oy, ox = max(ya, gy0) - ya + m, max(xa, gx0) - xa + m  # its offset inside the tile
                for b0 in range(0, len(windows), self.windows_per_batch):
                    batch = windows[b0 : b0 + self.windows_per_batch]
                    stack = np.stack([data[i - 1 : i + 3, ly0:ly1, lx0:lx1] for i in batch])
                    x = torch.from_numpy(stack.astype(np.float32) / scale).unsqueeze(1).to(dev)
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._amp()):
                        pred = model(x, depths)
                    pred = pred.float()[:, :, oy : oy + cy1 - cy0, ox : ox + cx1 - cx0]
                    pred = pred.clamp_(0, 1).mul_(scale).cpu().numpy()
                    for w, i in enumerate(batch):
                        for k in range(1, factor):
                            j = i * factor + k
                            if start <= j < stop:
                                out[j - start, cy0:cy1, cx0:cx1] = cast_like(pred[w, k - 1], data.dtype)
        return out


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k

"""DGEAN as an upsampling method of the executor.

Each output slice between input slices i and i+1 comes from the window (i-1, i, i+1, i+2); a window is
encoded once and all r-1 depths are decoded in one batch, so any factor works, including ones the model was
not trained on.  Kept slices (z mod r = 0) are exact copies of the input.

Y/X are processed in tiles: a core plus a ``margin`` of context on each side, cropped away (overlap-tile).
Tile cores are cut on a global grid, at multiples of ``tile`` in volume coordinates, and a block's first
tile is pulled back to a multiple of 16 px, because the network (four stride-2 levels) is shift-equivariant
only for shifts that are multiples of 16.  So when block Y/X borders fall on multiples of ``tile`` every
block cuts the very tiles of a single call and the results are identical, and ``block_multiple`` makes the
planner round every block shape up to that grid.  (Off the grid a voxel would change only through context
beyond the margin: at most 1 grey level, far below 0.1 % of the voxels.)  A blending window would hide
seams but make every voxel depend on which tiles a block happened to cut, which is what the crop avoids.

The model loads once per worker (the worker plugin's model cache, ``pipeline/methods/cache.py``), else lazily
once per copy of the method; it runs bf16 autocast on CUDA and fp32 on CPU.  Everything around the model --
gathering the 4-slice windows, uint8 -> float, batching, rounding and casting back -- runs in torch on the
model's device, so a GPU worker copies each block over once and back once and the CPU stays free for I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ...errors import InputError
from ..base import Halo, cast_like
from ..checkpointed import CheckpointMethod

#: the network halves Y/X four times: it is shift-equivariant for shifts that are multiples of this
ALIGN = 16


def _scale(dtype: np.dtype) -> float:
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


class DGEANMethod(CheckpointMethod):
    name = "dgean"
    KIND = "dgean"
    TITLE = "DGEAN model"
    working_bytes_per_voxel = 16
    z_split_exact = True  # a slice comes from its own 4-slice window; tiles are cut in Y/X only

    def __init__(self, model_dir: str, *, device: str | None = None, tile: int | None = None, margin: int = 32,
                 windows_per_batch: int | None = None, precision: str = "auto", memory_fraction: float = 0.5):
        self._open(model_dir)
        if margin < 0 or margin % ALIGN:
            raise InputError(f"margin must be a non-negative multiple of {ALIGN}, got {margin}")
        if tile is not None and (tile < ALIGN or tile % ALIGN):
            raise InputError(f"tile must be a positive multiple of {ALIGN}, got {tile}")
        self.device = device
        self.tile = tile
        self.margin = margin
        if windows_per_batch is not None and windows_per_batch < 1:
            raise InputError(f"windows_per_batch must be >= 1, got {windows_per_batch}")
        if not 0 < memory_fraction <= 1:
            raise InputError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        self.windows_per_batch = windows_per_batch  # None: 4 on CPU, from free memory on CUDA
        self.memory_fraction = memory_fraction
        self.precision = precision
        self._batch_cap: dict[tuple[int, int, int], int] = {}
        # context: the margin, up to 15 px to pull a tile back onto the 16-grid, and up to 15 px to round the
        # tile's size up to a multiple of 16
        self.halo = Halo(z=1, y=margin + 2 * ALIGN, x=margin + 2 * ALIGN)
        self._build(meta=True)  # a corrupt or mismatched checkpoint is refused now, on the client

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_batch_cap"] = {}
        return state

    def _network(self) -> Any:
        from .network import build_dgean

        return build_dgean(self.spec["model"])

    #: blocks and shards when the user gives none and the model runs on a GPU: 1024 px across (2 x 2 tiles of 512,
    #: so the margins cost 27 %, not the 80 % of one 256-px block), four 64-slice shards deep, so the executor
    #: reads and writes one shard while the GPU computes another (workflows/executor.py, _pipeline)
    GPU_BLOCK = (256, 1024, 1024)
    GPU_SHARD = (64, 1024, 1024)

    def preferred_block_shape(self, out_shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
        return self.GPU_BLOCK if self._device().startswith("cuda") else None

    def preferred_shard_shape(self, block: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        return self.GPU_SHARD if block == self.GPU_BLOCK else None

    def _tile(self) -> int:
        return self.tile or (512 if self._device().startswith("cuda") else 128)

    @property
    def block_multiple(self) -> tuple[int, int, int]:  # type: ignore[override]
        """Y/X block borders on the global tile grid: every block then cuts the tiles of one whole-volume call."""
        return (1, self._tile(), self._tile())

    def _amp(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self._device().startswith("cuda"))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "model_hash": self.model_hash, "tile": self._tile(), "margin": self.margin,
                "precision": "bf16" if self._amp() else "fp32"}

    def _segments(self, g0: int, n: int) -> list[tuple[int, int]]:
        """Cut the global core range [g0, g0 + n) into tiles: cuts at multiples of ``tile``, the first tile
        pulled back to a multiple of 16 (the network is shift-equivariant only for such shifts)."""
        tile = self._tile()
        first = g0 - g0 % ALIGN
        cuts = [first] + list(range((first // tile + 1) * tile, g0 + n, tile)) + [g0 + n]
        return list(zip(cuts[:-1], cuts[1:]))

    def _spans(self, o: int, n: int) -> list[_Span]:
        """The tiles along Y or X of a block whose input starts at global ``o`` and whose core is ``n`` long
        (the halo is ``halo.y`` on both axes): per tile its input, the part of its prediction that belongs to
        the block, and where that goes in the core."""
        m, g0 = self.margin, o + self.halo.y  # g0: global position of the first core voxel
        spans = []
        for a, b in self._segments(g0, n):
            l0 = a - m - o  # the segment plus the margin, in local coordinates, its size a multiple of 16
            c0, c1 = max(a, g0) - g0, min(b, g0 + n) - g0
            p0 = max(a, g0) - a + m  # the block's part, offset inside the tile
            spans.append(_Span(slice(l0, l0 + _round_up(b - a + 2 * m, ALIGN)), slice(p0, p0 + c1 - c0),
                               slice(c0, c1)))
        return spans

    def apply_at(self, data: np.ndarray, factor: int, start: int, stop: int,
                 origin: tuple[int, int, int]) -> np.ndarray:
        """All on the model's device: the block goes over once (pinned, asynchronous on CUDA), windows are
        gathered, converted to float, batched, and their predictions rounded and cast there; one copy comes
        back.  The arithmetic is the one of the former numpy path (``x.astype(float32) / scale``; clamp to
        [0, 1], ``* scale``, round half to even, clip, cast), so CPU output is bit-identical to it (tested)."""
        import torch

        hy = self.halo.y
        zin, yh, xh = data.shape
        ny, nx = yh - 2 * hy, xh - 2 * hy
        js = np.arange(start, stop)
        kept = js[js % factor == 0]
        windows = sorted({int(j // factor) for j in js[js % factor != 0]})
        if not windows:
            out = np.empty((stop - start, ny, nx), dtype=data.dtype)
            for j in kept:
                out[j - start] = data[j // factor, hy : hy + ny, hy : hy + nx]
            return out
        dev = torch.device(self._device())
        cuda = dev.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # tile shapes repeat block after block: autotune once each
        scale = _scale(data.dtype)
        model = self.model
        src = _to_device(data, dev)
        result_dtype = _DEVICE_RESULT.get(np.dtype(data.dtype))  # None: float32 comes back, cast on the host
        out_dev = torch.zeros((stop - start, ny, nx), device=dev,  # zeros: kept slices come from the input
                              dtype=result_dtype if result_dtype is not None else torch.float32)
        depths = torch.arange(1, factor, dtype=torch.float32, device=dev) / factor
        offsets = torch.arange(-1, 3, device=dev)
        with torch.inference_mode():
            for ys in self._spans(origin[1], ny):
                for xs in self._spans(origin[2], nx):
                    tile = src[:, ys.input, xs.input]
                    shape = (ys.input.stop - ys.input.start, xs.input.stop - xs.input.start)
                    per_batch = self._batch(dev, *shape, factor - 1)
                    b0 = 0
                    while b0 < len(windows):
                        batch = windows[b0 : b0 + per_batch]
                        idx = torch.tensor(batch, device=dev)[:, None] + offsets  # (B, 4) input slices
                        x = tile[idx].float().div_(scale).unsqueeze(1)  # (B, 1, 4, H, W)
                        try:
                            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._amp()):
                                pred = model(x, depths)
                        except torch.cuda.OutOfMemoryError:
                            if per_batch == 1:
                                raise
                            per_batch = max(1, per_batch // 2)  # the estimate was too generous: halve, retry
                            self._batch_cap[(*shape, factor - 1)] = per_batch
                            del x
                            torch.cuda.empty_cache()
                            continue
                        pred = pred.float()[:, :, ys.pred, xs.pred]
                        pred = pred.clamp_(0, 1).mul_(scale)
                        if result_dtype is not None:  # integers exact in float32: round and clip here
                            info = np.iinfo(data.dtype)
                            pred = pred.round_().clamp_(info.min, info.max).to(result_dtype)
                        for w, i in enumerate(batch):
                            # output slices i*r+1 .. i*r+r-1 that fall in [start, stop)
                            k0, k1 = max(1, start - i * factor), min(factor - 1, stop - 1 - i * factor)
                            if k0 <= k1:
                                j0 = i * factor + k0 - start
                                out_dev[j0 : j0 + k1 - k0 + 1, ys.core, xs.core] = pred[w, k0 - 1 : k1]
                        b0 += len(batch)
        out = _to_host(out_dev)
        if result_dtype is None:
            out = cast_like(out, data.dtype)
        for j in kept:
            out[j - start] = data[j // factor, hy : hy + ny, hy : hy + nx]
        return out

    def _batch(self, dev: Any, h: int, w: int, n_depths: int) -> int:
        """Windows per model call: ``windows_per_batch`` if given; on CPU 4; on CUDA as many as fit in a share
        of the free memory (``batch_for_memory``), lowered for good if a call ran out of memory."""
        if self.windows_per_batch is not None:
            return max(1, int(self.windows_per_batch))
        if dev.type != "cuda":
            return CPU_WINDOWS_PER_BATCH
        key = (h, w, n_depths)
        if key not in self._batch_cap:
            per_window = window_bytes(self.spec["model"], h, w, n_depths)
            self._batch_cap[key] = batch_for_memory(per_window, dev, fraction=self.memory_fraction)
        return self._batch_cap[key]


class _Span(NamedTuple):
    """One tile along one axis: ``input`` its rows (or columns) of the padded block, ``pred`` the part of its
    prediction that belongs to the block, ``core`` where that part goes in the block's core."""

    input: slice
    pred: slice
    core: slice


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


#: windows per model call on CPU: small, fixed (the result does not depend on it, and it bounds memory)
CPU_WINDOWS_PER_BATCH = 4
#: most windows per model call on a GPU, however much memory is free (beyond this nothing gets faster)
MAX_WINDOWS_PER_BATCH = 32
#: integer dtypes whose every value float32 holds exactly: rounded and cast on the device; other dtypes come back
#: as float32 and go through ``cast_like`` on the host, as before
_DEVICE_RESULT_NAMES = {np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8", np.dtype(np.int16): "int16"}
_DEVICE_RESULT: dict[np.dtype, Any] = {}
#: dtypes torch holds natively (others are converted to float32 on the host, exactly as ``astype`` did)
_TORCH_NATIVE = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32,
                                       np.float64)}


def _torch_dtypes() -> None:
    import torch

    if not _DEVICE_RESULT:
        _DEVICE_RESULT.update({k: getattr(torch, v) for k, v in _DEVICE_RESULT_NAMES.items()})


def _to_device(data: np.ndarray, dev: Any) -> Any:
    """The block on ``dev``: through pinned memory with an asynchronous copy on CUDA."""
    import torch

    _torch_dtypes()
    host = np.ascontiguousarray(data if np.dtype(data.dtype) in _TORCH_NATIVE else data.astype(np.float32))
    t = torch.from_numpy(host)
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _to_host(t: Any) -> np.ndarray:
    """One copy back: into pinned memory, asynchronously, then wait for it (CUDA); a view on CPU."""
    import torch

    if t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return host.numpy()
    return t.cpu().numpy()


#: the per-window working memory estimate (``window_bytes``) is scaled by this for what it does not see:
#: allocator rounding and fragmentation, cuDNN workspaces, the autocast copies of the weights
WINDOW_BYTES_SAFETY = 1.5
_WINDOW_BYTES_PER_PIXEL: dict[tuple[str, int], float] = {}


def window_bytes(model_spec: dict[str, Any], h: int, w: int, n_depths: int) -> int:
    """Estimated device memory of one 4-slice window of h x w pixels decoded at ``n_depths`` depths.

    Measured once per (model config, depths) on a 32 x 32 probe on the CPU, with forward hooks: the encoder's
    outputs (the decoder's skips, all alive at once) plus the largest input + output of any single layer, at
    4 bytes per value (fp32; bf16 halves most of it, so this errs on the safe side), times
    ``WINDOW_BYTES_SAFETY``.  Every layer is convolutional, so the figure scales with h * w.
    """
    import json

    import torch

    from .network import build_dgean

    key = (json.dumps(model_spec, sort_keys=True), n_depths)
    if key not in _WINDOW_BYTES_PER_PIXEL:
        probe = 32
        model = build_dgean(model_spec).eval()
        peak = [0]

        def hook(mod: Any, inp: tuple, out: Any) -> None:
            size = sum(t.numel() for t in inp if torch.is_tensor(t)) + (out.numel() if torch.is_tensor(out) else 0)
            peak[0] = max(peak[0], size)

        handles = [mod.register_forward_hook(hook) for mod in model.modules() if not list(mod.children())]
        try:
            with torch.inference_mode():
                x = torch.zeros(1, 1, 4, probe, probe)
                feats = model.encode(x)
                skips = sum(f.numel() for f in feats) if isinstance(feats, (list, tuple)) else feats.numel()
                model.decode(feats, x, torch.full((n_depths,), 0.5))
        finally:
            for hnd in handles:
                hnd.remove()
        _WINDOW_BYTES_PER_PIXEL[key] = 4.0 * (skips + peak[0]) * WINDOW_BYTES_SAFETY / (probe * probe)
    return int(_WINDOW_BYTES_PER_PIXEL[key] * h * w)


def batch_for_memory(per_window: int, device: Any = "cuda", *, fraction: float = 0.5,
                     limit: int = MAX_WINDOWS_PER_BATCH) -> int:
    """Windows per model call that fit in ``fraction`` of the device's free memory (``torch.cuda.mem_get_info``),
    between 1 and ``limit``.  The rest of the free memory stays for the block's buffers, the allocator's slack and
    whatever else shares the GPU."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(max(1, min(limit, (free * fraction) // max(1, per_window))))

"""DGEANMethod's torch-side window gathering, conversion and casting: bit-identical on CPU to the former numpy
path (kept here as the reference), for every dtype and output range; batch size from (simulated) free GPU
memory; the model from the worker cache when one is on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_recipes import dgean_tiny

from isovol.pipeline.methods import cache
from isovol.pipeline.methods.base import cast_like
from isovol.pipeline.methods.dgean.method import (
    CPU_WINDOWS_PER_BATCH,
    MAX_WINDOWS_PER_BATCH,
    DGEANMethod,
    _scale,
    batch_for_memory,
    window_bytes,
)
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.workflows.demo_data import load_crop


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny DGEAN, a few steps, full-scale output conv (its residual shows in every voxel)."""
    mcfg, tcfg = dgean_tiny()
    path = str(tmp_path_factory.mktemp("dgean") / "model")
    train_dgean(load_crop()[0][:64, :64, :64], path, 8, isotropic=True, model_config=replace(mcfg, out_init_scale=1.0),
                train=replace(tcfg, steps=2, val_windows=4, val_every=2, ckpt_every=2), device="cpu",
                log=lambda _: None)
    return path


def numpy_reference(method: DGEANMethod, data: np.ndarray, factor: int, start: int, stop: int,
                    origin: tuple[int, int, int]) -> np.ndarray:
    """The former implementation: windows stacked in numpy, converted on the host, cast slice by slice."""
    hy = method.halo.y
    _, yh, xh = data.shape
    ny, nx = yh - 2 * hy, xh - 2 * hy
    out = np.empty((stop - start, ny, nx), dtype=data.dtype)
    js = np.arange(start, stop)
    for j in js[js % factor == 0]:
        out[j - start] = data[j // factor, hy : hy + ny, hy : hy + nx]
    windows = sorted({int(j // factor) for j in js[js % factor != 0]})
    if not windows:
        return out
    scale = _scale(data.dtype)
    depths = torch.arange(1, factor, dtype=torch.float32) / factor
    for ys in method._spans(origin[1], ny):  # the tile geometry is shared: what is compared is the data path
        for xs in method._spans(origin[2], nx):
            for b0 in range(0, len(windows), 4):
                batch = windows[b0 : b0 + 4]
                stack = np.stack([data[i - 1 : i + 3, ys.input, xs.input] for i in batch])
                x = torch.from_numpy(stack.astype(np.float32) / scale).unsqueeze(1)
                with torch.no_grad():
                    pred = method.model(x, depths)
                pred = pred.float()[:, :, ys.pred, xs.pred]
                pred = pred.clamp_(0, 1).mul_(scale).cpu().numpy()
                for w, i in enumerate(batch):
                    for k in range(1, factor):
                        j = i * factor + k
                        if start <= j < stop:
                            out[j - start, ys.core, xs.core] = cast_like(pred[w, k - 1], data.dtype)
    return out


@pytest.fixture(scope="module")
def block() -> np.ndarray:
    """A padded block as the executor hands it over: 7 slices, 32 px core + the halo (64 px) on each side."""
    crop = load_crop()[0]
    return np.ascontiguousarray(crop[0:56:8, :, :])  # (7, 128, 128)


DTYPES = [(np.uint8, 1.0), (np.uint16, 257.0), (np.int16, 100.0), (np.float32, 1 / 255), (np.float64, 1 / 255)]


@pytest.mark.parametrize("dtype, mult", DTYPES, ids=lambda v: getattr(v, "__name__", ""))
def test_device_path_is_bit_identical_to_the_numpy_path_on_cpu(model_dir, block, dtype, mult):
    method = DGEANMethod(model_dir, tile=32, margin=16, device="cpu")
    data = (block.astype(np.float64) * mult).astype(dtype)
    if dtype == np.float32:
        data[0, :4, :4] = [1.5, -0.25, 1.0, 0.0]  # out-of-range floats, clamped by the model path alike
    h = method.halo
    for factor, start, stop, origin in [(8, 8, 41, (-1, -h.y, -h.x)), (5, 6, 24, (3, 16 - h.y, 48 - h.x)),
                                        (3, 4, 5, (10, -h.y, 32 - h.x))]:
        got = method.apply_at(data, factor, start, stop, origin)
        want = numpy_reference(method, data, factor, start, stop, origin)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype.__name__} r={factor} {start}:{stop}")


def test_rounding_and_conversion_match_numpy_for_every_uint8_value():
    """The two arithmetic steps on their own: uint8 -> float / 255, and float -> round half even, clip, uint8."""
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(torch.from_numpy(values).float().div_(255.0).numpy(),
                                  values.astype(np.float32) / 255.0)
    pred = np.concatenate([np.linspace(-2, 258, 100_003, dtype=np.float32), np.arange(256, dtype=np.float32) + 0.5])
    mine = torch.from_numpy(pred.copy()).clamp_(0, 255).round_().clamp_(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(mine, cast_like(np.clip(pred, 0, 255), np.uint8))


def test_cpu_batch_is_fixed_and_an_explicit_one_wins(model_dir):
    dev = torch.device("cpu")
    assert DGEANMethod(model_dir)._batch(dev, 96, 96, 7) == CPU_WINDOWS_PER_BATCH
    assert DGEANMethod(model_dir, windows_per_batch=2)._batch(dev, 96, 96, 7) == 2


def test_gpu_batch_follows_free_memory(model_dir, monkeypatch):
    """Simulated free memory (no GPU needed): more free memory, more windows per call, within [1, limit]."""
    per_window = window_bytes({"widths": [8, 8, 16, 16, 32]}, 256, 256, 7)
    assert per_window == 4 * window_bytes({"widths": [8, 8, 16, 16, 32]}, 128, 128, 7)  # scales with pixels
    assert window_bytes({"widths": [8, 8, 16, 16, 32]}, 256, 256, 15) > per_window  # and with depths
    free = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    for gib, fraction in [(0, 0.5), (1, 0.5), (8, 0.5), (8, 0.25), (1000, 0.5)]:
        free["bytes"] = gib << 30
        n = batch_for_memory(per_window, "cuda", fraction=fraction)
        assert n == max(1, min(MAX_WINDOWS_PER_BATCH, int(free["bytes"] * fraction) // per_window))
    free["bytes"] = 1 << 30
    assert batch_for_memory(per_window, fraction=0.5) >= 2 * batch_for_memory(per_window, fraction=0.25) - 1

    method = DGEANMethod(model_dir, device="cpu")
    free["bytes"] = 3 << 30
    n = method._batch(torch.device("cuda"), 576, 576, 7)
    assert n == batch_for_memory(window_bytes(method.spec["model"], 576, 576, 7), fraction=0.5)
    free["bytes"] = 0
    assert method._batch(torch.device("cuda"), 576, 576, 7) == n, "sized once per tile shape, then kept"


def test_window_estimate_covers_the_default_model_at_a_sensible_size():
    """The default model, 576^2 input tile, 7 depths: a few GiB per window -> a handful of windows on 80 GB."""
    gib = window_bytes({}, 576, 576, 7) / 2**30
    assert 0.2 < gib < 20, gib


def test_model_comes_from_the_cache_when_it_is_on(model_dir, block):
    method = DGEANMethod(model_dir, tile=32, margin=16, device="cpu")
    c = cache.enable()
    try:
        first = method.model
        again = DGEANMethod(model_dir, tile=64, margin=16, device="cpu").model
        assert again is first and c.loads == 1 and c.hits == 1
        assert method._model is None, "a cached model is not pinned to the method copy"
    finally:
        cache.disable()
    assert cache.active() is None and c.keys() == []
    assert method.model is not first and method._model is not None, "without the cache: the lazy per-copy load"

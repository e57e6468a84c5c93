"""DGEAN model-only speed levers, in one call: which configuration and execution mode could reach the
300 Mvox/s end-to-end target of issue 6 (DESIGN.md) on one GPU.

    source benchmarks/device_env.sh && python3 benchmarks/dgean_speed.py      # one GPU machine (~3-5 min)
    python benchmarks/dgean_speed.py --quick                                   # CPU check of the path

The ``default`` DGEAN costs about 1 MMAC (2 MFLOP) per synthesised voxel and ran 70 Mvox/s model-only on an H100
(BENCHMARKS.md), so no pipeline efficiency can bring it to 300 Mvox/s end to end.  This prints, per network
configuration (untrained: speed does not depend on the weights), its MACs per output voxel from
``estimate_macs`` and its model-only output Mvox/s at r = 8 on the tiles the executor cuts (512 + 2 x 32
margins), in three execution modes:

* ``eager``: what ``isovol upsample`` runs today (bf16 autocast on CUDA, fp32 on CPU);
* ``channels_last``: the same with the weights and input in channels-last-3d memory (cuDNN's preferred layout
  for bf16 tensor-core convolutions);
* ``compile``: ``torch.compile`` (inductor) of the eager model, fixed input shape.

A configuration's quality is a separate question (train it with ``isovol train --method sup-dgean --recipe FILE``,
FILE a DGEAN recipe whose ``model`` holds the configuration); this table says which ones are worth that
training.  Prints Markdown; writes ``dgean_speed.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

from isovol.pipeline.methods.dgean.method import ALIGN, _round_up
from isovol.pipeline.methods.dgean.network import DGEANConfig, build_dgean, count_parameters, estimate_macs

FACTOR = 8
MARGIN = 32

#: candidate configurations: the presets, and cheaper variants of ``small`` (add-skips halve the decoder; one
#: block per stage halves the encoder)
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": DGEANConfig.preset("small").to_dict(),
    "small, add skips": {**DGEANConfig.preset("small").to_dict(), "skip_join": "add"},
    "small, add skips, 1 block/stage": {**DGEANConfig.preset("small").to_dict(), "skip_join": "add",
                                        "blocks": (1, 1, 1, 1)},
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def time_calls(fn: Any, x: torch.Tensor, depths: torch.Tensor, seconds: float, cuda: bool) -> float:
    """Median seconds per call after two warm-up calls (compilation and cuDNN autotuning happen there)."""
    for _ in range(2):
        fn(x, depths)
    if cuda:
        torch.cuda.synchronize()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        fn(x, depths)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(config: dict[str, Any], mode: str, dev: torch.device, tile: int, batch: int,
            seconds: float) -> dict[str, Any]:
    cuda = dev.type == "cuda"
    model = build_dgean(config).eval().to(dev)
    side = _round_up(tile + 2 * MARGIN, ALIGN)
    x = torch.rand(batch, 1, 4, side, side, device=dev)
    depths = torch.arange(1, FACTOR, dtype=torch.float32, device=dev) / FACTOR
    if mode == "channels_last":  # the 3-D convolutions' weights and the input; the 2-D head keeps its layout
        for p in model.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    fn = torch.compile(model, dynamic=False) if mode == "compile" else model

    def call(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return fn(a, d)

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    try:
        sec = time_calls(call, x, depths, seconds, cuda)
    except Exception as exc:  # a mode that fails on this machine is a row, not the end of the table
        return {"mode": mode, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    wall = time.perf_counter() - t0
    vox = batch * FACTOR * tile * tile  # output voxels per call: r slices per window (r - 1 new + 1 kept)
    row = {"mode": mode, "input_tile": side, "windows_per_batch": batch, "seconds_per_call": sec,
           "mvox_s": vox / sec / 1e6, "wall_s_with_warmup": wall}
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    del model, x
    if cuda:
        torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized: the tiny preset, small tiles, short timing")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--tile", type=int, default=None, help="tile core [512 on a GPU, 32 with --quick]")
    ap.add_argument("--batch", type=int, default=8, help="windows per call (the executor's shard holds 8)")
    ap.add_argument("--seconds", type=float, default=None, help="timing per row after warm-up [4; 0.5 --quick]")
    ap.add_argument("--modes", default="eager,channels_last,compile")
    ap.add_argument("--configs", default=None, help=f"comma-separated names out of {list(CONFIGS)}")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    tile = args.tile or (32 if args.quick else 512)
    batch = 2 if args.quick else args.batch
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 4.0)
    configs = {"tiny": DGEANConfig.preset("tiny").to_dict()} if args.quick else CONFIGS
    if args.configs:
        configs = {k: CONFIGS[k] for k in args.configs.split(",")}
    modes = args.modes.split(",")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")
    log(f"# DGEAN model-only speed, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    log(f"device: {name}; torch {torch.__version__}; r = {FACTOR}; tile {tile} + 2 x {MARGIN} margins; "
        f"{batch} windows per call; {'bf16 autocast' if dev.type == 'cuda' else 'fp32'}\n")
    log("| configuration | params M | kMAC / output voxel | mode | Mvox/s | s / call | peak GiB |")
    log("|---|---|---|---|---|---|---|")
    results = []
    for label, cfg in configs.items():
        params = count_parameters(build_dgean(cfg)) / 1e6
        kmac = estimate_macs(DGEANConfig.from_dict(cfg) if cfg else DGEANConfig(), FACTOR - 1)["per_output_voxel"]
        kmac /= 1e3
        for mode in modes:
            row = {"configuration": label, "config": cfg, "params_m": params, "kmac_per_voxel": kmac,
                   **measure(cfg, mode, dev, tile, batch, seconds)}
            results.append(row)
            if "error" in row:
                log(f"| {label} | {params:.1f} | {kmac:.0f} | {mode} | failed: {row['error']} | | |")
            else:
                peak = f"{row['peak_gib']:.1f}" if "peak_gib" in row else "–"
                log(f"| {label} | {params:.1f} | {kmac:.0f} | {mode} | {row['mvox_s']:.3g} | "
                    f"{row['seconds_per_call']:.4f} | {peak} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dgean_speed.json"), "w") as fh:
        json.dump({"device": name, "torch": torch.__version__, "tile": tile, "batch": batch, "rows": results},
                  fh, indent=1, default=str)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

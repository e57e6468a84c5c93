"""Golden outputs recorded before the method-registry refactor (golden.json): a blockwise cubic upsample of the
bundled crop decimated by 8 must stay byte for byte the same on every machine.  The seeded cpu-tiny D2R run is
checked in test_train.py on its module's trained model (no second training); this module holds the hashing
helpers both use."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from clirun import read_output, run_isovol, write_input

GOLDEN = json.loads((Path(__file__).with_name("golden.json")).read_text())
R = 8


def level0_sha256(url: str | os.PathLike) -> tuple[str, list[int], str]:
    """sha256 of the C-order bytes of an output's level 0, with its shape and dtype."""
    a = np.ascontiguousarray(read_output(url))
    return hashlib.sha256(a.tobytes()).hexdigest(), list(a.shape), str(a.dtype)


def tensors_sha256(path: str | os.PathLike) -> str:
    """sha256 over a safetensors file's tensors sorted by name, each as ``name\\0dtype\\0shape\\0`` then its raw
    bytes: the weights, not the file's header layout."""
    import torch
    from safetensors.torch import load_file

    h = hashlib.sha256()
    state = load_file(str(path))
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``), with ``+amx`` where the CPU has AMX tiles: with
    the same torch and instruction set, oneDNN still picks other kernels on another vendor's or generation's
    CPU, and trained weights differ in their last bits."""
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if not vendor:
        import platform

        vendor = platform.processor() or "unknown"
    return vendor + ("+amx" if "amx_tile" in flags else "")


def torch_golden(name: str) -> tuple[dict | None, str]:
    """The torch-based golden record ``name`` for this machine, or None with why it cannot be compared here:
    torch's CPU kernels give other float results with another torch version, instruction set or CPU vendor."""
    import torch

    here = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    recorded = (GOLDEN["torch"], GOLDEN["cpu_capability"])
    if here != recorded:
        return None, (f"torch golden outputs were recorded with torch {recorded[0]} on CPU capability "
                      f"{recorded[1]}; this machine has torch {here[0]} on {here[1]}, where CPU float results "
                      "may differ")
    by_vendor = {GOLDEN["cpu_vendor"]: GOLDEN[name], **GOLDEN.get(f"{name}_by_cpu_vendor", {})}
    vendor = cpu_vendor()
    if vendor not in by_vendor:
        return None, f"no torch golden outputs recorded on a {vendor} CPU (recorded: {', '.join(sorted(by_vendor))})"
    return by_vendor[vendor], ""


def test_blockwise_cubic_matches_the_golden_output(tmp_path, crop):
    """Blocks (48, 80, 96) over a (129, 128, 128) output: partial blocks on every axis, shards of half a block."""
    golden = GOLDEN["cubic"]
    src = write_input(tmp_path / "in.ome.zarr", np.ascontiguousarray(crop[::R]), R)
    out = tmp_path / "cubic.ome.zarr"
    res = run_isovol("upsample", src, out, "--factor", R, "--method", "cubic", "--block-shape", "48,80,96",
                     "--shard-shape", "24,40,48", "--workers", 2, "--no-progress")
    assert res.returncode == 0, res.stderr
    digest, shape, dtype = level0_sha256(out)
    assert (shape, dtype) == (golden["shape"], golden["dtype"])
    assert digest == golden["level0_sha256"], "the cubic output changed since the golden recording"

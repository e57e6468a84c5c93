"""Convert pytorch-fid's FID Inception weights to the safetensors file `isovol evaluate --inception` reads.

Run once, on your own copy of the weights (isovol never downloads them):

    python tools/convert_inception.py pt_inception-2015-12-05-6726825d.pth inception-fid.safetensors
    isovol evaluate GT --factor 8 --method ... --out REPORT --inception inception-fid.safetensors

The source is pytorch-fid's release file ``pt_inception-2015-12-05-*.pth`` (the TensorFlow Inception graph of
2015-12-05 that FID is defined with, ported to PyTorch), or any state dict with the same names.  It is read
with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects; this script is the only place
that touches a ``.pth`` file.  The classifier (``fc.*``) and batch-norm counters are dropped, every other
tensor is checked by name and shape against isovol's own network before the output is written, and the
output is read back through the loader ``isovol evaluate`` uses.
"""

from __future__ import annotations

import argparse
import os
import sys

from isovol.pipeline.checkpoints import check_state, file_sha256, save_tensors
from isovol.pipeline.errors import InputError
from isovol.pipeline.models.inception import InceptionFeatures, feature_tensors, load_inception


def convert(src: str, dst: str) -> int:
    """Write ``dst`` from ``src``; returns the number of tensors written."""
    import torch

    if not os.path.exists(src):
        raise InputError(f"{src} not found")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear line
        raise InputError(f"{src} is not a PyTorch state dict readable with weights_only=True "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{src} does not hold a state dict (a mapping of names to tensors)")
    tensors = {k: v.float() for k, v in feature_tensors(state).items()}
    check_state(InceptionFeatures(), tensors, f"Inception weights {src}")
    save_tensors(dst, tensors, metadata={"model": "FID InceptionV3 (TF 2015-12-05, pytorch-fid names)",
                                         "source": os.path.basename(src), "source_sha256": file_sha256(src)})
    load_inception(dst)  # what evaluate will do
    return len(tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="pytorch-fid weights, e.g. pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("dst", help="safetensors file to write, for isovol evaluate --inception")
    args = parser.parse_args(argv)
    try:
        n = convert(args.src, args.dst)
    except InputError as exc:
        print(f"convert_inception: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {n} tensors, sha256 {file_sha256(args.dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

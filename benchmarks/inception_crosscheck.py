"""Check isovol's FID Inception against pytorch-fid's network: same weights in, same 2048 features out.

isovol builds the FID InceptionV3 itself (pipeline/models/inception.py) so it needs neither torchvision nor
pytorch-fid at run time.  This script, run where both are installed, loads identical weights into both
networks and compares their features on random images of odd sizes (exercising the 299x299 resize):

    pip install pytorch-fid torchvision      # into a scratch environment, not isovol's
    python benchmarks/inception_crosscheck.py                            # random weights, random BN statistics
    python benchmarks/inception_crosscheck.py --weights inception-fid.safetensors   # your converted file

It prints the state-dict keys either side lacks and the largest feature difference (0 expected on the CPU).
Measured with pytorch-fid 0.3.0 / torchvision 0.29.1: no missing keys (pytorch-fid's only extras are
fc.weight, fc.bias and the batch-norm counters); max |difference| exactly 0 at 57x83, 299x299 and 512x256
(features of mean 2.4-3.5).
"""

from __future__ import annotations

import argparse
import math

import torch

from isovol.pipeline.models.inception import InceptionFeatures, load_inception


def random_weights(seed: int) -> InceptionFeatures:
    """He-scaled convolutions and non-trivial batch-norm statistics, so every tensor matters."""
    model = InceptionFeatures()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("conv.weight"):
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        elif k.endswith(("running_mean", "bn.bias")):
            state[k] = torch.randn(v.shape, generator=g) * 0.1
        else:  # running_var, bn.weight
            state[k] = torch.rand(v.shape, generator=g) + 0.5
    model.load_state_dict(state)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a safetensors file from tools/convert_inception.py [random weights]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from pytorch_fid import inception as pf

    ours = load_inception(args.weights) if args.weights else random_weights(args.seed)
    state = dict(ours.state_dict())
    full = {**state, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    pf.load_state_dict_from_url = lambda *a, **k: full  # hand pytorch-fid our weights instead of a download
    theirs = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ref_keys = {k for k in pf.fid_inception_v3().state_dict() if not k.endswith("num_batches_tracked")}
    print("only in pytorch-fid:", sorted(ref_keys - set(state)) or "-")
    print("only in isovol:", sorted(set(state) - ref_keys) or "-")
    g = torch.Generator().manual_seed(args.seed + 1)
    for shape in ((3, 3, 57, 83), (2, 3, 299, 299), (2, 3, 512, 256)):
        x = torch.rand(*shape, generator=g)
        with torch.no_grad():
            a, b = ours(x), theirs(x)[0].flatten(1)
        print(f"input {shape}: features {tuple(a.shape)}, max |isovol - pytorch-fid| {(a - b).abs().max().item():.3g}"
              f" (mean feature {b.abs().mean().item():.3g})")


if __name__ == "__main__":
    main()

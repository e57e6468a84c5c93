"""The FID Inception: pytorch-fid parameter names and shapes, 2048-d features, safetensors-only loading."""

from __future__ import annotations

import math

import pytest
import torch

from isovol.pipeline.checkpoints import save_tensors
from isovol.pipeline.errors import InputError
from isovol.pipeline.models.inception import FEATURES, InceptionFeatures, load_inception


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-initialised convolutions and identity batch norms: features neither vanish nor explode."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in InceptionFeatures().state_dict().items():
        if k.endswith("conv.weight"):
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        else:
            state[k] = v.clone()
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("inception") / "inception.safetensors")
    save_tensors(path, random_state())
    return path


#: a few tensors of pytorch-fid's FID Inception state dict, with their shapes
KNOWN = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
}


def test_state_dict_has_the_pytorch_fid_names():
    state = InceptionFeatures().state_dict()
    for key, shape in KNOWN.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("fc.", "AuxLogits.")) or k.endswith("num_batches_tracked") for k in state)
    assert len(state) == 94 * 5  # 94 convolutions, each with weight + 4 batch-norm tensors
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var")))
    assert params == 21_785_568  # InceptionV3 without the classifier and the auxiliary head


def test_features_of_grey_and_rgb_images(weights):
    model = load_inception(weights)
    grey = torch.rand(3, 1, 24, 40, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        f = model(grey)
        f_rgb = model(grey.expand(-1, 3, -1, -1))
    assert f.shape == (3, FEATURES) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all() and f.std(0).mean() > 0  # ReLU features that vary
    assert torch.equal(f, f_rgb)  # grey is replicated to three channels
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_pytorch_fid_extras_are_ignored(tmp_path):
    """A file with the classifier and batch-norm counters (pytorch-fid's full state dict) loads too."""
    state = random_state(1)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
    path = str(tmp_path / "full.safetensors")
    save_tensors(path, state)
    model = load_inception(path)
    assert torch.equal(model.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                       state["Mixed_7c.branch_pool.conv.weight"])


@pytest.mark.parametrize("case, expect", [
    ("missing-file", "not found"),
    ("garbage", "not a readable safetensors file"),
    ("wrong-shape", "shape of Conv2d_1a_3x3.conv.weight is (32, 1, 3, 3)"),
    ("missing-tensor", "missing Mixed_7c.branch_pool.bn.bias"),
    ("other-model", "unexpected features.0.weight"),
])
def test_wrong_files_are_refused_with_one_line(case, expect, tmp_path):
    path = str(tmp_path / "w.safetensors")
    state = random_state()
    if case == "garbage":
        with open(path, "wb") as f:
            f.write(b"\x80\x04 this is a pickle, not safetensors" * 10)
    elif case == "wrong-shape":
        state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 1, 3, 3)
    elif case == "missing-tensor":
        del state["Mixed_7c.branch_pool.bn.bias"]
    elif case == "other-model":
        state = {"features.0.weight": torch.zeros(64, 3, 11, 11)}
    if case not in ("garbage", "missing-file"):
        save_tensors(path, state)
    with pytest.raises(InputError) as info:
        load_inception(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("Inception weights (--inception)") and expect in msg, msg

"""tools/convert_inception.py: a pytorch-fid-style .pth becomes the safetensors file evaluate reads."""

from __future__ import annotations

import collections
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from isovol.pipeline.models.inception import InceptionFeatures, load_inception

TOOL = Path(__file__).resolve().parents[2] / "tools" / "convert_inception.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_inception", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pytorch_fid_like_state() -> dict[str, torch.Tensor]:
    """Our names plus what pytorch-fid's file also holds: the 1008-class classifier and batch-norm counters."""
    g = torch.Generator().manual_seed(0)
    state = collections.OrderedDict()
    for k, v in InceptionFeatures().state_dict().items():
        state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel()) if k.endswith("conv.weight") \
            else v.clone()
        if k.endswith("bn.running_var"):
            state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    return state


def test_converts_a_pytorch_fid_state_dict(tool, tmp_path, capsys):
    src, dst = tmp_path / "pt_inception-2015-12-05-test.pth", tmp_path / "inception.safetensors"
    state = _pytorch_fid_like_state()
    torch.save(state, src)
    assert tool.main([str(src), str(dst)]) == 0
    assert f"wrote {dst}: 470 tensors" in capsys.readouterr().out
    with safe_open(str(dst), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["source"] == src.name and len(f.metadata()["source_sha256"]) == 64
    assert not any(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in keys)
    model = load_inception(dst)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_refuses_what_is_not_a_fitting_state_dict(tool, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, bad)
    assert tool.main([str(bad), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convert_inception: error:") and "missing" in err[0]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    assert tool.main([str(garbage), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights_only=True" in err[0]
    assert not (tmp_path / "out.safetensors").exists()

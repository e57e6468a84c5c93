"""InceptionV3 pool features for SliceFID, in the layout of the FID Inception (TF graph 2015-12-05).

FID numbers only compare when they come from the same network, and the one the literature uses is the
TensorFlow Inception graph of 2015-12-05 as ported to PyTorch for pytorch-fid.  This module builds that
network ourselves, inference only, so a user's converted weight file loads into it name for name:

* stem ``Conv2d_1a_3x3`` (stride 2), ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3`` (padded), 3x3/2 max pool,
  ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3``, 3x3/2 max pool;
* ``Mixed_5b/5c/5d`` (35x35 blocks), ``Mixed_6a`` (reduction), ``Mixed_6b..6e`` (17x17 blocks with
  factorised 7x7 convolutions), ``Mixed_7a`` (reduction), ``Mixed_7b/7c`` (8x8 blocks with split 1x3 / 3x1
  branches), global average pool -> 2048 features.
* Every convolution is ``NAME.conv`` (no bias) + ``NAME.bn`` (batch norm, eps 1e-3, frozen) + ReLU.
* What makes it the *FID* Inception and not torchvision's: the pool branches of 5b-5d, 6b-6e and 7b average
  over the valid (unpadded) pixels only, as TensorFlow does, and the pool branch of 7c takes a 3x3 *max*.

Inputs are images in [0, 1], one or three channels (grey is replicated), any size: they are resized
bilinearly to 299x299 (no antialiasing, half-pixel centres) and scaled to [-1, 1], as pytorch-fid does.

Weights are never shipped or downloaded: ``load_inception`` reads a safetensors file the user made once with
``tools/convert_inception.py`` from pytorch-fid's ``pt_inception-2015-12-05-*.pth``; the classifier
(``fc.*``) and batch-norm counters (``*.num_batches_tracked``) in such a file are ignored.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import check_state, load_tensors
from ..errors import InputError

FEATURES = 2048
INPUT_SIZE = 299
#: tensors of a pytorch-fid state dict that the feature extractor has no use for
IGNORED_SUFFIXES = (".num_batches_tracked",)
IGNORED_PREFIXES = ("fc.", "AuxLogits.")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: the four tensors a converted graph carries, and nothing that trains."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ConvBN(nn.Module):
    """Convolution without bias, frozen batch norm, ReLU: the unit every Inception branch is made of."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _valid_avg3(x: Tensor) -> Tensor:
    """3x3 stride-1 average over the pixels inside the image (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Mixed35(nn.Module):
    """A 35x35 block (5b, 5c, 5d): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | valid 3x3 average -> 1x1."""

    def __init__(self, cin: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        wide = self.branch5x5_2(self.branch5x5_1(x))
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), wide, deep, self.branch_pool(_valid_avg3(x))], 1)


class Reduce35(nn.Module):
    """35x35 -> 17x17 (6a): strided 3x3 | 1x1 -> 3x3 -> strided 3x3 | strided 3x3 max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, 3, stride=2)], 1)


class Mixed17(nn.Module):
    """A 17x17 block (6b-6e): 7x7 convolutions factorised into 1x7 and 7x1, width ``mid`` inside."""

    def __init__(self, cin: int, mid: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) pairs
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, mid, 1)
        self.branch7x7_2 = ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(mid, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, mid, 1)
        self.branch7x7dbl_2 = ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(mid, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_valid_avg3(x))], 1)


class Reduce17(nn.Module):
    """17x17 -> 8x8 (7a): 1x1 -> strided 3x3 | 1x1 -> 1x7 -> 7x1 -> strided 3x3 | strided 3x3 max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class Mixed8(nn.Module):
    """An 8x8 block (7b, 7c): each 3x3 path ends in parallel 1x3 and 3x1 convolutions, concatenated.

    ``pool="avg"`` (7b) averages over valid pixels; ``pool="max"`` (7c) is the FID graph's max pool.
    """

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        single = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _valid_avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(pooled)], 1)


class InceptionFeatures(nn.Module):
    """FID InceptionV3 up to the global average pool: images (N, 1 or 3, H, W) in [0, 1] -> (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = Mixed35(192, 32)
        self.Mixed_5c = Mixed35(256, 64)
        self.Mixed_5d = Mixed35(288, 64)
        self.Mixed_6a = Reduce35(288)
        self.Mixed_6b = Mixed17(768, 128)
        self.Mixed_6c = Mixed17(768, 160)
        self.Mixed_6d = Mixed17(768, 160)
        self.Mixed_6e = Mixed17(768, 192)
        self.Mixed_7a = Reduce17(768)
        self.Mixed_7b = Mixed8(1280, "avg")
        self.Mixed_7c = Mixed8(2048, "max")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # a frozen measure: never in training mode

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def feature_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of a pytorch-fid (or converted) state dict the feature extractor uses."""
    return {k: v for k, v in state.items()
            if not k.startswith(IGNORED_PREFIXES) and not k.endswith(IGNORED_SUFFIXES)}


def load_inception(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception from a safetensors file (``tools/convert_inception.py`` makes one); refuses a file that
    is not safetensors or whose tensors do not fit the architecture, with one line saying why."""
    what = "Inception weights (--inception)"
    state = feature_tensors(load_tensors(os.fspath(path), what))
    model = InceptionFeatures()
    check_state(model, state, what)
    bad = sorted(k for k, v in state.items() if not v.is_floating_point())
    if bad:
        raise InputError(f"{what}: {path} holds non-float tensors ({', '.join(bad[:3])})")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device)

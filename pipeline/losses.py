"""Training losses for DGEAN (D2R paper, eq. 11-14), written in our own words.

    total = L1 + (1 - SSIM) + 100 * FFL + 0.1 * (consistency + smoothness)

Images are single-channel, values in [0, 1].  Functions accept (N, H, W) or (N, C, H, W).

Two decisions the reader should know:

* Smoothness sign.  The paper writes L_smooth = 1 - G, with G the Gini coefficient of the perceptual
  distances between consecutive slices.  G is 0 when all steps are equal and grows as the change
  concentrates in few steps (a jump), so minimising 1 - G would *reward* uneven transitions, the opposite
  of the stated intent ("encourage a continuous and smooth transition").  We minimise G itself.
* Perceptual distance.  LPIPS needs pretrained AlexNet + linear-layer weights that cannot be downloaded
  here, so the default P is ``FilterBankDistance``: fixed multi-scale Gaussian-derivative responses with a
  soft LPIPS-style channel normalisation (deterministic, no weights).  ``LPIPSAlex`` / ``load_lpips`` give
  real LPIPS (AlexNet, v0.1 layout) from a user-supplied safetensors file; nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------- helpers


def _as_nchw(x: Tensor) -> Tensor:
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected images (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x


def _gaussian_1d(sigma: float, radius: int, order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Sampled Gaussian (order 0) or its 1st / 2nd derivative; order 0 sums to 1."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    if order == 1:
        g = -t / sigma**2 * g
    elif order == 2:
        g = (t**2 / sigma**4 - 1 / sigma**2) * g
        g = g - g.mean()  # zero response to constants despite truncation
    return g.to(dtype=dtype, device=device)


def _separable(x: Tensor, kx: Tensor, ky: Tensor) -> Tensor:
    """Filter each channel of (N, C, H, W) with kx along X and ky along Y ('same' size, reflect pad)."""
    c, r = x.shape[1], (kx.numel() - 1) // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, kx.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, ky.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# ------------------------------------------------------------------------------------ pixel terms


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs().mean()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean SSIM (Wang et al. 2004) with a Gaussian window, computed over valid positions only.

    Valid (unpadded) filtering keeps padding from inflating the score at borders.  Images smaller than the
    window use the largest odd window that fits.
    """
    pred, target = _as_nchw(pred), _as_nchw(target)
    size = min(window, *pred.shape[-2:])
    size -= 1 - size % 2
    g = _gaussian_1d(sigma, size // 2, 0, pred.dtype, pred.device)
    c = pred.shape[1]
    gx, gy = g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(pred * target) - mu_p * mu_t
    num = (2 * mu_p * mu_t + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)
    return (num / den).mean()


def focal_frequency_loss(pred: Tensor, target: Tensor, alpha: float = 1.0) -> Tensor:
    """Focal frequency loss (Jiang et al., ICCV 2021), whole-image spectrum, no log, per-image weights.

    The squared spectral error is weighted by |F(pred) - F(target)|**alpha, scaled to [0, 1] per image and
    channel and detached, so the frequencies that are currently hardest get the most attention.
    """
    pred, target = _as_nchw(pred), _as_nchw(target)
    diff = torch.fft.fft2(pred, norm="ortho") - torch.fft.fft2(target, norm="ortho")
    dist = diff.real**2 + diff.imag**2
    with torch.no_grad():
        weight = dist.sqrt() ** alpha
        peak = weight.amax(dim=(-2, -1), keepdim=True)
        weight = torch.where(peak > 0, weight / peak.clamp_min(torch.finfo(weight.dtype).tiny), 0.0)
        weight = weight.clamp(0, 1)
    return (weight * dist).mean()


# ---------------------------------------------------------------------------------- continuity terms


def gini(values: Tensor, eps: float = 1e-8) -> Tensor:
    """Gini coefficient over the last dim: sum_ij |x_i - x_j| / (2 n^2 mean(x)).

    0 when all values are equal, (n - 1) / n when one value carries everything.  ``eps`` keeps it finite
    (and 0) for an all-zero vector.  Values are expected to be non-negative (distances).
    """
    n = values.shape[-1]
    pair = (values.unsqueeze(-1) - values.unsqueeze(-2)).abs().sum(dim=(-2, -1))
    return pair / (2 * n * n * values.mean(dim=-1) + eps)


class FilterBankDistance(nn.Module):
    """Offline perceptual distance: fixed multi-scale Gaussian-derivative features, LPIPS-style comparison.

    Per scale sigma in ``scales``: scale-normalised d/dx, d/dy and Laplacian-of-Gaussian responses.  As in
    LPIPS the feature vector at each pixel is normalised over channels before the squared difference is
    summed over channels and averaged over pixels; the distance is the mean over scales.  The normalisation
    is *soft*, f / sqrt(|f|^2 + kappa^2) (divisive normalisation, as in NLPD): a hard unit normalisation
    would keep only the local edge direction and be blind to blur and contrast loss, which are exactly the
    failures we want consecutive slices not to show.  kappa ~ a weak edge in [0, 1] data.  No weights,
    deterministic, differentiable.  Returns one distance per image pair, shape (N,).
    """

    def __init__(self, scales: tuple[float, ...] = (1.0, 2.0, 4.0), kappa: float = 0.02):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.kappa = float(kappa)

    def features(self, x: Tensor) -> list[Tensor]:
        x = _as_nchw(x)
        x = x.mean(dim=1, keepdim=True) if x.shape[1] > 1 else x
        out = []
        for s in self.scales:
            r = max(1, math.ceil(3 * s))
            g0, g1, g2 = (_gaussian_1d(s, r, k, x.dtype, x.device) for k in (0, 1, 2))
            dx = s * _separable(x, g1, g0)
            dy = s * _separable(x, g0, g1)
            log = s * s * (_separable(x, g2, g0) + _separable(x, g0, g2))
            f = torch.cat([dx, dy, log], dim=1)
            out.append(f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + self.kappa**2))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        n = a.shape[0]
        feats = self.features(torch.cat([a, b], dim=0))
        per_scale = [((f[:n] - f[n:]) ** 2).sum(dim=1).mean(dim=(-2, -1)) for f in feats]
        return torch.stack(per_scale, dim=0).mean(dim=0)


def continuity_loss(first: Tensor, preds: Tensor, last: Tensor, distance: nn.Module) -> dict[str, Tensor]:
    """Consistency and smoothness over the slice sequence [first, preds[:, 0], ..., preds[:, D-1], last].

    ``first``/``last`` (B, H, W) are the kept slices at depths 0 and 1, ``preds`` (B, D, H, W) the predictions
    at increasing depths (for r-fold super-resolution: k / r, k = 1..r-1).  With P the perceptual distance of
    consecutive slices, consistency = mean P (small changes), smoothness = Gini(P) per sequence, averaged
    over the batch (even changes; see the module docstring for why this is G and not the paper's 1 - G).
    """
    if preds.ndim != 4 or first.shape != preds[:, 0].shape or last.shape != first.shape:
        raise ValueError(f"expected first/last (B, H, W) and preds (B, D, H, W), got {tuple(first.shape)}, "
                         f"{tuple(preds.shape)}, {tuple(last.shape)}")
    seq = torch.cat([first.unsqueeze(1), preds, last.unsqueeze(1)], dim=1)  # (B, D+2, H, W)
    b, steps = seq.shape[0], seq.shape[1] - 1
    a_img = seq[:, :-1].reshape(b * steps, 1, *seq.shape[-2:])
    b_img = seq[:, 1:].reshape(b * steps, 1, *seq.shape[-2:])
    dist = distance(a_img, b_img).reshape(b, steps)
    return {"consistency": dist.mean(), "smoothness": gini(dist).mean()}


# ------------------------------------------------------------------------------------------- LPIPS


class LPIPSAlex(nn.Module):
    """LPIPS with an AlexNet backbone (Zhang et al. 2018, v0.1 layout), frozen; weights from ``load_lpips``.

    Features after the ReLUs of conv1..conv5 are unit-normalised over channels, their squared difference
    weighted per channel by the 1x1 'lin' layers, averaged over pixels and summed over layers.  Inputs are
    [0, 1] single- or three-channel images; they are mapped to [-1, 1] and standardised as LPIPS does.
    Needs H, W >= 32 (AlexNet's strides).  Returns (N,).
    """

    CHANNELS = (64, 192, 384, 256, 256)
    #: indices (in ``features``) of the ReLUs whose outputs are compared
    TAPS = (1, 4, 7, 9, 11)
    MIN_SIZE = 32

    def __init__(self) -> None:
        super().__init__()
        c = self.CHANNELS
        # torchvision's AlexNet.features layout, so its state-dict keys (features.0, .3, .6, .8, .10) map 1:1
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        for i, ch in enumerate(c):
            setattr(self, f"lin{i}", nn.Conv2d(ch, 1, 1, bias=False))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSAlex:
        return super().train(False)  # frozen metric: never in training mode

    def _taps(self, x: Tensor) -> list[Tensor]:
        x = _as_nchw(x)
        if min(x.shape[-2:]) < self.MIN_SIZE:
            raise ValueError(f"LPIPS-AlexNet needs images of at least {self.MIN_SIZE}x{self.MIN_SIZE}, "
                             f"got {tuple(x.shape[-2:])}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        n = a.shape[0]
        taps = self._taps(torch.cat([a, b], dim=0))
        total = torch.zeros(n, dtype=a.dtype, device=a.device)
        for i, f in enumerate(taps):
            lin = getattr(self, f"lin{i}")
            total = total + lin((f[:n] - f[n:]) ** 2).mean(dim=(1, 2, 3))
        return total


def _canonical_lpips_key(key: str) -> str | None:
    """Our key for a tensor name; also accepts the reference LPIPS names.  None: a known constant to skip."""
    if key in ("scaling_layer.shift", "scaling_layer.scale"):
        return None
    m = re.fullmatch(r"lin(\d)\.model\.1\.weight", key)  # reference lin file: Sequential(Dropout, Conv2d)
    if m:
        return f"lin{m.group(1)}.weight"
    m = re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key)  # reference full model: net.sliceK.<idx>
    if m:
        return f"features.{m.group(1)}.{m.group(2)}"
    return key


def load_lpips(path: str | os.PathLike[str]) -> LPIPSAlex:
    """LPIPS-AlexNet from a safetensors file; refuses any missing, unexpected or mis-shaped tensor.

    Expected tensors: ``features.{0,3,6,8,10}.{weight,bias}`` (torchvision AlexNet layout) and
    ``lin{0..4}.weight`` (1, C, 1, 1).  The reference LPIPS names (``lin0.model.1.weight``,
    ``net.slice1.0.weight``, ``scaling_layer.*``) are accepted too, so a file is made on a machine with
    internet by saving torchvision's AlexNet ``features`` state dict plus LPIPS's ``alex.pth`` (v0.1) with
    ``safetensors.torch.save_file``.  Only safetensors is read: no pickle, no ``torch.load``.
    """
    from safetensors.torch import load_file

    raw = load_file(os.fspath(path), device="cpu")
    tensors: dict[str, Tensor] = {}
    for key, value in raw.items():
        name = _canonical_lpips_key(key)
        if name is not None:
            if name in tensors:
                raise ValueError(f"{path}: tensor {name!r} given twice (as {key!r} and another alias)")
            tensors[name] = value
    model = LPIPSAlex()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} != expected {tuple(v.shape)}"
              for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        if shapes:
            parts.append("wrong shapes: " + "; ".join(shapes))
        raise ValueError(f"{path} is not an LPIPS-AlexNet weight file: " + ", ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    return model


# ---------------------------------------------------------------------------------------------- total


class DGEANLoss(nn.Module):
    """L1 + (1 - SSIM) + w_ffl * FFL + w_cont * (consistency + smoothness), each term reported.

    ``forward(pred, target, first, last)``: ``pred``/``target`` (B, D, H, W) at increasing depths, ``first``/
    ``last`` (B, H, W) the kept slices at depths 0 and 1 (the window's middle two).  Without first/last the
    continuity terms are skipped (reported as 0).  ``perceptual`` defaults to ``FilterBankDistance``; pass a
    ``load_lpips(...)`` model for the paper's LPIPS.
    """

    def __init__(self, w_ffl: float = 100.0, w_cont: float = 0.1, perceptual: nn.Module | None = None,
                 ffl_alpha: float = 1.0):
        super().__init__()
        self.w_ffl, self.w_cont, self.ffl_alpha = w_ffl, w_cont, ffl_alpha
        self.perceptual = perceptual if perceptual is not None else FilterBankDistance()

    def forward(self, pred: Tensor, target: Tensor, first: Tensor | None = None,
                last: Tensor | None = None) -> dict[str, Tensor]:
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(f"pred and target must both be (B, D, H, W), got {tuple(pred.shape)}, "
                             f"{tuple(target.shape)}")
        p, t = pred.flatten(0, 1).unsqueeze(1), target.flatten(0, 1).unsqueeze(1)
        terms = {
            "l1": l1_loss(p, t),
            "ssim": 1 - ssim(p, t),
            "ffl": focal_frequency_loss(p, t, self.ffl_alpha),
        }
        if first is not None and last is not None:
            terms.update(continuity_loss(first, pred, last, self.perceptual))
        else:
            zero = pred.new_zeros(())
            terms.update(consistency=zero, smoothness=zero)
        terms["continuity"] = terms["consistency"] + terms["smoothness"]
        terms["total"] = (terms["l1"] + terms["ssim"] + self.w_ffl * terms["ffl"]
                          + self.w_cont * terms["continuity"])
        return terms

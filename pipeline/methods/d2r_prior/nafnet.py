"""Conditional NAFNet: the noise-predicting network of the IR-SDE Stage I prior.

Our own design from the NAFNet paper (Chen et al. 2022, "Simple Baselines for Image Restoration") plus
diffusion-style time conditioning; sized like the light IR-SDE D2R uses.

    input      concat(x_t - mu, mu)  (2 C channels; C = 1 for EM)  -> 3x3 conv to ``width`` channels
    U-Net      ``len(enc_blocks)`` levels; at each level its NAFBlocks, then a 2x2 stride-2 conv (channels x2);
               ``middle_blocks`` at the bottom; on the way up a 1x1 conv (channels x2) + PixelShuffle(2)
               (channels / 2, resolution x2), the skip ADDED, then that level's decoder blocks.
    NAFBlock   y = LN(x) * (1 + a1) + b1 -> 1x1 (x ``dw_expand``) -> depthwise 3x3 -> SimpleGate (halves) ->
               simplified channel attention (mean -> 1x1 -> multiply) -> 1x1;  x = x + beta * y
               z = LN(x) * (1 + a2) + b2 -> 1x1 (x ``ffn_expand``) -> SimpleGate -> 1x1;  x = x + gamma * z
               beta, gamma are per-channel and start at 0 (the paper's init: every block starts as identity).
               (a1, b1, a2, b2) = Linear(SiLU(time embedding)) per block: scale/shift modulation.
    time       t (integer step, as float) -> sinusoidal features (``time_dim``) -> Linear, SiLU, Linear.
    output     3x3 conv to C channels: the predicted noise (no input residual).

Any H, W: the input is padded (reflect where possible, else replicate) to a multiple of 2**levels and the
output cropped back.

Simplified channel attention averages over the whole (padded) tile, as in the paper, so outputs depend a
little on the tile size; ``sca_window > 0`` averages over a local window instead (odd, in pixels of each
level), which makes the net translation-equivariant away from borders (tiling-consistent given a halo).
LayerNorm statistics are computed in float32 under autocast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class NAFNetConfig:
    """Everything that shapes a ConditionalNAFNet; JSON-serialisable via ``to_dict`` / ``from_dict``."""

    #: image channels C (the net sees 2 C: x_t - mu and mu) and predicts C noise channels
    in_channels: int = 1
    #: channels at full resolution; doubled at every level
    width: int = 64
    #: NAFBlocks per encoder level (the number of levels is its length)
    enc_blocks: list[int] = field(default_factory=lambda: [14, 1, 1, 1])
    #: NAFBlocks at the bottom (1 / 2**levels resolution)
    middle_blocks: int = 1
    #: NAFBlocks per decoder level, listed from the top (full resolution) down, like ``enc_blocks``
    dec_blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    #: sinusoidal features of the time step and width of the time MLP's output
    time_dim: int = 64
    #: expansion of the depthwise-conv branch and of the feed-forward branch
    dw_expand: int = 2
    ffn_expand: int = 2
    #: 0: channel attention pools the whole tile (paper); > 0 (odd): a local window of that size
    sca_window: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.enc_blocks = [int(b) for b in self.enc_blocks]
        self.dec_blocks = [int(b) for b in self.dec_blocks]
        if len(self.enc_blocks) != len(self.dec_blocks) or not self.enc_blocks:
            raise ValueError(f"enc_blocks and dec_blocks need the same (non-zero) number of levels, got "
                             f"{self.enc_blocks} and {self.dec_blocks}")
        if min(self.enc_blocks + self.dec_blocks + [self.middle_blocks]) < 0:
            raise ValueError("block counts must be >= 0")
        for name in ("in_channels", "width", "time_dim", "dw_expand", "ffn_expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even (sin and cos halves), got {self.time_dim}")
        if self.sca_window < 0 or (self.sca_window and self.sca_window % 2 == 0):
            raise ValueError(f"sca_window must be 0 (global) or odd, got {self.sca_window}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def levels(self) -> int:
        return len(self.enc_blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NAFNetConfig:
        """Inverse of ``to_dict``; unknown keys are refused so a typo cannot silently change a model."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown NAFNet config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NAFNetConfig:
        """A named preset (see ``PRESETS``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown NAFNet preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


#: ``tiny`` is for CPU tests; ``small`` a quarter of ``default`` (half width); ``default`` the light-IR-SDE
#: class (width 64, 4 levels, 14 blocks at full resolution).  Counted by ``count_parameters`` /
#: ``estimate_macs`` (per 256^2 tile, one network call):
#:   tiny       0.03 M params,   0.20 GMAC
#:   small      5.1 M params,   10.6 GMAC
#:   default   19.3 M params,   41.2 GMAC
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=8, enc_blocks=[1, 1], middle_blocks=1, dec_blocks=[1, 1], time_dim=16),
    "small": dict(width=32),
    "default": dict(),
}


# ------------------------------------------------------------------------------------------- layers


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel (statistics in float32)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        mean = xf.mean(1, keepdim=True)
        var = (xf - mean).pow(2).mean(1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x.dtype)


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them (NAFNet's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) float steps -> (B, dim) [sin | cos] features at geometric frequencies 1 .. 1/max_period."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class NAFBlock(nn.Module):
    """A NAFNet block with per-sample scale/shift modulation of both normalised branches."""

    def __init__(self, c: int, cond_dim: int, dw_expand: int = 2, ffn_expand: int = 2, sca_window: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        dw = c * dw_expand
        ffn = c * ffn_expand
        self.norm1 = LayerNorm2d(c)
        self.expand = nn.Conv2d(c, dw, 1)
        self.depthwise = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.gate = SimpleGate()
        self.attention = nn.Conv2d(dw // 2, dw // 2, 1)
        self.project = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.ffn_in = nn.Conv2d(c, ffn, 1)
        self.ffn_out = nn.Conv2d(ffn // 2, c, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 4 * c))
        self.sca_window = sca_window

    def _pool(self, x: Tensor) -> Tensor:
        if self.sca_window == 0:
            return x.mean((2, 3), keepdim=True)
        k = self.sca_window
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        a1, b1, a2, b2 = self.modulation(cond).to(x.dtype)[:, :, None, None].chunk(4, dim=1)
        y = self.norm1(x) * (1 + a1) + b1
        y = self.gate(self.depthwise(self.expand(y)))
        y = y * self.attention(self._pool(y))
        x = x + self.beta * self.drop(self.project(y))
        z = self.norm2(x) * (1 + a2) + b2
        z = self.ffn_out(self.gate(self.ffn_in(z)))
        return x + self.gamma * self.drop(z)


# ------------------------------------------------------------------------------------------- network


class ConditionalNAFNet(nn.Module):
    """``forward(x_t, mu, t) -> noise``: x_t, mu (B, C, H, W), t (B,) integer steps (or an int)."""

    def __init__(self, config: NAFNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else NAFNetConfig()
        self.config = cfg
        td = cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(td, 4 * td), nn.SiLU(), nn.Linear(4 * td, td))

        def blocks(c: int, n: int) -> nn.ModuleList:
            return nn.ModuleList(NAFBlock(c, td, cfg.dw_expand, cfg.ffn_expand, cfg.sca_window, cfg.dropout)
                                 for _ in range(n))

        c = cfg.width
        self.intro = nn.Conv2d(2 * cfg.in_channels, c, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        for n in cfg.enc_blocks:
            self.encoders.append(blocks(c, n))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = blocks(c, cfg.middle_blocks)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in reversed(cfg.dec_blocks):
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(blocks(c, n))
        self.ending = nn.Conv2d(cfg.width, cfg.in_channels, 3, padding=1)

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        m = 2**self.config.levels
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, (h, w)

    def embed_time(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t, device=device).reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"t has {t.numel()} elements for a batch of {batch}")
        return self.time_mlp(sinusoidal_embedding(t, self.config.time_dim))

    def forward(self, x_t: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        if x_t.shape != mu.shape or x_t.ndim != 4 or x_t.shape[1] != self.config.in_channels:
            raise ValueError(f"x_t and mu must both be (B, {self.config.in_channels}, H, W); "
                             f"got {tuple(x_t.shape)} and {tuple(mu.shape)}")
        cond = self.embed_time(t, x_t.shape[0], x_t.device)
        inp, (h, w) = self._pad(torch.cat([x_t - mu, mu], dim=1))
        y = self.intro(inp)
        skips = []
        for blocks, down in zip(self.encoders, self.downs):
            for blk in blocks:
                y = blk(y, cond)
            skips.append(y)
            y = down(y)
        for blk in self.middle:
            y = blk(y, cond)
        for up, blocks, skip in zip(self.ups, self.decoders, reversed(skips)):
            y = up(y) + skip
            for blk in blocks:
                y = blk(y, cond)
        return self.ending(y)[..., :h, :w]


def build_nafnet(config: NAFNetConfig | dict[str, Any] | str | None = None) -> ConditionalNAFNet:
    """A ConditionalNAFNet from a config, its dict form, or a preset name."""
    if config is None:
        config = NAFNetConfig()
    elif isinstance(config, str):
        config = NAFNetConfig.preset(config)
    elif isinstance(config, dict):
        config = NAFNetConfig.from_dict(config)
    return ConditionalNAFNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_macs(config: NAFNetConfig | str, height: int = 256, width: int = 256) -> float:
    """Multiply-accumulates of one network call on one (height, width) tile (convs and linears, by hooks)."""
    model = build_nafnet(config).eval()
    total = [0]

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            total[0] += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        else:
            total[0] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            c = model.config.in_channels
            model(torch.zeros(1, c, height, width), torch.zeros(1, c, height, width), 1)
    finally:
        for hnd in handles:
            hnd.remove()
    return float(total[0])

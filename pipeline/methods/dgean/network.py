"""DGEAN: predict the slices between the middle two of four, at any relative depth d in (0, 1).

Written from the D2R paper (Chen et al., §3.4) in our own words; no public code exists.

Input: a window ``x`` of shape (B, 1, 4, H, W) holding slices at relative positions -1, 0, 1, 2 (spacing r
in the output grid), values in [0, 1].  Output: the slices at the requested depths, (B, D, H, W).

Architecture
    encoder   a 3D ResNet-18-style stem + 4 stages of BasicBlocks ("five feature encoders").  Only Y/X are
              ever strided (stride (1, 2, 2)): the stem halves Y/X, stages 2-4 halve again, so the deepest
              level is at 1/16.  Z keeps its 4 positions everywhere.  Each level is followed by a GEAB.
    GEAB      Gaussian Embedding Attention Block: a random-Fourier embedding of the slice offsets, projected
              by a 1x1x1 conv and added, then a light 3D feature attention (local channel squeeze-excitation
              times a per-voxel spatial gate).
    depth     d -> sinusoidal features -> MLP -> per-level FiLM (scale, shift) on the decoder path.
    decoder   3D transposed convs (stride (1, 2, 2)) + ReLU, with the FiLM-modulated encoder levels
              concatenated (or added) as skips, up to full resolution (B*D, C, 4, H, W); the last transposed
              conv is linear.  Z is flattened into channels and a 7x7 2D conv gives a residual ADDED to Keys
              cubic interpolation of the window at depth d.

Deliberate deviations from the paper (the lead must know these)
    * The encoder does not see d.  The paper feeds the relative-depth encoding into every encoder, which
      forces one full forward pass per depth.  Here d only modulates the decoder (FiLM on the bottleneck,
      on every skip and on the full-resolution head), so a window is encoded once and all r-1 depths are
      decoded in one batch: ``forward`` expands the encoder features B -> B*D internally.  ``encode`` and
      ``decode`` are public so callers can reuse features.
    * Position embedding: Z only, by default.  A Y/X embedding of the pixel position inside the tile makes
      the output depend on where the tile boundaries fall, so blockwise inference would no longer agree with
      whole-slice inference and seams would appear at block edges; embedding absolute volume coordinates
      instead would be tiling-consistent but meaningless (training crops are random, so the net can only
      learn to ignore it).  We therefore embed the four slice offsets (-1, 0, 1, 2) with the paper's fixed
      random Gaussian frequency matrix (a seeded buffer, saved in the state dict).  Because the offsets are
      the same for every window this amounts to a learned per-slice-position feature bias, parameterised as
      the paper does; it is translation-invariant in Y/X.  ``xy_embedding=True`` adds the paper-style
      embedding of *normalised* (y, x) tile coordinates in [-1, 1]: then the result depends on the tile
      size and placement, so use it only with whole-slice inference (or accept seams).
    * The channel squeeze of the feature attention averages over all Z and a local Y/X window
      (``attention_window``), not over the whole tile: a global average would make every pixel depend on
      the tile's content and size, i.e. on the block plan.  With BatchNorm in eval mode every operation is
      then local, and outputs are tiling-consistent given an XY halo covering the receptive field, for tiles
      aligned to multiples of 16 pixels (the strided convs make the net shift-equivariant only for shifts
      that are multiples of 16).
    * Residual learning: the output conv is initialised small (``out_init_scale``) and FiLM / attention /
      embedding projections start at identity, so at initialisation the output is close to cubic
      interpolation and training only has to learn the correction.
    * The raw window (4 slices, minus 0.5) is concatenated to the full-resolution head features before the
      7x7 conv: the decoder's last level comes from 1/2 resolution, so this cheap skip gives the head
      full-res detail.  The head input is kept roughly zero-mean (linear last transposed conv, centred
      window): with all-positive inputs every head weight gets a gradient of the same sign, and Adam's
      first, sign-like steps then shift the whole output's brightness (measured: the loss jumped up on
      step 1 even at the paper's lr 2e-4; with centred inputs it decreases from step 1).

Any H, W works: the window is padded to a multiple of 16 (reflect where possible, else replicate) and the
output cropped back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CONTEXT_OFFSETS, PAD_MULTIPLE, DGEANConfig

# ------------------------------------------------------------------------------- classical baseline


def keys_weights_torch(t: Tensor, a: float = -0.5) -> Tensor:
    """Keys cubic-convolution weights (..., 4) for taps at -1, 0, 1, 2 and fractional positions ``t``.

    The same kernel as ``isovol.pipeline.methods.interp.keys_weights``, vectorised and differentiable, so the
    residual is learned on top of exactly the baseline the project ships.
    """
    s = torch.stack([t + 1, t, 1 - t, 2 - t], dim=-1).abs()
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return torch.where(s <= 1, near, torch.where(s < 2, far, torch.zeros_like(s)))


def depth_grid(depths: Tensor | float | list[float], batch: int, device: torch.device | None = None) -> Tensor:
    """Depths as a (B, D) float tensor: a 1-D tensor is shared by the batch, a 2-D one must be (B, D)."""
    d = torch.as_tensor(depths, dtype=torch.float32, device=device)
    if d.ndim == 0:
        d = d.reshape(1)
    if d.ndim == 1:
        d = d.unsqueeze(0).expand(batch, -1)
    if d.ndim != 2 or d.shape[0] != batch or d.shape[1] < 1:
        raise ValueError(f"depths must be (D,) or (B={batch}, D) with D >= 1, got shape {tuple(d.shape)}")
    if not torch.compiler.is_compiling() and bool(((d < 0) | (d > 1)).any()):
        raise ValueError("depths must lie in [0, 1] (between the middle two slices of the window)")
    return d


def cubic_at_depths(x: Tensor, depths: Tensor | float | list[float]) -> Tensor:
    """Keys cubic interpolation of window ``x`` (B, 1, 4, H, W) at depths -> (B, D, H, W).

    Always in ``x``'s own precision, outside any autocast: the base the residual is added to must be the shipped
    cubic, and bf16 (8 bits of mantissa) would move it by up to one grey level of uint8 data near white.
    """
    with torch.autocast(x.device.type, enabled=False):
        d = depth_grid(depths, x.shape[0], x.device).to(x.dtype)
        w = keys_weights_torch(d)  # (B, D, 4)
        return torch.einsum("bdk,bkhw->bdhw", w, x[:, 0])


# ------------------------------------------------------------------------------------------- blocks


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm3d(channels) if kind == "batch" else nn.Identity()


class BasicBlock3d(nn.Module):
    """ResNet BasicBlock with 3x3x3 convs; strides only Y/X."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        s = (1, stride, stride)
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=s, padding=1, bias=bias)
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, cout)
        # residual branch starts at zero so a deep stack starts as (near) identity
        if isinstance(self.norm2, nn.BatchNorm3d):
            nn.init.zeros_(self.norm2.weight)
        else:
            nn.init.zeros_(self.conv2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=s, bias=bias), _norm(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class GEAB(nn.Module):
    """Gaussian Embedding Attention Block: add the Fourier position embedding, then gate the features.

    The gates are ``2*sigmoid`` with zero-initialised last layers, so the block is the identity at init and
    can both amplify and suppress features.  Everything is local (see the module docstring on tiling).
    """

    def __init__(self, channels: int, embed_dim: int, xy: bool, reduction: int, window: int):
        super().__init__()
        self.z_proj = nn.Conv3d(embed_dim, channels, 1)
        self.xy_proj = nn.Conv3d(embed_dim, channels, 1) if xy else None
        hidden = max(channels // reduction, 4)
        self.squeeze = nn.Sequential(
            nn.Conv3d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv3d(hidden, channels, 1)
        )
        self.spatial = nn.Conv3d(channels, 1, 1)
        self.window = window
        zero = [self.z_proj, self.squeeze[2], self.spatial] + ([self.xy_proj] if self.xy_proj is not None else [])
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, h: Tensor, z_embed: Tensor, xy_embed: Tensor | None) -> Tensor:
        h = h + self.z_proj(z_embed)  # (1, E, Z, 1, 1) broadcast over batch and Y/X
        if self.xy_proj is not None and xy_embed is not None:
            h = h + self.xy_proj(xy_embed)  # (1, E, 1, H, W)
        k = self.window
        pooled = F.avg_pool2d(h.mean(dim=2), k, stride=1, padding=k // 2, count_include_pad=False).unsqueeze(2)
        gate = 4.0 * torch.sigmoid(self.squeeze(pooled)) * torch.sigmoid(self.spatial(h))
        return h * gate


class DepthEncoding(nn.Module):
    """Relative depth d -> sinusoids (pi * 2**k) -> MLP embedding."""

    def __init__(self, frequencies: int, dim: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32))
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * frequencies, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, d: Tensor) -> Tensor:
        a = d.unsqueeze(-1) * self.freqs
        return self.mlp(torch.cat([d.unsqueeze(-1), torch.sin(a), torch.cos(a)], dim=-1))


class FiLM(nn.Module):
    """Depth-conditioned scale and shift; expands (B, C, ...) features to (B*D, C, ...)."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, feat: Tensor, emb: Tensor, expanded: bool = False) -> Tensor:
        """``feat`` is (B, C, *S), or (B*D, C, *S) when ``expanded``; ``emb`` is (B, D, E)."""
        b, d = emb.shape[:2]
        gamma, beta = self.proj(emb).chunk(2, dim=-1)
        extra = (1,) * (feat.ndim - 2)
        gamma = gamma.reshape(b, d, -1, *extra)
        beta = beta.reshape(b, d, -1, *extra)
        f = feat.reshape(b, d, *feat.shape[1:]) if expanded else feat.unsqueeze(1)
        return (f * (1 + gamma) + beta).flatten(0, 1)


def _up(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """Transposed 3D conv doubling Y/X, Z unchanged, + ReLU."""
    conv = nn.ConvTranspose3d(cin, cout, (3, 4, 4), stride=(1, 2, 2), padding=1)
    return nn.Sequential(conv, nn.ReLU(inplace=True)) if relu else nn.Sequential(conv)


# -------------------------------------------------------------------------------------------- model


class DGEAN(nn.Module):
    """Deconvolution Gaussian Embedding Attention Network (see the module docstring)."""

    def __init__(self, config: DGEANConfig | None = None):
        super().__init__()
        self.config = cfg = config or DGEANConfig()
        w, n = cfg.widths, len(CONTEXT_OFFSETS)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            g = torch.Generator().manual_seed(cfg.seed)
            # fixed random Gaussian frequency matrices (persistent buffers: part of the model's identity)
            self.register_buffer("z_frequencies", torch.randn(cfg.fourier_features, 1, generator=g) * cfg.fourier_sigma)
            self.register_buffer("z_offsets", torch.tensor(CONTEXT_OFFSETS))
            if cfg.xy_embedding:
                self.register_buffer(
                    "xy_frequencies", torch.randn(cfg.fourier_features, 2, generator=g) * cfg.fourier_sigma
                )
            embed = 2 * cfg.fourier_features

            self.stem = nn.Sequential(
                nn.Conv3d(1, w[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=cfg.norm == "none"),
                _norm(cfg.norm, w[0]),
                nn.ReLU(inplace=True),
            )
            stages = []
            for i in range(4):
                cin, cout, stride = w[i], w[i + 1], 1 if i == 0 else 2
                blocks = [BasicBlock3d(cin if j == 0 else cout, cout, stride if j == 0 else 1, cfg.norm)
                          for j in range(cfg.blocks[i])]
                stages.append(nn.Sequential(*blocks))
            self.stages = nn.ModuleList(stages)
            self.geabs = nn.ModuleList(
                GEAB(c, embed, cfg.xy_embedding, cfg.attention_reduction, cfg.attention_window) for c in w
            )

            self.depth = DepthEncoding(cfg.depth_frequencies, cfg.depth_dim)
            self.films = nn.ModuleList(FiLM(cfg.depth_dim, c) for c in w)
            k = 2 if cfg.skip_join == "concat" else 1
            self.up3 = _up(w[4], w[3])
            self.up2 = _up(k * w[3], w[2])
            self.up1 = _up(k * w[2], w[1])
            # last level linear: zero-mean-ish head input keeps Adam's first steps on the head from acting as
            # one coherent brightness shift (all-positive ReLU inputs make every weight's gradient agree)
            self.up0 = _up(k * w[1] + (w[0] if k == 2 else 0), cfg.head_width, relu=False)
            self.film_head = FiLM(cfg.depth_dim, cfg.head_width)
            self.head = nn.Conv2d(cfg.head_width * n + n, 1, 7, padding=3)
            with torch.no_grad():
                self.head.weight.mul_(cfg.out_init_scale)
                self.head.bias.zero_()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check(x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] != len(CONTEXT_OFFSETS):
            raise ValueError(f"expected a window of shape (B, 1, 4, H, W), got {tuple(x.shape)}")

    @staticmethod
    def _pad(x: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
        """Pad Y/X of (B, C, Z, H, W) to a multiple of 16, centred; returns the pads (left, right, top, bottom)."""
        h, w = x.shape[-2:]
        ph, pw = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph == 0 and pw == 0:
            return x, pads
        mode = "reflect" if max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h else "replicate"
        flat = x.flatten(1, 2)
        return F.pad(flat, pads, mode=mode).reshape(*x.shape[:3], h + ph, w + pw), pads

    def _join(self, y: Tensor, *skips: Tensor) -> Tensor:
        if self.config.skip_join == "concat":
            return torch.cat([y, *skips], dim=1)
        for s in skips:
            y = y + s
        return y

    def _z_embed(self, dtype: torch.dtype) -> Tensor:
        a = 2 * math.pi * self.z_offsets[:, None] * self.z_frequencies[:, 0][None, :]  # (Z, F)
        e = torch.cat([torch.sin(a), torch.cos(a)], dim=1).t()  # (2F, Z)
        return e.reshape(1, -1, len(CONTEXT_OFFSETS), 1, 1).to(dtype)

    def _xy_embed(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        if not self.config.xy_embedding:
            return None
        ys = torch.linspace(-1, 1, h, device=device)
        xs = torch.linspace(-1, 1, w, device=device)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (h, w, 2)
        a = 2 * math.pi * grid @ self.xy_frequencies.t()  # (h, w, F)
        e = torch.cat([torch.sin(a), torch.cos(a)], dim=-1).permute(2, 0, 1)
        return e.reshape(1, -1, 1, h, w).to(dtype)

    # ------------------------------------------------------------------ public API

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features of the five levels for window ``x`` (B, 1, 4, H, W); independent of depth."""
        self._check(x)
        xp, _ = self._pad(x)
        z_embed = self._z_embed(xp.dtype)
        feats = []
        h = self.stem(xp)
        for level in range(5):
            if level > 0:
                h = self.stages[level - 1](h)
            xy = self._xy_embed(h.shape[-2], h.shape[-1], h.dtype, h.device)
            h = self.geabs[level](h, z_embed, xy)
            feats.append(h)
        return feats

    def decode(self, features: list[Tensor], x: Tensor, depths: Tensor | float | list[float]) -> Tensor:
        """Slices at ``depths`` ((D,) shared or (B, D)) from ``encode(x)`` features -> (B, D, H, W)."""
        self._check(x)
        b, _, n, h, w = x.shape
        d = depth_grid(depths, b, x.device)
        nd = d.shape[1]
        emb = self.depth(d).to(features[0].dtype)  # (B, D, E)
        skips = [film(f, emb) for film, f in zip(self.films, features)]  # each (B*D, C_l, Z, h_l, w_l)
        y = self.up3(skips[4])
        for level, up in ((3, self.up2), (2, self.up1)):
            y = up(self._join(y, skips[level]))
        y = self.up0(self._join(y, skips[1], skips[0]))
        y = self.film_head(y, emb, expanded=True)  # (B*D, C, Z, Hp, Wp)
        xp, (left, _, top, _) = self._pad(x)
        window = xp[:, 0].unsqueeze(1).expand(b, nd, n, *xp.shape[-2:]).flatten(0, 1)  # (B*D, Z, Hp, Wp)
        y = torch.cat([y.flatten(1, 2), window.to(y.dtype) - 0.5], dim=1)  # centred, as above
        residual = self.head(y)[:, 0, top : top + h, left : left + w].reshape(b, nd, h, w)
        return cubic_at_depths(x, d) + residual.to(x.dtype)

    def forward(self, x: Tensor, depths: Tensor | float | list[float]) -> Tensor:
        """Encode the window once, decode all depths in one batch -> (B, D, H, W)."""
        return self.decode(self.encode(x), x, depths)


def build_dgean(config: DGEANConfig | dict[str, Any] | str | None = None) -> DGEAN:
    """A DGEAN from a config, its dict form, or a preset name."""
    if config is None:
        config = DGEANConfig()
    elif isinstance(config, str):
        config = DGEANConfig.preset(config)
    elif isinstance(config, dict):
        config = DGEANConfig.from_dict(config)
    return DGEAN(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_macs(config: DGEANConfig | str, n_depths: int, height: int = 32, width: int = 32) -> dict[str, float]:
    """Multiply-accumulates of the convolutions and linear layers, by hooks on a real forward pass.

    All layers are fully convolutional, so for tiles that are multiples of 16 the count scales exactly with
    H*W; ``per_output_voxel`` is therefore tile-size independent.  Returns MACs of the encoder per window,
    of the decoder per depth, and per output voxel when ``n_depths`` depths share one encoding.
    """
    model = build_dgean(config).eval()
    counts = {"n": 0}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if isinstance(mod, nn.ConvTranspose3d):
            k = math.prod(mod.kernel_size)
            counts["n"] += inp[0].numel() * mod.out_channels * k // mod.groups
        elif isinstance(mod, (nn.Conv2d, nn.Conv3d)):
            counts["n"] += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Linear):
            counts["n"] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d, nn.Linear))]
    try:
        with torch.no_grad():
            x = torch.zeros(1, 1, len(CONTEXT_OFFSETS), height, width)
            feats = model.encode(x)
            enc = counts["n"]
            model.decode(feats, x, torch.full((n_depths,), 0.5))
            dec = (counts["n"] - enc) / n_depths
    finally:
        for hnd in handles:
            hnd.remove()
    pixels = height * width
    return {
        "encoder_per_window_pixel": enc / pixels,
        "decoder_per_depth_pixel": dec / pixels,
        "per_output_voxel": (enc + n_depths * dec) / (n_depths * pixels),
        "per_output_voxel_one_depth_per_pass": (enc + dec) / pixels,
    }

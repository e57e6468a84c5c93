"""What shapes a DGEAN: its configuration, the named presets and the fixed geometry of its input window.

Kept apart from the modules (``network.py``) so recipes and trainers can read and check a configuration
without building a network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Relative positions of the four input slices; the predicted depths lie between offsets 0 and 1.
CONTEXT_OFFSETS = (-1.0, 0.0, 1.0, 2.0)
#: Y/X are halved four times, so the padded tile must be a multiple of this.
PAD_MULTIPLE = 16




@dataclass
class DGEANConfig:
    """Everything that shapes a DGEAN; JSON-serialisable via ``to_dict`` / ``from_dict``."""

    #: channels of the stem and of the 4 residual stages (ResNet-18: 64, 64, 128, 256, 512)
    widths: tuple[int, int, int, int, int] = (64, 64, 128, 256, 512)
    #: BasicBlocks per stage (ResNet-18: 2, 2, 2, 2)
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    #: channels of the full-resolution decoder level, per Z position, before the 7x7 head
    head_width: int = 32
    #: random Fourier features (sin and cos each) of the position embedding
    fourier_features: int = 16
    #: standard deviation of the random Gaussian frequency matrix
    fourier_sigma: float = 1.0
    #: also embed normalised (y, x) tile coordinates (paper-like, but breaks tiling consistency)
    xy_embedding: bool = False
    #: sinusoid frequencies of the relative-depth encoding (pi * 2**k, k < depth_frequencies)
    depth_frequencies: int = 6
    #: width of the depth-embedding MLP
    depth_dim: int = 64
    #: channel reduction of the squeeze-excitation
    attention_reduction: int = 4
    #: Y/X window (odd) of the local channel squeeze
    attention_window: int = 7
    #: "batch" (ResNet default; local at inference) or "none"
    norm: str = "batch"
    #: how skips join the decoder: "concat" (richer) or "add" (about half the decoder compute; the stem and
    #: first stage must then have equal widths)
    skip_join: str = "concat"
    #: scale of the output conv's initial weights (0: output is exactly cubic interpolation at init)
    out_init_scale: float = 1e-2
    #: seeds the Gaussian frequency matrices and the weight initialisation
    seed: int = 0

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]
        self.blocks = tuple(int(b) for b in self.blocks)  # type: ignore[assignment]
        if len(self.widths) != 5 or min(self.widths) < 1:
            raise ValueError(f"widths must be 5 positive channel counts (stem + 4 stages), got {self.widths}")
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be 4 positive counts (one per stage), got {self.blocks}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {self.norm!r}")
        if self.skip_join not in ("concat", "add"):
            raise ValueError(f"skip_join must be 'concat' or 'add', got {self.skip_join!r}")
        if self.skip_join == "add" and self.widths[0] != self.widths[1]:
            raise ValueError("skip_join='add' needs widths[0] == widths[1] (stem and first stage are summed)")
        if self.attention_window < 1 or self.attention_window % 2 == 0:
            raise ValueError(f"attention_window must be odd and positive, got {self.attention_window}")
        for name in ("head_width", "fourier_features", "depth_frequencies", "depth_dim", "attention_reduction"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DGEANConfig:
        """Inverse of ``to_dict``; unknown keys are refused so a typo cannot silently change a model."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DGEAN config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DGEANConfig:
        """A named preset (see ``PRESETS``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown DGEAN preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


#: ``tiny`` is for tests (fast on CPU), ``small`` a half-width ResNet-18, ``default`` the paper's class
#: (ResNet-18 widths).  Measured (``count_parameters`` / ``estimate_macs``, r = 8, 7 depths per encoding;
#: H100, bf16 autocast, torch 2.11, concat skips):
#:   tiny     0.14 M params,   12 kMAC per new voxel
#:   small   11.1 M params,  258 kMAC per new voxel; train 30 ms/step (8 windows 128^2, 7 depths), infer 85 Mvox/s
#:   default 44.0 M params, 1025 kMAC per new voxel; train 47 ms/step, infer 51 Mvox/s (256^2 tiles)
#: One depth per forward pass, as in the paper, would cost 2415 kMAC per voxel for ``default``.  ``small`` is
#: overhead-bound on an H100 (4x fewer MACs, only 1.5x faster), so ``default`` is the default.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(widths=(8, 8, 16, 16, 32), blocks=(1, 1, 1, 1), head_width=4, fourier_features=4, depth_dim=16,
                 depth_frequencies=4),
    "small": dict(widths=(32, 32, 64, 128, 256), head_width=16),
    "default": dict(),
}

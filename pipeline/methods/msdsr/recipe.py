"""MSDSR's recipe: the denoiser (a preset name of ``network.PRESETS`` or its fields), the training settings
(``trainer.MSDSRTrainConfig``: patch, parameterisation, row masks, ...) and the sampling defaults the published
model carries into ``isovol upsample`` (DDIM steps, eta, samples averaged; ``--option`` overrides them).  The
presets are in ``recipes.yaml`` beside this file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import InputError
from ..recipes import check_keys, settings_from_dict
from .network import PRESETS, DenoiserConfig
from .trainer import MSDSRTrainConfig


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 20  # DDIM steps (the paper: 200)
    eta: float = 0.0  # 0: deterministic DDIM from the seeded start; 1: DDPM-like
    samples: int = 1  # samples averaged per tile (K > 1: an estimate of the posterior mean, K times the cost)

    def __post_init__(self) -> None:
        check_sampling(self.steps, self.eta, self.samples)


def check_sampling(steps: Any, eta: Any, samples: Any) -> None:
    """ValueError naming the bad setting."""
    for name, value in (("steps", steps), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if steps > 1000:
        raise ValueError(f"steps must be at most 1000 (the schedule's length), got {steps}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")


@dataclass(frozen=True)
class MSDSRRecipe:
    model: DenoiserConfig
    train: MSDSRTrainConfig
    sampling: SamplingConfig

    def to_dict(self) -> dict[str, Any]:
        """Normalised (presets expanded): what identifies a training and goes into its hash."""
        return {"model": self.model.to_dict(), "train": asdict(self.train), "sampling": asdict(self.sampling)}


def denoiser_config(spec: Any, where: str) -> DenoiserConfig:
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise InputError(f"{where}: unknown denoiser preset {spec!r}; choose one of {', '.join(PRESETS)}")
        return DenoiserConfig.preset(spec)
    if spec is None or isinstance(spec, dict):
        return settings_from_dict(DenoiserConfig, spec, where)
    raise InputError(f"{where} must be a preset name ({', '.join(PRESETS)}) or a mapping of denoiser fields, "
                     f"got {spec!r}")


def parse(spec: dict[str, Any], where: str) -> MSDSRRecipe:
    spec = check_keys(spec, ("model", "train", "sampling"), where)
    model = denoiser_config(spec.get("model", "small"), f"{where}: model")
    train = settings_from_dict(MSDSRTrainConfig, spec.get("train"), f"{where}: train")
    sampling = settings_from_dict(SamplingConfig, spec.get("sampling"), f"{where}: sampling")
    return MSDSRRecipe(model, train, sampling)

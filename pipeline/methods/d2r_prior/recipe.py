"""The recipes of the D2R lateral prior: its training (a NAFNet, IR-SDE settings, training settings) and the
settings of the recovery that samples it (D2R's Stage II).  Presets in ``recipes.yaml`` beside this file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import InputError
from ..recipes import check_keys, settings_from_dict
from .trainer import PriorTrainConfig, check_sde, nafnet_config

SAMPLERS = ("reference", "posterior", "fast")
FUSIONS = ("mean", "geometric")


@dataclass(frozen=True)
class PriorRecipe:
    model: Any  # NAFNetConfig
    sde: dict[str, Any]
    train: PriorTrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "sde": self.sde, "train": asdict(self.train)}


def parse(spec: dict[str, Any], where: str) -> PriorRecipe:
    spec = check_keys(spec, ("model", "sde", "train"), where)
    try:
        model = nafnet_config(spec.get("model", "default"))
        sde = check_sde(spec.get("sde"))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return PriorRecipe(model, sde, settings_from_dict(PriorTrainConfig, spec.get("train"), f"{where}: train"))


@dataclass(frozen=True)
class RecoverSettings:
    """Stage II: how the prior restores each block's XZ / YZ slices (options of ``method.PriorRecovery``)."""

    sampler: str = "fast"
    steps: int | None = None  # network calls of the fast sampler [default: 5]
    t_start: int | None = None  # truncated start [default: T, fast: T / 2; at most the prior's t_max]
    seed: int = 0
    tile: int = 128
    margin: int = 16
    fusion: str = "mean"

    def __post_init__(self) -> None:
        for key in ("seed", "tile", "margin", "steps", "t_start"):
            value = getattr(self, key)
            if (value is not None or key in ("seed", "tile", "margin")) and (
                    isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{key} must be an integer, got {value!r}")
        if self.sampler not in SAMPLERS or self.fusion not in FUSIONS:
            raise ValueError(f"sampler must be {'|'.join(SAMPLERS)} and fusion {'|'.join(FUSIONS)}, "
                             f"got {self.sampler!r}, {self.fusion!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def start(self, T: int) -> int:
        """The step the sampler starts at for an SDE of ``T`` steps."""
        return self.t_start or (T // 2 if self.sampler == "fast" else T)


def parse_recover(spec: Any, where: str) -> RecoverSettings:
    return settings_from_dict(RecoverSettings, spec, where)

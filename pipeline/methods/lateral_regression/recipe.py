"""The lateral regression's recipe: a U-Net (a preset name of ``network.PRESETS`` or its fields) and training
settings (``trainer.RegressionTrainConfig``, with the base interpolation and the degradation).  The presets are
in ``recipes.yaml`` beside this file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import InputError
from ..recipes import check_keys, settings_from_dict
from .network import PRESETS, UNetConfig
from .trainer import RegressionTrainConfig


@dataclass(frozen=True)
class RegressionRecipe:
    model: UNetConfig
    train: RegressionTrainConfig

    def to_dict(self) -> dict[str, Any]:
        """Normalised (presets expanded): what identifies a training and goes into its hash."""
        return {"model": self.model.to_dict(), "train": asdict(self.train)}


def unet_config(spec: Any, where: str) -> UNetConfig:
    """A UNetConfig from a preset name or a mapping of its fields; anything else refused in one line."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise InputError(f"{where}: unknown U-Net preset {spec!r}; choose one of {', '.join(PRESETS)}")
        return UNetConfig.preset(spec)
    if spec is None or isinstance(spec, dict):
        return settings_from_dict(UNetConfig, spec, where)
    raise InputError(f"{where} must be a preset name ({', '.join(PRESETS)}) or a mapping of U-Net fields, "
                     f"got {spec!r}")


def parse(spec: dict[str, Any], where: str) -> RegressionRecipe:
    spec = check_keys(spec, ("model", "train"), where)
    model = unet_config(spec.get("model", "default"), f"{where}: model")
    return RegressionRecipe(model, settings_from_dict(RegressionTrainConfig, spec.get("train"), f"{where}: train"))

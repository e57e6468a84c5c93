"""The DGEAN recipe: a network (a preset name of ``network.PRESETS`` or its fields) and training settings.  The
presets are in ``recipes.yaml`` beside this file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import InputError
from ..recipes import check_keys, settings_from_dict
from .config import DGEANConfig
from .trainer import TrainConfig


@dataclass(frozen=True)
class DGEANRecipe:
    model: DGEANConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """Normalised (presets expanded): what identifies a training and goes into its hash."""
        return {"model": self.model.to_dict(), "train": asdict(self.train)}


def parse(spec: dict[str, Any], where: str) -> DGEANRecipe:
    spec = check_keys(spec, ("model", "train"), where)
    model = spec.get("model", "default")
    try:
        config = DGEANConfig.preset(model) if isinstance(model, str) else DGEANConfig.from_dict(model)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: model: {exc}") from None
    return DGEANRecipe(config, settings_from_dict(TrainConfig, spec.get("train"), f"{where}: train"))

"""Neural networks of isovol. They map tensors to tensors and know nothing about volumes, blocks or dask."""

from .dgean import DGEAN, PRESETS, DGEANConfig, build_dgean, cubic_at_depths, keys_weights_torch

__all__ = ["DGEAN", "PRESETS", "DGEANConfig", "build_dgean", "cubic_at_depths", "keys_weights_torch"]

"""Neural networks of isovol. They map tensors to tensors and know nothing about volumes, blocks or dask."""

from .dgean import DGEAN, PRESETS, DGEANConfig, build_dgean, cubic_at_depths, keys_weights_torch
from .irsde import IRSDE
from .nafnet import PRESETS as NAFNET_PRESETS
from .nafnet import ConditionalNAFNet, NAFNetConfig, build_nafnet

__all__ = ["DGEAN", "PRESETS", "DGEANConfig", "build_dgean", "cubic_at_depths", "keys_weights_torch",
           "IRSDE", "ConditionalNAFNet", "NAFNetConfig", "NAFNET_PRESETS", "build_nafnet"]

"""Degradations used to build evaluation inputs from isotropic volumes."""

from __future__ import annotations

import numpy as np

from .geometry import output_length


def decimate_z(volume: np.ndarray, factor: int) -> tuple[np.ndarray, int]:
    """Keep slices 0, r, 2r, ... (the evaluation protocol); returns them and the covered length (n-1)r+1."""
    low = volume[::factor]
    return low, output_length(low.shape[0], factor)

"""The bundled real FIB-SEM crop (FlyEM medulla, CC-BY, see data/README.md)."""

from __future__ import annotations

from importlib.resources import files

import numpy as np

CROP = "flyem_medulla_sample1_crop.npz"
ATTRIBUTION = "FIB-SEM: HHMI Janelia Research Campus, FlyEM project (NeuroProof examples), CC-BY"


def load_crop() -> tuple[np.ndarray, tuple[float, float, float]]:
    """The isotropic crop (z, y, x) uint8 and its voxel size in nm."""
    with files("isovol.workflows").joinpath("data", CROP).open("rb") as f:
        npz = np.load(f, allow_pickle=False)
        return np.ascontiguousarray(npz["volume"]), tuple(float(v) for v in npz["voxel_size_nm"])

"""SliceFID: the Fréchet Inception distance between ground-truth and reconstructed slices, per plane.

Definition used by ``isovol evaluate --inception FILE``.  For each plane the slices are those of
:func:`isovol.pipeline.metrics.plane_scores` (XY: the synthesised slices only, z % r != 0; XZ: every y; YZ:
every x), taken from the ground truth and from the reconstruction at the same positions.  Each slice is scaled
to [0, 1] by the dtype's data range, replicated to three channels and passed through the FID Inception
(:mod:`isovol.pipeline.models.inception`: bilinear resize to 299x299, [-1, 1], 2048 pool features).  The
distance between the two feature sets, modelled as Gaussians N(mu1, S1) and N(mu2, S2), is

    FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2).

``mean`` is the mean of the three planes (as MSDSR reports SliceFID).  Lower is better; 0 for identical sets.

**Few slices.**  With n slices the sample covariance (ddof 1) has rank at most n - 1, far below 2048 for the
crops one evaluates on (a 512^3 volume gives at most 511 XY and 512 XZ / YZ slices).  S1 S2 is then singular:
a general matrix square root of it is ill-conditioned (scipy's ``sqrtm`` returns complex noise on the null
space and, at 2048^2, takes a minute on a small CPU).  The trace needs no square root of S1 S2 itself: its
non-zero eigenvalues are those of M M^T / ((n1 - 1)(n2 - 1)) with M = A B^T, A and B the centred feature
matrices, so

    tr sqrt(S1 S2) = ||A B^T||_* / sqrt((n1 - 1)(n2 - 1))   (the sum of the singular values of A B^T),

exact, real, and an n1 x n2 SVD.  That form is used whenever a set has no more slices than features.  With
more slices than features the covariances can be full rank and the usual route is taken:
``scipy.linalg.sqrtm(S1 @ S2)``; imaginary parts below 1e-3 of the largest real entry are round-off and
dropped.  A result that is not finite, clearly complex, or whose square misses S1 S2 by more than 1e-6
(relative) is retried with 1e-6 * I added to both covariances (as pytorch-fid does); if that fails too, the
exact SVD form decides.  A result below zero by round-off is reported as 0.

A rank-deficient FID is still a distance between the two sample sets, but its value depends on n: compare
methods on the same volume (same slice counts, recorded in metrics.json), never with FIDs of other papers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .metrics import data_range

PLANES = ("XY", "XZ", "YZ")
BATCH = 32
IMAG_TOLERANCE = 1e-3
RESIDUAL_TOLERANCE = 1e-6
OFFSET = 1e-6


# -- the Fréchet distance ---------------------------------------------------------------------------------------

def _sqrtm_trace(s1: np.ndarray, s2: np.ndarray) -> float | None:
    """tr sqrt(S1 S2) by ``scipy.linalg.sqrtm``, or None when the square root is not trustworthy."""
    from scipy import linalg

    for offset in (0.0, OFFSET):
        eye = offset * np.eye(s1.shape[0])
        product = (s1 + eye) @ (s2 + eye)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular input: judged by the checks below
            root = linalg.sqrtm(product)
        if not np.all(np.isfinite(root)):
            continue
        if np.iscomplexobj(root):
            if np.abs(root.imag).max() > IMAG_TOLERANCE * max(np.abs(root.real).max(), 1e-12):
                continue
            root = root.real
        scale = max(np.linalg.norm(product), 1e-300)
        if np.linalg.norm(root @ root - product) > RESIDUAL_TOLERANCE * scale:
            continue  # not a square root to working accuracy
        return float(np.trace(root))
    return None


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) from means and covariances (sqrtm route)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not fit: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    cross = _sqrtm_trace(s1, s2)
    if cross is None:
        raise ArithmeticError("the matrix square root of sigma1 @ sigma2 is not finite or not real, even with an "
                              f"offset of {OFFSET:g} on the diagonals")
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross), 0.0)


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance of two feature sets (n1, d) and (n2, d), each with at least 2 rows (module docstring)."""
    a, b = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature sets (n1, d) and (n2, d), got {a.shape} and {b.shape}")
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"a covariance needs at least 2 samples per set, got {n1} and {n2}")
    mu1, mu2 = a.mean(0), b.mean(0)
    a, b = a - mu1, b - mu2
    tr1, tr2 = float((a * a).sum()) / (n1 - 1), float((b * b).sum()) / (n2 - 1)
    cross = None
    if min(n1, n2) > d:  # covariances may be full rank: the usual square root
        cross = _sqrtm_trace(a.T @ a / (n1 - 1), b.T @ b / (n2 - 1))
    if cross is None:  # exact whatever the rank: nuclear norm of A B^T
        cross = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return max(float(diff @ diff) + tr1 + tr2 - 2.0 * cross, 0.0)


# -- slices and features -----------------------------------------------------------------------------------------

def plane_stacks(volume: np.ndarray, factor: int) -> dict[str, np.ndarray]:
    """The slices each plane is scored on, as (n, h, w) views: the same choice as ``plane_scores``."""
    synth = [z for z in range(volume.shape[0]) if z % factor]
    return {"XY": volume[synth], "XZ": volume.transpose(1, 0, 2), "YZ": volume.transpose(2, 0, 1)}


def _batches(stack: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, stack.shape[0], size):
        yield stack[i:i + size]


def slice_features(model: Any, stack: np.ndarray, drange: float, device: Any = "cpu",
                   batch: int = BATCH) -> np.ndarray:
    """Inception features (n, 2048) of grey slices (n, h, w), scaled to [0, 1] by ``drange``, in batches."""
    import torch

    out = []
    with torch.inference_mode():
        for chunk in _batches(stack, batch):
            x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(device)
            x = (x / drange).clamp_(0.0, 1.0).unsqueeze(1)
            out.append(model(x).double().cpu().numpy())
    return np.concatenate(out, 0) if out else np.zeros((0, 2048))


class SliceFID:
    """SliceFID of reconstructions against one ground truth; the ground truth's features are computed once."""

    def __init__(self, model: Any, truth: np.ndarray, factor: int, device: Any = "cpu", batch: int = BATCH,
                 log: Callable[[str], None] | None = None) -> None:
        self.model, self.factor, self.device, self.batch = model, factor, device, batch
        self.drange = data_range(truth.dtype)
        self.log = log or (lambda msg: None)
        self.truth = {p: self._features(s) for p, s in plane_stacks(truth, factor).items()}
        self.log(f"SliceFID: ground-truth features of {self.counts()} slices (XY, XZ, YZ)")

    def _features(self, stack: np.ndarray) -> np.ndarray:
        return slice_features(self.model, stack, self.drange, self.device, self.batch)

    def counts(self) -> str:
        return ", ".join(str(len(f)) for f in self.truth.values())

    def score(self, volume: np.ndarray) -> dict[str, Any]:
        """{"XY", "XZ", "YZ": FID or None (a plane with < 2 slices), "mean", "slices": {plane: n},
        "feature_dim": 2048, "rank_deficient": whether a plane had no more slices than features}."""
        row: dict[str, Any] = {}
        dims = next(iter(self.truth.values())).shape[1]
        for plane, stack in plane_stacks(volume, self.factor).items():
            ref = self.truth[plane]
            row[plane] = frechet_distance_features(ref, self._features(stack)) if len(ref) >= 2 else None
        scored = [row[p] for p in PLANES if row[p] is not None]
        row["mean"] = float(np.mean(scored)) if scored else None
        row["slices"] = {p: int(len(self.truth[p])) for p in PLANES}
        row["feature_dim"] = int(dims)
        row["rank_deficient"] = any(n <= dims for n in row["slices"].values())
        return row

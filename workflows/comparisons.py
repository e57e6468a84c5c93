"""What each method of ``isovol evaluate`` is judged against: cubic (kept for continuity), the best classical method
per measure (linear often beats cubic on EM, so "over cubic" flatters learned methods), and the learned baseline a
lab would run instead (lateral-regression, isotropic CARE's idea) when it was scored."""

from __future__ import annotations

from typing import Any

from ..pipeline.methods import Kind, registry
from ..pipeline.methods.registry import LEARNED_BASELINE, REFERENCE

PLANES = ("XY", "XZ", "YZ")


def _measures(row: dict[str, Any]) -> dict[str, float]:
    """The measures compared, each oriented so that larger is better (FSC is a resolution: smaller is better)."""
    out = {f"psnr_{p}": row[p]["psnr"] for p in PLANES}
    out.update({f"ssim_{p}": row[p]["ssim"] for p in PLANES})
    out["fsc05_nm"] = -row["fsc05_nm"]
    return out


def _delta(row: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """row - ref per measure (PSNR in dB, SSIM), and for FSC-0.5 the nm difference, negative when finer."""
    return {k: (v - ref[k]) if k != "fsc05_nm" else ref[k] - v for k, v in row.items()}


def compare(metrics: dict[str, dict[str, Any]], names: dict[str, str]) -> dict[str, Any]:
    """Add ``gain_over_cubic_db``, ``vs_best_classical`` and (when a lateral-regression row exists)
    ``vs_lateral_regression`` to every row of ``metrics`` (``names``: row key -> registry method); returns
    {"best_classical": {measure: key}, "lateral_regression": key or None, "classical": [keys]}."""
    ref = metrics[REFERENCE]
    classical = [k for k in metrics if registry.get(names[k]).kind is Kind.CLASSICAL]
    measured = {k: _measures(r) for k, r in metrics.items()}
    best_key = {m: max(classical, key=lambda k: measured[k][m]) for m in measured[REFERENCE]}
    best = {m: measured[k][m] for m, k in best_key.items()}
    baseline = next((k for k in metrics if names[k] == LEARNED_BASELINE), None)
    for k, row in metrics.items():
        row["gain_over_cubic_db"] = {p: row[p]["psnr"] - ref[p]["psnr"] for p in PLANES}
        row["vs_best_classical"] = _delta(measured[k], best)
        if baseline is not None:
            row["vs_lateral_regression"] = _delta(measured[k], measured[baseline])
    return {"best_classical": best_key, "lateral_regression": baseline, "classical": classical}

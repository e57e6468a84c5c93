"""What evaluate judges each method against, on rows with known values: the best classical method per measure
(not cubic alone) and the learned baseline when it was scored."""

from __future__ import annotations

import pytest

from isovol.workflows.comparisons import compare


def _row(psnr: float, ssim: float, fsc: float) -> dict:
    return {**{p: {"psnr": psnr, "ssim": ssim} for p in ("XY", "XZ", "YZ")}, "fsc05_nm": fsc}


def test_gains_are_over_the_best_classical_method_per_measure():
    metrics = {"cubic": _row(24.0, 0.60, 80.0), "linear": _row(24.5, 0.58, 82.0), "d2r": _row(25.0, 0.65, 70.0)}
    judged = compare(metrics, {"cubic": "cubic", "linear": "linear", "d2r": "d2r"})
    assert judged["best_classical"]["psnr_XY"] == "linear" and judged["best_classical"]["ssim_XY"] == "cubic"
    assert judged["best_classical"]["fsc05_nm"] == "cubic" and judged["lateral_regression"] is None
    d2r = metrics["d2r"]
    assert d2r["vs_best_classical"]["psnr_XY"] == pytest.approx(0.5)  # over linear, not the 1.0 over cubic
    assert d2r["gain_over_cubic_db"]["XY"] == pytest.approx(1.0)
    assert d2r["vs_best_classical"]["ssim_YZ"] == pytest.approx(0.05)
    assert d2r["vs_best_classical"]["fsc05_nm"] == pytest.approx(-10.0)  # 10 nm finer than cubic's 80
    assert "vs_lateral_regression" not in d2r


def test_the_learned_baseline_is_a_reference_when_scored():
    metrics = {"cubic": _row(24.0, 0.60, 80.0), "linear": _row(24.5, 0.58, 82.0),
               "lateral-regression:cpu-demo": _row(25.5, 0.66, 60.0), "d2r": _row(25.0, 0.65, 70.0)}
    names = {"cubic": "cubic", "linear": "linear", "lateral-regression:cpu-demo": "lateral-regression", "d2r": "d2r"}
    judged = compare(metrics, names)
    assert judged["lateral_regression"] == "lateral-regression:cpu-demo"
    assert metrics["d2r"]["vs_lateral_regression"]["psnr_XY"] == pytest.approx(-0.5)
    assert metrics["d2r"]["vs_lateral_regression"]["fsc05_nm"] == pytest.approx(10.0)
    assert metrics["lateral-regression:cpu-demo"]["vs_lateral_regression"]["psnr_XZ"] == 0

"""`isovol evaluate`: the protocol end to end on a real crop, and its measures against independent computations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from isovol.pipeline.io.omezarr import open_level0, write_image
from isovol.pipeline.metrics import PSNR_CAP
from isovol.workflows.evaluate import SLICEFID_SKIP, parse_methods
from isovol.workflows.measures import boundary_f1, detect_boundaries, label_boundaries, score

FACTOR = 8
PLANES = ("XY", "XZ", "YZ")


@pytest.fixture(scope="module")
def gt(crop, tmp_path_factory) -> tuple[str, np.ndarray]:
    """A 41x64x64 real isotropic crop (10 nm) as OME-Zarr."""
    vol = np.ascontiguousarray(crop[:41, :64, :64])
    url = str(tmp_path_factory.mktemp("gt") / "gt.ome.zarr")
    write_image(url, vol, (10.0, 10.0, 10.0))
    return url, vol


@pytest.fixture(scope="module")
def report(gt, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("report") / "rep")
    exe = str(Path(sys.executable).with_name("isovol"))
    res = subprocess.run([exe, "evaluate", gt[0], "--factor", str(FACTOR), "--method", "linear", "--out", out,
                          "--workers", "2", "--no-progress"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert SLICEFID_SKIP in res.stdout
    return out


def test_cli_writes_report(report, gt):
    metrics = json.load(open(os.path.join(report, "metrics.json")))
    assert list(metrics) == ["cubic", "linear"]  # cubic always included, first
    for row in metrics.values():
        for p in PLANES:
            assert set(row[p]) == {"psnr", "ssim"}
            assert 10 < row[p]["psnr"] < 60 and 0 < row[p]["ssim"] < 1
        assert set(row["gain_over_cubic_db"]) == set(PLANES)
        assert 20.0 <= row["fsc05_nm"] < 500
        assert row["slicefid"] is None
    assert all(v == 0 for v in metrics["cubic"]["gain_over_cubic_db"].values())
    for p in PLANES:  # judged against the best classical method of each plane: it scores 0, the other below
        best = max(("cubic", "linear"), key=lambda k: metrics[k][p]["psnr"])
        assert metrics[best]["vs_best_classical"][f"psnr_{p}"] == 0
        assert all(metrics[k]["vs_best_classical"][f"psnr_{p}"] <= 0 for k in metrics)
    g = metrics["linear"]["gain_over_cubic_db"]["XY"]
    assert g == pytest.approx(metrics["linear"]["XY"]["psnr"] - metrics["cubic"]["XY"]["psnr"])
    curves = json.load(open(os.path.join(report, "fsc.json")))["curves"]
    assert set(curves) == {"cubic", "linear"} and len(curves["cubic"]["curve"]) == 20
    md = open(os.path.join(report, "report.md")).read()
    assert "| `linear` |" in md and "comparison.png" in md and "fsc.png" in md and "(+0.00)" in md
    for png in ("comparison.png", "fsc.png"):
        with Image.open(os.path.join(report, png)) as im:
            assert im.width > 100 and im.height > 100


def test_metrics_match_independent_computation(report, gt):
    """The executor's outputs, read back, give the reported scores; linear matches np.interp along z."""
    low = gt[1][::FACTOR]  # slices 0, 8, ..., 40
    truth = gt[1][:(low.shape[0] - 1) * FACTOR + 1]
    lin = open_level0(os.path.join(report, "work", "linear.ome.zarr"), mode="r")[...]
    assert lin.shape == truth.shape
    zs = np.arange(truth.shape[0]) / FACTOR
    flat = low.reshape(low.shape[0], -1).astype(np.float64)
    ref = np.stack([np.interp(zs, np.arange(low.shape[0]), flat[:, i]) for i in range(flat.shape[1])], axis=1)
    ref = ref.reshape(truth.shape)
    assert np.abs(lin.astype(np.float64) - ref).max() <= 1.0
    metrics = json.load(open(os.path.join(report, "metrics.json")))
    drange = 255.0
    xy = [10 * np.log10(drange**2 / np.mean((truth[z].astype(float) - lin[z]) ** 2))
          for z in range(truth.shape[0]) if z % FACTOR]
    assert metrics["linear"]["XY"]["psnr"] == pytest.approx(np.mean(xy), abs=1e-9)


def test_perfect_reconstruction_is_capped_and_fsc_reaches_nyquist(crop):
    ref = crop[:33, :48, :48]
    row = score(ref, ref.copy(), FACTOR, voxel_nm=10.0)
    for p in PLANES:
        assert row[p]["psnr"] == PSNR_CAP
        assert row[p]["ssim"] == pytest.approx(1.0)
    assert np.allclose(row["fsc"]["curve"], 1.0)
    nshell = min(ref.shape) // 2
    nyquist = 2 * 10.0
    assert nyquist <= row["fsc05_nm"] <= nyquist * nshell / (nshell - 0.5) + 1e-9


def test_known_constant_error_gives_exact_psnr(crop):
    ref = np.minimum(crop[:33, :48, :48], 250)
    out = ref + np.uint8(5)  # every voxel off by exactly 5 grey levels: MSE 25
    row = score(ref, out, FACTOR, voxel_nm=10.0)
    expected = 10 * np.log10(255.0**2 / 25.0)
    for p in PLANES:
        assert row[p]["psnr"] == pytest.approx(expected, abs=1e-12)


def _cells(shape=(32, 64, 64), n=40, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Dense Voronoi 'neurons' and an EM-like image: bright cytoplasm, dark 2-voxel membranes, mild noise."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    d = ((grid[:, None, :] - seeds[None]) ** 2).sum(-1)
    labels = d.argmin(1).reshape(shape).astype(np.uint32) + 1
    membrane = label_boundaries(labels)
    img = np.where(membrane, 60.0, 190.0)
    img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 6, shape)
    return labels, np.clip(img, 0, 255).astype(np.uint8)


def test_label_boundaries_and_f1():
    labels = np.zeros((4, 6, 6), np.uint32)
    labels[:, :, 3:] = 1
    b = label_boundaries(labels)
    assert b[:, :, 2:4].all() and b.sum() == 2 * 4 * 6
    assert boundary_f1(b, b)["f1"] == 1.0
    shifted = np.roll(b, 1, axis=2)  # one voxel off: inside the tolerance
    assert boundary_f1(shifted, b)["f1"] == 1.0
    assert boundary_f1(shifted, b, tolerance=0)["f1"] == pytest.approx(0.5)


def test_boundary_f1_drops_for_blurred_volume():
    labels, img = _cells()
    truth = label_boundaries(labels)
    f1_gt = boundary_f1(detect_boundaries(img), truth)["f1"]
    blurred = ndimage.gaussian_filter(img.astype(np.float32), 3.0)
    f1_blur = boundary_f1(detect_boundaries(blurred), truth)["f1"]
    assert f1_gt > 0.6
    assert f1_blur < f1_gt - 0.05


def test_evaluate_with_labels(tmp_path, client):
    from isovol.workflows.evaluate import EvaluateRequest, evaluate

    labels, img = _cells(shape=(25, 48, 48), n=20)
    gt_url, lab_url = str(tmp_path / "gt.ome.zarr"), str(tmp_path / "labels.ome.zarr")
    write_image(gt_url, img, (8.0, 8.0, 8.0))
    write_image(lab_url, labels, (8.0, 8.0, 8.0))
    out = str(tmp_path / "rep")
    result = evaluate(EvaluateRequest(ground_truth=gt_url, factor=4, out=out, methods=["nearest"], labels=lab_url,
                                      progress=False), client=client)
    m = result["metrics"]
    assert list(m) == ["cubic", "linear", "nearest"]  # the classical references always, first
    b = result["info"]["boundary"]
    assert set(b) == {"ground truth", "cubic", "linear", "nearest"}
    assert b["ground truth"]["f1"] > max(m["cubic"]["boundary_f1"], m["nearest"]["boundary_f1"])
    md = open(os.path.join(out, "report.md")).read()
    assert "boundary F1" in md and "Laplacian of Gaussian" in md


def test_parse_methods():
    specs = parse_methods(["linear", "cubic"])
    assert [s.key for s in specs] == ["cubic", "linear"]


@pytest.mark.parametrize("case, args, expect", [
    ("missing", ["{missing}", "--factor", "8"], "input not found"),
    ("anisotropic", ["{gt}", "--factor", "8", "--voxel-size", "40,10,10"], "must be isotropic"),
    ("unknown", ["{gt}", "--factor", "8", "--method", "bicubic"], "unknown method 'bicubic'"),
    ("dgean-no-dir", ["{gt}", "--factor", "8", "--method", "dgean:"], "needs a model directory"),
    ("dgean-bare", ["{gt}", "--factor", "8", "--method", "dgean"], "needs a model directory"),
    ("dgean-missing-dir", ["{gt}", "--factor", "8", "--method", "dgean:{missing}"], "model directory not found"),
    ("factor", ["{gt}", "--factor", "1"], "factor must be an integer >= 2"),
    ("too-short", ["{gt}", "--factor", "48"], "keeps fewer than 2"),
    ("inception", ["{gt}", "--factor", "8", "--inception", "{missing}"], "Inception weights (--inception)"),
    ("labels-shape", ["{gt}", "--factor", "8", "--labels", "{labels}"], "must be aligned voxel for voxel"),
])
def test_bad_inputs(case, args, expect, gt, tmp_path, capsys):
    """One 'isovol: error' line on stderr, a non-zero exit, nothing written (in-process: the same main())."""
    from isovol.workflows import cli as cli_mod

    subs = {"gt": gt[0], "missing": str(tmp_path / "nope.ome.zarr"), "labels": str(tmp_path / "labels.npy")}
    np.save(subs["labels"], np.zeros((8, 16, 16), np.uint32))
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as info:
        cli_mod.main(["evaluate", *[a.format(**subs) for a in args], "--out", str(out)])
    assert info.value.code not in (0, None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("isovol: error"), lines
    assert expect in lines[0]
    assert not out.exists()


def test_bad_input_through_the_installed_command(tmp_path):
    exe = str(Path(sys.executable).with_name("isovol"))
    res = subprocess.run([exe, "evaluate", str(tmp_path / "nope.zarr"), "--factor", "8", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [
        f"isovol: error: input not found: {tmp_path / 'nope.zarr'}"]


def test_ortho_views_keep_only_the_figure_planes(crop):
    from isovol.workflows.measures import OrthoViews

    vol = crop[:33, :48, :40]
    v = OrthoViews(vol, 12)
    np.testing.assert_array_equal(v[12], vol[12])
    np.testing.assert_array_equal(v[:, 24, :], vol[:, 24, :])
    np.testing.assert_array_equal(v[:, :, 20], vol[:, :, 20])
    with pytest.raises(IndexError, match="only the figure's planes"):
        v[3]


# -- SliceFID with Inception weights from a file (random weights here: the plumbing, not the values) ----------

def _random_inception(path: str, seed: int = 0) -> None:
    """He-initialised FID Inception weights (identity batch norms) as safetensors, the file a user converts."""
    import math

    import torch

    from isovol.pipeline.checkpoints import save_tensors
    from isovol.pipeline.models.inception import InceptionFeatures

    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel()) if k.endswith("conv.weight")
             else v for k, v in InceptionFeatures().state_dict().items()}
    save_tensors(path, state)


def test_slicefid_end_to_end(crop, tmp_path, isovol_exe):
    """A 5x6x6 crop at r = 4 (3 XY, 6 XZ, 6 YZ slices per volume): finite per-plane SliceFID in metrics.json
    and the report, slice counts recorded, and no skip line."""
    gt_url, weights, out = str(tmp_path / "gt.ome.zarr"), str(tmp_path / "inception.safetensors"), tmp_path / "rep"
    write_image(gt_url, np.ascontiguousarray(crop[:5, :6, :6]), (10.0, 10.0, 10.0))
    _random_inception(weights)
    res = subprocess.run([isovol_exe, "evaluate", gt_url, "--factor", "4", "--out", str(out), "--inception", weights,
                          "--workers", "1", "--no-progress", "--device", "cpu"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert SLICEFID_SKIP not in res.stdout
    fid = json.load(open(out / "metrics.json"))["cubic"]["slicefid"]
    assert all(np.isfinite(fid[p]) and fid[p] >= 0 for p in (*PLANES, "mean"))
    assert fid["slices"] == {"XY": 3, "XZ": 6, "YZ": 6} and fid["feature_dim"] == 2048 and fid["rank_deficient"]
    md = (out / "report.md").read_text()
    assert "## SliceFID" in md and "| `cubic` |" in md and "rank-deficient" in md and "skipped" not in md
    lines = res.stdout.splitlines()
    h = next(i for i, line in enumerate(lines) if line.startswith("method"))
    header, row = lines[h], lines[h + 1]  # the cubic row, first
    assert header.split()[-1] == "SliceFID" and float(row.split()[-1]) == pytest.approx(fid["mean"], abs=0.01)


@pytest.mark.parametrize("case, expect", [
    ("garbage", "is not a readable safetensors file"),
    ("wrong-shape", "shape of Mixed_7c.branch_pool.conv.weight is (192, 1024, 1, 1)"),
])
def test_wrong_inception_file_is_one_line_and_writes_nothing(case, expect, gt, tmp_path, capsys):
    from isovol.workflows import cli as cli_mod

    weights = str(tmp_path / "inception.safetensors")
    if case == "garbage":
        with open(weights, "wb") as f:
            f.write(os.urandom(4096))
    else:
        import torch

        from isovol.pipeline.checkpoints import save_tensors
        from isovol.pipeline.models.inception import InceptionFeatures

        state = InceptionFeatures().state_dict()
        state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 1024, 1, 1)
        save_tensors(weights, state)
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as info:
        cli_mod.main(["evaluate", gt[0], "--factor", "8", "--inception", weights, "--out", str(out)])
    assert info.value.code not in (0, None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("isovol: error: Inception weights (--inception)"), lines
    assert expect in lines[0]
    assert not out.exists()


# -- a kill at any point leaves no metrics.json that is not this run's, complete --------------------------------

REPORT = ("metrics.json", "fsc.json", "comparison.png", "fsc.png", "report.md")


@pytest.mark.parametrize("kill_at", ["scoring", "report.md"])
def test_killed_run_leaves_no_metrics_json(kill_at, crop, tmp_path, client, monkeypatch):
    """An earlier run's report is gone once a new run has started (a kill during its long work leaves no
    metrics.json to pass for the new one's); a kill while the report is written leaves no metrics.json either,
    nor a temp file that looks like a report; the next identical run completes the report, metrics.json last."""
    from isovol.workflows import evaluate as ev
    from isovol.workflows import report as report_mod

    gt_url = str(tmp_path / "gt.ome.zarr")
    write_image(gt_url, np.ascontiguousarray(crop[:9, :16, :16]), (10.0, 10.0, 10.0))
    out = tmp_path / "rep"
    out.mkdir()
    for name in REPORT:  # the earlier run's complete-looking report
        (out / name).write_text('{"cubic": {"stale": true}}' if name == "metrics.json" else "stale")
    req = ev.EvaluateRequest(ground_truth=gt_url, factor=4, out=str(out), methods=[], progress=False)

    def killed(*args, **kwargs):
        assert not (out / "metrics.json").exists()  # already gone while the new run works
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        if kill_at == "scoring":
            m.setattr(ev, "score", killed)
        else:
            m.setattr(report_mod, "atomic_write", killed)
        with pytest.raises(KeyboardInterrupt):
            ev.evaluate(req, client=client)
    left = sorted(p.name for p in out.iterdir())
    assert "metrics.json" not in left and "report.md" not in left
    assert not [n for n in left if n.startswith(".tmp-")]
    if kill_at == "report.md":  # the new figures and curves were written whole before the kill
        assert {"fsc.json", "comparison.png", "fsc.png"} <= set(left)
        assert "stale" not in (out / "fsc.json").read_text()

    result = ev.evaluate(req, client=client)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["cubic", "linear"] and metrics == json.loads(json.dumps(result["metrics"]))
    assert set(metrics["cubic"]) >= {*PLANES, "fsc05_nm", "gain_over_cubic_db"}
    for name in REPORT:
        assert "stale" not in (out / name).read_bytes().decode("latin-1")
    assert (out / "metrics.json").stat().st_mtime_ns >= max((out / n).stat().st_mtime_ns for n in REPORT)

"""`isovol evaluate`: score upsampling methods against isotropic ground truth, by the fixed protocol.

Protocol (docs: DESIGN.md, "Evaluation protocol"): keep every r-th Z slice of the ground truth (0, r, 2r, ...)
as the low-resolution input; every method upsamples that input through the real blockwise executor (so the
scores are those of what users get); outputs are compared with the ground truth on z in [0, (n - 1) r].

Measures (see :mod:`isovol.pipeline.metrics`): PSNR / SSIM per plane with the dtype's data range, mean over
planes (XY over the synthesised slices only; a perfect plane counts as ``PSNR_CAP`` dB), the gain over cubic
interpolation next to each, FSC-0.5 resolution in nm (Hann-windowed 3-D FSC; the axial-only FSC beside it as a
diagnostic; docs/evaluate.md says why), and, when dense neuron labels
are given, the boundary F1 of a fixed classical membrane detector (:func:`boundary_f1`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..pipeline.checkpoints import save_json
from ..pipeline.degrade import decimate_z
from ..pipeline.errors import InputError
from ..pipeline.geometry import check_factor
from ..pipeline.io.atomic import atomic_write
from ..pipeline.io.omezarr import open_level0, write_image
from ..pipeline.io.readers import Vec3, open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.methods import CLASSICAL, LEARNED, available, get_method
from ..pipeline.metrics import fsc, fsc_resolution, plane_scores

log = logging.getLogger("isovol")

PLANES = ("XY", "XZ", "YZ")
REFERENCE = "cubic"
ISOTROPY_TOLERANCE = 0.05  # ground truth must be isotropic: Z within 5 % of Y and X
#: the fixed membrane detector of the downstream measure (never tuned per method or per volume)
BOUNDARY_SIGMA = 1.5  # voxels: Laplacian-of-Gaussian scale, about a membrane's imaged half-width at 8-10 nm
BOUNDARY_PERCENTILE = 85.0  # voxels above this percentile of the ridge response are called boundary
BOUNDARY_TOLERANCE = 1  # voxels: a detection within this distance (6-connected) of a true boundary counts
SLICEFID_SKIP = "SliceFID skipped: no Inception weights given (--inception FILE)"
#: the report files in REPORT; metrics.json is the commit marker: removed first when a run starts, written last, so
#: its presence means this run's report is complete
REPORT_FILES = ("metrics.json", "fsc.json", "comparison.png", "fsc.png", "report.md")


@dataclass
class EvaluateRequest:
    ground_truth: str
    factor: Any
    out: str
    methods: list[str] = field(default_factory=lambda: [REFERENCE])
    voxel_size: Vec3 | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    labels: str | None = None
    inception: str | None = None
    self_supervised: bool = True  # d2r / naive-lateral train on the decimated input only
    device: str | None = None  # torch device of the training done here [default: cuda if available]
    workers: int | None = None
    cluster: str = "local"
    cluster_config: str | None = None
    block_shape: tuple[int, int, int] | None = None
    processes: bool = True
    progress: bool = True


@dataclass
class MethodSpec:
    key: str  # the name in metrics.json and the report
    name: str  # the executor's method
    model: str | None = None
    train: str | None = None  # "d2r" or "naive-lateral": trained here, on the decimated input
    recipe: str | None = None  # the `isovol train` recipe of a trained method


#: methods evaluate trains itself, on the decimated input only (never on the ground truth)
TRAINED = ("d2r", "naive-lateral")
DEFAULT_RECIPE = "gpu-default"


def _recipe_key(recipe: str) -> str:
    base = os.path.basename(os.path.normpath(recipe))
    return base.rsplit(".", 1)[0] if base.endswith((".yaml", ".yml")) else base


def parse_methods(specs: list[str]) -> list[MethodSpec]:
    """``name`` for classical methods, ``name:MODEL_DIR`` for learned ones, ``d2r[:RECIPE]`` and
    ``naive-lateral[:RECIPE]`` for the ones trained here; cubic always first (the reference)."""
    from .train import load_recipe

    out: list[MethodSpec] = []
    for spec in [REFERENCE, *specs]:
        name, sep, model = spec.partition(":")
        name = name.strip()
        if name in TRAINED:
            recipe = model or DEFAULT_RECIPE
            load_recipe(recipe)  # a bad recipe fails now, before any work
            key = name if not model else f"{name}:{_recipe_key(recipe)}"
            if any(m.key == key for m in out):
                raise InputError(f"method {key!r} given twice")
            out.append(MethodSpec(key, "dgean", None, train=name, recipe=recipe))
            continue
        if name not in available():
            raise InputError(f"unknown method {name!r} in --method {spec!r}; choose one of: "
                             f"{', '.join(available() + TRAINED)} (learned ones as NAME:MODEL_DIR, trained ones as "
                             f"d2r[:RECIPE] / naive-lateral[:RECIPE])")
        if name in CLASSICAL and sep:
            raise InputError(f"method {name!r} takes no model directory (--method {spec!r})")
        if name in LEARNED and not model:
            raise InputError(f"method {name!r} needs a model directory: --method {name}:MODEL_DIR")
        if name in LEARNED and not os.path.isdir(model):
            raise InputError(f"model directory not found: {model} (--method {spec!r})")
        key = name if not model else f"{name}:{os.path.basename(os.path.normpath(model))}"
        if any(m.key == key for m in out):
            if spec == REFERENCE or (name == REFERENCE and not sep):
                continue  # cubic given explicitly as well
            raise InputError(f"method {key!r} given twice")
        out.append(MethodSpec(key, name, model or None))
    return out


def check_isotropic(voxel: Vec3 | None, url: str) -> Vec3:
    if voxel is None:
        raise InputError(f"{strip_url(url)} carries no voxel size; pass --voxel-size Z,Y,X (nm)")
    z, y, x = voxel
    if min(voxel) <= 0:
        raise InputError(f"voxel size must be positive, got {voxel}")
    if abs(z - y) > ISOTROPY_TOLERANCE * y or abs(z - x) > ISOTROPY_TOLERANCE * x:
        raise InputError(f"ground truth must be isotropic (Z within 5 % of Y and X), got voxel size {z:g},{y:g},{x:g}"
                         " nm; the protocol decimates isotropic ground truth (use --voxel-size if the file is wrong)")
    return voxel


# -- measures -------------------------------------------------------------------------------------------------

def score(ref: np.ndarray, out: np.ndarray, factor: int, voxel_nm: float = 1.0) -> dict[str, Any]:
    """Per-plane PSNR / SSIM and FSC-0.5 (nm) of ``out`` against ``ref`` (same grid, z = 0 a kept slice).

    Returns {"XY": {"psnr", "ssim"}, "XZ": ..., "YZ": ..., "fsc05_nm": x, "fsc05_axial_nm": x,
    "fsc": {"freq_per_nm", "curve", "axial_curve"}} (the 3-D FSC is the protocol's figure, the axial one a
    diagnostic; see pipeline/metrics.py and docs/evaluate.md);
    PSNR of a perfect plane is ``PSNR_CAP`` dB (the mean stays finite).
    """
    row: dict[str, Any] = plane_scores(ref, out, factor)
    freq, curve = fsc(ref.astype(np.float64), out.astype(np.float64), voxel_nm)
    row["fsc05_nm"] = fsc_resolution(freq, curve)
    afreq, acurve = fsc(ref.astype(np.float64), out.astype(np.float64), voxel_nm, axial=True)
    row["fsc05_axial_nm"] = fsc_resolution(afreq, acurve)
    row["fsc"] = {"freq_per_nm": [float(f) for f in freq], "curve": [float(c) for c in curve],
                  "axial_curve": [float(c) for c in acurve]}
    return row


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another label."""
    b = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        diff = labels[tuple(lo)] != labels[tuple(hi)]
        b[tuple(lo)] |= diff
        b[tuple(hi)] |= diff
    return b


def detect_boundaries(volume: np.ndarray, sigma: float = BOUNDARY_SIGMA,
                      percentile: float = BOUNDARY_PERCENTILE) -> np.ndarray:
    """The fixed classical membrane detector: Laplacian-of-Gaussian ridge response (membranes are dark sheets,
    so the LoG is large and positive on them), thresholded at a fixed percentile of the volume's response."""
    response = ndimage.gaussian_laplace(volume.astype(np.float32), sigma, mode="reflect")
    return response > np.percentile(response, percentile)


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance: int = BOUNDARY_TOLERANCE) -> dict[str, float]:
    """Precision, recall and F1 of boundary voxels, each side matched within ``tolerance`` voxels."""
    struct = ndimage.generate_binary_structure(3, 1)
    near_truth = ndimage.binary_dilation(truth, struct, iterations=tolerance) if tolerance else truth
    near_pred = ndimage.binary_dilation(pred, struct, iterations=tolerance) if tolerance else pred
    precision = float((pred & near_truth).sum() / max(pred.sum(), 1))
    recall = float((truth & near_pred).sum() / max(truth.sum(), 1))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1)}


# -- the FSC plot, drawn with Pillow (matplotlib is not a dependency) -----------------------------------------

COLOURS = [(0, 0, 0), (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]


def fsc_plot(curves: dict[str, dict[str, list[float]]], path: str, voxel_nm: float, width: int = 640,
             height: int = 420) -> None:
    """FSC curves against spatial frequency (up to Nyquist), the 0.5 threshold, one colour per curve, a legend."""
    from PIL import Image, ImageDraw

    from .figures import save_png

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 30, height - 50
    fmax = 0.5 / voxel_nm
    ymin, ymax = -0.2, 1.05

    def px(f: float, c: float) -> tuple[float, float]:
        c = min(max(c, ymin), ymax)
        return (left + (right - left) * f / fmax, bottom - (bottom - top) * (c - ymin) / (ymax - ymin))

    d.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for c in (0.0, 0.5, 1.0):
        _, yy = px(0, c)
        d.line((left - 4, yy, left, yy), fill=(0, 0, 0))
        d.text((left - 34, yy - 6), f"{c:.1f}", fill=(0, 0, 0))
    for i in range(5):
        f = fmax * i / 4
        xx, _ = px(f, ymin)
        d.line((xx, bottom, xx, bottom + 4), fill=(0, 0, 0))
        d.text((xx - 14, bottom + 6), f"{f:.3f}", fill=(0, 0, 0))
        if f > 0:
            d.text((xx - 14, bottom + 18), f"{1 / f:.0f} nm", fill=(110, 110, 110))
    d.text(((left + right) // 2 - 70, height - 16), "spatial frequency (1/nm)", fill=(0, 0, 0))
    d.text((left, 8), "Fourier shell correlation vs ground truth", fill=(0, 0, 0))
    x0, y5 = px(0, 0.5)
    x1, _ = px(fmax, 0.5)
    for xs in range(int(x0), int(x1), 8):  # dashed 0.5 threshold
        d.line((xs, y5, min(xs + 4, x1), y5), fill=(120, 120, 120))
    d.text((x1 - 60, y5 - 14), "FSC = 0.5", fill=(120, 120, 120))
    for i, (name, c) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [px(f, v) for f, v in zip(c["freq_per_nm"], c["curve"])]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        ly = top + 10 + 16 * i
        d.line((right - 170, ly + 6, right - 150, ly + 6), fill=colour, width=3)
        d.text((right - 144, ly), name[:24], fill=colour)
    save_png(img, path)


class OrthoViews:
    """The three planes the comparison figure shows (XY at ``z``, XZ and YZ through the centre) of a volume that
    need not stay in memory; indexable like the volume for exactly those planes."""

    def __init__(self, volume: np.ndarray, z: int):
        self.shape = volume.shape
        self.z, self.y, self.x = z, volume.shape[1] // 2, volume.shape[2] // 2
        self.xy = volume[z].copy()
        self.xz = volume[:, self.y, :].copy()
        self.yz = volume[:, :, self.x].copy()

    def __getitem__(self, key: Any) -> np.ndarray:
        full = slice(None)
        if key == self.z:
            return self.xy
        if isinstance(key, tuple) and len(key) == 3 and key[0] == full:
            if key[1] == self.y and key[2] == full:
                return self.xz
            if key[1] == full and key[2] == self.x:
                return self.yz
        raise IndexError(f"only the figure's planes are kept, not {key!r}")


# -- methods trained here, on the decimated input --------------------------------------------------------------

LATERAL_STATE = "train.json"


def train_method(spec: MethodSpec, in_url: str, low: np.ndarray, factor: int, req: EvaluateRequest) -> dict[str, Any]:
    """Train ``spec`` on the decimated input (never the ground truth) into REPORT/models/rFACTOR/KEY (a model
    serves the factor it was trained for, so another --factor into the same REPORT trains anew), resuming what an
    earlier run left; returns {"model", "recipe", "trained_on", "stages_s": {stage: s}, "total_s"} with the
    wall time of each stage (prior, recover, dgean: Stage I, II, III) summed over runs."""
    model_dir = os.path.join(req.out, "models", f"r{factor}", _safe(spec.key))
    trained_on = f"the decimated input ({low.shape[0]} slices, every {factor}th of the ground truth)"
    if spec.train == "d2r":
        from .train import STAGES, STATE, SettingsChanged, run_train

        log.info("evaluate: training %s (D2R Stage I-III, recipe %s) on %s", spec.key, spec.recipe, trained_on)
        try:
            run_train(os.path.abspath(in_url), model_dir, factor, recipe=spec.recipe or DEFAULT_RECIPE,
                      workers=req.workers, device=req.device, processes=req.processes, cluster=req.cluster,
                      cluster_config=req.cluster_config)
        except SettingsChanged as exc:  # evaluate has no --restart-from: say what to do here
            raise InputError(f"{exc.reason}; the cached model was trained with other settings: delete {model_dir} "
                             f"or use a new --out") from None
        with open(os.path.join(model_dir, STATE)) as f:
            stages = json.load(f)["stages"]
        secs = {k: round(float(stages[k].get("seconds", 0.0)), 2) for k in STAGES if k in stages}
        return {"model": model_dir, "recipe": spec.recipe, "trained_on": trained_on, "stages_s": secs,
                "total_s": round(sum(secs.values()), 2)}
    return _train_lateral(spec, low, factor, model_dir, trained_on, req)


def _train_lateral(spec: MethodSpec, low: np.ndarray, factor: int, model_dir: str, trained_on: str,
                   req: EvaluateRequest) -> dict[str, Any]:
    """The naive lateral baseline: DGEAN on the decimated stack's own Y/X sequences, with the recipe's Stage III
    model and training settings and no Stage I-II."""
    from ..pipeline.methods.dgean.trainer import train_dgean
    from .train import load_recipe, resolve

    _, raw = load_recipe(spec.recipe or DEFAULT_RECIPE)
    _, objs = resolve(raw)
    mcfg, tcfg = objs["dgean"]
    state_path = os.path.join(model_dir, LATERAL_STATE)
    state = {"seconds": 0.0, "done": False}
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
    work = os.path.join(model_dir, "dgean")
    if not state.get("done"):
        os.makedirs(model_dir, exist_ok=True)
        log.info("evaluate: training %s (DGEAN on lateral Y/X windows, recipe %s, %d steps) on %s", spec.key,
                 spec.recipe, tcfg.steps, trained_on)
        t = time.perf_counter()
        train_dgean(np.ascontiguousarray(low), work, factor, isotropic=False, model_config=mcfg, train=tcfg,
                    device=req.device, source={"stage": "isovol evaluate, naive lateral", "shape": list(low.shape),
                                               "dtype": str(low.dtype), "sampling": "lateral"},
                    log=log.info, lateral=True)
        state = {"seconds": state["seconds"] + time.perf_counter() - t, "done": True}
        save_json(state_path, state)
    secs = {"dgean": round(float(state["seconds"]), 2)}  # Stage III alone, on lateral windows
    return {"model": work, "recipe": spec.recipe, "trained_on": trained_on, "stages_s": secs,
            "total_s": round(sum(secs.values()), 2)}


# -- the run ---------------------------------------------------------------------------------------------------

def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _read_labels(req: EvaluateRequest, shape: tuple[int, int, int]) -> np.ndarray:
    lab = open_volume(req.labels, req.storage_options)  # type: ignore[arg-type]
    if tuple(lab.shape) != tuple(shape):
        raise InputError(f"labels {strip_url(req.labels)} have shape {tuple(lab.shape)}, the ground truth "
                         f"{tuple(shape)}; they must be aligned voxel for voxel")
    return lab.read(tuple(slice(0, n) for n in lab.shape))


def clear_report(out: str) -> None:
    """Remove an earlier run's report files from ``out``, metrics.json (the commit marker) first."""
    for name in REPORT_FILES:
        try:
            os.unlink(os.path.join(out, name))
        except FileNotFoundError:
            pass


def evaluate(req: EvaluateRequest, client: Any = None) -> dict[str, Any]:
    """Run the protocol; write fsc.json, comparison.png, fsc.png, report.md and, last, metrics.json into
    ``req.out``. A run removes the earlier run's report files once its inputs are valid, so a run that is killed
    leaves no metrics.json: its presence means the report beside it is complete and this run's."""
    from .figures import ortho_figure
    from .upsample import UpsampleRequest, upsample

    t0 = time.perf_counter()
    factor = check_factor(req.factor)
    fid_model = fid_device = slicefid = None
    if req.inception:  # SliceFID: a wrong weight file fails here, before any work or output
        import torch

        from ..pipeline.models.inception import load_inception

        fid_device = req.device or ("cuda" if torch.cuda.is_available() else "cpu")
        fid_model = load_inception(req.inception, device=fid_device)
    specs = parse_methods(req.methods)
    if not req.self_supervised and any(s.train for s in specs):
        raise InputError("d2r and naive-lateral are trained here on the decimated input only (--self-supervised); "
                         "a model trained on ground truth enters as dgean:MODEL_DIR")
    for s in specs:  # refuse unusable methods / models before any work
        if not s.train:
            get_method(s.name, model=s.model).check_factor(factor)
    vol = open_volume(req.ground_truth, req.storage_options, req.voxel_size)
    voxel = check_isotropic(vol.voxel_size, req.ground_truth)
    if vol.shape[0] < factor + 1:
        raise InputError(f"ground truth has {vol.shape[0]} Z slices; factor {factor} keeps fewer than 2 of them "
                         f"(at least {factor + 1} slices are needed)")
    labels = _read_labels(req, vol.shape) if req.labels else None
    truth_full = vol.read(tuple(slice(0, n) for n in vol.shape))
    low, n_out = decimate_z(truth_full, factor)
    truth = truth_full[:n_out]
    voxel_nm = float(np.mean(voxel))
    os.makedirs(req.out, exist_ok=True)
    clear_report(req.out)  # inputs are valid and the long work starts: no earlier report may pass for this one's
    work = os.path.join(req.out, "work")
    os.makedirs(work, exist_ok=True)
    in_url = os.path.join(work, "input.ome.zarr")
    write_image(in_url, low, (voxel[0] * factor, voxel[1], voxel[2]),
                attributes={"note": f"every {factor}th Z slice of {strip_url(req.ground_truth)} (isovol evaluate)"})
    log.info("evaluate: ground truth %s %s at %s nm, kept every %dth slice -> input %s; compared on z in [0, %d]",
             strip_url(req.ground_truth), truth_full.shape, ",".join(f"{v:g}" for v in voxel), factor, low.shape,
             n_out - 1)

    training: dict[str, dict[str, Any]] = {}
    for s in specs:  # before the executor's cluster opens: Stage II brings its own
        if s.train:
            training[s.key] = train_method(s, in_url, low, factor, req)
            s.model = training[s.key]["model"]
            get_method(s.name, model=s.model).check_factor(factor)

    z_show = factor // 2 + factor * ((low.shape[0] - 1) // 2)
    views: dict[str, OrthoViews] = {}  # only the figure's three planes are kept: one output in memory at a time
    metrics: dict[str, Any] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    boundary: dict[str, Any] = {}
    true_b = None
    if labels is not None:
        true_b = label_boundaries(labels[:n_out])
        boundary["ground truth"] = boundary_f1(detect_boundaries(truth), true_b)
    if fid_model is not None:  # ground-truth slice features once, each method's right after its upsample
        from ..pipeline.slicefid import SliceFID

        slicefid = SliceFID(fid_model, truth, factor, device=fid_device, log=log.info)

    def run_all(c: Any) -> None:
        for s in specs:
            t = time.perf_counter()
            out_url = os.path.join(work, f"{_safe(s.key)}.ome.zarr")
            summary = upsample(UpsampleRequest(input=in_url, output=out_url, factor=factor, method=s.name,
                                               model=s.model, block_shape=req.block_shape, overwrite=True,
                                               progress=req.progress, command=f"isovol evaluate ({s.key})"),
                               client=c)
            if not summary.ok:
                raise RuntimeError(f"upsampling with {s.key} failed: {summary.line()}")
            seconds = time.perf_counter() - t
            log.info("evaluate: %s upsampled in %.1f s", s.key, seconds)
            out = np.asarray(open_level0(out_url, mode="r")[...])
            row = score(truth, out, factor, voxel_nm)
            curves[s.key] = row.pop("fsc")
            if true_b is not None:
                boundary[s.key] = boundary_f1(detect_boundaries(out), true_b)
                row["boundary_f1"] = boundary[s.key]["f1"]
            row["slicefid"] = slicefid.score(out) if slicefid is not None else None
            row["seconds"] = round(seconds, 2)
            if s.key in training:
                row["train"] = {k: v for k, v in training[s.key].items() if k != "model"}
            metrics[s.key] = row
            views[s.key] = OrthoViews(out, z_show)

    if client is None:
        from ..deploy.clusters import open_cluster

        with open_cluster(req.cluster, req.cluster_config, req.workers, processes=req.processes) as own:
            run_all(own)
    else:
        run_all(client)

    ref = metrics[REFERENCE]
    for row in metrics.values():
        row["gain_over_cubic_db"] = {p: row[p]["psnr"] - ref[p]["psnr"] for p in PLANES}
    if slicefid is None:
        print(SLICEFID_SKIP)

    # every file atomically, metrics.json last: a kill at any point leaves no metrics.json, never a torn one
    atomic_write(os.path.join(req.out, "fsc.json"),
                 json.dumps({"voxel_nm": voxel_nm, "curves": curves}, indent=1).encode())
    ortho_figure({"ground truth": truth, **views}, os.path.join(req.out, "comparison.png"), z=z_show,
                 scale=2 if max(truth.shape) <= 256 else 1, title=f"Z x{factor}")
    fsc_plot(curves, os.path.join(req.out, "fsc.png"), voxel_nm)
    info = {"ground_truth": strip_url(req.ground_truth), "shape": list(truth_full.shape), "voxel": list(voxel),
            "factor": factor, "compared_z": n_out, "labels": strip_url(req.labels) if req.labels else None,
            "boundary": boundary, "z_show": z_show, "seconds": time.perf_counter() - t0,
            "self_supervised": req.self_supervised}
    from .report import write_report

    write_report(os.path.join(req.out, "report.md"), metrics, info)
    atomic_write(os.path.join(req.out, "metrics.json"), json.dumps(metrics, indent=1).encode())
    return {"metrics": metrics, "info": info}

"""`isovol evaluate`: score upsampling methods against isotropic ground truth, by the fixed protocol.

Protocol (docs/evaluate.md): keep every r-th Z slice of the ground truth (0, r, 2r, ...)
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
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pipeline.degrade import decimate_z
from ..pipeline.errors import InputError
from ..pipeline.geometry import check_factor
from ..pipeline.io.atomic import atomic_write
from ..pipeline.io.omezarr import open_level0, write_image
from ..pipeline.io.readers import Vec3, open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.methods import registry
from ..pipeline.methods.registry import REFERENCE
from .comparisons import compare
from .evaluate_methods import parse_methods, safe, train_method
from .measures import OrthoViews, boundary_f1, detect_boundaries, fsc_plot, label_boundaries, score

log = logging.getLogger(__name__)

PLANES = ("XY", "XZ", "YZ")
ISOTROPY_TOLERANCE = 0.05  # ground truth must be isotropic: Z within 5 % of Y and X
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
    self_supervised: bool = True  # methods trained here train on the decimated input only
    device: str | None = None  # torch device of the training done here [default: cuda if available]
    workers: int | None = None
    scheduler: str | None = None
    cluster: str = "local"
    cluster_config: str | None = None
    retries: int = 2
    block_timeout: float | None = None
    block_shape: tuple[int, int, int] | None = None
    processes: bool = True
    progress: bool = True


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


# -- the run ---------------------------------------------------------------------------------------------------

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
    if not req.self_supervised and any(s.trained_here for s in specs):
        raise InputError(f"{', '.join(s.key for s in specs if s.trained_here)} would be trained here, on the "
                         f"decimated input only (--self-supervised); a model trained on ground truth enters as "
                         f"NAME:MODEL_DIR")
    for s in specs:  # refuse unusable methods / models before any work
        if not s.trained_here:
            registry.get_method(s.name, model=s.model).check_factor(factor)
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
        if s.trained_here:
            training[s.key] = train_method(s, in_url, low.shape[0], factor, req)
            s.model = training[s.key]["model"]
            registry.get_method(s.name, model=s.model).check_factor(factor)

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
            out_url = os.path.join(work, f"{safe(s.key)}.ome.zarr")
            summary = upsample(UpsampleRequest(input=in_url, output=out_url, factor=factor, method=s.name,
                                               model=s.model, block_shape=req.block_shape, overwrite=True,
                                               retries=req.retries, block_timeout=req.block_timeout,
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

        with open_cluster(req.cluster, req.cluster_config, req.workers, req.scheduler,
                          processes=req.processes) as own:
            run_all(own)
    else:
        run_all(client)

    judged = compare(metrics, {s.key: s.name for s in specs})
    if slicefid is None:
        log.info(SLICEFID_SKIP)

    # every file atomically, metrics.json last: a kill at any point leaves no metrics.json, never a torn one
    atomic_write(os.path.join(req.out, "fsc.json"),
                 json.dumps({"voxel_nm": voxel_nm, "curves": curves}, indent=1).encode())
    ortho_figure({"ground truth": truth, **views}, os.path.join(req.out, "comparison.png"), z=z_show,
                 scale=2 if max(truth.shape) <= 256 else 1, title=f"Z x{factor}")
    fsc_plot(curves, os.path.join(req.out, "fsc.png"), voxel_nm)
    info = {"ground_truth": strip_url(req.ground_truth), "shape": list(truth_full.shape), "voxel": list(voxel),
            "factor": factor, "compared_z": n_out, **judged,
            "labels": strip_url(req.labels) if req.labels else None,
            "boundary": boundary, "z_show": z_show, "seconds": time.perf_counter() - t0,
            "self_supervised": req.self_supervised}
    from .report import write_report

    write_report(os.path.join(req.out, "report.md"), metrics, info)
    atomic_write(os.path.join(req.out, "metrics.json"), json.dumps(metrics, indent=1).encode())
    return {"metrics": metrics, "info": info}

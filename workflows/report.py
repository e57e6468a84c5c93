"""The Markdown report of `isovol evaluate` (tables, figures, and what each number means)."""

from __future__ import annotations

from typing import Any

from ..pipeline.io.atomic import atomic_write
from ..pipeline.metrics import PSNR_CAP

PLANES = ("XY", "XZ", "YZ")


def _gain(g: float) -> str:
    return f"{g:+.2f}"


def table(metrics: dict[str, Any]) -> list[str]:
    labels = any("boundary_f1" in r for r in metrics.values())
    head = ["method", *(f"PSNR {p} dB (vs best classical)" for p in PLANES), *(f"SSIM {p}" for p in PLANES),
            "FSC-0.5 nm", "axial FSC-0.5 nm"]
    if labels:
        head.append("boundary F1")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in metrics.items():
        cells = [f"`{name}`"]
        cells += [f"{r[p]['psnr']:.2f} ({_gain(r['vs_best_classical'][f'psnr_{p}'])})" for p in PLANES]
        cells += [f"{r[p]['ssim']:.4f}" for p in PLANES]
        cells.append(f"{r['fsc05_nm']:.1f}")
        cells.append(f"{r['fsc05_axial_nm']:.1f}" if r.get("fsc05_axial_nm") is not None else "–")
        if labels:
            cells.append(f"{r['boundary_f1']:.3f}" if r.get("boundary_f1") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def slicefid_lines(metrics: dict[str, Any]) -> list[str]:
    """The SliceFID table, or the skip line when no Inception weights were given."""
    rows = {k: r["slicefid"] for k, r in metrics.items() if r.get("slicefid")}
    if not rows:
        return ["SliceFID: skipped (no Inception weights given; `--inception FILE`, see docs/evaluate.md).", ""]

    def cell(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "–"

    n = next(iter(rows.values()))["slices"]
    lines = ["## SliceFID", "", "| method | " + " | ".join(f"SliceFID {p}" for p in PLANES) + " | mean |",
             "|---|" + "---|" * (len(PLANES) + 1)]
    lines += [f"| `{k}` | " + " | ".join(cell(r[p]) for p in PLANES) + f" | {cell(r['mean'])} |"
              for k, r in rows.items()]
    lines += [
        "",
        "Fréchet distance between FID-Inception pool features (2048-d) of the ground-truth slices and the "
        "reconstruction's slices at the same positions, per plane (XY over the synthesised slices only); lower "
        f"is better. Slices per plane: {', '.join(f'{p} {n[p]}' for p in PLANES)}."
        + (" With no more slices than feature dimensions the covariances are rank-deficient: the values depend "
           "on the slice count, so compare methods within this report only, not with published FIDs."
           if any(r.get("rank_deficient") for r in rows.values()) else ""),
        "",
    ]
    return lines


def _best(info: dict[str, Any]) -> str:
    best = info.get("best_classical") or {}
    return ", ".join(f"{p} {best.get(f'psnr_{p}', '?')}" for p in PLANES)


def _baseline_line(metrics: dict[str, Any], info: dict[str, Any]) -> str:
    """One sentence per learned method: its PSNR XY gain over the learned baseline, when that was scored."""
    base = info.get("lateral_regression")
    if not base:
        return ""
    rows = [f"`{k}` {r['vs_lateral_regression']['psnr_XY']:+.2f} dB" for k, r in metrics.items()
            if k != base and k not in info.get("classical", ())]
    return (f"Over the learned baseline `{base}` (isotropic CARE's idea), PSNR XY: {', '.join(rows)}. "
            if rows else "")


def write_report(path: str, metrics: dict[str, Any], info: dict[str, Any]) -> None:
    r, voxel = info["factor"], info["voxel"]
    lines = [
        "# isovol evaluate",
        "",
        f"Ground truth `{info['ground_truth']}`, shape {tuple(info['shape'])}, voxel "
        f"{','.join(f'{v:g}' for v in voxel)} nm. Protocol: every {r}th Z slice kept (0, {r}, {2 * r}, ...) as the "
        f"low-resolution input; each method upsampled it through the blockwise executor; compared on "
        f"z in [0, {info['compared_z'] - 1}].",
        "",
        "## Scores",
        "",
        *table(metrics),
        "",
        f"PSNR and SSIM use the dtype's data range and are means over planes: XY over the synthesised slices only "
        f"(kept slices are exact copies), XZ and YZ over all planes. A plane identical to the ground truth counts "
        f"as {PSNR_CAP:g} dB (the cap keeps means finite). Gains are in dB over the best classical method of "
        f"each plane ({_best(info)}), which linear often is on EM: cubic alone would flatter learned methods. "
        f"{_baseline_line(metrics, info)}"
        f"FSC-0.5: the resolution (nm) where the Hann-windowed 3-D Fourier shell correlation with the ground "
        f"truth first falls below 0.5 (the period 1/f; Nyquist is {2 * min(voxel):g} nm). Decimation alone puts "
        f"interpolation near {r * min(voxel):g} nm (aliasing fills each shell beyond |k_z| = 1/(2r dz)). "
        f"Axial FSC-0.5: the same correlation over planes of constant k_z, a diagnostic of Z alone "
        f"(docs/evaluate.md).",
        "",
        *slicefid_lines(metrics),
    ]
    trained = {k: r["train"] for k, r in metrics.items() if r.get("train")}
    if trained:
        stages = list(dict.fromkeys(st for tr in trained.values() for st in tr["stages_s"]))  # in stage order
        lines += [
            "## Training (self-supervised)",
            "",
            "The methods below were trained here, **on the decimated input only** (every "
            f"{r}th slice of the ground truth, as a user would have it), never on the ground truth, each by "
            "`isovol train --method NAME --recipe RECIPE` (`isovol methods` describes them). Models are cached "
            "under `models/` and a rerun resumes them. Wall time per training stage in seconds, summed over runs; "
            "`upsample` is the executor run that produced the scored volume.",
            "",
            "| method | recipe | " + " | ".join(f"{st} s" for st in stages) + " | training total s | upsample s |",
            "|---|---|" + "---|" * len(stages) + "---|---|",
            *(f"| `{k}` | {t['recipe']} | " + " | ".join(f"{t['stages_s'][st]:.1f}" if st in t["stages_s"] else "–"
                                                      for st in stages)
              + f" | {t['total_s']:.1f} | {metrics[k]['seconds']:.1f} |" for k, t in trained.items()),
            "",
        ]
    if info.get("labels"):
        b = info["boundary"]
        lines += [
            "## Downstream: membrane boundaries",
            "",
            f"Labels `{info['labels']}`. Segmentation needs the membranes between neurons to survive "
            "upsampling, so the same fixed classical membrane detector (Laplacian of Gaussian, sigma 1.5 voxels, "
            "voxels above the 85th percentile of its response) runs on the ground truth and on each "
            "reconstruction, and its output is compared with the label boundaries (voxels with a 6-neighbour of "
            "another label), each side matched within 1 voxel. The ground-truth row is the detector's own "
            "ceiling; a method is good when it comes close to it.",
            "",
            "| volume | precision | recall | F1 |",
            "|---|---|---|---|",
            *(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |" for k, v in b.items()),
            "",
        ]
    lines += [
        "## Views",
        "",
        "![XY / XZ / YZ views: ground truth, cubic, each method](comparison.png)  ",
        f"XY at z = {info['z_show']} (a synthesised slice), XZ and YZ through the centre.",
        "",
        "## Fourier shell correlation",
        "",
        "![FSC curves](fsc.png)  ",
        "Curves in `fsc.json`; the dashed line is the 0.5 threshold.",
        "",
        f"Run time {info['seconds']:.1f} s.",
        "",
    ]
    atomic_write(path, "\n".join(lines).encode("utf-8"))

"""The issue 5 table in one resumable command: FlyEM training_sample1 at r = 8, every method trained on its
decimated input only (Sup-DGEAN on training_sample2's ground truth), scored by the evaluation protocol.

    source benchmarks/device_env.sh && python3 benchmarks/issue5_table.py --data devdata --budget-minutes 9  # GPU
    python benchmarks/issue5_table.py --data ../shared/data/flyem_medulla_fibsem_10nm --quick               # CPU

Rows: cubic; naive lateral (DGEAN on the decimated stack's own Y/X sequences, no Stage I-II); D2R-DGEAN
(`isovol train`'s Stage I -> II -> III with the recipe, gpu-default by default); Sup-DGEAN (the same Stage III
network and settings, trained on training_sample2's isotropic ground truth along Z, Y and X).  Columns: PSNR /
SSIM per plane (gain over cubic), FSC-0.5 (3-D, Hann; the axial-only figure beside it), the downstream
boundary agreement (the fixed membrane detector of `isovol evaluate` on the reconstruction against the same
detector on the ground truth: training_sample1 has no labels), wall time per training stage and of inference.

Resumable: all work lives in ``--work`` (default devruns/issue5, git-ignored).  Each call stops starting work
when ``--budget-minutes`` run out (trainings pause at a checkpoint 90 s before, leaving room to score a finished
row; Stages I and III pause at a checkpoint), and the same command continues where it stopped.
A finished row is one JSON file in WORK/rows/ (also copied to $OUT/rows/ when $OUT is set): carry that folder
to a fresh machine and finished rows are not redone.
The table is printed once every row exists; exit status 3 means "not yet, run the same command again".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from typing import Any

import numpy as np
import torch

from isovol.pipeline.checkpoints import save_json
from isovol.pipeline.degrade import decimate_z
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import get_method, registry, upsample_array
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.workflows.evaluate import boundary_f1, detect_boundaries, score
from isovol.workflows.train import STATE, run_train

ROWS = ("cubic", "d2r", "sup", "naive")  # the order they are computed in (D2R first: it matters most)
SHOWN = ("cubic", "naive", "d2r", "sup")  # the order of the table
TITLE = {"cubic": "cubic", "naive": "naive lateral (DGEAN on own Y/X)", "d2r": "D2R-DGEAN",
         "sup": "Sup-DGEAN (training_sample2 GT)"}
VOXEL = 10.0
#: the method `isovol train` trains for the D2R row
D2R = "d2r"
ROMAN = ("I", "II", "III", "IV", "V")
#: trainings pause this long before the budget ends, leaving room for a finished row's inference and scoring
#: (whole-volume SSIM per plane, two 3-D FFTs, the boundary detector: about a minute on the device's CPU)
FINISH_S = 90.0


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def load(data: str, name: str) -> np.ndarray:
    """training_sampleN_zyx_uint8.npy directly in ``data`` or in its training_sampleN/ folder."""
    for path in (os.path.join(data, f"{name}_zyx_uint8.npy"), os.path.join(data, name, f"{name}_zyx_uint8.npy")):
        if os.path.exists(path):
            return np.load(path)
    raise SystemExit(f"{name}_zyx_uint8.npy not found in {data} or {data}/{name}/")


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t_start = time.time()
        self.deadline = self.t_start + 60 * args.budget_minutes
        self.device = "cpu" if args.quick else ("cuda" if torch.cuda.is_available() else "cpu")
        self.work = args.work or os.path.join("devruns", "issue5-quick" if args.quick else "issue5")
        self.rows_dir = os.path.join(self.work, "rows")
        os.makedirs(self.rows_dir, exist_ok=True)
        self.r = args.factor
        gt = load(args.data, "training_sample1")
        sup = load(args.data, "training_sample2")
        if args.quick:  # a CPU check of the path: small crops, the cpu-tiny recipe
            gt, sup = gt[:65, :64, :64], sup[:65, :64, :64]
        self.low, n = decimate_z(gt, self.r)
        self.low = np.ascontiguousarray(self.low)
        self.ref = gt[:n]
        self.sup_gt = np.ascontiguousarray(sup)
        self.recipe = args.recipe or ("cpu-tiny" if args.quick else "gpu-default")
        training = registry.trainable(D2R).training
        _, rec = training.book.load(self.recipe)  # a D2RRecipe: its .prior, .recover and .dgean sections
        self.stages = [s.name for s in training.stages(rec)]  # in order: prior, recover, dgean
        self.dgean_model, self.dgean_train = rec.dgean.model, rec.dgean.train
        if args.dgean_minutes is not None:  # Sup-DGEAN and naive lateral only; D2R keeps its recipe
            self.dgean_train.max_minutes = args.dgean_minutes
        self._ref_boundaries: np.ndarray | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def left(self) -> float:
        return self.deadline - time.time()

    def row_path(self, name: str) -> str:
        return os.path.join(self.rows_dir, f"{name}.json")

    def done(self, name: str) -> bool:
        return os.path.exists(self.row_path(name))

    def save_row(self, name: str, row: dict[str, Any]) -> None:
        row = {"row": name, "title": TITLE[name], "device": self.device_name(), "recipe": self.recipe,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **row}
        save_json(self.row_path(name), row)  # atomic: a row file exists only once it is whole
        out = os.environ.get("OUT")
        if out:
            os.makedirs(os.path.join(out, "rows"), exist_ok=True)
            shutil.copy(self.row_path(name), os.path.join(out, "rows", f"{name}.json"))
        log(f"row {name} done")

    def device_name(self) -> str:
        if self.device == "cuda":
            return torch.cuda.get_device_name(0)
        return platform.processor() or "cpu"

    # -- scoring -------------------------------------------------------------------------------------------

    def measure(self, out: np.ndarray) -> dict[str, Any]:
        row = score(self.ref, out, self.r, VOXEL)
        row.pop("fsc")
        if self._ref_boundaries is None:
            self._ref_boundaries = detect_boundaries(self.ref)
        row["boundary"] = boundary_f1(detect_boundaries(out), self._ref_boundaries)
        return row

    def infer(self, model_dir: str) -> tuple[np.ndarray, float]:
        method = get_method("dgean", model=model_dir, device=self.device)
        t = time.perf_counter()
        out = upsample_array(self.low, self.r, method)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    # -- rows ----------------------------------------------------------------------------------------------

    def cubic(self) -> bool:
        t = time.perf_counter()
        out = upsample_array(self.low, self.r, get_method("cubic"))
        self.save_row("cubic", {**self.measure(out), "train_s": {}, "infer_s": time.perf_counter() - t})
        return True

    def d2r(self) -> bool:
        url = os.path.join(self.work, "input.ome.zarr")
        if not os.path.exists(os.path.join(url, "zarr.json")):
            write_image(url, self.low, (VOXEL * self.r, VOXEL, VOXEL),
                        attributes={"note": f"every {self.r}th slice of FlyEM training_sample1"})
        model_dir = os.path.join(self.work, "models", "d2r")
        result = run_train(os.path.abspath(url), model_dir, self.r, method=D2R, recipe=self.recipe, workers=1,
                           device=self.device, deadline=self.deadline - FINISH_S)
        log(result["line"])
        if result["paused"]:
            return False
        with open(os.path.join(model_dir, STATE)) as f:
            stages = json.load(f)["stages"]
        out, infer_s = self.infer(model_dir)
        train_s = {s: float(stages[s]["seconds"]) for s in self.stages}
        self.save_row("d2r", {**self.measure(out), "train_s": train_s, "infer_s": infer_s})
        return True

    def _dgean(self, name: str, volume: np.ndarray, **kw: Any) -> bool:
        model_dir = os.path.join(self.work, "models", name)
        result = train_dgean(volume, model_dir, self.r, model_config=self.dgean_model, train=self.dgean_train,
                             device=self.device, source={"name": TITLE[name], "shape": list(volume.shape)},
                             log=log, deadline=self.deadline - FINISH_S, **kw)
        if not result["finished"]:
            return False
        with open(os.path.join(model_dir, "trainer.json")) as f:
            elapsed = float(json.load(f).get("elapsed_s", result["seconds"]))
        out, infer_s = self.infer(model_dir)
        self.save_row(name, {**self.measure(out), "train_s": {"dgean": elapsed}, "infer_s": infer_s,
                             "steps": result["steps"]})
        return True

    def sup(self) -> bool:
        return self._dgean("sup", self.sup_gt, isotropic=True)

    def naive(self) -> bool:
        return self._dgean("naive", self.low, isotropic=False, lateral=True)


def table(rows: dict[str, dict[str, Any]], stages: list[str]) -> list[str]:
    """The Markdown table; ``stages``: D2R's training stages in order (one wall-time column each)."""
    cubic = rows["cubic"]
    head = ["method", "PSNR XY (gain)", "PSNR XZ (gain)", "PSNR YZ (gain)", "SSIM XY", "SSIM XZ", "SSIM YZ",
            "FSC-0.5 nm", "axial FSC-0.5 nm", "boundary F1", *(f"Stage {ROMAN[i]} s" for i in range(len(stages))),
            "training s", "inference s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in SHOWN:
        r = rows[name]
        cells = [r["title"]]
        cells += [f"{r[p]['psnr']:.2f} ({r[p]['psnr'] - cubic[p]['psnr']:+.2f})" for p in ("XY", "XZ", "YZ")]
        cells += [f"{r[p]['ssim']:.4f}" for p in ("XY", "XZ", "YZ")]
        cells += [f"{r['fsc05_nm']:.1f}", f"{r['fsc05_axial_nm']:.1f}", f"{r['boundary']['f1']:.3f}"]
        t = r["train_s"]
        cells += [f"{t[s]:.0f}" if s in t else "–" for s in stages]
        cells += [f"{sum(t.values()):.0f}" if t else "–", f"{r['infer_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    d2r, sup = rows["d2r"], rows["sup"]
    gain = d2r["XY"]["psnr"] - cubic["XY"]["psnr"]
    minutes = sum(d2r["train_s"].values()) / 60
    lines += ["", "Targets (DESIGN.md): "
              f"D2R gain {gain:+.2f} dB (>= +2.4: {'met' if gain >= 2.4 else 'not met'}); "
              f"FSC {d2r['fsc05_nm']:.1f} nm (<= 48: {'met' if d2r['fsc05_nm'] <= 48 else 'not met'}); "
              f"Sup-DGEAN - D2R {sup['XY']['psnr'] - d2r['XY']['psnr']:+.2f} dB (<= 0.3: "
              f"{'met' if sup['XY']['psnr'] - d2r['XY']['psnr'] <= 0.3 else 'not met'}); "
              f"whole D2R training {minutes:.1f} min (<= 20: {'met' if minutes <= 20 else 'not met'})."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="devdata", help="folder with training_sample{1,2}_zyx_uint8.npy (flat or "
                                                       "in training_sampleN/ folders)")
    ap.add_argument("--work", default=None, help="work folder [devruns/issue5, devruns/issue5-quick]")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--budget-minutes", type=float, default=9.0, help="start no work after this (per call)")
    ap.add_argument("--recipe", default=None, help="isovol train recipe [gpu-default; cpu-tiny with --quick]")
    ap.add_argument("--dgean-minutes", type=float, default=None,
                    help="Sup-DGEAN and naive lateral training budget [the recipe's Stage III budget]")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"rows to compute in this call [{','.join(ROWS)}]")
    ap.add_argument("--quick", action="store_true", help="CPU, small crops, cpu-tiny: a check of the path")
    args = ap.parse_args()
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    torch.backends.cudnn.benchmark = True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run = Run(args)
    log(f"issue 5 table: input {run.low.shape} (every {run.r}th slice of training_sample1 {run.ref.shape}), "
        f"device {run.device_name()}, recipe {run.recipe}, work {run.work}, budget {args.budget_minutes:g} min")
    for name in ROWS:
        if name not in args.rows.split(",") or run.done(name):
            continue
        if run.left() < 60:
            log(f"budget spent before row {name}")
            break
        log(f"row {name}: {'starting' if name == 'cubic' else 'training or resuming'}")
        if not getattr(run, name)():
            log(f"row {name}: paused at the budget; run the same command again to continue")
            break
    rows = {}
    for name in ROWS:
        if run.done(name):
            with open(run.row_path(name)) as f:
                rows[name] = json.load(f)
    missing = [n for n in ROWS if n not in rows]
    if missing:
        log(f"rows still missing: {', '.join(missing)}; run the same command again (exit 3)")
        return 3
    devices = sorted({r["device"] for r in rows.values()})
    print(f"\n## FlyEM training_sample1, r = {run.r}, trained on its decimated input only (Sup-DGEAN: "
          f"training_sample2 ground truth); recipe {run.recipe}; device {', '.join(devices)}\n")
    print("\n".join(table(rows, run.stages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`isovol train`: the whole D2R flow, from an anisotropic volume to a DGEAN model, cached stage by stage.

MODEL_DIR layout::

    MODEL_DIR/prior/             Stage I, the IR-SDE lateral prior (pipeline/trainers/prior.py)
    MODEL_DIR/pseudo.ome.zarr    Stage II, the pseudo-isotropic region (executor + pipeline/methods/prior.py)
    MODEL_DIR/dgean/             Stage III checkpoints and trainer state (pipeline/trainers/dgean.py)
    MODEL_DIR/model.safetensors  the finished Stage III model, published when Stage III is done, with
    MODEL_DIR/config.json        its config: `isovol upsample --method dgean --model MODEL_DIR` reads these
    MODEL_DIR/train.json         the recipe, each stage's settings and their hash, each stage's state

Stage III trains in ``dgean/`` and its result is then linked into MODEL_DIR, because the DGEAN trainer refuses a
directory that holds JSON files other than its own (``train.json``).

Each stage's hash covers its own settings and the hash of the stage before it (Stage I: the input, its region,
the factor and the prior's recipe section), so a change anywhere invalidates that stage and the ones after it.
A rerun skips the stages marked done, resumes the first unfinished one (Stage I and III from their last
checkpoint, Stage II through the executor's done markers) and refuses to mix settings: it names the first
changed stage and asks for ``--restart-from STAGE``, which deletes that stage's outputs and the later ones.
``train.json`` is saved before anything is deleted, and a restart is recorded there until every stage is done,
so the identical command after a kill goes on with the restart instead of deleting its progress again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib.resources import files
from typing import Any

import numpy as np

from ..pipeline.checkpoints import save_json
from ..pipeline.errors import InputError, IsovolError, ResumeError
from ..pipeline.io.readers import Vec3, open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.trainers.recipes import parse_recipe, read_recipe_file
from .train_dgean import parse_region

log = logging.getLogger("isovol")

STAGES = ("prior", "recover", "dgean")
TITLES = {"prior": "Stage I (lateral prior)", "recover": "Stage II (lateral recovery)",
          "dgean": "Stage III (DGEAN)"}
PRIOR_DIR, PSEUDO, DGEAN_DIR, STATE = "prior", "pseudo.ome.zarr", "dgean", "train.json"
PUBLISHED = ("model.safetensors", "config.json")  # weights first, config last
SECTIONS = {"prior": {"model", "sde", "train"}, "dgean": {"model", "train"},
            "recover": {"sampler", "steps", "t_start", "seed", "tile", "margin", "fusion"}}
RECOVER_DEFAULTS: dict[str, Any] = {"sampler": "fast", "steps": None, "t_start": None, "seed": 0, "tile": 128,
                                    "margin": 16, "fusion": "mean"}
#: default region: the whole volume if its output has at most this many voxels, else a centred box of about it
DEFAULT_OUTPUT_VOXELS = 256**3


# ------------------------------------------------------------------------------------------------ recipes


def recipe_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in files("isovol.workflows").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(label, raw spec) of a bundled recipe (``cpu-tiny``, ``gpu-default``) or a YAML file."""
    names, what = recipe_names(), f"recipe {name_or_path}"
    if name_or_path in names:
        text = files("isovol.workflows").joinpath("recipes", name_or_path + ".yaml").read_text()
        label, spec = name_or_path, parse_recipe(text, what, STAGES)
    else:
        spec = read_recipe_file(name_or_path, STAGES, option="--recipe", names=names, label=what)
        label = os.path.abspath(name_or_path)
    for section, keys in SECTIONS.items():
        part = spec.get(section)
        if part is None:
            raise InputError(f"recipe {name_or_path}: section {section!r} is missing")
        if not isinstance(part, dict):
            raise InputError(f"recipe {name_or_path}: section {section!r} must be a mapping")
        bad = sorted(set(part) - keys)
        if bad:
            raise InputError(f"recipe {name_or_path}: unknown keys {bad} in {section!r}; known: {sorted(keys)}")
    return label, spec


def resolve(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(normalised settings per stage, for hashing; objects for the trainers)."""
    from ..pipeline.methods.dgean.network import DGEANConfig
    from ..pipeline.methods.dgean.trainer import TrainConfig
    from ..pipeline.methods.d2r_prior.trainer import PriorTrainConfig, _model_config, check_sde

    p = spec["prior"]
    try:
        prior_train = PriorTrainConfig.from_dict(p.get("train") or {})
        dgean_train = TrainConfig.from_dict(spec["dgean"].get("train") or {})
    except TypeError as exc:
        raise InputError(f"recipe training settings: {exc}") from None
    prior_model = _model_config(p.get("model", "default"))
    sde = check_sde(p.get("sde"))
    model = spec["dgean"].get("model", "default")
    try:
        dgean_model = DGEANConfig.preset(model) if isinstance(model, str) else DGEANConfig.from_dict(model)
    except (TypeError, ValueError) as exc:
        raise InputError(f"recipe dgean model: {exc}") from None
    rec = {**RECOVER_DEFAULTS, **spec["recover"]}
    for key in ("seed", "tile", "margin"):
        if isinstance(rec[key], bool) or not isinstance(rec[key], int):
            raise InputError(f"recipe recover.{key} must be an integer, got {rec[key]!r}")
    for key in ("steps", "t_start"):
        if rec[key] is not None and (isinstance(rec[key], bool) or not isinstance(rec[key], int)):
            raise InputError(f"recipe recover.{key} must be an integer or null, got {rec[key]!r}")
    if rec["sampler"] not in ("reference", "posterior", "fast") or rec["fusion"] not in ("mean", "geometric"):
        raise InputError(f"recipe recover: sampler must be reference|posterior|fast and fusion mean|geometric, "
                         f"got {rec['sampler']!r}, {rec['fusion']!r}")
    start = rec["t_start"] or (sde["T"] // 2 if rec["sampler"] == "fast" else sde["T"])
    if prior_train.t_max is not None and start > prior_train.t_max:
        raise InputError(f"recipe: recover starts at t={start} but the prior trains on t <= {prior_train.t_max} "
                         f"only; set recover.t_start <= prior.train.t_max")
    norm = {"prior": {"model": prior_model.to_dict(), "sde": sde, "train": asdict(prior_train)},
            "recover": rec,
            "dgean": {"model": dgean_model.to_dict(), "train": asdict(dgean_train)}}
    objs = {"prior": (prior_model, sde, prior_train), "dgean": (dgean_model, dgean_train)}
    return norm, objs


# ------------------------------------------------------------------------------------------------- region


def default_region(shape: tuple[int, int, int], factor: int) -> tuple[tuple[slice, slice, slice], bool]:
    """The whole volume if its output is at most 256^3 voxels, else a centred box whose output is about 256^3;
    returns (box, whether it is smaller than the volume)."""
    nz, ny, nx = shape
    if ((nz - 1) * factor + 1) * ny * nx <= DEFAULT_OUTPUT_VOXELS:
        return (slice(0, nz), slice(0, ny), slice(0, nx)), False
    side = round(DEFAULT_OUTPUT_VOXELS ** (1 / 3))
    z = min(nz, max(4, (side - 1) // factor + 1))  # at least the 4 slices of a DGEAN window
    out_z = (z - 1) * factor + 1
    xy = max(1, int(math.sqrt(DEFAULT_OUTPUT_VOXELS / out_z)))
    y, x = min(ny, xy), min(nx, xy)
    if y < xy:  # a narrow volume: give the other lateral axis the rest
        x = min(nx, DEFAULT_OUTPUT_VOXELS // (out_z * y))
    elif x < xy:
        y = min(ny, DEFAULT_OUTPUT_VOXELS // (out_z * x))
    box = tuple(slice((n - k) // 2, (n - k) // 2 + k) for n, k in zip(shape, (z, y, x)))
    return box, True  # type: ignore[return-value]


def region_text(box: tuple[slice, slice, slice]) -> str:
    return ",".join(f"{b.start}:{b.stop}" for b in box)


# -------------------------------------------------------------------------------------------------- state


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_settings(inp: dict[str, Any], region: list[list[int]], factor: int,
                   norm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each stage depends on besides the stage before it."""
    return {"prior": {"input": inp, "region": region, "factor": factor, "prior": norm["prior"]},
            "recover": {"recover": norm["recover"]},
            "dgean": {"dgean": norm["dgean"]}}


def stage_hashes(settings: dict[str, dict[str, Any]]) -> dict[str, str]:
    out, prev = {}, ""
    for s in STAGES:
        prev = out[s] = _hash({"previous": prev, **settings[s]})
    return out


class SettingsChanged(InputError):
    """A cached stage was trained with other settings.  ``reason`` says which; the message adds what
    ``isovol train`` takes to redo it (a caller without ``--restart-from``, such as evaluate, words its own)."""

    def __init__(self, reason: str, stage: str):
        super().__init__(f"{reason}; pass --restart-from {stage} to redo it and the stages after it "
                         f"(or use a new MODEL_DIR)")
        self.reason, self.stage = reason, stage


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in _changed(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _save_state(model_dir: str, state: dict[str, Any]) -> None:
    save_json(os.path.join(model_dir, STATE), state)  # atomic: a kill leaves the old state or the new one


def _load_state(model_dir: str) -> dict[str, Any] | None:
    path = os.path.join(model_dir, STATE)
    if not os.path.exists(path):
        if os.path.isdir(model_dir) and [f for f in os.listdir(model_dir) if not f.startswith(".tmp-")]:
            raise InputError(f"{model_dir} is not empty and holds no {STATE}: not an `isovol train` directory; "
                             f"use a new or empty one")
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        assert isinstance(state, dict) and isinstance(state.get("stages"), dict)
        return state
    except (OSError, ValueError, AssertionError):
        raise InputError(f"{path} is unreadable; remove MODEL_DIR or pass --restart-from prior") from None


def _remove_outputs(model_dir: str, stage: str) -> None:
    """Delete ``stage``'s outputs and those of the stages after it."""
    later = STAGES[STAGES.index(stage):]
    if "prior" in later:
        shutil.rmtree(os.path.join(model_dir, PRIOR_DIR), ignore_errors=True)
    if "recover" in later:
        shutil.rmtree(os.path.join(model_dir, PSEUDO), ignore_errors=True)
    if "dgean" in later:
        for name in reversed(PUBLISHED):  # config first: a half-deleted model is never loadable
            path = os.path.join(model_dir, name)
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(os.path.join(model_dir, DGEAN_DIR), ignore_errors=True)


def _publish(src_dir: str, model_dir: str) -> None:
    """Link (else copy) the finished Stage III model into MODEL_DIR, each file atomically, config last."""
    for name in PUBLISHED:
        src, dst = os.path.join(src_dir, name), os.path.join(model_dir, name)
        tmp = dst + ".tmp"
        if os.path.exists(tmp):
            os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


# -------------------------------------------------------------------------------------------------- stages


def run_train(input_url: str, model_dir: str, factor: int, *, region: str | None = None,
              recipe: str = "gpu-default", workers: int | None = None, device: str | None = None,
              storage_options: dict[str, Any] | None = None, voxel_size: Vec3 | None = None,
              restart_from: str | None = None, processes: bool = True, cluster: str = "local",
              cluster_config: str | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Run (or resume) Stage I-III into ``model_dir``; returns {"stages": {name: {"ran", "seconds"}},
    "validation": {...}, "line": summary}.  ``cluster``/``cluster_config`` choose where Stage II's blocks run
    (deploy/clusters.py); Stages I and III train in this process.  ``deadline`` (a ``time.time()``, for budgeted
    batch calls): no stage starts without room before it (Stage I: its time budget and a margin) and Stage III
    pauses at it; the result's "paused" names the stage a rerun resumes at (None when all are done)."""
    from ..deploy.clusters import check_cluster

    if restart_from is not None and restart_from not in STAGES:
        raise InputError(f"--restart-from must be one of {', '.join(STAGES)}, got {restart_from!r}")
    check_cluster(cluster, cluster_config)  # a bad cluster config fails now, not after Stage I
    label, spec = load_recipe(recipe)
    norm, objs = resolve(spec)
    options = dict(storage_options or {})
    vol = open_volume(input_url, options, voxel_size)
    cut = False
    if region:
        box = parse_region(region, vol.shape)
    else:
        box, cut = default_region(vol.shape, factor)
    if box[0].stop - box[0].start < 4:
        raise InputError(f"the region has {box[0].stop - box[0].start} Z slice(s); D2R needs at least 4")
    inp = {"url": strip_url(input_url), "shape": list(vol.shape), "dtype": str(vol.dtype),
           "voxel_size": list(vol.voxel_size) if vol.voxel_size else None}
    reg = [[b.start, b.stop] for b in box]
    settings = stage_settings(inp, reg, factor, norm)
    hashes = stage_hashes(settings)

    state = _load_state(model_dir)
    if state is not None and restart_from is None:
        for s in STAGES:
            saved = state["stages"].get(s)
            if saved is not None and saved.get("hash") != hashes[s]:
                what = _changed(saved.get("settings", {}), settings[s]) or ["an earlier stage"]
                raise SettingsChanged(f"{TITLES[s]} settings changed since the last run in {model_dir} "
                                      f"({', '.join(what[:4])})", s)
    if region:
        log.info("training region %s of %s %s", region_text(box), strip_url(input_url), tuple(vol.shape))
    elif cut:
        log.info("no --region given: training on the centred region %s of %s %s (output about 256^3 voxels)",
                 region_text(box), strip_url(input_url), tuple(vol.shape))
    else:
        log.info("no --region given: training on the whole of %s %s", strip_url(input_url), tuple(vol.shape))
    os.makedirs(model_dir, exist_ok=True)
    if state is None:
        state = {"stages": {}}
    state.update({"recipe": label, "recipe_settings": norm, "factor": factor, "input": inp, "region": reg})
    begin = restart_from is not None and state.get("restart") != {"stage": restart_from, "hash": hashes[restart_from]}
    if restart_from is not None and not begin:
        log.info("--restart-from %s: the restart begun by an earlier run with these settings goes on", restart_from)
    elif restart_from is not None:
        log.info("--restart-from %s: deleting the outputs of %s and the stages after it", restart_from,
                 TITLES[restart_from])
        for s in STAGES[STAGES.index(restart_from):]:
            state["stages"].pop(s, None)
        # kept until every stage is done, so the identical command after a kill goes on instead of starting over
        state["restart"] = {"stage": restart_from, "hash": hashes[restart_from]}
    _save_state(model_dir, state)  # before any deletion: a kill mid-delete leaves stages that start afresh
    if begin:
        _remove_outputs(model_dir, restart_from)  # type: ignore[arg-type]

    report: dict[str, dict[str, Any]] = {}
    validation: dict[str, Any] = {}
    paused = None
    for s in STAGES:
        st = state["stages"].get(s)
        if st is not None and st.get("done"):
            log.info("%s: done in an earlier run (%.0f s), skipped", TITLES[s], st.get("seconds", 0.0))
            report[s] = {"ran": False, "seconds": 0.0}
            continue
        if deadline is not None and deadline - time.time() < _room(s):
            log.info("%s: paused before it (less than %.0f s left before the deadline)", TITLES[s], _room(s))
            paused = s
            break
        resumed = st is not None
        if not resumed:
            _remove_outputs(model_dir, s)  # what a killed restart or an interrupted earlier run left behind
        state["stages"][s] = st = {"hash": hashes[s], "settings": settings[s], "done": False,
                                   "seconds": (st or {}).get("seconds", 0.0)}
        _save_state(model_dir, state)
        log.info("%s: %s", TITLES[s], "resuming" if resumed else "starting")
        t0, base = time.perf_counter(), st["seconds"]
        stopped = False  # paused at the deadline (Stages I and III checkpoint and resume)
        with _clock(model_dir, state, st, base):
            if s == "prior":
                stopped = _stage_prior(vol, box, model_dir, factor, objs["prior"], device, inp, deadline)
            elif s == "recover":
                _stage_recover(input_url, model_dir, factor, norm["recover"], box, workers, device, options,
                               voxel_size, processes, cluster, cluster_config)
            else:
                validation = _stage_dgean(model_dir, factor, objs["dgean"], device, deadline)
                stopped = bool(validation.get("paused"))
        took = time.perf_counter() - t0
        st["seconds"] = base + took
        if stopped:
            _save_state(model_dir, state)
            report[s] = {"ran": True, "seconds": took}
            paused = s
            break
        st["done"] = True
        _save_state(model_dir, state)
        report[s] = {"ran": True, "seconds": took}
        log.info("%s: done in %.0f s", TITLES[s], took)
    if paused is None and state.pop("restart", None) is not None:
        _save_state(model_dir, state)
    if paused is not None:
        parts = [f"{s} {'ran' if r['ran'] else 'skipped'}" for s, r in report.items()]
        return {"stages": report, "validation": {}, "paused": paused,
                "line": f"train: {', '.join(parts)}; paused at {paused} (deadline); rerun to resume"}
    if not validation:
        from ..pipeline.checkpoints import load_json

        validation = load_json(os.path.join(model_dir, "config.json"), "model").get("validation", {})
    parts = [f"{s} {'ran' if r['ran'] else 'skipped'}" + (f" {r['seconds']:.0f} s" if r["ran"] else "")
             for s, r in report.items()]
    quality = (f"validation PSNR {validation['psnr']:.2f} dB vs cubic {validation['cubic_psnr']:.2f} dB"
               if "psnr" in validation else "no validation")
    line = f"train: {', '.join(parts)}; {quality}; model {model_dir}"
    return {"stages": report, "validation": validation, "line": line, "paused": None}


#: seconds between saves of a running stage's time into train.json
CLOCK_S = 30.0


@contextmanager
def _clock(model_dir: str, state: dict[str, Any], st: dict[str, Any], base: float) -> Iterator[None]:
    """Keep the running stage's seconds in train.json up to date (every ``CLOCK_S``), so the time of a run that
    is killed still counts in the stage times the report gives.  The main thread does not touch ``state``
    while a stage runs, so the saves cannot interleave with its own."""
    stop, t0 = threading.Event(), time.perf_counter()

    def tick() -> None:
        while not stop.wait(CLOCK_S):
            st["seconds"] = base + time.perf_counter() - t0
            _save_state(model_dir, state)

    thread = threading.Thread(target=tick, name="isovol-train-clock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _room(stage: str) -> float:
    """Seconds a stage needs left before a deadline to be started: Stage II is short and resumable by block,
    Stages I and III pause at the deadline themselves (a checkpoint; a rerun resumes)."""
    return 180.0 if stage == "recover" else 60.0


def _stage_prior(vol: Any, box: tuple[slice, slice, slice], model_dir: str, factor: int, objs: tuple,
                 device: str | None, inp: dict[str, Any], deadline: float | None = None) -> bool:
    """Train (or resume) Stage I; True when it paused at ``deadline`` before its budget was spent."""
    from ..pipeline.methods.d2r_prior.trainer import train_prior

    mcfg, sde, tcfg = objs
    data = vol.read(box)
    source = {"url": inp["url"], "region": [[b.start, b.stop] for b in box], "shape": list(data.shape),
              "dtype": str(data.dtype)}
    result = train_prior(data, os.path.join(model_dir, PRIOR_DIR), factor, model_config=mcfg,
                         train=copy.deepcopy(tcfg), sde=sde, device=device, source=source, log=log.info,
                         deadline=deadline)
    return not result["finished"]


def _stage_recover(input_url: str, model_dir: str, factor: int, rec: dict[str, Any],
                   box: tuple[slice, slice, slice], workers: int | None, device: str | None,
                   options: dict[str, Any], voxel_size: Vec3 | None, processes: bool, cluster: str = "local",
                   cluster_config: str | None = None) -> None:
    from .upsample import UpsampleRequest, upsample

    out = os.path.join(model_dir, PSEUDO)  # one left half made by a killed run is cleared by upsample itself
    method_options = {"factor": factor, **rec}
    if device:
        method_options["device"] = device
    req = UpsampleRequest(input=input_url, output=out, factor=factor, method="d2r-recover",
                          model=os.path.join(model_dir, PRIOR_DIR), method_options=method_options,
                          region=region_text(box), voxel_size=voxel_size, storage_options=options,
                          resume=os.path.exists(out), workers=workers, processes=processes, cluster=cluster,
                          cluster_config=cluster_config, command="isovol train (Stage II)")
    try:
        summary = upsample(req)
    except ResumeError as exc:  # e.g. another isovol version: the executor's advice (--overwrite) is not ours
        raise SettingsChanged(f"Stage II cannot resume {out}: {exc.reason}", "recover") from None
    log.info("Stage II: %s", summary.line())
    if not summary.ok:
        raise IsovolError(f"Stage II did not finish ({len(summary.failed)} block(s) failed); rerun the same "
                          f"command to resume it")


def _stage_dgean(model_dir: str, factor: int, objs: tuple, device: str | None,
                 deadline: float | None = None) -> dict[str, Any]:
    from ..pipeline.methods.dgean.trainer import train_dgean

    mcfg, tcfg = objs
    pv = open_volume(os.path.join(model_dir, PSEUDO))
    data = pv.read(tuple(slice(0, n) for n in pv.shape))
    source = {"url": os.path.abspath(os.path.join(model_dir, PSEUDO)), "stage": "D2R Stage II output",
              "shape": list(data.shape), "dtype": str(data.dtype)}
    work = os.path.join(model_dir, DGEAN_DIR)
    result = train_dgean(np.ascontiguousarray(data), work, factor, isotropic=False, model_config=mcfg,
                         train=copy.deepcopy(tcfg), device=device, source=source, log=log.info, deadline=deadline)
    if not result["finished"]:
        return {"paused": True}
    _publish(work, model_dir)
    return dict(result["history"][-1])

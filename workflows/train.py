"""`isovol train`: train any learned method of the registry into MODEL_DIR, cached stage by stage.

A method's training is a list of stages (pipeline/methods/training.py).  MODEL_DIR holds one folder per train
stage (its checkpoints and published model), one OME-Zarr per blockwise stage, and ``train.json`` (the method,
the recipe, each stage's settings, identity and state).  D2R, for instance::

    MODEL_DIR/prior/             Stage I, the lateral prior
    MODEL_DIR/pseudo.ome.zarr    Stage II, the pseudo-isotropic training region
    MODEL_DIR/dgean/             Stage III checkpoints and trainer state
    MODEL_DIR/model.safetensors  the last stage's model, linked here when it is done, with
    MODEL_DIR/config.json        its config: `isovol upsample --method NAME --model MODEL_DIR` reads these

A stage's identity (pipeline/identity.py) covers its settings and the identity of the stage before it (the first
stage: the input, its region and the factor), so a change anywhere invalidates that stage and the ones after it.
A rerun skips the stages marked done, resumes the first unfinished one (train stages from their last checkpoint,
blockwise stages through the executor's done markers) and refuses to mix settings: it names the first changed
stage and what changed, and asks for ``--restart-from STAGE``, which deletes that stage's outputs and the later
ones.  ``train.json`` is saved before anything is deleted, and a restart is recorded there until every stage is
done, so the identical command after a kill goes on with the restart instead of deleting its progress again.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..pipeline.checkpoints import CONFIG, WEIGHTS, load_json, save_json
from ..pipeline.errors import InputError
from ..pipeline.identity import Verdict, decide, describe, identity
from ..pipeline.io.readers import Vec3, open_volume
from ..pipeline.io.urls import strip_url
from ..pipeline.methods import registry
from ..pipeline.methods.training import BlockwiseStage, Stage
from .train_stages import SettingsChanged, run_stage, training_region

log = logging.getLogger(__name__)

STATE = "train.json"
PUBLISHED = (WEIGHTS, CONFIG)  # weights first, config last
DEFAULT_METHOD = registry.DEFAULT_TRAINED


def recipe_names(method: str = DEFAULT_METHOD) -> list[str]:
    return list(registry.trainable(method).recipes)


# -------------------------------------------------------------------------------------------------- state


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
        state = load_json(path, "train state")
        assert isinstance(state.get("stages"), dict)
        return state
    except (InputError, AssertionError):
        raise InputError(f"{path} is unreadable; remove MODEL_DIR or pass --restart-from with its first "
                         f"stage") from None


def _remove_outputs(model_dir: str, stages: list[Stage], first: str) -> None:
    """Delete the outputs of stage ``first`` and of the stages after it (the published model first)."""
    names = [s.name for s in stages]
    for name in reversed(PUBLISHED):  # config first: a half-deleted model is never loadable
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            os.remove(path)
    for s in stages[names.index(first):]:
        shutil.rmtree(os.path.join(model_dir, s.path), ignore_errors=True)


def _publish(src_dir: str, model_dir: str) -> None:
    """Link (else copy) the last stage's model into MODEL_DIR, each file atomically, config last."""
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


def _check_state(state: dict[str, Any], method: str, stages: list[Stage], settings: dict[str, dict[str, Any]],
                 ids: dict[str, str], model_dir: str) -> None:
    """Refuse a MODEL_DIR of another method, or a stage whose recorded identity differs from this run's."""
    recorded = state.get("method", DEFAULT_METHOD)  # directories made before the registry trained D2R only
    if recorded != method:
        raise InputError(f"{model_dir} was trained with --method {recorded}, not {method}; use a new MODEL_DIR")
    for s in stages:
        saved = state["stages"].get(s.name)
        if saved is None:
            continue
        d = decide(saved.get("hash"), saved.get("settings"), bool(saved.get("done")), ids[s.name], settings[s.name])
        if d.verdict is Verdict.REFUSE:
            what = describe(list(d.changes), values=False) if d.changes else "an earlier stage"
            raise SettingsChanged(f"{s.title} settings changed since the last run in {model_dir} ({what})", s.name)


# -------------------------------------------------------------------------------------------------- the run


def run_train(input_url: str, model_dir: str, factor: int, *, method: str = DEFAULT_METHOD,
              region: str | None = None, recipe: str = "gpu-default", workers: int | None = None,
              device: str | None = None, storage_options: dict[str, Any] | None = None,
              voxel_size: Vec3 | None = None, restart_from: str | None = None, processes: bool = True,
              cluster: str = "local", cluster_config: str | None = None, scheduler: str | None = None,
              retries: int = 2, block_timeout: float | None = None,
              deadline: float | None = None) -> dict[str, Any]:
    """Run (or resume) ``method``'s stages into ``model_dir``; returns {"stages": {name: {"ran", "seconds"}},
    "validation": {...}, "line": summary, "paused": stage or None}.  ``cluster``/``cluster_config`` choose where
    blockwise stages run (deploy/clusters.py); train stages run in this process.  ``deadline`` (a ``time.time()``,
    for budgeted batch calls): no stage starts without room before it and train stages pause at it; "paused"
    names the stage a rerun resumes at."""
    from ..deploy.clusters import check_cluster

    entry = registry.trainable(method)
    label, rec = entry.training.book.load(recipe)
    stages = entry.training.stages(rec)
    names = [s.name for s in stages]
    if restart_from is not None and restart_from not in names:
        raise InputError(f"--restart-from must be one of {', '.join(names)} for method {method}, "
                         f"got {restart_from!r}")
    if any(isinstance(s, BlockwiseStage) for s in stages):
        check_cluster(cluster, cluster_config, scheduler)  # a bad cluster config fails now, not after the first stage
    vol = open_volume(input_url, dict(storage_options or {}), voxel_size)
    box, where = training_region(vol, input_url, region, factor, entry.training)
    inp = {"url": strip_url(input_url), "shape": list(vol.shape), "dtype": str(vol.dtype),
           "voxel_size": list(vol.voxel_size) if vol.voxel_size else None}
    reg = [[b.start, b.stop] for b in box]
    settings = {s.name: {s.name: s.settings} for s in stages}
    settings[names[0]] = {"input": inp, "region": reg, "factor": factor, **settings[names[0]]}
    ids, prev = {}, ""
    for s in stages:
        prev = ids[s.name] = identity(settings[s.name], prev)

    state = _load_state(model_dir)
    if state is not None and restart_from is None:
        _check_state(state, method, stages, settings, ids, model_dir)
    log.info("%s", where)
    created = not os.path.isdir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    state = state or {"stages": {}}
    state.update({"method": method, "recipe": label, "recipe_settings": rec.to_dict(), "factor": factor,
                  "input": inp, "region": reg})
    begin = restart_from is not None and state.get("restart") != {"stage": restart_from, "hash": ids[restart_from]}
    if restart_from is not None and not begin:
        log.info("--restart-from %s: the restart begun by an earlier run with these settings goes on", restart_from)
    elif restart_from is not None:
        log.info("--restart-from %s: deleting the outputs of that stage and the stages after it", restart_from)
        for name in names[names.index(restart_from):]:
            state["stages"].pop(name, None)
        # kept until every stage is done, so the identical command after a kill goes on instead of starting over
        state["restart"] = {"stage": restart_from, "hash": ids[restart_from]}
    _save_state(model_dir, state)  # before any deletion: a kill mid-delete leaves stages that start afresh
    if begin:
        _remove_outputs(model_dir, stages, restart_from)  # type: ignore[arg-type]
    run = {"input_url": input_url, "factor": factor, "box": box, "vol": vol, "device": device,
           "options": dict(storage_options or {}), "voxel_size": voxel_size, "workers": workers,
           "processes": processes, "cluster": cluster, "cluster_config": cluster_config, "deadline": deadline,
           "scheduler": scheduler, "retries": retries, "block_timeout": block_timeout,
           "model_dir": model_dir}
    try:
        report, validation, paused = _run_stages(stages, state, settings, ids, run)
    except InputError:
        if created and not any(st.get("done") for st in state["stages"].values()):
            _remove_if_refused(model_dir)
        raise
    return _summary(model_dir, stages, state, report, validation, paused)


def _remove_if_refused(model_dir: str) -> None:
    """Remove the MODEL_DIR this run created when its first stage refused the request before writing anything
    (say, a region smaller than a training patch): nothing is left of a refused request, and the corrected
    command does not find a stage recorded with other settings."""
    for path, _dirs, names in os.walk(model_dir):
        if any(path != model_dir or name != STATE for name in names if not name.startswith(".tmp-")):
            return
    shutil.rmtree(model_dir, ignore_errors=True)


def _run_stages(stages: list[Stage], state: dict[str, Any], settings: dict[str, Any], ids: dict[str, str],
                run: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any], str | None]:
    """Skip, resume or run each stage in order; stop at the first that pauses."""
    model_dir, deadline = run["model_dir"], run["deadline"]
    report: dict[str, dict[str, Any]] = {}
    validation: dict[str, Any] = {}
    for i, s in enumerate(stages):
        st = state["stages"].get(s.name)
        if st is not None and st.get("done"):
            log.info("%s: done in an earlier run (%.0f s), skipped", s.title, st.get("seconds", 0.0))
            report[s.name] = {"ran": False, "seconds": 0.0}
            continue
        if deadline is not None and deadline - time.time() < _room(s):
            log.info("%s: paused before it (less than %.0f s left before the deadline)", s.title, _room(s))
            return report, validation, s.name
        resumed = st is not None  # recorded by a run killed or paused in it (maybe before its clock first ticked)
        if not resumed:
            _remove_outputs(model_dir, stages, s.name)  # what a killed restart or an interrupted run left behind
        state["stages"][s.name] = st = {"hash": ids[s.name], "settings": settings[s.name], "done": False,
                                        "seconds": (st or {}).get("seconds", 0.0)}
        _save_state(model_dir, state)
        log.info("%s: %s", s.title, "resuming" if resumed else "starting")
        t0, base = time.perf_counter(), st["seconds"]
        with _clock(model_dir, state, st, base):
            result = run_stage(s, stages[i - 1] if i else None, run)
        took = time.perf_counter() - t0
        st["seconds"] = base + took
        report[s.name] = {"ran": True, "seconds": took}
        if result.get("paused"):
            _save_state(model_dir, state)
            return report, validation, s.name
        st["done"] = True
        _save_state(model_dir, state)
        log.info("%s: done in %.0f s", s.title, took)
        if i == len(stages) - 1:
            _publish(os.path.join(model_dir, s.path), model_dir)
            validation = result.get("validation", {})
    return report, validation, None


def _summary(model_dir: str, stages: list[Stage], state: dict[str, Any], report: dict[str, dict[str, Any]],
             validation: dict[str, Any], paused: str | None) -> dict[str, Any]:
    if paused is None and state.pop("restart", None) is not None:
        _save_state(model_dir, state)
    if paused is not None:
        parts = [f"{s} {'ran' if r['ran'] else 'skipped'}" for s, r in report.items()]
        return {"stages": report, "validation": {}, "paused": paused,
                "line": f"train: {', '.join(parts)}; paused at {paused} (deadline); rerun to resume"}
    if not validation:
        validation = load_json(os.path.join(model_dir, CONFIG), "model").get("validation", {})
    parts = [f"{s} {'ran' if r['ran'] else 'skipped'}" + (f" {r['seconds']:.0f} s" if r["ran"] else "")
             for s, r in report.items()]
    base = next((k for k in ("cubic_psnr", "base_psnr") if k in validation), None)  # what the trainer compares to
    quality = (f"validation PSNR {validation['psnr']:.2f} dB vs {base.removesuffix('_psnr')} "
               f"{validation[base]:.2f} dB" if "psnr" in validation and base else "no validation PSNR")
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


def _room(stage: Stage) -> float:
    """Seconds a stage needs left before a deadline to be started: a blockwise stage is short and resumable by
    block; train stages pause at the deadline themselves (a checkpoint; a rerun resumes)."""
    return 60.0 if stage.pauses else 180.0


__all__ = ["SettingsChanged", "run_train", "recipe_names"]

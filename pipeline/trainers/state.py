"""Checkpoint plumbing both trainers share: optimiser state as flat tensors for safetensors (no pickle), and the
rule that a directory only resumes a run with the same identity.

A trainer directory holds two things:

- the resume checkpoint, ``trainer.safetensors``: raw weights (``model.*``), optimiser state (``opt.*``) and
  whatever else the trainer keeps (``ema.*``), with the run's identity and record (step, validation history,
  seconds spent, the optimiser's scalar settings) in its metadata.  It is one atomic file, so a kill at any
  moment leaves either the previous checkpoint or the new one, never a mix of two steps; ``trainer.json`` is a
  readable copy of the record, never read back;
- the published model, ``model.safetensors`` then ``config.json`` (the identity plus step and validation),
  written after the checkpoint, which is what the methods load.

Only the step budget (``steps``, ``max_minutes``) may change between runs; anything else asks for a new
directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch

from ..checkpoints import (
    CONFIG,
    WEIGHTS,
    check_state,
    load_json,
    load_metadata,
    load_tensors,
    save_json,
    save_tensors,
    to_json,
)
from ..errors import InputError
from ..identity import Verdict, decide, digest

TRAINER_STATE = "trainer.safetensors"
TRAINER_JSON = "trainer.json"

#: training settings a resumed run may change: how long to train, not what is trained
RESUMABLE = ("steps", "max_minutes")


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as ``{"<param index>.<name>": tensor}``."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            out[f"{idx}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return out


def optimizer_groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimiser's scalar settings per parameter group (JSON-able: lr, betas, ...)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of ``optimizer_tensors`` + ``optimizer_groups``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    sd = opt.state_dict()
    for g, saved in zip(sd["param_groups"], groups):
        g.update({k: v for k, v in saved.items() if k != "params"})
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (e.g. ``"model."``), with the prefix taken off."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_checkpoint(directory: str, identity: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                    record: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write the resume checkpoint: one file, so it is all of one step or all of the one before."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"opt.{k}": v for k, v in optimizer_tensors(opt).items()})
    tensors.update(extra or {})
    record = {**record, "param_groups": optimizer_groups(opt)}
    save_tensors(os.path.join(directory, TRAINER_STATE), tensors,
                 metadata={"identity": to_json(identity), "record": to_json(record)})
    save_json(os.path.join(directory, TRAINER_JSON), record)


def publish(directory: str, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """The loadable model: weights first, config last (a config always describes weights that exist)."""
    save_tensors(os.path.join(directory, WEIGHTS), weights, metadata={"step": str(config["step"])})
    save_json(os.path.join(directory, CONFIG), config)


def published_step(directory: str) -> int | None:
    """The step of the published model, None when there is none."""
    path = os.path.join(directory, CONFIG)
    if not (os.path.exists(path) and os.path.exists(os.path.join(directory, WEIGHTS))):
        return None
    return load_json(path, "model directory").get("step")


def resume(directory: str, identity: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
           what: str, log: Callable[[str], None], also: tuple[str, ...] = ()
           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Load the directory's checkpoint into ``model`` and ``opt`` and return (its tensors, its record); None
    for a fresh directory.  Refused: another run's checkpoint, a published model without one, foreign files."""
    path = os.path.join(directory, TRAINER_STATE)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, CONFIG)):
            raise InputError(f"{directory} holds a finished {what} without its trainer state ({TRAINER_STATE}); "
                             f"it cannot be trained further, use a new directory")
        if any(f.endswith((".safetensors", ".json")) for f in os.listdir(directory)):
            raise InputError(f"{directory} holds files but no {TRAINER_STATE}; use an empty directory")
        return None
    tensors = load_tensors(path, f"{what} directory")
    meta = load_metadata(path, f"{what} directory")
    if "identity" not in meta or "record" not in meta:
        raise InputError(f"{path} was written by an earlier isovol whose checkpoints do not resume; "
                         f"use a new directory (the published model still loads)")
    saved, record = json.loads(meta["identity"]), json.loads(meta["record"])
    if saved.get("kind") != identity["kind"]:
        raise InputError(f"{directory} holds a {saved.get('kind', 'unknown')!r} checkpoint, not a "
                         f"{identity['kind']!r} one; use a new directory")
    check_same_run(saved, identity, directory, f"a {what}", also)
    raw = prefixed(tensors, "model.")
    check_state(model, raw, f"{what} directory")
    model.load_state_dict(raw)
    load_optimizer(opt, prefixed(tensors, "opt."), record["param_groups"])
    log(f"resuming training of {directory} at step {record['step']}")
    return tensors, record


def check_same_run(saved: dict[str, Any], identity: dict[str, Any], directory: str, what: str,
                   also: tuple[str, ...] = ()) -> None:
    """Refuse to resume ``saved`` with another ``identity`` (decided by :func:`isovol.pipeline.identity.decide`,
    the step budget ignored), naming the settings that changed.  Only the keys of ``identity`` (and of
    ``identity["train"]``) are compared, so a checkpoint may carry keys a later isovol no longer records;
    ``also``: keys compared even when only the checkpoint has them."""
    recorded = _comparable(saved, identity, also)
    decision = decide(digest(recorded), recorded, False, digest(identity), identity,
                      ignore=tuple(f"train.{k}" for k in RESUMABLE))
    if decision.verdict is Verdict.REFUSE:
        raise InputError(f"{directory} holds {what} trained with other settings "
                         f"({', '.join(_setting_names(decision.changes))}); use a new directory")


def _comparable(saved: dict[str, Any], identity: dict[str, Any], also: tuple[str, ...]) -> dict[str, Any]:
    """The part of ``saved`` that ``identity`` speaks about."""
    keys = set(identity) | set(also)
    out = {k: v for k, v in saved.items() if k in keys}
    if isinstance(out.get("train"), dict) and isinstance(identity.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k in identity["train"]}
    return out


def _setting_names(changes: tuple[tuple[str, Any, Any], ...]) -> list[str]:
    """The settings a user chose that differ: top-level keys (``factor``, ``sde``), training settings one level
    down (``train.lr``); top-level ones first, each once."""
    names: list[str] = []
    for key, _, _ in changes:
        parts = key.split(".")
        name = ".".join(parts[:2]) if parts[0] == "train" else parts[0]
        if name not in names:
            names.append(name)
    return sorted(names, key=lambda n: (n.startswith("train."), n))

"""Checkpoint plumbing both trainers share: optimiser state as flat tensors for safetensors (no pickle), and the
rule that a directory only resumes a run with the same identity.

A trainer directory holds ``config.json`` (the identity: model, data, settings; written last) and the weights;
the optimiser's tensors and its scalar settings (``param_groups``) are stored beside them.  Only the step budget
(``steps``, ``max_minutes``) may change between runs; anything else asks for a new directory.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..checkpoints import load_json
from ..errors import InputError

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


def saved_identity(directory: str, config: str, what: str) -> dict[str, Any] | None:
    """The identity of the run saved in ``directory`` (its ``config``), or None for a fresh directory; a
    directory with checkpoint-like files but no config is refused rather than overwritten."""
    path = os.path.join(directory, config)
    if not os.path.exists(path):
        if any(f.endswith((".safetensors", ".json")) for f in os.listdir(directory)):
            raise InputError(f"{directory} holds files but no {config}; use an empty directory")
        return None
    return load_json(path, what)


def check_same_run(saved: dict[str, Any], identity: dict[str, Any], directory: str, what: str,
                   also: tuple[str, ...] = ()) -> None:
    """Refuse to resume ``saved`` with another ``identity``, naming what changed (``also``: keys compared even
    when only one side has them)."""
    changed = sorted(k for k in set(identity) | set(also) if saved.get(k) != identity.get(k) and k != "train")
    train_changed = sorted(k for k in identity["train"] if saved.get("train", {}).get(k) != identity["train"][k]
                           and k not in RESUMABLE)
    if changed or train_changed:
        raise InputError(f"{directory} holds {what} trained with other settings "
                         f"({', '.join(changed + ['train.' + k for k in train_changed])}); use a new directory")

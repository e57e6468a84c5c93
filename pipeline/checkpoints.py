"""Checkpoints as safetensors + a JSON config. Nothing is ever unpickled.

A model directory holds ``model.safetensors`` (weights), ``config.json`` (what to build, how it was
trained) and, for resumable training, ``trainer.safetensors`` (the whole resume checkpoint in one file, see
trainers/state.py) with ``trainer.json``, a readable copy of its record.
The model hash is the SHA-256 of the weights file, recorded in run records and output provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from .errors import InputError
from .io.atomic import atomic_write

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(path: str, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file atomically (a killed trainer never leaves half a file)."""
    import torch
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
    atomic_write(path, save(flat, metadata=metadata))


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values (metrics often come out of numpy as float32)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, indent=indent, sort_keys=True, default=_plain)


def save_json(path: str, obj: dict[str, Any]) -> None:
    atomic_write(path, to_json(obj, indent=1).encode())


def load_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what}: {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what}: {path} must hold a JSON object")
    return obj


def load_tensors(path: str, what: str) -> dict[str, Any]:
    """Read a safetensors file on the CPU; anything else (a pickle, a torn file) is refused clearly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise InputError(f"{what}: {path} not found")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{what}: {path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def load_metadata(path: str, what: str) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{what}: {path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def check_published(directory: str, spec: dict[str, Any], what: str) -> None:
    """Refuse weights and a config of different checkpoints: a trainer publishes the weights (their step in
    the file's metadata) and then config.json, so they differ while it writes or after a kill in between."""
    step = load_metadata(os.path.join(directory, WEIGHTS), what).get("step")
    if step is not None and "step" in spec and str(spec["step"]) != step:
        raise InputError(f"{what}: {directory} holds the weights of step {step} but the config of step "
                         f"{spec['step']}: a training is writing it or was killed while publishing; rerun (or let "
                         f"finish) the training, which publishes both again")


def check_state(model: Any, state: Mapping[str, Any], what: str) -> None:
    """Refuse weights whose names or shapes do not fit ``model``, naming the first mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)}, the config builds {tuple(own[k].shape)}")
        raise InputError(f"{what}: weights do not match the model config ({'; '.join(parts)})")

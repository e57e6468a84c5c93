"""The one way a learned method loads its model: a published model directory (``model.safetensors`` + ``config.json``,
pipeline/checkpoints.py), checked on the client before any block runs, loaded once per worker (the model cache,
``cache.py``) or lazily once per copy of the method, and never shipped to workers inside the method."""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any

from ..checkpoints import CONFIG, WEIGHTS, check_published, check_state, file_sha256, load_json, load_tensors
from ..errors import InputError
from .base import Method
from .cache import shared_model


class CheckpointMethod(Method):
    """A :class:`Method` whose network comes from a model directory.  Subclasses set ``KIND`` (``config.json``'s
    ``kind``) and ``WHAT`` (how messages name the directory), and say how to build the network from the config."""

    KIND: str = ""
    WHAT: str = "model"
    TITLE: str = ""  # how messages name the model the directory must hold [default: KIND WHAT]
    device: str | None = None

    def _open(self, model_dir: str) -> None:
        """Read and check ``model_dir``: config kind, weights present and of the config's step; sets
        ``model_dir``, ``spec`` (the config) and ``model_hash``."""
        if not os.path.isdir(model_dir):
            raise InputError(f"{self.WHAT} directory not found: {model_dir}")
        self.model_dir = os.path.abspath(model_dir)
        self.spec: dict[str, Any] = load_json(os.path.join(self.model_dir, CONFIG), self.WHAT)
        if self.spec.get("kind") != self.KIND or "model" not in self.spec:
            raise InputError(f"{model_dir} does not hold a {self.TITLE or f'{self.KIND} {self.WHAT}'} "
                             f"(config.json kind={self.spec.get('kind')!r})")
        weights = os.path.join(self.model_dir, WEIGHTS)
        if not os.path.exists(weights):
            raise InputError(f"{model_dir} has no {WEIGHTS}")
        check_published(self.model_dir, self.spec, self.WHAT)
        self.model_hash = file_sha256(weights)
        self._model: Any = None

    @abstractmethod
    def _network(self) -> Any:
        """The untrained network the config describes (raise TypeError / ValueError / KeyError for a bad one)."""

    def _build(self, meta: bool = False) -> Any:
        """The network with the directory's weights; ``meta``: shapes only, on the meta device (no memory, no
        initialisation), to refuse a corrupt or mismatched checkpoint on the client cheaply."""
        import torch

        try:
            if meta:
                with torch.device("meta"):
                    net = self._network()
            else:
                net = self._network()
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{self.model_dir}: bad model config ({exc})") from None
        state = load_tensors(os.path.join(self.model_dir, WEIGHTS), self.WHAT)
        check_state(net, state, f"{self.WHAT} {self.model_dir}")
        if not meta:
            net.load_state_dict(state)
        return net.eval()

    def _device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _load(self) -> Any:
        if file_sha256(os.path.join(self.model_dir, WEIGHTS)) != self.model_hash:
            raise InputError(f"{self.model_dir}: weights changed since the run started")
        return self._build().to(self._device())

    @property
    def model(self) -> Any:
        """On a worker with the isovol plugin: the worker's cached copy (loaded once for all blocks and runs);
        elsewhere: loaded lazily, once per copy of this method."""
        shared = shared_model((self.KIND, self.model_dir, self.model_hash, self._device()), self._load)
        if shared is not None:
            return shared
        if self._model is None:
            self._model = self._load()
        return self._model

    def apply(self, data: Any, factor: int, start: int, stop: int) -> Any:
        """A stack given without its origin is taken to start at the halo's padding before voxel 0 (as
        ``upsample_array`` pads); learned methods cut tiles on a global grid, so they work in ``apply_at``."""
        h = self.halo
        return self.apply_at(data, factor, start, stop, (-h.z, -h.y, -h.x))

    @abstractmethod
    def apply_at(self, data: Any, factor: int, start: int, stop: int, origin: tuple[int, int, int]) -> Any:
        """See :meth:`Method.apply_at`: a learned method's result depends on where the block lies."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # the model never travels with the method: each worker loads its own
        return state

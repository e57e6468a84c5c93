"""JSON state files: atomic, and numpy values written as plain JSON numbers and lists."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from isovol.pipeline.checkpoints import save_json


def test_numpy_values_are_written_as_plain_json(tmp_path):
    path = str(tmp_path / "state.json")
    save_json(path, {"psnr": np.float32(24.5), "steps": np.int64(7), "curve": np.array([0.5, 0.25]), "ok": True})
    with open(path) as f:
        assert json.load(f) == {"psnr": 24.5, "steps": 7, "curve": [0.5, 0.25], "ok": True}
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left beside it


def test_an_unserialisable_value_leaves_the_old_file_whole(tmp_path):
    path = str(tmp_path / "state.json")
    save_json(path, {"step": 1})
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        save_json(path, {"step": 2, "bad": object()})
    with open(path) as f:
        assert json.load(f) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]

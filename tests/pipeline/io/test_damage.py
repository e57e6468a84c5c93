"""A damaged input chunk is named (array and stored key) in one line; storage errors are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from isovol.pipeline.io.damage import DamagedInputError, is_damage_message, locate_damage, may_be_damage
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.io.readers import open_volume


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def vol() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8)


def test_a_truncated_chunk_of_a_plain_array_is_named(tmp_path, vol):
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=vol.shape, chunks=(4, 32, 32), dtype="uint8")
    arr[...] = vol
    _truncate(tmp_path / "in.zarr" / "c" / "0" / "1" / "0")
    v = open_volume(str(tmp_path / "in.zarr"), {}, (40.0, 10.0, 10.0))
    np.testing.assert_array_equal(v.read((slice(0, 8), slice(0, 32), slice(0, 64))), vol[:, :32])  # intact part
    with pytest.raises(DamagedInputError) as info:
        v.read_padded((-1, 0, 0), (9, 64, 64))
    msg = str(info.value)
    assert msg.startswith("input chunk c/0/1/0 of ") and msg.endswith(")") and "in.zarr is damaged (" in msg
    assert is_damage_message(msg) and "\n" not in msg


def test_a_truncated_shard_of_an_ome_zarr_names_the_array_and_the_shard(tmp_path, vol):
    url = str(tmp_path / "in.ome.zarr")
    write_image(url, vol, (40.0, 10.0, 10.0))
    _truncate(tmp_path / "in.ome.zarr" / "0" / "c" / "0" / "0" / "0")
    v = open_volume(url, {}, None)
    with pytest.raises(DamagedInputError, match=r"^input chunk c/0/0/0 of .*in\.ome\.zarr/0 is damaged \("):
        v.read((slice(0, 8), slice(0, 64), slice(0, 64)))


def test_storage_errors_are_not_damage():
    assert not may_be_damage(OSError("connection reset"))
    assert not may_be_damage(RuntimeError("Read timeout on endpoint"))
    assert may_be_damage(RuntimeError("Zstd decompression error: invalid input data"))


def test_a_fault_that_passes_is_not_blamed_on_a_chunk(tmp_path, vol):
    arr = zarr.create_array(str(tmp_path / "ok.zarr"), shape=vol.shape, chunks=(4, 32, 32), dtype="uint8")
    arr[...] = vol
    assert locate_damage(arr, (slice(0, 8), slice(0, 64), slice(0, 64)), "ok.zarr") is None

"""isovol's whole-shard writer: the files zarr writes, byte for byte, for every layout it serves; zarr itself for
every layout and write it does not serve; what it stores is recorded for the done marker's vouch."""

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec, TransposeCodec, ZstdCodec
from zarr.storage import LocalStore

from isovol.pipeline.io import loops, shard_writer
from isovol.pipeline.io.integrity import RecordingStore, vouch


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def used(monkeypatch) -> list[tuple[slice, ...]]:
    """The boxes the shard writer wrote (the rest went to zarr)."""
    boxes: list[tuple[slice, ...]] = []
    real = shard_writer.write_whole_shards

    def spy(layout, box, value):
        boxes.append(box)
        return real(layout, box, value)

    monkeypatch.setattr(shard_writer, "write_whole_shards", spy)
    return boxes


def _pair(tmp_path: Path, shape, dtype, fill, chunks=(8, 16, 16), shards=(16, 32, 32), **kw) -> tuple:
    compressors = kw.pop("compressors", BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"))
    return tuple(zarr.create_array(LocalStore(tmp_path / name), shape=shape, dtype=dtype, chunks=chunks,
                                   shards=shards, fill_value=fill, compressors=compressors, **kw)
                 for name in ("ours", "theirs"))


def _data(shape, dtype, fill) -> np.ndarray:
    data = np.random.default_rng(11).integers(1, 250, shape).astype(dtype)
    data[:16, :32, :32] = fill  # a shard of fill value only: not stored
    data[16:24, 32:48, 0:16] = fill  # an inner chunk of fill value only: left out of its shard
    data[0, 40, 40] = fill  # a chunk whose first voxel is the fill value: stored
    return data


def _blocks(shape, block) -> list[tuple[slice, ...]]:
    """The boxes of a grid of ``block``-sized blocks over ``shape`` (cut at its edge)."""
    return [tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape))
            for index in np.ndindex(*[-(-n // b) for n, b in zip(shape, block)])]


@pytest.mark.parametrize("dtype, fill", [("uint8", 0), ("uint16", 7), ("float32", 0.0), ("float32", np.nan)])
@pytest.mark.parametrize("shape, block", [
    ((32, 64, 64), (32, 64, 64)),  # the whole array in one write
    ((45, 70, 50), (16, 64, 32)),  # shards and chunks cut by the array's edge; blocks of several shards
    ((40, 64, 96), (32, 32, 96)),
], ids=["whole", "edges", "blocks"])
def test_whole_shards_are_the_bytes_zarr_writes(tmp_path, used, dtype, fill, shape, block):
    ours, theirs = _pair(tmp_path, shape, dtype, fill)
    data = _data(shape, dtype, fill)
    for box in _blocks(shape, block):
        loops.write(ours, box, data[box])
    theirs[...] = data
    assert len(used) == len(_blocks(shape, block)), "every block went through the shard writer"
    mine = _files(tmp_path / "ours")
    assert mine == _files(tmp_path / "theirs")
    assert "c/0/0/0" not in mine
    np.testing.assert_array_equal(zarr.open_array(LocalStore(tmp_path / "ours"), mode="r")[...], data)


def test_other_compressors_and_a_rewrite_to_fill_value(tmp_path, used):
    """zstd and no compressor; a shard rewritten to fill value only is deleted, as zarr deletes it."""
    for compressors in (ZstdCodec(level=3), None):
        root = tmp_path / str(compressors)
        ours, theirs = _pair(root, (32, 64, 64), "int16", 0, compressors=compressors)
        data = _data((32, 64, 64), "int16", 0)
        data[:16, :, 32:] = 0
        for arr in (ours, theirs):
            arr[...] = data[::-1]  # every shard stored first
        loops.write(ours, (slice(0, 32), slice(0, 64), slice(0, 64)), data)
        theirs[...] = data
        assert _files(root / "ours") == _files(root / "theirs")
        assert "c/0/0/1" not in _files(root / "ours")
    assert len(used) == 2


def test_what_it_does_not_serve_goes_to_zarr(tmp_path, used):
    """Boxes that cut shards, and layouts other than isovol's, are written by zarr (the same files)."""
    data = _data((32, 64, 64), "uint8", 0)
    ours, theirs = _pair(tmp_path / "cut", data.shape, "uint8", 0)
    for arr in (ours, theirs):
        arr[...] = data
    box = (slice(0, 32), slice(8, 40), slice(0, 64))  # starts inside a shard
    loops.write(ours, box, data[box][::-1].copy())
    theirs[box] = data[box][::-1].copy()
    assert _files(tmp_path / "cut" / "ours") == _files(tmp_path / "cut" / "theirs")
    others = {
        "index at start": {"shards": None, "serializer": ShardingCodec(
            chunk_shape=(8, 16, 16), codecs=[BytesCodec(), BloscCodec()], index_location="start"),
            "compressors": None, "chunks": (16, 32, 32)},
        "transposed": {"filters": [TransposeCodec(order=(2, 1, 0))]},
        "no shards": {"shards": None},
        "empty chunks written": {"config": {"write_empty_chunks": True}},
    }
    for name, kw in others.items():
        ours, theirs = _pair(tmp_path / name, data.shape, "uint8", 0, **kw)
        assert shard_writer.layout_of(ours) is None, name
        loops.write(ours, (slice(None),) * 3, data)
        theirs[...] = data
        assert _files(tmp_path / name / "ours") == _files(tmp_path / name / "theirs"), name
    assert used == []


def test_what_it_stores_is_recorded_for_the_marker(tmp_path):
    """Writes through the output's recording store are vouched for as zarr's are (status --verify)."""
    data = _data((32, 64, 64), "uint8", 0)
    ours, _ = _pair(tmp_path, data.shape, "uint8", 0)
    recording = zarr.open_array(RecordingStore(LocalStore(tmp_path / "ours")), mode="r+")
    loops.write(recording, (slice(0, 32), slice(0, 64), slice(0, 64)), data)
    store = recording.store
    for key, content in _files(tmp_path / "ours").items():
        if key.startswith("c/"):
            assert store.take(key) == (True, vouch(content)), key
    assert store.take("c/0/0/0") == (True, None), "the fill-only shard is recorded as deleted"

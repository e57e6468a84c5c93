"""The output store: OME-Zarr 0.5 on zarr v3, sharded, with metadata in nanometres, written shard by shard."""

import json
import os

import numpy as np
import pytest
import zarr

from isovol.pipeline.errors import OutputError
from isovol.pipeline.io.omezarr import (
    LEVEL0,
    clear_shards,
    create_image,
    make_durable,
    open_level0,
    read_attributes,
    remove_partials,
    shard_keys,
    write_image,
)
from isovol.pipeline.io.readers import open_volume

PROV = {"method": "cubic", "factor": 4, "convention": "input slice i at output z = i*factor"}


def make(tmp_path, name="out.ome.zarr", shape=(40, 50, 60), chunks=(8, 10, 10), shards=(16, 20, 30), **kw):
    url = str(tmp_path / name)
    arr = create_image(url, None, shape=shape, dtype=np.dtype("uint16"), chunks=chunks, shards=shards,
                       voxel_size=(2.5, 4.0, 4.0), translation=(10.0, 0.0, 8.0), provenance=PROV, **kw)
    return url, arr


def test_create_image_writes_sharded_zarr_v3_with_ome_05(tmp_path):
    """Guards against an output that is v2, unsharded, or carries metadata other tools cannot read."""
    url, arr = make(tmp_path)
    meta = json.loads((tmp_path / "out.ome.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "nanometer" and a["type"] == "space" for a in ms["axes"])
    assert ms["datasets"][0]["path"] == LEVEL0
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [2.5, 4.0, 4.0]}, {"type": "translation", "translation": [10.0, 0.0, 8.0]}]
    assert meta["attributes"]["isovol"] == PROV
    level = json.loads((tmp_path / "out.ome.zarr" / LEVEL0 / "zarr.json").read_text())
    assert level["zarr_format"] == 3 and level["dimension_names"] == ["z", "y", "x"]
    assert [c["name"] for c in level["codecs"]] == ["sharding_indexed"]
    assert level["chunk_grid"]["configuration"]["chunk_shape"] == [16, 20, 30]
    inner = level["codecs"][0]["configuration"]
    assert inner["chunk_shape"] == [8, 10, 10]
    assert any(c["name"] == "blosc" and c["configuration"]["cname"] == "zstd" for c in inner["codecs"])
    assert arr.shards == (16, 20, 30) and arr.chunks == (8, 10, 10) and arr.dtype == np.uint16
    assert read_attributes(url)["isovol"] == PROV


def test_output_validates_as_ome_zarr_05(tmp_path):
    """Guards against metadata that looks right but fails the OME-Zarr 0.5 schema (napari/neuroglancer)."""
    ome_image = pytest.importorskip("ome_zarr_models.v05.image")
    url, _ = make(tmp_path)
    image = ome_image.Image.from_zarr(zarr.open_group(url, mode="r"))
    assert image.attributes.ome.version == "0.5"


def test_create_image_refuses_to_overwrite_unless_asked(tmp_path):
    """Guards against silently replacing an existing output (someone's finished run)."""
    make(tmp_path)
    with pytest.raises(OutputError, match="cannot create output"):
        make(tmp_path)
    _, arr = make(tmp_path, overwrite=True)
    assert arr.shape == (40, 50, 60)


def test_write_image_round_trips_through_the_reader(tmp_path):
    """Guards against write_image and open_volume disagreeing on data, voxel size or translation."""
    data = np.random.default_rng(3).integers(0, 1000, size=(21, 33, 18)).astype(np.uint16)
    url = str(tmp_path / "img.ome.zarr")
    arr = write_image(url, data, (30.0, 4.0, 4.0), translation=(90.0, 4.0, 0.0), chunks=(8, 16, 16),
                      attributes={"source": "test"})
    assert arr.shards is not None
    assert all(s % c == 0 for s, c in zip(arr.shards, arr.chunks))
    assert all(s >= n for s, n in zip(arr.shards, data.shape))  # one shard: written with a single put
    np.testing.assert_array_equal(open_level0(url, mode="r")[...], data)
    vol = open_volume(url)
    assert vol.voxel_size == (30.0, 4.0, 4.0) and vol.translation == (90.0, 4.0, 0.0)
    assert read_attributes(url)["isovol"] == {"source": "test"}


def stored_shards(root):
    base = os.path.join(root, LEVEL0)
    return {os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(base) for f in fs if f != "zarr.json"}


def test_shard_keys_name_exactly_the_files_a_region_writes(tmp_path):
    """Guards against fsync/cleanup touching the wrong files (or missing some) for a block."""
    url, arr = make(tmp_path)
    lo, hi = (16, 0, 30), (40, 20, 60)  # two shards in Z (the last one partial), one in Y, one in X
    keys = shard_keys(arr, lo, hi)
    assert sorted(keys) == ["c/1/0/1", "c/2/0/1"]
    arr[16:40, 0:20, 30:60] = 7
    assert stored_shards(url) == set(keys)
    make_durable(url, arr, lo, hi)  # fsyncs exactly those files; must not fail on them
    assert len(shard_keys(arr, (0, 0, 0), (40, 50, 60))) == 3 * 3 * 2
    assert shard_keys(arr, (15, 19, 29), (17, 21, 31)) == [f"c/{z}/{y}/{x}" for z in (0, 1) for y in (0, 1)
                                                            for x in (0, 1)]


def test_shard_keys_of_unsharded_array_are_chunk_keys(tmp_path):
    """Guards against a crash on arrays without sharding (array.shards is None)."""
    arr = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(10, 10, 10), chunks=(5, 5, 10), dtype="u1")
    assert sorted(shard_keys(arr, (0, 5, 0), (6, 10, 10))) == ["c/0/1/0", "c/1/1/0"]


def test_clear_shards_deletes_only_the_region(tmp_path):
    """Guards against a resume deleting shards of finished neighbours, or leaving a torn one in place."""
    url, arr = make(tmp_path)
    arr[...] = 5
    clear_shards(arr, (16, 0, 30), (40, 20, 60))
    assert stored_shards(url) == {f"c/{z}/{y}/{x}" for z in range(3) for y in range(3) for x in range(2)} - {
        "c/1/0/1", "c/2/0/1"}
    back = open_level0(url, mode="r")[...]
    assert (back[16:, :20, 30:] == 0).all() and (back[:16] == 5).all() and (back[:, 20:] == 5).all()


def test_remove_partials_deletes_only_partial_files(tmp_path):
    """Guards against temp files of a killed writer lingering, or cleanup deleting real shards."""
    url, arr = make(tmp_path)
    arr[0:16, 0:20, 0:30] = 1
    base = tmp_path / "out.ome.zarr" / LEVEL0 / "c" / "0" / "0"
    (base / "1.partial").write_bytes(b"torn")
    (base / "0.abc123.partial").write_bytes(b"torn")
    (tmp_path / "out.ome.zarr" / "x.partial").write_bytes(b"")
    before = stored_shards(url)
    assert remove_partials(url) == 3
    assert stored_shards(url) == before - {"c/0/0/1.partial", "c/0/0/0.abc123.partial"} == {"c/0/0/0"}
    assert not (tmp_path / "out.ome.zarr" / "x.partial").exists()
    assert remove_partials(url) == 0
    assert remove_partials("memory://nothing-here") == 0
    np.testing.assert_array_equal(open_level0(url, mode="r")[0:16, 0:20, 0:30], 1)

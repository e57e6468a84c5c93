"""The output is a valid OME-Zarr 0.5 image with physical scale, translation and provenance."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import zarr

from isovol.pipeline.geometry import CONVENTION
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.io.readers import open_volume
from isovol.pipeline.methods import get_method, upsample_array
from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 4
IN_VOXEL = (25.0, 8.0, 9.0)  # output Z: 6.25 nm, not an integer
TRANSLATION = (125.0, -40.5, 3000.0)


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[::FACTOR, 16:80, :96])  # (33, 64, 96)


@pytest.fixture(scope="module")
def output(tmp_path_factory, client, volume) -> str:
    d = tmp_path_factory.mktemp("meta")
    src = str(d / "in.ome.zarr")
    write_image(src, volume, IN_VOXEL, translation=TRANSLATION)
    out = str(d / "out.ome.zarr")
    summary = upsample(UpsampleRequest(input=src, output=out, factor=FACTOR, method="cubic", block_shape=(32, 64, 64),
                                       shard_shape=(16, 32, 32), chunk_shape=(8, 16, 16), progress=False,
                                       command="isovol upsample in.ome.zarr out.ome.zarr --factor 4", levels="auto"),
                     client=client)
    assert summary.ok
    return out


def test_multiscales(output):
    attrs = zarr.open_group(output, mode="r").attrs
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [(a["name"], a["type"], a["unit"]) for a in ms["axes"]] == [(a, "space", "nanometer") for a in "zyx"]
    ds = ms["datasets"][0]
    assert ds["path"] == "0"
    transforms = {t["type"]: t for t in ds["coordinateTransformations"]}
    assert [t["type"] for t in ds["coordinateTransformations"]] == ["scale", "translation"]
    assert transforms["scale"]["scale"] == [IN_VOXEL[0] / FACTOR, IN_VOXEL[1], IN_VOXEL[2]] == [6.25, 8.0, 9.0]
    assert transforms["translation"]["translation"] == list(TRANSLATION)
    # the pyramid (pipeline/pyramid.py): 2x per level, voxel centres at integer indices, until one 8x16x16 chunk
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2", "3", "4", "5"] and ms["type"] == "mean"
    for k, d in enumerate(ms["datasets"]):
        scale, translation = (t[t["type"]] for t in d["coordinateTransformations"])
        assert scale == [v * 2 ** k for v in (6.25, 8.0, 9.0)]
        assert translation == [t + v * (2 ** k - 1) / 2 for t, v in zip(TRANSLATION, (6.25, 8.0, 9.0))]


def test_provenance(output):
    prov = zarr.open_group(output, mode="r").attrs["isovol"]
    for key in ("method", "factor", "model_hash", "isovol_version", "command", "z_convention", "run_hash"):
        assert key in prov, key
    assert prov["method"] == "cubic" and prov["factor"] == FACTOR and prov["model_hash"] is None
    assert prov["z_convention"] == CONVENTION
    assert prov["command"].startswith("isovol upsample")
    import isovol.pipeline

    assert prov["isovol_version"] == isovol.pipeline.__version__
    with open(os.path.join(output, ".isovol", "run.json")) as f:
        assert json.load(f)["hash"] == prov["run_hash"]


def test_array_layout(output, volume):
    arr = zarr.open_group(output, mode="r")["0"]
    assert arr.metadata.zarr_format == 3
    assert arr.shape == ((volume.shape[0] - 1) * FACTOR + 1, 64, 96) and arr.dtype == volume.dtype
    assert arr.shards == (16, 32, 32) and arr.chunks == (8, 16, 16)
    assert tuple(arr.metadata.dimension_names) == ("z", "y", "x")
    assert arr.compressors, "the output is compressed"
    assert np.array_equal(arr[...], upsample_array(volume, FACTOR, get_method("cubic")))


def test_validates_as_ome_zarr_05(output):
    from ome_zarr_models.v05.image import Image

    image = Image.from_zarr(zarr.open_group(output, mode="r"))
    (ms,) = image.attributes.ome.multiscales
    scale, translation = ms.datasets[0].coordinateTransformations
    assert list(scale.scale) == [6.25, 8.0, 9.0]
    assert list(translation.translation) == list(TRANSLATION)
    assert [a.name for a in ms.axes] == ["z", "y", "x"] and {a.unit for a in ms.axes} == {"nanometer"}


def test_opens_in_xarray_with_physical_coordinates(output, volume):
    from isovol.pipeline.io.multiscale import open_multiscale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that .isovol/ is not part of the hierarchy
        levels = open_multiscale(output)
    da = levels[0]
    assert da.dims == ("z", "y", "x") and da.shape == ((volume.shape[0] - 1) * FACTOR + 1, 64, 96)
    assert np.array_equal(da[::FACTOR].values, volume)
    assert float(da.z[1] - da.z[0]) == 6.25 and float(da.x[0]) == TRANSLATION[2] and da.x.attrs["units"] == "nm"
    assert len(levels) == 6
    for fine, coarse in zip(levels, levels[1:]):  # each coarse voxel centred on the fine voxels it averages
        n = fine.shape[1] // 2
        np.testing.assert_allclose(coarse.y.values[:n], fine.y.values[: 2 * n].reshape(n, 2).mean(axis=1))


def test_our_reader_reads_our_output(output, volume):
    vol = open_volume(output)
    assert vol.kind == "zarr"
    assert vol.shape == ((volume.shape[0] - 1) * FACTOR + 1, 64, 96) and vol.dtype == volume.dtype
    assert vol.voxel_size == (6.25, 8.0, 9.0)
    assert vol.translation == TRANSLATION
    assert np.array_equal(vol.read((slice(0, 129, FACTOR), slice(0, 64), slice(0, 96))), volume)
    xa = vol.to_xarray()
    assert float(xa.z[1] - xa.z[0]) == 6.25 and float(xa.z[0]) == TRANSLATION[0]
    assert float(xa.x[0]) == TRANSLATION[2]

"""Lazy readers for every supported input: same numbers, shape, voxel size and padding, whatever the format."""

import pickle
import uuid
from concurrent.futures import ThreadPoolExecutor

import fsspec
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from isovol.pipeline.errors import InputError
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.io.readers import open_volume, parse_voxel_size

SHAPE = (11, 13, 17)  # all axes different, none a multiple of the chunks below


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(7).integers(0, 256, size=SHAPE, dtype=np.uint8)


@pytest.fixture
def memfs():
    """A unique folder on fsspec's in-memory filesystem, removed afterwards (it is process-global)."""
    fs = fsspec.filesystem("memory")
    root = f"/isovol-test-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# -- writers: each returns (url, voxel size in nm or None, translation in nm) ---------------------------------


def zarr_v3(tmp_path, data, memfs):
    url = str(tmp_path / "v3.zarr")
    a = zarr.create_array(store=url, shape=data.shape, dtype=data.dtype, chunks=(4, 5, 6), zarr_format=3,
                          attributes={"voxel_size": [30, 4, 4]})
    a[...] = data
    return url, (30.0, 4.0, 4.0), (0.0, 0.0, 0.0)


def zarr_v2(tmp_path, data, memfs):
    url = str(tmp_path / "v2.zarr")
    a = zarr.create_array(store=url, shape=data.shape, dtype=data.dtype, chunks=(4, 5, 6), zarr_format=2)
    a[...] = data
    return url, None, (0.0, 0.0, 0.0)


def zarr_5d(tmp_path, data, memfs):
    url = str(tmp_path / "5d.zarr")
    a = zarr.create_array(store=url, shape=(1, 1) + data.shape, dtype=data.dtype, chunks=(1, 1, 4, 5, 6))
    a[...] = data[None, None]
    return url, None, (0.0, 0.0, 0.0)


def ome_05(tmp_path, data, memfs):
    url = str(tmp_path / "ome05.ome.zarr")
    write_image(url, data, (30.0, 4.0, 4.0), translation=(100.0, 8.0, 12.0), chunks=(4, 8, 8))
    return url, (30.0, 4.0, 4.0), (100.0, 8.0, 12.0)


def _ome04_group(url, axes, scale, translation, shape):
    ms = [{
        "version": "0.4",
        "axes": axes,
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]}],
    }]
    group = zarr.create_group(store=url, zarr_format=2, attributes={"multiscales": ms})
    return group.create_array("s0", shape=shape, dtype=np.uint8, chunks=tuple(min(c, s) for c, s in
                                                                              zip((1, 1, 4, 5, 6)[-len(shape):],
                                                                                  shape)))


def ome_04_um(tmp_path, data, memfs):
    url = str(tmp_path / "ome04.zarr")
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    a = _ome04_group(url, axes, [0.03, 0.004, 0.004], [0.1, 0.008, 0.012], data.shape)
    a[...] = data
    return url, (30.0, 4.0, 4.0), (100.0, 8.0, 12.0)


def ome_04_tczyx(tmp_path, data, memfs):
    url = str(tmp_path / "ome04_5d.zarr")
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    a = _ome04_group(url, axes, [2.0, 1.0, 0.03, 0.004, 0.004], [5.0, 0.0, 0.1, 0.008, 0.012], (1, 1) + data.shape)
    a[...] = data[None, None]
    return url, (30.0, 4.0, 4.0), (100.0, 8.0, 12.0)


def tiff_pages(tmp_path, data, memfs):
    url = str(tmp_path / "stack.tif")
    tifffile.imwrite(url, data)
    return url, None, (0.0, 0.0, 0.0)


def tiff_imagej(tmp_path, data, memfs):
    url = str(tmp_path / "imagej.tif")
    tifffile.imwrite(url, data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"})
    return url, (30.0, 4.0, 4.0), (0.0, 0.0, 0.0)


def tiff_folder(tmp_path, data, memfs):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in np.random.default_rng(0).permutation(data.shape[0]):  # write order must not matter
        tifffile.imwrite(folder / f"slice_{z:04d}.tif", data[z])
    (folder / "README.txt").write_text("not a slice")
    return str(folder), None, (0.0, 0.0, 0.0)


def hdf5_path(tmp_path, data, memfs):
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw/other", data=data[:2])  # a second 3-D dataset: the name must pick the right one
        ds = f.create_dataset("group/ds", data=data, chunks=(4, 5, 6))
        ds.attrs["element_size_um"] = [0.03, 0.004, 0.004]
    return f"{path}:/group/ds", (30.0, 4.0, 4.0), (0.0, 0.0, 0.0)


def hdf5_single(tmp_path, data, memfs):
    path = tmp_path / "single.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("nested/volume", data=data)
        f.create_dataset("nested/labels_2d", data=data[0])  # 2-D datasets are not candidates
    return str(path), None, (0.0, 0.0, 0.0)


def npy_local(tmp_path, data, memfs):
    url = str(tmp_path / "vol.npy")
    np.save(url, data)
    return url, None, (0.0, 0.0, 0.0)


def npy_memory(tmp_path, data, memfs):
    fs, root = memfs
    with fs.open(f"{root}/vol.npy", "wb") as f:
        np.save(f, data)
    return f"memory://{root}/vol.npy", None, (0.0, 0.0, 0.0)


def zarr_memory(tmp_path, data, memfs):
    fs, root = memfs
    url = f"memory://{root}/vol.zarr"
    a = zarr.create_array(store=url, shape=data.shape, dtype=data.dtype, chunks=(4, 5, 6))
    a[...] = data
    return url, None, (0.0, 0.0, 0.0)


def ome_memory(tmp_path, data, memfs):
    fs, root = memfs
    url = f"memory://{root}/img.ome.zarr"
    write_image(url, data, (30.0, 4.0, 4.0), translation=(100.0, 8.0, 12.0), chunks=(4, 8, 8))
    return url, (30.0, 4.0, 4.0), (100.0, 8.0, 12.0)


def tiff_memory(tmp_path, data, memfs):
    fs, root = memfs
    with fs.open(f"{root}/stack.tiff", "wb") as f:
        tifffile.imwrite(f, data)
    return f"memory://{root}/stack.tiff", None, (0.0, 0.0, 0.0)


WRITERS = [zarr_v3, zarr_v2, zarr_5d, ome_05, ome_04_um, ome_04_tczyx, tiff_pages, tiff_imagej, tiff_folder,
           hdf5_path, hdf5_single, npy_local, npy_memory, zarr_memory, ome_memory, tiff_memory]
KINDS = {"zarr_v3": "zarr", "zarr_v2": "zarr", "zarr_5d": "zarr", "ome_05": "zarr", "ome_04_um": "zarr",
         "ome_04_tczyx": "zarr", "tiff_pages": "tiff", "tiff_imagej": "tiff", "tiff_folder": "tiff-folder",
         "hdf5_path": "hdf5", "hdf5_single": "hdf5", "npy_local": "npy", "npy_memory": "npy",
         "zarr_memory": "zarr", "ome_memory": "zarr", "tiff_memory": "tiff"}


@pytest.fixture(params=WRITERS, ids=lambda w: w.__name__)
def written(request, tmp_path, data, memfs):
    url, vs, tr = request.param(tmp_path, data, memfs)
    return request.param.__name__, url, vs, tr


def check_reads(vol, data):
    """Every read path of a Volume against the in-memory truth."""
    assert vol.shape == data.shape and vol.ndim == 3
    assert vol.dtype == data.dtype
    box = (slice(2, 9), slice(1, 12), slice(3, 16))
    np.testing.assert_array_equal(vol.read(box), data[box])
    full = tuple(slice(0, n) for n in data.shape)
    np.testing.assert_array_equal(vol.read(full), data)
    # boxes past the edges repeat the border voxel, as np.pad(mode="edge") does
    for lo, hi in [((-2, -3, -1), (13, 16, 20)), ((-1, 0, 5), (3, 13, 9)), ((9, 11, -4), (12, 15, 2)),
                   ((0, 0, 0), SHAPE), ((10, 12, 16), (11, 13, 17))]:
        pad = [(max(-a, 0), max(b - n, 0)) for a, b, n in zip(lo, hi, SHAPE)]
        padded = np.pad(data, pad, mode="edge")
        sel = tuple(slice(a + p[0], b + p[0]) for a, b, p in zip(lo, hi, pad))
        got = vol.read_padded(lo, hi)
        assert got.shape == tuple(b - a for a, b in zip(lo, hi))
        np.testing.assert_array_equal(got, padded[sel], err_msg=f"read_padded({lo}, {hi})")
    # numpy-style indexing
    for key in [(3,), (slice(1, 5), 4, slice(None, None, 2)), (slice(None), slice(2, 3), -1), (-1, -2),
                (slice(0, 11, 3), slice(None), slice(16, None))]:
        np.testing.assert_array_equal(vol[key], data[key], err_msg=str(key))
    np.testing.assert_array_equal(vol[5], data[5])


def test_reader_round_trip(written, data):
    """Guards against any format reading wrong values, axes, padding, or losing its metadata."""
    name, url, voxel_size, translation = written
    vol = open_volume(url)
    assert vol.kind == KINDS[name]
    check_reads(vol, data)
    if voxel_size is None:
        assert vol.voxel_size is None
    else:
        np.testing.assert_allclose(vol.voxel_size, voxel_size, rtol=1e-9)
    np.testing.assert_allclose(vol.translation, translation, rtol=1e-9, atol=1e-9)


def test_reader_survives_pickle(written, data):
    """Guards against readers shipping open handles to workers (unpicklable) or failing to reopen there."""
    _, url, _, _ = written
    vol = open_volume(url)
    vol.read((slice(0, 1), slice(0, 1), slice(0, 1)))  # the handle is open now
    clone = pickle.loads(pickle.dumps(vol))
    assert clone.shape == vol.shape and clone.dtype == vol.dtype and clone.voxel_size == vol.voxel_size
    check_reads(clone, data)


def test_to_xarray_has_nanometre_coordinates(written, data):
    """Guards against xarray coordinates in the wrong unit or without the translation."""
    _, url, voxel_size, translation = written
    xa = open_volume(url).to_xarray(chunks=(4, 8, 8))
    assert xa.dims == ("z", "y", "x") and xa.shape == data.shape
    vs = voxel_size or (1.0, 1.0, 1.0)
    for i, d in enumerate("zyx"):
        np.testing.assert_allclose(xa[d].values, translation[i] + vs[i] * np.arange(data.shape[i]), atol=1e-9)
        assert xa[d].attrs["units"] == ("nm" if voxel_size else "voxel")
    np.testing.assert_array_equal(xa.isel(z=slice(3, 7), x=slice(10, None)).values, data[3:7, :, 10:])


def test_voxel_size_argument_overrides_metadata(tmp_path, data, memfs):
    """Guards against a user's --voxel-size being ignored when the file carries (wrong) metadata."""
    url, _, _ = ome_05(tmp_path, data, memfs)
    vol = open_volume(url, voxel_size=(40, 5, 5))
    assert vol.voxel_size == (40.0, 5.0, 5.0)


def test_tiff_folder_orders_slices_by_name(tmp_path, data):
    """Guards against listing order (filesystem-dependent) deciding the Z order."""
    folder = tmp_path / "named"
    folder.mkdir()
    names = ["b.tif", "a.tiff", "c.TIF"]
    for name, z in zip(names, [1, 0, 2]):
        tifffile.imwrite(folder / name, data[z])
    vol = open_volume(str(folder))
    np.testing.assert_array_equal(vol.read((slice(0, 3), slice(0, 13), slice(0, 17))), data[:3])


def test_readers_are_lazy(tmp_path, data):
    """Guards against whole-volume loads: a TIFF folder opens only its first slice until a read asks for more."""
    url, _, _ = tiff_folder(tmp_path, data, None)
    vol = open_volume(url)
    (tmp_path / "slices" / "slice_0007.tif").write_bytes(b"corrupt")  # unread slices may change freely
    np.testing.assert_array_equal(vol[2:5], data[2:5])


# -- errors -------------------------------------------------------------------------------------------------


def expect_input_error(url, match, **kwargs):
    with pytest.raises(InputError, match=match) as info:
        open_volume(url, **kwargs)
    assert "Traceback" not in str(info.value)
    return str(info.value)


def test_missing_path(tmp_path):
    """Guards against a raw FileNotFoundError (or a zarr 'group not found') instead of one clear line."""
    expect_input_error(str(tmp_path / "nope.zarr"), "input not found")
    expect_input_error(str(tmp_path / "nope.h5") + ":/raw", "input not found")
    expect_input_error("memory://isovol-test-absent/x.npy", "input not found")


def test_two_dimensional_input_is_refused(tmp_path, data):
    """Guards against treating a single image as a volume (Y would become Z)."""
    np.save(tmp_path / "img.npy", data[0])
    expect_input_error(str(tmp_path / "img.npy"), r"not a 3-D volume \(shape \(13, 17\)\)")
    a = zarr.create_array(store=str(tmp_path / "img.zarr"), shape=(13, 17), dtype="u1")
    a[...] = data[0]
    expect_input_error(str(tmp_path / "img.zarr"), "not a 3-D volume")


def test_non_singleton_leading_axis_is_refused(tmp_path, data):
    """Guards against silently reading channel 0 of a multi-channel or multi-timepoint array."""
    np.save(tmp_path / "two.npy", np.stack([data, data]))
    expect_input_error(str(tmp_path / "two.npy"), r"not a 3-D volume \(shape \(2, 11, 13, 17\)\)")
    tifffile.imwrite(tmp_path / "two.tif", np.stack([data, data]), imagej=True, metadata={"axes": "TZYX"})
    expect_input_error(str(tmp_path / "two.tif"), "not a 3-D volume")


def test_zarr_group_without_multiscales_names_its_arrays(tmp_path, data):
    """Guards against an unhelpful failure when the user points at a plain zarr group instead of an array."""
    g = zarr.create_group(store=str(tmp_path / "plain.zarr"))
    g.create_array("raw", shape=data.shape, dtype=data.dtype)
    g.create_array("labels", shape=data.shape, dtype="u4")
    msg = expect_input_error(str(tmp_path / "plain.zarr"), "zarr group without OME multiscales")
    assert "labels, raw" in msg and "append /NAME" in msg
    assert open_volume(str(tmp_path / "plain.zarr" / "raw")).shape == data.shape


def test_unsupported_inputs(tmp_path):
    """Guards against guessing a format from an unknown extension or a folder of something else."""
    (tmp_path / "table.csv").write_text("1,2,3\n")
    expect_input_error(str(tmp_path / "table.csv"), "unsupported format")
    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "notes.txt").write_text("x")
    expect_input_error(str(tmp_path / "misc"), "neither a zarr store nor a folder of TIFF slices")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    expect_input_error(str(tmp_path / "broken.tif"), "cannot read .*broken.tif")


def test_object_npy_is_refused_without_unpickling(tmp_path):
    """Guards against unpickling user files (code execution) or a confusing error on object arrays."""
    arr = np.empty((2, 2, 2), dtype=object)
    arr[...] = [[[{"a": 1}, None], [1, "x"]], [[2, 3], [4, 5]]]
    np.save(tmp_path / "obj.npy", arr, allow_pickle=True)
    expect_input_error(str(tmp_path / "obj.npy"), "holds Python objects")


def test_fortran_npy_is_refused(tmp_path, data):
    """Guards against reading a Fortran-ordered file as C order (transposed garbage)."""
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    expect_input_error(str(tmp_path / "f.npy"), "Fortran-ordered")


def test_truncated_npy_is_refused_when_opened(tmp_path, data):
    """Guards against a cut copy passing as an input: every block then fails on its own, after the output was
    created, instead of one line before anything is made."""
    np.save(tmp_path / "whole.npy", data)
    raw = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) - 1])
    expect_input_error(str(tmp_path / "cut.npy"), f"truncated: {len(raw) - 1} bytes, its header needs {len(raw)}")
    assert open_volume(str(tmp_path / "whole.npy")).shape == data.shape


def test_hdf5_dataset_must_be_named_when_ambiguous(tmp_path, data):
    """Guards against picking an arbitrary dataset out of a file that holds several volumes."""
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=data)
        f.create_dataset("labels", data=data.astype(np.uint32))
        f.create_group("grp")
    msg = expect_input_error(str(path), "name the dataset as FILE.h5:/DATASET")
    assert "labels" in msg and "raw" in msg
    assert open_volume(f"{path}:/labels").dtype == np.uint32
    expect_input_error(f"{path}:/missing", "has no dataset 'missing'")
    expect_input_error(f"{path}:/grp", "is a group, not a dataset")


def test_parse_voxel_size():
    """Guards against accepting nonsense voxel sizes (or crashing on them instead of a clear message)."""
    assert parse_voxel_size(None) is None
    assert parse_voxel_size("30,4,4") == (30.0, 4.0, 4.0)
    assert parse_voxel_size(" 1e1, 8.5 ,8") == (10.0, 8.5, 8.0)
    for bad in ["", "30,4", "30,4,4,4", "0,4,4", "-1,4,4", "nan,4,4", "inf,4,4", "a,b,c", "None,8,8", "[1],2,3",
                "1j,2,3", "30;4;4"]:
        with pytest.raises(InputError, match="--voxel-size must be three positive numbers"):
            parse_voxel_size(bad)


def test_repr_hides_credentials(tmp_path, data):
    """Guards against printing user:password parts of a URL or storage options in logs."""
    fs = fsspec.filesystem("memory")
    root = f"/isovol-test-{uuid.uuid4().hex}"
    try:
        with fs.open(f"{root}/v.npy", "wb") as f:
            np.save(f, data)
        vol = open_volume(f"memory://{root}/v.npy", storage_options={})
        vol.storage_options["secret"] = "hunter2"
        assert "hunter2" not in repr(vol)
    finally:
        fs.rm(root, recursive=True)


def test_concurrent_reads_from_one_volume(written, data):
    """Guards against readers that share one seekable handle between threads (dask and workers read in threads)."""
    _, url, _, _ = written
    vol = open_volume(url)
    boxes = [(slice(z, z + 3), slice(0, 13), slice(y, 17)) for z in range(0, 9) for y in (0, 5)] * 4

    def read(box):
        return np.array_equal(vol.read(box), data[box])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, boxes))
    np.testing.assert_array_equal(vol.to_dask(chunks=(1, 13, 17)).compute(scheduler="threads"), data)

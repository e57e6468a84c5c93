"""Block reads and writes on the calling thread's own event loop: the same bytes as zarr's synchronous API, no
wait on zarr's shared loop, and a fall-back to that API for stores bound to it."""

import gc
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer.cpu import NDBuffer
from zarr.storage import LocalStore, MemoryStore

from isovol.pipeline.io import loops
from isovol.pipeline.io.integrity import RecordingStore

BOX = (slice(3, 29), slice(5, 40), slice(0, 33))


def _array(store, shape=(32, 48, 40)):
    return zarr.create_array(store, shape=shape, dtype="uint8", chunks=(8, 16, 16), shards=(16, 32, 32),
                             compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), fill_value=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def data():
    return np.random.default_rng(3).integers(0, 255, (32, 48, 40), dtype=np.uint8)


def test_own_loop_writes_the_bytes_zarrs_own_api_writes(tmp_path, data):
    ours, theirs = _array(LocalStore(tmp_path / "ours")), _array(LocalStore(tmp_path / "theirs"))
    for arr in (ours, theirs):  # a whole write, then a partial one that rewrites shards in part
        arr[:] = data
    loops.write(ours, BOX, data[BOX][::-1].copy())
    theirs[BOX] = data[BOX][::-1].copy()
    assert _files(tmp_path / "ours") == _files(tmp_path / "theirs")
    np.testing.assert_array_equal(loops.read(ours, BOX), theirs[BOX])
    np.testing.assert_array_equal(loops.read(ours, (4, slice(0, 7), 9)), theirs[4, 0:7, 9])


def test_which_stores_take_the_own_loop(tmp_path):
    assert loops.own_loop_serves(_array(LocalStore(tmp_path / "a")))
    assert loops.own_loop_serves(_array(RecordingStore(LocalStore(tmp_path / "b"))))  # an output's store
    assert not loops.own_loop_serves(_array(MemoryStore()))


def test_a_store_bound_to_zarrs_loop_goes_through_zarrs_api(data):
    arr = _array(MemoryStore())
    loops.write(arr, BOX, data[BOX])
    np.testing.assert_array_equal(arr[BOX], data[BOX])
    np.testing.assert_array_equal(loops.read(arr, BOX), data[BOX])


def test_a_local_read_does_not_wait_for_zarrs_shared_loop(tmp_path, data):
    """The point of the module: while zarr's one loop thread is busy (here: held), a block read still finishes."""
    from zarr.core.sync import _get_loop

    arr = _array(LocalStore(tmp_path / "a"))
    arr[:] = data
    held, release = threading.Event(), threading.Event()
    _get_loop().call_soon_threadsafe(lambda: (held.set(), release.wait(30)))
    try:
        assert held.wait(10)
        got: list[np.ndarray] = []
        reader = threading.Thread(target=lambda: got.append(loops.read(arr, BOX)))
        reader.start()
        reader.join(20)
        finished = not reader.is_alive()
    finally:
        release.set()
    reader.join()
    assert finished, "the read waited for zarr's shared event loop"
    np.testing.assert_array_equal(got[0], data[BOX])


def test_threads_write_disjoint_shards_at_once_and_each_loop_closes_with_its_thread(tmp_path, data):
    arr = _array(LocalStore(tmp_path / "a"))
    seen: list = []

    def write_rows(z: int) -> None:
        loops.write(arr, (slice(z, z + 16),), data[z:z + 16])
        seen.append(loops._THREAD.own.loop)

    threads = [threading.Thread(target=write_rows, args=(z,)) for z in (0, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(arr[:], data)
    assert len({id(loop) for loop in seen}) == 2
    del threads
    gc.collect()
    assert all(loop.is_closed() for loop in seen)


def test_a_failed_read_leaves_nothing_pending_on_the_loop(tmp_path, data):
    """A damaged chunk fails the read while zarr still reads its siblings: those are cancelled and finished, not
    left on the thread's loop (where closing it would print "Task was destroyed but it is pending!")."""
    import asyncio

    arr = zarr.create_array(LocalStore(tmp_path / "a"), shape=data.shape, dtype="uint8", chunks=(2, 8, 8),
                            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"))
    arr[:] = data
    chunk = tmp_path / "a" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(Exception, match="(?i)decompress|blosc|error"):
        loops.read(arr, (slice(None),) * 3)
    assert not asyncio.all_tasks(loops._THREAD.own.loop)
    np.testing.assert_array_equal(loops.read(arr, (slice(2, 32),) * 3)[:, :30, :30], data[2:32, 2:32, 2:32])


def test_isovol_writes_take_the_quick_fill_check():
    from zarr.core.buffer import default_buffer_prototype

    import isovol.pipeline.io.omezarr  # noqa: F401 - every writer of outputs imports it

    assert default_buffer_prototype().nd_buffer is loops.QuickFillNDBuffer


@pytest.mark.parametrize("dtype, fill", [("uint8", 0), ("uint16", 7), ("float32", 0.0), ("float32", np.nan)])
def test_the_quick_fill_check_stores_what_zarrs_own_stores(tmp_path, dtype, fill):
    """A shard and an inner chunk of fill value only are left out as zarr leaves them out, a chunk that starts
    with the fill value is kept, and every byte is the one zarr's own buffer class writes: whole shards, shards
    cut by the array's edge, and a part of shards rewritten."""
    rng = np.random.default_rng(5)
    data = rng.integers(1, 200, (32, 64, 60)).astype(dtype)
    data[:16, :32, :32] = fill  # one whole shard of fill value
    data[16:24, 32:48, 32:48] = fill  # one inner chunk of fill value
    data[0, 32, 32] = fill  # a chunk whose first voxel is the fill value
    if dtype == "float32":
        data[16, 0, 0], data[16, 0, 1] = -0.0, np.nan
    part = (slice(None), slice(4, 9), slice(50, 55))
    arrays = {name: zarr.create_array(LocalStore(tmp_path / name), shape=data.shape, dtype=dtype,
                                      chunks=(8, 16, 16), shards=(16, 32, 32), fill_value=fill,
                                      compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"))
              for name in ("ours", "theirs")}
    loops.write(arrays["ours"], (slice(None),) * 3, data)
    arrays["ours"][part] = data[part][::-1]
    with zarr.config.set({"ndbuffer": loops.ZARR_NDBUFFER}):
        arrays["theirs"][...] = data
        arrays["theirs"][part] = data[part][::-1]
    ours = _files(tmp_path / "ours")
    assert ours == _files(tmp_path / "theirs")
    assert "c/0/0/0" not in ours and "c/1/1/1" in ours


@pytest.mark.parametrize("values, fill", [
    ([0, 0, 0], 0), ([0, 0, 1], 0), ([1, 0, 0], 0), ([5, 5], 5),
    ([0.0, -0.0], 0.0), ([-0.0, 0.0], 0.0), ([np.nan, np.nan], np.nan), ([np.nan, 1.0], np.nan),
    ([1.0, np.nan], np.nan), ([0.0, np.nan], 0.0), ([2.0, 2.0], 2.0), ([True, True], True), ([3, 3], None),
])
def test_the_quick_fill_check_answers_as_zarrs(values, fill):
    nan = bool(np.isnan(np.asarray(values, float)).any())
    for dtype in ("float32", "float64") if nan else ("uint8", "int16", "float32", "float64", "bool"):
        arr = np.asarray(values).astype(dtype)
        theirs = NDBuffer.from_ndarray_like(arr).all_equal(fill)
        ours = loops.QuickFillNDBuffer.from_ndarray_like(arr).all_equal(fill)
        assert ours == theirs, (values, fill, dtype)

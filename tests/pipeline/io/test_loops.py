"""Block reads and writes on the calling thread's own event loop: the same bytes as zarr's synchronous API, no
wait on zarr's shared loop, and a fall-back to that API for stores bound to it."""

import gc
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec
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

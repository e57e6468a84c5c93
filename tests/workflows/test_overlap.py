"""The executor's in-task pipeline (read the next Z piece, write the previous one, compute the current one): same
output as the serial path and the single call, pieces really read ahead on their own thread, and a block that fails
part-way leaves no done marker and resumes to the exact result."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import zarr
from tiny_recipes import dgean_tiny

from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import get_method, upsample_array
from isovol.pipeline.methods.dgean.method import DGEANMethod
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.pipeline.methods.interp import Interpolation
from isovol.workflows import block_task
from isovol.workflows import upsample as up
from isovol.workflows.bookkeeping import Bookkeeper

R = 4
BLOCK, SHARD = (64, 64, 64), (16, 64, 64)  # 4 Z pieces per block


@pytest.fixture(scope="module")
def volume(crop) -> np.ndarray:
    return np.ascontiguousarray(crop[:121:R, :64, :96])  # (31, 64, 96) -> (121, 64, 96): 2 x 1 x 2 blocks


@pytest.fixture(scope="module")
def source(tmp_path_factory, volume) -> str:
    url = str(tmp_path_factory.mktemp("overlap") / "in.ome.zarr")
    write_image(url, volume, (40.0, 10.0, 10.0))
    return url


def read(url: str) -> np.ndarray:
    return zarr.open_array(store=url + "/0", mode="r")[...]


def request(source: str, out, **kw) -> up.UpsampleRequest:
    return up.UpsampleRequest(input=source, output=str(out), factor=R, block_shape=BLOCK, shard_shape=SHARD,
                              chunk_shape=(16, 32, 32), progress=False, **kw)


def test_pipelined_blocks_equal_serial_blocks_and_the_single_call(client, source, volume, tmp_path, monkeypatch):
    reads: list[tuple[str, tuple[int, ...]]] = []
    real_read = block_task._read

    def spy(ctx, block):  # in-process workers: they run this module's patch
        reads.append((threading.current_thread().name, block.out_lo))
        return real_read(ctx, block)

    monkeypatch.setattr(block_task, "_read", spy)
    piped = request(source, tmp_path / "piped.ome.zarr", method="cubic")
    assert up.upsample(piped, client=client).ok
    assert len(reads) == 2 * 2 * 4, "every block read as its 4 Z pieces"
    assert all(name.startswith("isovol-read") for name, _ in reads), "read ahead on the reader thread"
    reads.clear()
    serial = replace(piped, output=str(tmp_path / "serial.ome.zarr"), overlap=False)
    assert up.upsample(serial, client=client).ok
    assert len(reads) == 4 and not any(name.startswith("isovol-read") for name, _ in reads)
    want = upsample_array(volume, R, get_method("cubic"))
    np.testing.assert_array_equal(read(piped.output), want)
    np.testing.assert_array_equal(read(serial.output), want)


def test_pipelined_dgean_equals_serial_dgean(client, source, tmp_path, crop):
    mcfg, tcfg = dgean_tiny()
    model = str(tmp_path / "model")
    train_dgean(crop[:64, :64, :64], model, 8, isotropic=True, model_config=replace(mcfg, out_init_scale=1.0),
                train=replace(tcfg, steps=1, val_windows=2, val_every=1, ckpt_every=1), device="cpu",
                log=lambda _: None)
    opts = {"tile": 32, "margin": 16, "device": "cpu"}
    piped = request(source, tmp_path / "piped.ome.zarr", method="dgean", model=model, method_options=opts)
    serial = replace(piped, output=str(tmp_path / "serial.ome.zarr"), overlap=False)
    assert up.upsample(piped, client=client).ok and up.upsample(serial, client=client).ok
    np.testing.assert_array_equal(read(piped.output), read(serial.output))
    assert DGEANMethod.z_split_exact


class FailsOnPiece(Interpolation):
    """Cubic, except that the Z piece of block 0.0.0 starting at output z ``z`` raises ``message``."""

    def __init__(self, z: int, message: str):
        super().__init__("cubic")
        self.z, self.message = z, message

    def apply_at(self, data, factor, start, stop, origin):
        if tuple(origin) == (self.z // R - self.halo.z, 0, 0):
            raise RuntimeError(self.message)
        return super().apply_at(data, factor, start, stop, origin)


def test_a_block_failing_mid_pipeline_leaves_no_marker_and_resumes_exactly(client, source, volume, tmp_path,
                                                                           monkeypatch):
    out = tmp_path / "out.ome.zarr"
    monkeypatch.setattr(up, "get_method", lambda name, model=None, **kw: FailsOnPiece(32, "simulated bug in piece 3"))
    summary = up.upsample(request(source, out, method="cubic"), client=client)
    assert not summary.ok and list(summary.failed) == ["0.0.0"] and "piece 3" in summary.failed["0.0.0"]
    assert summary.retried == 0, "a deterministic error is not retried"
    done = Bookkeeper(str(out), {}).done_keys()
    assert done == {"0.0.1", "1.0.0", "1.0.1"}, "the failed block has no done marker"
    monkeypatch.undo()
    again = up.upsample(request(source, out, method="cubic", resume=True), client=client)
    assert again.ok and again.done == 1 and again.skipped == 3
    np.testing.assert_array_equal(read(str(out)), upsample_array(volume, R, get_method("cubic")))


def test_each_block_hands_its_thread_over_once_at_its_last_compute(client, source, tmp_path, monkeypatch):
    """As its last compute starts, a block hands its thread to the next block (distributed.secede): once per block."""
    import distributed

    real = distributed.secede
    calls: list[str] = []

    def counting():
        calls.append(threading.current_thread().name)
        real()

    monkeypatch.setattr(distributed, "secede", counting)
    for overlap, out in [(True, "a"), (False, "b")]:
        calls.clear()
        summary = up.upsample(request(source, tmp_path / f"{out}.ome.zarr", method="cubic", overlap=overlap),
                              client=client)
        assert summary.ok
        assert len(calls) == (summary.total if overlap else 0)


@pytest.mark.parametrize("shard", [SHARD, BLOCK], ids=["4 pieces", "1 piece"])
def test_the_next_blocks_read_overlaps_the_last_compute_and_computes_never_overlap(source, volume, tmp_path,
                                                                                  monkeypatch, shard):
    """On a worker with one thread (a GPU worker), a block hands its thread over as its last compute starts: the
    next block reads its first piece meanwhile, so the GPU does not wait for it, but computes only once the
    compute slot is free -- no two computes at once."""
    from isovol.deploy.local import cluster_client

    reads: list[tuple[tuple[int, ...], float, float]] = []
    computes: list[tuple[tuple[int, ...], float, float]] = []
    real_read, real_compute = block_task._read, block_task._compute

    def block_of(piece) -> tuple[int, ...]:
        return tuple(lo // b for lo, b in zip(piece.out_lo, BLOCK))

    def timed(log, fn, pause):
        def spy(ctx, piece, *args):
            t0 = time.perf_counter()
            try:
                return fn(ctx, piece, *args)
            finally:
                time.sleep(pause)  # a slow network: the next block's read has time to happen beside it
                log.append((block_of(piece), t0, time.perf_counter()))
        return spy

    monkeypatch.setattr(block_task, "_read", timed(reads, real_read, 0.0))
    monkeypatch.setattr(block_task, "_compute", timed(computes, real_compute, 0.15))
    with cluster_client(1, processes=False) as one_thread:
        req = replace(request(source, tmp_path / "out.ome.zarr", method="cubic"), shard_shape=shard)
        assert up.upsample(req, client=one_thread).ok
    np.testing.assert_array_equal(read(req.output), upsample_array(volume, R, get_method("cubic")))
    spans = sorted((t0, t1) for _, t0, t1 in computes)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "two computes ran at once on a one-thread worker"
    ahead = [(b, a) for b, r0, r1 in reads for a, c0, c1 in computes if a != b and r0 < c1 and c0 < r1]
    assert ahead, "no block's read ran beside another block's compute"


def test_a_block_failing_in_its_last_compute_frees_the_compute_slot(source, volume, tmp_path, monkeypatch):
    """The failure comes after the block handed its thread over, holding the worker's one compute slot: the slot
    is given back, so the blocks after it on the same one-thread worker still run (no hang), and only the failed
    block is left without a marker."""
    from isovol.deploy.local import cluster_client

    last = FailsOnPiece(48, "simulated bug in the last piece")  # after the block handed its thread over
    monkeypatch.setattr(up, "get_method", lambda name, model=None, **kw: last)
    out = tmp_path / "out.ome.zarr"
    with cluster_client(1, processes=False) as one_thread:
        summary = up.upsample(request(source, out, method="cubic", retries=0), client=one_thread)
    assert list(summary.failed) == ["0.0.0"] and "last piece" in summary.failed["0.0.0"]
    assert summary.done == 3 and Bookkeeper(str(out), {}).done_keys() == {"0.0.1", "1.0.0", "1.0.1"}

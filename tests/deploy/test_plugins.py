"""The worker plugin on a real LocalCluster: a DGEAN model loads once per worker for many blocks and for a second
run; the cache goes away with the workers; GPU memory is released after block tasks only where CUDA is in use."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import zarr
from tiny_recipes import dgean_tiny, prior_tiny

from isovol.deploy.local import cluster_client
from isovol.deploy.plugins import NAME, ModelPlugin, worker_stats
from isovol.pipeline.io.omezarr import write_image
from isovol.pipeline.methods import cache, upsample_array
from isovol.pipeline.methods.dgean.method import DGEANMethod
from isovol.pipeline.methods.dgean.trainer import train_dgean
from isovol.workflows.demo_data import load_crop
from isovol.workflows.upsample import UpsampleRequest, upsample

R = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    mcfg, tcfg = dgean_tiny()
    path = str(tmp_path_factory.mktemp("dgean") / "model")
    train_dgean(load_crop()[0][:64, :64, :64], path, R, isotropic=True, model_config=mcfg,
                train=replace(tcfg, steps=1, val_windows=2, val_every=1, ckpt_every=1), device="cpu",
                log=lambda _: None)
    return path


def test_model_loads_once_per_worker_for_many_blocks_and_runs(tmp_path, model_dir):
    volume = np.ascontiguousarray(load_crop()[0][:65:R, :64, :64])  # (9, 64, 64) -> (65, 64, 64)
    src = str(tmp_path / "in.ome.zarr")
    write_image(src, volume, (80.0, 10.0, 10.0))
    options = {"tile": 32, "margin": 16, "device": "cpu"}
    with cluster_client(2, processes=False) as client:
        outs = []
        for run in range(2):
            out = str(tmp_path / f"out{run}.ome.zarr")
            req = UpsampleRequest(input=src, output=out, factor=R, method="dgean", model=model_dir,
                                  method_options=options, block_shape=(16, 32, 32), progress=False)
            summary = upsample(req, client=client)
            assert summary.ok and summary.done == 5 * 2 * 2
            outs.append(zarr.open_array(store=out + "/0", mode="r")[...])
            stats = worker_stats(client)
            assert len(stats) == 2 and all(s for s in stats.values()), "every worker has the plugin"
            # the two in-process workers share one process, hence one cache: one load in all, for 20 blocks,
            # and none for the second run
            assert {s["loads"] for s in stats.values()} == {1}, stats
            assert {s["models"] for s in stats.values()} == {1}
        hits = next(iter(stats.values()))["hits"]
        # 16 of the 20 blocks per run synthesise slices (the last Z block is the kept slice 64 alone)
        assert hits == 2 * 16 - 1, "every later block took the cached model"
        assert all(s["releases"] == 0 for s in stats.values()), "no CUDA in use: nothing to release"
        assert cache.active() is not None
    assert cache.active() is None, "the workers' teardown dropped the cache"
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], upsample_array(volume, R, DGEANMethod(model_dir, **options)))


def test_each_worker_process_loads_its_own_model_once(tmp_path, model_dir):
    """Worker processes (the GPU layout: one process per GPU) each hold one copy, loaded once."""
    volume = np.ascontiguousarray(load_crop()[0][:33:R, :32, :32])  # (5, 32, 32)
    src = str(tmp_path / "in.ome.zarr")
    write_image(src, volume, (80.0, 10.0, 10.0))
    with cluster_client(1, processes=True) as client:
        for run in range(2):
            req = UpsampleRequest(input=src, output=str(tmp_path / f"o{run}.ome.zarr"), factor=R, method="dgean",
                                  model=model_dir, method_options={"tile": 32, "margin": 16, "device": "cpu"},
                                  block_shape=(8, 32, 32), progress=False)
            assert upsample(req, client=client).ok
        (stats,) = worker_stats(client).values()
    assert stats["loads"] == 1 and stats["hits"] == 2 * 4 - 1, stats  # 4 of 5 blocks synthesise slices


def test_gpu_memory_is_released_after_block_tasks_only_when_cuda_is_in_use(monkeypatch):
    torch = pytest.importorskip("torch")
    plugin = ModelPlugin()
    plugin.setup(worker=None)
    try:
        emptied = []
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
        plugin.transition("isovol-block-0.0.0-abc", "executing", "memory")
        assert emptied == [] and plugin.releases == 0, "no CUDA context: nothing touched"
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        plugin.transition("isovol-block-0.0.0-abc", "executing", "memory")
        plugin.transition("isovol-block-0.0.1-abc", "executing", "error")
        plugin.transition("isovol-block-0.0.2-abc", "ready", "executing")  # starting, not finishing
        plugin.transition("isovol-block-0.0.2-abc", "executing", "long-running")  # handed its thread over
        plugin.transition("isovol-block-0.0.2-abc", "long-running", "memory")  # ...and finished
        plugin.transition("some-other-task", "executing", "memory")  # not ours
        assert len(emptied) == 3 and plugin.releases == 3
        assert plugin.name == NAME and plugin.idempotent
    finally:
        plugin.teardown(worker=None)
    assert cache.active() is None


def test_the_stage_two_prior_loads_once_per_worker_too(tmp_path):
    """Stage II's prior takes the worker's cached copy as DGEAN does: one load for all blocks of two runs."""
    from isovol.pipeline.methods.d2r_prior.trainer import train_prior

    mcfg, sde, tcfg = prior_tiny()
    prior = str(tmp_path / "prior")
    volume = np.ascontiguousarray(load_crop()[0][:33:R, :32, :32])  # (5, 32, 32) -> (33, 32, 32)
    train_prior(volume, prior, R, model_config=mcfg, sde=sde, device="cpu", log=lambda _: None,
                train=replace(tcfg, steps=1, patch=17, val_every=1, ckpt_every=1, val_patches=1, val_restore=0))
    src = str(tmp_path / "in.ome.zarr")
    write_image(src, volume, (80.0, 10.0, 10.0))
    options = {"tile": 16, "margin": 4, "steps": 1, "t_start": 25, "device": "cpu"}
    with cluster_client(1, processes=False) as client:
        for run in range(2):
            req = UpsampleRequest(input=src, output=str(tmp_path / f"o{run}.ome.zarr"), factor=R,
                                  method="d2r-prior", model=prior, method_options=options,
                                  block_shape=(16, 16, 32), progress=False)
            assert upsample(req, client=client).ok
        (stats,) = worker_stats(client).values()
    assert stats["loads"] == 1 and stats["hits"] >= 2 * 2, stats

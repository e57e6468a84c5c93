"""The executor's profile: every block books its phases, the store's share is measured where zarr hands it the
bytes, and ``upsample --profile`` prints the breakdown.  No timing is asserted beyond "was measured"."""

from __future__ import annotations

import re

import numpy as np
import pytest
from clirun import write_input

from isovol.workflows.profile import PHASES, Phases, merge, table
from isovol.workflows.upsample import UpsampleRequest, upsample

FACTOR = 4


def test_split_write_books_what_store_and_checksum_did_not_take_as_encoding():
    ph = Phases()
    ph.split_write(1.0, 0.1, 0.3)
    ph.split_write(0.2, 0.1, 0.3)  # clock jitter cannot make encoding negative
    assert ph.seconds["checksum"] == pytest.approx(0.2) and ph.seconds["store"] == pytest.approx(0.6)
    assert ph.seconds["encode"] == pytest.approx(0.6)
    total: dict[str, float] = {}
    merge(total, ph.seconds)
    merge(total, ph.seconds)
    merge(total, None)
    assert total["store"] == pytest.approx(1.2)


def test_table_lists_every_phase_with_its_share():
    lines = table({"read": 1.0, "method": 3.0}, voxels=8_000_000, blocks=4, wall=2.0, workers=2)
    assert "8.0 Mvox in 2.0 s (4.0 Mvox/s end to end on 2 workers)" in lines[0]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert list(rows) == list(PHASES)
    assert rows["method"][1:4] == ["3.00", "75.0%", "750.0"] and rows["encode"][-1] == "-"


@pytest.mark.parametrize("block,pieces", [((16, 64, 64), 1), ((32, 64, 64), 2)], ids=["one-piece", "pipelined"])
def test_every_done_block_books_its_phases(tmp_path, client, crop, block, pieces):
    volume = np.ascontiguousarray(crop[::FACTOR, :64, :64])
    src = write_input(tmp_path / "in.ome.zarr", volume, FACTOR)
    req = UpsampleRequest(input=src, output=str(tmp_path / "out.ome.zarr"), factor=FACTOR, method="linear",
                          block_shape=block, shard_shape=(16, 64, 64), chunk_shape=(16, 32, 32), progress=False)
    summary = upsample(req, client=client)
    assert summary.ok
    assert summary.voxels == ((volume.shape[0] - 1) * FACTOR + 1) * 64 * 64
    assert set(summary.phases) == set(PHASES)
    for phase in ("read", "method", "encode", "checksum", "store", "fsync", "marker"):
        assert summary.phases[phase] > 0, (phase, summary.phases)


def test_upsample_profile_prints_the_breakdown(tmp_path, crop, cli):
    src = write_input(tmp_path / "in.ome.zarr", np.ascontiguousarray(crop[::FACTOR, :64, :64]), FACTOR)
    res = cli("upsample", src, tmp_path / "out.ome.zarr", "--factor", FACTOR, "--method", "linear", "--workers",
              "1", "--no-pyramid", "--profile", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^isovol: profile of \d+ blocks, [\d.]+ Mvox in [\d.]+ s", res.stderr, re.M), res.stderr
    for phase in PHASES:
        assert re.search(rf"^isovol: {phase}\s+[\d.]+\s+[\d.]+%", res.stderr, re.M), res.stderr

"""Whole-file writes on a local disk; an exclusive publish has exactly one winner among concurrent writers."""

from __future__ import annotations

import os
import threading

from isovol.pipeline.io.atomic import atomic_write, exclusive_write


def test_exclusive_write_publishes_once_and_never_replaces(tmp_path):
    path = str(tmp_path / "meta" / "run.json")
    assert exclusive_write(path, b"first")
    assert not exclusive_write(path, b"second")
    assert open(path, "rb").read() == b"first"
    atomic_write(path, b"third")  # an ordinary update replaces it
    assert open(path, "rb").read() == b"third"
    assert os.listdir(tmp_path / "meta") == ["run.json"], "no temp file is left either way"


def _race(path: str, writers: int) -> list[int]:
    """``writers`` threads publish ``path`` at the same moment; the ones that won."""
    barrier, won = threading.Barrier(writers), []

    def write(i: int) -> None:
        barrier.wait()
        if exclusive_write(path, f"writer {i}".encode() * 1000):
            won.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_of_many_concurrent_writers_exactly_one_wins(tmp_path):
    for trial in range(20):
        path = str(tmp_path / f"t{trial}" / "run.json")
        won = _race(path, 8)
        assert len(won) == 1
        assert open(path, "rb").read() == f"writer {won[0]}".encode() * 1000, "the winner's bytes, whole"

"""What ``isovol status --verify`` costs: checksum speed and verify throughput per core, extrapolated to a terabyte.

    python benchmarks/verify_cost.py [--yx 2048] [--readers N] [--keep DIR]

(a) The checksums on offer, on one core, over a 64 MiB buffer: CRC-32C (``google-crc32c``, which zarr already
    requires, so isovol adds no dependency), ``zlib.crc32`` (the stdlib fallback), xxHash when installed, MD5.
(b) A real output: the bundled FlyEM FIB-SEM crop (every 4th slice, mirrored in Y/X to --yx), upsampled by 8 with
    ``linear`` through the executor (so the markers are the ones a run writes), then checked by
    ``workflows/verify.verify`` -- the code ``status --verify`` runs -- with one reader thread and with --readers
    (default: those ``status --verify`` uses on a local disk), from the page cache ("warm": the CPU cost) and
    with every shard evicted first (``posix_fadvise DONTNEED``, "cold": this machine's disk).  "GB per CPU-s" is
    stored bytes over the process's CPU time (all threads), the per-core cost; "wall GB/s" is what the machine
    achieved.  The write path's cost of vouching is one checksum of each shard as zarr stores it (no second
    read), i.e. (a)'s rate.

Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable

import numpy as np

FACTOR = 8
GB = 1e9


def rate(fn: Callable[[bytes], object], data: bytes, repeats: int = 5) -> float:
    """GB/s of ``fn`` over ``data`` on this thread (best of ``repeats``)."""
    fn(data)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t0)
    return len(data) / best / GB


def checksum_table() -> list[tuple[str, float]]:
    import hashlib

    import google_crc32c

    data = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    rows = [("CRC-32C (google-crc32c, used)", rate(google_crc32c.value, data)),
            ("CRC-32 (zlib, stdlib)", rate(zlib.crc32, data))]
    try:
        import xxhash

        rows.append(("xxh3_64 (xxhash)", rate(lambda d: xxhash.xxh3_64_intdigest(d), data)))
    except ImportError:
        rows.append(("xxh3_64 (xxhash)", float("nan")))  # not installed: not a dependency of isovol
    rows.append(("MD5 (hashlib)", rate(lambda d: hashlib.md5(d).digest(), data)))
    return rows


def make_output(root: str, yx: int) -> tuple[str, float]:
    """A finished isovol output of the real crop at factor 8 and the seconds its run took."""
    from isovol.pipeline.io.omezarr import write_image
    from isovol.workflows.demo_data import load_crop
    from isovol.workflows.upsample import UpsampleRequest, upsample

    crop, voxel = load_crop()
    low = crop[::4]
    vol = np.ascontiguousarray(np.pad(low, ((0, 0), (0, yx), (0, yx)), mode="symmetric")[:, :yx, :yx])
    src = os.path.join(root, "in.ome.zarr")
    write_image(src, vol, (voxel[0] * 4, voxel[1], voxel[2]), chunks=(33, 256, 256))
    out = os.path.join(root, "out.ome.zarr")
    t0 = time.perf_counter()
    summary = upsample(UpsampleRequest(input=src, output=out, factor=FACTOR, method="linear",
                                       block_shape=(128, 512, 512), workers=1, processes=False, progress=False))
    assert summary.ok, summary.line()
    return out, time.perf_counter() - t0


def evict(root: str) -> None:
    """Drop the output's shard files from the page cache (clean pages; no root needed)."""
    for d, _, files in os.walk(os.path.join(root, "0")):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def verify_row(out: str, readers: int, cold: bool) -> tuple[float, float, int, int]:
    """(wall GB/s, GB per CPU-second, shards, bytes) of one full check."""
    from isovol.workflows.bookkeeping import Bookkeeper
    from isovol.workflows.verify import verify

    keeper = Bookkeeper(out, {})
    tag = keeper.read_record().tag
    if cold:
        evict(out)
    else:
        verify(keeper, tag, readers)  # warm the cache
    c0, t0 = time.process_time(), time.perf_counter()
    report = verify(keeper, tag, readers)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    assert report.ok, report.details()
    return report.bytes / wall / GB, report.bytes / max(cpu, 1e-9) / GB, report.shards, report.bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yx", type=int, default=2048, help="Y/X size of the volume (output is 257 x yx x yx)")
    ap.add_argument("--readers", type=int, default=None,
                    help="reader threads of the second row (default: what status --verify uses on a local disk)")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    from isovol.workflows.verify import READERS_LOCAL

    args.readers = args.readers or READERS_LOCAL

    print(f"# what --verify costs ({datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()})\n")
    print("| checksum, one core | GB/s |\n|---|---|")
    for name, gbs in checksum_table():
        print(f"| {name} | {gbs:.2f} |" if gbs == gbs else f"| {name} | not installed |")

    root = args.keep or tempfile.mkdtemp(prefix="isovol-verify-")
    os.makedirs(root, exist_ok=True)
    try:
        out, seconds = make_output(root, args.yx)
        rows = [(r, cold, *verify_row(out, r, cold)) for cold in (False, True) for r in (1, args.readers)]
        shards, stored = rows[0][4], rows[0][5]
        print(f"\noutput: 257 x {args.yx} x {args.yx} uint8, {shards} shards, {stored / GB:.2f} GB stored "
              f"(run: {seconds:.1f} s)\n")
        print("| page cache | readers | wall GB/s | GB per CPU-s | CPU per TB | wall per TB |")
        print("|---|---|---|---|---|---|")
        for readers, cold, wall, per_cpu, _, _ in rows:
            print(f"| {'cold' if cold else 'warm'} | {readers} | {wall:.2f} | {per_cpu:.2f} | "
                  f"{1000 / per_cpu / 60:.1f} core-min | {1000 / wall / 60:.1f} min |")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

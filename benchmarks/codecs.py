"""Which compressor an output should use: ratio and encode/decode speed per core on real FIB-SEM (issue 18 (d)).

    python benchmarks/codecs.py [--volume PATH.npy] [--shard 128] [--chunk 64]

Two kinds of data, both uint8 from the FlyEM medulla FIB-SEM (``../shared/data/flyem_medulla_fibsem_10nm``,
training_sample1, 250^3 at 10 nm): the volume itself (what a learned method's output looks like: full of noise)
and a ``linear`` upsample by 8 of its every 8th slice (what a classical method writes: smooth in Z).  Each codec
writes the same shards, through zarr's own sharding codec, into an in-memory store (no disk in the figure), then
reads them back.  "per core" is voxels over the process's CPU time (all threads, zarr runs codecs on a pool), so
the figure does not depend on how loaded the machine is; wall time is printed beside it.

Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np

FACTOR = 8
DEFAULT_VOLUME = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "flyem_medulla_fibsem_10nm",
                              "training_sample1", "training_sample1_zyx_uint8.npy")


def codecs() -> dict[str, list]:
    """The choices zarr v3 offers out of the box, by name (``none``: no compressor)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    table: dict[str, list] = {"none": []}
    for cname in ("lz4", "zstd"):
        for level in (1, 3, 5):
            table[f"blosc-{cname}-{level} shuffle"] = [BloscCodec(cname=cname, clevel=level, shuffle="shuffle")]
    table["blosc-lz4-1 bitshuffle"] = [BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")]
    table["blosc-zstd-1 bitshuffle"] = [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")]
    for level in (1, 3):
        table[f"zstd-{level}"] = [ZstdCodec(level=level)]
    return table


def linear_upsample(vol: np.ndarray) -> np.ndarray:
    """Every ``FACTOR``-th slice, interpolated back linearly in Z (what isovol's ``linear`` writes)."""
    low = vol[::FACTOR].astype(np.float32)
    z = np.arange((low.shape[0] - 1) * FACTOR + 1) / FACTOR
    i0 = np.minimum(np.floor(z).astype(int), low.shape[0] - 2)
    t = (z - i0)[:, None, None]
    return np.rint(low[i0] * (1 - t) + low[i0 + 1] * t).astype(np.uint8)


def measure(data: np.ndarray, compressors: list, shard: int, chunk: int, repeats: int) -> dict[str, float]:
    """Encode (write) and decode (read) ``data`` whole through zarr's sharding codec in memory; best of
    ``repeats`` in CPU seconds of this process."""
    import zarr
    from zarr.storage import MemoryStore

    best_w = best_r = best_ww = float("inf")
    stored = 0
    for _ in range(repeats):
        store = MemoryStore()
        arr = zarr.create_array(store, shape=data.shape, dtype=data.dtype, chunks=(chunk,) * 3,
                                shards=(shard,) * 3, compressors=compressors, fill_value=0)
        c0, w0 = time.process_time(), time.perf_counter()
        arr[...] = data
        best_w, best_ww = min(best_w, time.process_time() - c0), min(best_ww, time.perf_counter() - w0)
        c0 = time.process_time()
        back = arr[...]
        best_r = min(best_r, time.process_time() - c0)
        assert np.array_equal(back, data)
        stored = sum(len(v.to_bytes()) for k, v in store._store_dict.items() if "/c/" in k or k.startswith("c/"))
    vox = data.size / 1e6
    return {"ratio": data.nbytes / stored, "enc": vox / best_w, "dec": vox / best_r, "wall_enc": vox / best_ww}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=DEFAULT_VOLUME)
    ap.add_argument("--shard", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    vol = np.load(args.volume, mmap_mode="r")
    n = (min(vol.shape) // args.shard) * args.shard or min(vol.shape)
    raw = np.ascontiguousarray(vol[:n, :n, :n])
    smooth = linear_upsample(np.ascontiguousarray(vol[: n + 2 * FACTOR, :n, :n]))[:n]
    kinds = {"FIB-SEM as acquired": raw, f"linear x{FACTOR} of every {FACTOR}th slice": smooth}
    print(f"Measured {datetime.date.today()} on {platform.machine()} ({os.cpu_count()} cores), "
          f"{n}^3 uint8 crop of {os.path.basename(args.volume)}, shards {args.shard}^3 of chunks {args.chunk}^3, "
          f"in memory, best of {args.repeats}.\n")
    print("| codec | " + " | ".join(f"{k}: ratio, encode / decode Mvox/s per core" for k in kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, comp in codecs().items():
        cells = []
        for data in kinds.values():
            m = measure(data, comp, args.shard, args.chunk, args.repeats)
            cells.append(f"{m['ratio']:.2f}, {m['enc']:.0f} / {m['dec']:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

"""What the multiscale pyramid adds to an upsample run on CPU.

    python benchmarks/pyramid.py [--yx 256] [--workers 2] [--repeats 2] [--method cubic] [--model DIR]

For each repeat, on one LocalCluster started once: ``upsample`` with ``levels=0`` (level 0 only), then the
pyramid step alone on that output (``build_pyramid``, ``auto`` levels, every level written afresh), then a whole
``upsample`` with ``levels="auto"`` into a new output.  The fraction is the pyramid step's time over the level-0
run's, and (as a cross-check) the whole run with a pyramid over the run without.  The input is real data: every
4th slice of the bundled FlyEM FIB-SEM crop, mirrored in Y/X to ``--yx``; factor 8, so the output is
``(32 * 8 + 1) x yx x yx`` (257 x 256 x 256 by default).  Default layout: 64^3 chunks, 128^3 shards and blocks.
A learned method without ``--model`` is first trained with its ``cpu-tiny`` recipe on the same input (not timed):
the pyramid's share of a run with a method that costs what learned ones cost.  Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from executor import machine, make_input, table  # noqa: E402  (the same input and machine line)

FACTOR = 8


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yx", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", default="cubic")
    ap.add_argument("--model", default=None)
    ap.add_argument("--block", type=int, default=128)
    args = ap.parse_args(argv)

    from isovol.deploy.local import cluster_client
    from isovol.workflows.bookkeeping import Bookkeeper
    from isovol.workflows.pyramid import build_pyramid
    from isovol.workflows.upsample import UpsampleRequest, upsample

    root = tempfile.mkdtemp(prefix="isovol-pyramid-bench-")
    try:
        src, shape = make_input(root, args.yx)
        block = (args.block,) * 3
        model = args.model or _train_tiny(src, root, args.method)
        rows, fractions, whole = [], [], []
        with cluster_client(args.workers, processes=True) as client:
            def run(out: str, levels: object) -> float:
                t0 = time.perf_counter()
                summary = upsample(UpsampleRequest(input=src, output=out, factor=FACTOR, method=args.method,
                                                   model=model, block_shape=block, chunk_shape=(64, 64, 64),
                                                   progress=False, levels=levels), client=client)
                assert summary.ok, summary.failed
                return time.perf_counter() - t0

            run(os.path.join(root, "warm.ome.zarr"), 0)  # workers import and warm up once
            for i in range(args.repeats):
                out = os.path.join(root, f"l0-{i}.ome.zarr")
                t_level0 = run(out, 0)
                tag = Bookkeeper(out, {}).read_record().tag
                t0 = time.perf_counter()
                pyr = build_pyramid(client, out, {}, tag, "auto", block_shape=block, fresh=True, progress=False)
                t_pyr = time.perf_counter() - t0
                assert pyr.ok
                t_with = run(os.path.join(root, f"with-{i}.ome.zarr"), "auto")
                fractions.append(t_pyr / t_level0)
                whole.append(t_with / t_level0 - 1)
                rows.append([str(i + 1), f"{t_level0:.2f}", f"{t_pyr:.2f} ({pyr.total} blocks)",
                             f"{100 * t_pyr / t_level0:.1f} %", f"{t_with:.2f}",
                             f"{100 * (t_with / t_level0 - 1):+.1f} %"])
        out_shape = ((shape[0] - 1) * FACTOR + 1, shape[1], shape[2])
        print(f"Output {out_shape[0]}x{out_shape[1]}x{out_shape[2]} uint8, method {args.method}, factor {FACTOR}, "
              f"blocks {block}, chunks 64^3, {args.workers} workers.\n")
        print(table(["repeat", "level 0 (s)", "pyramid step (s)", "pyramid / level 0", "run with pyramid (s)",
                     "with / without - 1"], rows))
        print(f"\nmedian pyramid / level 0: {100 * statistics.median(fractions):.1f} %; median whole-run increase: "
              f"{100 * statistics.median(whole):+.1f} %")
        print(f"\nMachine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _train_tiny(src: str, root: str, method: str) -> str | None:
    """A cpu-tiny model of a learned ``method`` trained on the input (None for a classical one)."""
    import subprocess

    from isovol.pipeline.methods import registry

    if not registry.entries()[method].needs_model:
        return None
    model = os.path.join(root, "model")
    isovol = os.path.join(os.path.dirname(sys.executable), "isovol")
    subprocess.run([isovol, "-q", "train", src, model, "--factor", str(FACTOR), "--method", method, "--recipe",
                    "cpu-tiny", "--workers", "1"], check=True)
    return model


if __name__ == "__main__":
    main()
